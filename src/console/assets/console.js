// switchyard console: progressive only — every page works without it.
// 1. Times are rendered in UTC by the server; show them in the viewer's zone.
// 2. Forms marked data-confirm ask before they are sent (the server asks again).
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("time[datetime]").forEach(function (el) {
    var t = new Date(el.getAttribute("datetime"));
    if (!isNaN(t)) {
      el.title = el.textContent;
      el.textContent = t.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
    }
  });
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (ev) {
      if (!window.confirm(form.getAttribute("data-confirm"))) {
        ev.preventDefault();
      }
    });
  });
  var all = document.getElementById("select-all");
  if (all) {
    all.addEventListener("change", function () {
      document.querySelectorAll("input[name=key]").forEach(function (box) {
        box.checked = all.checked;
      });
    });
  }
});
