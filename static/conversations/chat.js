// The chat page's stream reader: POST /api/chat/stream with fetch, parse SSE from the body,
// append tokens as text, then swap in the server-rendered copy of the saved reply.

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
const sendButton = document.getElementById("send-button");
const stopButton = document.getElementById("stop-button");
const transcript = document.getElementById("transcript");
const statusRegion = document.getElementById("chat-status");
const conversationList = document.getElementById("conversation-list");

let controller = null;
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

function messageNode(role, text) {
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
  transcript.append(article);
  return article;
}

function addNote(article, text, kind) {
  const note = document.createElement("p");
  note.className = `message-note ${kind}`;
  if (kind === "failed") note.setAttribute("role", "alert");
  note.textContent = text;
  article.append(note);
}

function setStreaming(streaming) {
  input.disabled = streaming;
  sendButton.disabled = streaming;
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

/** Put an unsent message back in the composer, unless the user has started another. */
function restoreDraft(text) {
  if (!input.value) input.value = text;
}

function rememberConversation(id, title) {
  if (form.dataset.conversationId === String(id)) return;
  form.dataset.conversationId = String(id);
  history.pushState({}, "", `/c/${id}/`);
  conversationList.querySelector(".empty")?.remove();
  const item = document.createElement("li");
  const link = document.createElement("a");
  link.href = `/c/${id}/`;
  link.textContent = title;
  link.setAttribute("aria-current", "page");
  item.append(link);
  conversationList.prepend(item);
}

async function swapForSaved(article, convId, messageId) {
  try {
    const response = await fetch(`/c/${convId}/messages/${messageId}/`, { credentials: "same-origin" });
    if (!response.ok) return;
    const template = document.createElement("template");
    template.innerHTML = (await response.text()).trim();
    const saved = template.content.firstElementChild;
    // Not saved yet (the server has not seen the connection drop): keep the text received.
    if (!saved || saved.dataset.status === "streaming") return;
    article.replaceWith(saved);
    // The saved copy can be shorter: the page moving up under it is not the user scrolling.
    followedTop = Math.min(followedTop, document.scrollingElement.scrollTop);
    scrollToEnd();
  } catch {
    // keep the streamed copy; a reload shows the saved one
  }
}

async function send(text) {
  const userArticle = messageNode("user", text);
  const reply = messageNode("assistant", "");
  reply.classList.add("streaming");
  reply.setAttribute("aria-busy", "true");
  const body = reply.querySelector(".message-body");
  const textNode = document.createTextNode("");
  body.append(textNode);
  followOutput = true;
  scrollToEnd();
  setStreaming(true);
  announce("The assistant is replying.");
  controller = new AbortController();

  let outcome = "ended";
  let ids = { conversation: null, message: null };
  try {
    const payload = { message: text };
    const conversationId = form.dataset.conversationId;
    if (conversationId) payload.conversation_id = Number(conversationId);
    const response = await fetch(form.dataset.streamUrl, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRFToken": form.dataset.csrfToken },
      body: JSON.stringify(payload),
      credentials: "same-origin",
      signal: controller.signal,
    });
    if (!response.ok) {
      outcome = "failed";
      addNote(reply, await errorMessage(response), "failed");
      restoreDraft(text);
      return;
    }
    ids = {
      conversation: response.headers.get("X-Conversation-Id"),
      message: response.headers.get("X-Message-Id"),
    };
    if (ids.conversation) rememberConversation(ids.conversation, text.slice(0, 80));
    userArticle.dataset.conversationId = ids.conversation;

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
        outcome = "done";
        return;
      }
      textNode.appendData(frame.token);
      scrollToEnd();
    });
    const reader = response.body.getReader();
    const decoder = new TextDecoder("utf-8");
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      parser.push(decoder.decode(value, { stream: true }));
    }
    parser.push(decoder.decode());
    if (outcome === "ended") {
      outcome = "failed";
      addNote(reply, "Error: the connection closed before the reply finished.", "failed");
    }
  } catch (error) {
    if (error.name === "AbortError") {
      outcome = "stopped";
      addNote(reply, "Stopped", "stopped");
    } else {
      outcome = "failed";
      addNote(reply, "Error: the connection to the server was lost.", "failed");
      if (!ids.message) restoreDraft(text);
    }
  } finally {
    controller = null;
    reply.classList.remove("streaming");
    reply.removeAttribute("aria-busy");
    setStreaming(false);
    announce({ done: "The reply is complete.", stopped: "The reply was stopped." }[outcome]
      ?? "The reply failed.");
    if ((outcome === "done" || outcome === "failed") && ids.message) {
      await swapForSaved(reply, ids.conversation, ids.message);
    }
  }
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = input.value;
  if (!text.trim() || controller) return;
  input.value = "";
  send(text);
});

input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    form.requestSubmit();
  }
});

stopButton.addEventListener("click", () => controller?.abort());
