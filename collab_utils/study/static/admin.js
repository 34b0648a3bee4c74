"use strict";
// The admin page: progress per system and the data export. The token comes from the URL's
// fragment (#token=..., never sent to the server as part of the URL) or the form, and goes
// to the API in the Authorization header.

const $ = (id) => document.getElementById(id);
let token = new URLSearchParams(location.hash.slice(1)).get("token") || "";

async function get(path) {
  const response = await fetch(path, { headers: { Authorization: `Bearer ${token}` } });
  if (!response.ok) {
    let message = `HTTP ${response.status}`;
    try { message = (await response.json()).error || message; } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

function showError(text) {
  $("error").textContent = text || "";
  $("error").hidden = !text;
}

const number = (value, digits) => (value === null ? "–" : Number(value).toFixed(digits));

async function load() {
  try {
    const data = await (await get("/api/admin/summary")).json();
    $("systems").textContent = data.systems.join(", ");
    const rows = data.progress.map((p) => {
      const row = document.createElement("tr");
      for (const value of [p.system, p.sessions, p.finished, p.simulated,
        number(p.document_rating, 2), number(p.turn_rating, 2), number(p.minutes, 1)]) {
        const cell = document.createElement("td");
        cell.textContent = String(value);
        row.append(cell);
      }
      return row;
    });
    $("rows").replaceChildren(...rows);
    $("progress").hidden = false;
    $("login").hidden = true;
    showError("");
  } catch (error) {
    $("progress").hidden = true;
    showError(error.message);
  }
}

async function download() {
  try {
    const blob = await (await get("/api/admin/export.zip")).blob();
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = "study_export.zip";
    link.click();
    URL.revokeObjectURL(link.href);
  } catch (error) {
    showError(error.message);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    token = $("token").value.trim();
    load();
  });
  $("export").addEventListener("click", download);
  $("reload").addEventListener("click", load);
  load();
});
