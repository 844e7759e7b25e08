// The chat page's sidebar: conversations under date headings, renamed and deleted in place,
// searched by title and message text, and named by the model after a new conversation's first
// reply. Model and user text only ever goes in as text, never as HTML.
import { setPageTitle } from "./page.js";

const TITLE_LENGTH = 60;
const SEARCH_DELAY_MS = 250;
const SEARCH_PAGE_SIZE = 50;
const TITLE_POLL_DELAYS_MS = [300, 700, 1500, 3000, 5000];

const root = document.getElementById("sidebar-conversations");
const groups = document.getElementById("conversation-groups");
const searchForm = document.getElementById("conversation-search");
const searchInput = document.getElementById("conversation-search-input");
const searchResults = document.getElementById("conversation-search-results");
const searchSummary = document.getElementById("conversation-search-summary");
const searchList = document.getElementById("conversation-search-list");
// The page's one polite live region (chat.html's), shared with the chat.
const statusRegion = document.getElementById("chat-status");

const apiUrl = root.dataset.apiUrl;
const csrfToken = root.dataset.csrfToken;
const autoTitles = root.dataset.autoTitles === "1";

/** The first words of a message on one line, cut at a word boundary with an ellipsis: the
 *  title a conversation has until the model names it (as the server makes it). */
export function provisionalTitle(text) {
  const words = text.split(/\s+/).filter(Boolean).join(" ");
  if (words.length <= TITLE_LENGTH) return words;
  let cut = words.slice(0, TITLE_LENGTH - 1);
  const space = cut.lastIndexOf(" ");
  if (space > Math.floor(TITLE_LENGTH / 2)) cut = cut.slice(0, space);
  return `${cut.replace(/[\s,;:.\-–—]+$/, "")}…`;
}

function announce(text) {
  if (statusRegion) statusRegion.textContent = text;
}

function openConversationId() {
  return document.getElementById("composer")?.dataset.conversationId || "";
}

function itemsFor(id) {
  return root.querySelectorAll(`.conversation-item[data-conversation-id="${CSS.escape(String(id))}"]`);
}

function actionButton(action, glyph) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "conversation-action";
  button.dataset.action = action;
  button.title = action === "rename" ? "Rename" : "Delete";
  const icon = document.createElement("span");
  icon.setAttribute("aria-hidden", "true");
  icon.textContent = glyph;
  button.append(icon);
  return button;
}

/** A list item as the server renders it (templates/conversations/_sidebar_item.html). */
function itemNode(id, title) {
  const item = document.createElement("li");
  item.className = "conversation-item";
  item.dataset.conversationId = String(id);
  const link = document.createElement("a");
  link.className = "conversation-link";
  link.href = `/c/${id}/`;
  const actions = document.createElement("span");
  actions.className = "conversation-actions";
  actions.append(actionButton("rename", "✎"), actionButton("delete", "✕"));
  item.append(link, actions);
  applyTitle(item, title);
  return item;
}

function applyTitle(item, title) {
  item.dataset.title = title;
  item.querySelector(".conversation-link").textContent = title;
  item.querySelector('[data-action="rename"]').setAttribute("aria-label", `Rename ${title}`);
  item.querySelector('[data-action="delete"]').setAttribute("aria-label", `Delete ${title}`);
}

/** Show a conversation's new title wherever it is listed, and in the tab if it is open. */
function setTitle(id, title) {
  for (const item of itemsFor(id)) applyTitle(item, title);
  if (openConversationId() === String(id)) setPageTitle(title);
}

function todayList() {
  let section = groups.querySelector('.conversation-group[data-group="today"]');
  if (!section) {
    section = document.createElement("section");
    section.className = "conversation-group";
    section.dataset.group = "today";
    section.setAttribute("aria-labelledby", "conversation-group-today");
    const heading = document.createElement("h2");
    heading.className = "conversation-group-heading";
    heading.id = "conversation-group-today";
    heading.textContent = "Today";
    const list = document.createElement("ul");
    list.className = "conversation-list";
    section.append(heading, list);
    groups.prepend(section);
  }
  groups.querySelector(".conversation-list-empty")?.remove();
  return section.querySelector(".conversation-list");
}

function dropEmptyGroups() {
  for (const section of groups.querySelectorAll(".conversation-group")) {
    if (!section.querySelector(".conversation-item")) section.remove();
  }
  if (!groups.querySelector(".conversation-group")) {
    const empty = document.createElement("p");
    empty.className = "conversation-list-empty empty";
    empty.textContent = "No conversations yet.";
    groups.replaceChildren(empty);
  }
}

