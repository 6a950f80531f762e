// Versions of a message: the pager between siblings (an edited question, a regenerated
// answer) and editing a question in place, which sends it as a new version.

/** ‹ i/n › between the versions of `msg`; `switchTo(msg, siblingId)` on a step. */
export function pager(msg, switchTo) {
  const n = msg.siblingIds.length;
  if (n < 2 || !msg.id) return null;
  const i = msg.siblingIndex;
  const box = document.createElement("span");
  box.className = "pager";
  box.dataset.testid = "pager";
  const what = msg.role === "user" ? "question" : "answer";
  const step = (label, aria, to) => {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "btn btn-ghost btn-tiny pager-step";
    b.textContent = label;
    b.setAttribute("aria-label", aria);
    b.disabled = to < 0 || to >= n;
    b.addEventListener("click", () => switchTo(msg, msg.siblingIds[to]));
    return b;
  };
  const pos = document.createElement("span");
  pos.className = "pager-pos";
  pos.textContent = `${i + 1}/${n}`;
  pos.setAttribute("aria-label", `Version ${i + 1} of ${n} of this ${what}`);
  box.append(step("‹", `Previous version of this ${what}`, i - 1), pos, step("›", `Next version of this ${what}`, i + 1));
  return box;
}

/** Under a question: its pager and an Edit button (`hooks.edit(msg, text)` sends the edit). */
export function questionTools(msg, hooks) {
  msg.el.querySelector(":scope > .message-tools")?.remove();
  const tools = document.createElement("div");
  tools.className = "message-tools";
  const p = pager(msg, hooks.switchTo);
  if (p) tools.append(p);
  if (msg.id) {
    const edit = document.createElement("button");
    edit.type = "button";
    edit.className = "btn btn-ghost btn-tiny edit";
    edit.dataset.testid = "edit";
    edit.textContent = "Edit";
    edit.setAttribute("aria-label", "Edit this question");
    edit.addEventListener("click", () => startEdit(msg, hooks));
    tools.append(edit);
  }
  if (tools.childElementCount) msg.el.append(tools);
}

function startEdit(msg, hooks) {
  if (msg.el.querySelector(".edit-form")) return;
  const form = document.createElement("form");
  form.className = "edit-form";
  const area = document.createElement("textarea");
  area.value = msg.content;
  area.rows = Math.min(8, Math.max(2, msg.content.split("\n").length));
  area.dataset.testid = "edit-input";
  area.setAttribute("aria-label", "Edited question");
  const actions = document.createElement("div");
  actions.className = "edit-actions";
  const cancel = document.createElement("button");
  cancel.type = "button";
  cancel.className = "btn btn-ghost btn-small";
  cancel.textContent = "Cancel";
  const save = document.createElement("button");
  save.type = "submit";
  save.className = "btn btn-primary btn-small";
  save.dataset.testid = "edit-send";
  save.textContent = "Send";
  actions.append(cancel, save);
  form.append(area, actions);
  msg.bodyEl.hidden = true;
  msg.el.querySelector(":scope > .message-tools").hidden = true;
  msg.bodyEl.after(form);
  const close = () => {
    form.remove();
    msg.bodyEl.hidden = false;
    const tools = msg.el.querySelector(":scope > .message-tools");
    if (tools) tools.hidden = false;
  };
  cancel.addEventListener("click", () => {
    close();
    msg.el.querySelector(".edit")?.focus();
  });
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = area.value;
    if (!text.trim()) return;
    close();
    hooks.edit(msg, text);
  });
  area.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      form.requestSubmit();
    } else if (ev.key === "Escape") {
      ev.preventDefault();
      cancel.click();
    }
  });
  area.focus();
  area.setSelectionRange(area.value.length, area.value.length);
}

