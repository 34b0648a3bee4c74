"use strict";
// The participant's page: consent, the task and chat with per-reply ratings, the final
// document and its rating, the completion code. The server keeps all state; this page only
// shows it. Text from the server (model output included) is set with textContent, never as HTML.

const $ = (id) => document.getElementById(id);
const query = new URLSearchParams(location.search);
const participant = query.get("pid") || query.get("PROLIFIC_PID") || null;
const SESSION_KEY = "study-session";
let sessionId = null;
let current = null; // the last state the server sent
let finishing = false; // the final-document form is open
let documentRating = null;
let pollTimer = null;
let flushing = false;

class Refused extends Error {
  constructor(message, status) { super(message); this.status = status; }
}

async function api(method, path, body) {
  const options = { method, headers: {} };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options); // a network failure throws a TypeError
  let data = {};
  try { data = await response.json(); } catch (_) { /* an empty or non-JSON body */ }
  if (!response.ok) throw new Refused(data.error || `HTTP ${response.status}`, response.status);
  return data;
}

const sessionPath = (tail = "") => `/api/sessions/${encodeURIComponent(sessionId)}${tail}`;

function randomId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function show(section) {
  for (const id of ["consent", "chat", "final", "done"]) $(id).hidden = id !== section;
}

function showError(text) {
  $("error").textContent = text || "";
  $("error").hidden = !text;
}

function setStatus(text) { $("status").textContent = text || ""; }

// ---------------------------------------------------------------- the outbox
// A message is kept in localStorage until the server confirms it, so a lost connection, a
// reload or a server restart never loses what the participant wrote.

const outboxKey = () => `study-outbox-${sessionId}`;
const loadOutbox = () => JSON.parse(localStorage.getItem(outboxKey()) || "null");
const saveOutbox = (item) => localStorage.setItem(outboxKey(), JSON.stringify(item));
const clearOutbox = () => localStorage.removeItem(outboxKey());

async function flushOutbox() {
  const item = loadOutbox();
  if (!item || flushing) return;
  flushing = true;
  try {
    const state = await api("POST", sessionPath("/messages"), item);
    clearOutbox();
    showError("");
    render(state);
  } catch (error) {
    if (error instanceof Refused) {
      clearOutbox();
      $("input").value = item.text;
      showError(error.message);
      if (current) render(current);
    } else {
      setStatus("Connection lost: your message is kept and will be sent when the server is back…");
      setTimeout(flushOutbox, 1000);
    }
  } finally {
    flushing = false;
  }
  schedulePoll();
}

// ------------------------------------------------------------------ rendering

function ratingButtons(selected, onPick, label) {
  const box = document.createElement("div");
  box.className = "rating";
  box.setAttribute("role", "radiogroup");
  if (label) {
    const text = document.createElement("span");
    text.className = "label";
    text.textContent = label;
    box.append(text);
  }
  for (let value = 1; value <= 10; value++) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = String(value);
    button.dataset.rating = String(value);
    button.setAttribute("aria-pressed", String(value === selected));
    button.addEventListener("click", () => onPick(value));
    box.append(button);
  }
  return box;
}

function messageItem(role, text, extraClass) {
  const item = document.createElement("li");
  item.className = extraClass ? `${role} ${extraClass}` : role;
  const who = document.createElement("div");
  who.className = "who";
  who.textContent = role === "user" ? "You" : "Assistant";
  const content = document.createElement("div");
  content.className = "content";
  content.textContent = text;
  item.append(who, content);
  return item;
}

function render(state) {
  current = state;
  if (state.finished) {
    $("code").textContent = state.completion_code;
    show("done");
    return;
  }
  $("task-text").textContent = state.task;
  const list = $("messages");
  list.replaceChildren();
  for (const message of state.messages) {
    const item = messageItem(message.role, message.content);
    item.dataset.turn = String(message.turn);
    if (message.role === "assistant") {
      item.append(ratingButtons(message.rating, (value) => rate(message.turn, value),
        "Rate this reply:"));
    }
    list.append(item);
  }
  const queued = loadOutbox();
  if (queued) list.append(messageItem("user", queued.text, "sending"));
  const last = state.messages[state.messages.length - 1];
  const unrated = last && last.role === "assistant" && last.rating === null;
  const busy = state.waiting || Boolean(queued);
  $("send").disabled = busy || unrated || Boolean(state.error) || state.turns_left <= 0;
  $("input").disabled = $("send").disabled;
  $("finish-button").disabled = busy || unrated || !state.messages.some((m) => m.role === "assistant");
  $("turns-left").textContent = `${state.turns_left} messages left`;
  if (state.error) setStatus(`The assistant could not reply (${state.error}).`);
  else if (state.waiting) setStatus("The assistant is writing…");
  else if (unrated) setStatus("Rate the reply above (1–10) to continue.");
  else setStatus("");
  $("retry").hidden = !state.error;
  if (finishing) show("final");
  else show("chat");
}

