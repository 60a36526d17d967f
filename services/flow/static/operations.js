// The clinic manager's dashboard: where the day is stuck, in words and in charts.
// It reads the board's "operations" report (manager token only) from the live stream and
// draws plain SVG: no chart library, no build.
(function () {
  "use strict";
  const live = ClinicFlowLive.init("operations");
  const {el} = ClinicFlowLive;
  const SVG = "http://www.w3.org/2000/svg";
  const byId = (id) => document.getElementById(id);
  const STAGE_NAMES = {
    arrival_to_roomed: "arrival → roomed",
    roomed_to_provider: "roomed → provider",
    provider_to_checkout: "provider → checkout",
    roomed_to_checkout: "roomed → checkout",
    room_turnover: "room turnover",
  };

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // 600 units wide and as tall as the box's shape: text is never stretched
  function canvas(id) {
    const node = byId(id).querySelector("svg");
    node.replaceChildren();
    const box = node.getBoundingClientRect();
    const height = box.width ? Math.max(120, Math.round(600 * box.height / box.width)) : 260;
    node.setAttribute("viewBox", "0 0 600 " + height);
    node.height600 = height;
    return node;
  }

  function empty(node, text) {
    node.appendChild(svg("text", {x: 300, y: node.height600 / 2, "text-anchor": "middle",
                                  class: "empty"}, text));
  }

  function niceMax(value) {
    if (value <= 5) return 5;
    const step = Math.pow(10, Math.floor(Math.log10(value)));
    return Math.ceil(value / step) * step;
  }

  function axis(node, top, left, bottom, right, max, unit) {
    for (const fraction of [0, 0.5, 1]) {
      const y = bottom - (bottom - top) * fraction;
      node.appendChild(svg("line", {x1: left, x2: right, y1: y, y2: y, class: "grid"}));
      node.appendChild(svg("text", {x: left - 6, y: y + 4, "text-anchor": "end", class: "tick"},
                           String(Math.round(max * fraction)) + (fraction === 1 ? unit : "")));
    }
  }

  // queues over the day: one line per queue, one point per five-minute period
  function queueChart(queue) {
    const node = canvas("queue-chart");
    const series = [["waiting", queue.waiting || []],
                    ["roomed", queue.roomed_waiting_provider || []]];
    const points = Math.max(...series.map(([, s]) => s.length));
    if (!points) { empty(node, "no patients yet today"); return; }
    const [top, left, bottom, right] = [12, 44, node.height600 - 24, 590];
    const max = niceMax(Math.max(1, ...series.flatMap(([, s]) => s)));
    axis(node, top, left, bottom, right, max, "");
    const x = (i) => left + (points <= 1 ? 0 : (right - left) * i / (points - 1));
    const y = (v) => bottom - (bottom - top) * v / max;
    for (const [name, values] of series) {
      const path = values.map((v, i) => (i ? "L" : "M") + x(i).toFixed(1) + " " + y(v).toFixed(1));
      node.appendChild(svg("path", {d: path.join(" "), class: "line " + name}));
    }
    if (queue.start) {
      const start = new Date(queue.start);
      const end = new Date(start.getTime() + (points - 1) * queue.every_minutes * 60000);
      const fmt = ClinicFlowLive.clockTime;  // the clinic's clock, not the browser's
      const y = node.height600 - 6;
      node.appendChild(svg("text", {x: left, y: y, class: "tick"}, fmt(start)));
      node.appendChild(svg("text", {x: right, y: y, "text-anchor": "end", class: "tick"}, fmt(end)));
    }
  }

  // horizontal bars: one group per row, one bar per measure
  const LABEL_CHARS = 22;  // what fits left of the bars (170 px)
  // first available is not a provider: a short label in the charts, no pace of its own
  const firstAvailable = (id) => !id || id === "any";
  const chartName = (id) => firstAvailable(id) ? "first available"
    : ClinicFlowLive.providerName(id);

  function barChart(id, rows, measures, unit, emptyText) {
    const node = canvas(id);
    if (!rows.length) { empty(node, emptyText); return; }
    const [top, left, right] = [10, 170, 560];
    const band = Math.min(48, (node.height600 - 20) / rows.length);
    const values = rows.flatMap((r) => measures.map(([key]) => Math.abs(r[key] || 0)));
    const max = niceMax(Math.max(1, ...values));
    const zero = rows.some((r) => measures.some(([key]) => (r[key] || 0) < 0))
      ? left + (right - left) / 2 : left;
    const scale = (right - zero) / max;
    rows.forEach((row, i) => {
      const y0 = top + i * band;
      // a label longer than the space left of the bars is cut (whole in its tooltip)
      const label = svg("text", {x: left - 8, y: y0 + band / 2 + 4, "text-anchor": "end",
                                 class: "label"}, row.label.length > LABEL_CHARS
                                   ? row.label.slice(0, LABEL_CHARS - 1) + "…" : row.label);
      label.appendChild(svg("title", {}, row.label));
      node.appendChild(label);
      const bar = (band - 6) / measures.length;
      measures.forEach(([key, className], j) => {
        const value = row[key];
        if (value === null || value === undefined) return;
        const width = Math.abs(value) * scale;
        const x = value < 0 ? zero - width : zero;
        const rect = svg("rect", {x: x, y: y0 + j * bar, width: Math.max(1, width), height: bar - 1,
                                  class: "bar " + className});
        rect.appendChild(svg("title", {}, row.label + ": " + value + " " + unit));
        node.appendChild(rect);
        node.appendChild(svg("text", {x: value < 0 ? x - 4 : x + width + 4, y: y0 + j * bar + bar - 3,
                                      "text-anchor": value < 0 ? "end" : "start", class: "value"},
                             String(Math.round(value))));
      });
    });
    node.appendChild(svg("line", {x1: zero, x2: zero, y1: top, y2: top + rows.length * band,
                                  class: "axis"}));
  }

  function stagesChart(stages) {
    const rows = Object.keys(STAGE_NAMES).filter((s) => stages[s] && stages[s].count)
      .map((s) => ({label: STAGE_NAMES[s], mean: stages[s].mean_minutes, p90: stages[s].p90_minutes}));
    barChart("stage-chart", rows, [["mean", "mean"], ["p90", "p90"]], "min",
             "no stage finished yet today");
  }

  function journeyChart(stages) {
    const providers = new Set();
    for (const stage of ["arrival_to_roomed", "roomed_to_provider", "provider_to_checkout"]) {
      for (const key of Object.keys((stages[stage] || {}).by || {})) providers.add(key);
    }
    const mean = (stage, p) => (((stages[stage] || {}).by || {})[p] || {}).mean_minutes;
    const rows = Array.from(providers).sort().map((p) => ({
      label: chartName(p), s1: mean("arrival_to_roomed", p), s2: mean("roomed_to_provider", p),
      s3: mean("provider_to_checkout", p)}));
    barChart("journey-chart", rows, [["s1", "s1"], ["s2", "s2"], ["s3", "s3"]], "min",
             "no provider has finished a visit yet");
  }

  function paceChart(everyone) {
    const providers = everyone.filter((p) => !firstAvailable(p.provider_id));
    const rows = providers.filter((p) => p.roomed_on_time_patients || p.behind_minutes)
      .map((p) => ({label: ClinicFlowLive.providerName(p.provider_id), behind: p.late_minutes_recent !== null
        ? Math.max(p.late_minutes_recent, p.behind_minutes) : p.behind_minutes}));
    barChart("pace-chart", rows, [["behind", "pace"]], "min behind",
             "no on-time patient roomed yet");
    const list = byId("pace-list");
    list.replaceChildren(...providers.map((p) => el("li", "", ClinicFlowLive.providerName(p.provider_id) + ": " + p.text)));
  }

  function render(board) {
    const report = board.operations;
    if (!report) {
      byId("bottleneck").textContent = "This token may not see the operations report.";
      return;
    }
    const panel = byId("bottleneck-panel");
    panel.classList.toggle("stuck", Boolean(report.bottleneck));
    byId("bottleneck").textContent = ClinicFlowLive.named(report.summary);
    byId("more-bottlenecks").replaceChildren(
      ...report.bottlenecks.slice(1).map((b) => el("li", "", ClinicFlowLive.named(b.text))));
    const occupied = board.rooms.filter((r) => r.state === "occupied").length;
    byId("tile-waiting").textContent = board.waiting.length;
    byId("tile-roomed").textContent = report.queue.now.roomed_waiting_provider;
    byId("tile-done").textContent = report.outcomes.checked_out;
    byId("tile-lwbs").textContent = report.left_without_being_seen;
    byId("tile-rooms").textContent = occupied + " / " + board.rooms.length;
    queueChart(report.queue);
    stagesChart(report.stages);
    journeyChart(report.stages);
    paceChart(report.providers);
    byId("as-of").textContent = "as of " + ClinicFlowLive.clockTime(board.as_of);
  }

  function status(state, text) {
    const node = byId("status");
    node.className = "status " + state;
    node.textContent = text;
  }

  // How right were we today: notifications scores every wait told (kiosk, status, TV,
  // messages) when the visit is roomed; its accuracy API (manager token) gives the
  // clinic's today, overall and by channel, beside the rolling average on the same records.
  const CHANNELS = {kiosk: "kiosk", status: "status lookup", tv: "waiting-room TV",
                    sms: "SMS", email: "e-mail", log: "log (development)", next: "come back now"};
  const ACCURACY_EVERY_MS = 60000;
  const notificationsUrl = (document.body.dataset.notificationsUrl || "").replace(/\/+$/, "");
  const percent = (share) => share === null || share === undefined ? "–"
    : Math.round(share * 100) + "%";
  const minutes = (value) => value === null || value === undefined ? "–"
    : value.toFixed(1) + " min";

  function accuracyRow(label, figures, className) {
    const row = el("tr", className || "");
    const inside = el("td", figures.share_inside_range !== null &&
                      figures.share_inside_range < 0.6 ? "missed" : "",
                      percent(figures.share_inside_range));
    row.append(el("td", "", label), el("td", "", String(figures.scored)), inside,
               el("td", "", minutes(figures.mean_absolute_error_minutes)),
               el("td", "", minutes(figures.rolling_average_mean_absolute_error_minutes)));
    return row;
  }

  function renderAccuracy(answer) {
    byId("accuracy-date").textContent = answer.date;
    const rows = [accuracyRow("all channels", answer, "overall")];
    for (const channel of Object.keys(answer.by_channel).sort()) {
      rows.push(accuracyRow(CHANNELS[channel] || channel, answer.by_channel[channel], "channel"));
    }
    byId("accuracy").querySelector("tbody").replaceChildren(...rows);
    byId("accuracy-note").textContent = answer.scored ? (answer.left
      ? (answer.left === 1 ? "1 told wait of a patient who left is not scored"
        : answer.left + " told waits of patients who left are not scored") : "")
      : "no told wait scored yet today (a wait is scored when the patient is roomed)";
  }

  // one read of notifications' API with the manager token: its answer, or null with the
  // reason written in ``note`` (no token's right, the service down or unconnected)
  async function readNotifications(path, note, what) {
    if (!notificationsUrl) {
      note.textContent = "the notifications service is not connected to this page";
      return null;
    }
    try {
      const response = await fetch(notificationsUrl + "/clinics/" +
                                   encodeURIComponent(live.clinic) + path,
                                   {headers: {"Authorization": "Bearer " + live.token}});
      if (response.status === 401 || response.status === 403) {
        note.textContent = "This token may not see the " + what + ".";
        return null;
      }
      if (!response.ok) {
        note.textContent = what + " unavailable (" + response.status + ")";
        return null;
      }
      return await response.json();
    } catch (error) {
      note.textContent = "the notifications service is unreachable";
      return null;
    }
  }

  async function refreshAccuracy() {
    const answer = await readNotifications("/accuracy", byId("accuracy-note"),
                                           "accuracy figures");
    if (answer) renderAccuracy(answer);
  }

  // Waits and satisfaction this week: notifications joins each visit roomed this week (the
  // clinic's ISO week, on its clock: the service's default) with its rating and complaints;
  // its satisfaction API (manager token) gives them by the wait waited and by the error
  // against what the patient was first told, and the finding in a sentence.
  const WAIT_BANDS = {"0-10": "0-10 min", "10-20": "10-20 min", "20-30": "20-30 min",
                      "30+": "30+ min"};
  const TOLD_BANDS = {longer_20_plus: "20+ min longer than told", within: "about as told",
                      shorter_20_plus: "20+ min shorter than told", not_told: "not told"};
  const DAY = new Intl.DateTimeFormat("en-GB", {day: "numeric", month: "short", timeZone: "UTC"});
  const day = (iso) => DAY.format(new Date(iso + "T00:00:00Z"));  // a clinic's day as given

  function satisfactionRows(bands, labels) {
    return Object.keys(labels).map((band) => {
      const figures = bands[band] || {visits: 0, ratings: 0, mean_rating: null, complaints: 0};
      const row = el("tr", "band " + band);
      row.append(el("td", "", labels[band]), el("td", "", String(figures.visits)),
                 el("td", "", String(figures.ratings)),
                 el("td", "", figures.mean_rating === null ? "–" : figures.mean_rating.toFixed(2)),
                 el("td", figures.complaints ? "complained" : "", String(figures.complaints)));
      return row;
    });
  }

  // one row a provider: their visits and ratings, and how those told 20+ minutes too
  // little rated them ("-": the visits no provider was named for yet)
  function providerRows(providers) {
    const mean = (value) => value === null || value === undefined ? "–" : value.toFixed(2);
    return Object.keys(providers).sort().map((id) => {
      const figures = providers[id];
      const longer = (figures.by_told_band || {}).longer_20_plus
        || {ratings: 0, mean_rating: null};
      const row = el("tr", "provider");
      row.append(el("td", "", id === "-" ? "not yet seen" : chartName(id)),
                 el("td", "", String(figures.visits)), el("td", "", String(figures.ratings)),
                 el("td", "", mean(figures.mean_rating)),
                 el("td", figures.complaints ? "complained" : "", String(figures.complaints)),
                 el("td", "", String(longer.ratings)), el("td", "", mean(longer.mean_rating)));
      return row;
    });
  }

  function renderSatisfaction(answer) {
    byId("satisfaction-week").textContent = day(answer.from) + " – " + day(answer.to);
    byId("satisfaction-finding").textContent = answer.finding;
    byId("satisfaction-wait").querySelector("tbody").replaceChildren(
      ...satisfactionRows(answer.by_wait_band, WAIT_BANDS));
    byId("satisfaction-told").querySelector("tbody").replaceChildren(
      ...satisfactionRows(answer.by_told_band, TOLD_BANDS));
    byId("satisfaction-providers").querySelector("tbody").replaceChildren(
      ...providerRows(answer.by_provider || {}));
    byId("satisfaction-note").textContent = answer.visits
      ? answer.visits + (answer.visits === 1 ? " visit" : " visits") + " roomed, " +
        answer.ratings + " rated, " + answer.complaints +
        (answer.complaints === 1 ? " complaint" : " complaints")
      : "no visit roomed this week yet";
  }

  async function refreshSatisfaction() {
    const answer = await readNotifications("/satisfaction", byId("satisfaction-note"),
                                           "satisfaction figures");
    if (answer) renderSatisfaction(answer);
  }

  ClinicFlowLive.startClock(byId("clock"));
  live.stream(render, status);
  refreshAccuracy();
  setInterval(refreshAccuracy, ACCURACY_EVERY_MS);
  refreshSatisfaction();
  setInterval(refreshSatisfaction, ACCURACY_EVERY_MS);
})();
