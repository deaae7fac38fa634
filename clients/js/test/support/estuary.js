/**
 * A real Estuary for the tests: `python -m estuary fake-upstream --record` and
 * `python -m estuary serve --config <tmp toml>` as child processes on free loopback ports.
 *
 * The Python is the repository's `.venv/bin/python` (`make install` makes it), or `$ESTUARY_PYTHON`.
 */

import { spawn } from "node:child_process";
import { once } from "node:events";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

export const REPO_ROOT = fileURLToPath(new URL("../../../../", import.meta.url));
export const PYTHON = process.env.ESTUARY_PYTHON || join(REPO_ROOT, ".venv", "bin", "python");

export const APP_KEY = "sk-est-js-client-test-key-000000001";
export const ADMIN_KEY = "sk-est-js-client-admin-key-00000002";
const UPSTREAM_KEY = "sk-upstream-js-client-test-0000003";

/** @returns {Promise<number>} a loopback port with nothing listening on it */
export async function freePort() {
  const server = createServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = /** @type {import("node:net").AddressInfo} */ (server.address());
  server.close();
  await once(server, "close");
  return port;
}

/**
 * @param {number} upstreamPort
 * @param {Record<string, string>} aliases alias → upstream model
 */
function configToml(upstreamPort, aliases) {
  const models = Object.entries(aliases)
    .map(([alias, model]) => `[models."${alias}"]\ntargets = ["fake/${model}"]\nidle_timeout_s = 2.0\n`)
    .join("\n");
  return `
[server]
heartbeat_s = 0.2
header_hold_s = 0.3

[auth]
keys = ["\${APP_KEY}"]
admin_key = "\${ADMIN_KEY}"

[ledger]
url = "memory://"

[providers.fake]
format = "openai"
base_url = "http://127.0.0.1:${upstreamPort}/v1"
api_key = "\${UPSTREAM_KEY}"

${models}`;
}

/**
 * Start a child and collect its output (shown only if the start fails).
 * @param {string[]} args
 * @param {Record<string, string>} env
 * @param {string} cwd
 */
function start(args, env, cwd) {
  const child = spawn(PYTHON, args, { env: { ...process.env, ...env }, cwd, stdio: "pipe" });
  // a test process that dies without its `after` hooks must not leave servers behind
  const reap = () => child.kill("SIGKILL");
  process.once("exit", reap);
  child.once("exit", () => process.removeListener("exit", reap));
  let output = "";
  child.stdout.on("data", (data) => (output += data));
  child.stderr.on("data", (data) => (output += data));
  return { child, output: () => output };
}

/**
 * Wait until `url` answers 200, or fail with the child's output.
 * @param {string} url
 * @param {{child: import("node:child_process").ChildProcess, output: () => string}} proc
 */
async function waitUp(url, proc) {
  for (let i = 0; i < 300; i += 1) {
    if (proc.child.exitCode !== null) break;
    try {
      if ((await fetch(url)).ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`${url} did not come up:\n${proc.output()}`);
}

/**
 * @typedef {object} RunningEstuary
 * @property {string} url          the gateway
 * @property {string} fakeUrl      the fake upstream's root
 * @property {() => Promise<any[]>} fakeRequests what the fake upstream saw (`/_fake/requests`)
 * @property {() => Promise<void>} killFake  SIGKILL the fake upstream (mid-stream failures)
 * @property {() => Promise<void>} stop
 */

/**
 * Start a fake upstream and Estuary in front of it.
 * @param {object} [options]
 * @param {Record<string, string>} [options.scripts] upstream model → "TOKENS,GAP_S,TTFT_S"
 * @param {Record<string, string>} [options.aliases] alias → upstream model (default chat → fake-model)
 * @returns {Promise<RunningEstuary>}
 */
export async function startEstuary({ scripts = {}, aliases = { chat: "fake-model" } } = {}) {
  const dir = await mkdtemp(join(tmpdir(), "estuary-js-"));
  const [upstreamPort, port] = [await freePort(), await freePort()];
  const env = { APP_KEY, ADMIN_KEY, UPSTREAM_KEY, FAKE_UPSTREAM_KEY: UPSTREAM_KEY };
  const fakeArgs = ["-m", "estuary", "fake-upstream", "--port", String(upstreamPort), "--record"];
  fakeArgs.push("--tokens", "5", "--gap", "0.005", "--ttft", "0.01");
  for (const [model, spec] of Object.entries(scripts)) fakeArgs.push("--script", `${model}=${spec}`);
  const fake = start(fakeArgs, env, dir);
  const fakeUrl = `http://127.0.0.1:${upstreamPort}`;
  const config = join(dir, "estuary.toml");
  await writeFile(config, configToml(upstreamPort, aliases));
  const gateway = start(["-m", "estuary", "serve", "--config", config, "--port", String(port)], env, dir);
  const url = `http://127.0.0.1:${port}`;
  const stopAll = async () => {
    for (const proc of [gateway, fake]) {
      if (proc.child.exitCode === null && proc.child.signalCode === null) {
        proc.child.kill("SIGTERM");
        await once(proc.child, "exit");
      }
    }
    await rm(dir, { recursive: true, force: true });
  };
  try {
    await waitUp(`${fakeUrl}/_fake/requests`, fake);
    await waitUp(`${url}/healthz`, gateway);
  } catch (error) {
    await stopAll();
    throw error;
  }
  return {
    url,
    fakeUrl,
    fakeRequests: async () => (await fetch(`${fakeUrl}/_fake/requests`)).json(),
    killFake: async () => {
      fake.child.kill("SIGKILL");
      await once(fake.child, "exit");
    },
    stop: stopAll,
  };
}

/**
 * Poll `check` until it returns a truthy value (10 s at most); ordering, not timing.
 * @template T
 * @param {() => Promise<T>} check
 * @param {string} what
 * @returns {Promise<T>}
 */
export async function eventually(check, what) {
  for (let i = 0; i < 500; i += 1) {
    const value = await check();
    if (value) return value;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  throw new Error(`never happened: ${what}`);
}
