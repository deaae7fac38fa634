// Resume after a dropped connection, and streams that end without their terminal event, against a
// scripted node server that implements the documented resume contract (test/support/sse-server.js).

import assert from "node:assert/strict";
import { afterEach, describe, test } from "node:test";

import { EstuaryClient, EstuaryError, EstuaryStreamError } from "../src/index.js";
import { eventually } from "./support/estuary.js";
import { REQUEST_ID, scriptedEvents, startScriptedServer } from "./support/sse-server.js";

const WORDS = ["Es", "tu", "ary ", "流", "式", " works"];
const FAST = { baseDelayMs: 1, maxDelayMs: 5 }; // keeps the waits short; the policy is tested below

/** @type {Awaited<ReturnType<typeof startScriptedServer>> | null} */
let server = null;
afterEach(() => server?.close());

/**
 * @param {Parameters<typeof startScriptedServer>[0]} script
 * @param {Partial<import("../src/index.js").ClientOptions>} [options]
 */
async function setUp(script, options = {}) {
  server = await startScriptedServer(script);
  const client = new EstuaryClient({ baseUrl: server.url, apiKey: "sk-est-test", resume: FAST, ...options });
  return { client, requests: server.requests };
}

/** @param {AsyncIterable<Record<string, unknown>>} stream */
async function collect(stream) {
  const events = [];
  for await (const event of stream) events.push(event);
  return events;
}

const resumes = (/** @type {{method: string}[]} */ requests) =>
  requests.filter((request) => request.method === "GET");

describe("resume", () => {
  test("a dropped stream resumes with Last-Event-ID and no event twice", async () => {
    const events = scriptedEvents(WORDS);
    const { client, requests } = await setUp({ events, connections: [{ cutAfter: 3 }, {}] });
    const stream = client.chat.stream({ message: "hi" });
    assert.deepEqual(await collect(stream), events);
    const [resume] = resumes(requests);
    assert.equal(resume.url, `/api/chat/stream/${REQUEST_ID}`);
    assert.equal(resume.headers["last-event-id"], `${REQUEST_ID}:3`);
    assert.equal(resume.headers.authorization, "Bearer sk-est-test");
    assert.equal(stream.lastEventId, `${REQUEST_ID}:${events.length}`);
  });

  test("several drops in a row are each resumed from where the last one stopped", async () => {
    const events = scriptedEvents(WORDS);
    const connections = [{ cutAfter: 2 }, { cutAfter: 4, how: /** @type {const} */ ("end") }, { cutAfter: 6 }, {}];
    const { client, requests } = await setUp({ events, connections });
    assert.equal(await client.chat.stream({ message: "hi" }).text(), WORDS.join(""));
    assert.deepEqual(
      resumes(requests).map((request) => request.headers["last-event-id"]),
      [`${REQUEST_ID}:2`, `${REQUEST_ID}:4`, `${REQUEST_ID}:6`],
    );
  });

  test("5xx answers to a resume are retried; it gives up after maxAttempts", async () => {
    const events = scriptedEvents(WORDS);
    const { client, requests } = await setUp(
      { events, connections: [{ cutAfter: 3 }, { status: 503 }] },
      { resume: { ...FAST, maxAttempts: 3 } },
    );
    const stream = client.chat.stream({ message: "hi" });
    const seen = [];
    await assert.rejects(
      async () => {
        for await (const event of stream) seen.push(event);
      },
      (error) => {
        assert.ok(error instanceof EstuaryStreamError);
        assert.equal(error.code, "stream_interrupted");
        assert.equal(error.requestId, REQUEST_ID);
        return true;
      },
    );
    assert.deepEqual(seen, events.slice(0, 3), "what arrived was delivered first");
    assert.equal(resumes(requests).length, 3);
  });

  test("a resume the server refuses (404: expired) ends the stream at once", async () => {
    const { client, requests } = await setUp({
      events: scriptedEvents(WORDS),
      connections: [{ cutAfter: 3 }, { status: 404 }],
    });
    await assert.rejects(client.chat.stream({ message: "hi" }).text(), (error) => {
      assert.ok(error instanceof EstuaryStreamError);
      assert.equal(error.code, "stream_interrupted");
      assert.equal(/** @type {EstuaryError} */ (error.cause).status, 404);
      return true;
    });
    assert.equal(resumes(requests).length, 1);
  });

  test("with resume off, a dropped stream is an error, and no resume is tried", async () => {
    const { client, requests } = await setUp(
      { events: scriptedEvents(WORDS), connections: [{ cutAfter: 3 }, {}] },
      { resume: false },
    );
    await assert.rejects(client.chat.stream({ message: "hi" }).text(), {
      name: "EstuaryStreamError",
      code: "stream_interrupted",
    });
    assert.equal(resumes(requests).length, 0);
  });

  test("resume can be turned off for one stream", async () => {
    const { client, requests } = await setUp({
      events: scriptedEvents(WORDS),
      connections: [{ cutAfter: 3, how: "end" }, {}],
    });
    await assert.rejects(client.chat.stream({ message: "hi", resume: false }).text(), {
      code: "stream_interrupted",
    });
    assert.equal(resumes(requests).length, 0);
  });

  test("aborting during the backoff rejects with AbortError and cancels on the server", async () => {
    const { client, requests } = await setUp(
      { events: scriptedEvents(WORDS), connections: [{ cutAfter: 3 }, {}] },
      { resume: { baseDelayMs: 60_000, maxDelayMs: 60_000 }, random: () => 0.999 },
    );
    const controller = new AbortController();
    const stream = client.chat.stream({ message: "hi", signal: controller.signal });
    const reading = collect(stream);
    await eventually(async () => stream.lastEventId === `${REQUEST_ID}:3`, "three events");
    controller.abort();
    await assert.rejects(reading, { name: "AbortError" });
    await eventually(
      async () => requests.some((r) => r.method === "POST" && r.url === `/api/chat/${REQUEST_ID}/cancel`),
      "the cancel request",
    );
    assert.equal(resumes(requests).length, 0);
  });
});

