// The composer and reading aids of the chat page: a message box that grows with its text up to
// ten lines, keeps a draft per conversation across reloads, counts characters near the limit,
// says in plain words why a message cannot be sent (at the composer, not as a reply), queues a
// message typed while a reply streams; the model picker and a new chat's system prompt; a
// "Jump to latest" button, and an old conversation opened at its latest turn.

const DRAFT_PREFIX = "chatsite:draft:";
const MAX_LINES = 10;
const COUNTER_FROM = 0.9; // the counter shows from this share of the limit on
const NEAR_BOTTOM_PX = 80;

const numbers = new Intl.NumberFormat("en");

/** Characters as the server counts them (code points, not UTF-16 units). */
export function characterCount(text) {
  let count = 0;
  for (const _ of text) count += 1;
  return count;
}

export class Composer {
  constructor(form) {
    this.form = form;
    this.input = form.querySelector("#message-input");
    this.sendButton = form.querySelector("#send-button");
    this.notice = form.querySelector("#composer-notice");
    this.queuedHint = form.querySelector("#composer-queued");
    this.counter = form.querySelector("#composer-counter");
    this.modelSelect = form.querySelector("#model-select");
    this.systemPrompt = form.querySelector("#system-prompt-input");
    this.maxChars = Number(form.dataset.maxChars) || Infinity;
    this.busy = false;
    this.queued = false;

    this.input.addEventListener("input", () => this.changed());
    const saved = this.readDraft();
    if (saved && !this.input.value) this.input.value = saved;
    this.changed({ save: false });
    this.input.focus();
  }

  // -- drafts ------------------------------------------------------------------------------

  draftKey(conversationId = this.form.dataset.conversationId) {
    return DRAFT_PREFIX + (conversationId || "new");
  }

  readDraft() {
    try {
      return localStorage.getItem(this.draftKey()) ?? "";
    } catch {
      return ""; // storage turned off: no drafts
    }
  }

  saveDraft() {
    try {
      if (this.input.value) localStorage.setItem(this.draftKey(), this.input.value);
      else localStorage.removeItem(this.draftKey());
    } catch {
      // storage full or turned off: the draft is only in the box
    }
  }

  /** A new chat became a stored conversation: what is typed now is that conversation's. */
  conversationStarted(previousId) {
    try {
      localStorage.removeItem(this.draftKey(previousId));
    } catch {
      // nothing kept
    }
    this.saveDraft();
    const editor = this.systemPrompt?.closest("details");
    if (editor) {
      this.systemPrompt.readOnly = true;
      editor.open = false;
    }
  }

  // -- the box -----------------------------------------------------------------------------

  changed({ save = true } = {}) {
    this.resize();
    const count = this.updateCounter();
    if (this.notice.dataset.kind === "too-long" && count <= this.maxChars) this.clearNotice();
    if (save) this.saveDraft();
  }

  /** As tall as its text, up to MAX_LINES lines; then it scrolls. */
  resize() {
    const style = getComputedStyle(this.input);
    const px = (name) => parseFloat(style[name]) || 0;
    const line = px("lineHeight") || 1.5 * px("fontSize");
    const borders = px("borderTopWidth") + px("borderBottomWidth");
    const most = line * MAX_LINES + px("paddingTop") + px("paddingBottom") + borders;
    this.input.style.height = "auto";
    const wanted = this.input.scrollHeight + borders;
    this.input.style.height = `${Math.min(wanted, most)}px`;
    this.input.classList.toggle("composer-scrolls", wanted > most);
  }

  updateCounter() {
    const count = characterCount(this.input.value);
    const near = count >= this.maxChars * COUNTER_FROM;
    this.counter.hidden = !near;
    if (near) {
      this.counter.textContent = `${numbers.format(count)} / ${numbers.format(this.maxChars)} characters`;
      this.counter.classList.toggle("over", count > this.maxChars);
    }
    return count;
  }

  showNotice(text, kind = "refused") {
    this.notice.textContent = text;
    this.notice.dataset.kind = kind;
    this.notice.hidden = false;
  }

  clearNotice() {
    this.notice.hidden = true;
    this.notice.textContent = "";
    delete this.notice.dataset.kind;
  }

  // -- sending -----------------------------------------------------------------------------

