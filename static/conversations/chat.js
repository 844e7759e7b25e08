// The chat page's stream reader: POST /api/chat/stream with fetch, parse SSE from the body,
// render the growing text as Markdown (render.js), then swap in the server-rendered copy of the
// saved reply. A dropped connection is picked up again where it left off, and a page opened
// while its conversation's last reply streams attaches to it.

import { BurstMeter } from "./bursts.js";
import { Composer, setUpReading } from "./composer.js";
import { addMessageCopy, adoptSaved, enhanceTranscript, liveReply } from "./render.js";
import { conversationActive, provisionalTitle, watchTitle } from "./sidebar.js";


/** An incremental SSE parser (https://html.spec.whatwg.org/multipage/server-sent-events.html). */
export class SSEParser {
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.buffer = "";
    this.resetEvent();
  }

  resetEvent() {
    this.data = [];
    this.eventType = "";
  }

  /** Feed decoded text; complete lines are processed, a partial line waits for more. */
  push(text) {
    this.buffer += text;
    let start = 0;
    for (;;) {
      const cr = this.buffer.indexOf("\r", start);
      const lf = this.buffer.indexOf("\n", start);
      if (cr === -1 && lf === -1) break;
      let end;
      let next;
      if (cr !== -1 && (lf === -1 || cr < lf)) {
        if (cr === this.buffer.length - 1) break; // a lone \r may be the first half of \r\n
        end = cr;
        next = this.buffer[cr + 1] === "\n" ? cr + 2 : cr + 1;
      } else {
        end = lf;
        next = lf + 1;
      }
      this.line(this.buffer.slice(start, end));
      start = next;
    }
    this.buffer = this.buffer.slice(start);
  }

  line(line) {
    if (line === "") {
      if (this.data.length) {
        this.onEvent({ type: this.eventType || "message", data: this.data.join("\n"), id: this.lastId });
      }
      this.resetEvent();
      return;
    }
    if (line.startsWith(":")) return; // a comment, such as the keep-alive ": ping"
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.eventType = value;
    else if (field === "id" && !value.includes("\0")) this.lastId = value;
  }
}

const form = document.getElementById("composer");
const input = document.getElementById("message-input");
const stopButton = document.getElementById("stop-button");
const transcript = document.getElementById("transcript");
const statusRegion = document.getElementById("chat-status");
// Staff are told when replies reach the page in bursts (bursts.js); nobody else is measured.
const burstWarning = form.hasAttribute("data-staff")
  ? document.getElementById("stream-warning")
  : null;
const composer = new Composer(form);

let followOutput = true;
let followedTop = 0;

function announce(text) {
  statusRegion.textContent = text;
}

function nearBottom() {
  const scroller = document.scrollingElement;
  return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 80;
}

// Following a reply stops at any move up from the bottom, even a few pixels (a smooth wheel
// scroll starts that small), and as soon as the user asks to scroll up, before the page moves;
// reaching the bottom again resumes it.
window.addEventListener("scroll", () => {
  const top = document.scrollingElement.scrollTop;
  if (top < followedTop - 1) {
    followOutput = false;
  } else if (nearBottom()) {
    followOutput = true;
    followedTop = top;
  }
}, { passive: true });

window.addEventListener("wheel", (event) => {
  if (event.deltaY < 0) followOutput = false;
}, { passive: true });

window.addEventListener("keydown", (event) => {
  if (["ArrowUp", "PageUp", "Home"].includes(event.key) && event.target === document.body) {
    followOutput = false;
  }
});

function scrollToEnd() {
  if (!followOutput) return;
  const scroller = document.scrollingElement;
  scroller.scrollTop = scroller.scrollHeight;
  followedTop = scroller.scrollTop;
}

