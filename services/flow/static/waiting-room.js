// The lobby screen: ticket codes and ranges, who is called, delays. Live over SSE.
// The token comes once as ?token=... and is kept in sessionStorage, so the URL can be
// bookmarked without it; EventSource cannot send headers, so it goes as access_token.
(function () {
  "use strict";
  const clinic = document.body.dataset.clinic;
  const params = new URLSearchParams(location.search);
  if (params.get("token")) {
    sessionStorage.setItem("clinicflow-token", params.get("token"));
    params.delete("token");
    history.replaceState(null, "", location.pathname + (params.toString() ? "?" + params : ""));
  }
  const token = sessionStorage.getItem("clinicflow-token") || "";
  const MAX_ROWS = 12;
  const el = (id) => document.getElementById(id);

  function rangeText(low, high) {
    if (high === null || high === undefined) return "";
    const lo = Math.max(0, Math.floor(low / 5) * 5);
    const hi = Math.max(lo + 5, Math.ceil(high / 5) * 5);
    if (hi <= 5) return "a few minutes";
    return "about " + lo + "\u2013" + hi + " min";
  }

  function item(cls, parts) {
    const li = document.createElement("li");
    if (cls) li.className = cls;
    for (const [name, text] of parts) {
      const span = document.createElement("span");
      span.className = name;
      span.textContent = text;   // never innerHTML: board text is data, not markup
      li.appendChild(span);
    }
    return li;
  }

  function render(board) {
    const calling = el("calling");
    calling.replaceChildren(...(board.calling || []).slice(-4).reverse().map(
      (c) => item("", [["ticket", c.ticket_code], ["room", "Room " + c.room_id]])));
    const waiting = board.waiting || [];
    const rows = waiting.slice(0, MAX_ROWS).map(
      (w) => item("", [["ticket", w.ticket_code], ["range", rangeText(w.low, w.high)]]));
    if (waiting.length > MAX_ROWS) {
      rows.push(item("overflow", [["ticket", "+" + (waiting.length - MAX_ROWS) + " more"]]));
    }
    el("waiting").replaceChildren(...rows);
    el("empty").hidden = waiting.length > 0;
    const banners = [];
    if (board.clinic_delay && board.clinic_delay.minutes > 0) {
      banners.push("We are running about " + board.clinic_delay.minutes +
                   " minutes behind. Thank you for your patience.");
    }
    for (const p of board.providers || []) {
      if (p.delay_minutes > 0) {
        banners.push(p.provider_id + " is running about " + p.delay_minutes +
                     " minutes behind.");
      }
    }
    el("banners").replaceChildren(...banners.map((text) => {
      const div = document.createElement("div");
      div.className = "banner";
      div.textContent = text;
      return div;
    }));
  }

  function status(text, lost) {
    const s = el("status");
    s.textContent = text;
    s.classList.toggle("lost", !!lost);
  }

  let source = null;
  let retry = null;
  function connect() {
    if (source) source.close();
    const url = "/clinics/" + encodeURIComponent(clinic) + "/stream?access_token=" +
                encodeURIComponent(token);
    source = new EventSource(url);
    source.addEventListener("board", (event) => {
      render(JSON.parse(event.data));
      status("live \u00b7 updated " + new Date().toLocaleTimeString(), false);
    });
    source.onerror = () => {
      status("reconnecting\u2026", true);
      // EventSource retries by itself after a dropped connection, but gives up for good
      // when the server answers with an error while restarting: start it again then.
      if (source.readyState === EventSource.CLOSED && retry === null) {
        retry = setTimeout(() => { retry = null; connect(); }, 2000);
      }
    };
  }

  function tick() {
    el("clock").textContent = new Date().toLocaleTimeString([], {hour: "2-digit",
                                                                 minute: "2-digit"});
  }
  tick();
  setInterval(tick, 10000);
  connect();
})();
