// The web pages of balsamdb's db serve: small additions for a browser with JavaScript.
// Every page reads fine without it; this script refreshes live sections, enables the compare
// button, and remembers the chosen columns of the record list.
"use strict";

// A section with data-refresh="N" asks the server again every N seconds and swaps in the new
// section (the server renders and escapes it; nothing is built from strings here). A poll, not a
// held stream: an open tab never holds one of the server's threads.
function startRefresh(section) {
  const seconds = Number(section.dataset.refresh) || 2;
  let busy = false;
  async function refresh() {
    if (busy || document.hidden) return;
    busy = true;
    try {
      // A relative URL: a page opened as http://user:pw@host/ must not put credentials in a request.
      const answer = await fetch(window.location.pathname + window.location.search, {headers: {"Accept": "text/html"},
                                                         credentials: "same-origin", cache: "no-store"});
      if (!answer.ok) throw new Error("HTTP " + answer.status);
      const page = new DOMParser().parseFromString(await answer.text(), "text/html");
      const fresh = page.getElementById(section.id);
      if (fresh) {
        section.replaceChildren(...Array.from(fresh.childNodes).map((n) => document.adoptNode(n)));
        section.dataset.refreshed = String(Number(section.dataset.refreshed || 0) + 1);
      }
    } catch (error) {
      const status = document.getElementById("refreshed");
      if (status) status.textContent = "refresh failed (" + error.message + "); retrying";
    } finally {
      busy = false;
    }
  }
  window.setInterval(refresh, seconds * 1000);
}

// The compare button of the record list is usable once two records are ticked.
function watchCompare(form) {
  const button = form.querySelector("button[name=compare-button], button.compare");
  if (!button) return;
  const update = () => {
    const ticked = form.querySelectorAll("input[name=compare]:checked").length;
    button.disabled = ticked < 2;
    button.textContent = ticked >= 2 ? "compare " + ticked + " records" : "compare (tick two or more)";
  };
  form.addEventListener("change", update);
  update();
}

// The column chooser of the record list: hidden columns are remembered in this browser.
function columnChooser(chooser) {
  const table = document.getElementById(chooser.dataset.table);
  if (!table) return;
  const key = "balsamdb.columns." + chooser.dataset.table;
  // Until a person chooses, the server's choice (the boxes it left unticked).
  let hidden = Array.from(chooser.querySelectorAll("input[type=checkbox]:not(:checked)")).map((b) => b.value);
  try {
    const stored = window.localStorage.getItem(key);
    if (stored !== null) hidden = JSON.parse(stored);
  } catch (e) { /* storage unavailable: keep the server's choice */ }
  const apply = () => {
    table.querySelectorAll("[data-column]").forEach((cell) => {
      cell.classList.toggle("hidden-column", hidden.includes(cell.dataset.column));
    });
  };
  chooser.querySelectorAll("input[type=checkbox]").forEach((box) => {
    box.checked = !hidden.includes(box.value);
    box.addEventListener("change", () => {
      hidden = hidden.filter((c) => c !== box.value);
      if (!box.checked) hidden.push(box.value);
      try { window.localStorage.setItem(key, JSON.stringify(hidden)); } catch (e) { /* private mode */ }
      apply();
    });
  });
  chooser.hidden = false;
  apply();
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-refresh]").forEach(startRefresh);
  document.querySelectorAll("form.records").forEach(watchCompare);
  document.querySelectorAll(".columns[data-table]").forEach(columnChooser);
});
