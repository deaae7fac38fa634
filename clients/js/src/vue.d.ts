// Hand-written declarations for `@estuary/client/vue` (src/vue.js).

import type { MaybeRefOrGetter, Ref, ShallowRef } from "vue";

import type { EstuaryClient } from "./index.js";

/** A turn of the conversation. */
export interface ChatMessage {
  role: "user" | "assistant" | (string & {});
  content: string;
}

export interface StreamingChatOptions {
  client: EstuaryClient;
  /** The model alias; a ref (a model picker) is read at each send. */
  model?: MaybeRefOrGetter<string | undefined>;
  /** A system prompt sent before the conversation. */
  system?: MaybeRefOrGetter<string | undefined>;
  maxTokens?: MaybeRefOrGetter<number | undefined>;
  temperature?: MaybeRefOrGetter<number | undefined>;
  template?: MaybeRefOrGetter<string | undefined>;
  variables?: MaybeRefOrGetter<Record<string, string> | undefined>;
  tools?: MaybeRefOrGetter<unknown[] | undefined>;
}

export interface StreamingChat {
  /** The conversation: user messages, and finished (or stopped) assistant answers. */
  messages: Ref<ChatMessage[]>;
  /** Whether an answer is being written. */
  streaming: Ref<boolean>;
  /**
   * True from a dropped connection until the resumed one delivers an event (SSE transport):
   * the answer is not lost, show "Reconnecting…". False again when the answer ends.
   */
  reconnecting: Ref<boolean>;
  /** The answer being written; after a failure, what had arrived before it. */
  currentContent: Ref<string>;
  /** The last failure (an EstuaryError, usually), cleared by the next send. */
  error: ShallowRef<Error | null>;
  /** Append a user message and stream the answer; resolves when it ends, never rejects. */
  sendMessage(text: string): Promise<void>;
  /** Abort the answer (the gateway cancels the upstream); its text so far is kept. */
  stop(): void;
  /** Drop what followed the last user message and ask again. */
  retry(): Promise<void>;
}

export declare function useStreamingChat(options: StreamingChatOptions): StreamingChat;
