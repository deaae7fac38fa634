// Stream bookkeeping: ids, replays skipped, the terminal event, unknown types passed on.

import assert from "node:assert/strict";
import { test } from "node:test";

import { EstuaryStreamError, isTerminal } from "../src/index.js";
import { StreamState } from "../src/events.js";

const message = (/** @type {number} */ seq, /** @type {object} */ event) => ({
  id: `req_1:${seq}`,
  data: JSON.stringify(event),
});

test("events already delivered are skipped by their sequence number", () => {
  const state = new StreamState();
  const delivered = [
    message(1, { type: "start", requestId: "req_1" }),
    message(2, { type: "content", content: "a" }),
    message(2, { type: "content", content: "a" }),
    message(1, { type: "start", requestId: "req_1" }),
    message(3, { type: "content", content: "b" }),
  ]
    .map((m) => state.take(m))
    .filter((event) => event !== null);
  assert.deepEqual(
    delivered.map((event) => event.type),
    ["start", "content", "content"],
  );
  assert.equal(state.lastEventId, "req_1:3");
  assert.equal(state.requestId, "req_1");
});

test("done and error end the stream; attempt and unknown types do not, and pass through", () => {
  assert.equal(isTerminal({ type: "done" }), true);
  assert.equal(isTerminal({ type: "error" }), true);
  assert.equal(isTerminal({ type: "attempt" }), false);
  assert.equal(isTerminal({ type: "toString" }), false);
  const state = new StreamState();
  const future = { type: "citation", url: "https://example.com" };
  assert.deepEqual(state.take(message(1, future)), future);
  assert.equal(state.finished, false);
  state.take(message(2, { type: "done", finishReason: "stop" }));
  assert.equal(state.finished, true);
});

test("data that is not an event is a protocol error", () => {
  const state = new StreamState();
  assert.throws(() => state.take({ id: "", data: "not json" }), EstuaryStreamError);
  assert.throws(() => state.take({ id: "", data: "[1]" }), { code: "protocol_error" });
});
