// Asking and answering in a conversation kept on the gateway: open, send, edit a question,
// regenerate an answer, switch versions, stop. The gateway builds the history from the stored
// branch; after each answer the page shows the branch as stored. An answer cut short by a
// dropped socket or a reload of the page is resumed (`stream.resume`) into the same bubble.

import * as composer from "./composer.js";
import * as conversations from "./conversations.js";
import { CLOSE_REASONS, describeError, isAuthError } from "./errors.js";
import * as messages from "./messages.js";
import * as models from "./models.js";
import * as settings from "./settings.js";
import * as streams from "./streams.js";
import { announce, showToastError } from "./ui.js";

const CANCEL_GRACE_MS = 5_000;
const TITLE_RETRY_MS = 1_500;
const POLL_MS = 1_500;
const POLL_LIMIT = 80; // two minutes of waiting for an answer another tab is writing

const titleEl = document.getElementById("conversation-title");

export const state = {
  conversation: null,
  streaming: null, // see newStream()
  opening: 0,
};
let conn = null;
let changed = () => {};
let pollTimer = 0;
/**
 * Streams the gateway said it no longer has (-32040) -> the text this page had of them: shown
 * as interrupted, not resumed, and with that text while the stored message has less (nothing
 * is stored per delta, so a gateway that died kept none of it).
 */
const lostStreams = new Map();
/** Streams stopped while the socket was down: `stream.cancel` them once connected again. */
const cancelLater = new Set();

/** `onChange()` whenever the buttons may need updating. */
export function attach(connection, onChange) {
  conn = connection;
  changed = onChange;
}

export const busy = () => !!state.streaming;
export const currentId = () => state.conversation?.id || null;

function setConversation(conv) {
  state.conversation = conv;
  titleEl.textContent = conv ? conv.title || "New conversation" : "";
  titleEl.hidden = !conv;
  document.title = conv?.title ? `${conv.title} · Gateway chat` : "Gateway chat";
  conversations.setCurrent(conv?.id || null);
  const hash = conv ? `#c=${encodeURIComponent(conv.id)}` : "";
  if (location.hash !== hash) history.replaceState(history.state, "", `${location.pathname}${location.search}${hash}`);
}