describe("reconnection hooks", () => {
  test("onReconnect comes before each resume attempt, onReconnected before the first new event", async () => {
    const events = scriptedEvents(WORDS);
    const { client, requests } = await setUp(
      { events, connections: [{ cutAfter: 3 }, { status: 503 }, { status: 503 }, {}] },
      { random: () => 0.5 },
    );
    /** @type {unknown[]} */
    const log = [];
    const stream = client.chat.stream({
      message: "hi",
      onReconnect: (info) => log.push({ reconnect: info, resumesSent: resumes(requests).length }),
      onReconnected: () => log.push("reconnected"),
    });
    for await (const event of stream) log.push(event.type === "content" ? event.content : event.type);
    // full jitter with random() = 0.5: half of min(maxDelayMs, baseDelayMs × 2^(attempt - 1))
    assert.deepEqual(log, [
      "start",
      "Es",
      "tu",
      { reconnect: { attempt: 1, delayMs: 0.5 }, resumesSent: 0 },
      { reconnect: { attempt: 2, delayMs: 1 }, resumesSent: 1 },
      { reconnect: { attempt: 3, delayMs: 2 }, resumesSent: 2 },
      "reconnected",
      "ary ",
      "流",
      "式",
      " works",
      "done",
    ]);
  });

  /** @param {unknown[]} log */
  const logging = (log) => ({
    onReconnect: (/** @type {{attempt: number}} */ { attempt }) => log.push(attempt),
    onReconnected: () => log.push("reconnected"),
  });

  test("the attempt count restarts after every resumed event", async () => {
    const events = scriptedEvents(WORDS);
    const { client } = await setUp({ events, connections: [{ cutAfter: 2 }, { cutAfter: 4 }, {}] });
    /** @type {unknown[]} */
    const log = [];
    assert.equal(await client.chat.stream({ message: "hi", ...logging(log) }).text(), WORDS.join(""));
    assert.deepEqual(log, [1, "reconnected", 1, "reconnected"]);
  });

  test("a stream that never drops calls no hook", async () => {
    const { client } = await setUp({ events: scriptedEvents(WORDS), connections: [{}] });
    /** @type {unknown[]} */
    const log = [];
    assert.equal(await client.chat.stream({ message: "hi", ...logging(log) }).text(), WORDS.join(""));
    assert.deepEqual(log, []);
  });

  test("a resume that never works calls onReconnect maxAttempts times and never onReconnected", async () => {
    const { client } = await setUp(
      { events: scriptedEvents(WORDS), connections: [{ cutAfter: 3 }, { status: 503 }] },
      { resume: { ...FAST, maxAttempts: 3 } },
    );
    /** @type {unknown[]} */
    const log = [];
    const stream = client.chat.stream({
      message: "hi",
      onReconnect: ({ attempt }) => log.push(attempt),
      onReconnected: () => log.push("reconnected"),
    });
    await assert.rejects(stream.text(), { code: "stream_interrupted" });
    assert.deepEqual(log, [1, 2, 3]);
  });

  test("the client's hooks run for every stream, before the stream's own", async () => {
    /** @type {string[]} */
    const log = [];
    const { client } = await setUp(
      // two streams, each cut once and resumed
      { events: scriptedEvents(WORDS), connections: [{ cutAfter: 3 }, {}, { cutAfter: 3 }, {}] },
      {
        onReconnect: () => log.push("client: reconnect"),
        onReconnected: () => log.push("client: reconnected"),
      },
    );
    await client.chat.text({ message: "hi" });
    await client.chat.text({
      message: "hi",
      onReconnect: () => log.push("stream: reconnect"),
      onReconnected: () => log.push("stream: reconnected"),
    });
    assert.deepEqual(log, [
      "client: reconnect",
      "client: reconnected",
      "client: reconnect",
      "stream: reconnect",
      "client: reconnected",
      "stream: reconnected",
    ]);
  });

  test("a hook that throws ends the stream with its error and cancels it on the server", async () => {
    const { client, requests } = await setUp({
      events: scriptedEvents(WORDS),
      connections: [{ cutAfter: 3 }, {}],
    });
    const oops = new Error("the UI broke");
    const stream = client.chat.stream({
      message: "hi",
      onReconnect: () => {
        throw oops;
      },
    });
    await assert.rejects(stream.text(), (error) => error === oops);
    assert.equal(resumes(requests).length, 0);
    await eventually(
      async () => requests.some((r) => r.url === `/api/chat/${REQUEST_ID}/cancel`),
      "the cancel request",
    );
  });

  test("a hook that is not a function is a TypeError", () => {
    assert.throws(() => new EstuaryClient({ onReconnect: /** @type {any} */ ("yes") }), TypeError);
    const client = new EstuaryClient({ baseUrl: "http://127.0.0.1:9" });
    assert.throws(
      () => client.chat.stream({ message: "hi", onReconnected: /** @type {any} */ (1) }),
      /onReconnected must be a function/,
    );
  });
});

