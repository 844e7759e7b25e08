// Applies the theme picked on this browser before the page is first painted (a classic script
// in <head>, so no flash of the other theme). No attribute means "system": the CSS follows
// prefers-color-scheme. theme.js owns the picker and the stored choice.
(function () {
  try {
    var theme = window.localStorage.getItem("chatsite-theme");
    if (theme === "light" || theme === "dark") {
      document.documentElement.setAttribute("data-theme", theme);
    }
  } catch (error) {
    // storage blocked: follow the system
  }
})();
