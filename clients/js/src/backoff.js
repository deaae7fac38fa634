/**
 * Waiting between reconnection attempts: exponential backoff with full jitter, and a sleep that
 * an `AbortSignal` cuts short.
 *
 * @module
 */

/**
 * @typedef {object} ResumeOptions
 * @property {number} [maxAttempts=5]   reconnections in a row without receiving an event
 * @property {number} [baseDelayMs=250] the first wait's upper bound
 * @property {number} [maxDelayMs=5000] no wait is longer than this
 */

/** @type {Required<ResumeOptions>} */
export const DEFAULT_RESUME = Object.freeze({ maxAttempts: 5, baseDelayMs: 250, maxDelayMs: 5000 });

/**
 * The wait before reconnection `attempt` (0-based): uniform in [0, min(cap, base × 2^attempt)).
 * @param {number} attempt
 * @param {{baseDelayMs: number, maxDelayMs: number}} options
 * @param {() => number} [random] a source of [0, 1) numbers
 * @returns {number} milliseconds
 */
export function backoffDelay(attempt, { baseDelayMs, maxDelayMs }, random = Math.random) {
  return random() * Math.min(maxDelayMs, baseDelayMs * 2 ** attempt);
}

/**
 * Resolve after `ms`, or reject with the signal's reason as soon as it aborts.
 * @param {number} ms
 * @param {AbortSignal} [signal]
 * @returns {Promise<void>}
 */
export function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
