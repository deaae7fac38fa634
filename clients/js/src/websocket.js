/**
 * The WebSocket transport (`transport: "websocket"`): many chats on one socket, `/api/chat/ws`.
 *
 * The contract, shared with the gateway's `/api/chat/ws` (docs/api.md, docs/frontend.md):
 *
 *     POST /api/tickets (Bearer)          → {"ticket": "tkt_…"}   (a browser cannot send headers)
 *     GET  /api/chat/ws?ticket=tkt_…      → upgrade; one ticket opens one socket
 *     → {"type":"chat","ref":"c1", …the POST /api/chat/stream body…}
 *     ← {"type":"start","ref":"c1","requestId":"req_…",…}   the app-API events, each tagged with
 *     ← {"type":"content","requestId":"req_…","content":"…"} `requestId` (and/or the chat's `ref`)
 *     ← {"type":"done","requestId":"req_…",…}
 *     → {"type":"cancel","requestId":"req_…"}               stops it: it ends with done/canceled
 *     ← {"type":"error","ref":"c1","error":{"code","message","status"?,"retryAfter"?}}
 *                                                            before `start`: the chat was refused
 *     ← {"type":"error","error":{…}}                         no ref, no id: the socket is refused
 *
 * A socket that closes while chats are running ends them with
 * `EstuaryStreamError("stream_interrupted")`; there is no resume over WebSocket yet.
 *
 * @module
 */

import { EstuaryError, EstuaryStreamError } from "./errors.js";
import { isTerminal, parseEvent } from "./events.js";
import { ChatStream } from "./stream.js";

const OPEN = 1; // WebSocket.OPEN, the same in browsers and `ws`

/** A queue whose reader awaits the next value; `fail()` rejects the reader. */
class AsyncQueue {
  constructor() {
    /** @type {unknown[]} */
    this._items = [];
    /** @type {{resolve: (value: any) => void, reject: (error: unknown) => void} | null} */
    this._waiter = null;
    /** @type {{error: unknown} | null} */
    this._failure = null;
  }

  /** @param {unknown} item */
  push(item) {
    if (this._waiter !== null) {
      this._waiter.resolve(item);
      this._waiter = null;
    } else {
      this._items.push(item);
    }
  }

  /** @param {unknown} error */
  fail(error) {
    this._failure ??= { error };
    this._waiter?.reject(error);
    this._waiter = null;
  }

  /** @returns {Promise<any>} */
  next() {
    if (this._items.length > 0) return Promise.resolve(this._items.shift());
    if (this._failure !== null) return Promise.reject(this._failure.error);
    return new Promise((resolve, reject) => {
      this._waiter = { resolve, reject };
    });
  }
}

/** One WebSocket shared by a client's chats: opens it, routes incoming events to their chat. */
export class SocketHub {
  /**
   * @param {import("./client.js").EstuaryClient} client
   * @param {any} WebSocketImpl
   */
  constructor(client, WebSocketImpl) {
    this._client = client;
    this._WebSocket = WebSocketImpl;
    /** @type {any} */
    this._socket = null;
    this.closed = false;
    this._refs = 0;
    /** @type {Map<string, AsyncQueue>} chat ref → its queue */
    this._byRef = new Map();
    /** @type {Map<string, AsyncQueue>} request id → its queue, once `start` arrived */
    this._byRequestId = new Map();
    /** @type {Set<string>} refs of chats left before they started */
    this._cancelOnStart = new Set();
    /** @type {Promise<void> | null} */
    this._ready = null;
    /** @type {EstuaryError | null} why the server refused the socket, if it did */
    this._refusal = null;
  }

  /** @returns {Promise<void>} resolves once the socket is open */
  ready() {
    this._ready ??= this._connect().catch((error) => {
      this.closed = true; // the client opens a new one for the next chat
      throw error;
    });
    return this._ready;
  }

  /** @returns {string} a new chat reference, unique on this socket */
  nextRef() {
    this._refs += 1;
    return `c${this._refs}`;
  }

  /**
   * Route events for `ref` to `queue` until `remove()`.
   * @param {string} ref
   * @param {AsyncQueue} queue
   */
  add(ref, queue) {
    this._byRef.set(ref, queue);
  }

  /**
   * Stop routing events to a chat.
   * @param {string} ref
   * @param {string | null} requestId
   */
  remove(ref, requestId) {
    this._byRef.delete(ref);
    if (requestId !== null) this._byRequestId.delete(requestId);
  }

  /**
   * A chat was left before its `start` arrived: cancel it as soon as its id is known.
   * @param {string} ref
   */
  cancelOnStart(ref) {
    this._byRef.delete(ref);
    this._cancelOnStart.add(ref);
  }

  /** @param {Record<string, unknown>} message */
  send(message) {
    if (this._socket?.readyState === OPEN) this._socket.send(JSON.stringify(message));
  }