function messageNode(role, text, place = (article) => transcript.append(article)) {
  document.getElementById("empty-transcript")?.remove();
  const article = document.createElement("article");
  article.className = `message ${role}`;
  const label = document.createElement("div");
  label.className = "message-role";
  label.textContent = role === "user" ? "User" : "Assistant";
  const body = document.createElement("div");
  body.className = "message-body plain";
  body.textContent = text;
  article.append(label, body);
  // The saved copy has a row of actions (Edit, Regenerate, versions): its room is kept.
  const actions = document.createElement("div");
  actions.className = "message-actions pending";
  actions.setAttribute("aria-hidden", "true");
  const placeholder = document.createElement("button");
  placeholder.type = "button";
  placeholder.disabled = true;
  placeholder.tabIndex = -1;
  placeholder.textContent = role === "user" ? "Edit" : "Regenerate";
  actions.append(placeholder);
  article.append(actions);
  if (role === "assistant") {
    // The saved copy brings the reply's details (a line under it): the line is kept free from
    // the start, so nothing moves when the saved copy takes over.
    const details = document.createElement("footer");
    details.className = "message-meta pending";
    details.setAttribute("aria-hidden", "true");
    details.textContent = "\u00a0";
    article.append(details);
  }
  addMessageCopy(article);
  place(article);
  return article;
}

function addNote(article, text, kind) {
  const note = document.createElement("p");
  note.className = `message-note ${kind}`;
  if (kind === "failed") note.setAttribute("role", "alert");
  note.textContent = text;
  const after = article.querySelector(":scope > .message-actions, :scope > .message-meta");
  if (after) after.before(note);
  else article.append(note);
}

/** While a reply streams the composer stays open for typing; Send waits. */
function setStreaming(streaming) {
  composer.setBusy(streaming);
  transcript.classList.toggle("busy", streaming);
  stopButton.hidden = !streaming;
  if (!streaming) input.focus();
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body?.error?.message) return body.error.message;
  } catch {
    // not JSON (a proxy's page, say): describe the status instead
  }
  if (response.status === 429) {
    const retry = response.headers.get("Retry-After");
    return `Too many requests.${retry ? ` Try again in ${retry} s.` : ""}`;
  }
  return `The server answered ${response.status}.`;
}

/** The conversation a reply started in: the page's address, and first under Today. */
function rememberConversation(id, title) {
  if (form.dataset.conversationId !== String(id)) {
    form.dataset.conversationId = String(id);
    history.pushState({}, "", `/c/${id}/`);
  }
  conversationActive(id, title);
}

/** Put the saved copy of a reply in place of the streamed one; returns it (null if the
 *  streamed one stays). */
async function swapForSaved(article, convId, messageId) {
  try {
    const response = await fetch(`/c/${convId}/messages/${messageId}/`, { credentials: "same-origin" });
    if (!response.ok) return null;
    const template = document.createElement("template");
    template.innerHTML = (await response.text()).trim();
    const saved = template.content.firstElementChild;
    // Not saved yet (the server has not seen the connection drop): keep the text received.
    if (!saved || saved.dataset.status === "streaming") return null;
    adoptSaved(saved, article);
    article.replaceWith(saved);
    // The saved copy can be shorter: the page moving up under it is not the user scrolling.
    followedTop = Math.min(followedTop, document.scrollingElement.scrollTop);
    scrollToEnd();
    return saved;
  } catch {
    // keep the streamed copy; a reload shows the saved one
    return null;
  }
  return null;
}

const RECONNECT_DELAYS_MS = [500, 1000, 2000, 4000, 8000];

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      reject(new DOMException("Aborted", "AbortError"));
    }, { once: true });
  });
}

/** Read a reply's POST-format frames from ``response``: tokens go to ``onToken``, and how
 *  many each network read brought to ``meter`` (if any). Returns "done", "stopped", "failed"
 *  (an ``event: error`` frame, already shown) or "cut" (the body ended before the final
 *  frame); throws if the connection breaks. */
async function readFrames(response, reply, onToken, meter) {
  let outcome = "cut";
  let tokens = 0;
  const parser = new SSEParser((event) => {
    if (event.type === "error") {
      outcome = "failed";
      let message = "The reply failed.";
      try {
        message = JSON.parse(event.data).message || message;
      } catch {
        // keep the generic message
      }
      addNote(reply, `Error: ${message}`, "failed");
      return;
    }
    const frame = JSON.parse(event.data);
    if (frame.done) {
      // Stopped elsewhere (another tab, the API) ends with status "cancelled".
      outcome = frame.status === "cancelled" ? "stopped" : "done";
      return;
    }
    tokens += 1;
    onToken(frame.token);
  });
  const reader = response.body.getReader();
  const decoder = new TextDecoder("utf-8");
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    const before = tokens;
    parser.push(decoder.decode(value, { stream: true }));
    meter?.read(performance.now(), tokens - before);
  }
  parser.push(decoder.decode());
  return outcome;
}

