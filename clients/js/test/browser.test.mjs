// The classic-script build in headless Chromium (playwright-core) against a real Herald.
// Pages come from a small static server on another port, so they talk to Herald
// cross-origin; the client script comes from Herald's /client.js when that is this build,
// and the demo test loads Herald's own `/`.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";
import WebSocket from "ws";
import { Herald } from "../src/herald.js";
import { API_KEY, ROOT, sleep, startHerald, startStatic, token, until } from "../test-support/herald.mjs";

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const OUTPUT = join(ROOT, "test-output");

let site;
let herald;
let browser;
let clientUrl;
const readers = [];

before(async () => {
  site = await startStatic();
  // Compression on, as a browser negotiates it: every page below gets deflated frames.
  herald = await startHerald({ args: ["--cors-origin", site.url, "--ws-compression"] });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
    timeout: 30000,
  });
  const built = readFileSync(join(ROOT, "dist", "herald.global.js"), "utf8");
  let served = null;
  try {
    const response = await fetch(`${herald.url}/client.js`);
    if (response.ok) served = await response.text();
  } catch {}
  if (served === built) {
    clientUrl = `${herald.url}/client.js`;
  } else {
    clientUrl = `${site.url}/client.js`;
    console.log(`# Herald's /client.js ${served === null ? "is missing" : "is not this build"}: the pages load ${clientUrl}`);
  }
  mkdirSync(OUTPUT, { recursive: true });
});

after(async () => {
  for (const r of readers) r.close();
  if (browser) await browser.close();
  if (herald) await herald.stop();
  if (site) await site.close();
});

/** A Node client reading a channel, to see what pages publish. */
async function reader(user, channel, event) {
  const h = new Herald(herald.url, { token: token(user), WebSocket, channels: [channel], minDelay: 20, maxDelay: 200 });
  readers.push(h);
  const got = [];
  h.on(event, (data) => got.push(data));
  await h.connect();
  return got;
}

/**
 * Opens a blank page of the static site, loads the client and starts `window.h`, which
 * pushes each `event`'s data to `window.got`. With `gate`, reconnects wait for the token
 * until the test calls `openGate()` in the page.
 */
async function openPage(context, { user, channels = [], transports, gate = false, persist = false, event = "N" }) {
  const page = await context.newPage();
  page.on("pageerror", (e) => console.log(`# page error (${user}): ${e.message}`));
  await page.goto(`${site.url}/blank.html`);
  await page.addScriptTag({ url: clientUrl });
  const transport = await page.evaluate(
    async ({ server, token, channels, transports, gate, persist, event }) => {
      window.got = [];
      window.cuts = 0;
      window.results = [];
      let open = true;
      const waiting = [];
      window.closeGate = () => (open = false);
      window.openGate = () => {
        open = true;
        waiting.splice(0).forEach((f) => f());
      };
      const options = { token, channels, minDelay: 50, maxDelay: 400, persist };
      if (transports) options.transports = transports;
      if (gate) options.getToken = () => (open ? token : new Promise((r) => waiting.push(() => r(token))));
      window.h = new Herald(server, options);
      h.on(event, (data) => got.push(data));
      h.on("disconnect", () => cuts++);
      await h.connect();
      return h.transport;
    },
    { server: herald.url, token: token(user), channels, transports, gate, persist, event },
  );
  return { page, transport };
}

const count = (page) => page.evaluate(() => got.length);

/** Publishes data first..last on `channel` as `event`, in batches of envelopes. */
async function publishRange(channel, event, first, last, { batch = 10, pause = 0 } = {}) {
  for (let n = first; n <= last; n += batch) {
    const envelopes = [];
    for (let i = n; i < Math.min(n + batch, last + 1); i++) envelopes.push({ event, channels: [channel], data: i });
    const results = await herald.api("POST", "/api/publish", envelopes);
    assert.ok(results.every((r) => r.id), JSON.stringify(results));
    if (pause) await sleep(pause);
  }
}

