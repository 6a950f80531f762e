// The message list: one <li> per message of the active branch, answers rendered as they
// stream, their meta line (versions, failover, usage, cost, dropped turns, copy) and error
// boxes (versions and editing: versions.js); follows the answer while the person has not
// scrolled up.

import { renderContent } from "./render.js";
import { describeError } from "./errors.js";
import { copyButton } from "./ui.js";
import { pager, questionTools } from "./versions.js";

const STICK_THRESHOLD_PX = 48;

const els = {
  scroller: document.getElementById("scroller"),
  emptyState: document.getElementById("empty-state"),
  list: document.getElementById("messages"),
  jump: document.getElementById("jump"),
};

/** Messages shown, oldest first: {role, content, el, bodyEl, status, usage, error, ...}. */
export const shown = [];
let stick = true;
const hooks = { retry: () => {}, changed: () => {}, edit: () => {}, switchTo: () => {} };

/** `retry(msg)` on a Retry button; `changed()` after the list changed; `edit(msg, text)` when an
 * edited question is sent; `switchTo(msg, siblingId)` from a pager. */
export function setHooks(h) { Object.assign(hooks, h); }

export function isEmpty() { return shown.length === 0; }
export const indexOf = (msg) => shown.indexOf(msg);
/** Let nothing be edited or switched while an answer is written. */
export function setBusy(busy) { els.list.classList.toggle("busy", busy); }
export function last() { return shown[shown.length - 1]; }

export function add(role, content = "") {
  const li = document.createElement("li");
  li.className = `message ${role}`;
  li.dataset.testid = `message-${role}`;
  const label = document.createElement("div");
  label.className = "message-role";
  label.textContent = role === "user" ? "You" : "Assistant";
  const body = document.createElement("div");
  body.className = "message-body";
  li.append(label, body);
  const msg = {
    id: null, role, content, reasoning: "", el: li, bodyEl: body, status: "done",
    usage: null, error: null, siblingIds: [], siblingIndex: 0,
  };
  if (role === "user") {
    renderContent(body, content, { markdown: false });
    questionTools(msg, hooks);
  }
  els.list.append(li);
  shown.push(msg);
  els.emptyState.hidden = true;
  hooks.changed();
  return msg;
}

/** Remove the messages from index `from` on. */
export function truncate(from) {
  for (const m of shown.splice(from)) m.el.remove();
  els.emptyState.hidden = shown.length > 0;
  hooks.changed();
}

export function clear() { truncate(0); }

export function startStreaming(msg, { scroll = true } = {}) {
  msg.status = "streaming";
  msg.el.classList.add("streaming");
  msg.el.setAttribute("aria-busy", "true");
  render(msg);
  if (scroll) autoScroll(true);
}

export function stopStreaming(msg) {
  msg.status = "done";
  msg.el.removeAttribute("aria-busy");
  msg.el.classList.remove("streaming");
  flushRender();
  render(msg);
}

/** The model's reasoning, collapsed above the answer and never mixed into it. */
function renderReasoning(msg) {
  if (!msg.reasoning) return;
  let box = msg.el.querySelector(":scope > .reasoning");
  if (!box) {
    box = document.createElement("details");
    box.className = "reasoning";
    box.dataset.testid = "reasoning";
    box.append(document.createElement("summary"), document.createElement("div"));
    box.lastElementChild.className = "reasoning-body";
    msg.bodyEl.before(box);
  }
  const thinking = msg.status === "streaming" && !msg.content;
  box.firstElementChild.textContent = thinking ? "Reasoning…" : "Reasoning";
  box.classList.toggle("thinking", thinking);
  box.lastElementChild.textContent = msg.reasoning;
}

