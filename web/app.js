// Gateway chat page: one WebSocket speaking JSON-RPC 2.0 to /ws on the same origin.
// No build step. Markdown rendering uses window.marked + window.DOMPurify when both loaded;
// otherwise model output is shown as plain text. Model output is never put into the DOM
// as HTML unless it went through DOMPurify.

const TOKEN_KEY = "gateway.token";
const RECONNECT_CODES = new Set([1001, 1006, 1011, 1012, 1013]);
const BACKOFF_START_MS = 500;
const BACKOFF_MAX_MS = 30_000;
const CANCEL_GRACE_MS = 5_000;
const STICK_THRESHOLD_PX = 48;

const $ = (id) => document.getElementById(id);
const els = {
  signInView: $("sign-in-view"),
  signInForm: $("sign-in-form"),
  signInMessage: $("sign-in-message"),
  tokenInput: $("token-input"),
  chatView: $("chat-view"),
  chatControls: $("chat-controls"),
  modelSelect: $("model-select"),
  newChat: $("new-chat"),
  status: $("status"),
  statusText: $("status-text"),
  statusDetail: $("status-detail"),
  reconnectNow: $("reconnect-now"),
  userName: $("user-name"),
  signOut: $("sign-out"),
  scroller: $("scroller"),
  emptyState: $("empty-state"),
  messages: $("messages"),
  jump: $("jump"),
  composer: $("composer"),
  prompt: $("prompt"),
  send: $("send"),
  stop: $("stop"),
  regenerate: $("regenerate"),
  announcer: $("announcer"),
};

// ---------------------------------------------------------------------------
// Rendering of untrusted model output

const markdownReady = () =>
  typeof window.marked?.parse === "function" && typeof window.DOMPurify?.sanitize === "function";

let purifyConfigured = false;
function configurePurify() {
  if (purifyConfigured || !markdownReady()) return;
  purifyConfigured = true;
  window.DOMPurify.addHook("afterSanitizeAttributes", (node) => {
    if (node.tagName === "A") {
      const href = node.getAttribute("href") || "";
      if (href && !href.startsWith("#")) {
        node.setAttribute("target", "_blank");
        node.setAttribute("rel", "noopener noreferrer nofollow");
      }
    }
  });
}

const PURIFY_OPTIONS = {
  USE_PROFILES: { html: true }, // no SVG or MathML
  // No remote images (tracking pixels) and nothing that can submit or restyle the page.
  FORBID_TAGS: ["img", "style", "form", "input", "button", "textarea", "select", "option",
    "iframe", "frame", "object", "embed", "video", "audio", "source", "picture", "link", "meta", "base"],
  FORBID_ATTR: ["style", "srcset"],
  ALLOW_DATA_ATTR: false,
};

/** Put `text` (untrusted) into `el`, as sanitized markdown when possible, else as plain text. */
function renderContent(el, text, { markdown }) {
  if (markdown && markdownReady()) {
    configurePurify();
    try {
      const html = window.marked.parse(text, { gfm: true, breaks: true, async: false });
      el.innerHTML = window.DOMPurify.sanitize(html, PURIFY_OPTIONS);
      el.classList.add("markdown");
      return;
    } catch (err) {
      console.warn("markdown rendering failed, showing plain text", err);
    }
  }
  el.classList.remove("markdown");
  el.textContent = text;
}

// ---------------------------------------------------------------------------
// Errors in words a person understands

function formatSeconds(value) {
  const s = Math.max(1, Math.ceil(Number(value) || 0));
  if (s < 90) return `${s}s`;
  const m = Math.ceil(s / 60);
  if (m < 90) return `${m} min`;
  return `${Math.ceil(m / 60)} h`;
}

