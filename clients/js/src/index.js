/**
 * `@estuary/client`: stream chats from an Estuary gateway in the browser or Node ≥ 18.
 *
 *     import { EstuaryClient } from "@estuary/client";
 *
 *     const client = new EstuaryClient({ baseUrl: "https://chat.example.com", apiKey });
 *     for await (const event of client.chat.stream({ messages, signal })) {
 *       if (event.type === "content") output.textContent += event.content;
 *     }
 *
 * Zero dependencies: `fetch`, `ReadableStream`, `TextDecoder` and `AbortController` only.
 *
 * @module
 */

export { DEFAULT_RESUME, backoffDelay } from "./backoff.js";
export { Chat, EstuaryClient } from "./client.js";
export { EstuaryError, EstuaryStreamError } from "./errors.js";
export { EVENT_TYPES, isTerminal } from "./events.js";
export { SSEParser } from "./sse.js";
export { ChatStream } from "./stream.js";