function render(msg) {
  renderReasoning(msg);
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
export function scheduleRender(msg) {
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
  for (const msg of queued) render(msg);
  if (queued.size) autoScroll();
}

function usageLine(msg) {
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
  return usage;
}

const FINISH_NOTES = {
  cancelled: "Stopped",
  length: "Cut off at the length limit",
  error: "Interrupted",
  interrupted: "Interrupted: the gateway restarted while this was written",
};

/** Take an answer's final result (live or stored) into `msg` and show its meta line. */
export function applyResult(msg, result, { requested = null } = {}) {
  msg.usage = result.usage || null;
  msg.model = result.model || null;
  msg.requestedModel = requested;
  msg.finishReason = result.finishReason || "stop";
  msg.finishNote = FINISH_NOTES[msg.finishReason] || "";
  msg.droppedTurns = result.droppedTurns || 0;
  msg.cost = result.cost ?? result.usage?.cost ?? null;
  msg.el.dataset.finish = msg.finishReason;
  setMeta(msg);
}

const STATUS_FINISH = { unfinished: "cancelled", error: "error", interrupted: "interrupted" };

/** Show the stored messages of a branch (root to leaf) instead of what is shown now. */
export function showStored(list) {
  const keepOpen = new Set(shown.filter((m) => m.el.querySelector(".reasoning[open]")).map((m) => m.id));
  // Reasoning streamed to this page stays shown even when the stored message has none.
  const reasoned = new Map(shown.filter((m) => m.id && m.reasoning).map((m) => [m.id, m.reasoning]));
  const top = els.scroller.scrollTop;
  clear();
  for (const s of list) {
    if (s.role !== "user" && s.role !== "assistant") continue;
    const msg = add(s.role, s.content);
    setStored(msg, s);
    if (s.role === "assistant") {
      msg.reasoning = s.reasoning || s.result?.reasoning || reasoned.get(s.id) || "";
      if (s.status === "streaming") {
        startStreaming(msg, { scroll: false });
        continue;
      }
      render(msg);
      const result = { ...(s.result || {}), usage: s.usage ?? s.result?.usage };
      result.finishReason = STATUS_FINISH[s.status] || s.finishReason || result.finishReason || "stop";
      result.model = s.result?.model || s.model;
      applyResult(msg, result, { requested: s.model || null });
      if (s.status === "error" && s.result?.error) showError(msg, describeError(s.result.error));
      if (keepOpen.has(msg.id)) msg.el.querySelector(".reasoning")?.setAttribute("open", "");
    }
  }
  if (stick) autoScroll();
  else els.scroller.scrollTop = top;
}

/** The stored identity of a shown message: id and its versions. */
export function setStored(msg, s) {
  msg.id = s.id;
  msg.parentId = s.parentId ?? null;
  msg.siblingIds = Array.isArray(s.siblingIds) ? s.siblingIds : [s.id];
  msg.siblingIndex = Number.isInteger(s.siblingIndex) ? s.siblingIndex : msg.siblingIds.indexOf(s.id);
  msg.el.dataset.id = s.id;
  if (msg.role === "user") questionTools(msg, hooks);
  else setMeta(msg);
}

export function setMeta(msg) {
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
  const p = pager(msg, hooks.switchTo);
  if (p) meta.append(p);
  if (msg.requestedModel && msg.model && msg.requestedModel !== msg.model) {
    const note = document.createElement("span");
    note.className = "failover";
    note.dataset.testid = "failover";
    note.textContent = `Answered by ${msg.model}: ${msg.requestedModel} was unavailable`;
    meta.append(note);
  }
  if (msg.usage) meta.append(usageLine(msg));
  if (msg.cost != null) {
    const cost = document.createElement("span");
    cost.className = "cost";
    cost.dataset.testid = "cost";
    cost.textContent = formatCost(msg.cost);
    cost.title = "What this answer cost, by the prices the operator configured";
    meta.append(cost);
  }
  if (msg.droppedTurns > 0) {
    const dropped = document.createElement("span");
    dropped.className = "dropped";
    dropped.dataset.testid = "dropped";
    const n = msg.droppedTurns;
    dropped.textContent = `${n} earlier message${n === 1 ? "" : "s"} left out to fit the model's context`;
    meta.append(dropped);
  }
  if (msg.content) meta.append(copyButton("Copy answer", () => msg.content));
  if (meta.childElementCount) msg.el.append(meta);
}

function formatCost(usd) {
  const n = Number(usd);
  if (!Number.isFinite(n)) return "";
  if (n === 0) return "$0";
  return n < 0.01 ? `$${n.toPrecision(2)}` : `$${n.toFixed(2)}`;
}

export function showError(msg, text, { retry = true } = {}) {
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
    btn.addEventListener("click", () => hooks.retry(msg));
    box.append(btn);
  }
  msg.el.append(box);
}

export function plainPreview(msg) {
  const text = (msg.bodyEl.textContent || msg.content).replace(/\s+/g, " ").trim();
  return text.length > 600 ? `${text.slice(0, 600)}…` : text;
}

// ---------------------------------------------------------------------------
// Scrolling: follow the answer unless the person scrolled up to read.

function atBottom() {
  const s = els.scroller;
  return s.scrollHeight - s.scrollTop - s.clientHeight < STICK_THRESHOLD_PX;
}

export function autoScroll(force = false) {
  if (force) stick = true;
  if (stick) els.scroller.scrollTop = els.scroller.scrollHeight;
  els.jump.hidden = stick || atBottom();
}

let lastScrollTop = 0;
els.scroller.addEventListener("scroll", () => {
  const top = els.scroller.scrollTop;
  if (atBottom()) stick = true;
  else if (top < lastScrollTop) stick = false; // moved up by the person
  lastScrollTop = top;
  els.jump.hidden = stick || atBottom();
}, { passive: true });
els.scroller.addEventListener("wheel", (ev) => {
  if (ev.deltaY < 0) stick = false;
}, { passive: true });
els.jump.addEventListener("click", () => {
  autoScroll(true);
  document.getElementById("prompt").focus();
});