function tally(got, total) {
  const seen = new Map();
  for (const n of got) seen.set(n, (seen.get(n) || 0) + 1);
  let lost = 0;
  for (let n = 1; n <= total; n++) if (!seen.has(n)) lost++;
  let duplicated = 0;
  for (const times of seen.values()) duplicated += times - 1;
  const inOrder = got.every((n, i) => i === 0 || n > got[i - 1]);
  return { received: got.length, lost, duplicated, inOrder };
}

describe("in Chromium", { timeout: 60000 }, () => {
  test("a. a page joins and receives the backend's publishes", async () => {
    const context = await browser.newContext();
    const { page, transport } = await openPage(context, { user: "pa", channels: ["chat:a"] });
    assert.equal(transport, "websocket");
    await publishRange("chat:a", "N", 1, 20, { batch: 1 });
    await herald.publish({ event: "N", users: ["pa"], data: 21 }); // the personal channel
    await until(async () => (await count(page)) === 21, 10000, "21 events in the page");
    assert.deepEqual(await page.evaluate(() => got), Array.from({ length: 21 }, (_, i) => i + 1));
    // Chromium offered permessage-deflate and Herald took it.
    const wsUrl = herald.url.replace(/^http/, "ws") + "/ws";
    const extensions = await page.evaluate((url) => new Promise((resolve, reject) => {
      const ws = new WebSocket(url);
      ws.onopen = () => { resolve(ws.extensions); ws.close(); };
      ws.onerror = () => reject(new Error("WebSocket failed"));
    }), wsUrl);
    assert.equal(extensions, "permessage-deflate; server_no_context_takeover; client_no_context_takeover");
    await context.close();
  });

  test("b. the WebSocket refused: it falls back to long-poll and still gets everything", async () => {
    const context = await browser.newContext();
    let refused = 0;
    await context.routeWebSocket(/\/ws$/, (ws) => {
      refused += 1;
      ws.close({ code: 1008, reason: "blocked by the test" });
    });
    const { page, transport } = await openPage(context, { user: "pb", channels: ["chat:b"] });
    assert.equal(transport, "longpoll");
    assert.equal(refused, 2, "two refused WebSocket opens before the fallback");
    await publishRange("chat:b", "N", 1, 50);
    await until(async () => (await count(page)) === 50, 10000, "50 events over long-poll");
    assert.deepEqual(await page.evaluate(() => got), Array.from({ length: 50 }, (_, i) => i + 1));
    assert.equal(await page.evaluate(() => h.transport), "longpoll");
    await context.close();
  });

  test("c. 1,000 events while the connection is cut again and again: exactly 1..1000", async () => {
    const TOTAL = 1000;
    const channel = "seq:c";
    const context = await browser.newContext();
    const ws = await openPage(context, { user: "cw", channels: [channel] });
    const lp = await openPage(context, { user: "cl", channels: [channel], transports: ["longpoll"] });
    assert.equal(ws.transport, "websocket");
    assert.equal(lp.transport, "longpoll");
    const cuts = { websocket: 0, longpoll: 0, "longpoll /lp/close": 0 };
    let publishing = true;
    const cutter = (async () => {
      let i = 0;
      while (publishing) {
        await sleep(200);
        if (!publishing) break;
        await herald.disconnect({ user: "cw", reconnect: true });
        cuts.websocket += 1;
        const sid = await lp.page.evaluate(() => h.sid);
        if (i++ % 2 === 0 && sid) {
          const closed = await fetch(`${herald.url}/lp/close?sid=${encodeURIComponent(sid)}`, { method: "POST" });
          if (closed.status === 204) cuts["longpoll /lp/close"] += 1;
        } else {
          await herald.disconnect({ user: "cl", reconnect: true });
          cuts.longpoll += 1;
        }
      }
    })();
    const started = Date.now();
    await publishRange(channel, "N", 1, TOTAL, { batch: 10, pause: 20 });
    publishing = false;
    await cutter;
    const publishMs = Date.now() - started;
    for (const { page } of [ws, lp]) await until(async () => (await count(page)) >= TOTAL, 30000, `${TOTAL} events`);
    await sleep(300); // room for a late duplicate to show
    const report = [];
    for (const [name, { page }, n] of [
      ["websocket", ws, cuts.websocket],
      ["longpoll", lp, cuts.longpoll + cuts["longpoll /lp/close"]],
    ]) {
      const got = await page.evaluate(() => got);
      const stats = await page.evaluate(() => ({ ...h.stats, seen: cuts, transport: h.transport }));
      const t = tally(got, TOTAL);
      const line =
        `[c] ${name}: sent ${TOTAL} received ${t.received} lost ${t.lost} duplicated ${t.duplicated} ` +
        `cuts ${n}${name === "longpoll" ? ` (${cuts["longpoll /lp/close"]} by /lp/close, ${cuts.longpoll} by /api/disconnect)` : ""}` +
        ` disconnects seen by the client ${stats.seen}, duplicates dropped by the client ${stats.duplicates}, in order ${t.inOrder}`;
      console.log(line);
      report.push({ name, t, n, stats, got });
    }
    console.log(`[c] published in ${publishMs} ms`);
    for (const { name, t, n, stats, got } of report) {
      assert.ok(n >= 3, `${name}: at least 3 cuts happened (${n})`);
      assert.ok(stats.seen >= 3, `${name}: the client saw the cuts`);
      assert.equal(stats.transport, name, `${name}: stayed on its transport`);
      assert.equal(t.lost, 0, `${name}: nothing lost`);
      assert.equal(t.duplicated, 0, `${name}: nothing twice`);
      assert.deepEqual(got, Array.from({ length: TOTAL }, (_, i) => i + 1), `${name}: exactly 1..${TOTAL} in order`);
    }
    await context.close();
  });

  test("d. publishes made while offline arrive after reconnecting (offline, backing off, after a reload)", async () => {
    const channel = "chat:d";
    const got = await reader("dr", channel, "M");

    // 1. The browser goes offline: the client drops the connection and queues.
    const context = await browser.newContext();
    const { page } = await openPage(context, { user: "pd", channels: [channel], gate: true });
    await context.setOffline(true);
    await until(() => page.evaluate(() => h.state === "connecting"), 5000, "the page to notice it is offline");
    await page.evaluate((channel) => {
      for (let i = 1; i <= 5; i++) results.push(h.publish(channel, "M", `offline ${i}`).then((r) => r.id));
    }, channel);
    await herald.publish({ event: "N", channels: [channel], data: 1 }); // missed by the page meanwhile
    await sleep(300);
    assert.equal(got.length, 0, "nothing left the page while offline");
    await context.setOffline(false);
    const ids = await page.evaluate(() => Promise.all(results));
    assert.equal(ids.length, 5);
    await until(() => got.length === 5, 10000, "the five offline publishes");
    assert.deepEqual(got, [1, 2, 3, 4, 5].map((i) => `offline ${i}`));
    await until(async () => (await count(page)) === 1, 5000, "the event missed while offline");

    // 2. Cut by the server while the client backs off (its token is held back).
    await page.evaluate(() => closeGate());
    const before = await page.evaluate(() => cuts);
    await herald.disconnect({ user: "pd", reconnect: true });
    await until(() => page.evaluate((before) => cuts === before + 1, before), 5000, "the cut");
    await page.evaluate((channel) => {
      results = [];
      for (let i = 1; i <= 3; i++) results.push(h.publish(channel, "M", `backing off ${i}`));
    }, channel);
    await sleep(200);
    assert.equal(await page.evaluate(() => h.state), "connecting");
    assert.equal(got.length, 5);
    await page.evaluate(() => openGate());
    await page.evaluate(() => Promise.all(results));
    await until(() => got.length === 8, 10000, "the three publishes made while backing off");
    assert.deepEqual(got.slice(5), [1, 2, 3].map((i) => `backing off ${i}`));
    await context.close();

    // 3. persist: true keeps the queue in IndexedDB across a page reload.
    const kept = await browser.newContext();
    const first = await openPage(kept, { user: "pp", channels: [channel], persist: true });
    await kept.setOffline(true);
    await until(() => first.page.evaluate(() => h.state === "connecting"), 5000, "offline");
    await first.page.evaluate((channel) => {
      for (let i = 1; i <= 3; i++) h.publish(channel, "M", `persisted ${i}`).catch(() => {});
    }, channel);
    await sleep(300); // the IndexedDB writes
    await first.page.close(); // the page goes away with its queue in memory
    await kept.setOffline(false);
    await openPage(kept, { user: "pp", channels: [channel], persist: true });
    await until(() => got.length === 11, 10000, "the persisted publishes, sent by the next page");
    assert.deepEqual(got.slice(8), [1, 2, 3].map((i) => `persisted ${i}`));
    await kept.close();
  });

  test("the demo page, served elsewhere (cross-origin): history, presence, publish, 4003 then /api/publish", async () => {
    await herald.publish({ event: "chat:message", channels: ["news:lobby"], data: { text: "Welcome to the news desk", user: "editor" } });
    const context = await browser.newContext({ viewport: { width: 900, height: 560 } });
    const page = await context.newPage();
    const visitor = token("reader", { channels: ["chat:*", "news:*"] });
    const query = `server=${encodeURIComponent(herald.url)}&client=${encodeURIComponent(clientUrl)}&channel=news:lobby`;
    await page.goto(`${site.url}/demo.html?${query}#token=${visitor}`);
    await page.waitForSelector('#state[data-state="connected"]', { timeout: 10000 });
    await page.waitForSelector("#messages li >> text=Welcome to the news desk", { timeout: 10000 });
    await page.waitForSelector("#members li >> text=reader", { timeout: 10000 });
    await page.fill("#text", "Can I post here?");
    await page.click("#send");
    await page.waitForSelector("#refused:not([hidden])", { timeout: 10000 });
    assert.match(await page.textContent("#reason"), /forbidden.*4003/);
    await page.fill("#apikey", API_KEY);
    await page.click("#viaApi");
    await page.waitForSelector("#messages li >> text=Can I post here?", { timeout: 10000 });
    assert.equal(await page.isHidden("#refused"), true);
    await page.screenshot({ path: join(OUTPUT, "demo-cross-origin.png") });
    await context.close();
  });

  test("e. the demo page served by Herald at / (screenshot: test-output/demo.png)", async () => {
    const home = await fetch(`${herald.url}/`);
    const html = await home.text();
    assert.equal(home.status, 200, "Herald serves the demo at /");
    assert.equal(html, readFileSync(join(ROOT, "demo", "index.html"), "utf8"), "Herald's / is this demo/index.html (rebuild the binary)");
    for (const [n, user, text] of [[1, "ada", "Hello from the lobby"], [2, "grace", "Events arrive in order, exactly once"]]) {
      await herald.publish({ event: "chat:message", channels: ["chat:lobby"], data: { text, user, n } });
    }
    const other = await reader("grace", "chat:lobby", "chat:message");
    const context = await browser.newContext({ viewport: { width: 900, height: 560 } });
    const page = await context.newPage();
    await page.goto(`${herald.url}/#token=${token("ada", { channels: ["chat:*"] })}`);
    await page.waitForSelector('#state[data-state="connected"]', { timeout: 10000 });
    await page.waitForSelector("#messages li >> text=Events arrive in order, exactly once", { timeout: 10000 });
    await page.waitForSelector("#members li >> text=grace", { timeout: 10000 });
    await page.fill("#text", "Typed in the demo, published by the client");
    await page.click("#send");
    await page.waitForSelector("#messages li >> text=Typed in the demo, published by the client", { timeout: 10000 });
    await until(() => other.some((d) => d && d.text === "Typed in the demo, published by the client"), 5000, "the demo's publish");
    assert.match(await page.textContent("#transport"), /websocket/);
    await page.screenshot({ path: join(OUTPUT, "demo.png") });
    await context.close();
  });
});
