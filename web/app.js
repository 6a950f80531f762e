// Gateway chat page: wires the modules in js/ together. No build step: every file is an ES
// module served as it is; markdown comes from window.marked + window.DOMPurify when loaded.

import * as composer from "./js/composer.js";
import { Connection } from "./js/connection.js";
import { CLOSE_REASONS, describeError, isAuthError } from "./js/errors.js";
import * as messages from "./js/messages.js";
import * as models from "./js/models.js";
import { markdownReady } from "./js/render.js";
import { announce } from "./js/ui.js";

const TOKEN_KEY = "gateway.token";
const CANCEL_GRACE_MS = 5_000;

const $ = (id) => document.getElementById(id);
const els = {
  signInView: $("sign-in-view"),
  signInForm: $("sign-in-form"),
  signInMessage: $("sign-in-message"),
  tokenInput: $("token-input"),
  chatView: $("chat-view"),
  chatControls: $("chat-controls"),
  newChat: $("new-chat"),
  status: $("status"),
  statusText: $("status-text"),
  statusDetail: $("status-detail"),
  reconnectNow: $("reconnect-now"),
  userName: $("user-name"),
  signOut: $("sign-out"),
  regenerate: $("regenerate"),
};

const STATE_LABELS = {
  connecting: "Connecting…",
  connected: "Connected",
  reconnecting: "Reconnecting…",
  disconnected: "Disconnected",
  "signed-out": "Signed out",
};

const state = {
  streaming: null, // {id, msg, cancelTimer}
  user: null,
};

const conn = new Connection({
  state: (connState, text, detail) => showConnState(connState, text, detail),
  login: (result, again) => onLogin(result, again),
  signedOut: (message) => {
    sessionStorage.removeItem(TOKEN_KEY);
    if (state.streaming) finishStream(state.streaming.msg, { interrupted: true });
    showSignIn(message);
  },
});
models.attach(conn);

// ---------------------------------------------------------------------------
// Connection state and sign-in

/** `text` goes to the live status region; `detail` (a countdown, say) is shown but not announced. */
function showConnState(connState, text, detail = "") {
  els.statusDetail.textContent = detail;
  const label = text || STATE_LABELS[connState] || connState;
  if (els.status.dataset.state !== connState || els.statusText.textContent !== label) {
    els.status.dataset.state = connState;
    els.statusText.textContent = label;
  }
  els.reconnectNow.hidden = !(connState === "reconnecting" || connState === "disconnected");
  updateControls();
}

function showSignIn(message) {
  els.signInView.hidden = false;
  els.chatView.hidden = true;
  els.chatControls.hidden = true;
  els.signOut.hidden = true;
  els.userName.hidden = true;
  els.signInMessage.textContent = message || "";
  els.signInMessage.hidden = !message;
  els.tokenInput.value = "";
  els.tokenInput.focus();
}

function showChat() {
  els.signInView.hidden = true;
  els.chatView.hidden = false;
  els.chatControls.hidden = false;
  els.signOut.hidden = false;
}

function onLogin(result, again) {
  state.user = result?.user || null;
  const name = state.user?.name || state.user?.id;
  els.userName.textContent = name || "";
  els.userName.hidden = !name;
  showChat();
  updateControls();
  if (again) announce("Connected again.");
  models.load();
  if (!again || document.activeElement === document.body) composer.focus();
}

function signIn(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
  conn.signIn(token);
}

function updateControls() {
  const ready = conn.ready;
  const busy = !!state.streaming;
  composer.update({ ready, busy, usable: ready || conn.everConnected });
  models.update({ ready });
  const last = messages.last();
  els.regenerate.hidden = !(last && last.role === "assistant" && !busy);
  els.regenerate.disabled = !ready;
}

// ---------------------------------------------------------------------------
// Asking and answering

