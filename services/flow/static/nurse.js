// The nurse station: rooms and their state, who is next for each provider, room-ready
// alerts, one-click floor commands with the nurse's own token, overdue at a glance.
(function () {
  "use strict";
  const live = ClinicFlowLive.init("nurse");
  const {el, minutesSince, duration, clockTime} = ClinicFlowLive;
  const byId = (id) => document.getElementById(id);
  const limits = JSON.parse(document.body.dataset.limits || "{}");
  const alertsUrl = document.body.dataset.alertsUrl || "";
  const LAST_ACTION = "clinicflow-nurse-last-action:" + live.clinic;
  const STATE_TEXT = {ready: "Ready", occupied: "Occupied", needs_cleaning: "Needs cleaning",
                      out_of_service: "Out of service"};
  const MAX_ROOM_BUTTONS = 3;
  const ROWS_BEFORE_SCROLL = 6;  // a queue longer than this scrolls in its column

  let board = null;
  let busy = false;
  let seenReady = null;  // "room@since" of ready rooms already announced
  const notificationAlerts = new Map();  // alert_id -> alert, when notifications is wired

  // ------------------------------------------------------------ words and time

  // the clinic's names for its rooms and providers (CLINICFLOW_CLINICS), else their ids
  function roomLabel(id) {
    return ClinicFlowLive.roomName(id);
  }

  function providerLabel(id) {
    return id ? ClinicFlowLive.providerName(id) : "first available";
  }

  // 0: fine; 1: over the limit; 2: over twice the limit; 3: over six times (hours, not
  // minutes: it must never look like a patient ten minutes late)
  function overdue(minutes, limit) {
    if (!limit || minutes < limit) return 0;
    if (minutes < 2 * limit) return 1;
    if (minutes < 6 * limit) return 2;
    return 3;
  }

  function timer(minutes, level, suffix) {
    const node = el("span", "timer level-" + level,
                    (level === 3 ? "\u26a0 " : "") + duration(minutes) + (suffix || ""));
    return node;
  }

  // ------------------------------------------------------------------ actions

  function lastAction() {
    try { return JSON.parse(sessionStorage.getItem(LAST_ACTION) || "null"); }
    catch (error) { return null; }
  }

  function showUndo() {
    const last = lastAction();
    const button = byId("undo");
    button.disabled = !last || busy;
    button.textContent = last ? "Undo: " + last.label : "Undo";
  }

  function notice(text, bad) {
    const node = byId("notice");
    node.textContent = text;
    node.hidden = !text;
    node.classList.toggle("bad", !!bad);
    if (text) setTimeout(() => { if (node.textContent === text) node.hidden = true; }, 8000);
  }

  // The Idempotency-Key of an action that got no answer (flow unreachable, 5xx, still in
  // progress), kept in this tab: the nurse's retry of the same action sends the same key,
  // so it happens once even if the first try did reach flow.
  const PENDING = "clinicflow-nurse-pending:" + live.clinic;

  function pendingKeys() {
    try { return JSON.parse(sessionStorage.getItem(PENDING) || "{}"); }
    catch (error) { return {}; }
  }

  function keyFor(action) {
    const pending = pendingKeys();
    if (!pending[action]) {
      pending[action] = ClinicFlowLive.randomKey();
      sessionStorage.setItem(PENDING, JSON.stringify(pending));
    }
    return pending[action];
  }

  function settled(action) {
    const pending = pendingKeys();
    delete pending[action];
    sessionStorage.setItem(PENDING, JSON.stringify(pending));
  }

  async function act(label, method, path, body, undoable) {
    if (busy) return;
    busy = true;
    document.body.classList.add("busy");
    render();
    const action = method + " " + path + " " + JSON.stringify(body === undefined ? null : body);
    const answer = await live.request(method, path, body, keyFor(action));
    // no answer, a server error or "still in progress": the next try is the same action
    const unanswered = answer.status === 0 || answer.status >= 500 ||
      (answer.status === 409 && answer.body && /Idempotency-Key/.test(answer.body.detail || ""));
    if (!unanswered) settled(action);
    busy = false;
    document.body.classList.remove("busy");
    if (answer.ok) {
      if (undoable) {
        sessionStorage.setItem(LAST_ACTION, JSON.stringify({event_id: answer.body.event_id,
                                                            label: label}));
      }
      notice(label + " \u2713", false);
    } else {
      const detail = answer.body && answer.body.detail;
      notice(label + " failed: " + (typeof detail === "string" ? detail
        : "HTTP " + answer.status), true);
    }
    render();
  }

  function button(text, className, onClick) {
    const node = el("button", className, text);
    node.type = "button";
    node.disabled = busy;
    node.addEventListener("click", onClick);
    return node;
  }

  function roomPatient(visit, room) {
    const label = visit.ticket_code + " roomed in " + roomLabel(room.room_id);
    return act(label, "POST", "/visits/" + encodeURIComponent(visit.visit_id) + "/room",
               {room_id: room.room_id}, true);
  }

  function roomReady(room) {
    return act(roomLabel(room.room_id) + " ready", "POST",
               "/rooms/" + encodeURIComponent(room.room_id) + "/ready", undefined, true);
  }

  function outOfService(room) {
    return act(roomLabel(room.room_id) + " out of service", "POST",
               "/rooms/" + encodeURIComponent(room.room_id) + "/out-of-service", {reason: ""},
               true);
  }

  function providerIn(visit) {
    return act("provider in with " + visit.ticket_code, "POST",
               "/visits/" + encodeURIComponent(visit.visit_id) + "/provider-in", {}, true);
  }

  async function undo() {
    const last = lastAction();
    if (!last) return;
    sessionStorage.removeItem(LAST_ACTION);
    await act("undo of \u201c" + last.label + "\u201d", "POST", "/undo",
              {event_id: last.event_id, reason: "undone at the nurse station"}, false);
  }

  // -------------------------------------------------------------- the chime

  let audio = null;
  function chime() {
    if (!byId("chime").checked) return;
    try {
      audio = audio || new AudioContext();
      const start = audio.currentTime;
      [880, 1320].forEach((frequency, index) => {
        const tone = audio.createOscillator();
        const gain = audio.createGain();
        tone.frequency.value = frequency;
        gain.gain.setValueAtTime(0.0001, start + index * 0.25);
        gain.gain.exponentialRampToValueAtTime(0.3, start + index * 0.25 + 0.02);
        gain.gain.exponentialRampToValueAtTime(0.0001, start + index * 0.25 + 0.4);
        tone.connect(gain).connect(audio.destination);
        tone.start(start + index * 0.25);
        tone.stop(start + index * 0.25 + 0.45);
      });
    } catch (error) { /* no sound device: the flashing alert still shows */ }
  }

  // ---------------------------------------------------------------- rendering

  // who goes into which ready room: the longest-ready room takes the head of the queue
  // (notifications' own matching, when it is wired in, takes precedence)
  function matches(rooms, waiting) {
    const found = new Map();
    if (notificationAlerts.size) {
      for (const alert of notificationAlerts.values()) {
        const visit = waiting.find((w) => w.visit_id === alert.visit_id);
        if (visit) found.set(alert.room_id, visit);
      }
      return found;
    }
    const ready = rooms.filter((r) => r.state === "ready")
      .sort((a, b) => Date.parse(a.since) - Date.parse(b.since));
    let next = 0;
    for (const room of ready) {
      if (next < waiting.length) found.set(room.room_id, waiting[next++]);
    }
    return found;
  }

  function renderAlerts(rooms, matched, now) {
    const alerts = [];
    const ready = rooms.filter((r) => r.state === "ready" && matched.has(r.room_id));
    const keys = new Set(ready.map((r) => r.room_id + "@" + r.since));
    let fresh = false;
    for (const room of ready) {
      const visit = matched.get(room.room_id);
      const key = room.room_id + "@" + room.since;
      const isNew = seenReady !== null && !seenReady.has(key);
      fresh = fresh || isNew;
      const card = el("div", "alert" + (isNew || minutesSince(room.since, now) < 0.5
        ? " new" : ""));
      card.dataset.room = room.room_id;
      card.appendChild(el("span", "what", roomLabel(room.room_id) + " is ready"));
      card.appendChild(el("span", "who", "next: " + visit.ticket_code + " \u00b7 " +
                          providerLabel(visit.provider_id)));
      card.appendChild(button("Room " + visit.ticket_code, "primary",
                              () => roomPatient(visit, room)));
      alerts.push(card);
    }
    if (seenReady !== null && fresh) chime();
    seenReady = keys;
    byId("alerts").replaceChildren(...alerts);
    byId("alerts").hidden = alerts.length === 0;
  }

  function renderRooms(rooms, inRooms, matched, now) {
    const cards = rooms.map((room) => {
      const card = el("article", "room state-" + room.state);
      card.dataset.room = room.room_id;
      const head = el("div", "head");
      head.appendChild(el("span", "name", roomLabel(room.room_id)));
      head.appendChild(el("span", "state", STATE_TEXT[room.state] || room.state));
      card.appendChild(head);
      const body = el("div", "body");
      const actions = el("div", "actions");
      const since = minutesSince(room.since, now);
      let level = 0;
      if (room.state === "occupied") {
        const visit = inRooms.find((v) => v.room_id === room.room_id);
        body.appendChild(el("span", "ticket", room.ticket_code || "—"));
        if (visit && visit.status === "roomed") {
          level = Math.max(overdue(since, limits.roomed), overdue(since, limits.in_room));
          body.appendChild(el("span", "who", "waiting for " + providerLabel(visit.provider_id)));
          body.appendChild(timer(since, level, " in room"));
          actions.appendChild(button("Provider in", "", () => providerIn(visit)));
        } else {
          level = overdue(since, limits.in_room);
          body.appendChild(el("span", "who", "with " + providerLabel(visit && visit.provider_id)));
          body.appendChild(timer(since, level, " in room"));
        }
      } else {
        body.appendChild(timer(since, 0, room.state === "ready" ? " ready" : ""));
        if (room.state === "ready") {
          const next = matched.get(room.room_id);
          if (next) {
            actions.appendChild(button("Room " + next.ticket_code, "primary",
                                       () => roomPatient(next, room)));
          }
        } else {
          actions.appendChild(button(room.state === "out_of_service" ? "Back in service"
            : "Room ready", "primary", () => roomReady(room)));
        }
        if (room.state !== "out_of_service") {
          actions.appendChild(button("Out of service", "quiet", () => outOfService(room)));
        }
      }
      card.classList.add("level-" + level);
      card.appendChild(body);
      card.appendChild(actions);
      return card;
    });
    if (!cards.length) cards.push(el("p", "empty", "No rooms reported yet."));
    byId("rooms").replaceChildren(...cards);
  }

  function renderQueues(waiting, rooms, providers, now) {
    const ready = rooms.filter((r) => r.state === "ready");
    const groups = new Map();
    for (const p of providers) groups.set(p.provider_id, []);
    for (const visit of waiting) {
      if (!groups.has(visit.provider_id)) groups.set(visit.provider_id, []);
      groups.get(visit.provider_id).push(visit);
    }
    const delayOf = new Map(providers.map((p) => [p.provider_id, p.delay_minutes]));
    const columns = [];
    for (const [provider, visits] of groups) {
      if (!visits.length && !delayOf.get(provider)) continue;
      const column = el("section", "queue");
      column.dataset.provider = provider || "any";
      const head = el("h3", "", providerLabel(provider));
      head.appendChild(el("span", "count", visits.length + " waiting"));
      if (delayOf.get(provider)) {
        head.appendChild(el("span", "delay", "running " + delayOf.get(provider) + " min late"));
      }
      column.appendChild(head);
      const list = el("ol", "");
      visits.forEach((visit, index) => {
        // overdue counts from the appointment (arrival for walk-ins and late arrivals)
        const from = visit.scheduled_at && !visit.late ? visit.scheduled_at : visit.arrived_at;
        const past = minutesSince(from, now);
        const level = overdue(past, limits.waiting);
        const item = el("li", "patient level-" + level + (index === 0 ? " next" : ""));
        item.dataset.visit = visit.visit_id;
        const who = el("div", "who");
        who.appendChild(el("span", "ticket", visit.ticket_code));
        if (visit.priority === "urgent") who.appendChild(el("span", "urgent", "urgent"));
        if (index === 0) who.appendChild(el("span", "badge", "next"));
        item.appendChild(who);
        const when = el("div", "when");
        when.appendChild(el("span", "", visit.scheduled_at
          ? "appt " + clockTime(visit.scheduled_at) + (visit.late ? " (came late)" : "")
          : "walk-in"));
        when.appendChild(timer(minutesSince(visit.arrived_at, now), level,
                               level ? " waiting" : " here"));
        item.appendChild(when);
        const actions = el("div", "actions");
        for (const room of ready.slice(0, MAX_ROOM_BUTTONS)) {
          actions.appendChild(button("\u2192 " + roomLabel(room.room_id), "",
                                     () => roomPatient(visit, room)));
        }
        item.appendChild(actions);
        list.appendChild(item);
      });
      // every waiting patient is listed: a long queue scrolls (its place kept across
      // boards), never "+N more"
      list.classList.toggle("long", visits.length > ROWS_BEFORE_SCROLL);
      column.appendChild(list);
      columns.push(column);
    }
    if (!columns.length) columns.push(el("p", "empty", "Nobody is waiting."));
    const scrolled = new Map(Array.from(byId("queues").querySelectorAll(".queue")).map(
      (q) => [q.dataset.provider, q.querySelector("ol") ? q.querySelector("ol").scrollTop : 0]));
    byId("queues").replaceChildren(...columns);
    for (const column of columns) {
      const list = column.querySelector && column.querySelector("ol");
      if (list && scrolled.get(column.dataset.provider)) {
        list.scrollTop = scrolled.get(column.dataset.provider);
      }
    }
  }

  function render() {
    showUndo();
    if (!board) return;
    if (!Array.isArray(board.in_rooms)) {
      // the screen role's view (ticket codes and ranges only): not enough for a nurse
      // station, and its rows would read "NaN h NaN waiting"
      byId("alerts").replaceChildren();
      byId("rooms").replaceChildren(el("p", "empty", "This token may not see the nurse " +
        "station: open it with a nurse or manager token."));
      byId("queues").replaceChildren();
      return;
    }
    const now = Date.now();
    const rooms = board.rooms || [];
    const waiting = board.waiting || [];
    const matched = matches(rooms, waiting);
    renderAlerts(rooms, matched, now);
    renderRooms(rooms, board.in_rooms || [], matched, now);
    renderQueues(waiting, rooms, board.providers || [], now);
  }

  function status(state, text) {
    const node = byId("status");
    node.textContent = state === "live" ? "live \u00b7 " + clockTime(new Date())
      : text;
    node.classList.toggle("lost", state !== "live");
  }

  // notifications' room-ready alerts, when that service is wired in (optional)
  function followNotifications() {
    if (!alertsUrl || !live.token) return;
    const url = alertsUrl + "/clinics/" + encodeURIComponent(live.clinic) +
                "/alerts/stream?access_token=" + encodeURIComponent(live.token);
    let source = null;
    const open = () => {
      if (source) source.close();
      source = new EventSource(url);
      source.addEventListener("alerts", (event) => {
        notificationAlerts.clear();
        for (const alert of JSON.parse(event.data).alerts) {
          notificationAlerts.set(alert.alert_id, alert);
        }
        render();
      });
      source.addEventListener("alert.raised", (event) => {
        const alert = JSON.parse(event.data);
        notificationAlerts.set(alert.alert_id, alert);
        render();
      });
      source.addEventListener("alert.withdrawn", (event) => {
        notificationAlerts.delete(JSON.parse(event.data).alert_id);
        render();
      });
      source.onerror = () => {
        notificationAlerts.clear();  // fall back to the board's own matching meanwhile
        if (source.readyState === EventSource.CLOSED) setTimeout(open, 5000);
      };
    };
    open();
  }

  byId("undo").addEventListener("click", undo);
  const chimeBox = byId("chime");
  chimeBox.checked = sessionStorage.getItem("clinicflow-chime") === "on";
  chimeBox.addEventListener("change", () => {
    sessionStorage.setItem("clinicflow-chime", chimeBox.checked ? "on" : "off");
    if (chimeBox.checked) chime();  // a click is the gesture browsers want before sound
  });
  byId("limits").textContent = "overdue after: waiting " + limits.waiting +
    " min past the appointment \u00b7 roomed " + limits.roomed +
    " min without a provider \u00b7 in a room " + limits.in_room + " min";
  ClinicFlowLive.startClock(byId("clock"));
  setInterval(render, 15000);  // overdue colours move with the clock, not only with events
  live.stream((next) => { board = next; render(); }, status);
  followNotifications();
  showUndo();
})();
