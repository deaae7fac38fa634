// The chat page: conversations in localStorage, streaming answers through the JS client.
//
// Model output is untrusted: it is rendered by markdown.js with DOM APIs only (never innerHTML).
// Stop aborts the stream, which cancels the upstream; Retry asks the last question again. A
// dropped connection is resumed by the client; meanwhile the answer shows "Reconnecting…".

import { EstuaryClient, EstuaryError } from "/static/client/index.js";
import { renderMarkdown } from "/static/markdown.js";

const STORE = "estuary.conversations";
// More patient than the client's default (5): a gateway restart (a deploy) takes a few seconds,
// and the answer goes on afterwards.
const RESUME = { maxAttempts: 10, baseDelayMs: 250, maxDelayMs: 4000 };
const KEY = "estuary.apiKey";
const $ = (id) => document.getElementById(id);

const state = {
  conversations: load(),
  current: null,
  controller: null, // the AbortController of the answer in progress
  follow: true, // auto-scroll, paused while the user reads further up
};

function load() {
  try {
    const saved = JSON.parse(localStorage.getItem(STORE) ?? "[]");
    return Array.isArray(saved) ? saved : [];
  } catch {
    return [];
  }
}

function save() {
  localStorage.setItem(STORE, JSON.stringify(state.conversations.slice(0, 50)));
}

