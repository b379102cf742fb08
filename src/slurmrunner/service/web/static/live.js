// Live parts of the pages: each element with data-refresh="URL" is replaced by that URL's
// HTML every few seconds. The pages work without this script (a reload shows the same).
"use strict";
(function () {
  var PERIOD_MS = 3000;

  function refresh(el) {
    var url = el.getAttribute("data-refresh");
    if (!url) return;
    fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (r) {
        // A redirect is the sign-in page (the session ended): leave the page as it is.
        if (!r.ok || r.redirected) throw new Error("stop");
        return r.text();
      })
      .then(function (html) {
        if (el.tagName === "TBODY") {
          el.innerHTML = html;
          setTimeout(function () { refresh(el); }, PERIOD_MS);
          return;
        }
        // A fragment that is its own element (the run's progress): swapped whole, and
        // polled again only while it still asks to be (an ended run's does not).
        var box = document.createElement("div");
        box.innerHTML = html.trim();
        var fresh = box.firstElementChild;
        if (!fresh) return;
        el.replaceWith(fresh);
        if (fresh.hasAttribute("data-refresh")) {
          setTimeout(function () { refresh(fresh); }, PERIOD_MS);
        }
      })
      .catch(function () { /* keep what is shown */ });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-refresh]").forEach(function (el) {
      setTimeout(function () { refresh(el); }, PERIOD_MS);
    });
  });
})();
