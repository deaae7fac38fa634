// The repository's golden transcripts (tests/fixtures/**/*.sse, real upstream bytes) parse to the
// same messages here as in the gateway's own decoder (`estuary.sse.SSEDecoder`), however cut.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readFile, readdir } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import { promisify } from "node:util";

import { SSEParser } from "../src/index.js";
import { PYTHON, REPO_ROOT } from "./support/estuary.js";

const FIXTURES = join(REPO_ROOT, "tests", "fixtures");

// Prints {path: [{data, event, id}]} for every path on stdin, as the Python decoder sees each file.
const PYTHON_DECODE = `
import json, sys
from estuary.sse import SSEDecoder
out = {}
for path in sys.stdin.read().split():
    decoder = SSEDecoder()
    with open(path, "rb") as f:
        messages = decoder.feed(f.read()) + decoder.finish()
    out[path] = [{"data": m.data, "event": m.event or "message", "id": m.id or ""} for m in messages]
print(json.dumps(out))
`;

async function transcripts() {
  const entries = await readdir(FIXTURES, { recursive: true });
  return entries.filter((name) => name.endsWith(".sse")).map((name) => join(FIXTURES, name)).sort();
}

/**
 * @param {Uint8Array} bytes
 * @param {number} size
 */
function parseInPieces(bytes, size) {
  const parser = new SSEParser();
  const messages = [];
  for (let at = 0; at < bytes.length; at += size) messages.push(...parser.feed(bytes.subarray(at, at + size)));
  return [...messages, ...parser.finish()];
}

test("every golden transcript parses as the gateway's decoder parses it, in pieces of 1, 7 and whole", async () => {
  const paths = await transcripts();
  assert.ok(paths.length > 10, `found ${paths.length} transcripts under ${FIXTURES}`);
  const child = promisify(execFile)(PYTHON, ["-c", PYTHON_DECODE], { maxBuffer: 64 << 20 });
  child.child.stdin?.end(paths.join("\n"));
  const expected = JSON.parse((await child).stdout);
  for (const path of paths) {
    const bytes = new Uint8Array(await readFile(path));
    for (const size of [1, 7, bytes.length || 1]) {
      assert.deepEqual(parseInPieces(bytes, size), expected[path], `${path} in pieces of ${size}`);
    }
  }
});