function finishStream(msg, { result = null, error = null, interrupted = false } = {}) {
  if (state.streaming && state.streaming.msg === msg) {
    clearTimeout(state.streaming.cancelTimer);
    conn.pending.delete(state.streaming.id);
    state.streaming = null;
  }
  if (msg.status !== "streaming") return;
  messages.stopStreaming(msg);
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
  messages.setMeta(msg);
  if (result?.finishReason === "error" && result.error) {
    messages.showError(msg, describeError(result.error));
  }
  if (error) {
    msg.el.dataset.finish = "error";
    msg.error = error;
    messages.showError(msg, describeError(error), { retry: !isAuthError(error) });
    if (!msg.content) msg.bodyEl.hidden = true;
  }
  if (error) announce(describeError(error));
  else if (msg.content) announce(`Answer${msg.finishNote ? ` (${msg.finishNote.toLowerCase()})` : ""}: ${messages.plainPreview(msg)}`);
  updateControls();
  messages.autoScroll();
}

/** Previous turns as the gateway wants them: completed user/assistant messages with text. */
function historyOf(list) {
  return list
    .filter((m) => (m.role === "user" || m.role === "assistant") && m.content && !m.error)
    .map((m) => ({ role: m.role, content: m.content }));
}

function startAnswer(text, history) {
  const msg = messages.add("assistant");
  messages.startStreaming(msg);
  announce("Answering…");
  const { id, promise } = conn.call("chat.chatWithHistory", { message: text, history }, (delta) => {
    if (msg.status !== "streaming") return;
    if (typeof delta.reasoning === "string") msg.reasoning += delta.reasoning;
    if (typeof delta.text === "string") msg.content += delta.text;
    messages.scheduleRender(msg);
  });
  state.streaming = { id, msg, cancelTimer: 0 };
  updateControls();
  promise.then(
    (result) => finishStream(msg, { result }),
    (err) => {
      if (msg.status !== "streaming") return;
      if (err.code === "disconnected" && msg.content) {
        finishStream(msg, { result: { finishReason: "error" } });
        messages.showError(msg, describeError(err));
      } else {
        finishStream(msg, { error: err });
      }
      if (isAuthError(err)) conn.signOut(err.code === -32002 ? CLOSE_REASONS[4501] : CLOSE_REASONS[4500]);
    },
  );
}

function sendPrompt(text) {
  if (!text.trim() || state.streaming || !conn.ready) return;
  const history = historyOf(messages.shown);
  messages.add("user", text);
  composer.clear();
  startAnswer(text, history);
  composer.focus();
}

function stop() {
  const s = state.streaming;
  if (!s) return;
  conn.notify("rpc.cancel", { id: s.id });
  composer.stopping(); // enabled again by updateControls when the stream ends
  // The gateway answers with finishReason "cancelled"; if that never comes, stop anyway.
  s.cancelTimer = setTimeout(() => {
    if (state.streaming === s) finishStream(s.msg, { interrupted: true });
  }, CANCEL_GRACE_MS);
  composer.focus();
}

function regenerate() {
  if (state.streaming || !conn.ready) return;
  // Drop the last answer (and any failed ones after the last question), ask again.
  const shown = messages.shown;
  let i = shown.length - 1;
  while (i >= 0 && shown[i].role === "assistant") i -= 1;
  if (i < 0) return;
  const question = shown[i];
  messages.truncate(i + 1);
  startAnswer(question.content, historyOf(shown.slice(0, i)));
}

function newChat() {
  if (state.streaming) {
    const s = state.streaming;
    conn.notify("rpc.cancel", { id: s.id });
    finishStream(s.msg, { interrupted: true });
  }
  messages.clear();
  composer.clear();
  updateControls();
  announce("New chat.");
  composer.focus();
}

// ---------------------------------------------------------------------------
// Wiring

messages.setHooks({ retry: () => regenerate(), changed: () => updateControls() });
composer.setHooks({ send: sendPrompt, stop, changed: () => updateControls() });
els.regenerate.addEventListener("click", () => regenerate());
els.newChat.addEventListener("click", () => newChat());
els.signOut.addEventListener("click", () => conn.signOut());
els.reconnectNow.addEventListener("click", () => conn.retryNow());
window.addEventListener("online", () => {
  if (conn.token && (conn.connState === "reconnecting" || conn.connState === "disconnected")) {
    conn.connect();
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
  const token = tokenFromFragment() || sessionStorage.getItem(TOKEN_KEY);
  updateControls();
  if (token) signIn(token);
  else showSignIn();
}

// Exposed for debugging in the console and for tests (read-only use).
window.gatewayChat = { state, conn, markdownReady, describeError };

start();
