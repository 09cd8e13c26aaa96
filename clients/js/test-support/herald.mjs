// Test support: a real Herald on a free loopback port, tokens, the HTTP API, a tiny static
// server for browser pages. Every wait is bounded.
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { createServer } from "node:http";
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { createServer as createNetServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
export const HERALD_BIN = resolve(ROOT, process.env.HERALD_BIN || "../../target/debug/herald");
export const API_KEY = "test-api-key";
export const JWT_SECRET = "test-jwt-secret";

export const CONFIG = `
[[channels]]
pattern = "chat:*"
client_publish = true
join_leave_notices = true

[[channels]]
pattern = "tiny:*"
history_size = 2

[[channels]]
pattern = "seq:*"
history_size = 5000
`;

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Resolves when check() returns truthy; rejects with `what` after `ms`. */
export async function until(check, ms = 10000, what = "condition") {
  const end = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(20);
  }
}

export function freePort() {
  return new Promise((resolvePort, reject) => {
    const server = createNetServer();
    server.unref();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolvePort(port));
    });
  });
}

function b64url(value) {
  return Buffer.from(typeof value === "string" ? value : JSON.stringify(value)).toString("base64url");
}

/** An HS256 token, as `herald token` makes them. */
export function token(user, { channels, secret = JWT_SECRET, ttl = 3600 } = {}) {
  const claims = { sub: user, exp: Math.floor(Date.now() / 1000) + ttl };
  if (channels) claims.channels = channels;
  const head = `${b64url({ typ: "JWT", alg: "HS256" })}.${b64url(claims)}`;
  return `${head}.${createHmac("sha256", secret).update(head).digest("base64url")}`;
}

/** Starts Herald; resolves {url, port, api(), stop(), log()}. */
export async function startHerald({ args = [], config = CONFIG } = {}) {
  if (!existsSync(HERALD_BIN)) throw new Error(`no Herald binary at ${HERALD_BIN} (set HERALD_BIN)`);
  const dir = mkdtempSync(join(tmpdir(), "herald-js-"));
  const configFile = join(dir, "herald.toml");
  writeFileSync(configFile, config);
  for (let attempt = 0; ; attempt++) {
    const port = await freePort();
    const child = spawn(
      HERALD_BIN,
      ["--api-key", API_KEY, "--jwt-secret", JWT_SECRET, "--listen", `127.0.0.1:${port}`,
        "--config", configFile, "--shutdown-grace", "1s", ...args],
      { env: { ...process.env, HERALD_LOG: process.env.HERALD_LOG || "warn" }, stdio: ["ignore", "pipe", "pipe"] },
    );
    let output = "";
    child.stdout.on("data", (d) => (output += d));
    child.stderr.on("data", (d) => (output += d));
    let exited = false;
    child.on("exit", () => (exited = true));
    const url = `http://127.0.0.1:${port}`;
    try {
      await until(async () => {
        if (exited) throw new Error(`herald exited: ${output}`);
        try {
          return (await fetch(`${url}/readyz`)).status === 200;
        } catch {
          return false;
        }
      }, 15000, "GET /readyz = 200");
    } catch (e) {
      child.kill("SIGKILL");
      if (attempt < 2 && /address|in use/i.test(output)) continue;
      throw e;
    }
    const api = async (method, path, body) => {
      const response = await fetch(`${url}${path}`, {
        method,
        headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      const text = await response.text();
      if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${text}`);
      return text ? JSON.parse(text) : null;
    };
    const stop = async () => {
      if (exited) return;
      child.kill("SIGTERM");
      const done = await Promise.race([
        new Promise((r) => child.once("exit", () => r(true))),
        sleep(4000).then(() => false),
      ]);
      if (!done) child.kill("SIGKILL");
    };
    return {
      url,
      port,
      api,
      stop,
      log: () => output,
      publish: (envelope) => api("POST", "/api/publish", envelope),
      disconnect: (body) => api("POST", "/api/disconnect", body),
    };
  }
}

/** A static server for browser tests: the client builds, the demo and a blank page. */
export async function startStatic() {
  const files = {
    "/client.js": ["dist/herald.global.js", "text/javascript"],
    "/client.mjs": ["src/herald.js", "text/javascript"],
    "/demo.html": ["demo/index.html", "text/html"],
  };
  const server = createServer((req, res) => {
    const path = new URL(req.url, "http://x").pathname;
    if (path === "/blank.html") {
      res.writeHead(200, { "content-type": "text/html", "cache-control": "no-store" });
      res.end("<!doctype html><meta charset=utf-8><title>blank</title><body></body>");
      return;
    }
    const file = files[path];
    if (!file) {
      res.writeHead(404);
      res.end("not found");
      return;
    }
    res.writeHead(200, { "content-type": `${file[1]}; charset=utf-8`, "cache-control": "no-store" });
    res.end(readFileSync(join(ROOT, file[0])));
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const url = `http://127.0.0.1:${server.address().port}`;
  return { url, close: () => new Promise((r) => server.close(r)) };
}