/** Follow a reply to its end: the response given, then, if the connection drops, the attach
 *  endpoint from the frames already received (with backoff, showing "Reconnecting…"). */
async function follow(reply, first, messageId, state) {
  state.view = liveReply(reply, scrollToEnd);
  const onToken = (token) => {
    state.received += 1;
    state.view.append(token);
  };
  let response = first;
  let attempt = 0;
  for (;;) {
    try {
      // Only the first answer is measured: a resumed one starts with what was missed, at once.
      const meter = response === first ? state.meter : null;
      const outcome = await readFrames(response, reply, onToken, meter);
      if (outcome !== "cut") return outcome;
    } catch (error) {
      if (error.name === "AbortError") throw error;
    }
    state.meter = null; // what the first answer brought is not the whole reply
    if (attempt >= RECONNECT_DELAYS_MS.length) {
      addNote(reply, "Error: the connection to the server was lost.", "failed");
      return "failed";
    }
    reply.classList.add("reconnecting");
    announce("Reconnecting…");
    for (;;) {
      await sleep(RECONNECT_DELAYS_MS[attempt], state.controller.signal);
      attempt += 1;
      try {
        response = await fetch(`/api/messages/${messageId}/stream?after=${state.received}`, {
          credentials: "same-origin",
          signal: state.controller.signal,
        });
        if (response.ok) break;
      } catch (error) {
        if (error.name === "AbortError") throw error;
      }
      if (attempt >= RECONNECT_DELAYS_MS.length) {
        reply.classList.remove("reconnecting");
        addNote(reply, "Error: the connection to the server was lost.", "failed");
        return "failed";
      }
    }
    reply.classList.remove("reconnecting");
    announce("The assistant is replying.");
  }
}

let current = null;

/** Once a reply's frames showed bursts, the warning stays for the page's life. */
function judgeBursts(meter, sendingMs) {
  if (meter.bursty(sendingMs)) {
    burstWarning.textContent = "Staff: replies reach this page in bursts, so something between "
      + "the server and this browser buffers the stream. Run manage.py check_streaming to find it.";
    burstWarning.hidden = false;
  }
  burstWarning.dataset.replies = String(Number(burstWarning.dataset.replies || 0) + 1);
}

/** Show a reply streaming in ``reply`` (its first response given), then its saved copy. */
async function stream(reply, state, responsePromise) {
  reply.classList.add("streaming");
  reply.setAttribute("aria-busy", "true");
  setStreaming(true);
  current = state;
  let outcome = "failed";
  try {
    const response = await responsePromise;
    if (!response.ok) {
      const message = await errorMessage(response);
      if (state.onRefused) state.onRefused(message);
      else addNote(reply, message, "failed");
      return;
    }
    state.ids = {
      conversation: response.headers.get("X-Conversation-Id"),
      message: response.headers.get("X-Message-Id"),
    };
    state.onStarted?.(state.ids);
    if (state.measure) state.meter = new BurstMeter();
    outcome = await follow(reply, response, state.ids.message, state);
    if (outcome === "stopped") addNote(reply, "Stopped", "stopped");
  } catch (error) {
    if (error.name === "AbortError") {
      outcome = "stopped";
      addNote(reply, "Stopped", "stopped");
    } else {
      addNote(reply, "Error: the connection to the server was lost.", "failed");
      if (!state.ids) state.onLost?.();
    }
  } finally {
    state.view?.finish(); // what arrived, rendered: after Stop, an error or a lost connection too
    state.outcome = outcome;
    current = null;
    reply.classList.remove("streaming", "reconnecting");
    reply.removeAttribute("aria-busy");
    setStreaming(false);
    announce({ done: "The reply is complete.", stopped: "The reply was stopped." }[outcome]
      ?? "The reply failed.");
    if (outcome !== "stopped" && state.ids?.message) {
      const saved = await swapForSaved(reply, state.ids.conversation, state.ids.message);
      state.saved = saved;
      // The saved reply says how long the server took to send its tokens.
      const sendingMs = Number(saved?.dataset.durationMs) - Number(saved?.dataset.ttftMs);
      if (state.meter) judgeBursts(state.meter, sendingMs);
    }
  }
}