function describeError(error) {
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

const CLOSE_REASONS = {
  4500: "That token was not accepted. Check it and try again.",
  4501: "Your session has expired. Please sign in again.",
  4502: "Signing in took too long. Please try again.",
  4503: "You have too many open connections (other tabs or devices). Close some and sign in again.",
  4504: "The gateway closed the connection because of unexpected traffic. Sign in again to continue.",
};

class RpcError extends Error {
  constructor(error) {
    super(error?.message || "error");
    this.code = error?.code;
    this.data = error?.data;
  }
}

// ---------------------------------------------------------------------------
// State

const state = {
  token: null,
  ws: null,
  connState: "signed-out", // connecting | connected | reconnecting | disconnected | signed-out
  authed: false,
  everConnected: false,
  attempt: 0,
  reconnectTimer: null,
  countdownTimer: null,
  nextId: 1,
  pending: new Map(), // id -> {resolve, reject, onDelta}
  messages: [], // {role, content, el, bodyEl, status, usage, error}
  streaming: null, // {id, msg, cancelTimer}
  models: [],
  currentModel: null,
  stick: true,
  user: null,
};

// ---------------------------------------------------------------------------
// Connection state display

/** `text` goes to the live status region; `detail` (a countdown, say) is shown but not announced. */
function setConnState(connState, text, detail = "") {
  els.statusDetail.textContent = detail;
  if (connState === state.connState && text === undefined && els.status.dataset.state === connState) {
    return;
  }
  state.connState = connState;
  els.status.dataset.state = connState;
  const labels = {
    connecting: "Connecting…",
    connected: "Connected",
    reconnecting: "Reconnecting…",
    disconnected: "Disconnected",
    "signed-out": "Signed out",
  };
  els.statusText.textContent = text || labels[connState] || connState;
  els.reconnectNow.hidden = !(connState === "reconnecting" || connState === "disconnected");
  updateControls();
}

function announce(text) {
  els.announcer.textContent = "";
  // A separate tick so the same text twice is still announced.
  setTimeout(() => { els.announcer.textContent = text; }, 30);
}

function showSignIn(message) {
  els.signInView.hidden = false;
  els.chatView.hidden = true;
  els.chatControls.hidden = true;
  els.signOut.hidden = true;
  els.userName.hidden = true;
  if (message) {
    els.signInMessage.textContent = message;
    els.signInMessage.hidden = false;
  } else {
    els.signInMessage.hidden = true;
    els.signInMessage.textContent = "";
  }
  els.tokenInput.value = "";
  els.tokenInput.focus();
}

function showChat() {
  els.signInView.hidden = true;
  els.chatView.hidden = false;
  els.chatControls.hidden = false;
  els.signOut.hidden = false;
}

function updateControls() {
  const ready = state.connState === "connected";
  const streaming = !!state.streaming;
  els.prompt.disabled = !ready && !state.everConnected;
  els.send.disabled = !ready || streaming || !els.prompt.value.trim();
  els.send.hidden = streaming;
  els.stop.hidden = !streaming;
  if (!streaming) els.stop.disabled = false;
  els.modelSelect.disabled = !ready || state.models.length === 0;
  const last = state.messages[state.messages.length - 1];
  els.regenerate.hidden = !(last && last.role === "assistant" && !streaming);
  els.regenerate.disabled = !ready;
  els.emptyState.hidden = state.messages.length > 0;
}

// ---------------------------------------------------------------------------
// Socket

function wsUrl() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  return `${proto}//${location.host}/ws`;
}

function connect() {
  clearTimeout(state.reconnectTimer);
  clearInterval(state.countdownTimer);
  state.reconnectTimer = null;
  if (!state.token) {
    showSignIn();
    return;
  }
  if (state.ws) {
    const old = state.ws;
    state.ws = null;
    old.onclose = old.onmessage = old.onopen = old.onerror = null;
    try { old.close(1000); } catch { /* already closed */ }
  }
  state.authed = false;
  setConnState(state.attempt > 0 ? "reconnecting" : "connecting");
  let ws;
  try {
    ws = new WebSocket(wsUrl());
  } catch (err) {
    console.error(err);
    scheduleReconnect();
    return;
  }
  state.ws = ws;
  ws.onopen = () => onOpen(ws);
  ws.onmessage = (ev) => onFrame(ws, ev);
  ws.onclose = (ev) => onClose(ws, ev);
  ws.onerror = () => { /* onclose follows with the details */ };
}

