/**
 * `@estuary/client/vue`: `useStreamingChat()`, a chat conversation as Vue refs.
 *
 *     const chat = useStreamingChat({ client, model: "chat", system: "Be brief." });
 *     await chat.sendMessage("你好");   // chat.currentContent grows while chat.streaming is true
 *                                      // (chat.reconnecting: the connection dropped, resuming)
 *     chat.stop();                     // aborts the request and cancels the upstream
 *
 * Vue 3.3+ is a peer dependency; nothing here needs a DOM or a component (the refs work in any
 * effect scope, and a component's unmount stops a running answer).
 *
 * @module
 */

import { getCurrentScope, onScopeDispose, ref, shallowRef, toValue } from "vue";

import { inBandError } from "./stream.js";

/** Options read at each send, so a ref (a model picker, say) takes effect on the next message. */
const PASSED_OPTIONS = ["model", "maxTokens", "temperature", "template", "variables", "tools"];

/**
 * @typedef {{role: string, content: string}} ChatMessage
 */

/**
 * A streaming chat: the conversation, the answer being written, and the controls.
 *
 * - `sendMessage(text)` appends the user's message and streams the answer into
 *   `currentContent`; when it is done the answer joins `messages` as an assistant message.
 *   Its promise resolves when the answer ends and never rejects: failures go to `error`.
 * - `stop()` aborts the answer (the gateway cancels the upstream); what was written so far is
 *   kept as the assistant message.
 * - `retry()` drops whatever followed the last user message and asks again.
 * - `reconnecting` is true from a dropped connection until the resumed one delivers an event
 *   (SSE transport); the answer goes on in `currentContent`.
 *
 * @param {{client: import("./client.js").EstuaryClient, model?: any, system?: any,
 *          maxTokens?: any, temperature?: any, template?: any, variables?: any, tools?: any}} options
 */
export function useStreamingChat(options) {
  const { client, system } = options;
  /** @type {import("vue").Ref<ChatMessage[]>} */
  const messages = ref([]);
  const streaming = ref(false);
  const reconnecting = ref(false);
  const currentContent = ref("");
  /** @type {import("vue").ShallowRef<Error | null>} */
  const error = shallowRef(null);
  /** @type {AbortController | null} */
  let controller = null;
  let turn = 0; // bumped by every send and stop: a superseded answer changes nothing

  /** @returns {Promise<void>} */
  async function answer() {
    const mine = ++turn;
    const abort = new AbortController();
    controller = abort;
    streaming.value = true;
    error.value = null;
    currentContent.value = "";
    try {
      const stream = client.chat.stream({
        ...request(),
        signal: abort.signal,
        onReconnect: () => {
          if (mine === turn) reconnecting.value = true;
        },
        onReconnected: () => {
          if (mine === turn) reconnecting.value = false;
        },
      });
      for await (const event of stream) {
        if (mine !== turn) return;
        if (event.type === "content") currentContent.value += String(event.content);
        if (event.type === "error") throw inBandError(event, stream.requestId);
      }
      if (mine !== turn) return;
      messages.value.push({ role: "assistant", content: currentContent.value });
      currentContent.value = "";
    } catch (failure) {
      if (mine === turn) error.value = asError(failure);
    } finally {
      if (mine === turn) {
        streaming.value = false;
        reconnecting.value = false;
        controller = null;
      }
    }
  }

  /** The stream options for the conversation as it is now. */
  function request() {
    /** @type {Record<string, unknown>} */
    const body = {};
    for (const name of PASSED_OPTIONS) {
      const value = toValue(/** @type {any} */ (options)[name]);
      if (value !== undefined) body[name] = value;
    }
    const history = messages.value.map(({ role, content }) => ({ role, content }));
    const prompt = toValue(system);
    body.messages = prompt ? [{ role: "system", content: prompt }, ...history] : history;
    return body;
  }

  /**
   * Send the user's message and stream the answer.
   * @param {string} text
   * @returns {Promise<void>}
   */
  function sendMessage(text) {
    stop();
    messages.value.push({ role: "user", content: text });
    return answer();
  }

  /** Stop the answer being written; keeps its text so far as the assistant's message. */
  function stop() {
    if (controller === null) return;
    turn += 1;
    controller.abort();
    controller = null;
    if (currentContent.value !== "") {
      messages.value.push({ role: "assistant", content: currentContent.value });
    }
    currentContent.value = "";
    streaming.value = false;
    reconnecting.value = false;
  }

  /**
   * Ask again for an answer to the last user message (after an error, a stop, or a poor answer).
   * @returns {Promise<void>}
   */
  function retry() {
    stop();
    const last = messages.value.findLastIndex((message) => message.role === "user");
    if (last === -1) return Promise.resolve();
    messages.value.splice(last + 1);
    return answer();
  }

  if (getCurrentScope()) onScopeDispose(stop);
  return { messages, streaming, reconnecting, currentContent, error, sendMessage, stop, retry };
}

/**
 * @param {unknown} failure
 * @returns {Error}
 */
function asError(failure) {
  return failure instanceof Error ? failure : new Error(String(failure));
}
