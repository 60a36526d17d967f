// The self check-in kiosk. The kiosk's bearer token comes once as ?token=... on the first
// load and is kept in this tab's sessionStorage (the address bar no longer shows it).
// Nothing the patient types is stored in the browser; the page resets itself for the
// next patient. Each check-in attempt carries an Idempotency-Key; its retries (the page's
// own after a lost answer, or the patient tapping "Check in" again with the same entry
// after an error) reuse it, so a check-in whose answer was lost is answered again with
// its ticket, never checked in twice.
(function () {
  "use strict";
  const clinic = document.body.dataset.clinic;
  const TOKEN_KEY = "clinicflow-kiosk-token";
  const params = new URLSearchParams(location.search);
  if (params.get("token")) {
    sessionStorage.setItem(TOKEN_KEY, params.get("token"));
    params.delete("token");
    history.replaceState(null, "", location.pathname + (params.toString() ? "?" + params : ""));
  }
  const token = sessionStorage.getItem(TOKEN_KEY) || "";
  const el = (id) => document.getElementById(id);
  const base = "/clinics/" + encodeURIComponent(clinic);
  const POLL_MS = 4000;
  const FIRST_POLL_MS = 1000; // flow's first estimate of a new arrival follows within a second
  const POLL_FOR_MS = 3 * 60 * 1000;
  const RESET_AFTER_MS = 90 * 1000;
  let pollTimer = null;
  let resetTimer = null;
  // the check-in being tried: what was sent and its Idempotency-Key (kept in memory only,
  // dropped once it succeeded or the page resets for the next patient)
  let attempt = null;

  if (!token) {
    el("setup").hidden = false;
    el("start").hidden = true;
    return;
  }

  // crypto.randomUUID needs a secure context; a kiosk on a clinic LAN may be plain http
  function newKey() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return "kiosk-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  async function call(method, path, body, key) {
    const headers = { Authorization: "Bearer " + token };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (key) headers["Idempotency-Key"] = key;
    const options = { method, headers, cache: "no-store" };
    if (body !== undefined) options.body = JSON.stringify(body);
    let response;
    try {
      response = await fetch(base + path, options);
    } catch (error) {
      // one retry under the same Idempotency-Key: the same check-in, never a second one
      response = await fetch(base + path, options);
    }
    let data = null;
    try { data = await response.json(); } catch (error) { data = null; }
    return { status: response.status, data };
  }

  function ordinal(n) {
    const s = ["th", "st", "nd", "rd"], v = n % 100;
    return n + (s[(v - 20) % 10] || s[v] || s[0]);
  }

  // the same rounding as the waiting-room screen, so both say the same thing
  function rangeText(low, high) {
    const lo = Math.max(0, Math.floor(low / 5) * 5);
    const hi = Math.max(lo + 5, Math.ceil(high / 5) * 5);
    if (hi <= 5) return "a few minutes";
    return "about " + lo + "\u2013" + hi + " minutes";
  }

  function waitText(wait) {
    if (!wait) return "";
    if (!wait.waiting) return "You are being called. Please watch the screen.";
    const place = wait.position ? "You are " + ordinal(wait.position) + " in line. " : "";
    if (wait.low_minutes === null || wait.high_minutes === null) {
      return place + "Estimating your wait\u2026";
    }
    return place + "Estimated wait: " + rangeText(wait.low_minutes, wait.high_minutes) + ".";
  }

  function problemText(answer) {
    if (answer.status === 429) {
      return "Too many attempts. Please wait a minute or see the front desk.";
    }
    if (answer.status === 401 || answer.status === 403) {
      return "This kiosk cannot check you in right now. Please see the front desk.";
    }
    if (answer.status === 422) {
      return "Please check what you entered.";
    }
    const detail = answer.data && typeof answer.data.detail === "string" ? answer.data.detail : "";
    // this attempt is still being checked in (its retry came too soon), or checkin could
    // not finish it: tapping "Check in" again retries the same attempt, never a second one
    if ((answer.status === 409 && !(answer.data && answer.data.code)) || answer.status === 503) {
      return "We are still checking you in. Please tap Check in again in a moment, or see " +
             "the front desk.";
    }
    if (answer.status === 404 || answer.status === 409) {
      return detail ? detail.charAt(0).toUpperCase() + detail.slice(1) + "."
                    : "Please see the front desk.";
    }
    return "Something went wrong. Please see the front desk.";
  }

  function selectTab(tab) {
    for (const button of document.querySelectorAll("[role=tab]")) {
      const selected = button === tab;
      button.setAttribute("aria-selected", String(selected));
      el(button.getAttribute("aria-controls")).hidden = !selected;
    }
    el("error").textContent = "";
    const panel = el(tab.getAttribute("aria-controls"));
    const first = panel.querySelector("input");
    if (first) first.focus();
  }

  // the same entry again is a retry of the same attempt: the same key
  function attemptKey(body) {
    const sent = JSON.stringify(body);
    if (!attempt || attempt.sent !== sent) attempt = { sent, key: newKey() };
    return attempt.key;
  }

  function reset() {
    attempt = null;
    clearTimeout(pollTimer);
    clearTimeout(resetTimer);
    for (const form of document.querySelectorAll("form")) form.reset();
    el("error").textContent = "";
    el("done").hidden = true;
    el("start").hidden = false;
    selectTab(el("tab-code"));
  }

  function show(title, ticket, late, wait) {
    el("done-title").textContent = title;
    el("ticket").textContent = ticket;
    el("late-note").hidden = !late;
    el("wait").textContent = waitText(wait);
    el("start").hidden = true;
    el("done").hidden = false;
    clearTimeout(resetTimer);
    resetTimer = setTimeout(reset, RESET_AFTER_MS);
  }

  function follow(path, until, delay) {
    clearTimeout(pollTimer);
    pollTimer = setTimeout(async () => {
      if (el("done").hidden || Date.now() > until) return;
      const answer = await call("GET", path).catch(() => null);
      if (answer && answer.status === 200) {
        el("wait").textContent = waitText(answer.data);
        if (!answer.data.waiting) return;
      }
      follow(path, until, POLL_MS);
    }, delay);
  }

  async function submit(form, body) {
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    el("error").textContent = "";
    try {
      const answer = await call("POST", "/kiosk/check-ins", body, attemptKey(body));
      if (answer.status === 201) {
        attempt = null;
        show("You are checked in. Your number is", answer.data.ticket_code, answer.data.late,
             answer.data.wait);
        follow("/visits/" + encodeURIComponent(answer.data.visit_id) + "/wait",
               Date.now() + POLL_FOR_MS, FIRST_POLL_MS);
      } else {
        el("error").textContent = problemText(answer);
      }
    } catch (error) {
      // the answer was lost: tapping "Check in" again retries this attempt (same key)
      el("error").textContent = "We could not reach the front desk's system. Please tap " +
        "Check in again, or see the front desk.";
    } finally {
      button.disabled = false;
    }
  }

  for (const tab of document.querySelectorAll("[role=tab]")) {
    tab.addEventListener("click", () => selectTab(tab));
  }

  el("by-code").addEventListener("submit", (event) => {
    event.preventDefault();
    submit(event.target, { appointment_code: el("appointment-code").value.trim() });
  });

  el("by-identity").addEventListener("submit", (event) => {
    event.preventDefault();
    submit(event.target, { date_of_birth: el("dob").value,
                           initials: el("initials").value.trim() });
  });

  el("lookup").addEventListener("submit", async (event) => {
    event.preventDefault();
    const code = el("ticket-code").value.trim();
    const answer = await call("GET", "/tickets/" + encodeURIComponent(code) + "/wait")
      .catch(() => null);
    if (answer && answer.status === 200) {
      // shown once, not followed: every ticket lookup counts against this kiosk's
      // per-minute limit, and polling one would soon lock the kiosk for the next patients
      show("Your number is", answer.data.ticket_code, false, answer.data);
    } else if (answer && answer.status === 404) {
      el("error").textContent = "We could not find that number today. Please check it.";
    } else {
      el("error").textContent = answer ? problemText(answer)
                                       : "The kiosk is offline. Please see the front desk.";
    }
  });

  el("finish").addEventListener("click", reset);
})();
