/**
 * `EstuaryClient`: one gateway, its credentials, and `client.chat`.
 *
 * @module
 */

import { DEFAULT_RESUME } from "./backoff.js";
import { errorFromResponse } from "./errors.js";
import { HttpChatStream } from "./http.js";
import { chatBody } from "./request.js";
import { SocketHub, WebSocketChatStream } from "./websocket.js";

/**
 * @typedef {object} ClientOptions
 * @property {string} [baseUrl]  the gateway's root, e.g. "https://chat.example.com"; "" (the
 *   default) means the page's own origin in a browser
 * @property {string} [apiKey]   a gateway key (`sk-est-…`)
 * @property {() => (string | Promise<string>)} [getToken] called before every request: a key or
 *   an end-user JWT. Give `apiKey` or `getToken`, or neither for an anonymous demo server
 * @property {"sse" | "websocket"} [transport] "sse" (the default) or "websocket"
 * @property {import("./backoff.js").ResumeOptions | false} [resume] resume after a dropped
 *   connection (the default: 5 attempts, 250 ms base, 5 s cap); false turns it off
 * @property {(info: {attempt: number, delayMs: number}) => void} [onReconnect] called before each
 *   resume attempt of every stream (SSE transport), before the stream's own hook
 * @property {() => void} [onReconnected] called when a resumed connection delivers its first event
 * @property {typeof fetch} [fetch] a `fetch` to use instead of the global one
 * @property {any} [WebSocket] a WebSocket constructor (e.g. the `ws` package's on Node < 22)
 * @property {() => number} [random] the jitter source, `Math.random` by default
 */

export class EstuaryClient {
  /** @param {ClientOptions} [options] */
  constructor(options = {}) {
    const { apiKey, getToken } = options;
    if (apiKey !== undefined && getToken !== undefined) {
      throw new TypeError("give apiKey or getToken, not both");
    }
    if (options.transport !== undefined && !["sse", "websocket"].includes(options.transport)) {
      throw new TypeError(`unknown transport: ${options.transport}`);
    }
    /** The gateway's root URL, without a trailing slash. */
    this.baseUrl = (options.baseUrl ?? "").replace(/\/+$/, "");
    this.transport = options.transport ?? "sse";
    /** @type {Required<import("./backoff.js").ResumeOptions> | false} */
    this._resume = options.resume === false ? false : { ...DEFAULT_RESUME, ...options.resume };
    /** @type {import("./http.js").ReconnectHooks} */
    this._hooks = reconnectHooks(options);
    this._random = options.random ?? Math.random;
    /** @type {typeof fetch} (the global one is looked up per call: tests and polyfills swap it) */
    this._fetch = options.fetch ?? ((input, init) => globalThis.fetch(input, init));
    this._getToken = getToken ?? (apiKey === undefined ? null : () => apiKey);
    this._WebSocket = options.WebSocket ?? globalThis.WebSocket;
    /** @type {SocketHub | null} */
    this._hub = null;
    /** Streams, collected text and cancel. */
    this.chat = new Chat(this);
  }

  /**
   * The `Authorization` header value for the next request ("" when anonymous). Never logged.
   * @returns {Promise<string>}
   */
  async _authorization() {
    if (this._getToken === null) return "";
    return `Bearer ${await this._getToken()}`;
  }

  /**
   * `extra` plus the credentials (none when anonymous).
   * @param {Record<string, string>} [extra]
   * @returns {Promise<Record<string, string>>}
   */
  async _headers(extra = {}) {
    const authorization = await this._authorization();
    return authorization === "" ? { ...extra } : { ...extra, Authorization: authorization };
  }

  /**
   * Send a request with the credentials, and fail with `EstuaryError` on a non-2xx answer.
   * @param {string} path e.g. "/api/tickets"
   * @param {RequestInit & {headers?: Record<string, string>}} [init]
   * @returns {Promise<Response>}
   */
  async _request(path, init = {}) {
    const headers = await this._headers(init.headers);
    const response = await this._fetch(`${this.baseUrl}${path}`, { ...init, headers });
    if (!response.ok) throw await errorFromResponse(response);
    return response;
  }

  /** Close the shared WebSocket, if one is open. Streams still running on it are interrupted. */
  close() {
    this._hub?.close();
    this._hub = null;
  }

