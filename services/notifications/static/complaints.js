// The front desk's follow-up list of complaints (and, with a manager's token, the manager
// view). Everything comes from the complaints API with the page's bearer token.
//
// Token: the page is opened once as /screens/<clinic>/complaints?token=<token>; it keeps
// the token in sessionStorage (this tab only) and removes it from the address bar.
//
// Role: the manager's view of one complaint is the manager's only; asked for a complaint
// that does not exist it answers 404 to a manager and 403 to anyone else, which tells the
// page whether to offer the patient's words (the front desk never gets them: the API keeps
// them for the manager, the page does not ask).
//
// Words: never read by the refresh loop. A manager asks for one complaint's words with its
// row's button (one read of the manager-only route, audited by the service); they are shown
// in that row only, until the next refresh or WORDS_SHOWN_MS, whichever comes first.
//
// Times are shown on the clinic's clock (its IANA zone, data-timezone), never the browser's;
// "As of" is the service's time of the list (its as_of), not the browser's clock.
(function () {
  "use strict";

  const REFRESH_MS = 30000;
  const WORDS_SHOWN_MS = 20000;
  const body = document.body;
  const clinic = body.dataset.clinic;
  const zone = body.dataset.timezone || "UTC";
  const base = "/clinics/" + encodeURIComponent(clinic) + "/complaints";
  const byId = (id) => document.getElementById(id);
  const SOURCES = {in_person: "in person", phone: "by phone", low_rating: "low rating"};
  const STATUSES = {open: "open", acknowledged: "acknowledged", resolved: "resolved"};
  const CLOCK = new Intl.DateTimeFormat("en-GB", {
    weekday: "short", day: "numeric", month: "short", hour: "2-digit", minute: "2-digit",
    hourCycle: "h23", timeZone: zone});

  const TOKEN_KEY = "clinicflow-token:complaints";
  const params = new URLSearchParams(location.search);
  if (params.get("token")) {
    sessionStorage.setItem(TOKEN_KEY, params.get("token"));
    params.delete("token");
    history.replaceState(null, "", location.pathname + (params.toString() ? "?" + params : ""));
  }
  const token = sessionStorage.getItem(TOKEN_KEY) || "";
  let manager = false;
  let refused = false;

  function randomKey() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = text;  // never innerHTML
    return node;
  }

  // "Mon 2 Mar 11:40" on the clinic's clock
  function clinicTime(iso) {
    if (!iso) return "";
    const parts = {};
    for (const part of CLOCK.formatToParts(new Date(iso))) parts[part.type] = part.value;
    return parts.weekday + " " + parts.day + " " + parts.month + " " + parts.hour + ":" +
      parts.minute;
  }

  async function call(method, path, options) {
    const headers = {"Authorization": "Bearer " + token};
    const init = {method: method, headers: headers};
    if (options && options.key) headers["Idempotency-Key"] = options.key;
    if (options && options.body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(options.body);
    }
    try {
      const response = await fetch(base + path, init);
      let answer = null;
      try { answer = await response.json(); } catch (error) { answer = null; }
      return {ok: response.ok, status: response.status, body: answer};
    } catch (error) {
      return {ok: false, status: 0, body: {detail: "the notifications service is unreachable"}};
    }
  }

  function detail(answer) {
    return (answer.body && typeof answer.body.detail === "string") ? answer.body.detail
      : "HTTP " + answer.status;
  }

  function refuse(text) {
    refused = true;
    const node = byId("refusal");
    node.textContent = text;
    node.hidden = false;
    byId("log-panel").hidden = true;
    byId("list-panel").hidden = true;
  }

  // 401 and 403 are said in words, and nothing of the clinic is shown
  function refusedBy(answer) {
    if (answer.status === 401) {
      refuse("This token was refused (unknown or revoked): open this page again with a " +
             "front desk or manager token.");
      return true;
    }
    if (answer.status === 403) {
      refuse("This token may not see complaints: the follow-up list is for the front desk " +
             "and managers (" + detail(answer) + ").");
      return true;
    }
    return false;
  }

  // the list says whose token read it: a manager's view has the words and the resolved
  function showView(viewer) {
    manager = viewer === "manager";
    body.classList.toggle("manager", manager);
    byId("view").textContent = manager ? "manager view" : "front desk";
    byId("text-field").hidden = !manager;
    byId("all-field").hidden = !manager;
    for (const node of document.querySelectorAll(".words")) node.hidden = !manager;
  }

  // an action's Idempotency-Key, kept (across the list's refreshes) while a click of it got
  // no answer, so that clicking again is the same request
  const unanswered = {};

  function actionButton(complaint, step, label) {
    const button = el("button", "action " + step, label);
    button.type = "button";
    const action = complaint.complaint_id + "/" + step;
    button.addEventListener("click", async () => {
      button.disabled = true;
      const key = unanswered[action] || randomKey();
      unanswered[action] = key;
      const answer = await call("POST", "/" + encodeURIComponent(complaint.complaint_id) +
                                "/" + step, {key: key});
      if (answer.status !== 0) delete unanswered[action];
      const result = byId("action-result");
      if (answer.ok) {
        result.textContent = "Complaint " + answer.body.status + ".";
      } else if (!refusedBy(answer)) {
        result.textContent = detail(answer);
      }
      button.disabled = false;
      await refresh();
    });
    return button;
  }

  function row(complaint) {
    const tr = el("tr", complaint.status + (complaint.overdue ? " overdue" : "") +
                  (complaint.escalated_at ? " escalated" : ""));
    tr.dataset.complaint = complaint.complaint_id;
    const due = el("td", "due", complaint.status === "resolved"
      ? "" : clinicTime(complaint.due_at) + (complaint.overdue ? " (overdue)" : ""));
    const escalated = el("td", "escalated-at", complaint.escalated_at
      ? "escalated " + clinicTime(complaint.escalated_at) : "");
    tr.append(el("td", "logged", clinicTime(complaint.logged_at)),
              el("td", "category", complaint.category),
              el("td", "source", SOURCES[complaint.source] || complaint.source),
              el("td", "status", STATUSES[complaint.status] || complaint.status),
              el("td", "owner", complaint.owner || "–"), due, escalated);
    if (manager) tr.append(wordsCell(complaint));
    const actions = el("td", "actions");
    if (complaint.status === "open") actions.append(actionButton(complaint, "acknowledge",
                                                                 "Acknowledge"));
    if (complaint.status !== "resolved") actions.append(actionButton(complaint, "resolve",
                                                                     "Resolve"));
    tr.append(actions);
    return tr;
  }

  // the manager view: one complaint's words, read from the manager-only route when its
  // button is clicked (each read audited by the service), shown for a short while only
  function wordsCell(complaint) {
    const cell = el("td", "words");
    const button = el("button", "show-words", "Show what the patient said");
    button.type = "button";
    button.addEventListener("click", async () => {
      button.disabled = true;
      const answer = await call("GET", "/" + encodeURIComponent(complaint.complaint_id));
      if (!cell.isConnected) return;  // refreshed meanwhile: the row is gone
      if (!answer.ok) {
        button.disabled = false;
        if (!refusedBy(answer)) byId("action-result").textContent = detail(answer);
        return;
      }
      cell.replaceChildren(el("span", "said", answer.body.text || "–"));
      setTimeout(() => {
        button.disabled = false;
        if (cell.isConnected) cell.replaceChildren(button);
      }, WORDS_SHOWN_MS);
    });
    cell.append(button);
    return cell;
  }

  async function refresh() {
    if (refused) return;
    const all = manager && byId("all").checked;
    const answer = await call("GET", all ? "?all=true" : "");
    if (refusedBy(answer)) return;
    if (!answer.ok) {
      byId("action-result").textContent = "complaints unavailable: " + detail(answer);
      return;
    }
    showView(answer.body.viewer);
    const complaints = answer.body.complaints;
    byId("complaints").querySelector("tbody").replaceChildren(...complaints.map(row));
    byId("empty").hidden = complaints.length > 0;
    byId("log-panel").hidden = false;
    byId("list-panel").hidden = false;
    byId("as-of").textContent = "As of " + clinicTime(answer.body.as_of) + ".";
  }

  let logKey = randomKey();  // one per complaint, the same on a retry of it
  byId("log").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = event.target;
    const field = (name) => form.elements[name];
    const complaint = {category: field("category").value, source: field("source").value};
    if (manager && field("text").value.trim()) complaint.text = field("text").value.trim();
    const button = form.querySelector("button");
    button.disabled = true;
    const answer = await call("POST", "", {key: logKey, body: complaint});
    const result = byId("log-result");
    if (answer.ok) {
      logKey = randomKey();
      field("text").value = "";
      result.textContent = "Logged: " + answer.body.category + ", to acknowledge by " +
        clinicTime(answer.body.due_at) + ".";
    } else if (!refusedBy(answer)) {
      result.textContent = "Not logged: " + detail(answer);
      if (answer.status !== 0) logKey = randomKey();
    }
    button.disabled = false;
    await refresh();
  });
  byId("log").addEventListener("change", () => { logKey = randomKey(); });  // another complaint
  byId("all").addEventListener("change", refresh);

  async function start() {
    if (!token) {
      refuse("No token: open this page once with ?token=<front desk or manager token>.");
      return;
    }
    await refresh();
    setInterval(refresh, REFRESH_MS);
  }

  start();
})();