function client() {
  const apiKey = $("api-key").value.trim();
  return new EstuaryClient(apiKey ? { apiKey, resume: RESUME } : { resume: RESUME });
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function setBusy(busy) {
  $("send").hidden = busy;
  $("stop").hidden = !busy;
  $("retry").hidden = busy || lastUserMessage() === null;
}

function lastUserMessage() {
  const messages = state.current?.messages ?? [];
  for (let i = messages.length - 1; i >= 0; i -= 1) {
    if (messages[i].role === "user") return i;
  }
  return null;
}

function newConversation() {
  state.current = { id: crypto.randomUUID(), title: "New chat", messages: [] };
  state.conversations.unshift(state.current);
  renderAll();
}

function renderConversations() {
  const list = $("conversations");
  list.replaceChildren(
    ...state.conversations.map((conversation) => {
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = conversation.title;
      button.setAttribute("aria-current", String(conversation === state.current));
      button.addEventListener("click", () => {
        if (state.controller) return; // finish or stop the running answer first
        state.current = conversation;
        document.body.classList.remove("sidebar-open");
        renderAll();
      });
      item.append(button);
      return item;
    }),
  );
}

function messageElement(message) {
  const element = document.createElement("div");
  element.className = `message ${message.role}`;
  element.dataset.testid = `message-${message.role}`;
  const body = document.createElement("div");
  body.className = "body";
  element.append(body);
  fill(element, message);
  return element;
}

function fill(element, message) {
  const body = element.querySelector(".body");
  if (message.role === "user") body.textContent = message.content;
  else renderMarkdown(body, message.content);
  element.querySelector(".error")?.remove();
  if (message.error) {
    const error = document.createElement("p");
    error.className = "error";
    error.textContent = message.error;
    element.append(error);
  }
}

// The streaming answer's "Reconnecting…" badge, shown while the client resumes a dropped
// connection. The status line (role=status) announces it; the badge itself is not read twice.
function setReconnecting(element, on) {
  element.classList.toggle("reconnecting", on);
  element.querySelector(".reconnecting-note")?.remove();
  if (!on) return;
  const note = document.createElement("p");
  note.className = "reconnecting-note";
  note.dataset.testid = "reconnecting";
  note.setAttribute("aria-hidden", "true");
  note.textContent = "Reconnecting…";
  element.append(note);
}

function renderAll() {
  renderConversations();
  $("messages").replaceChildren(...(state.current?.messages ?? []).map(messageElement));
  setBusy(false);
  scrollDown(true);
}

function scrollDown(force = false) {
  const box = $("messages");
  if (force || state.follow) box.scrollTop = box.scrollHeight;
}

async function ask() {
  const conversation = state.current;
  const answer = { role: "assistant", content: "" };
  const history = conversation.messages.map(({ role, content }) => ({ role, content }));
  conversation.messages.push(answer);
  const element = messageElement(answer);
  element.classList.add("streaming");
  $("messages").append(element);
  state.follow = true;
  scrollDown(true);
  const controller = (state.controller = new AbortController());
  setBusy(true);
  setStatus("Waiting for the first token…");
  let pending = false;
  const paint = () => {
    pending = false;
    fill(element, answer);
    scrollDown();
  };
  try {
    const stream = client().chat.stream({
      messages: history,
      model: $("model").value || undefined,
      signal: controller.signal,
      onReconnect: () => {
        setReconnecting(element, true);
        setStatus("Connection lost. Reconnecting…");
      },
      onReconnected: () => {
        setReconnecting(element, false);
        setStatus("Streaming…");
      },
    });
    for await (const event of stream) {
      if (event.type === "content") {
        answer.content += event.content;
        if (!pending) {
          pending = true;
          requestAnimationFrame(paint);
        }
        setStatus("Streaming…");
      } else if (event.type === "attempt") {
        setStatus(`Continuing on ${event.provider} after a failure…`);
      } else if (event.type === "error") {
        answer.error = `${event.error.message} (${event.error.code})`;
      } else if (event.type === "done") {
        setStatus(event.finishReason === "stop" ? "" : `Finished: ${event.finishReason}`);
      }
    }
  } catch (error) {
    if (controller.signal.aborted) setStatus("Stopped.");
    else answer.error = describe(error);
  } finally {
    state.controller = null;
    element.classList.remove("streaming");
    setReconnecting(element, false);
    fill(element, answer);
    if (answer.error) setStatus(answer.error, true);
    save();
    setBusy(false);
    scrollDown();
  }
}

function describe(error) {
  if (error instanceof EstuaryError) {
    const wait = error.retryAfter ? ` Try again in ${error.retryAfter} s.` : "";
    return `${error.message} (${error.code}).${wait}`;
  }
  return `${error?.message ?? error}`;
}

async function send(text) {
  if (!state.current) newConversation();
  const conversation = state.current;
  conversation.messages.push({ role: "user", content: text });
  if (conversation.title === "New chat") conversation.title = text.slice(0, 40);
  $("messages").append(messageElement({ role: "user", content: text }));
  renderConversations();
  save();
  await ask();
}

async function loadModels() {
  try {
    const apiKey = $("api-key").value.trim();
    const response = await fetch("/v1/models", {
      headers: apiKey ? { Authorization: `Bearer ${apiKey}` } : {},
    });
    if (!response.ok) throw new Error(`models: HTTP ${response.status}`);
    const { data } = await response.json();
    $("model").replaceChildren(
      ...data.map(({ id }) => Object.assign(document.createElement("option"), { value: id, textContent: id })),
    );
  } catch (error) {
    setStatus(`Could not load the models: ${error.message}`, true);
  }
}

function wire() {
  $("api-key").value = localStorage.getItem(KEY) ?? "";
  $("api-key").addEventListener("change", () => {
    localStorage.setItem(KEY, $("api-key").value.trim());
    loadModels();
  });
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("prompt").value.trim();
    if (!text || state.controller) return;
    $("prompt").value = "";
    send(text);
  });
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("stop").addEventListener("click", () => state.controller?.abort());
  $("retry").addEventListener("click", () => {
    const index = lastUserMessage();
    if (index === null || state.controller) return;
    state.current.messages.splice(index + 1); // drop the answer being retried
    renderAll();
    ask();
  });
  $("new-chat").addEventListener("click", () => state.controller || newConversation());
  $("toggle-sidebar").addEventListener("click", () => document.body.classList.toggle("sidebar-open"));
  $("messages").addEventListener("scroll", () => {
    const box = $("messages");
    state.follow = box.scrollTop + box.clientHeight >= box.scrollHeight - 40;
  });
}

wire();
state.current = state.conversations[0] ?? null;
renderAll();
loadModels();
