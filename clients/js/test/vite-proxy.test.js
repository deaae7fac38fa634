// A Vite dev server proxying /api to a real Estuary delivers the stream token by token: the
// settings in docs/frontend.md, tried for real. A proxy that buffered would hand over the whole
// answer only once the upstream had finished.

import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";

import { createServer } from "vite";

import { EstuaryClient } from "../src/index.js";
import { APP_KEY, startEstuary } from "./support/estuary.js";

/** @type {import("./support/estuary.js").RunningEstuary} */
let estuary;
/** @type {import("vite").ViteDevServer} */
let vite;
let root = "";

before(async () => {
  estuary = await startEstuary({ scripts: { "slow-model": "20,0.05,0.02" }, aliases: { slow: "slow-model" } });
  root = await mkdtemp(join(tmpdir(), "estuary-vite-"));
  vite = await createServer({
    root,
    logLevel: "silent",
    configFile: false,
    server: {
      host: "127.0.0.1",
      port: 0,
      // The whole setting: forward /api (and /v1) to Estuary. Vite's proxy (http-proxy) streams
      // the body as it comes; Estuary's `Cache-Control: no-transform` keeps compression off.
      proxy: { "/api": estuary.url, "/v1": estuary.url },
    },
  });
  await vite.listen();
});

after(async () => {
  await vite?.close();
  await estuary?.stop();
  if (root) await rm(root, { recursive: true, force: true });
});

test("tokens arrive one by one through the Vite dev server's proxy", async () => {
  const address = vite.httpServer?.address();
  assert.ok(address && typeof address === "object");
  const client = new EstuaryClient({ baseUrl: `http://127.0.0.1:${address.port}`, apiKey: APP_KEY });
  const stream = client.chat.stream({ model: "slow", messages: [{ role: "user", content: "hi" }] });
  let upstreamAtFirstContent;
  let contents = 0;
  for await (const event of stream) {
    if (event.type !== "content") continue;
    contents += 1;
    if (upstreamAtFirstContent === undefined) {
      const seen = await estuary.fakeRequests();
      upstreamAtFirstContent = seen.filter((r) => r.model === "slow-model").at(-1);
    }
  }
  assert.equal(contents, 20);
  assert.equal(upstreamAtFirstContent.finished_at, null, "the fake was still writing");
  assert.ok(upstreamAtFirstContent.chunks_sent < 20);
});