  /** @returns {SocketHub} the shared WebSocket of the "websocket" transport */
  _socketHub() {
    if (this._hub === null || this._hub.closed) {
      if (typeof this._WebSocket !== "function") {
        throw new TypeError(
          "no WebSocket here: pass one, e.g. new EstuaryClient({ WebSocket }) with `ws` on Node < 22",
        );
      }
      this._hub = new SocketHub(this, this._WebSocket);
    }
    return this._hub;
  }
}

/**
 * @typedef {object} StreamOptions
 * @property {{role: string, content: unknown}[]} [messages] the conversation (OpenAI-shaped)
 * @property {string} [message]     or one user message
 * @property {string} [model]       the alias; the gateway's default when omitted
 * @property {string} [system]
 * @property {number} [maxTokens]
 * @property {number} [temperature]
 * @property {unknown[]} [tools]
 * @property {string} [template]    a server-side prompt template, and its `variables`
 * @property {Record<string, string>} [variables]
 * @property {AbortSignal} [signal] aborting stops the stream and cancels it on the gateway
 * @property {import("./backoff.js").ResumeOptions | false} [resume] overrides the client's
 * @property {(info: {attempt: number, delayMs: number}) => void} [onReconnect] called before each
 *   resume attempt: `attempt` counts from 1 since the last event arrived, `delayMs` is the wait
 *   before it; called after the client's
 * @property {() => void} [onReconnected] called when a resumed connection delivers its first new
 *   event, just before that event; called after the client's
 */

export class Chat {
  /** @param {EstuaryClient} client */
  constructor(client) {
    this._client = client;
  }

  /**
   * Start a streamed chat. Nothing is sent until the stream is iterated (or `.text()` called).
   * @param {StreamOptions} options
   * @returns {import("./stream.js").ChatStream}
   */
  stream(options) {
    const client = this._client;
    const body = chatBody(/** @type {Record<string, unknown>} */ (options));
    const hooks = bothHooks(client._hooks, reconnectHooks(options));
    if (client.transport === "websocket") {
      return new WebSocketChatStream(client, body, options.signal); // no resume, so no hooks
    }
    const resume = resumeOptions(client._resume, options.resume);
    return new HttpChatStream(client, body, options.signal, resume, hooks);
  }

  /**
   * The whole answer's text.
   * @param {StreamOptions} options
   * @returns {Promise<string>}
   */
  text(options) {
    return this.stream(options).text();
  }

  /**
   * Stop one of your running streams (`POST /api/chat/{id}/cancel`).
   * @param {string} requestId
   * @returns {Promise<boolean>} false when it had already finished
   */
  async cancel(requestId) {
    try {
      await this._client._request(`/api/chat/${encodeURIComponent(requestId)}/cancel`, {
        method: "POST",
      });
      return true;
    } catch (error) {
      if (/** @type {{status?: number}} */ (error).status === 409) return false;
      throw error;
    }
  }
}

/**
 * The resume policy of one stream: its own options over the client's.
 * @param {Required<import("./backoff.js").ResumeOptions> | false} ofClient
 * @param {import("./backoff.js").ResumeOptions | false | undefined} ofStream
 * @returns {Required<import("./backoff.js").ResumeOptions> | false}
 */
function resumeOptions(ofClient, ofStream) {
  if (ofStream === undefined) return ofClient;
  if (ofStream === false) return false;
  return { ...DEFAULT_RESUME, ...(ofClient || {}), ...ofStream };
}

/**
 * The reconnection hooks given in `options` (a client's or a stream's); a hook that is not a
 * function is a `TypeError`.
 * @param {{onReconnect?: unknown, onReconnected?: unknown}} options
 * @returns {import("./http.js").ReconnectHooks}
 */
function reconnectHooks({ onReconnect, onReconnected }) {
  /** @type {Record<string, unknown>} */
  const hooks = {};
  for (const [name, hook] of Object.entries({ onReconnect, onReconnected })) {
    if (hook === undefined) continue;
    if (typeof hook !== "function") throw new TypeError(`${name} must be a function`);
    hooks[name] = hook;
  }
  return /** @type {import("./http.js").ReconnectHooks} */ (hooks);
}

/**
 * The client's hooks, then the stream's.
 * @param {import("./http.js").ReconnectHooks} first
 * @param {import("./http.js").ReconnectHooks} then
 * @returns {import("./http.js").ReconnectHooks}
 */
function bothHooks(first, then) {
  return {
    onReconnect: (info) => {
      first.onReconnect?.(info);
      then.onReconnect?.(info);
    },
    onReconnected: () => {
      first.onReconnected?.();
      then.onReconnected?.();
    },
  };
}
