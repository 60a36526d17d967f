// The lobby screen: ticket codes and ranges, who is called, delays. Live over SSE.
// It shows what the screen role's board holds and nothing else: no names, ever.
(function () {
  "use strict";
  const live = ClinicFlowLive.init("waiting-room");
  const {el} = ClinicFlowLive;
  const byId = (id) => document.getElementById(id);

  function rangeText(low, high) {
    if (high === null || high === undefined) return "";
    const lo = Math.max(0, Math.floor(low / 5) * 5);
    const hi = Math.max(lo + 5, Math.ceil(high / 5) * 5);
    if (hi <= 5) return "a few minutes";
    return "about " + lo + "\u2013" + hi + " min";
  }

  function row(className, parts) {
    const li = el("li", className);
    for (const [name, text] of parts) li.appendChild(el("span", name, text));
    return li;
  }

  // Every waiting ticket is shown: as many rows as the panel holds make a page, and the
  // screen turns to the next page every PAGE_SECONDS (a row is never cut in half, nothing
  // is summed up as "+N more"). Tests turn pages with window.waitingRoom.nextPage().
  const PAGE_SECONDS = Number(document.body.dataset.pageSeconds || 8);
  let pages = [[]];
  let pageIndex = 0;

  function paginate() {
    const panel = byId("waiting-panel");
    const rows = Array.from(byId("waiting").children);
    for (const li of rows) li.hidden = false;
    pages = [];
    if (rows.length > 0) {
      const bottom = panel.getBoundingClientRect().bottom;
      const room = bottom - rows[0].getBoundingClientRect().top;
      let current = [];
      let top = rows[0].getBoundingClientRect().top;
      for (const li of rows) {
        const box = li.getBoundingClientRect();
        if (current.length > 0 && box.bottom - top > room) {
          pages.push(current);
          current = [];
          top = box.top;
        }
        current.push(li);
      }
      pages.push(current);
    }
    if (pages.length === 0) pages = [[]];
    pageIndex = Math.min(pageIndex, pages.length - 1);
    showPage();
  }

  function showPage() {
    pages.forEach((rows, n) => { for (const li of rows) li.hidden = n !== pageIndex; });
    const indicator = byId("waiting-page");
    indicator.textContent = pages.length > 1 ? "page " + (pageIndex + 1) + " of " +
      pages.length : "";
    indicator.hidden = pages.length <= 1;
  }

  function nextPage() {
    pageIndex = (pageIndex + 1) % pages.length;
    showPage();
    return {page: pageIndex + 1, pages: pages.length};
  }

  window.waitingRoom = {
    nextPage,
    get page() { return pageIndex + 1; },
    get pages() { return pages.length; },
  };

  const {providerName, roomName} = ClinicFlowLive;  // the clinic's names (CLINICFLOW_CLINICS)

  // who has been told what (notifications' /told, when flow knows where it runs): a
  // small mark by the ticket, so a patient back from outside sees they were called
  const notificationsUrl = document.body.dataset.notificationsUrl || "";
  const TOLD = {come_back_now: "called back", ready_for_you: "room ready",
                delay_warning: "told of delay"};
  let told = new Map();
  let lastBoard = null;

  async function refreshTold() {
    if (!notificationsUrl || !live.token) return;
    try {
      const response = await fetch(notificationsUrl + "/clinics/" +
        encodeURIComponent(live.clinic) + "/told",
        {headers: {"Authorization": "Bearer " + live.token}});
      if (!response.ok) return;
      const answer = await response.json();
      told = new Map(answer.told.map((t) => [t.ticket_code, t.kind]));
      if (lastBoard) render(lastBoard);
    } catch (error) { /* notifications unreachable: the screen works without marks */ }
  }

  function render(board) {
    lastBoard = board;
    const calls = (board.calling || []).slice(-4).reverse();
    byId("calling").replaceChildren(...calls.map(
      (c) => row("", [["ticket", c.ticket_code], ["room", roomName(c.room_id)]])));
    // no one called: NOW CALLING gives its half to the waiting list (two columns of it)
    document.body.classList.toggle("no-calling", calls.length === 0);
    const waiting = board.waiting || [];
    const rows = waiting.map((w) => {
      const li = row("", [["ticket", w.ticket_code], ["range", rangeText(w.low, w.high)]]);
      const kind = told.get(w.ticket_code);
      if (kind && TOLD[kind]) li.insertBefore(el("span", "told", TOLD[kind]), li.lastChild);
      return li;
    });
    byId("waiting").replaceChildren(...rows);
    byId("empty").hidden = waiting.length > 0;
    const banners = [];
    if (board.clinic_delay && board.clinic_delay.minutes > 0) {
      banners.push("We are running about " + board.clinic_delay.minutes +
                   " minutes behind. Thank you for your patience.");
    }
    for (const p of board.providers || []) {
      if (p.delay_minutes > 0) {
        banners.push(providerName(p.provider_id) + " is running about " + p.delay_minutes +
                     " minutes behind.");
      }
    }
    // several delays: compact banners side by side, so the list keeps its rows
    byId("banners").classList.toggle("many", banners.length > 1);
    byId("banners").replaceChildren(...banners.map((text) => el("div", "banner", text)));
    paginate();
  }

  function status(state, text) {
    const node = byId("status");
    node.textContent = state === "live"
      ? "live \u00b7 updated " + ClinicFlowLive.clockTime(new Date()) : text;
    node.classList.toggle("lost", state !== "live");
  }

  ClinicFlowLive.startClock(byId("clock"));
  live.stream(render, status);
  setInterval(nextPage, PAGE_SECONDS * 1000);
  window.addEventListener("resize", () => { if (lastBoard) paginate(); });
  refreshTold();
  setInterval(refreshTold, 5000);
})();
