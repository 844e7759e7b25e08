// The page's title: the tab's and the chat page's (visually hidden) h1. chat.js calls
// setPageTitle when a new conversation starts; a rename can call it too.

export const SITE_NAME = "chatsite";

export function setPageTitle(title) {
  const text = (title || "").trim() || "New chat";
  document.title = `${text} · ${SITE_NAME}`;
  const heading = document.getElementById("page-title");
  if (heading) heading.textContent = text;
}
