// Model output is untrusted: Markdown is turned into HTML, sanitized, and only then shown.
// Scripts, event handlers, styles and forms never survive DOMPurify; the page's CSP blocks
// what might be missed (no inline script, images only from the gateway or data: URLs).
import { marked } from "./vendor/marked.esm.js";
import DOMPurify from "./vendor/purify.es.mjs";
import hljs from "./vendor/highlight.min.js";

marked.use({ gfm: true });

const FORBID_TAGS = ["style", "form", "input", "button", "textarea", "select", "iframe", "object", "embed"];

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    node.setAttribute("rel", "noopener noreferrer");
    node.setAttribute("target", "_blank");
  }
});

export function toSafeHtml(text) {
  return DOMPurify.sanitize(marked.parse(text ?? ""), {
    USE_PROFILES: { html: true },
    FORBID_TAGS,
    FORBID_ATTR: ["style"],
  });
}

// Renders `text` into `element`: sanitized Markdown, highlighted code with a Copy button.
export function renderMarkdown(element, text) {
  element.innerHTML = toSafeHtml(text);
  for (const code of element.querySelectorAll("pre > code")) {
    hljs.highlightElement(code);
    const copy = document.createElement("button");
    copy.type = "button";
    copy.className = "copy";
    copy.textContent = "Copy";
    copy.setAttribute("aria-label", "Copy code");
    copy.addEventListener("click", async () => {
      await navigator.clipboard?.writeText(code.textContent ?? "");
      copy.textContent = "Copied";
      setTimeout(() => (copy.textContent = "Copy"), 1500);
    });
    code.parentElement.prepend(copy);
  }
}
