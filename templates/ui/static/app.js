// mxhook dashboard: small progressive enhancements. Every page works without this file.
(function () {
  "use strict";

  // The messages list: fetch the rows again every 2 s and swap them in when they changed, so
  // new mail shows up without a reload. Skipped while keyboard focus is inside the table.
  var rows = document.getElementById("message-rows");
  if (rows && rows.dataset.rowsUrl && window.fetch) {
    var status = document.getElementById("live-status");
    var last = rows.innerHTML.trim();
    var refresh = function () {
      if (rows.contains(document.activeElement)) return;
      fetch(rows.dataset.rowsUrl, { credentials: "same-origin", cache: "no-store" })
        .then(function (response) {
          if (!response.ok) throw new Error("HTTP " + response.status);
          var older = document.getElementById("older");
          var olderUrl = response.headers.get("x-older-url");
          if (older && olderUrl !== null) {
            older.hidden = olderUrl === "";
            if (olderUrl) older.setAttribute("href", olderUrl);
          }
          return response.text();
        })
        .then(function (html) {
          html = html.trim();
          if (html !== last) {
            rows.innerHTML = html;
            last = html;
            if (status) status.textContent = "Updated " + new Date().toLocaleTimeString() + ".";
          }
        })
        .catch(function () {
          if (status) status.textContent = "Live updates paused: the gateway did not answer.";
        });
    };
    window.setInterval(refresh, 2000);
  }

  // A message whose delivery is still pending: reload until every delivery settled.
  if (document.querySelector('.delivery[data-status="pending"]')) {
    window.setTimeout(function () { window.location.reload(); }, 2000);
  }

  // The hmac-only webhook settings: shown only while that scheme is picked. The server ignores
  // them for other schemes, so without this script they are merely always visible.
  var scheme = document.getElementById("signature");
  var hmac = document.getElementById("hmac-settings");
  if (scheme && hmac) {
    var sync = function () { hmac.hidden = scheme.value !== hmac.dataset.scheme; };
    scheme.addEventListener("change", sync);
    sync();
  }

  // Forms that ask before they act.
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });
})();
