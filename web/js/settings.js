// The settings of one conversation (instructions, temperature, answer length) and its export.
// Before a conversation exists the settings wait for it and go into conversation.create.

import { describeError } from "./errors.js";
import { announce, showToastError } from "./ui.js";

const $ = (id) => document.getElementById(id);
const els = {
  dialog: $("settings-dialog"),
  form: $("settings-form"),
  scope: $("settings-scope"),
  system: $("settings-system"),
  temperature: $("settings-temperature"),
  maxTokens: $("settings-max-tokens"),
  error: $("settings-error"),
  cancel: $("settings-cancel"),
  exportJson: $("export-json"),
  exportMarkdown: $("export-markdown"),
};

let conn = null;
/** Settings for the next new conversation: {systemPrompt?, params?}. */
let draft = {};
const hooks = { current: () => null, updated: () => {} };

/** `current()` gives the open conversation (or null); `updated(conv)` after a save. */
export function setHooks(h) { Object.assign(hooks, h); }
export function attach(connection) { conn = connection; }

/** What conversation.create should get for the next new conversation; then forgotten. */
export function takeDraft() {
  const d = draft;
  draft = {};
  return d;
}

function show(values) {
  els.system.value = values.systemPrompt || "";
  els.temperature.value = values.params?.temperature ?? "";
  els.maxTokens.value = values.params?.maxTokens ?? "";
}

function read() {
  const params = {};
  const t = els.temperature.value.trim();
  if (t !== "") {
    const n = Number(t);
    if (!Number.isFinite(n) || n < 0 || n > 2) throw new Error("Temperature is a number from 0 to 2.");
    params.temperature = n;
  }
  const m = els.maxTokens.value.trim();
  if (m !== "") {
    const n = Number(m);
    if (!Number.isInteger(n) || n < 1) throw new Error("Max answer tokens is a whole number, 1 or more.");
    params.maxTokens = n;
  }
  return { systemPrompt: els.system.value.trim(), params };
}

export function open() {
  const conv = hooks.current();
  els.error.hidden = true;
  show(conv || draft);
  els.scope.textContent = conv
    ? `For “${conv.title || "this conversation"}”. Changes apply to the next answer.`
    : "For the next new conversation.";
  els.exportJson.disabled = els.exportMarkdown.disabled = !conv;
  els.dialog.showModal();
  els.system.focus();
}

async function save() {
  let values;
  try {
    values = read();
  } catch (err) {
    els.error.textContent = err.message;
    els.error.hidden = false;
    return;
  }
  const conv = hooks.current();
  if (!conv) {
    draft = values;
    els.dialog.close();
    announce("Settings kept for the next new conversation.");
    return;
  }
  try {
    const updated = await conn.rpc("conversation.update", { conversationId: conv.id, ...values });
    els.dialog.close();
    hooks.updated(updated);
    announce("Settings saved. They apply to the next answer.");
  } catch (err) {
    els.error.textContent = describeError(err);
    els.error.hidden = false;
  }
}

async function download(format) {
  const conv = hooks.current();
  if (!conv) return;
  try {
    const out = await conn.rpc("conversation.export", { conversationId: conv.id, format });
    const type = format === "json" ? "application/json" : "text/markdown";
    const url = URL.createObjectURL(new Blob([out.content], { type: `${type};charset=utf-8` }));
    const a = document.createElement("a");
    a.href = url;
    a.download = out.filename || `conversation.${format === "json" ? "json" : "md"}`;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  } catch (err) {
    showToastError(describeError(err));
  }
}

els.form.addEventListener("submit", (ev) => {
  ev.preventDefault();
  save();
});
els.cancel.addEventListener("click", () => els.dialog.close());
els.exportJson.addEventListener("click", () => download("json"));
els.exportMarkdown.addEventListener("click", () => download("markdown"));
