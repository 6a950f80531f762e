// Untrusted model output into the DOM: sanitized markdown (window.marked + window.DOMPurify,
// loaded by index.html from npm) when both loaded, else plain text. Nothing a model writes
// reaches the DOM as HTML unless it went through DOMPurify. Code blocks are highlighted with
// highlight.js (its browser build from npm, @highlightjs/cdn-assets) and get a language label
// and a copy button; without the library they stay plain.

import { copyButton } from "./ui.js";

const HLJS_URL = "/node_modules/@highlightjs/cdn-assets/es/highlight.min.js";
/** highlight.js, or null when its files are not installed (the page then shows plain code). */
const hljs = await import(HLJS_URL).then((m) => m.default, () => null);
export const highlighterReady = () => hljs !== null;

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
      for (const code of el.querySelectorAll("pre > code")) decorateCode(code);
      return;
    } catch (err) {
      console.warn("markdown rendering failed, showing plain text", err);
    }
  }
  el.classList.remove("markdown");
  el.textContent = text;
}

const HIGHLIGHTED = { ALLOWED_TAGS: ["span"], ALLOWED_ATTR: ["class"] };
const AUTO_DETECT_LIMIT = 20_000; // characters; guessing the language of more costs too much

function highlight(text, lang) {
  if (!hljs) return null;
  try {
    if (lang && hljs.getLanguage(lang)) {
      return hljs.highlight(text, { language: lang, ignoreIllegals: true });
    }
    if (!lang && text.length <= AUTO_DETECT_LIMIT) {
      const guess = hljs.highlightAuto(text);
      return guess.relevance >= 5 ? guess : null;
    }
  } catch (err) {
    console.warn("highlighting failed", err);
  }
  return null;
}

/** Highlight one sanitized `<pre><code>` and frame it with its language and a copy button. */
function decorateCode(code) {
  const pre = code.parentElement;
  const text = code.textContent;
  const named = /(?:^|\s)language-([\w+#.-]+)/.exec(code.className)?.[1]?.toLowerCase() || "";
  const result = highlight(text, named);
  if (result) {
    // highlight.js escapes the text itself; the sanitizer is a second fence (spans only).
    code.innerHTML = window.DOMPurify.sanitize(result.value, HIGHLIGHTED);
    code.classList.add("hljs");
  }
  const lang = named || result?.language || "";
  const frame = document.createElement("div");
  frame.className = "code-block";
  frame.dataset.testid = "code-block";
  const header = document.createElement("div");
  header.className = "code-header";
  const label = document.createElement("span");
  label.className = "code-lang";
  label.textContent = lang || "text";
  header.append(label, copyButton("Copy code", () => text));
  pre.replaceWith(frame);
  frame.append(header, pre);
}
