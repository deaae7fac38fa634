/**
 * The client's errors.
 *
 *     Error
 *     └── EstuaryError           the gateway refused the request (HTTP 4xx/5xx before any event),
 *         │                      or could not be reached (status 0, code "network_error")
 *         └── EstuaryStreamError a stream that had started failed: it ended without `done`/`error`
 *                                and could not be resumed (code "stream_interrupted"), or, from
 *                                `.text()`, ended with an in-band `error` event (its code)
 *
 * An abort through the caller's `AbortSignal` is not wrapped: it rejects with the signal's
 * reason (a `DOMException` named "AbortError" by default), as `fetch` does.
 *
 * @module
 */

export class EstuaryError extends Error {
  /**
   * @param {string} message
   * @param {{status?: number, code?: string, type?: string | null, retryAfter?: number | null,
   *          retryable?: boolean, requestId?: string | null, cause?: unknown}} [details]
   */
  constructor(message, details = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = "EstuaryError";
    /** HTTP status, 0 when there was no HTTP answer. */
    this.status = details.status ?? 0;
    /** Machine-readable code, e.g. "invalid_api_key", "rate_limited", "stream_interrupted". */
    this.code = details.code ?? "error";
    /** The error body's `type`, when the gateway sent one. */
    this.type = details.type ?? null;
    /** Seconds to wait before asking again (from `Retry-After`), or null. */
    this.retryAfter = details.retryAfter ?? null;
    /** Whether asking again may work. */
    this.retryable = details.retryable ?? false;
    /** The stream's id, when one had been assigned. */
    this.requestId = details.requestId ?? null;
  }
}

export class EstuaryStreamError extends EstuaryError {
  /**
   * @param {string} message
   * @param {{code?: string, retryable?: boolean, requestId?: string | null, cause?: unknown}} [details]
   */
  constructor(message, details = {}) {
    super(message, { status: 0, code: "stream_interrupted", ...details });
    this.name = "EstuaryStreamError";
  }
}

/**
 * The error for a refused HTTP request, from OpenAI's error shape
 * `{"error": {"message", "type", "code"}}` and the `Retry-After` header.
 * @param {Response} response
 * @returns {Promise<EstuaryError>}
 */
export async function errorFromResponse(response) {
  const requestId = response.headers.get("x-request-id");
  let message = `HTTP ${response.status}`;
  let code = "http_error";
  let type = null;
  try {
    const body = await response.json();
    if (body && typeof body.error === "object" && body.error !== null) {
      message = String(body.error.message ?? message);
      code = String(body.error.code ?? code);
      type = body.error.type == null ? null : String(body.error.type);
    }
  } catch {
    // not JSON (a proxy's HTML page, an empty body): keep the status line
  }
  const retryAfter = parseRetryAfter(response.headers.get("retry-after"));
  const retryable = response.status === 429 || response.status >= 500;
  return new EstuaryError(message, {
    status: response.status,
    code,
    type,
    retryAfter,
    retryable,
    requestId,
  });
}

/**
 * `Retry-After` in seconds: delta-seconds or an HTTP date; null when absent or unreadable.
 * @param {string | null} value
 * @returns {number | null}
 */
export function parseRetryAfter(value) {
  if (value == null || value.trim() === "") return null;
  if (/^\s*\d+(\.\d+)?\s*$/.test(value)) return Number(value);
  const when = Date.parse(value);
  return Number.isNaN(when) ? null : Math.max(0, (when - Date.now()) / 1000);
}
