// The message box: grows with its text, Enter sends, Shift+Enter adds a line, Esc stops.

const els = {
  form: document.getElementById("composer"),
  prompt: document.getElementById("prompt"),
  send: document.getElementById("send"),
  stop: document.getElementById("stop"),
};

const hooks = { send: () => {}, stop: () => {}, changed: () => {} };
let streaming = false;

/** `send(text)` on Enter or the send button; `stop()` on Esc or the stop button. */
export function setHooks(h) { Object.assign(hooks, h); }

export const text = () => els.prompt.value;
export const focus = () => els.prompt.focus();

export function clear() {
  els.prompt.value = "";
  autoGrow();
}

export function set(value) {
  els.prompt.value = value;
  autoGrow();
}

/** Show the right buttons for the connection (`ready`) and a running answer (`busy`). */
export function update({ ready, busy, usable }) {
  streaming = busy;
  els.prompt.disabled = !usable;
  els.send.disabled = !ready || busy || !els.prompt.value.trim();
  els.send.hidden = busy;
  els.stop.hidden = !busy;
  if (!busy) els.stop.disabled = false;
}

export function stopping() { els.stop.disabled = true; }

function autoGrow() {
  els.prompt.style.height = "auto";
  els.prompt.style.height = `${Math.min(els.prompt.scrollHeight, window.innerHeight * 0.4)}px`;
}

els.prompt.addEventListener("input", () => {
  autoGrow();
  hooks.changed();
});
els.prompt.addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing && !ev.altKey && !ev.ctrlKey && !ev.metaKey) {
    ev.preventDefault();
    hooks.send(els.prompt.value);
  } else if (ev.key === "Escape" && streaming) {
    ev.preventDefault();
    hooks.stop();
  }
});
els.form.addEventListener("submit", (ev) => {
  ev.preventDefault();
  hooks.send(els.prompt.value);
});
els.stop.addEventListener("click", () => hooks.stop());
