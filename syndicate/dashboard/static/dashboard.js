// The dashboard's only script: live board refresh and "select all". Pages work without it (reload by hand).
"use strict";

function refreshBoard() {
  const live = document.getElementById("live");
  const rows = document.getElementById("board-rows");
  if (!live || !rows) return;
  const url = live.dataset.url;
  const tick = async () => {
    try {
      const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (response.status === 401) {
        window.location.assign("/dashboard/login?next=" + encodeURIComponent(window.location.pathname + window.location.search));
        return;
      }
      if (!response.ok) throw new Error("HTTP " + response.status);
      const data = await response.json();
      // The server rendered and escaped these rows with the same template as the page itself.
      rows.innerHTML = data.rows;
      document.getElementById("updated").textContent = data.updated;
      live.textContent = live.dataset.live;
      live.classList.remove("stale");
    } catch (err) {
      live.textContent = live.dataset.stale;
      live.classList.add("stale");
    }
    window.setTimeout(tick, 2500);
  };
  window.setTimeout(tick, 2500);
}

function selectAll() {
  const all = document.getElementById("select-all");
  if (!all) return;
  all.addEventListener("change", () => {
    for (const box of document.querySelectorAll("input.pick-one")) box.checked = all.checked;
  });
}

document.addEventListener("DOMContentLoaded", () => {
  refreshBoard();
  selectAll();
});