/** A conversation this page is replying in: first under Today, marked as the open one. */
export function conversationActive(id, title) {
  const existing = groups.querySelector(
    `.conversation-item[data-conversation-id="${CSS.escape(String(id))}"]`,
  );
  const item = existing ?? itemNode(id, title);
  todayList().prepend(item);
  dropEmptyGroups();
  for (const link of root.querySelectorAll('.conversation-link[aria-current="page"]')) {
    link.removeAttribute("aria-current");
  }
  item.querySelector(".conversation-link").setAttribute("aria-current", "page");
  if (openConversationId() === String(id)) setPageTitle(item.dataset.title);
}

/** After a new conversation's first reply, the server asks the model for a title: fetch the
 *  conversation a few times until its title is no longer the one shown. */
export async function watchTitle(id) {
  if (!autoTitles) return;
  for (const delay of TITLE_POLL_DELAYS_MS) {
    await new Promise((resolve) => setTimeout(resolve, delay));
    const shown = root.querySelector(
      `.conversation-item[data-conversation-id="${CSS.escape(String(id))}"]`,
    )?.dataset.title;
    try {
      const response = await fetch(`${apiUrl}/${id}`, {
        credentials: "same-origin",
        headers: { Accept: "application/json" },
      });
      if (!response.ok) return;
      const { title } = await response.json();
      if (title && title !== shown) {
        setTitle(id, title);
        return;
      }
    } catch {
      // try again at the next delay
    }
  }
}

async function errorText(response, fallback) {
  try {
    const body = await response.json();
    if (body?.error?.message) return body.error.message;
  } catch {
    // not JSON
  }
  return fallback;
}

function showError(item, text) {
  let error = item.querySelector(".conversation-error");
  if (!error) {
    error = document.createElement("p");
    error.className = "conversation-error";
    error.setAttribute("role", "alert");
    item.append(error);
  }
  error.textContent = text;
}

function clearError(item) {
  item.querySelector(".conversation-error")?.remove();
}

// -- rename -----------------------------------------------------------------------------------

function startRename(item) {
  if (item.querySelector(".conversation-rename, .conversation-confirm")) return;
  const id = item.dataset.conversationId;
  const before = item.dataset.title;
  const link = item.querySelector(".conversation-link");
  const actions = item.querySelector(".conversation-actions");
  const editor = document.createElement("form");
  editor.className = "conversation-rename";
  const input = document.createElement("input");
  input.type = "text";
  input.maxLength = 200;
  input.value = before;
  input.setAttribute("aria-label", `New title for ${before}`);
  editor.append(input);
  link.hidden = true;
  actions.hidden = true;
  link.after(editor);
  input.focus();
  input.select();

  let state = "editing"; // then "saving", then "done"

  const finish = (focusBack) => {
    state = "done";
    editor.remove();
    clearError(item);
    link.hidden = false;
    actions.hidden = false;
    if (focusBack) item.querySelector('[data-action="rename"]').focus();
  };

  const save = async () => {
    const title = input.value.split(/\s+/).filter(Boolean).join(" ");
    if (!title) {
      input.setAttribute("aria-invalid", "true");
      showError(item, "A title cannot be empty.");
      input.focus();
      return;
    }
    if (title === before) {
      finish(true);
      return;
    }
    state = "saving";
    input.readOnly = true;
    try {
      const response = await fetch(`${apiUrl}/${id}`, {
        method: "PATCH",
        headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken },
        body: JSON.stringify({ title }),
        credentials: "same-origin",
      });
      if (!response.ok) {
        state = "editing";
        input.readOnly = false;
        input.setAttribute("aria-invalid", "true");
        showError(item, await errorText(response, "The title could not be saved."));
        input.focus();
        return;
      }
      const saved = await response.json();
      finish(true);
      setTitle(id, saved.title);
      announce(`Renamed to ${saved.title}.`);
    } catch {
      state = "editing";
      input.readOnly = false;
      showError(item, "The title could not be saved: the server cannot be reached.");
    }
  };

  editor.addEventListener("submit", (event) => {
    event.preventDefault();
    if (state === "editing") save();
  });
  input.addEventListener("input", () => {
    input.removeAttribute("aria-invalid");
    clearError(item);
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      event.preventDefault();
      event.stopPropagation(); // Escape here cancels the rename, not the reply
      if (state === "editing") finish(true);
    }
  });
  // Leaving the field keeps a changed, valid title; anything else is dropped.
  input.addEventListener("blur", () => {
    if (state !== "editing") return;
    const title = input.value.trim();
    if (!title || title === before) finish(false);
    else save();
  });
}

// -- delete -----------------------------------------------------------------------------------

