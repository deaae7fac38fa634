// The WebSocket transport against the real gateway's `/api/chat/ws`, and against a tiny server
// (the `ws` package) that plays the same contract for what a real gateway cannot be made to do on
// cue: hold a chat's start, drop the socket mid-answer, refuse a socket with a valid ticket.

import assert from "node:assert/strict";
import { once } from "node:events";
import { createServer } from "node:http";
import { after, afterEach, before, describe, test } from "node:test";

import { WebSocket, WebSocketServer } from "ws";

import { EstuaryClient, EstuaryError, EstuaryStreamError } from "../src/index.js";
import { APP_KEY, eventually, startEstuary } from "./support/estuary.js";

const KEY = "sk-est-ws-test";

/**
 * A gateway stand-in: `POST /api/tickets` and `/api/chat/ws?ticket=…`. The model picks the
 * behaviour: "chat" answers three words, "slow" writes until cancelled, "missing" is refused,
 * "drop" closes the socket mid-answer.
 */
async function startSocketServer({ refuseSockets = false } = {}) {
  const tickets = new Set();
  /** @type {(() => void)[]} */
  const held = [];
  /** @type {Record<string, any>[]} */
  const received = [];
  let ticketsIssued = 0;
  let nextId = 0;
  const http = createServer((request, response) => {
    if (request.url !== "/api/tickets" || request.headers.authorization !== `Bearer ${KEY}`) {
      response.writeHead(401, { "Content-Type": "application/json" });
      response.end(JSON.stringify({ error: { message: "invalid API key", type: "x", code: "invalid_api_key" } }));
      return;
    }
    const ticket = `tkt_${++ticketsIssued}`;
    tickets.add(ticket);
    response.writeHead(200, { "Content-Type": "application/json" });
    response.end(JSON.stringify({ ticket, expiresAt: 0 }));
  });
  const wss = new WebSocketServer({ server: http, path: "/api/chat/ws" });
  wss.on("connection", (socket, request) => {
    const ticket = new URL(String(request.url), "http://x").searchParams.get("ticket");
    if (!tickets.delete(ticket) || refuseSockets) {
      socket.send(JSON.stringify({ type: "error", error: { code: "invalid_api_key", message: "bad ticket", status: 401 } }));
      socket.close(1008);
      return;
    }
    /** @type {Map<string, NodeJS.Timeout>} */
    const running = new Map();
    const send = (/** @type {object} */ event) => socket.send(JSON.stringify(event));
    socket.on("message", (data) => {
      const message = JSON.parse(String(data));
      received.push(message);
      if (message.type === "cancel") {
        clearInterval(running.get(message.requestId));
        send({ type: "done", requestId: message.requestId, finishReason: "canceled", usage: null });
        return;
      }
      const { ref, model } = message;
      if (model === "missing") {
        send({ type: "error", ref, error: { code: "model_not_found", message: "no such model", status: 404 } });
        return;
      }
      const requestId = `req_ws_${++nextId}`;
      if (model === "held") {
        held.push(() => send({ type: "start", ref, requestId, model, provider: "fake" }));
        return;
      }
      send({ type: "start", ref, requestId, model, provider: "fake" });
      let written = 0;
      const timer = setInterval(() => {
        written += 1;
        if (model === "drop" && written === 3) {
          socket.terminate();
        } else if (model === "chat" && written > 3) {
          clearInterval(timer);
          send({ type: "done", requestId, finishReason: "stop", usage: null });
        } else {
          send({ type: "content", requestId, content: `${requestId}:${written} ` });
        }
      }, 2);
      running.set(requestId, timer);
    });
    socket.on("close", () => running.forEach((timer) => clearInterval(timer)));
  });
  http.listen(0, "127.0.0.1");
  await once(http, "listening");
  const { port } = /** @type {import("node:net").AddressInfo} */ (http.address());
  return {
    url: `http://127.0.0.1:${port}`,
    received,
    ticketsIssued: () => ticketsIssued,
    /** Send the `start` of every "held" chat now. */
    releaseHeld: () => held.splice(0).forEach((release) => release()),
    close: async () => {
      for (const client of wss.clients) client.terminate();
      wss.close();
      http.closeAllConnections();
      http.close();
      await once(http, "close");
    },
  };
}

