// `useStreamingChat` with the real `vue` package, driving a real Estuary. No DOM: refs only.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { effectScope, ref, watch } from "vue";

import { EstuaryClient, EstuaryError } from "../src/index.js";
import { useStreamingChat } from "../src/vue.js";
import { APP_KEY, eventually, startEstuary } from "./support/estuary.js";
import { scriptedEvents, startScriptedServer } from "./support/sse-server.js";

const ALIASES = { chat: "fake-model", slow: "slow-model", endless: "endless-model" };
const SCRIPTS = { "slow-model": "12,0.02,0.02", "endless-model": "400,0.05,0.02" };

describe("useStreamingChat against a real Estuary", () => {
  /** @type {import("./support/estuary.js").RunningEstuary} */
  let estuary;
  /** @type {EstuaryClient} */
  let client;

  before(async () => {
    estuary = await startEstuary({ scripts: SCRIPTS, aliases: ALIASES });
    client = new EstuaryClient({ baseUrl: estuary.url, apiKey: APP_KEY });
  });
  after(() => estuary?.stop());

  test("sendMessage streams the answer into currentContent, then into messages", async () => {
    const scope = effectScope();
    const chat = scope.run(() => useStreamingChat({ client, model: "slow", system: "Be brief." }));
    assert.ok(chat);
    /** @type {string[]} */
    const seen = [];
    const streamingSeen = [];
    scope.run(() => {
      watch(chat.currentContent, (value) => seen.push(value), { flush: "sync" });
      watch(chat.streaming, (value) => streamingSeen.push(value), { flush: "sync" });
    });
    const sent = chat.sendMessage("你好");
    assert.equal(chat.streaming.value, true);
    assert.deepEqual(chat.messages.value, [{ role: "user", content: "你好" }]);
    await sent;

    assert.equal(chat.error.value, null);
    assert.equal(chat.streaming.value, false);
    assert.deepEqual(streamingSeen, [true, false]);
    const [user, answer, ...rest] = chat.messages.value;
    assert.deepEqual(user, { role: "user", content: "你好" });
    assert.equal(answer.role, "assistant");
    assert.equal(rest.length, 0);
    const growing = seen.filter((value) => value !== "");
    assert.ok(growing.length > 1, "the answer grew while it streamed");
    growing.forEach((value, i) => i > 0 && assert.ok(value.startsWith(growing[i - 1])));
    assert.equal(growing.at(-1), answer.content);
    assert.equal(chat.currentContent.value, "");
    scope.stop();
  });

  test("a second message carries the conversation so far", async () => {
    const chat = useStreamingChat({ client, model: "chat" });
    await chat.sendMessage("one");
    await chat.sendMessage("two");
    assert.deepEqual(
      chat.messages.value.map((message) => message.role),
      ["user", "assistant", "user", "assistant"],
    );
    assert.equal(chat.error.value, null);
  });

  test("stop aborts the answer, keeps its text so far, and the upstream is stopped", async () => {
    const chat = useStreamingChat({ client, model: "endless" });
    const sent = chat.sendMessage("go on");
    await eventually(async () => chat.currentContent.value.length > 0, "some content");
    chat.stop();
    assert.equal(chat.streaming.value, false);
    await sent; // resolves, never rejects
    assert.equal(chat.error.value, null, "a stop is not an error");
    const [, partial] = chat.messages.value;
    assert.equal(partial.role, "assistant");
    assert.ok(partial.content.length > 0);
    await eventually(async () => {
      const record = (await estuary.fakeRequests()).find((r) => r.model === "endless-model");
      return record?.client_gone_at != null;
    }, "the fake upstream saw the client go");
  });

  test("errors land in `error`; retry resends the last user message once", async () => {
    let calls = 0;
    const flaky = new EstuaryClient({
      baseUrl: estuary.url,
      getToken: () => (++calls === 1 ? "sk-est-wrong-key-for-this-test" : APP_KEY),
    });
    const chat = useStreamingChat({ client: flaky, model: "chat" });
    await chat.sendMessage("hello");
    assert.ok(chat.error.value instanceof EstuaryError);
    assert.equal(/** @type {EstuaryError} */ (chat.error.value).code, "invalid_api_key");
    assert.equal(chat.streaming.value, false);
    assert.deepEqual(chat.messages.value, [{ role: "user", content: "hello" }]);

    await chat.retry();
    assert.equal(chat.error.value, null);
    assert.deepEqual(
      chat.messages.value.map((message) => message.role),
      ["user", "assistant"],
    );
    assert.equal(chat.messages.value[0].content, "hello");
  });

  test("a model ref is read at each send", async () => {
    const model = ref("no-such-model");
    const chat = useStreamingChat({ client, model });
    await chat.sendMessage("hi");
    assert.equal(/** @type {EstuaryError} */ (chat.error.value).code, "model_not_found");
    model.value = "chat";
    await chat.retry();
    assert.equal(chat.error.value, null);
    assert.equal(chat.messages.value.length, 2);
  });

  test("disposing the scope (a component unmount) stops a running answer", async () => {
    const scope = effectScope();
    const chat = scope.run(() => useStreamingChat({ client, model: "endless" }));
    assert.ok(chat);
    const sent = chat.sendMessage("long");
    await eventually(async () => chat.currentContent.value.length > 0, "some content");
    scope.stop();
    await sent;
    assert.equal(chat.streaming.value, false);
  });
});

