// Untrusted model output into the DOM: sanitized markdown (window.marked + window.DOMPurify,
// loaded by index.html from npm) when both loaded, else plain text. Nothing a model writes
// reaches the DOM as HTML unless it went through DOMPurify.

export const markdownReady = () =>
  typeof window.marked?.parse === "function" && typeof window.DOMPurify?.sanitize === "function";

let purifyConfigured = false;
function configurePurify() {
  if (purifyConfigured || !markdownReady()) return;
  purifyConfigured = true;
  window.DOMPurify.addHook("afterSanitizeAttributes", (node) => {
    if (node.tagName === "A") {
      const href = node.getAttribute("href") || "";
      if (href && !href.startsWith("#")) {
        node.setAttribute("target", "_blank");
        node.setAttribute("rel", "noopener noreferrer nofollow");
      }
    }
  });
}

const PURIFY_OPTIONS = {
  USE_PROFILES: { html: true }, // no SVG or MathML
  // No remote images (tracking pixels) and nothing that can submit or restyle the page.
  FORBID_TAGS: ["img", "style", "form", "input", "button", "textarea", "select", "option",
    "iframe", "frame", "object", "embed", "video", "audio", "source", "picture", "link", "meta", "base"],
  FORBID_ATTR: ["style", "srcset"],
  ALLOW_DATA_ATTR: false,
};

/** Put `text` (untrusted) into `el`, as sanitized markdown when possible, else as plain text. */
export function renderContent(el, text, { markdown }) {
  if (markdown && markdownReady()) {
    configurePurify();
    try {
      const html = window.marked.parse(text, { gfm: true, breaks: true, async: false });
      el.innerHTML = window.DOMPurify.sanitize(html, PURIFY_OPTIONS);
      el.classList.add("markdown");
      return;
    } catch (err) {
      console.warn("markdown rendering failed, showing plain text", err);
    }
  }
  el.classList.remove("markdown");
  el.textContent = text;
}
