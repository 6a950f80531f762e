// Gateway chat page: signs in, shows the connection, and wires the modules in js/ together.
// No build step: every file is an ES module served as it is; markdown comes from
// window.marked + window.DOMPurify when loaded, code highlighting from highlight.js.

import * as chat from "./js/chat.js";
import * as composer from "./js/composer.js";
import { Connection } from "./js/connection.js";
import * as conversations from "./js/conversations.js";
import { confirmAction } from "./js/dialog.js";
import { describeError } from "./js/errors.js";
import * as messages from "./js/messages.js";
import * as models from "./js/models.js";
import { highlighterReady, markdownReady } from "./js/render.js";
import * as settings from "./js/settings.js";
import { announce, showToastError } from "./js/ui.js";

// In localStorage, so a new tab of this browser is signed in too; Sign out forgets it.
const TOKEN_KEY = "gateway.token";

const $ = (id) => document.getElementById(id);
const els = {
  signInView: $("sign-in-view"),
  signInForm: $("sign-in-form"),
  signInMessage: $("sign-in-message"),
  tokenInput: $("token-input"),
  workspace: $("workspace"),
  chatControls: $("chat-controls"),
  sidebarToggle: $("sidebar-toggle"),
  newChat: $("new-chat"),
  settingsOpen: $("settings-open"),
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

const conn = new Connection({
  state: (connState, text, detail) => showConnState(connState, text, detail),
  login: (result, again) => onLogin(result, again),
  signedOut: (message) => {
    if (localStorage.getItem(TOKEN_KEY) === signedInWith) localStorage.removeItem(TOKEN_KEY);
    signedInWith = null;
    chat.abandon();
    conversations.clear();
    showSignIn(message);
  },
});
let signedInWith = null;

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
  els.workspace.hidden = true;
  els.chatControls.hidden = true;
  els.sidebarToggle.hidden = true;
  els.signOut.hidden = true;
  els.userName.hidden = true;
  els.signInMessage.textContent = message || "";
  els.signInMessage.hidden = !message;
  els.tokenInput.value = "";
  els.tokenInput.focus();
}

function showChat() {
  els.signInView.hidden = true;
  els.workspace.hidden = false;
  els.chatControls.hidden = false;
  els.sidebarToggle.hidden = false;
  els.signOut.hidden = false;
}

async function onLogin(result, again) {
  const user = result?.user || null;
  const name = user?.name || user?.id;
  els.userName.textContent = name || "";
  els.userName.hidden = !name;
  showChat();
  updateControls();
  if (again) {
    announce("Connected again.");
    chat.reconnected(); // an answer the old socket was delivering goes on where it stopped
  }
  if (!again || document.activeElement === document.body) composer.focus();
  await models.load();
  conversations.refresh();
  const wanted = chat.idFromHash();
  if (wanted && wanted !== chat.currentId()) chat.open(wanted);
  else if (again) chat.reload();
}

function signIn(token) {
  localStorage.setItem(TOKEN_KEY, token);
  signedInWith = token;
  conn.signIn(token);
}

async function askSignOut() {
  const ok = await confirmAction({
    heading: "Sign out?",
    body: "This browser forgets your token (every tab of it is signed out). Your conversations stay on the gateway.",
    confirm: "Sign out",
  });
  if (ok) conn.signOut();
}

function updateControls() {
  const ready = conn.ready;
  const busy = chat.busy();
  composer.update({ ready, busy, usable: ready || conn.everConnected });
  models.update({ ready });
  const last = messages.last();
  els.regenerate.hidden = !(last && last.role === "assistant" && !busy);
  els.regenerate.disabled = !ready;
  els.settingsOpen.disabled = !ready;
}

// ---------------------------------------------------------------------------
// Wiring

chat.attach(conn, updateControls);
conversations.attach(conn);
settings.attach(conn);
models.attach(conn, {
  chosen: async (name) => {
    const conv = chat.state.conversation;
    if (!conv || conv.model === name) return;
    try {
      chat.updated(await conn.rpc("conversation.update", { conversationId: conv.id, model: name }));
    } catch (err) {
      if (err.code !== "disconnected") showToastError(describeError(err));
    }
  },
});
models.setOwner(() => !!chat.state.conversation);
messages.setHooks({
  retry: (msg) => chat.regenerate(msg),
  changed: () => updateControls(),
  edit: (msg, text) => chat.edit(msg, text),
  switchTo: (msg, id) => chat.switchTo(msg, id),
});
composer.setHooks({ send: (text) => chat.send(text), stop: () => chat.stop(), changed: () => updateControls() });
conversations.setHooks({
  open: (id) => chat.open(id),
  deleted: (id) => { if (id === chat.currentId()) chat.newChat({ quiet: true }); },
  changed: (conv) => { if (conv && conv.id === chat.currentId()) chat.updated(conv); },
});
settings.setHooks({ current: () => chat.state.conversation, updated: (conv) => chat.updated(conv) });

els.regenerate.addEventListener("click", () => chat.regenerate());
els.newChat.addEventListener("click", () => {
  conversations.closeDrawer();
  chat.newChat();
});
els.settingsOpen.addEventListener("click", () => settings.open());
els.signOut.addEventListener("click", () => askSignOut());
els.reconnectNow.addEventListener("click", () => conn.retryNow());
window.addEventListener("online", () => {
  if (conn.token && (conn.connState === "reconnecting" || conn.connState === "disconnected")) {
    conn.connect();
  }
});
window.addEventListener("hashchange", () => {
  const id = chat.idFromHash();
  if (id && id !== chat.currentId()) chat.open(id);
});

// Another tab or device may have changed the conversations: look again on coming back.
function onReturn() {
  if (!conn.ready) return;
  conversations.refresh();
  chat.reload();
}
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible") onReturn();
});
window.addEventListener("focus", onReturn);

// Signing in or out in another tab of this browser.
window.addEventListener("storage", (ev) => {
  if (ev.key !== TOKEN_KEY && ev.key !== null) return;
  const token = localStorage.getItem(TOKEN_KEY);
  if (!token && conn.token) conn.signOut("You signed out in another tab.");
  else if (token && !conn.token) signIn(token);
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
  const token = tokenFromFragment() || localStorage.getItem(TOKEN_KEY);
  updateControls();
  if (token) signIn(token);
  else showSignIn();
}

// Exposed for debugging in the console and for tests (read-only use).
window.gatewayChat = { conn, chat: chat.state, markdownReady, highlighterReady, describeError };

start();