function askDelete(item) {
  if (item.querySelector(".conversation-rename, .conversation-confirm")) return;
  const id = item.dataset.conversationId;
  const title = item.dataset.title;
  const actions = item.querySelector(".conversation-actions");
  const confirm = document.createElement("div");
  confirm.className = "conversation-confirm";
  confirm.setAttribute("role", "group");
  confirm.setAttribute("aria-label", `Delete ${title}?`);
  const question = document.createElement("span");
  question.className = "conversation-confirm-question";
  question.textContent = "Delete this conversation?";
  const yes = document.createElement("button");
  yes.type = "button";
  yes.className = "conversation-confirm-delete";
  yes.textContent = "Delete";
  const no = document.createElement("button");
  no.type = "button";
  no.className = "conversation-confirm-cancel";
  no.textContent = "Cancel";
  confirm.append(question, yes, no);
  actions.hidden = true;
  item.append(confirm);
  no.focus();

  const close = () => {
    confirm.remove();
    actions.hidden = false;
    item.querySelector('[data-action="delete"]').focus();
  };
  no.addEventListener("click", close);
  confirm.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      event.preventDefault();
      event.stopPropagation();
      close();
    }
  });
  yes.addEventListener("click", async () => {
    yes.disabled = true;
    no.disabled = true;
    try {
      const response = await fetch(`${apiUrl}/${id}`, {
        method: "DELETE",
        headers: { "X-CSRFToken": csrfToken },
        credentials: "same-origin",
      });
      // 404: gone already (another tab deleted it).
      if (!response.ok && response.status !== 404) {
        yes.disabled = false;
        no.disabled = false;
        showError(item, await errorText(response, "The conversation could not be deleted."));
        return;
      }
    } catch {
      yes.disabled = false;
      no.disabled = false;
      showError(item, "The conversation could not be deleted: the server cannot be reached.");
      return;
    }
    if (openConversationId() === id) {
      window.location.assign("/"); // the open conversation is gone: start a new chat
      return;
    }
    for (const listed of itemsFor(id)) listed.remove();
    dropEmptyGroups();
    searchInput.focus();
    announce(`Deleted ${title}.`);
  });
}

root.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-action]");
  if (!button) return;
  const item = button.closest(".conversation-item");
  if (button.dataset.action === "rename") startRename(item);
  else if (button.dataset.action === "delete") askDelete(item);
});

// -- search -----------------------------------------------------------------------------------

let searchTimer = null;
let searching = null;

function showList() {
  searching?.abort();
  searching = null;
  searchResults.hidden = true;
  groups.hidden = false;
  searchList.replaceChildren();
  searchSummary.textContent = "";
}

function resultNode(result) {
  const item = itemNode(result.id, result.title || "Untitled");
  if (String(result.id) === openConversationId()) {
    item.querySelector(".conversation-link").setAttribute("aria-current", "page");
  }
  if (result.snippet) {
    const snippet = document.createElement("span");
    snippet.className = "conversation-snippet";
    snippet.textContent = result.snippet;
    item.append(snippet);
  }
  return item;
}

async function search() {
  const query = searchInput.value.trim();
  if (!query) {
    showList();
    return;
  }
  searching?.abort();
  const controller = new AbortController();
  searching = controller;
  const url = `${apiUrl}?q=${encodeURIComponent(query)}&page_size=${SEARCH_PAGE_SIZE}`;
  let body;
  try {
    const response = await fetch(url, {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
      signal: controller.signal,
    });
    if (!response.ok) {
      const text = await errorText(response, "The search failed.");
      if (searching !== controller) return; // a newer search is on its way
      searching = null;
      searchSummary.textContent = text;
      searchList.replaceChildren();
      searchResults.hidden = false;
      groups.hidden = true;
      return;
    }
    body = await response.json();
  } catch (error) {
    if (error.name !== "AbortError") searchSummary.textContent = "The search failed.";
    return;
  }
  if (searching !== controller) return; // a newer search is on its way
  searching = null;
  searchList.replaceChildren(...body.results.map(resultNode));
  const count = body.total;
  if (!count) searchSummary.textContent = `No conversations match “${query}”.`;
  else if (body.has_next) searchSummary.textContent = `The ${body.results.length} latest of ${count} conversations found.`;
  else searchSummary.textContent = count === 1 ? "1 conversation found." : `${count} conversations found.`;
  groups.hidden = true;
  searchResults.hidden = false;
}

searchInput.addEventListener("input", () => {
  clearTimeout(searchTimer);
  if (!searchInput.value.trim()) {
    showList();
    return;
  }
  searchTimer = setTimeout(search, SEARCH_DELAY_MS);
});

searchInput.addEventListener("keydown", (event) => {
  if (event.key !== "Escape") return;
  event.preventDefault();
  event.stopPropagation(); // Escape here clears the search, not the reply
  clearTimeout(searchTimer);
  searchInput.value = "";
  showList();
});

searchForm.addEventListener("submit", (event) => {
  event.preventDefault();
  clearTimeout(searchTimer);
  search();
});
