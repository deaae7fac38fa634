/**
 * The SSE transport: `POST /api/chat/stream` over `fetch`, read as a byte stream, and resumed
 * after a dropped connection.
 *
 * Resume (DESIGN point 9): when a connection ends before `done`/`error`, the client waits
 * (exponential backoff, full jitter) and sends `GET /api/chat/stream/{requestId}` with
 * `Last-Event-ID: <id of the last event delivered>`. The gateway replays what was missed and
 * follows live; any event whose id was delivered already is skipped. A resume answered 5xx or 429
 * (or a network failure) is tried again; any other answer, or `maxAttempts` failures in a row
 * without a new event, ends the stream with `EstuaryStreamError("stream_interrupted")`.
 *
 * Two hooks let a UI show it: `onReconnect({attempt, delayMs})` before each wait, and
 * `onReconnected()` when a resumed connection delivers its first new event (before it is yielded).
 *
 *     POST /api/chat/stream ──▶ events 1..k ──✕ (connection lost)
 *         onReconnect({attempt: 1, delayMs}) ─▶ wait delayMs ─▶ GET /api/chat/stream/{id}
 *         Last-Event-ID: id:k ──▶ onReconnected() ─▶ events k+1.. ─▶ done
 *
 * @module
 */

import { backoffDelay, sleep } from "./backoff.js";
import { EstuaryError, EstuaryStreamError, errorFromResponse } from "./errors.js";
import { SSEParser } from "./sse.js";
import { ChatStream } from "./stream.js";

/** A connection failed in a way that a resume may repair. */
class ConnectionLost extends Error {}

/**
 * @typedef {object} ReconnectHooks  what a UI is told about resumes (see `StreamOptions`)
 * @property {(info: {attempt: number, delayMs: number}) => void} [onReconnect]
 * @property {() => void} [onReconnected]
 */

export class HttpChatStream extends ChatStream {
  /**
   * @param {import("./client.js").EstuaryClient} client
   * @param {Record<string, unknown>} body
   * @param {AbortSignal | undefined} signal
   * @param {Required<import("./backoff.js").ResumeOptions> | false} resume
   * @param {ReconnectHooks} [hooks]
   */
  constructor(client, body, signal, resume, hooks = {}) {
    super(client, body, signal);
    this._resume = resume;
    this._hooks = hooks;
  }

  async *_events() {
    const resume = this._resume;
    let attempt = 0; // reconnections since the last event arrived
    for (let reconnecting = false; ; reconnecting = true) {
      let cause;
      try {
        for await (const event of this._connection(reconnecting)) {
          if (attempt > 0) this._hooks.onReconnected?.();
          attempt = 0;
          yield event;
          if (this._state.finished) return;
        }
        cause = new ConnectionLost("the connection ended before the stream did");
      } catch (error) {
        if (!(error instanceof ConnectionLost) || this._abort.signal.aborted) throw error;
        cause = error;
      }
      if (resume === false || this.requestId === null || attempt >= resume.maxAttempts) {
        const tried = resume === false ? "resume is off" : `${attempt} resume attempt(s)`;
        throw new EstuaryStreamError(`the stream ended without its terminal event (${tried})`, {
          requestId: this.requestId,
          retryable: true,
          cause,
        });
      }
      const delayMs = backoffDelay(attempt, resume, this._client._random);
      attempt += 1;
      this._hooks.onReconnect?.({ attempt, delayMs });
      await sleep(delayMs, this._abort.signal);
    }
  }

  /**
   * One connection's events: the first POST, or a resume GET.
   * @param {boolean} reconnecting
   * @returns {AsyncGenerator<Record<string, unknown>, void, undefined>}
   */
  async *_connection(reconnecting) {
    const response = await this._open(reconnecting);
    this._state.requestId ??= response.headers.get("x-request-id");
    if (response.body === null) throw new ConnectionLost("the response has no body");
    const reader = response.body.getReader();
    const parser = new SSEParser();
    try {
      for (;;) {
        let chunk;
        try {
          chunk = await reader.read();
        } catch (cause) {
          throw this._abort.signal.aborted ? cause : new ConnectionLost("connection lost", { cause });
        }
        const messages = chunk.done ? parser.finish() : parser.feed(chunk.value);
        for (const message of messages) {
          const event = this._state.take(message);
          if (event !== null) yield event;
          if (this._state.finished) return;
        }
        if (chunk.done) return;
      }
    } finally {
      reader.cancel().catch(() => {}); // releases the connection if we stopped early
    }
  }

  /**
   * Send the request and check its answer.
   * @param {boolean} reconnecting
   * @returns {Promise<Response>}
   */
  async _open(reconnecting) {
    const client = this._client;
    const requestId = this._state.requestId;
    /** @type {Record<string, string>} */
    const headers = await client._headers({ Accept: "text/event-stream" });
    /** @type {RequestInit} */
    const init = { method: "POST", headers, signal: this._abort.signal };
    let url = `${client.baseUrl}/api/chat/stream`;
    if (reconnecting) {
      url = `${url}/${encodeURIComponent(String(requestId))}`;
      init.method = "GET";
      if (this._state.lastEventId !== null) headers["Last-Event-ID"] = this._state.lastEventId;
    } else {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(this._body);
    }
    let response;
    try {
      response = await client._fetch(url, init);
    } catch (cause) {
      if (this._abort.signal.aborted || !reconnecting) throw networkError(cause, this._abort.signal);
      throw new ConnectionLost("cannot reach the gateway", { cause });
    }
    if (response.ok) return response;
    const error = await errorFromResponse(response);
    if (!reconnecting) throw error;
    if (error.retryable) throw new ConnectionLost(error.message, { cause: error });
    throw new EstuaryStreamError(`cannot resume the stream: ${error.message}`, {
      requestId,
      cause: error,
    });
  }
}

/**
 * What a failed `fetch` becomes: the abort reason after an abort, else a network `EstuaryError`.
 * @param {unknown} cause
 * @param {AbortSignal} signal
 */
function networkError(cause, signal) {
  if (signal.aborted) return signal.reason;
  return new EstuaryError("cannot reach the gateway", { code: "network_error", cause });
}
