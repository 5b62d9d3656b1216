// Live updates: every few seconds the page asks the gateway for a stamp of what it shows; when the
// stamp changes, the page's live region is fetched again and swapped in, and a screen reader hears
// "Updated". Forms sit outside the live region, so nothing being typed is lost. When the session has
// ended the page reloads, which shows the sign-in page.
(function () {
  "use strict";
  var region = document.getElementById("live-region");
  if (!region || !window.fetch) {
    return;
  }
  var url = region.getAttribute("data-live-url");
  var every = Math.max(1, Number(region.getAttribute("data-live-poll") || "5")) * 1000;
  // The stamp the page was drawn from: a change made before the first poll is still seen.
  var stamp = region.getAttribute("data-live-stamp");

  function announce(text) {
    var announcer = document.getElementById("live-announcer");
    if (announcer) {
      announcer.textContent = text;
    }
  }

  function fetchRegion() {
    var formId = region.getAttribute("data-live-form");
    var form = formId ? document.getElementById(formId) : null;
    var options = { credentials: "same-origin", headers: { "X-Live-Fragment": "1" } };
    if (form) {
      // A search result: ask again with the same (POSTed) search, never through the URL.
      options.method = "POST";
      options.body = new URLSearchParams(new FormData(form));
      return fetch(form.action, options);
    }
    return fetch(window.location.href, options);
  }

  function refresh() {
    return fetchRegion().then(function (response) {
      if (response.ok && !response.redirected) {
        return response.text().then(function (html) {
          region.innerHTML = html;
          announce("Updated");
        });
      }
      return undefined;
    });
  }

  function check() {
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (response.status === 401) {
          window.location.reload();
          return undefined;
        }
        if (!response.ok) {
          return undefined;
        }
        return response.json().then(function (body) {
          if (stamp !== null && body.stamp !== stamp) {
            stamp = body.stamp;
            return refresh();
          }
          stamp = body.stamp;
          return undefined;
        });
      })
      .catch(function () {
        return undefined;
      })
      .then(function () {
        window.setTimeout(check, every);
      });
  }

  check();
})();
