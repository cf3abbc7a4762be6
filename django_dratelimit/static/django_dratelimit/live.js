// Refreshes the live counters table from the page's JSON endpoint while the page is
// visible: a hidden tab asks the cluster nothing.
"use strict";
(function () {
  const box = document.getElementById("dratelimit-live");
  const status = document.getElementById("dratelimit-refresh");
  const seconds = box ? Number(box.dataset.refresh) : 0;
  if (!box || !(seconds > 0)) {
    return;
  }
  let timer = null;

  function say(text) {
    if (status) {
      status.textContent = text;
    }
  }

  function schedule() {
    if (timer === null && !document.hidden) {
      timer = window.setTimeout(refresh, seconds * 1000);
    }
  }

  async function refresh() {
    timer = null;
    if (document.hidden) {
      return; // visibilitychange schedules the next one
    }
    try {
      const response = await fetch(box.dataset.url, {
        headers: { Accept: "application/json" },
        credentials: "same-origin",
      });
      const type = response.headers.get("Content-Type") || "";
      if (!response.ok || !type.includes("application/json")) {
        // A login page instead of JSON: the session ended.
        throw new Error(`HTTP ${response.status}; reload the page (has the session ended?)`);
      }
      const data = await response.json();
      box.innerHTML = data.html; // rendered by the page's own template, escaped there
      box.dataset.refreshed = String(data.taken_at);
      say(`Refreshes every ${seconds} s while this page is visible.`);
    } catch (error) {
      say(`Refresh failed: ${error.message}. Trying again in ${seconds} s.`);
    }
    schedule();
  }

  document.addEventListener("visibilitychange", schedule);
  schedule();
})();
