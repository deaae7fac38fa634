// The client against a real Estuary (`python -m estuary serve`) and its scripted fake upstream.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { EstuaryClient, EstuaryError } from "../src/index.js";
import { ADMIN_KEY, APP_KEY, eventually, startEstuary } from "./support/estuary.js";

const ALIASES = { chat: "fake-model", slow: "slow-model", stoppable: "stoppable-model" };
// TOKENS,GAP_S,TTFT_S: long enough that the client sees the start while the fake still writes
const SCRIPTS = { "slow-model": "20,0.05,0.02", "stoppable-model": "200,0.05,0.02" };
const HI = [{ role: "user", content: "hi" }];

describe("against a real Estuary", () => {
  /** @type {import("./support/estuary.js").RunningEstuary} */
  let estuary;
  /** @type {EstuaryClient} */
  let client;

  before(async () => {
    estuary = await startEstuary({ scripts: SCRIPTS, aliases: ALIASES });
    client = new EstuaryClient({ baseUrl: estuary.url, apiKey: APP_KEY });
  });
  after(() => estuary?.stop());

  test("events arrive one by one, before the upstream has finished", async () => {
    const stream = client.chat.stream({ model: "slow", messages: HI });
    const events = [];
    let upstreamAtFirstContent;
    for await (const event of stream) {
      events.push(event);
      if (event.type === "content" && upstreamAtFirstContent === undefined) {
        const seen = await estuary.fakeRequests();
        upstreamAtFirstContent = seen.filter((r) => r.model === "slow-model").at(-1);
      }
    }
    assert.equal(upstreamAtFirstContent.finished_at, null, "the fake was still writing");
    assert.ok(upstreamAtFirstContent.chunks_sent < 20);
    const types = events.map((event) => event.type);
    assert.deepEqual(types, ["start", ...Array(events.length - 2).fill("content"), "done"]);
    assert.ok(events.length > 3);
    assert.match(stream.requestId ?? "", /^req_/);
    assert.equal(events[0].requestId, stream.requestId);
    assert.equal(stream.lastEventId, `${stream.requestId}:${events.length}`);
    assert.equal(events.at(-1).finishReason, "stop");
    assert.equal(events.at(-1).usage.completionTokens, 20);
  });

  test(".text() is the whole content, multi-byte characters included", async () => {
    const events = [];
    for await (const event of client.chat.stream({ model: "chat", messages: HI })) events.push(event);
    const expected = events
      .filter((event) => event.type === "content")
      .map((event) => event.content)
      .join("");
    const text = await client.chat.stream({ model: "chat", messages: HI }).text();
    assert.equal(text, expected);
    assert.ok(text.includes("世界"));
    assert.equal(await client.chat.text({ model: "chat", message: "hi" }), expected);
  });

  test("getToken is called for every request", async () => {
    let calls = 0;
    const perRequest = new EstuaryClient({
      baseUrl: estuary.url,
      getToken: async () => {
        calls += 1;
        return APP_KEY;
      },
    });
    await perRequest.chat.text({ model: "chat", messages: HI });
    await perRequest.chat.text({ model: "chat", messages: HI });
    assert.equal(calls, 2);
  });

  test("abort stops the fetch, calls the cancel endpoint and the upstream sees the close", async () => {
    /** @type {{url: string, status: number}[]} */
    const cancels = [];
    const recording = new EstuaryClient({
      baseUrl: estuary.url,
      apiKey: APP_KEY,
      fetch: async (url, init) => {
        const response = await fetch(url, init);
        if (String(url).endsWith("/cancel")) cancels.push({ url: String(url), status: response.status });
        return response;
      },
    });
    const controller = new AbortController();
    const stream = recording.chat.stream({ model: "stoppable", messages: HI, signal: controller.signal });
    let contents = 0;
    await assert.rejects(
      async () => {
        for await (const event of stream) {
          if (event.type === "content" && ++contents === 2) controller.abort();
        }
      },
      { name: "AbortError" },
    );
    assert.equal(contents, 2, "no event after the abort");
    const [cancel] = await eventually(async () => cancels.length > 0 && cancels, "a cancel request");
    assert.equal(cancel.url, `${estuary.url}/api/chat/${stream.requestId}/cancel`);
    // 200 if the cancel came first, 409 stream_finished if the closed connection had already
    // ended it (today's server stops at once on a disconnect); 404 would be a wrong id or key.
    assert.ok([200, 409].includes(cancel.status), `cancel answered ${cancel.status}`);
    const seen = await eventually(async () => {
      const record = (await estuary.fakeRequests()).find((r) => r.model === "stoppable-model");
      return record?.client_gone_at != null && record;
    }, "the fake upstream saw the client go");
    assert.ok(seen.chunks_sent < 200);
  });

  test("a bad key is an EstuaryError invalid_api_key (401)", async () => {
    const bad = new EstuaryClient({ baseUrl: estuary.url, apiKey: "sk-est-not-a-real-key" });
    await assert.rejects(bad.chat.text({ model: "chat", messages: HI }), (error) => {
      assert.ok(error instanceof EstuaryError);
      assert.equal(error.status, 401);
      assert.equal(error.code, "invalid_api_key");
      assert.ok(!error.message.includes("sk-est-not-a-real-key"));
      return true;
    });
  });

  test("an unknown model is refused before the stream: 404 model_not_found", async () => {
    await assert.rejects(client.chat.text({ model: "no-such-model", messages: HI }), {
      name: "EstuaryError",
      status: 404,
      code: "model_not_found",
    });
  });

  test("a rate-limited key gets 429 rate_limited with retryAfter", async () => {
    const created = await fetch(`${estuary.url}/admin/keys`, {
      method: "POST",
      headers: { Authorization: `Bearer ${ADMIN_KEY}`, "Content-Type": "application/json" },
      body: JSON.stringify({ name: "one per minute", rpm: 1 }),
    });
    assert.equal(created.status, 201);
    const { key } = await created.json();
    const limited = new EstuaryClient({ baseUrl: estuary.url, apiKey: key });
    await limited.chat.text({ model: "chat", messages: HI });
    await assert.rejects(limited.chat.text({ model: "chat", messages: HI }), (error) => {
      assert.ok(error instanceof EstuaryError);
      assert.equal(error.status, 429);
      assert.equal(error.code, "rate_limited");
      assert.ok(typeof error.retryAfter === "number" && error.retryAfter > 0);
      assert.equal(error.retryable, true);
      return true;
    });
  });

  test("cancel() on a finished stream answers false", async () => {
    const stream = client.chat.stream({ model: "chat", messages: HI });
    await stream.text();
    assert.equal(await client.chat.cancel(/** @type {string} */ (stream.requestId)), false);
  });
});

describe("when the upstream dies mid-stream", () => {
  /** @type {import("./support/estuary.js").RunningEstuary} */
  let estuary;

  before(async () => {
    estuary = await startEstuary({ scripts: { "slow-model": "200,0.05,0.02" }, aliases: ALIASES });
  });
  after(() => estuary?.stop());

  test("the stream ends with one in-band error event, never a quiet end", async () => {
    const client = new EstuaryClient({ baseUrl: estuary.url, apiKey: APP_KEY });
    const stream = client.chat.stream({ model: "slow", messages: HI });
    const events = [];
    for await (const event of stream) {
      events.push(event);
      if (event.type === "content" && events.length === 2) await estuary.killFake();
    }
    assert.equal(events[0].type, "start");
    const last = events.at(-1);
    assert.equal(last.type, "error", `ended with ${JSON.stringify(last)}`);
    assert.match(last.error.code, /^upstream_/);
    assert.equal(events.filter((event) => event.type === "error").length, 1);
    assert.equal(stream.finished, true);
  });
});
