// Small page-wide helpers: the live announcer, the error toast, copy buttons.

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

/** A small Copy button putting `getText()` on the clipboard. */
export function copyButton(label, getText) {
  const copy = document.createElement("button");
  copy.type = "button";
  copy.className = "btn btn-ghost btn-tiny copy";
  copy.textContent = "Copy";
  copy.setAttribute("aria-label", label);
  copy.addEventListener("click", async () => {
    copy.textContent = (await writeClipboard(getText())) ? "Copied" : "Copy failed";
    setTimeout(() => { copy.textContent = "Copy"; }, 1500);
  });
  return copy;
}

async function writeClipboard(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // No async clipboard outside secure contexts (a LAN address over http): the old way.
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "visually-hidden";
    document.body.append(area);
    area.select();
    let ok = false;
    try { ok = document.execCommand("copy"); } catch { /* unsupported */ }
    area.remove();
    return ok;
  }
}
