/**
 * The app API's events: the table of known types, and the per-stream bookkeeping shared by every
 * connection of one stream (the request id, the last event id for `Last-Event-ID`, which events
 * were already delivered, whether the terminal event arrived). No I/O.
 *
 * Events are passed on as the gateway's JSON objects (camelCase keys, a `type`), so a type that a
 * newer server adds reaches the caller unchanged.
 *
 * @module
 */

import { EstuaryStreamError } from "./errors.js";

/** Every event type this version knows, mapped to whether it ends the stream. */
export const EVENT_TYPES = Object.freeze({
  start: false,
  reasoning: false,
  content: false,
  tool_call: false,
  attempt: false, // a failover seam: the answer continues from another target
  done: true,
  error: true,
});

/**
 * Whether `event` is the stream's last (`done` or `error`).
 * @param {{type?: unknown}} event
 * @returns {boolean}
 */
export function isTerminal(event) {
  const type = String(event.type);
  return Object.hasOwn(EVENT_TYPES, type) && EVENT_TYPES[/** @type {keyof EVENT_TYPES} */ (type)];
}

/**
 * The sequence number of an id `<requestId>:<seq>`, or null if it has none.
 * @param {string} id
 * @returns {{requestId: string, seq: number} | null}
 */
export function splitEventId(id) {
  const colon = id.lastIndexOf(":");
  const tail = id.slice(colon + 1);
  if (colon < 1 || !/^\d+$/.test(tail)) return null;
  return { requestId: id.slice(0, colon), seq: Number(tail) };
}

/** What one stream has delivered so far, across its connections. */
export class StreamState {
  constructor() {
    /** @type {string | null} */
    this.requestId = null;
    /** @type {string | null} the id of the last delivered event, for `Last-Event-ID` */
    this.lastEventId = null;
    this.finished = false;
    this._lastSeq = 0;
    /** @type {Set<string>} ids without a sequence number, already delivered */
    this._seen = new Set();
  }

  /**
   * The event an SSE message carries, or null for one already delivered (a resume replay).
   * @param {{data: string, id: string}} message
   * @returns {Record<string, unknown> | null}
   */
  take(message) {
    if (message.id && this._delivered(message.id)) return null;
    const event = parseEvent(message.data, this.requestId);
    if (message.id) this.lastEventId = message.id;
    if (event.type === "start" && typeof event.requestId === "string") {
      this.requestId = event.requestId;
    }
    if (isTerminal(event)) this.finished = true;
    return event;
  }

  /**
   * Record `id`; true if an event with it (or a later one) was delivered already.
   * @param {string} id
   */
  _delivered(id) {
    const parsed = splitEventId(id);
    if (parsed === null) {
      if (this._seen.has(id)) return true;
      this._seen.add(id);
      return false;
    }
    if (parsed.seq <= this._lastSeq) return true;
    this._lastSeq = parsed.seq;
    this.requestId ??= parsed.requestId;
    return false;
  }
}

/**
 * One event from its JSON text.
 * @param {string} data
 * @param {string | null} requestId for the error message
 * @returns {Record<string, unknown>}
 */
export function parseEvent(data, requestId = null) {
  let event;
  try {
    event = JSON.parse(data);
  } catch (cause) {
    throw new EstuaryStreamError("the gateway sent an event that is not JSON", {
      code: "protocol_error",
      requestId,
      cause,
    });
  }
  if (event === null || typeof event !== "object" || typeof event.type !== "string") {
    throw new EstuaryStreamError("the gateway sent an event without a type", {
      code: "protocol_error",
      requestId,
    });
  }
  return event;
}