  /** The message to send now, taken out of the box; null if there is none, if it is over the
   *  limit (said at the composer, the draft kept), or if a reply is streaming (then it is
   *  queued and sent when the reply ends). */
  take() {
    const text = this.input.value;
    if (!text.trim()) return null;
    const count = characterCount(text);
    if (count > this.maxChars) {
      this.showNotice(
        `Your message is too long: ${numbers.format(count)} characters, ` +
          `the limit is ${numbers.format(this.maxChars)}.`,
        "too-long",
      );
      return null;
    }
    if (this.busy) {
      this.queued = true;
      this.queuedHint.hidden = false;
      return null;
    }
    this.clearNotice();
    this.input.value = "";
    this.changed();
    return text;
  }

  /** What goes with a message besides its text: the model picked, and a new chat's system
   *  prompt (when one was written). */
  extras({ newConversation }) {
    const extras = {};
    if (this.modelSelect?.value) extras.model = this.modelSelect.value;
    const prompt = this.systemPrompt?.value;
    if (newConversation && prompt && prompt.trim()) extras.system_prompt = prompt;
    return extras;
  }

  /** The page is served with Send disabled, so nothing typed before this script has run is
   *  submitted as a plain form (the message in a URL); from here on Send works, and
   *  ``data-ready`` on the form says so. */
  ready() {
    this.sendButton.disabled = this.busy;
    this.form.dataset.ready = "";
  }

  /** While a reply streams the box stays open for typing; Send waits (a message sent
   *  meanwhile is queued). */
  setBusy(busy) {
    this.busy = busy;
    this.sendButton.disabled = busy;
    if (!busy && this.queued) {
      this.queued = false;
      this.queuedHint.hidden = true;
      // After the reply's own end has run (the status, the saved copy's swap starting).
      setTimeout(() => this.form.requestSubmit(), 0);
    }
  }

  /** The server refused the message before any reply: say why, and put it back. */
  refused(text, message) {
    this.restore(text);
    this.showNotice(message);
  }

  /** Put an unsent message back, unless the user has started another. */
  restore(text) {
    if (this.input.value) return;
    this.input.value = text;
    this.changed();
  }
}

// -- reading ---------------------------------------------------------------------------------

/** What scrolls the transcript: the transcript itself if the layout makes it a scroll box,
 *  else the page. */
function scrollerOf(transcript) {
  const overflow = getComputedStyle(transcript).overflowY;
  if ((overflow === "auto" || overflow === "scroll") && transcript.scrollHeight > transcript.clientHeight) {
    return transcript;
  }
  return document.scrollingElement;
}

function fromBottom(scroller) {
  return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight;
}

export function scrollToLatest(transcript) {
  const scroller = scrollerOf(transcript);
  scroller.scrollTop = scroller.scrollHeight;
}

const localTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

/** Replies' times in the reader's own time zone (the server writes them in its own). */
function localizeTimes(root) {
  for (const time of root.querySelectorAll(".message-meta time[datetime]:not([data-local])")) {
    const when = new Date(time.dateTime);
    if (Number.isNaN(when.getTime())) continue;
    time.textContent = localTime.format(when);
    time.dataset.local = "";
  }
}

/** The "Jump to latest" button: shown while the end of the transcript is out of view. An
 *  old conversation opens at its latest turn. */
export function setUpReading(transcript, button, input) {
  let pending = false;
  const update = () => {
    pending = false;
    localizeTimes(transcript);
    const hasMessages = transcript.querySelector(".message") !== null;
    button.hidden = !hasMessages || fromBottom(scrollerOf(transcript)) < NEAR_BOTTOM_PX;
  };
  const later = () => {
    if (!pending) {
      pending = true;
      requestAnimationFrame(update);
    }
  };
  document.addEventListener("scroll", later, { capture: true, passive: true });
  window.addEventListener("resize", later, { passive: true });
  new MutationObserver(later).observe(transcript, {
    childList: true,
    subtree: true,
    characterData: true,
  });
  button.addEventListener("click", () => {
    scrollToLatest(transcript);
    button.hidden = true;
    input.focus({ preventScroll: true });
  });
  localizeTimes(transcript);
  if (transcript.querySelector(".message")) scrollToLatest(transcript);
  later();
}
