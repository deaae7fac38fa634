// The SSE parser: the standard's field rules, and the same messages however the bytes are cut.

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { SSEParser } from "../src/index.js";

const encoder = new TextEncoder();

/**
 * A small seeded PRNG (mulberry32), so a failing case can be replayed from its seed.
 * @param {number} seed
 */
function prng(seed) {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Feed `chunks` and finish; every message parsed.
 * @param {(Uint8Array | string)[]} chunks
 */
function parseAll(chunks) {
  const parser = new SSEParser();
  return [...chunks.flatMap((chunk) => parser.feed(chunk)), ...parser.finish()];
}

/** @param {string} text */
const parse = (text) => parseAll([encoder.encode(text)]);

/**
 * `bytes` cut at the given sizes, or at random points.
 * @param {Uint8Array} bytes
 * @param {() => number} random
 */
function randomCuts(bytes, random) {
  const chunks = [];
  for (let at = 0; at < bytes.length; ) {
    const size = 1 + Math.floor(random() * Math.min(12, bytes.length - at));
    chunks.push(bytes.subarray(at, at + size));
    at += size;
  }
  return chunks;
}

/**
 * @param {Uint8Array} bytes
 * @param {number} size
 */
function fixedCuts(bytes, size) {
  const chunks = [];
  for (let at = 0; at < bytes.length; at += size) chunks.push(bytes.subarray(at, at + size));
  return chunks;
}

describe("SSE fields", () => {
  test("a blank line dispatches; data lines join with a newline", () => {
    assert.deepEqual(parse("data: a\ndata: b\n\n"), [{ data: "a\nb", event: "message", id: "" }]);
  });

  test("LF, CR and CRLF all end lines", () => {
    const expected = [
      { data: "one", event: "message", id: "1" },
      { data: "two", event: "message", id: "2" },
    ];
    for (const eol of ["\n", "\r", "\r\n"]) {
      const text = `id: 1${eol}data: one${eol}${eol}id: 2${eol}data: two${eol}${eol}`;
      assert.deepEqual(parse(text), expected, JSON.stringify(eol));
    }
  });

  test("comments and heartbeats are ignored", () => {
    assert.deepEqual(parse(": ping\n\n:\ndata: x\n: ping\n\n"), [
      { data: "x", event: "message", id: "" },
    ]);
  });

  test("the last id persists across messages; an id with NUL is ignored", () => {
    const messages = parse("id: req_1:1\ndata: a\n\ndata: b\n\nid: bad\0id\ndata: c\n\n");
    assert.deepEqual(
      messages.map((message) => message.id),
      ["req_1:1", "req_1:1", "req_1:1"],
    );
  });

  test("one leading space is dropped from a value, not more; a field without colon is empty", () => {
    assert.deepEqual(parse("data:  two spaces\n\ndata\n\ndata:x\n\n"), [
      { data: " two spaces", event: "message", id: "" },
      { data: "", event: "message", id: "" },
      { data: "x", event: "message", id: "" },
    ]);
  });

  test("event names, unknown fields and retry are handled; no data means no message", () => {
    assert.deepEqual(parse("event: tick\nretry: 10\nfoo: bar\n\nevent: x\n\ndata: y\n\n"), [
      { data: "y", event: "message", id: "" },
    ]);
    assert.deepEqual(parse("event: tick\ndata: 1\n\n"), [{ data: "1", event: "tick", id: "" }]);
  });

  test("an event cut off by the end of the stream is dropped", () => {
    assert.deepEqual(parse("data: whole\n\ndata: cut"), [
      { data: "whole", event: "message", id: "" },
    ]);
    assert.deepEqual(parse("data: whole\n\ndata: cut\n"), [
      { data: "whole", event: "message", id: "" },
    ]);
  });

  test("a final CR counts as a line end at the end of the stream", () => {
    assert.deepEqual(parseAll(["data: a\r", "\r"]), [{ data: "a", event: "message", id: "" }]);
  });

  test("a leading byte order mark is skipped", () => {
    const bytes = new Uint8Array([0xef, 0xbb, 0xbf, ...encoder.encode("data: a\n\n")]);
    assert.deepEqual(parseAll([bytes.subarray(0, 2), bytes.subarray(2)]), [
      { data: "a", event: "message", id: "" },
    ]);
  });

  test("an id takes effect when its block ends: lastEventId never names a lost event", () => {
    const parser = new SSEParser();
    parser.feed(encoder.encode("id: req_9:4\ndata: {}\n\nid: req_9:5\ndata: {"));
    assert.equal(parser.lastEventId, "req_9:4");
    assert.deepEqual(parser.finish(), []);
    assert.equal(parser.lastEventId, "req_9:4");
  });

  test("a message whose block ends with a CR is delivered without waiting for more", () => {
    const parser = new SSEParser();
    assert.deepEqual(parser.feed("data: a\r\r"), [{ data: "a", event: "message", id: "" }]);
    assert.deepEqual(parser.feed("\ndata: b\r\n\r"), [{ data: "b", event: "message", id: "" }]);
    assert.deepEqual(parser.feed("\n"), []);
  });
});

describe("SSE under any chunking", () => {
  const WORDS = ["hello", "世界", "👋🏽", "ü", "naïve", "данные", "{\"a\":1}", "", " ", ":", "x:y", "ok"];
  const EOLS = ["\n", "\r", "\r\n"];

  /**
   * A random stream and the messages it must parse to.
   * @param {() => number} random
   */
  function randomStream(random) {
    const pick = (/** @type {string[]} */ list) => list[Math.floor(random() * list.length)];
    let text = "";
    const expected = [];
    let lastId = "";
    const count = 1 + Math.floor(random() * 6);
    for (let i = 0; i < count; i += 1) {
      const eol = pick(EOLS);
      if (random() < 0.3) text += `: ping${eol}`;
      if (random() < 0.7) {
        lastId = `req_${i}:${i + 1}`;
        text += `id: ${lastId}${eol}`;
      }
      const lines = Array.from({ length: 1 + Math.floor(random() * 3) }, () =>
        Array.from({ length: Math.floor(random() * 4) }, () => pick(WORDS)).join(" "),
      );
      for (const line of lines) text += `data: ${line}${eol}`;
      text += eol;
      expected.push({ data: lines.join("\n"), event: "message", id: lastId });
    }
    return { bytes: encoder.encode(text), expected };
  }

  test("random streams cut at random points (split UTF-8 included) parse the same", () => {
    for (let seed = 1; seed <= 400; seed += 1) {
      const random = prng(seed);
      const { bytes, expected } = randomStream(random);
      assert.deepEqual(parseAll(randomCuts(bytes, random)), expected, `seed ${seed}`);
    }
  });

  test("fragments of 1, 7 and the whole parse the same", () => {
    for (let seed = 1000; seed < 1100; seed += 1) {
      const { bytes, expected } = randomStream(prng(seed));
      for (const size of [1, 7, bytes.length]) {
        assert.deepEqual(parseAll(fixedCuts(bytes, size)), expected, `seed ${seed}, size ${size}`);
      }
    }
  });

  test("a four-byte character split in every way comes out whole", () => {
    const bytes = encoder.encode("data: 👋🏽 杭州\r\n\r\n");
    for (let a = 1; a < bytes.length; a += 1) {
      for (let b = a + 1; b < bytes.length; b += 1) {
        const chunks = [bytes.subarray(0, a), bytes.subarray(a, b), bytes.subarray(b)];
        assert.deepEqual(parseAll(chunks), [{ data: "👋🏽 杭州", event: "message", id: "" }]);
      }
    }
  });
});
