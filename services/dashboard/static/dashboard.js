// Leveret dashboard: confirmations for actions, and the overview refreshed in place.
// Text from the broker is only ever set with textContent: nothing from a message can
// become markup here (and the Content-Security-Policy allows this file as the only script).
"use strict";

document.addEventListener("submit", (event) => {
  const button = event.submitter;
  const question = button && button.dataset.confirm;
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});

function cell(row, text, href) {
  const td = row.insertCell();
  if (href) {
    const a = document.createElement("a");
    a.href = href;
    a.textContent = text;
    td.appendChild(a);
  } else {
    td.textContent = text === null || text === undefined ? "" : String(text);
  }
  return td;
}

function emptyRow(tbody, columns, text) {
  const row = tbody.insertRow();
  row.className = "none";
  const td = cell(row, text);
  td.colSpan = columns;
}

// The banner every page has: shown while the broker cannot be reached (what the server
// says, as text), hidden once it answers again.
function banner(data) {
  const el = document.getElementById("broker-down");
  if (!el) return;
  const message = data.unreachable ? data.unreachable.message : "";
  el.textContent = message;
  el.hidden = !message;
}

function render(section, data) {
  const base = section.dataset.actorBase;
  section.querySelector('[data-field="source"]').textContent = data.source;
  section.querySelector('[data-field="taken_at"]').textContent = data.taken_at || "never";

  const warnings = section.querySelector("#warnings");
  warnings.replaceChildren();
  for (const w of data.warnings) {
    const li = document.createElement("li");
    li.className = "warning " + w.kind;
    li.textContent = w.message;
    warnings.appendChild(li);
  }
  if (!data.warnings.length) {
    const li = document.createElement("li");
    li.className = "none";
    li.textContent = "none";
    warnings.appendChild(li);
  }

  const workers = section.querySelector("#workers tbody");
  workers.replaceChildren();
  for (const w of data.workers) {
    const row = workers.insertRow();
    if (w.stale) row.className = "stale";
    cell(row, w.host); cell(row, w.pid); cell(row, w.state); cell(row, w.actors.join(", "));
    cell(row, w.in_flight); cell(row, w.threads); cell(row, w.handled);
    cell(row, w.handled_per_s); cell(row, w.retried);
    cell(row, w.dead_lettered); cell(row, w.answered); cell(row, w.expired);
    cell(row, (w.memory_bytes / 1048576).toFixed(1));
    cell(row, w.age_s.toFixed(1) + " s ago");
  }
  if (!data.workers.length) emptyRow(workers, 14, "no worker has sent a heartbeat");

  const schedules = section.querySelector("#schedules tbody");
  if (schedules) {
    schedules.replaceChildren();
    for (const s of data.schedules) {
      const row = schedules.insertRow();
      cell(row, s.name); cell(row, s.when); cell(row, s.to);
      cell(row, s.last || "none yet"); cell(row, s.next);
    }
    section.querySelector("#schedules-note").textContent = data.schedules_note;
  }

  const queues = section.querySelector("#queues tbody");
  queues.replaceChildren();
  for (const q of data.queues) {
    const row = queues.insertRow();
    const actorUrl = base + encodeURIComponent(q.actor);
    cell(row, q.actor, actorUrl);
    const f = q.figures;
    if (f) {
      cell(row, f.ready); cell(row, f.unacked); cell(row, f.consumers);
      cell(row, f.incoming_per_s); cell(row, f.delivered_per_s);
    } else {
      cell(row, "not declared").colSpan = 5;
    }
    if (q.dead_letters === null) cell(row, "");
    else cell(row, q.dead_letters, actorUrl + "/dead-letters");
  }
  if (!data.queues.length) emptyRow(queues, 7, "no actor queue");
}

// An actor's page: its queue's figures, from the same JSON.
function renderActor(table, data) {
  const queue = data.queues.find((q) => q.actor === table.dataset.actor);
  if (!queue || !queue.figures) return;
  for (const el of table.querySelectorAll("[data-field]")) {
    const name = el.dataset.field;
    const value = name === "dead_letters" ? queue.dead_letters : queue.figures[name];
    el.textContent = value === null || value === undefined ? "?" : String(value);
  }
}

function refresh(section, draw) {
  const every = Math.max(1, Number(section.dataset.refreshS) || 3) * 1000;
  const tick = async () => {
    try {
      const response = await fetch(section.dataset.source, {
        headers: { Accept: "application/json" }, credentials: "same-origin",
      });
      if (response.ok) {
        const data = await response.json();
        banner(data);
        draw(section, data);
        section.classList.remove("offline");
      } else {
        section.classList.add("offline");
      }
    } catch (error) {
      section.classList.add("offline");
    }
    setTimeout(tick, every);
  };
  setTimeout(tick, every);
}

document.addEventListener("DOMContentLoaded", () => {
  const section = document.getElementById("overview");
  if (section) refresh(section, render);
  const figures = document.getElementById("actor-figures");
  if (figures) refresh(figures, renderActor);
});