async function onOpen(ws) {
  let result;
  try {
    result = await rpc("auth.login", { token: state.token });
  } catch (err) {
    if (ws !== state.ws) return;
    if (err.code === -32001 || err.code === -32002) {
      signOut(err.code === -32002 ? CLOSE_REASONS[4501] : CLOSE_REASONS[4500]);
    }
    return; // other failures: onclose handles reconnecting
  }
  if (ws !== state.ws) return;
  state.authed = true;
  state.attempt = 0;
  const wasConnected = state.everConnected;
  state.everConnected = true;
  state.user = result?.user || null;
  const name = state.user?.name || state.user?.id;
  els.userName.textContent = name ? name : "";
  els.userName.hidden = !name;
  showChat();
  setConnState("connected");
  if (wasConnected) announce("Connected again.");
  loadModels();
  if (!wasConnected || document.activeElement === document.body) els.prompt.focus();
}

function onFrame(ws, ev) {
  if (ws !== state.ws) return;
  if (typeof ev.data !== "string") return;
  let msg;
  try {
    msg = JSON.parse(ev.data);
  } catch {
    console.warn("unreadable frame from gateway");
    return;
  }
  const frames = Array.isArray(msg) ? msg : [msg];
  for (const frame of frames) handleFrame(frame);
}

function handleFrame(frame) {
  if (!frame || typeof frame !== "object") return;
  if (frame.method === "stream.delta" && frame.params) {
    const p = state.pending.get(frame.params.id);
    if (p?.onDelta) p.onDelta(String(frame.params.text ?? ""), frame.params.seq);
    return;
  }
  if (frame.method) return; // other notifications: nothing to show yet
  if (frame.id == null) {
    if (frame.error) console.warn("gateway error", frame.error);
    return;
  }
  const p = state.pending.get(frame.id);
  if (!p) return;
  state.pending.delete(frame.id);
  if (frame.error) p.reject(new RpcError(frame.error));
  else p.resolve(frame.result);
}

function onClose(ws, ev) {
  if (ws !== state.ws) return;
  state.ws = null;
  state.authed = false;
  const lost = new RpcError({ code: "disconnected", message: "connection lost" });
  for (const [, p] of state.pending) p.reject(lost);
  state.pending.clear();
  const code = ev.code;
  if (code >= 4500 && code <= 4999) {
    signOut(CLOSE_REASONS[code] || `The gateway closed the connection (${code}). Please sign in again.`);
    return;
  }
  if (!state.token) return;
  if (RECONNECT_CODES.has(code) || (code >= 4000 && code <= 4499)) {
    scheduleReconnect();
    return;
  }
  // 1000, 1003, 1007, 1008, 1009, ...: do not loop, let the person retry.
  const why = {
    1000: "The gateway closed the connection.",
    1003: "The gateway refused a message.",
    1007: "The gateway refused a message.",
    1008: "The gateway refused the connection.",
    1009: "A message was too large for the gateway.",
  }[code] || `The connection closed (${code}).`;
  setConnState("disconnected", `Disconnected — ${why}`);
}

function scheduleReconnect() {
  clearTimeout(state.reconnectTimer);
  clearInterval(state.countdownTimer);
  const base = Math.min(BACKOFF_MAX_MS, BACKOFF_START_MS * 2 ** state.attempt);
  const delay = Math.round(base * (0.8 + Math.random() * 0.4));
  state.attempt += 1;
  const due = Date.now() + delay;
  const tick = () => {
    const left = Math.ceil((due - Date.now()) / 1000);
    setConnState("reconnecting", undefined, left > 1 ? `in ${left}s` : "");
  };
  tick();
  state.countdownTimer = setInterval(tick, 1000);
  state.reconnectTimer = setTimeout(() => {
    clearInterval(state.countdownTimer);
    connect();
  }, delay);
}

function send(obj) {
  if (!state.ws || state.ws.readyState !== WebSocket.OPEN) {
    throw new RpcError({ code: "disconnected", message: "not connected" });
  }
  state.ws.send(JSON.stringify(obj));
}

function call(method, params, onDelta) {
  const id = state.nextId++;
  const promise = new Promise((resolve, reject) => {
    state.pending.set(id, { resolve, reject, onDelta });
  });
  try {
    send(params === undefined ? { jsonrpc: "2.0", id, method } : { jsonrpc: "2.0", id, method, params });
  } catch (err) {
    state.pending.delete(id);
    return { id, promise: Promise.reject(err) };
  }
  return { id, promise };
}

