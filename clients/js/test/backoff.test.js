// Backoff: exponential with full jitter, capped.

import assert from "node:assert/strict";
import { test } from "node:test";

import { DEFAULT_RESUME, backoffDelay } from "../src/index.js";

test("the defaults are 5 attempts, 250 ms base, 5 s cap", () => {
  assert.deepEqual(DEFAULT_RESUME, { maxAttempts: 5, baseDelayMs: 250, maxDelayMs: 5000 });
});

test("each wait is uniform in [0, min(cap, base × 2^attempt))", () => {
  const bounds = [0, 1, 2, 3, 4, 5, 10].map((attempt) => backoffDelay(attempt, DEFAULT_RESUME, () => 1));
  assert.deepEqual(bounds, [250, 500, 1000, 2000, 4000, 5000, 5000]);
  assert.equal(backoffDelay(3, DEFAULT_RESUME, () => 0), 0);
  assert.equal(backoffDelay(3, DEFAULT_RESUME, () => 0.5), 1000);
});

test("the default jitter stays within the bound", () => {
  for (let attempt = 0; attempt < 8; attempt += 1) {
    const delay = backoffDelay(attempt, DEFAULT_RESUME);
    assert.ok(delay >= 0 && delay < Math.min(5000, 250 * 2 ** attempt));
  }
});
