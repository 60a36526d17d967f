// What every flow page shares: the token, the live board over SSE, and commands.
//
// Token: a page is opened once as /screens/<clinic>/<page>?token=<bearer token>. The page
// keeps the token in sessionStorage (this tab only, gone when the tab closes) under a key
// per page kind, and removes it from the address bar, so the URL can be bookmarked or
// seen over a shoulder without it. fetch() sends it as "Authorization: Bearer"; EventSource
// cannot send headers, so the stream gets it as ?access_token=. Reopening the page without
// ?token= in the same tab reuses the stored one.
//
// The stream reconnects by itself: EventSource retries after a dropped connection (the
// server asks for 2 s), a stream the server refused is opened again after a pause, and a
// watchdog reopens a stream that went silent (flow sends every board on each change and
// at least every tick while the clinic is open).
(function () {
  "use strict";

  const WATCHDOG_MS = 65000;

  function randomKey() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);  // randomUUID needs a secure context; this does not
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function takeToken(kind) {
    const key = "clinicflow-token:" + kind;
    const params = new URLSearchParams(location.search);
    const given = params.get("token");
    if (given) {
      sessionStorage.setItem(key, given);
      params.delete("token");
      const rest = params.toString();
      history.replaceState(null, "", location.pathname + (rest ? "?" + rest : "") + location.hash);
    }
    return sessionStorage.getItem(key) || "";
  }

  function init(kind) {
    const clinic = document.body.dataset.clinic;
    const token = takeToken(kind);
    const base = "/clinics/" + encodeURIComponent(clinic);

    function headers(extra) {
      return Object.assign({"Authorization": "Bearer " + token}, extra || {});
    }

    // A command carries an Idempotency-Key: one per action, the same on every retry of
    // it (the automatic ones below, and a nurse's second click on an action that failed
    // for want of an answer: ``key``), so a retried command happens once.
    async function request(method, path, body, key) {
      const init = {method: method, headers: headers({"Idempotency-Key": key || randomKey()})};
      if (body !== undefined) {
        init.headers["Content-Type"] = "application/json";
        init.body = JSON.stringify(body);
      }
      let response;
      for (let attempt = 0; ; attempt++) {
        try {
          response = await fetch(base + path, init);
          // Kafka not reachable right now: nothing was published, the same key again
          if (response.status === 503 && attempt < 2) {
            await new Promise((resolve) => setTimeout(resolve, 1000 * (attempt + 1)));
            continue;
          }
          break;
        } catch (error) {
          // same Idempotency-Key: a retried command happens once
          if (attempt >= 2) return {ok: false, status: 0, body: {detail: "flow is unreachable"}};
          await new Promise((resolve) => setTimeout(resolve, 500 * (attempt + 1)));
        }
      }
      let answer = null;
      try { answer = await response.json(); } catch (error) { answer = null; }
      return {ok: response.ok, status: response.status, body: answer};
    }

    // why a stream failed: a refused token is said so, not retried every two seconds
    async function diagnose() {
      if (!token) return {state: "no-token"};
      try {
        const response = await fetch(base + "/board", {headers: headers()});
        if (response.status === 401) return {state: "refused", text: "token refused"};
        if (response.status === 403) return {state: "refused", text: "token not valid here"};
        if (response.status === 429 || response.status === 503) return {state: "busy"};
        return {state: "retry"};
      } catch (error) {
        return {state: "offline"};
      }
    }

    function stream(onBoard, onStatus) {
      let source = null;
      let timer = null;
      let lastSeen = Date.now();

      function later(ms) {
        if (timer !== null) clearTimeout(timer);
        timer = setTimeout(() => { timer = null; open(); }, ms);
      }

      function open() {
        if (source) source.close();
        if (!token) {
          onStatus("no-token", "no token: open this page once with ?token=…");
          return;
        }
        lastSeen = Date.now();
        source = new EventSource(base + "/stream?access_token=" + encodeURIComponent(token));
        source.onopen = () => { lastSeen = Date.now(); };
        source.addEventListener("board", (event) => {
          lastSeen = Date.now();
          const board = JSON.parse(event.data);
          learnNames(board.names);
          onBoard(board);
          onStatus("live", "live");
        });
        const current = source;
        source.onerror = async () => {
          onStatus("lost", "reconnecting…");
          const closed = current.readyState === EventSource.CLOSED;
          const why = await diagnose();
          if (current !== source) return;  // already replaced by a newer stream
          if (why.state === "refused" || why.state === "no-token") {
            current.close();
            onStatus("refused", why.text || "no token");
            later(30000);
          } else if (closed) {
            // EventSource gives up for good when the server answers with an error (a
            // restart, a proxy's 502): open it again
            later(why.state === "busy" ? 5000 : 2000);
          }
        };
      }

      setInterval(() => {
        if (source && source.readyState !== EventSource.CLOSED &&
            Date.now() - lastSeen > WATCHDOG_MS) {
          onStatus("lost", "reconnecting…");
          open();
        }
      }, 5000);
      window.addEventListener("online", () => open());
      open();
    }

    return {clinic: clinic, token: token, request: request, stream: stream};
  }

  // small helpers the pages share
  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = text;  // never innerHTML
    return node;
  }

  function minutesSince(iso, now) {
    return (now - Date.parse(iso)) / 60000;
  }

  function duration(minutes) {
    const m = Math.max(0, Math.floor(minutes));
    if (m < 60) return m + " min";
    return Math.floor(m / 60) + " h " + String(m % 60).padStart(2, "0");
  }

  // The clinic as its people know it (the page carries it: data-clinic-info, from
  // CLINICFLOW_CLINICS): its IANA zone, and the names of its providers and rooms. Times
  // are shown on the clinic's clock whatever the browser's zone; ids never reach a screen
  // when the clinic has named them.
  const CLINIC = (() => {
    try { return JSON.parse(document.body.dataset.clinicInfo || "{}"); }
    catch (error) { return {}; }
  })();
  const ZONE = CLINIC.timezone || undefined;
  const TIME = new Intl.DateTimeFormat("en-US", {hour: "2-digit", minute: "2-digit",
                                                 hourCycle: "h23", timeZone: ZONE});

  function clockTime(iso) {
    return TIME.format(typeof iso === "string" ? new Date(iso) : iso);
  }

  // every board carries the clinic's names as flow knows them now (configured first, then
  // those imports brought): a provider or room named after the page was opened shows by
  // that name from the next board on
  function learnNames(names) {
    if (!names) return;
    CLINIC.providers = Object.assign({}, CLINIC.providers || {}, names.providers || {});
    CLINIC.rooms = Object.assign({}, CLINIC.rooms || {}, names.rooms || {});
  }

  function providerName(id) {
    if (!id || id === "any") return "the first available provider";
    return (CLINIC.providers || {})[id] || id;
  }

  function roomName(id) {
    const named = (CLINIC.rooms || {})[id];
    if (named) return named;
    return /^\d+$/.test(id) ? "Room " + id : id;
  }

  // a sentence made with ids (the operations report), with the clinic's names instead;
  // an id made of digits only is left alone (it cannot be told from a count)
  const ID_CHARS = "A-Za-z0-9_.:-";
  function named(text) {
    const names = Object.assign({}, CLINIC.rooms || {}, CLINIC.providers || {});
    let result = text;
    for (const id of Object.keys(names).filter((i) => !/^\d+$/.test(i))
      .sort((a, b) => b.length - a.length)) {
      const escaped = id.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
      // "." or ":" then a space ends a sentence or a label, not the id
      result = result.replace(new RegExp("(^|[^" + ID_CHARS + "])" + escaped +
                                         "(?![A-Za-z0-9_-]|[.:][A-Za-z0-9_])", "g"),
                              (match, before) => before + names[id]);
    }
    return result;
  }

  function startClock(node) {
    const tick = () => { node.textContent = clockTime(new Date()); };
    tick();
    setInterval(tick, 10000);
  }

  window.ClinicFlowLive = {init: init, el: el, minutesSince: minutesSince, duration: duration,
                           clockTime: clockTime, startClock: startClock, randomKey: randomKey,
                           clinic: CLINIC, providerName: providerName, roomName: roomName,
                           named: named};
})();