  close() {
    this.closed = true;
    this._socket?.close(1000);
  }

  async _connect() {
    const response = await this._client._request("/api/tickets", { method: "POST" });
    const { ticket } = await response.json();
    const socket = new this._WebSocket(socketUrl(this._client.baseUrl, String(ticket)));
    this._socket = socket;
    // Listen at once: a refusal may arrive in the same packet as the handshake.
    socket.addEventListener("message", (/** @type {{data: unknown}} */ message) =>
      this._receive(message.data),
    );
    socket.addEventListener("close", () => this._closed());
    await new Promise((resolve, reject) => {
      socket.addEventListener("open", resolve, { once: true });
      socket.addEventListener(
        "close",
        () =>
          reject(
            this._refusal ?? new EstuaryError("cannot open the WebSocket", { code: "network_error" }),
          ),
        { once: true },
      );
    });
  }

  /** @param {unknown} data */
  _receive(data) {
    const text = typeof data === "string" ? data : new TextDecoder().decode(/** @type {any} */ (data));
    let event;
    try {
      event = parseEvent(text);
    } catch (error) {
      this._failAll(error);
      this.close();
      return;
    }
    const { ref, requestId } = event;
    if (typeof ref === "string" && this._cancelOnStart.delete(ref)) {
      if (event.type === "start") this.send({ type: "cancel", requestId });
      return;
    }
    let queue = typeof ref === "string" ? this._byRef.get(ref) : undefined;
    if (queue === undefined && typeof requestId === "string") {
      queue = this._byRequestId.get(requestId);
    }
    if (queue !== undefined) {
      if (event.type === "start" && typeof requestId === "string") {
        this._byRequestId.set(requestId, queue);
      }
      queue.push(event);
    } else if (ref === undefined && requestId === undefined && event.type === "error") {
      this._refusal = refusal(event); // the socket itself was refused (a bad ticket)
      this._failAll(this._refusal);
    } // else: a late event of a chat that was left; dropped
  }

  _closed() {
    this.closed = true;
    this._failAll(new EstuaryStreamError("the WebSocket closed before the stream ended"));
  }

  /** @param {unknown} error */
  _failAll(error) {
    for (const queue of this._byRef.values()) queue.fail(error);
  }
}

/** A chat over the client's shared WebSocket. */
export class WebSocketChatStream extends ChatStream {
  async *_events() {
    const hub = this._client._socketHub();
    const ref = hub.nextRef();
    const queue = new AsyncQueue();
    const onAbort = () => queue.fail(this._stopReason);
    this._abort.signal.addEventListener("abort", onAbort, { once: true });
    hub.add(ref, queue);
    this._hub = hub;
    let sent = false;
    try {
      await abortable(hub.ready(), this._abort.signal);
      hub.send({ ...this._body, type: "chat", ref });
      sent = true;
      for (;;) {
        const event = await queue.next();
        if (event.type === "start") {
          this._state.requestId = String(event.requestId);
        } else if (event.type === "error" && this._state.requestId === null) {
          this._state.finished = true; // refused: there is nothing to cancel
          throw refusal(event);
        }
        if (isTerminal(event)) this._state.finished = true;
        const { ref: _, ...untagged } = event;
        yield untagged;
        if (this._state.finished) return;
      }
    } finally {
      this._abort.signal.removeEventListener("abort", onAbort);
      hub.remove(ref, this._state.requestId);
      if (sent && !this._state.finished && this._state.requestId === null) hub.cancelOnStart(ref);
    }
  }

  /** @param {string} requestId */
  _sendCancel(requestId) {
    this._hub?.send({ type: "cancel", requestId });
  }
}

/**
 * `promise`, or the signal's reason as soon as it aborts.
 * @template T
 * @param {Promise<T>} promise
 * @param {AbortSignal} signal
 * @returns {Promise<T>}
 */
function abortable(promise, signal) {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}

/**
 * The `EstuaryError` for an `error` message that came before the chat started.
 * @param {Record<string, any>} event
 */
function refusal(event) {
  const error = event.error ?? {};
  return new EstuaryError(String(error.message ?? "the gateway refused the chat"), {
    status: Number(error.status ?? 0),
    code: String(error.code ?? "error"),
    retryAfter: error.retryAfter ?? null,
    retryable: Boolean(error.retryable),
  });
}

/**
 * `ws(s)://…/api/chat/ws?ticket=…` for the client's base URL (relative to the page in a browser).
 * @param {string} baseUrl
 * @param {string} ticket
 */
function socketUrl(baseUrl, ticket) {
  const url = new URL(`${baseUrl}/api/chat/ws`, globalThis.location?.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.searchParams.set("ticket", ticket);
  return url.href;
}