/** @type {Awaited<ReturnType<typeof startSocketServer>> | null} */
let server = null;
/** @type {EstuaryClient | null} */
let client = null;
afterEach(async () => {
  client?.close();
  await server?.close();
});

async function setUp(apiKey = KEY, options = {}) {
  server = await startSocketServer(options);
  client = new EstuaryClient({ baseUrl: server.url, apiKey, transport: "websocket", WebSocket });
  return { client, server };
}

describe("WebSocket transport", () => {
  test("two chats share one socket; each gets its own events, in order", async () => {
    const { client, server } = await setUp();
    const [a, b] = await Promise.all([
      client.chat.stream({ model: "chat", message: "one" }).text(),
      client.chat.stream({ model: "chat", message: "two" }).text(),
    ]);
    const ids = new Set();
    for (const text of [a, b]) {
      const parts = text.trim().split(" ");
      const requestId = parts[0].split(":")[0];
      ids.add(requestId);
      assert.deepEqual(parts, [1, 2, 3].map((n) => `${requestId}:${n}`));
    }
    assert.equal(ids.size, 2);
    assert.equal(server.ticketsIssued(), 1, "one socket for both");
    const chats = server.received.filter((message) => message.type === "chat");
    assert.deepEqual(
      chats.map(({ message, model }) => ({ message, model })).sort((x, y) => x.message.localeCompare(y.message)),
      [
        { message: "one", model: "chat" },
        { message: "two", model: "chat" },
      ],
    );
  });

  test("events are the app API's: start, content, done (the ref tag is removed)", async () => {
    const { client } = await setUp();
    const stream = client.chat.stream({ model: "chat", messages: [{ role: "user", content: "hi" }] });
    const events = [];
    for await (const event of stream) events.push(event);
    assert.deepEqual(
      events.map((event) => event.type),
      ["start", "content", "content", "content", "done"],
    );
    assert.ok(events.every((event) => !("ref" in event)));
    assert.equal(stream.requestId, events[0].requestId);
  });

  test("abort rejects with AbortError and sends a cancel for the request id", async () => {
    const { client, server } = await setUp();
    const controller = new AbortController();
    const stream = client.chat.stream({ model: "slow", message: "hi", signal: controller.signal });
    await assert.rejects(async () => {
      for await (const event of stream) if (event.type === "content") controller.abort();
    }, { name: "AbortError" });
    const cancel = await eventually(
      async () => server.received.find((message) => message.type === "cancel"),
      "a cancel message",
    );
    assert.deepEqual(cancel, { type: "cancel", requestId: stream.requestId });
  });

  test("a chat aborted before its start is cancelled as soon as its id arrives", async () => {
    const { client, server } = await setUp();
    const controller = new AbortController();
    const reading = client.chat.stream({ model: "held", message: "hi", signal: controller.signal }).text();
    await eventually(async () => server.received.some((m) => m.type === "chat"), "the chat message");
    controller.abort();
    await assert.rejects(reading, { name: "AbortError" });
    server.releaseHeld();
    const cancel = await eventually(
      async () => server.received.find((message) => message.type === "cancel"),
      "a cancel message",
    );
    assert.match(cancel.requestId, /^req_ws_/);
  });

  test("a chat refused before it starts is an EstuaryError with the server's code", async () => {
    const { client } = await setUp();
    await assert.rejects(client.chat.text({ model: "missing", message: "hi" }), (error) => {
      assert.ok(error instanceof EstuaryError && !(error instanceof EstuaryStreamError));
      assert.equal(error.code, "model_not_found");
      assert.equal(error.status, 404);
      return true;
    });
  });

  test("a socket that closes mid-answer interrupts the stream; the next chat opens a new one", async () => {
    const { client, server } = await setUp();
    await assert.rejects(client.chat.text({ model: "drop", message: "hi" }), {
      name: "EstuaryStreamError",
      code: "stream_interrupted",
    });
    assert.ok((await client.chat.text({ model: "chat", message: "again" })).length > 0);
    assert.equal(server.ticketsIssued(), 2);
  });

  test("a bad key fails the ticket request: EstuaryError invalid_api_key", async () => {
    const { client } = await setUp("sk-est-wrong");
    await assert.rejects(client.chat.text({ model: "chat", message: "hi" }), {
      name: "EstuaryError",
      status: 401,
      code: "invalid_api_key",
    });
  });

  test("a socket the server refuses fails its chats with the server's error", async () => {
    const { client } = await setUp(KEY, { refuseSockets: true });
    await assert.rejects(client.chat.text({ model: "chat", message: "hi" }), (error) => {
      assert.ok(error instanceof EstuaryError);
      assert.equal(error.code, "invalid_api_key");
      return true;
    });
  });

  const hasGlobalWebSocket = typeof globalThis.WebSocket === "function";
  test("without a WebSocket implementation the error says how to pass one", { skip: hasGlobalWebSocket }, async () => {
    const bare = new EstuaryClient({ baseUrl: "http://127.0.0.1:9", transport: "websocket", WebSocket: null });
    await assert.rejects(bare.chat.text({ message: "hi" }), /pass one/);
  });
});

