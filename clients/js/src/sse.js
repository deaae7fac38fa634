/**
 * A sans-IO Server-Sent Events parser: byte (or text) chunks in, complete messages out.
 *
 * It follows the WHATWG "event stream interpretation" rules, as the gateway's own decoder
 * (`estuary.sse`) does: lines end with CRLF, LF or CR; lines starting with ":" are comments
 * (heartbeats such as `: ping`); several `data:` lines join with "\n"; `id:` takes effect when its
 * block ends, and persists across messages; an id containing NUL is ignored; a block cut off by
 * the end of the stream is dropped. Bytes go through one streaming `TextDecoder`, so a multi-byte
 * UTF-8 character split across chunks comes out whole (a leading BOM is skipped, invalid bytes
 * become U+FFFD). A CR that ends a chunk ends its line at once — the message is not held back
 * waiting for the next chunk — and an LF starting the next chunk is then the rest of that CRLF.
 * No I/O, no timers: the transports feed it.
 *
 * @module
 */

const LINE_BREAK = /\r\n|\r|\n/g;

/**
 * @typedef {object} SSEMessage
 * @property {string} data   the `data:` lines joined with "\n"
 * @property {string} event  the `event:` field, "message" when absent
 * @property {string} id     the last event id in effect ("" if the stream never set one)
 */

export class SSEParser {
  constructor() {
    this._decoder = new TextDecoder("utf-8");
    this._pending = ""; // the start of a line whose end has not arrived
    this._skipLF = false; // the last chunk ended with a CR: an LF now is its CRLF's second half
    /** @type {string[]} */
    this._data = [];
    this._hasData = false;
    this._event = "";
    this._idBuffer = "";
    /** The id of the last complete block: what `Last-Event-ID` must carry on resume. */
    this.lastEventId = "";
  }

  /**
   * Take the next chunk and return the messages it completed.
   * @param {Uint8Array | string} chunk
   * @returns {SSEMessage[]}
   */
  feed(chunk) {
    let text = typeof chunk === "string" ? chunk : this._decoder.decode(chunk, { stream: true });
    if (text === "") return []; // e.g. the first bytes of a multi-byte character
    if (this._skipLF && text.startsWith("\n")) text = text.slice(1);
    this._skipLF = text.endsWith("\r");
    return this._lines(this._pending + text);
  }

  /**
   * The stream has ended. A block without its closing blank line is incomplete and, as the
   * standard says, dropped; so is a last line without its line break.
   * @returns {SSEMessage[]}
   */
  finish() {
    const messages = this._lines(this._pending + this._decoder.decode());
    this._pending = "";
    this._data = [];
    this._hasData = false;
    this._event = "";
    return messages;
  }

  /**
   * Take every complete line of `text`; keep the unfinished rest.
   * @param {string} text
   * @returns {SSEMessage[]}
   */
  _lines(text) {
    /** @type {SSEMessage[]} */
    const messages = [];
    let start = 0;
    for (const match of text.matchAll(LINE_BREAK)) {
      const end = match.index ?? 0;
      const message = this._line(text.slice(start, end));
      if (message !== null) messages.push(message);
      start = end + match[0].length;
    }
    this._pending = text.slice(start);
    return messages;
  }

  /**
   * @param {string} line
   * @returns {SSEMessage | null}
   */
  _line(line) {
    if (line === "") return this._dispatch();
    if (line.startsWith(":")) return null; // a comment or a heartbeat
    const colon = line.indexOf(":");
    const name = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (name === "data") {
      this._data.push(value);
      this._hasData = true;
    } else if (name === "event") {
      this._event = value;
    } else if (name === "id" && !value.includes("\0")) {
      this._idBuffer = value;
    } // "retry" and unknown fields are ignored: reconnection is the client's policy
    return null;
  }

  /**
   * A blank line ends a block: its id takes effect, and it is a message if it had data.
   * @returns {SSEMessage | null}
   */
  _dispatch() {
    this.lastEventId = this._idBuffer;
    const message = this._hasData
      ? { data: this._data.join("\n"), event: this._event || "message", id: this.lastEventId }
      : null;
    this._data = [];
    this._hasData = false;
    this._event = "";
    return message;
  }
}