/** The articles from ``article`` to the end of the transcript: a new version of a message
 *  replaces it and everything shown below it. */
function fromHereOn(article) {
  const articles = [];
  for (let node = article; node; node = node.nextElementSibling) articles.push(node);
  return articles;
}

/** Send ``text`` as the next message; or, with ``editOf``, as a new version of that message
 *  of the user's (``replacing`` its article); or, with ``regenerateOf``, ask again for a new
 *  version of that reply (``text`` empty). */
async function send(text, { editOf = null, regenerateOf = null, replacing = null } = {}) {
  const replaced = replacing ? fromHereOn(replacing) : [];
  const anchor = replaced[0] ?? null;
  const place = (article) => (anchor ? anchor.before(article) : transcript.append(article));
  const userArticle = regenerateOf ? null : messageNode("user", text, place);
  const reply = messageNode("assistant", "", place);
  for (const article of replaced) article.hidden = true;
  followOutput = true;
  scrollToEnd();
  announce("The assistant is replying.");
  const conversationId = form.dataset.conversationId;
  const payload = regenerateOf
    ? { regenerate_of: Number(regenerateOf) }
    : { message: text, ...composer.extras({ newConversation: !conversationId }) };
  if (editOf) payload.edit_of = Number(editOf);
  if (conversationId) payload.conversation_id = Number(conversationId);
  const title = provisionalTitle(text);
  const state = {
    controller: new AbortController(),
    received: 0,
    ids: null,
    measure: burstWarning !== null,
    // Refused before any reply (a limit, a bad field): said at the composer, not as a reply,
    // and what the new version was to replace is shown again.
    onRefused: (message) => {
      userArticle?.remove();
      reply.remove();
      for (const article of replaced) article.hidden = false;
      if (regenerateOf) composer.showNotice(message);
      else composer.refused(text, message);
    },
    onLost: () => {
      if (!regenerateOf) composer.restore(text);
    },
    onStarted: (ids) => {
      for (const article of replaced) article.remove();
      if (ids.conversation) rememberConversation(ids.conversation, title);
      if (!conversationId && ids.conversation) composer.conversationStarted(conversationId);
      if (userArticle) userArticle.dataset.conversationId = ids.conversation;
    },
  };
  const response = fetch(form.dataset.streamUrl, {
    method: "POST",
    headers: {
      "Content-Type": "application/json",
      "X-CSRFToken": form.dataset.csrfToken,
      // A send that is retried can never start a second reply.
      "Idempotency-Key": crypto.randomUUID(),
    },
    body: JSON.stringify(payload),
    credentials: "same-origin",
    signal: state.controller.signal,
  });
  await stream(reply, state, response);
  // The message, saved, gets its Edit button (and, edited, shows its versions).
  if (userArticle && state.saved?.dataset.parentId) {
    await swapForSaved(userArticle, state.ids.conversation, state.saved.dataset.parentId);
  }
  // A new conversation is named by the model once its first reply is complete.
  if (!conversationId && state.outcome === "done" && state.ids?.conversation) {
    watchTitle(state.ids.conversation);
  }
}

/** A page opened on a conversation whose last reply is still being written shows it growing
 *  (after a reload, in a second tab, on a laptop waking up). */
function attachToStreamingReply() {
  const replies = transcript.querySelectorAll(".message.assistant");
  const last = replies[replies.length - 1];
  if (!last || last.dataset.status !== "streaming") return;
  last.querySelector(".message-note")?.remove();
  const state = {
    controller: new AbortController(),
    received: 0,
    ids: { conversation: form.dataset.conversationId, message: last.dataset.messageId },
  };
  announce("The assistant is replying.");
  const response = fetch(`/api/messages/${last.dataset.messageId}/stream`, {
    credentials: "same-origin",
    signal: state.controller.signal,
  });
  scrollToEnd();
  stream(last, state, response);
}

/** Stop: the stream is closed, and the reply stopped on the server (the Stop button means
 *  it, unlike a closed tab, which leaves the reply its detach grace). */
