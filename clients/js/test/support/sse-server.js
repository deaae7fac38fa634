/**
 * A small node HTTP server that plays the gateway's app API by a script, to test what the real
 * one cannot do yet (resume) or never does (end a stream without its terminal event).
 *
 * The resume contract it implements (DESIGN point 9):
 *   POST /api/chat/stream                  → 200 SSE, `X-Request-Id`, events `id: <rid>:<seq>`
 *   GET  /api/chat/stream/<rid>            → replays from the event after `Last-Event-ID`, then the
 *        Last-Event-ID: <rid>:<seq>          rest; this one replays one event too many on purpose,
 *                                            so the client must skip an id it has already seen
 *   POST /api/chat/<rid>/cancel            → 200 {"canceled": true}
 */

import { once } from "node:events";
import { createServer } from "node:http";

export const REQUEST_ID = "req_scripted";

/**
 * The stream's events: start, `words.length` contents, then `last` (done unless given).
 * @param {string[]} words
 * @param {Record<string, unknown>} [last]
 */
export function scriptedEvents(words, last = { type: "done", finishReason: "stop", usage: null }) {
  return [
    { type: "start", requestId: REQUEST_ID, model: "chat", provider: "scripted" },
    ...words.map((content) => ({ type: "content", content })),
    last,
  ];
}

/**
 * @param {Record<string, unknown>} event
 * @param {number} seq 1-based
 */
function frame(event, seq) {
  return `id: ${REQUEST_ID}:${seq}\ndata: ${JSON.stringify(event)}\n\n`;
}

/**
 * @typedef {object} Connection  what one request to the stream should do
 * @property {number} [status]        answer this status (with an OpenAI-shaped error body) instead
 * @property {number} [cutAfter]      stop after the event with this seq
 * @property {"reset" | "end"} [how]  how to stop: drop the socket (default) or end cleanly
 */

/**
 * Start the server.
 * @param {{events: Record<string, unknown>[], connections: Connection[]}} script
 *   `connections[0]` is the POST, then one per resume GET (the last one repeats)
 */
export async function startScriptedServer({ events, connections }) {
  /** @type {{method: string, url: string, headers: import("node:http").IncomingHttpHeaders}[]} */
  const requests = [];
  let streamRequests = 0;
  const server = createServer((request, response) => {
    requests.push({ method: String(request.method), url: String(request.url), headers: request.headers });
    if (request.method === "POST" && request.url === `/api/chat/${REQUEST_ID}/cancel`) {
      response.writeHead(200, { "Content-Type": "application/json" });
      response.end(JSON.stringify({ canceled: true }));
      return;
    }
    const plan = connections[Math.min(streamRequests, connections.length - 1)];
    streamRequests += 1;
    if (plan.status !== undefined) {
      const headers = { "Content-Type": "application/json", "Retry-After": "1" };
      response.writeHead(plan.status, headers);
      response.end(JSON.stringify({ error: { message: "scripted", type: "x", code: `status_${plan.status}` } }));
      return;
    }
    const lastId = String(request.headers["last-event-id"] ?? "");
    const lastSeq = Number(lastId.split(":").at(-1) || 0);
    // a resume replays the last delivered event again on purpose: the client must skip it
    const from = Math.max(1, lastSeq);
    const until = plan.cutAfter ?? events.length;
    response.writeHead(200, {
      "Content-Type": "text/event-stream; charset=utf-8",
      "Cache-Control": "no-cache, no-transform",
      "X-Request-Id": REQUEST_ID,
    });
    let body = ": ping\n\n";
    for (let seq = from; seq <= until && seq <= events.length; seq += 1) {
      body += frame(events[seq - 1], seq);
    }
    if (plan.cutAfter !== undefined && plan.how !== "end") {
      // once the events are on the wire, drop the connection mid-body, without a goodbye
      response.write(body, () => response.socket?.destroy());
    } else {
      response.end(body);
    }
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = /** @type {import("node:net").AddressInfo} */ (server.address());
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    close: async () => {
      server.closeAllConnections();
      server.close();
      await once(server, "close");
    },
  };
}
