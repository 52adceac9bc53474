/* bgagents web page: the few things htmx does not do. Nothing here is needed to read a page. */
(function () {
  "use strict";

  // The event stream resumes after the last event this page has shown: after each
  // message the stream's URL carries its seq, so a stream the SSE extension opens
  // anew (after the daemon restarted) starts there, like the browser's Last-Event-ID.
  function resumeAfter(id) {
    var live = document.getElementById("live");
    if (!id || !live) return;
    var url = new URL(live.getAttribute("sse-connect"), location.href);
    url.searchParams.set("since", id);
    live.setAttribute("sse-connect", url.pathname + url.search);
  }
  document.addEventListener("htmx:sseMessage", function (e) { resumeAfter(e.detail && e.detail.lastEventId); });

  // A `touch` message: rows whose last message, age and cost changed and nothing else
  // (a streaming session), as text set in place — a hundred rows a second without redrawing them.
  function touch(e) {
    var rows = JSON.parse(e.data);
    Object.keys(rows).forEach(function (id) {
      var row = document.getElementById("row-" + id), t = rows[id];
      if (!row) return;
      var last = row.querySelector(".last"), age = row.querySelector("time[data-age]"), cost = row.querySelector(".cost");
      if (last) last.textContent = t.last;
      if (age) { age.setAttribute("datetime", t.at); age.setAttribute("title", t.at); age.textContent = t.age; }
      if (cost) cost.textContent = t.cost;
    });
    resumeAfter(e.lastEventId);
  }

  // Say so while the stream is down, and stop saying so when it is back.
  var source = null;
  document.addEventListener("htmx:sseError", function () {
    var conn = document.getElementById("conn");
    if (conn) conn.hidden = false;
  });
  document.addEventListener("htmx:sseOpen", function (e) {
    source = e.detail && e.detail.source;
    if (source && !source.__touch) { source.addEventListener("touch", touch); source.__touch = true; }
    var conn = document.getElementById("conn");
    if (conn) conn.hidden = true;
  });

  // A browser keeps at most six HTTP/1.1 connections to one host, and each open page's
  // stream holds one: a tab left in the background lets its stream go after a while and
  // picks it up again, after the last event it showed, when it is looked at.
  var pauseTimer = null, paused = false;
  document.addEventListener("visibilitychange", function () {
    var live = document.getElementById("live");
    if (!live) return;
    if (document.hidden) {
      var after = parseInt(live.getAttribute("data-pause-after") || "10000", 10);
      pauseTimer = setTimeout(function () {
        if (source) { source.close(); paused = true; }
      }, after);
    } else {
      clearTimeout(pauseTimer);
      if (paused) {
        paused = false;
        live.setAttribute("data-resumed", String(Date.now()));  // a changed node: htmx starts it anew
        htmx.process(live);
      }
    }
  });

  // A form sent by htmx is emptied once the daemon took it (a reply, a dispatch).
  document.addEventListener("htmx:afterRequest", function (e) {
    var form = e.detail && e.detail.elt;
    if (e.detail.successful && form && form.hasAttribute && form.hasAttribute("data-reset")) {
      var error = document.querySelector("#flash .flash.error");
      if (!error) form.reset();
    }
  });
  document.addEventListener("htmx:responseError", function (e) {
    var flash = document.getElementById("flash");
    var status = e.detail.xhr ? e.detail.xhr.status : 0;
    if (!flash) return;
    var p = document.createElement("p");
    p.className = "flash error";
    p.textContent = status === 401 ? "Not logged in any more: run `bgctl web` and open the link it prints."
                                   : (e.detail.xhr && e.detail.xhr.responseText) || "The request failed.";
    flash.replaceChildren(p);
  });

  // Countdowns and ages tick in place.
  function countdown(ms) {
    var s = Math.round(ms / 1000);
    if (s <= 0) return "now";
    var h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    if (h) return "in " + h + "h " + m + "m";
    if (m) return "in " + m + "m " + r + "s";
    return "in " + r + "s";
  }
  function age(ms) {
    var s = ms / 1000;
    if (s < 45) return "just now";
    if (s < 3600) return Math.max(1, Math.round(s / 60)) + " min ago";
    if (s < 172800) return Math.round(s / 3600) + " h ago";
    return Math.round(s / 86400) + " d ago";
  }
  var ages = 0;
  function tick() {
    var now = Date.now();
    document.querySelectorAll("time[data-countdown]").forEach(function (t) {
      var text = countdown(Date.parse(t.getAttribute("datetime")) - now);
      if (t.textContent !== text) t.textContent = text;
    });
    document.querySelectorAll("time[data-age]").forEach(function (t) {
      var text = age(now - Date.parse(t.getAttribute("datetime")));
      if (t.textContent !== text) t.textContent = text;
    });
  }
  setInterval(function () {
    if (document.querySelector("time[data-countdown]")) tick();
    else if (++ages % 30 === 0) tick();
  }, 1000);
})();