async function rpc(method, params) {
  const { promise } = call(method, params);
  return promise;
}

function notify(method, params) {
  try { send({ jsonrpc: "2.0", method, params }); } catch { /* not connected */ }
}

function signOut(message) {
  state.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  clearTimeout(state.reconnectTimer);
  clearInterval(state.countdownTimer);
  state.attempt = 0;
  state.everConnected = false;
  if (state.streaming) finishStream(state.streaming.msg, { interrupted: true });
  if (state.ws) {
    const ws = state.ws;
    state.ws = null;
    ws.onclose = ws.onmessage = ws.onopen = ws.onerror = null;
    try { ws.close(1000, "signed out"); } catch { /* ignore */ }
  }
  setConnState("signed-out");
  showSignIn(message);
}

function signIn(token) {
  state.token = token;
  sessionStorage.setItem(TOKEN_KEY, token);
  state.attempt = 0;
  connect();
}

// ---------------------------------------------------------------------------
// Models

function modelLabel(m) {
  let label = m.name;
  if (m.available === false) label += " (unavailable)";
  return label;
}

async function loadModels() {
  try {
    const [models, current] = await Promise.all([
      rpc("chat.listModels"),
      rpc("chat.getCurrentModel"),
    ]);
    state.models = Array.isArray(models) ? models : [];
    state.currentModel = current?.name || state.models.find((m) => m.current)?.name || null;
    fillModelSelect();
  } catch (err) {
    if (err.code === "disconnected") return;
    console.warn("could not load models", err);
    els.modelSelect.replaceChildren(new Option("Models unavailable", ""));
  }
  updateControls();
}

function fillModelSelect() {
  const options = state.models.map((m) => {
    const opt = new Option(modelLabel(m), m.name);
    opt.title = m.description || `${m.provider}/${m.model}`;
    if (m.available === false && m.name !== state.currentModel) opt.disabled = true;
    return opt;
  });
  if (state.currentModel && !state.models.some((m) => m.name === state.currentModel)) {
    options.unshift(new Option(state.currentModel, state.currentModel));
  }
  els.modelSelect.replaceChildren(...options);
  if (state.currentModel) els.modelSelect.value = state.currentModel;
  const cur = state.models.find((m) => m.name === state.currentModel);
  els.modelSelect.title = cur?.description || "Model";
}

async function refreshCurrentModel() {
  if (state.connState !== "connected") return;
  try {
    const current = await rpc("chat.getCurrentModel");
    if (current?.name && current.name !== state.currentModel) {
      state.currentModel = current.name;
      fillModelSelect();
    }
  } catch { /* shown elsewhere */ }
}

els.modelSelect.addEventListener("change", async () => {
  const name = els.modelSelect.value;
  const previous = state.currentModel;
  if (!name || name === previous) return;
  els.modelSelect.disabled = true;
  try {
    await rpc("chat.setModel", { modelName: name });
    state.currentModel = name;
    fillModelSelect();
    announce(`Model switched to ${name}.`);
  } catch (err) {
    if (previous) els.modelSelect.value = previous;
    if (err.code !== "disconnected") showToastError(describeError(err));
  } finally {
    updateControls();
  }
});

// Another tab may have switched the model (the choice lives on the gateway).
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible") refreshCurrentModel();
});
window.addEventListener("focus", () => refreshCurrentModel());

// ---------------------------------------------------------------------------
// Messages

function addMessage(role, content = "") {
  const li = document.createElement("li");
  li.className = `message ${role}`;
  li.dataset.testid = `message-${role}`;
  const label = document.createElement("div");
  label.className = "message-role";
  label.textContent = role === "user" ? "You" : "Assistant";
  const body = document.createElement("div");
  body.className = "message-body";
  li.append(label, body);
  const msg = { role, content, el: li, bodyEl: body, status: "done", usage: null, error: null };
  if (role === "user") renderContent(body, content, { markdown: false });
  els.messages.append(li);
  state.messages.push(msg);
  updateControls();
  return msg;
}

