/**
 * `ChatStream`: what `client.chat.stream()` returns, whatever the transport — an async iterable of
 * events with `.text()`, `.requestId` and `.cancel()`. Transports subclass it and implement
 * `_events()`; everything a caller sees is here.
 *
 * @module
 */

import { EstuaryStreamError } from "./errors.js";
import { StreamState } from "./events.js";

export class ChatStream {
  /**
   * @param {import("./client.js").EstuaryClient} client
   * @param {Record<string, unknown>} body the request body (`chatBody()`)
   * @param {AbortSignal | undefined} signal the caller's signal: aborting it stops the stream
   */
  constructor(client, body, signal) {
    this._client = client;
    this._body = body;
    this._signal = signal;
    this._state = new StreamState();
    this._started = false;
    this._cancelSent = false;
    /** Aborts this stream's connections; the caller's signal and `cancel()` trigger it. */
    this._abort = new AbortController();
  }

  /** The stream's id (`req_…`), once the gateway has assigned it; null before. */
  get requestId() {
    return this._state.requestId;
  }

  /** The id of the last event delivered (`<requestId>:<seq>`), or null. */
  get lastEventId() {
    return this._state.lastEventId;
  }

  /** Whether the terminal event (`done` or `error`) has arrived. */
  get finished() {
    return this._state.finished;
  }

  /**
   * The events, in order, each once. A stream can be read once.
   * @returns {AsyncGenerator<Record<string, unknown>, void, undefined>}
   */
  [Symbol.asyncIterator]() {
    if (this._started) throw new TypeError("this stream is already being read");
    this._started = true;
    return this._guarded();
  }

  /**
   * Read to the end and return the content text. An in-band `error` event rejects with an
   * `EstuaryStreamError` carrying its code.
   * @returns {Promise<string>}
   */
  async text() {
    let text = "";
    for await (const event of this) {
      if (event.type === "content") text += String(event.content);
      if (event.type === "error") throw inBandError(event, this.requestId);
    }
    return text;
  }

  /**
   * Stop the stream: close its connection and ask the gateway to cancel the upstream (when the
   * request id is known). A reader blocked on the next event rejects with an "AbortError".
   */
  cancel() {
    this._stop(new DOMException("the stream was cancelled", "AbortError"));
  }

  /**
   * The transport's event source. Must stop when `this._abort.signal` aborts.
   * @returns {AsyncGenerator<Record<string, unknown>, void, undefined>}
   */
  async *_events() {
    throw new Error("a transport must implement _events()");
  }

  /**
   * Tell the gateway to stop this stream. Fire-and-forget, at most once; failures are ignored
   * (the stream may have ended meanwhile, and closing the connection stops it anyway).
   */
  _cancelOnServer() {
    if (this._cancelSent || this._state.finished || this._state.requestId === null) return;
    this._cancelSent = true;
    this._sendCancel(this._state.requestId);
  }

  /**
   * @param {string} requestId
   */
  _sendCancel(requestId) {
    this._client.chat.cancel(requestId).catch(() => {});
  }

  /** @param {unknown} reason */
  _stop(reason) {
    if (!this._abort.signal.aborted) this._abort.abort(reason);
    this._cancelOnServer();
  }

  /** The reason the stream was stopped, if it was. */
  get _stopReason() {
    return this._abort.signal.aborted ? this._abort.signal.reason : undefined;
  }

  /** @returns {AsyncGenerator<Record<string, unknown>, void, undefined>} */
  async *_guarded() {
    const signal = this._signal;
    const onAbort = () => this._stop(signal?.reason);
    if (signal?.aborted) throw signal.reason;
    if (this._abort.signal.aborted) throw this._stopReason;
    signal?.addEventListener("abort", onAbort, { once: true });
    try {
      yield* this._events();
    } catch (error) {
      throw this._abort.signal.aborted ? this._stopReason : error;
    } finally {
      signal?.removeEventListener("abort", onAbort);
      // Left early (a `break`, an error, an abort): stop the connection and the upstream.
      if (!this._state.finished) this._stop(new DOMException("the stream was left", "AbortError"));
    }
  }
}

/**
 * The error `.text()` raises for an in-band `error` event.
 * @param {Record<string, any>} event
 * @param {string | null} requestId
 */
export function inBandError(event, requestId) {
  const error = event.error ?? {};
  return new EstuaryStreamError(String(error.message ?? "the stream failed"), {
    code: String(error.code ?? "error"),
    retryable: Boolean(error.retryable),
    requestId,
  });
}
