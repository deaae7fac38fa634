// Compiled by `tsc` (npm run typecheck), never run: the declarations as an app uses them.

import {
  EstuaryClient,
  EstuaryError,
  EstuaryStreamError,
  type ChatEvent,
  type ChatStream,
  type ReconnectInfo,
} from "@estuary/client";
import { useStreamingChat, type StreamingChat } from "@estuary/client/vue";
import { ref } from "vue";

export async function plain(signal: AbortSignal): Promise<string> {
  const client = new EstuaryClient({ baseUrl: "http://127.0.0.1:8080", apiKey: "sk-est-…" });
  const stream: ChatStream = client.chat.stream({
    messages: [{ role: "user", content: "hi" }],
    model: "chat",
    maxTokens: 200,
    temperature: 0.3,
    signal,
    onReconnect: ({ attempt, delayMs }: ReconnectInfo) => console.log(attempt + delayMs),
    onReconnected: () => undefined,
  });
  let text = "";
  for await (const event of stream) {
    switch (event.type) {
      case "start":
        text += event.requestId + (event.provider ?? "");
        break;
      case "content":
      case "reasoning":
        text += event.content;
        break;
      case "tool_call":
        text += event.tool.name + event.tool.arguments + event.index;
        break;
      case "done":
        text += event.finishReason + (event.usage?.completionTokens ?? 0);
        break;
      case "error":
        text += event.error.code + event.error.retryable;
        break;
      case "attempt":
        text += event.provider ?? "";
        break;
      default:
        text += (event satisfies never) ?? "";
    }
  }
  return text + (stream.requestId ?? "") + (stream.lastEventId ?? "");
}

export async function withToken(): Promise<void> {
  const client = new EstuaryClient({
    getToken: async () => "jwt",
    transport: "websocket",
    resume: { maxAttempts: 3 },
    onReconnected: () => console.log("back"),
  });
  try {
    await client.chat.text({ message: "hi", template: "health", variables: { patient: "Li" } });
    await client.chat.cancel("req_1");
  } catch (error) {
    if (error instanceof EstuaryStreamError) console.log(error.code, error.requestId);
    else if (error instanceof EstuaryError) console.log(error.status, error.retryAfter);
  }
  client.close();
}

export function vue(client: EstuaryClient): StreamingChat {
  const model = ref("chat");
  const chat = useStreamingChat({ client, model, system: () => "Be brief." });
  chat.messages.value.push({ role: "user", content: "hi" });
  const busy: boolean = chat.streaming.value || chat.reconnecting.value;
  const partial: string = chat.currentContent.value;
  void chat.sendMessage(`${busy}${partial}${chat.error.value?.message ?? ""}`);
  chat.stop();
  void chat.retry();
  return chat;
}

export const events: ChatEvent[] = [
  { type: "content", content: "a" },
  { type: "done", finishReason: "stop", usage: { promptTokens: 1, completionTokens: 2, estimated: false } },
];