describe("useStreamingChat across a dropped connection", () => {
  const WORDS = ["one ", "two ", "three ", "four ", "five"];

  /**
   * A chat on a scripted server that plays the resume contract (test/support/sse-server.js).
   * @param {import("./support/sse-server.js").Connection[]} connections
   * @param {number} [waitMs] the wait before each resume attempt
   */
  async function chatOn(connections, waitMs = 20) {
    const server = await startScriptedServer({ events: scriptedEvents(WORDS), connections });
    const client = new EstuaryClient({
      baseUrl: server.url,
      apiKey: "sk-est-test",
      resume: { maxAttempts: 3, baseDelayMs: waitMs, maxDelayMs: waitMs },
      random: () => 0.999, // every wait is ~waitMs
    });
    const scope = effectScope();
    const chat = scope.run(() => useStreamingChat({ client }));
    assert.ok(chat);
    /** @type {unknown[]} */
    const seen = []; // reconnecting's changes, and whether it was set when content grew
    scope.run(() => {
      watch(chat.reconnecting, (value) => seen.push(value), { flush: "sync" });
      watch(
        chat.currentContent,
        (value) => value !== "" && seen.push(chat.reconnecting.value ? "content while reconnecting" : "content"),
        { flush: "sync" },
      );
    });
    return { chat, seen, close: () => (scope.stop(), server.close()) };
  }

  test("reconnecting is true from the drop until the first event after the resume", async () => {
    const { chat, seen, close } = await chatOn([{ cutAfter: 3 }, {}]);
    try {
      await chat.sendMessage("count");
      assert.deepEqual(seen, ["content", "content", true, false, "content", "content", "content"]);
      assert.equal(chat.error.value, null);
      assert.equal(chat.reconnecting.value, false);
      assert.deepEqual(chat.messages.value.at(-1), { role: "assistant", content: WORDS.join("") });
    } finally {
      await close();
    }
  });

  test("a resume that fails ends reconnecting and sets error, keeping the text so far", async () => {
    const { chat, seen, close } = await chatOn([{ cutAfter: 3 }, { status: 404 }]);
    try {
      await chat.sendMessage("count");
      assert.deepEqual(seen, ["content", "content", true, false]);
      assert.equal(/** @type {EstuaryError} */ (chat.error.value).code, "stream_interrupted");
      assert.equal(chat.currentContent.value, "one two ");
    } finally {
      await close();
    }
  });

  test("stop while reconnecting ends reconnecting", async () => {
    const { chat, close } = await chatOn([{ cutAfter: 3 }, {}], 60_000);
    try {
      const sent = chat.sendMessage("count");
      await eventually(async () => chat.reconnecting.value, "reconnecting");
      chat.stop();
      assert.equal(chat.reconnecting.value, false);
      await sent;
      assert.equal(chat.error.value, null);
      assert.deepEqual(chat.messages.value.at(-1), { role: "assistant", content: "one two " });
    } finally {
      await close();
    }
  });
});
