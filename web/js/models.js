// The model picker. It shows the open conversation's model; a choice made here becomes the
// person's choice in their gateway session too (so new chats and other tabs follow it), and
// `hooks.chosen(name)` tells the open conversation. A tab coming back into view asks again.

import { describeError } from "./errors.js";
import { announce, showToastError } from "./ui.js";

const select = document.getElementById("model-select");
let conn = null;
/** `current`: shown in the picker; `session`: the choice in the person's gateway session. */
export const models = { list: [], current: null, session: null };
const hooks = { chosen: async () => {} };

export function attach(connection, h) {
  conn = connection;
  Object.assign(hooks, h);
}

/** Show `name` in the picker without choosing it (the open conversation's model). */
export function show(name) {
  if (!name || name === models.current) return;
  models.current = name;
  fill();
}

function label(m) {
  return m.available === false ? `${m.name} (unavailable)` : m.name;
}

function fill() {
  const options = models.list.map((m) => {
    const opt = new Option(label(m), m.name);
    opt.title = m.description || `${m.provider}/${m.model}`;
    if (m.available === false && m.name !== models.current) opt.disabled = true;
    return opt;
  });
  if (models.current && !models.list.some((m) => m.name === models.current)) {
    options.unshift(new Option(models.current, models.current));
  }
  select.replaceChildren(...options);
  if (models.current) select.value = models.current;
  const cur = models.list.find((m) => m.name === models.current);
  select.title = cur?.description || "Model";
}

export function update({ ready }) {
  select.disabled = !ready || models.list.length === 0;
}

export async function load() {
  try {
    const [list, current] = await Promise.all([
      conn.rpc("chat.listModels"),
      conn.rpc("chat.getCurrentModel"),
    ]);
    models.list = Array.isArray(list) ? list : [];
    models.session = current?.name || models.list.find((m) => m.current)?.name || null;
    if (!models.current || !shownByConversation()) models.current = models.session;
    fill();
  } catch (err) {
    if (err.code === "disconnected") return;
    console.warn("could not load models", err);
    select.replaceChildren(new Option("Models unavailable", ""));
  }
  update({ ready: conn.ready });
}

let shownByConversation = () => false;
/** `fn()` tells whether a conversation decides what the picker shows. */
export function setOwner(fn) { shownByConversation = fn; }

async function refresh() {
  if (!conn?.ready) return;
  try {
    const current = await conn.rpc("chat.getCurrentModel");
    if (!current?.name) return;
    models.session = current.name;
    if (!shownByConversation() && current.name !== models.current) {
      models.current = current.name;
      fill();
    }
  } catch { /* shown elsewhere */ }
}

select.addEventListener("change", async () => {
  const name = select.value;
  const previous = models.current;
  if (!name || name === previous) return;
  select.disabled = true;
  try {
    await conn.rpc("chat.setModel", { modelName: name });
    models.current = models.session = name;
    fill();
    await hooks.chosen(name);
    announce(`Model switched to ${name}.`);
  } catch (err) {
    if (previous) select.value = previous;
    if (err.code !== "disconnected") showToastError(describeError(err));
  } finally {
    update({ ready: conn.ready });
  }
});

// Another tab may have switched the model (the choice lives on the gateway).
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible") refresh();
});
window.addEventListener("focus", () => refresh());
