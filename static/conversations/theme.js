// The theme picker in the header: light, dark or system (the default), remembered in this
// browser's localStorage and shown as <html data-theme="light|dark"> (none for system).
// theme-init.js applies the stored choice before first paint; this script keeps it in step.
// A classic deferred script (not a module), like theme-init.js, on every page.
(function () {
  var KEY = "chatsite-theme";
  var CHOICES = ["system", "light", "dark"];

  function stored() {
    try {
      var value = window.localStorage.getItem(KEY);
      return CHOICES.indexOf(value) === -1 ? "system" : value;
    } catch (error) {
      return "system";
    }
  }

  function apply(choice) {
    var root = document.documentElement;
    if (choice === "light" || choice === "dark") root.setAttribute("data-theme", choice);
    else root.removeAttribute("data-theme");
  }

  function choose(choice) {
    try {
      if (choice === "system") window.localStorage.removeItem(KEY);
      else window.localStorage.setItem(KEY, choice);
    } catch (error) {
      // storage blocked: the choice lasts for this page only
    }
    apply(choice);
  }

  var picker = document.getElementById("theme-select");
  if (!picker) return;
  picker.value = stored();
  apply(picker.value);
  picker.closest(".theme-picker").hidden = false;
  picker.addEventListener("change", function () {
    choose(CHOICES.indexOf(picker.value) === -1 ? "system" : picker.value);
  });
  // Another tab changed it: follow.
  window.addEventListener("storage", function (event) {
    if (event.key !== KEY && event.key !== null) return;
    picker.value = stored();
    apply(picker.value);
  });
})();
