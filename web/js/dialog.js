// A confirmation asked in a modal <dialog>: Esc or Cancel says no, focus returns where it was.

const dialog = document.getElementById("confirm-dialog");
const title = document.getElementById("confirm-title");
const text = document.getElementById("confirm-text");
const ok = document.getElementById("confirm-ok");

/** Resolves true when the person confirms. */
export function confirmAction({ heading, body = "", confirm = "OK" }) {
  if (dialog.open) dialog.close("cancel");
  const back = document.activeElement;
  title.textContent = heading;
  text.textContent = body;
  text.hidden = !body;
  ok.textContent = confirm;
  dialog.returnValue = "";
  dialog.showModal();
  ok.focus();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      if (back instanceof HTMLElement && back.isConnected) back.focus();
      resolve(dialog.returnValue === "ok");
    }, { once: true });
  });
}