/** The conversation id in the address (`#c=ID`), if any. */
export function idFromHash() {
  const params = new URLSearchParams(location.hash.replace(/^#/, ""));
  return params.get("c") || null;
}

function show(view) {
  setConversation(view.conversation);
  messages.showStored((view.messages || []).map(withLostText));
  if (view.conversation?.model) models.show(view.conversation.model);
  changed();
  if (!followStored(view)) schedulePoll(view);
}

function withLostText(m) {
  const had = m.streamId && m.status !== "done" && lostStreams.get(m.streamId);
  return had && had.content.length > (m.content || "").length ? { ...m, content: had.content } : m;
}

/**
 * Leave a running answer to finish on the gateway, which stores it; the page stops showing it.
 * (Opening another conversation or a new chat does this; Stop is what cancels an answer.)
 */
function detach() {
  const s = state.streaming;
  if (!s) return;
  s.detached = true;
  clearTimeout(s.cancelTimer);
  state.streaming = null;
  messages.setBusy(false);
}

/** Open a stored conversation (not found: say so and start a new chat). */
export async function open(id) {
  if (!conn.ready) return;
  if (id === currentId() && messages.shown.length) return;
  detach();
  const ticket = ++state.opening;
  try {
    const view = await conn.rpc("conversation.get", { conversationId: id });
    if (ticket !== state.opening || state.streaming) return;
    show(view);
    messages.autoScroll(true);
    announce(`Opened ${view.conversation.title || "conversation"}.`);
  } catch (err) {
    if (ticket !== state.opening || err.code === "disconnected") return;
    if (err.code === -32030) {
      newChat({ quiet: true });
      showToastError(describeError(err));
    } else {
      showToastError(describeError(err));
    }
  }
}

/** Fetch the open conversation again (another tab may have added to it). */
export async function reload({ force = false } = {}) {
  const conv = state.conversation;
  if (!conv || state.streaming || !conn.ready) return;
  if (document.querySelector(".edit-form")) return; // never throw away a half-edited question
  try {
    const view = await conn.rpc("conversation.get", { conversationId: conv.id });
    if (state.streaming || state.conversation?.id !== conv.id) return;
    const c = view.conversation;
    const same = c.activeLeafId === conv.activeLeafId && c.updatedAt === conv.updatedAt
      && c.messageCount === conv.messageCount && !view.messages.some((m) => m.status === "streaming");
    if (same && !force) {
      setConversation(c);
      return;
    }
    show(view);
  } catch (err) {
    if (err.code === -32030 && state.conversation?.id === conv.id) newChat({ quiet: true });
  }
}

function schedulePoll(view, round = 0) {
  clearTimeout(pollTimer);
  if (!view.messages?.some((m) => m.status === "streaming") || round >= POLL_LIMIT) return;
  pollTimer = setTimeout(async () => {
    const conv = state.conversation;
    if (!conv || conv.id !== view.conversation.id || state.streaming || !conn.ready) return;
    try {
      const next = await conn.rpc("conversation.get", { conversationId: conv.id });
      if (state.streaming || state.conversation?.id !== conv.id) return;
      show(next);
      schedulePoll(next, round + 1);
    } catch { /* the next reload will tell */ }
  }, POLL_MS);
}

export function newChat({ quiet = false } = {}) {
  detach();
  state.opening += 1;
  clearTimeout(pollTimer);
  setConversation(null);
  messages.clear();
  models.show(models.models.session);
  composer.clear();
  changed();
  if (!quiet) announce("New chat.");
  composer.focus();
}

// ---------------------------------------------------------------------------
// Answers

function finishStream(msg, { result = null, error = null, interrupted = false } = {}) {
  const s = state.streaming;
  if (s && s.msg === msg) {
    clearTimeout(s.cancelTimer);
    if (s.id != null) conn.pending.delete(s.id);
    // Stopped while the socket was down: the gateway still writes it until told.
    if (s.waiting && s.cancelled && s.streamId) cancelLater.add(s.streamId);
    if (s.conv) streams.forget(s.conv.id);
    state.streaming = null;
    messages.setBusy(false);
  }
  if (msg.status !== "streaming") return;
  messages.stopStreaming(msg);
  const requested = state.conversation?.model || null;
  if (result) messages.applyResult(msg, result, { requested });
  else if (interrupted) messages.applyResult(msg, { finishReason: "cancelled" });
  if (result?.finishReason === "error" && result.error) {
    messages.showError(msg, describeError(result.error));
  }
  if (error) {
    msg.el.dataset.finish = "error";
    msg.error = error;
    messages.showError(msg, describeError(error), { retry: !isAuthError(error) });
    if (!msg.content) msg.bodyEl.hidden = true;
    announce(describeError(error));
  } else if (msg.content) {
    announce(`Answer${msg.finishNote ? ` (${msg.finishNote.toLowerCase()})` : ""}: ${messages.plainPreview(msg)}`);
  }
  changed();
  messages.autoScroll();
}

/** The open conversation, created first when this is a new chat (unless `s` was left). */
async function ensureConversation(s) {
  if (state.conversation) return state.conversation;
  const params = { ...settings.takeDraft() };
  if (models.models.current) params.model = models.models.current;
  const conv = await conn.rpc("conversation.create", params);
  conversations.upsert(conv);
  if (!s.detached) setConversation(conv);
  return conv;
}

/**
 * A running answer shown in `msg`: `id` is the request that delivers it now (the asking call,
 * or a `stream.resume` after a reconnect or reload), `streamId` and `seq` say where to resume.
 */
function newStream(msg, { conv = null, known = new Set(), userMsg = null } = {}) {
  return {
    id: null, msg, conv, known, userMsg, cancelTimer: 0, cancelled: false, detached: false,
    streamId: null, seq: -1, resumed: false, waiting: false, replace: false, restarted: false,
  };
}

function onDelta(s, delta) {
  const msg = s.msg;
  if (msg.status !== "streaming" || s.detached) return;
  if (typeof delta.streamId === "string" && !s.streamId) s.streamId = delta.streamId;
  if (Number.isInteger(delta.seq)) {
    if (delta.seq <= s.seq) return; // already shown (seq is the position of a frame's last piece)
    s.seq = delta.seq;
  }
  if (s.replace) {
    // A replay from the start: what it shows replaces what was shown.
    s.replace = false;
    msg.content = "";
    msg.reasoning = "";
  }
  if (typeof delta.reasoning === "string") msg.reasoning += delta.reasoning;
  if (typeof delta.text === "string") msg.content += delta.text;
  if (s.conv) streams.remember(s.conv.id, s.streamId, s.seq);
  messages.scheduleRender(msg);
}

/** Follow `s` with `stream.resume` from after `after` (-1: the whole answer again). */
function resumeCall(s, after) {
  s.resumed = true;
  if (after < 0) {
    s.seq = -1;
    s.replace = true;
  }
  return conn.call("stream.resume", { streamId: s.streamId, after }, (delta) => onDelta(s, delta));
}

function sendCancel(s) {
  if (s.resumed && s.streamId) conn.rpc("stream.cancel", { streamId: s.streamId }).catch(() => {});
  else if (s.id != null) conn.notify("rpc.cancel", { id: s.id });
}

/**
 * Stream `method` into a new answer view placed after the shown messages.
 * `params(conversationId)` builds the call's params once the conversation exists.
 */
async function answer(method, params, { question = null } = {}) {
  const known = new Set(messages.shown.map((m) => m.id).filter(Boolean));
  const userMsg = question != null ? messages.add("user", question) : null;
  const msg = messages.add("assistant");
  messages.startStreaming(msg);
  announce("Answering…");
  const s = newStream(msg, { known, userMsg });
  state.streaming = s;
  messages.setBusy(true);
  changed();
  let conv;
  try {
    conv = await ensureConversation(s);
  } catch (err) {
    if (!s.detached) finishStream(msg, { error: err });
    return;
  }
  if (s.detached) return; // left before it was asked: nothing to answer
  s.conv = conv;
  streams.remember(conv.id, null, -1); // a reload before the first delta finds it too
  follow(s, conn.call(method, params(conv.id), (delta) => onDelta(s, delta)));
}

/** Wait for the final result of `call`, the request now delivering `s`, and show it. */
async function follow(s, call) {
  const { msg, conv } = s;
  s.id = call.id;
  if (s.cancelled) sendCancel(s);
  let result;
  try {
    result = await call.promise;
  } catch (err) {
    if (s.detached) {
      if (err.code !== "disconnected") forgetLeft(conv);
      return;
    }
    if (msg.status !== "streaming" || state.streaming !== s) return;
    if (err.code === "disconnected" && s.streamId) {
      // The gateway goes on writing it: resume once signed in again (reconnected()).
      s.id = null;
      s.waiting = true;
      return;
    }
    if (s.resumed && err.code === -32041 && !s.restarted) {
      s.restarted = true;
      follow(s, resumeCall(s, -1)); // the part after our seq is gone: take the whole answer again
      return;
    }
    if (s.resumed && (err.code === -32040 || err.code === -32041 || err.code === -32601)) {
      lost(s, err);
      return;
    }
    if (err.code === "disconnected" && msg.content) {
      finishStream(msg, { result: { finishReason: "error" } });
      messages.showError(msg, describeError(err));
    } else {
      finishStream(msg, { error: err });
    }
    // Lost before its first delta: once connected again, the stored answer may still be
    // written, and showing the conversation then follows it (followStored).
    if (err.code === "disconnected") streams.remember(conv.id, null, -1);
    if (isAuthError(err)) {
      conn.signOut(err.code === -32002 ? CLOSE_REASONS[4501] : CLOSE_REASONS[4500]);
      return;
    }
    if (err.code !== "disconnected") afterAnswer(conv, { known: s.known, failed: true });
    return;
  }
  if (s.detached) {
    forgetLeft(conv);
    conversations.refresh(); // it ended elsewhere; its title may be new
    return;
  }
  if (s.userMsg && result.userMessageId) s.userMsg.id = result.userMessageId;
  if (result.assistantMessageId) msg.id = result.assistantMessageId;
  finishStream(msg, { result });
  if (result.title) setConversation({ ...state.conversation, title: result.title });
  afterAnswer(conv, { known: s.known, assistantId: result.assistantMessageId || msg.id });
}

/** A left answer ended: forget it, unless its conversation is open and following it again. */
function forgetLeft(conv) {
  if (state.streaming?.conv?.id !== conv.id) streams.forget(conv.id);
}

/** The gateway no longer has the stream (it restarted, or the answer expired): keep the text. */
function lost(s, err) {
  lostStreams.set(s.streamId, { content: s.msg.content });
  finishStream(s.msg, { result: { finishReason: "error" } });
  messages.showError(s.msg, describeError(err));
  conversations.refresh();
  reload({ force: true }); // as stored (the gateway marks it interrupted), with the text kept
}

/** Signed in again on a new socket: resume the answer the old one was delivering. */
export function reconnected() {
  for (const streamId of cancelLater) conn.rpc("stream.cancel", { streamId }).catch(() => {});
  cancelLater.clear();
  const s = state.streaming;
  if (!s || !s.waiting || s.detached) return;
  s.waiting = false;
  follow(s, resumeCall(s, s.seq));
}

/**
 * After `view` was shown: when its last answer is still being written and this tab asked for
 * it (before a reload, or before the socket dropped early), show the rest as it comes.
 * Another tab's answer is left to the poll. True when it follows one.
 */
function followStored(view) {
  const conv = view.conversation;
  const last = messages.last();
  const rec = conv ? streams.recall(conv.id) : null;
  if (!conv || !last || last.role !== "assistant" || last.status !== "streaming") {
    if (rec && !state.streaming) streams.forget(conv.id);
    return false;
  }
  const streamId = view.messages.find((m) => m.id === last.id)?.streamId;
  if (streamId && lostStreams.has(streamId)) {
    // Still being written as far as the store knows (a gap): the poll shows it once stored.
    messages.stopStreaming(last);
    messages.applyResult(last, { finishReason: "error" });
    return false;
  }
  if (!rec || !streamId || (rec.streamId && rec.streamId !== streamId)) return false;
  if (state.streaming || !conn.ready) return false;
  const known = new Set(messages.shown.filter((m) => m !== last && m.id).map((m) => m.id));
  const s = newStream(last, { conv, known });
  s.streamId = streamId;
  state.streaming = s;
  messages.setBusy(true);
  changed();
  streams.remember(conv.id, streamId, -1);
  follow(s, resumeCall(s, -1)); // nothing of it is stored yet (no write per delta): replay it all
  return true;
}

/** Show the branch as stored once it has the answer; refresh the list for the new title. */
async function afterAnswer(conv, { known, assistantId = null, failed = false }) {
  conversations.refresh().then(syncTitle);
  setTimeout(() => conversations.refresh().then(syncTitle), TITLE_RETRY_MS);
  let view;
  try {
    view = await conn.rpc("conversation.get", { conversationId: conv.id });
  } catch {
    return;
  }
  if (state.streaming || state.conversation?.id !== conv.id) return;
  const last = view.messages[view.messages.length - 1];
  const stored = failed
    ? last && last.role === "assistant" && last.status === "error" && !known.has(last.id)
    : view.messages.some((m) => m.id === assistantId);
  if (stored) show(view);
  else setConversation(view.conversation); // what was shown stays (the gateway kept no answer)
}

function syncTitle() {
  const conv = state.conversation;
  const listed = conv && conversations.find(conv.id);
  if (listed && listed.title !== conv.title) setConversation({ ...conv, title: listed.title });
}

export function send(text) {
  if (!text.trim() || state.streaming || !conn.ready) return;
  composer.clear();
  answer("conversation.send", (id) => ({ conversationId: id, message: text }), { question: text });
  composer.focus();
}

/** Send an edited version of the question `msg`: a new branch from its parent. */
export function edit(msg, text) {
  if (state.streaming || !conn.ready || !msg.id) return;
  messages.truncate(messages.indexOf(msg));
  answer("conversation.edit", (id) => ({ conversationId: id, messageId: msg.id, message: text }), { question: text });
}

/** A new answer beside the answer `msg`; the old one stays a version away. */
export function regenerate(msg = messages.last()) {
  if (state.streaming || !conn.ready || !msg || msg.role !== "assistant") return;
  const i = messages.indexOf(msg);
  if (!msg.id) {
    // The gateway kept no answer (it failed before one was stored): ask the question again.
    const question = messages.shown[i - 1];
    if (!question || question.role !== "user") return;
    messages.truncate(i - 1);
    send(question.content);
    return;
  }
  messages.truncate(i);
  answer("conversation.regenerate", (id) => ({ conversationId: id, messageId: msg.id }));
}

/** Show another version (`siblingId`) in place of the message `msg`. */
export async function switchTo(msg, siblingId) {
  const conv = state.conversation;
  if (state.streaming || !conn.ready || !conv) return;
  try {
    const view = await conn.rpc("conversation.setActive", { conversationId: conv.id, messageId: siblingId });
    if (state.streaming || state.conversation?.id !== conv.id) return;
    show(view);
    const again = messages.shown.find((m) => m.id === siblingId);
    again?.el.querySelector(msg.role === "user" ? ".pager-pos" : ".message-meta .pager-pos")?.scrollIntoView({ block: "nearest" });
    announce(`Version ${again ? again.siblingIndex + 1 : ""} of ${again ? again.siblingIds.length : ""}.`);
  } catch (err) {
    if (err.code !== "disconnected") showToastError(describeError(err));
  }
}

export function stop() {
  const s = state.streaming;
  if (!s || s.cancelled) return;
  s.cancelled = true; // sent once the call is made (or, socket down, once it is resumed)
  if (s.id != null && !s.waiting) sendCancel(s);
  composer.stopping(); // enabled again when the stream ends
  // The gateway answers with finishReason "cancelled"; if that never comes, stop anyway.
  s.cancelTimer = setTimeout(() => {
    if (state.streaming === s) finishStream(s.msg, { interrupted: true });
  }, CANCEL_GRACE_MS);
  composer.focus();
}

/** Signed out: end what is running and show nothing of the conversation any more. */
export function abandon() {
  if (state.streaming) finishStream(state.streaming.msg, { interrupted: true });
  cancelLater.clear();
  streams.forgetAll();
  newChat({ quiet: true });
}

/** After the settings dialog saved `conv`. */
export function updated(conv) {
  setConversation({ ...state.conversation, ...conv });
  conversations.upsert(conv);
}
