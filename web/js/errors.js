// Gateway errors and close codes in words a person understands.

export class RpcError extends Error {
  constructor(error) {
    super(error?.message || "error");
    this.code = error?.code;
    this.data = error?.data;
  }
}

export const CLOSE_REASONS = {
  4500: "That token was not accepted. Check it and try again.",
  4501: "Your session has expired. Please sign in again.",
  4502: "Signing in took too long. Please try again.",
  4503: "You have too many open connections (other tabs or devices). Close some and sign in again.",
  4504: "The gateway closed the connection because of unexpected traffic. Sign in again to continue.",
};

export function formatSeconds(value) {
  const s = Math.max(1, Math.ceil(Number(value) || 0));
  if (s < 90) return `${s}s`;
  const m = Math.ceil(s / 60);
  if (m < 90) return `${m} min`;
  return `${Math.ceil(m / 60)} h`;
}

/** True for the errors after which the person has to sign in again. */
export const isAuthError = (err) => err?.code === -32001 || err?.code === -32002;

export function describeError(error) {
  const code = error?.code;
  const data = (error && typeof error.data === "object" && error.data) || {};
  const later = data.retryAfter != null ? ` Try again in ${formatSeconds(data.retryAfter)}.` : "";
  const provider = data.provider ? ` (${data.provider})` : "";
  switch (code) {
    case -32001: return "You are not signed in. Please sign in again.";
    case -32002: return "Your session has expired. Please sign in again.";
    case -32003: return "You are not allowed to do that.";
    case -32004:
      return data.retryAfter != null
        ? `Too many requests, try again in ${formatSeconds(data.retryAfter)}.`
        : "Too many requests right now. Wait a moment and try again.";
    case -32005: return "Cancelled.";
    case -32006: return "This model is not available right now (it may not be set up on the gateway). Pick another model.";
    case -32007: return `You have used up your token budget for now.${later}`;
    case -32010: return `The model provider${provider} returned an error.${later || " Try again."}`;
    case -32011: return `The gateway could not sign in to the model provider${provider}. Its API key needs checking.`;
    case -32012: return `The model provider${provider} is getting too many requests.${later || " Try again in a moment."}`;
    case -32013: return `The model provider${provider} is unavailable right now.${later || " Try again later."}`;
    case -32014: return `The model provider${provider} took too long to answer.${later || " Try again."}`;
    case -32015: return `The model provider${provider} sent an answer that could not be read.${later || " Try again."}`;
    case -32030: return "That conversation was not found. It may have been deleted.";
    case -32031:
      return data.limit === "messagesPerConversation"
        ? `This conversation is full (${data.max ?? "the most"} messages). Start a new chat to go on.`
        : `You have the most conversations allowed${data.max ? ` (${data.max})` : ""}. Delete some to start new ones.`;
    case -32032: return "That message is no longer in this conversation. Reload to see it as it is now.";
    case -32033: return "An answer is still being written in this conversation (perhaps in another tab). Wait for it or stop it there.";
    case -32040: return "The rest of this answer is no longer on the gateway (it restarted, or the answer expired).";
    case -32041: return "Part of this answer is no longer kept on the gateway.";
    case -32602: return `The gateway did not accept that request: ${error.message || "invalid parameters"}.`;
    case -32603: return "Something went wrong inside the gateway. Try again.";
    case -32700:
    case -32600:
    case -32601: return `The gateway did not understand the request (${error.message || code}).`;
    case "disconnected": return "The connection was lost before the answer finished.";
    default:
      if (typeof code === "number" && code <= -32010 && code >= -32019) {
        return `The model provider${provider} had a problem: ${error.message || "unknown error"}.`;
      }
      return error?.message ? `Error: ${error.message}` : "Something went wrong.";
  }
}
