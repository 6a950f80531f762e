// A confirmation asked in a modal <dialog>: Esc or Cancel says no, focus returns where it was.

const dialog = document.getElementById("confirm-dialog");
const title = document.getElementById("confirm-title");
const text = document.getElementById("confirm-text");
const ok = document.getElementById("confirm-ok");

let settle = null; // answers the question asked last, once
let back = null; // where the focus returns

function answer(yes) {
  const done = settle;
  settle = null;
  if (!done) return;
  if (back instanceof HTMLElement && back.isConnected) back.focus();
  done(yes);
}

// The close event comes in a task of its own, after the dialog closed: input can come first
// (Esc, then Enter on the button that asks again). An event that finds the dialog open again
// belongs to a closing whose question was already answered when the next one was asked.
dialog.addEventListener("close", () => {
  if (!dialog.open) answer(dialog.returnValue === "ok");
});

/** Resolves true when the person confirms. */
export function confirmAction({ heading, body = "", confirm = "OK" }) {
  if (settle) {
    // Still showing: the new question replaces it ("no"). Closed, its event not here yet: the
    // answer it was given.
    const showing = dialog.open;
    answer(!showing && dialog.returnValue === "ok");
    if (!showing) back = document.activeElement;
  } else {
    back = document.activeElement;
  }
  title.textContent = heading;
  text.textContent = body;
  text.hidden = !body;
  ok.textContent = confirm;
  dialog.returnValue = "";
  if (!dialog.open) dialog.showModal();
  ok.focus();
  return new Promise((resolve) => { settle = resolve; });
}