async function stopCurrent() {
  const state = current;
  if (!state) return;
  state.controller.abort();
  const messageId = state.ids?.message;
  if (!messageId) return; // not started: with no client, the server stops it after the grace
  try {
    await fetch(`/api/messages/${messageId}/cancel`, {
      method: "POST",
      headers: { "X-CSRFToken": form.dataset.csrfToken },
      credentials: "same-origin",
    });
  } catch {
    // the server stops a reply nobody reads after the detach grace all the same
  }
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = composer.take();
  if (text !== null) send(text);
});

input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    form.requestSubmit();
  }
});

stopButton.addEventListener("click", stopCurrent);
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && current) stopCurrent();
});

/** Show the path through another version: the transcript is read again from the server,
 *  and the message picked stays where it was on the screen. */
async function showVersion(messageId, stepButton) {
  const article = stepButton.closest(".message");
  const offset = article.getBoundingClientRect().top;
  const conversationId = form.dataset.conversationId;
  try {
    const shown = await fetch(`/api/messages/${messageId}/show`, {
      method: "POST",
      headers: { "X-CSRFToken": form.dataset.csrfToken },
      credentials: "same-origin",
    });
    if (!shown.ok) throw new Error(await errorMessage(shown));
    const page = await fetch(`/c/${conversationId}/`, { credentials: "same-origin" });
    if (!page.ok) throw new Error(`The server answered ${page.status}.`);
    const fresh = new DOMParser().parseFromString(await page.text(), "text/html");
    transcript.replaceChildren(...fresh.getElementById("transcript").childNodes);
  } catch (error) {
    composer.showNotice(error.message || "The other version could not be shown.");
    return;
  }
  enhanceTranscript(transcript);
  const picked = document.getElementById(`message-${messageId}`);
  if (picked) {
    document.scrollingElement.scrollTop += picked.getBoundingClientRect().top - offset;
    const step = picked.querySelector(`.version-step[aria-label="${stepButton.getAttribute("aria-label")}"]`);
    (step && !step.disabled ? step : picked.querySelector(".version-step:not(:disabled)"))?.focus();
  }
  announce(`Showing version ${picked?.querySelector(".version-position")?.textContent ?? ""}.`);
}

/** Edit a message of the user's in place: Send makes the text a new version of it. */
function editMessage(article) {
  if (article.querySelector(".message-editor")) return;
  const body = article.querySelector(".message-body");
  const editor = document.createElement("form");
  editor.className = "message-editor";
  const label = document.createElement("label");
  label.className = "visually-hidden";
  label.textContent = "Edit your message";
  const area = document.createElement("textarea");
  area.id = `edit-${article.dataset.messageId}`;
  label.htmlFor = area.id;
  area.value = article.dataset.source ?? body.textContent;
  const actions = document.createElement("div");
  actions.className = "editor-actions";
  const save = document.createElement("button");
  save.type = "submit";
  save.textContent = "Send";
  const cancel = document.createElement("button");
  cancel.type = "button";
  cancel.className = "button-secondary";
  cancel.textContent = "Cancel";
  actions.append(save, cancel);
  editor.append(label, area, actions);
  body.hidden = true;
  body.after(editor);
  const close = () => {
    editor.remove();
    body.hidden = false;
    article.querySelector(".edit-message")?.focus();
  };
  cancel.addEventListener("click", close);
  editor.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      event.stopPropagation();
      close();
    } else if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      editor.requestSubmit();
    }
  });
  editor.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = area.value;
    if (!text.trim() || current) return;
    send(text, { editOf: article.dataset.messageId, replacing: article });
  });
  area.focus();
  area.setSelectionRange(area.value.length, area.value.length);
}

transcript.addEventListener("click", (event) => {
  const button = event.target.closest(".message-actions button");
  if (!button || current) return;
  const article = button.closest(".message");
  if (button.classList.contains("version-step") && button.dataset.show) {
    showVersion(button.dataset.show, button);
  } else if (button.classList.contains("edit-message")) {
    editMessage(article);
  } else if (button.classList.contains("regenerate-reply")) {
    send("", { regenerateOf: article.dataset.messageId, replacing: article });
  }
});

enhanceTranscript(transcript);
setUpReading(transcript, document.getElementById("jump-latest"), input);
attachToStreamingReply();
composer.ready();
