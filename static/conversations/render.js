// Markdown on the chat page: a growing reply rendered as it streams (at most once per animation
// frame) with the server's rules (conversations/markdown.py), sanitised with DOMPurify against
// the server's allow-list, code blocks highlighted by highlight.js with a language label and a
// copy button, and a copy button on every message.
//
// Nothing reaches the page as HTML without DOMPurify: markdown-it's output is sanitised into a
// fragment first; highlight.js is then given the sanitised code elements' *text* (it escapes
// it), and the labels and buttons are built with DOM calls.

import "../vendor/markdown-it/markdown-it.min.js"; // a UMD build: it sets globalThis.markdownit
import DOMPurify from "../vendor/dompurify/purify.es.mjs";
import hljs from "../vendor/highlight.js/highlight.min.js";

// The server's allow-list: conversations/markdown.py ALLOWED_TAGS, ALLOWED_ATTRIBUTES and
// URL_SCHEMES (tests/test_chat_rendering.py keeps the two copies equal).
export const ALLOWED_TAGS = [
  "a", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "li",
  "ol", "p", "pre", "strong", "table", "tbody", "td", "th", "thead", "tr", "ul",
];
export const ALLOWED_ATTRIBUTES = { "a": ["href", "title"], "code": ["class"], "ol": ["start"] };
export const URL_SCHEMES = ["http", "https", "mailto"];
const LINK_REL = "noopener noreferrer nofollow";

// markdown-it-py's options: CommonMark, tables, strikethrough, a newline is a <br>, raw HTML
// shown as text. markdown-it refuses javascript:, vbscript:, file: and data: links itself.
const markdown = globalThis.markdownit("commonmark", { html: false, breaks: true })
  .enable(["table", "strikethrough"]);

const purify = DOMPurify(window);
const attributesOf = new Map(
  Object.entries(ALLOWED_ATTRIBUTES).map(([tag, names]) => [tag.toUpperCase(), new Set(names)]),
);
// DOMPurify's allow-list of attributes is global; the server's is per tag.
purify.addHook("uponSanitizeAttribute", (node, data) => {
  if (!attributesOf.get(node.nodeName)?.has(data.attrName)) data.keepAttr = false;
});
purify.addHook("afterSanitizeAttributes", (node) => {
  if (node.nodeName === "A") node.setAttribute("rel", LINK_REL);
});
const PURIFY_CONFIG = {
  ALLOWED_TAGS,
  ALLOWED_ATTR: [...new Set(Object.values(ALLOWED_ATTRIBUTES).flat())],
  // DOMPurify's own pattern with only the server's schemes: relative URLs pass, as with nh3.
  ALLOWED_URI_REGEXP: new RegExp(
    `^(?:(?:${URL_SCHEMES.join("|")}):|[^a-z]|[a-z+.-]+(?:[^a-z+.\\-:]|$))`, "i",
  ),
  ALLOW_DATA_ATTR: false,
  ALLOW_ARIA_ATTR: false,
  RETURN_DOM_FRAGMENT: true,
};

/** ``text`` as sanitised Markdown: a fragment of block elements. */
export function markdownFragment(text) {
  const fragment = purify.sanitize(markdown.render(text), PURIFY_CONFIG);
  for (const node of [...fragment.childNodes]) {
    if (node.nodeType === Node.TEXT_NODE && !node.data.trim()) node.remove();
  }
  return fragment;
}

// ---- copying ---------------------------------------------------------------------------------

async function writeClipboard(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // no Clipboard API (a page served over plain HTTP) or refused: the older way
  }
  const active = document.activeElement;
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.className = "clipboard-scratch";
  document.body.append(area);
  area.select();
  let copied = false;
  try {
    copied = document.execCommand("copy");
  } catch {
    copied = false;
  }
  area.remove();
  active?.focus?.();
  return copied;
}

/** A "Copy" button (its name "Copy <what>") that copies ``textOf()`` and says so. */
function copyButton(className, what, textOf) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = `copy-button ${className}`;
  const label = document.createElement("span");
  label.textContent = "Copy";
  const hidden = document.createElement("span");
  hidden.className = "visually-hidden";
  hidden.textContent = ` ${what}`;
  button.append(label, hidden);
  let timer = 0;
  button.addEventListener("click", async () => {
    const copied = await writeClipboard(textOf());
    label.textContent = copied ? "Copied" : "Copy failed";
    button.classList.toggle("copied", copied);
    clearTimeout(timer);
    timer = setTimeout(() => {
      label.textContent = "Copy";
      button.classList.remove("copied");
    }, 2000);
  });
  return button;
}