function renderAssistant(msg) {
  renderContent(msg.bodyEl, msg.content, { markdown: true });
  if (msg.status === "streaming") {
    const caret = document.createElement("span");
    caret.className = "caret";
    caret.setAttribute("aria-hidden", "true");
    const target = msg.bodyEl.lastElementChild && msg.bodyEl.classList.contains("markdown")
      ? msg.bodyEl.lastElementChild : msg.bodyEl;
    target.append(caret);
  }
}

let renderQueued = new Set();
let renderFrame = 0;
function scheduleRender(msg) {
  renderQueued.add(msg);
  if (renderFrame) return;
  renderFrame = requestAnimationFrame(flushRender);
  // Hidden tabs get no animation frames; keep the content current anyway.
  if (document.hidden) setTimeout(flushRender, 100);
}
function flushRender() {
  cancelAnimationFrame(renderFrame);
  renderFrame = 0;
  const queued = renderQueued;
  renderQueued = new Set();
  for (const msg of queued) renderAssistant(msg);
  if (queued.size) autoScroll();
}

function setMessageMeta(msg) {
  msg.el.querySelector(".message-meta")?.remove();
  const meta = document.createElement("div");
  meta.className = "message-meta";
  if (msg.finishNote) {
    const note = document.createElement("span");
    note.className = "finish";
    note.dataset.finish = msg.finishReason || "";
    note.textContent = msg.finishNote;
    meta.append(note);
  }
  if (msg.usage) {
    const u = msg.usage;
    const usage = document.createElement("span");
    usage.className = "usage";
    usage.dataset.testid = "usage";
    const parts = [];
    if (msg.model) parts.push(msg.model);
    if (u.totalTokens != null) parts.push(`${u.totalTokens} tokens`);
    usage.textContent = parts.join(" · ");
    const detail = [];
    if (u.promptTokens != null) detail.push(`${u.promptTokens} in`);
    if (u.completionTokens != null) detail.push(`${u.completionTokens} out`);
    if (detail.length) {
      const more = document.createElement("span");
      more.className = "usage-detail";
      more.textContent = ` (${detail.join(", ")})`;
      usage.append(more);
    }
    const full = [];
    if (u.promptTokens != null) full.push(`${u.promptTokens} prompt tokens`);
    if (u.completionTokens != null) full.push(`${u.completionTokens} completion tokens`);
    if (u.totalTokens != null) full.push(`${u.totalTokens} in total`);
    if (u.source === "estimate") full.push("counted by the gateway (estimate)");
    usage.title = full.join(", ");
    meta.append(usage);
  }
  if (msg.content) {
    const copy = document.createElement("button");
    copy.type = "button";
    copy.className = "btn btn-ghost btn-tiny copy";
    copy.textContent = "Copy";
    copy.setAttribute("aria-label", "Copy answer");
    copy.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(msg.content);
        copy.textContent = "Copied";
      } catch {
        copy.textContent = "Copy failed";
      }
      setTimeout(() => { copy.textContent = "Copy"; }, 1500);
    });
    meta.append(copy);
  }
  if (meta.childElementCount) msg.el.append(meta);
}

function showMessageError(msg, text, { retry = true } = {}) {
  msg.el.querySelector(".error")?.remove();
  const box = document.createElement("div");
  box.className = "error";
  box.dataset.testid = "error";
  box.setAttribute("role", "alert");
  const span = document.createElement("span");
  span.textContent = text;
  box.append(span);
  if (retry) {
    const btn = document.createElement("button");
    btn.type = "button";
    btn.className = "btn btn-ghost btn-tiny";
    btn.textContent = "Retry";
    btn.addEventListener("click", () => regenerate());
    box.append(btn);
  }
  msg.el.append(box);
}

let toastTimer = 0;
function showToastError(text) {
  let toast = document.querySelector(".toast");
  if (!toast) {
    toast = document.createElement("div");
    toast.className = "toast error";
    toast.dataset.testid = "error";
    toast.setAttribute("role", "alert");
    document.body.append(toast);
  }
  toast.textContent = text;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => toast.remove(), 8000);
}

