// Small page-wide helpers: the live announcer and the error toast.

const announcer = document.getElementById("announcer");

/** Tell screen readers `text` (through the polite live region). */
export function announce(text) {
  announcer.textContent = "";
  // A separate tick so the same text twice is still announced.
  setTimeout(() => { announcer.textContent = text; }, 30);
}

let toastTimer = 0;
export function showToastError(text) {
  let toast = document.querySelector(".toast");
  if (!toast) {
    toast = document.createElement("div");
    toast.className = "toast error";
    toast.dataset.testid = "error";
    toast.setAttribute("role", "alert");
    document.body.append(toast);
  }
  toast.textContent = text;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => toast.remove(), 8000);
}
