// Hand-written declarations for `@estuary/client` (src/index.js). Keep in step with the JSDoc.

/** Fields every event may carry: the WebSocket transport tags each event with its stream. */
interface EventBase {
  requestId?: string;
}

/** The first event: the stream's id and who answers. */
export interface StartEvent extends EventBase {
  type: "start";
  requestId: string;
  model: string;
  /** The provider that answered; null only when the stream ended before any upstream did. */
  provider: string | null;
}

/** Thinking tokens (DeepSeek, Kimi, Qwen), when the model sends them. */
export interface ReasoningEvent extends EventBase {
  type: "reasoning";
  content: string;
}

/** A piece of the answer. */
export interface ContentEvent extends EventBase {
  type: "content";
  content: string;
}

/** One tool call, fully assembled; `tool.arguments` is the JSON text as the model wrote it. */
export interface ToolCallEvent extends EventBase {
  type: "tool_call";
  index: number;
  id: string;
  tool: { name: string; arguments: string };
}

/** A failover seam: the answer so far stands, and continues from another target. */
export interface AttemptEvent extends EventBase {
  type: "attempt";
  provider: string;
  model: string;
  /** Why the previous target was left, e.g. "upstream_error". */
  reason: string;
}

export interface Usage {
  promptTokens: number;
  completionTokens: number;
  /** false when the upstream reported the numbers, true when the gateway estimated them. */
  estimated: boolean;
}

export type FinishReason =
  | "stop"
  | "length"
  | "tool_calls"
  | "content_filter"
  | "canceled"
  | "budget"
  | (string & {});

/** The stream ended normally (a last event). */
export interface DoneEvent extends EventBase {
  type: "done";
  finishReason: FinishReason;
  usage?: Usage | null;
}

/** The stream failed after it started (a last event). */
export interface ErrorEvent extends EventBase {
  type: "error";
  error: { code: string; message: string; retryable: boolean };
}

/**
 * An app-API event. Types a newer gateway adds are passed on unchanged too (as plain objects
 * with a `type`), so keep a default branch when switching on `type`.
 */
export type ChatEvent =
  | StartEvent
  | ReasoningEvent
  | ContentEvent
  | ToolCallEvent
  | AttemptEvent
  | DoneEvent
  | ErrorEvent;

/** Every event type this version knows, mapped to whether it ends the stream. */
export declare const EVENT_TYPES: Readonly<Record<ChatEvent["type"], boolean>>;

/** Whether `event` is a stream's last (`done` or `error`). */
export declare function isTerminal(event: { type: string }): boolean;

export interface ResumeOptions {
  /** Reconnections in a row without receiving an event (default 5). */
  maxAttempts?: number;
  /** Upper bound of the first wait, in ms (default 250). */
  baseDelayMs?: number;
  /** No wait is longer than this, in ms (default 5000). */
  maxDelayMs?: number;
}

export declare const DEFAULT_RESUME: Readonly<Required<ResumeOptions>>;

/** What `onReconnect` is told before a resume attempt. */
export interface ReconnectInfo {
  /** 1 for the first attempt after a drop; counts up until an event arrives, then restarts. */
  attempt: number;
  /** How long the client waits before this attempt, in ms. */
  delayMs: number;
}

/** Hooks that let a UI show a resume (SSE transport; the WebSocket transport never resumes). */
export interface ReconnectHooks {
  /** Called before each resume attempt, i.e. before its wait. */
  onReconnect?: (info: ReconnectInfo) => void;
  /** Called when a resumed connection delivers its first new event, just before that event. */
  onReconnected?: () => void;
}

/** The wait before reconnection `attempt` (0-based): uniform in [0, min(cap, base × 2^attempt)). */
export declare function backoffDelay(
  attempt: number,
  options: { baseDelayMs: number; maxDelayMs: number },
  random?: () => number,
): number;

/** A hook set here is called for every stream, before the stream's own. */
export interface ClientOptions extends ReconnectHooks {
  /** The gateway's root, e.g. "https://chat.example.com"; "" (default) is the page's origin. */
  baseUrl?: string;
  /** A gateway key (`sk-est-…`). */
  apiKey?: string;
  /** Called before every request: a gateway key or an end-user JWT. */
  getToken?: () => string | Promise<string>;
  /** "sse" (default): fetch + Server-Sent Events; "websocket": one socket for all chats. */
  transport?: "sse" | "websocket";
  /** Resume after a dropped connection (SSE transport); false turns it off. */
  resume?: ResumeOptions | false;
  /** A `fetch` to use instead of the global one. */
  fetch?: typeof fetch;
  /** A WebSocket constructor, e.g. the `ws` package's on Node < 22. */
  WebSocket?: unknown;
  /** The jitter source (default `Math.random`). */
  random?: () => number;
}