/** A message's own text: the saved or streamed source (``data-source``), else what it shows. */
export function messageSource(article) {
  return article.dataset.source ?? article.querySelector(".message-body")?.textContent ?? "";
}

/** Give ``article`` its "Copy message" button (once). */
export function addMessageCopy(article) {
  if (article.querySelector(":scope > .copy-message")) return;
  const button = copyButton("copy-message", "message", () => messageSource(article));
  const role = article.querySelector(":scope > .message-role");
  if (role) role.after(button);
  else article.prepend(button);
}

// ---- code blocks -------------------------------------------------------------------------------

function languageOf(code) {
  const name = [...code.classList].find((c) => c.startsWith("language-"));
  return name ? name.slice("language-".length) : "";
}

/** Highlight ``pre > code`` (from its text), and frame it with a label and a copy button. */
function decorateCodeBlock(pre) {
  const code = pre.firstElementChild;
  if (!code || code.tagName !== "CODE" || pre.parentElement?.classList.contains("code-block")) {
    return;
  }
  const language = languageOf(code);
  const source = code.textContent;
  if (language && hljs.getLanguage(language)) {
    // highlight.js escapes the text it is given; its spans carry classes only.
    code.innerHTML = hljs.highlight(source, { language, ignoreIllegals: true }).value;
    code.classList.add("hljs");
  }
  const block = document.createElement("div");
  block.className = "code-block";
  const header = document.createElement("div");
  header.className = "code-header";
  const label = document.createElement("span");
  label.className = "code-language";
  label.textContent = language || "text";
  header.append(label, copyButton("copy-code", "code", () => source));
  pre.replaceWith(block);
  block.append(header, pre);
}

/** Decorate every code block under ``root`` (server-rendered replies on page load). */
export function decorate(root) {
  for (const pre of root.querySelectorAll("pre")) decorateCodeBlock(pre);
}

// ---- rendering into a message --------------------------------------------------------------------

const renderedFrom = new WeakMap(); // a block on the page → the sanitised HTML it was made from

/** Render ``text`` into ``body``; blocks that did not change since the last call are kept as
 *  they are (with their highlighting, focus and selection), the others replaced. */
export function renderMarkdown(body, text) {
  const fresh = [...markdownFragment(text).children];
  const shown = [...body.children];
  fresh.forEach((node, index) => {
    const html = node.outerHTML;
    const old = shown[index];
    if (old && renderedFrom.get(old) === html) return;
    const holder = document.createElement("div");
    holder.append(node);
    decorate(holder);
    const block = holder.firstElementChild;
    renderedFrom.set(block, html);
    if (old) old.replaceWith(block);
    else body.append(block);
  });
  for (const extra of shown.slice(fresh.length)) extra.remove();
}

/** A reply growing in ``article``: ``append`` tokens; it is re-rendered at most once per
 *  animation frame (then ``onRender`` runs), and less often when rendering a long reply takes
 *  long (at most about a third of the time goes to it); ``finish`` renders what arrived, now. */
export function liveReply(article, onRender) {
  const body = article.querySelector(".message-body");
  body.classList.replace("plain", "markdown");
  body.replaceChildren();
  let text = "";
  let shown = null;
  let frame = 0;
  let earliest = 0;
  const render = (frameTime) => {
    frame = 0;
    if (frameTime !== undefined && frameTime < earliest) {
      frame = requestAnimationFrame(render);
      return;
    }
    if (text === shown) return;
    shown = text;
    const started = performance.now();
    renderMarkdown(body, text);
    article.dataset.source = text;
    earliest = started + 3 * (performance.now() - started);
    onRender?.();
  };
  return {
    append(token) {
      text += token;
      if (!frame) frame = requestAnimationFrame(render);
    },
    finish() {
      cancelAnimationFrame(frame);
      render();
    },
  };
}

/** Ready the server's saved copy of a streamed reply for the swap: when it holds the same text,
 *  it takes the streamed body as it is on screen (nothing moves); else its own, decorated. */
export function adoptSaved(saved, streamed) {
  const streamedBody = streamed.querySelector(".message-body");
  const savedBody = saved.querySelector(".message-body");
  if (streamedBody && savedBody && saved.dataset.source === streamed.dataset.source) {
    savedBody.replaceWith(streamedBody);
  } else {
    decorate(saved);
  }
  addMessageCopy(saved);
}

/** Page load: code blocks highlighted and framed, every message given its copy button. */
export function enhanceTranscript(transcript) {
  for (const article of transcript.querySelectorAll(".message")) {
    const body = article.querySelector(".message-body.markdown");
    if (body) decorate(body);
    addMessageCopy(article);
  }
}