describe("streams that do not end properly", () => {
  test("a stream that ends cleanly without done or error is an error, never a success", async () => {
    const { client } = await setUp(
      { events: scriptedEvents(WORDS), connections: [{ cutAfter: 4, how: "end" }] },
      { resume: false },
    );
    const stream = client.chat.stream({ message: "hi" });
    const seen = [];
    await assert.rejects(async () => {
      for await (const event of stream) seen.push(event);
    }, EstuaryStreamError);
    assert.equal(seen.length, 4);
    assert.equal(stream.finished, false);
  });

  test(".text() rejects with the code of an in-band error event", async () => {
    const failure = { type: "error", error: { code: "upstream_timeout", message: "slow", retryable: true } };
    const { client } = await setUp({ events: scriptedEvents(["partial"], failure), connections: [{}] });
    await assert.rejects(client.chat.stream({ message: "hi" }).text(), (error) => {
      assert.ok(error instanceof EstuaryStreamError);
      assert.equal(error.code, "upstream_timeout");
      assert.equal(error.retryable, true);
      assert.equal(error.requestId, REQUEST_ID);
      return true;
    });
  });

  test("leaving the loop early cancels the stream on the server", async () => {
    const { client, requests } = await setUp({ events: scriptedEvents(WORDS), connections: [{}] });
    for await (const event of client.chat.stream({ message: "hi" })) {
      if (event.type === "content") break;
    }
    await eventually(
      async () => requests.some((r) => r.url === `/api/chat/${REQUEST_ID}/cancel`),
      "the cancel request",
    );
  });

  test("a refused request is an EstuaryError with the body's code and Retry-After", async () => {
    const { client } = await setUp({ events: [], connections: [{ status: 429 }] });
    await assert.rejects(client.chat.text({ message: "hi" }), (error) => {
      assert.ok(error instanceof EstuaryError && !(error instanceof EstuaryStreamError));
      assert.equal(error.status, 429);
      assert.equal(error.code, "status_429");
      assert.equal(error.retryAfter, 1);
      return true;
    });
  });

  test("an unreachable gateway is an EstuaryError network_error", async () => {
    const client = new EstuaryClient({ baseUrl: "http://127.0.0.1:9", apiKey: "k" });
    await assert.rejects(client.chat.text({ message: "hi" }), { name: "EstuaryError", code: "network_error" });
  });
});
