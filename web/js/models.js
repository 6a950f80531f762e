// The model picker. The choice lives in the person's gateway session, so it follows them
// to other tabs; a tab coming back into view asks again.

import { describeError } from "./errors.js";
import { announce, showToastError } from "./ui.js";

const select = document.getElementById("model-select");
let conn = null;
export const models = { list: [], current: null };

export function attach(connection) { conn = connection; }

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
    models.current = current?.name || models.list.find((m) => m.current)?.name || null;
    fill();
  } catch (err) {
    if (err.code === "disconnected") return;
    console.warn("could not load models", err);
    select.replaceChildren(new Option("Models unavailable", ""));
  }
  update({ ready: conn.ready });
}

async function refresh() {
  if (!conn?.ready) return;
  try {
    const current = await conn.rpc("chat.getCurrentModel");
    if (current?.name && current.name !== models.current) {
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
    models.current = name;
    fill();
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