function finishStream(msg, { result = null, error = null, interrupted = false } = {}) {
  if (state.streaming && state.streaming.msg === msg) {
    clearTimeout(state.streaming.cancelTimer);
    state.pending.delete(state.streaming.id);
    state.streaming = null;
  }
  if (msg.status !== "streaming") return;
  msg.status = "done";
  msg.el.removeAttribute("aria-busy");
  msg.el.classList.remove("streaming");
  flushRender();
  renderAssistant(msg);
  if (result) {
    msg.usage = result.usage || null;
    msg.model = result.model || null;
    msg.finishReason = result.finishReason;
    if (result.finishReason === "cancelled") msg.finishNote = "Stopped";
    else if (result.finishReason === "length") msg.finishNote = "Cut off at the length limit";
    else if (result.finishReason === "error") msg.finishNote = "Interrupted";
    msg.el.dataset.finish = result.finishReason || "stop";
  }
  if (interrupted && !result) {
    msg.finishReason = "cancelled";
    msg.finishNote = "Stopped";
    msg.el.dataset.finish = "cancelled";
  }
  setMessageMeta(msg);
  if (result?.finishReason === "error" && result.error) {
    showMessageError(msg, describeError(result.error));
  }
  if (error) {
    msg.el.dataset.finish = "error";
    msg.error = error;
    showMessageError(msg, describeError(error), { retry: error.code !== -32001 && error.code !== -32002 });
    if (!msg.content) msg.bodyEl.hidden = true;
  }
  if (error) announce(describeError(error));
  else if (msg.content) announce(`Answer${msg.finishNote ? ` (${msg.finishNote.toLowerCase()})` : ""}: ${plainPreview(msg)}`);
  updateControls();
  autoScroll();
}

function plainPreview(msg) {
  const text = (msg.bodyEl.textContent || msg.content).replace(/\s+/g, " ").trim();
  return text.length > 600 ? `${text.slice(0, 600)}…` : text;
}

/** Previous turns as the gateway wants them: completed user/assistant messages with text. */
function historyOf(messages) {
  return messages
    .filter((m) => (m.role === "user" || m.role === "assistant") && m.content && !m.error)
    .map((m) => ({ role: m.role, content: m.content }));
}

function startAnswer(text, history) {
  const msg = addMessage("assistant");
  msg.status = "streaming";
  msg.el.classList.add("streaming");
  msg.el.setAttribute("aria-busy", "true");
  renderAssistant(msg);
  state.stick = true;
  autoScroll(true);
  announce("Answering…");

  const { id, promise } = call("chat.chatWithHistory", { message: text, history }, (delta) => {
    if (msg.status !== "streaming") return;
    msg.content += delta;
    scheduleRender(msg);
  });
  state.streaming = { id, msg, cancelTimer: 0 };
  updateControls();
  promise.then(
    (result) => finishStream(msg, { result }),
    (err) => {
      if (err.code === "disconnected" && msg.content) {
        finishStream(msg, { result: { finishReason: "error" } });
        showMessageError(msg, describeError(err));
      } else {
        finishStream(msg, { error: err });
      }
      if (err.code === -32001 || err.code === -32002) {
        signOut(err.code === -32002 ? CLOSE_REASONS[4501] : CLOSE_REASONS[4500]);
      }
    },
  );
}

function sendPrompt() {
  const text = els.prompt.value;
  if (!text.trim() || state.streaming || state.connState !== "connected") return;
  const history = historyOf(state.messages);
  addMessage("user", text);
  els.prompt.value = "";
  autoGrow();
  startAnswer(text, history);
  els.prompt.focus();
}

function stop() {
  const s = state.streaming;
  if (!s) return;
  notify("rpc.cancel", { id: s.id });
  els.stop.disabled = true; // enabled again by updateControls when the stream ends
  // The gateway answers with finishReason "cancelled"; if that never comes, stop anyway.
  s.cancelTimer = setTimeout(() => {
    if (state.streaming === s) finishStream(s.msg, { interrupted: true });
  }, CANCEL_GRACE_MS);
  els.prompt.focus();
}

function regenerate() {
  if (state.streaming || state.connState !== "connected") return;
  // Drop the last answer (and any failed ones after the last question), ask again.
  let i = state.messages.length - 1;
  while (i >= 0 && state.messages[i].role === "assistant") i -= 1;
  if (i < 0) return;
  const question = state.messages[i];
  for (const m of state.messages.splice(i + 1)) m.el.remove();
  startAnswer(question.content, historyOf(state.messages.slice(0, i)));
}