export interface ChatMessageInput {
  role: "system" | "developer" | "user" | "assistant" | "tool" | (string & {});
  content: unknown;
  [field: string]: unknown;
}

/** The hooks (`onReconnect`, `onReconnected`) set here are called after the client's. */
export interface StreamOptions extends ReconnectHooks {
  /** The conversation, OpenAI-shaped; or give `message`. */
  messages?: ChatMessageInput[];
  /** One user message. */
  message?: string;
  /** The model alias; the gateway's default when omitted. */
  model?: string;
  system?: string;
  maxTokens?: number;
  temperature?: number;
  tools?: unknown[];
  /** A server-side prompt template, and the variables it takes. */
  template?: string;
  variables?: Record<string, string>;
  /** Aborting stops the stream and cancels the upstream (`POST /api/chat/{id}/cancel`). */
  signal?: AbortSignal;
  /** Overrides the client's resume options for this stream. */
  resume?: ResumeOptions | false;
}

/** One streamed chat. Iterate it (once) for its events. */
export declare class ChatStream implements AsyncIterable<ChatEvent> {
  /** The stream's id, once the gateway assigned it; null before. */
  readonly requestId: string | null;
  /** The id of the last event delivered (`<requestId>:<seq>`), or null. */
  readonly lastEventId: string | null;
  /** Whether `done` or `error` has arrived. */
  readonly finished: boolean;
  [Symbol.asyncIterator](): AsyncGenerator<ChatEvent, void, undefined>;
  /** Read to the end and return the content; an `error` event rejects with EstuaryStreamError. */
  text(): Promise<string>;
  /** Close the connection and cancel the stream on the gateway. */
  cancel(): void;
}

export declare class Chat {
  /** A streamed chat; nothing is sent until it is iterated. */
  stream(options: StreamOptions): ChatStream;
  /** The whole answer's text. */
  text(options: StreamOptions): Promise<string>;
  /** Stop one of your streams; false if it had already finished. */
  cancel(requestId: string): Promise<boolean>;
}

export declare class EstuaryClient {
  constructor(options?: ClientOptions);
  readonly baseUrl: string;
  readonly transport: "sse" | "websocket";
  readonly chat: Chat;
  /** Close the shared WebSocket, if any. */
  close(): void;
}

/** The gateway refused the request, or could not be reached (`status` 0, "network_error"). */
export declare class EstuaryError extends Error {
  constructor(
    message: string,
    details?: {
      status?: number;
      code?: string;
      type?: string | null;
      retryAfter?: number | null;
      retryable?: boolean;
      requestId?: string | null;
      cause?: unknown;
    },
  );
  /** HTTP status; 0 when there was no HTTP answer. */
  readonly status: number;
  /** e.g. "invalid_api_key", "rate_limited", "model_not_found", "stream_interrupted". */
  readonly code: string;
  /** The error body's `type`, if any. */
  readonly type: string | null;
  /** Seconds to wait before asking again (`Retry-After`), or null. */
  readonly retryAfter: number | null;
  /** Whether asking again may work. */
  readonly retryable: boolean;
  readonly requestId: string | null;
}

/** A started stream failed: "stream_interrupted", or (from `.text()`) its in-band error's code. */
export declare class EstuaryStreamError extends EstuaryError {
  constructor(
    message: string,
    details?: { code?: string; retryable?: boolean; requestId?: string | null; cause?: unknown },
  );
}

/** A message of an event stream. */
export interface SSEMessage {
  data: string;
  /** The `event:` field, "message" when absent. */
  event: string;
  /** The last `id:` seen on the stream so far ("" if none). */
  id: string;
}

/** A sans-IO Server-Sent Events parser: any chunking, split UTF-8, CR/LF/CRLF. */
export declare class SSEParser {
  /** The last `id:` seen on this stream. */
  readonly lastEventId: string;
  /** The messages this chunk completed. */
  feed(chunk: Uint8Array | string): SSEMessage[];
  /** End of stream: flushes; an event without its blank line is dropped. */
  finish(): SSEMessage[];
}
