/**
 * The JSON body of an app-API chat request, from the caller's camelCase options. No I/O.
 *
 * @module
 */

/** Option name → body field, for every option that goes into the body. */
const BODY_FIELDS = Object.freeze({
  messages: "messages",
  message: "message",
  model: "model",
  system: "system",
  maxTokens: "max_tokens",
  temperature: "temperature",
  tools: "tools",
  template: "template",
  variables: "variables",
});

/** Options that steer the client rather than the request. */
const CLIENT_OPTIONS = new Set(["signal", "resume", "onReconnect", "onReconnected"]);

/**
 * The request body for `options`; a misspelt option is a `TypeError`, not silently dropped.
 * @param {Record<string, unknown>} options
 * @returns {Record<string, unknown>}
 */
export function chatBody(options) {
  /** @type {Record<string, unknown>} */
  const body = {};
  for (const [name, value] of Object.entries(options)) {
    if (CLIENT_OPTIONS.has(name)) continue;
    if (!Object.hasOwn(BODY_FIELDS, name)) {
      throw new TypeError(`unknown chat option: ${name}`);
    }
    if (value !== undefined && value !== null) {
      body[BODY_FIELDS[/** @type {keyof BODY_FIELDS} */ (name)]] = value;
    }
  }
  if ((body.messages === undefined) === (body.message === undefined)) {
    throw new TypeError("give `messages` (a list of {role, content}) or `message` (one string)");
  }
  return body;
}