function newChat() {
  if (state.streaming) {
    const s = state.streaming;
    notify("rpc.cancel", { id: s.id });
    finishStream(s.msg, { interrupted: true });
  }
  state.messages = [];
  els.messages.replaceChildren();
  els.prompt.value = "";
  autoGrow();
  updateControls();
  announce("New chat.");
  els.prompt.focus();
}

// ---------------------------------------------------------------------------
// Scrolling: follow the answer unless the person scrolled up to read.

function atBottom() {
  const s = els.scroller;
  return s.scrollHeight - s.scrollTop - s.clientHeight < STICK_THRESHOLD_PX;
}

function autoScroll(force = false) {
  if (force) state.stick = true;
  if (state.stick) els.scroller.scrollTop = els.scroller.scrollHeight;
  els.jump.hidden = state.stick || atBottom();
}

let lastScrollTop = 0;
els.scroller.addEventListener("scroll", () => {
  const top = els.scroller.scrollTop;
  if (atBottom()) state.stick = true;
  else if (top < lastScrollTop) state.stick = false; // moved up by the person
  lastScrollTop = top;
  els.jump.hidden = state.stick || atBottom();
}, { passive: true });
els.scroller.addEventListener("wheel", (ev) => {
  if (ev.deltaY < 0) state.stick = false;
}, { passive: true });

els.jump.addEventListener("click", () => {
  autoScroll(true);
  els.prompt.focus();
});

// ---------------------------------------------------------------------------
// Composer

function autoGrow() {
  els.prompt.style.height = "auto";
  els.prompt.style.height = `${Math.min(els.prompt.scrollHeight, window.innerHeight * 0.4)}px`;
}

els.prompt.addEventListener("input", () => {
  autoGrow();
  updateControls();
});
els.prompt.addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing && !ev.altKey && !ev.ctrlKey && !ev.metaKey) {
    ev.preventDefault();
    sendPrompt();
  } else if (ev.key === "Escape" && state.streaming) {
    ev.preventDefault();
    stop();
  }
});
els.composer.addEventListener("submit", (ev) => {
  ev.preventDefault();
  sendPrompt();
});
els.stop.addEventListener("click", () => stop());
els.regenerate.addEventListener("click", () => regenerate());
els.newChat.addEventListener("click", () => newChat());
els.signOut.addEventListener("click", () => signOut());
els.reconnectNow.addEventListener("click", () => {
  state.attempt = Math.max(state.attempt, 1);
  connect();
});
window.addEventListener("online", () => {
  if (state.token && (state.connState === "reconnecting" || state.connState === "disconnected")) {
    connect();
  }
});

els.signInForm.addEventListener("submit", (ev) => {
  ev.preventDefault();
  const token = els.tokenInput.value.trim();
  if (!token) {
    els.signInMessage.textContent = "Enter your access token.";
    els.signInMessage.hidden = false;
    els.tokenInput.focus();
    return;
  }
  els.signInMessage.hidden = true;
  signIn(token);
});

// ---------------------------------------------------------------------------
// Start

function tokenFromFragment() {
  const hash = location.hash.startsWith("#") ? location.hash.slice(1) : "";
  if (!hash) return null;
  const params = new URLSearchParams(hash);
  const token = params.get("token");
  if (token == null) return null;
  // Take the token out of the address bar (and history) at once.
  params.delete("token");
  const rest = params.toString();
  history.replaceState(history.state, "", `${location.pathname}${location.search}${rest ? `#${rest}` : ""}`);
  return token.trim() || null;
}

function start() {
  const fromUrl = tokenFromFragment();
  if (fromUrl) sessionStorage.setItem(TOKEN_KEY, fromUrl);
  const token = fromUrl || sessionStorage.getItem(TOKEN_KEY);
  updateControls();
  if (token) signIn(token);
  else showSignIn();
}

// Exposed for debugging in the console and for tests (read-only use).
window.gatewayChat = { state, markdownReady, describeError };

start();