function schedulePoll() {
  clearTimeout(pollTimer);
  if (current && current.waiting && !current.finished) pollTimer = setTimeout(refresh, 500);
}

async function refresh() {
  try {
    render(await api("GET", sessionPath()));
  } catch (error) {
    if (error instanceof Refused) throw error;
    setStatus("Connection lost: retrying…");
    clearTimeout(pollTimer);
    pollTimer = setTimeout(refresh, 1000);
    return;
  }
  schedulePoll();
}

// -------------------------------------------------------------------- actions

async function act(method, tail, body) {
  try {
    const state = await api(method, sessionPath(tail), body);
    showError("");
    render(state);
    schedulePoll();
    return true;
  } catch (error) {
    showError(error instanceof Refused ? error.message : "Connection lost: please try again.");
    return false;
  }
}

const rate = (turn, rating) => act("POST", "/ratings", { turn, rating });

async function consent() {
  try {
    const created = await api("POST", "/api/sessions", { consent: true, participant });
    sessionId = created.session;
    localStorage.setItem(SESSION_KEY, sessionId);
    showError("");
    render(created.state);
  } catch (error) {
    showError(error instanceof Refused ? error.message : "Connection lost: please try again.");
  }
}

function openFinal() {
  finishing = true;
  const replies = current.messages.filter((m) => m.role === "assistant");
  if (!$("document").value) $("document").value = replies[replies.length - 1].content;
  pickDocumentRating(documentRating);
  show("final");
}

function pickDocumentRating(value) {
  documentRating = value;
  $("document-rating").replaceChildren(...ratingButtons(value, pickDocumentRating).childNodes);
}

async function submitFinal() {
  const done = await act("POST", "/finish", {
    document: $("document").value, rating: documentRating, comment: $("comment").value,
  });
  if (done) finishing = false;
}

function renderConsent(text) {
  const box = $("consent-text");
  box.replaceChildren();
  for (const paragraph of text.split(/\n\s*\n/)) {
    const p = document.createElement("p");
    p.textContent = paragraph.trim();
    box.append(p);
  }
}

async function start() {
  let info;
  for (;;) {
    try { info = await api("GET", "/api/study"); break; } catch (_) {
      setStatus("Connecting…");
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }
  document.title = info.title;
  $("title").textContent = info.title;
  $("input").maxLength = info.max_chars;
  renderConsent(info.consent);
  sessionId = query.get("s") || localStorage.getItem(SESSION_KEY);
  if (sessionId) {
    try {
      await refresh();
      api("POST", sessionPath("/events"), { kind: "open" }).catch(() => {});
      flushOutbox();
      return;
    } catch (error) {
      localStorage.removeItem(SESSION_KEY);
      showError(error.message);
      sessionId = null;
    }
  }
  show("consent");
}

document.addEventListener("DOMContentLoaded", () => {
  $("retry").addEventListener("click", () => act("POST", "/retry"));
  $("consent-check").addEventListener("change", (e) => { $("consent-button").disabled = !e.target.checked; });
  $("consent-button").addEventListener("click", consent);
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    saveOutbox({ text: $("input").value, client_id: randomId() });
    $("input").value = "";
    render(current);
    flushOutbox();
  });
  $("finish-button").addEventListener("click", openFinal);
  $("back-button").addEventListener("click", () => { finishing = false; render(current); });
  $("submit-final").addEventListener("click", submitFinal);
  document.addEventListener("visibilitychange", () => {
    if (!sessionId) return;
    const kind = document.visibilityState === "hidden" ? "hidden" : "visible";
    api("POST", sessionPath("/events"), { kind }).catch(() => {});
  });
  start();
});
