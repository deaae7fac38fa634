// The request body: camelCase options to the app API's fields; mistakes are loud.

import assert from "node:assert/strict";
import { test } from "node:test";

import { chatBody } from "../src/request.js";

test("options map to the app API's body fields", () => {
  const signal = new AbortController().signal;
  const body = chatBody({
    messages: [{ role: "user", content: "hi" }],
    model: "chat",
    maxTokens: 100,
    temperature: 0.2,
    template: "health",
    variables: { patient: "Li" },
    system: undefined,
    signal,
    resume: false,
  });
  assert.deepEqual(body, {
    messages: [{ role: "user", content: "hi" }],
    model: "chat",
    max_tokens: 100,
    temperature: 0.2,
    template: "health",
    variables: { patient: "Li" },
  });
});

test("a misspelt option is a TypeError, not silently dropped", () => {
  assert.throws(() => chatBody({ message: "hi", max_tokens: 5 }), TypeError);
});

test("exactly one of messages or message", () => {
  assert.throws(() => chatBody({}), TypeError);
  assert.throws(() => chatBody({ message: "a", messages: [] }), TypeError);
  assert.deepEqual(chatBody({ message: "a" }), { message: "a" });
});