describe("WebSocket transport against a real Estuary", () => {
  const ALIASES = { chat: "fake-model", stoppable: "stoppable-model" };
  /** @type {import("./support/estuary.js").RunningEstuary} */
  let estuary;
  /** @type {EstuaryClient} */
  let real;

  before(async () => {
    estuary = await startEstuary({ scripts: { "stoppable-model": "200,0.05,0.02" }, aliases: ALIASES });
    real = new EstuaryClient({ baseUrl: estuary.url, apiKey: APP_KEY, transport: "websocket", WebSocket });
  });
  after(async () => {
    real?.close();
    await estuary?.stop();
  });

  test("two chats share the socket; each gets start, its content and done", async () => {
    const streams = [
      real.chat.stream({ model: "chat", message: "one" }),
      real.chat.stream({ model: "chat", message: "two" }),
    ];
    const runs = await Promise.all(
      streams.map(async (stream) => {
        const events = [];
        for await (const event of stream) events.push(event);
        return events;
      }),
    );
    for (const [i, events] of runs.entries()) {
      const types = events.map((event) => event.type);
      assert.deepEqual(types, ["start", ...Array(events.length - 2).fill("content"), "done"]);
      assert.ok(events.every((event) => event.requestId === streams[i].requestId && !("ref" in event)));
      assert.equal(events.at(-1).finishReason, "stop");
    }
    assert.notEqual(streams[0].requestId, streams[1].requestId);
  });

  test("abort sends a cancel; the gateway stops the upstream", async () => {
    const controller = new AbortController();
    const stream = real.chat.stream({ model: "stoppable", message: "hi", signal: controller.signal });
    await assert.rejects(async () => {
      for await (const event of stream) if (event.type === "content") controller.abort();
    }, { name: "AbortError" });
    const seen = await eventually(async () => {
      const record = (await estuary.fakeRequests()).find((r) => r.model === "stoppable-model");
      return record?.client_gone_at != null && record;
    }, "the fake upstream saw the gateway go");
    assert.ok(seen.chunks_sent < 200);
  });

  test("a chat for an unknown model is refused: EstuaryError model_not_found (404)", async () => {
    await assert.rejects(real.chat.text({ model: "no-such-model", message: "hi" }), (error) => {
      assert.ok(error instanceof EstuaryError && !(error instanceof EstuaryStreamError));
      assert.equal(error.code, "model_not_found");
      assert.equal(error.status, 404);
      return true;
    });
  });
});
