// The public surface: what each entry point exports, and that the declarations say the same.

import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { test } from "node:test";

import * as client from "@estuary/client";
import * as vue from "@estuary/client/vue";

const INDEX = [
  "Chat",
  "ChatStream",
  "DEFAULT_RESUME",
  "EVENT_TYPES",
  "EstuaryClient",
  "EstuaryError",
  "EstuaryStreamError",
  "SSEParser",
  "backoffDelay",
  "isTerminal",
];

/**
 * The runtime names a declaration file declares (`export declare class|function|const NAME`).
 * @param {string} file
 */
async function declared(file) {
  const text = await readFile(new URL(`../src/${file}`, import.meta.url), "utf8");
  return [...text.matchAll(/^export declare (?:class|function|const) (\w+)/gm)].map((m) => m[1]).sort();
}

test("@estuary/client exports exactly its public API, as declared", async () => {
  assert.deepEqual(Object.keys(client).sort(), INDEX);
  assert.deepEqual(await declared("index.d.ts"), INDEX);
});

test("@estuary/client/vue exports useStreamingChat, as declared", async () => {
  assert.deepEqual(Object.keys(vue), ["useStreamingChat"]);
  assert.deepEqual(await declared("vue.d.ts"), ["useStreamingChat"]);
});

test("the package has no runtime dependencies", async () => {
  const manifest = JSON.parse(await readFile(new URL("../package.json", import.meta.url), "utf8"));
  assert.equal(manifest.dependencies, undefined);
  assert.deepEqual(Object.keys(manifest.peerDependencies), ["vue"]);
});
