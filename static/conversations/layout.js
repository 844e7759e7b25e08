// The chat page's layout behaviours: the sidebar as a drawer on narrow screens, and wide code
// blocks and tables that scroll inside their own box made reachable by keyboard.

const NARROW = window.matchMedia("(max-width: 767.98px)");
const menuButton = document.getElementById("menu-button");
const sidebar = document.getElementById("sidebar");
const chat = document.querySelector(".chat");
const transcript = document.getElementById("transcript");

let backdrop = null;

function isOpen() {
  return menuButton?.getAttribute("aria-expanded") === "true";
}

export function openDrawer() {
  if (!menuButton || !sidebar || !NARROW.matches || isOpen()) return;
  menuButton.setAttribute("aria-expanded", "true");
  sidebar.classList.add("open");
  backdrop.hidden = false;
  // The page behind the drawer is out of reach until it closes.
  chat.inert = true;
  const first = sidebar.querySelector("a[aria-current='page']")
    ?? sidebar.querySelector("a, button, input, select, textarea");
  first?.focus();
}

export function closeDrawer({ restoreFocus = true } = {}) {
  if (!menuButton || !isOpen()) return;
  menuButton.setAttribute("aria-expanded", "false");
  sidebar.classList.remove("open");
  backdrop.hidden = true;
  chat.inert = false;
  if (restoreFocus) menuButton.focus();
}

if (menuButton && sidebar && chat) {
  backdrop = document.createElement("div");
  backdrop.className = "drawer-backdrop";
  backdrop.hidden = true;
  sidebar.after(backdrop);
  backdrop.addEventListener("click", () => closeDrawer());

  menuButton.addEventListener("click", () => (isOpen() ? closeDrawer() : openDrawer()));

  // Esc closes the drawer, and only that (chat.js's Esc stops a streaming reply).
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && isOpen()) {
      event.stopPropagation();
      event.preventDefault();
      closeDrawer();
    }
  }, { capture: true });

  // Following a link in the drawer (or going back) closes it.
  sidebar.addEventListener("click", (event) => {
    if (event.target.closest("a[href]")) closeDrawer({ restoreFocus: false });
  });
  window.addEventListener("popstate", () => closeDrawer({ restoreFocus: false }));
  window.addEventListener("pageshow", () => closeDrawer({ restoreFocus: false }));

  // Widening the window past the breakpoint shows the sidebar in place: nothing stays inert.
  NARROW.addEventListener("change", () => {
    if (!NARROW.matches) closeDrawer({ restoreFocus: false });
  });
}

/** A code block or table wider than its box scrolls sideways; one that does is given
 *  tabindex=0 so that keyboard users can scroll it too. */
function markScrollableBoxes() {
  for (const box of transcript.querySelectorAll(".message-body pre, .message-body table")) {
    const scrolls = box.scrollWidth > box.clientWidth + 1;
    if (scrolls && !box.hasAttribute("tabindex")) {
      box.tabIndex = 0;
      box.dataset.scrollBox = "";
    } else if (!scrolls && box.dataset.scrollBox !== undefined) {
      box.removeAttribute("tabindex");
      delete box.dataset.scrollBox;
    }
  }
}

if (transcript) {
  let pending = false;
  const schedule = () => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      markScrollableBoxes();
    });
  };
  new MutationObserver(schedule).observe(transcript, { childList: true, subtree: true });
  window.addEventListener("resize", schedule);
  schedule();
}
