// The client in Node against a real Herald: WebSocket through the `ws` package, and
// long-poll through Node's fetch.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { Herald, HeraldError } from "../src/herald.js";
import { freePort, sleep, startHerald, token, until } from "../test-support/herald.mjs";

let herald;
const clients = [];

before(async () => {
  herald = await startHerald();
});

after(async () => {
  for (const h of clients) h.close();
  await herald.stop();
});

/**
 * A client, closed at the end of the file. With `gated: true`, `h.hold()` makes every
 * reconnect wait for its token until `h.release()`, so a cut leaves the client surely away
 * for as long as the test needs, however slow the machine.
 */
function client(user, options = {}) {
  let gate = null;
  const gated = options.gated
    ? {
        getToken: async () => {
          if (gate) await gate.promise;
          return token(user, { channels: options.allowed });
        },
      }
    : {};
  const h = new Herald(herald.url, {
    token: user === undefined ? undefined : token(user, { channels: options.allowed }),
    ...gated,
    WebSocket,
    minDelay: 20,
    maxDelay: 200,
    ...options,
  });
  h.hold = () => {
    let release;
    const promise = new Promise((resolve) => (release = resolve));
    gate = { promise, release };
  };
  h.release = () => {
    if (gate) gate.release();
    gate = null;
  };
  h.errors = [];
  h.on("error", (e) => h.errors.push(e));
  h.cuts = 0;
  h.on("disconnect", () => h.cuts++);
  clients.push(h);
  return h;
}

/** Collects `event` into an array of data. */
function collect(h, event) {
  const got = [];
  h.on(event, (data, ctx) => got.push({ data, ctx }));
  return got;
}

const TRANSPORTS = [["websocket"], ["longpoll"]];

describe("connecting", { timeout: 20000 }, () => {
  test("connect sends ident and resolves with its reply; state goes connecting → connected", async () => {
    const h = client("alice", { channels: ["chat:one"] });
    const states = [];
    h.on("state", (s) => states.push(s));
    const ident = await h.connect();
    assert.equal(ident.user, "alice");
    assert.match(ident.conn, /^c_/);
    assert.ok(ident.channels["chat:one"], "the initial channels are joined by ident");
    assert.ok(ident.channels["@alice"] && ident.channels["*"]);
    assert.deepEqual(states, ["connecting", "connected"]);
    assert.equal(h.state, "connected");
    assert.equal(h.transport, "websocket");
    assert.equal(h.user, "alice");
    assert.deepEqual(h.channels, ["chat:one"]);
    h.close();
    assert.equal(h.state, "disconnected");
  });

  test("without a WebSocket constructor it uses long-poll by itself", async () => {
    const h = client("alice", { WebSocket: null });
    await h.connect();
    assert.equal(h.transport, "longpoll");
    assert.ok(h.sid);
    h.close();
  });

  test("a WebSocket that cannot connect falls back to long-poll after 2 failed opens", async () => {
    const dead = await freePort(); // nothing listens here: every open is refused
    class Refused extends WebSocket {
      constructor(url) {
        super(url.replace(/:\d+\//, `:${dead}/`));
      }
    }
    const h = client("alice", { WebSocket: Refused, channels: ["chat:fb"] });
    const disconnects = [];
    h.on("disconnect", (d) => disconnects.push(d));
    await h.connect();
    assert.equal(h.transport, "longpoll");
    assert.equal(disconnects.length, 2, "two failed WebSocket opens, then long-poll");
    const got = collect(h, "FB");
    await herald.publish({ event: "FB", channels: ["chat:fb"], data: 1 });
    await until(() => got.length === 1, 5000, "the event over long-poll");
  });

  test("a refused token rejects connect with code 4002 and stops", async () => {
    const h = client(undefined, { token: token("alice", { secret: "wrong" }) });
    const disconnects = [];
    h.on("disconnect", (d) => disconnects.push(d));
    const error = await h.connect().then(() => null, (e) => e);
    assert.ok(error instanceof HeraldError);
    assert.equal(error.code, 4002);
    assert.ok(error.reason);
    assert.equal(h.state, "disconnected");
    assert.equal(disconnects.at(-1).code, 4002);
    assert.equal(disconnects.at(-1).reconnect, false);
  });

  test("getToken is asked again after a 4002, and on each reconnect", async () => {
    let calls = 0;
    const h = client(undefined, {
      getToken: async () => {
        calls += 1;
        return calls === 1 ? token("gt", { secret: "wrong" }) : token("gt");
      },
    });
    const ident = await h.connect();
    assert.equal(ident.user, "gt");
    assert.equal(calls, 2, "refused once (4002), then a fresh token");
    await herald.disconnect({ user: "gt", reconnect: true });
    await until(() => calls === 3 && h.state === "connected", 5000, "a reconnect with a third token");
  });

  test("a token that expires on a live connection: Herald ends it (4002) and getToken brings a new one", async () => {
    let calls = 0;
    const h = client(undefined, {
      getToken: async () => {
        calls += 1;
        return token("short", { ttl: calls === 1 ? 2 : 3600 });
      },
    });
    const disconnects = [];
    h.on("disconnect", (d) => disconnects.push(d));
    await h.connect();
    // Herald's sweep runs every 5 s: the 2 s token ends within about 7 s.
    await until(() => disconnects.length === 1 && calls === 2 && h.state === "connected", 12000, "the expiry and a reconnect with a fresh token");
    assert.equal(disconnects[0].code, 4002);
    assert.match(disconnects[0].reason, /expired/);
  });

  test("a token that no longer allows a joined channel: the channel is dropped, the rest reconnects", async () => {
    let narrow = false;
    const h = client(undefined, {
      getToken: async () => token("narrow", { channels: narrow ? ["chat:*"] : ["chat:*", "room:*"] }),
      channels: ["chat:n", "room:n"],
    });
    const dropped = [];
    h.on("unsubscribed", (u) => dropped.push(u.channel));
    await h.connect();
    narrow = true;
    await herald.disconnect({ user: "narrow" });
    await until(() => dropped.length === 1 && h.state === "connected", 5000, "a reconnect without room:n");
    assert.deepEqual(dropped, ["room:n"]);
    assert.deepEqual(h.channels, ["chat:n"]);
  });
});

for (const transports of TRANSPORTS) {
  describe(`operations over ${transports[0]}`, { timeout: 30000 }, () => {
    const t = transports[0];

    test("join, presence, joined/left notices, leave", async () => {
      const a = client(`a-${t}`, { transports });
      const b = client(`b-${t}`, { transports });
      await a.connect();
      await b.connect();
      const reply = await a.join(`chat:room-${t}`, { presence: true });
      assert.equal(typeof reply.offset, "number");
      assert.equal(typeof reply.epoch, "string");
      assert.deepEqual(reply.members.map((m) => m.user), [`a-${t}`]);
      const joined = [];
      const left = [];
      a.on("joined", (j) => joined.push(j));
      a.on("left", (l) => left.push(l));
      await b.join(`chat:room-${t}`);
      await until(() => joined.length === 1, 5000, "a joined notice");
      assert.deepEqual(joined[0], { channel: `chat:room-${t}`, user: `b-${t}`, conn: b.conn });
      const presence = await a.presence(`chat:room-${t}`);
      assert.equal(presence.total, 2);
      assert.deepEqual(presence.members.map((m) => m.user).sort(), [`a-${t}`, `b-${t}`]);
      assert.deepEqual(await b.leave(`chat:room-${t}`), {});
      await until(() => left.length === 1, 5000, "a left notice");
      assert.equal(left[0].user, `b-${t}`);
      assert.deepEqual(b.channels, []);
      assert.equal((await a.presence(`chat:room-${t}`)).total, 1);
    });

    test("publish reaches the other members with ctx {id, ts, via, from}; backend events too", async () => {
      const a = client(`pa-${t}`, { transports, channels: [`chat:pub-${t}`] });
      const b = client(`pb-${t}`, { transports, channels: [`chat:pub-${t}`] });
      await a.connect();
      await b.connect();
      const got = collect(b, "chat:message");
      const mine = collect(a, "chat:message");
      const any = [];
      b.on("*", (data, ctx) => any.push(ctx.event));
      const result = await a.publish(`chat:pub-${t}`, "chat:message", { text: "hi" });
      assert.match(result.id, /^[0-9a-f-]{36}$/);
      assert.equal(typeof result.offset, "number");
      await until(() => got.length === 1, 5000, "the published event");
      const { data, ctx } = got[0];
      assert.deepEqual(data, { text: "hi" });
      assert.equal(ctx.id, result.id);
      assert.equal(typeof ctx.ts, "number");
      assert.deepEqual(ctx.via, { [`chat:pub-${t}`]: result.offset });
      assert.deepEqual(ctx.from, { user: `pa-${t}`, conn: a.conn });
      await herald.publish({ event: "chat:message", channels: [`chat:pub-${t}`], users: [`pb-${t}`], data: 2 });
      await until(() => got.length === 2, 5000, "the backend's event");
      assert.equal(got[1].ctx.from, undefined);
      assert.deepEqual(Object.keys(got[1].ctx.via).sort(), [`@pb-${t}`, `chat:pub-${t}`], "once, through both");
      await a.publish(`chat:pub-${t}`, "chat:message", "echoed", { echo: true });
      await until(() => mine.length === 2 && any.length === 3, 5000, "the echo");
      assert.deepEqual(mine.map((m) => m.data), [2, "echoed"], "the sender gets its own publish only with echo");
      assert.deepEqual(any, ["chat:message", "chat:message", "chat:message"]);
    });

    test("history answers the last events, oldest first", async () => {
      const channel = `chat:hist-${t}`;
      for (let i = 1; i <= 5; i++) await herald.publish({ event: "H", channels: [channel], data: i });
      const h = client(`h-${t}`, { transports });
      await h.connect();
      const page = await h.history(channel, { limit: 3 });
      assert.deepEqual(page.events.map((e) => e.data), [3, 4, 5]);
      assert.equal(page.offset, 5);
      assert.equal(page.more, false, "nothing after the newest");
      const next = await h.history(channel, { since: { offset: 1, epoch: page.epoch }, limit: 2 });
      assert.deepEqual(next.events.map((e) => e.data), [2, 3]);
      assert.equal(next.more, true);
    });

    test("errors reject with the contract's .code and .reason", async () => {
      const h = client(`e-${t}`, { transports, allowed: ["chat:*"] });
      await h.connect();
      const rejection = (p) => p.then(() => assert.fail("resolved"), (e) => e);
      let e = await rejection(h.rpc("cart.add", { n: 1 }));
      assert.ok(e instanceof HeraldError);
      assert.equal(e.code, 4500);
      assert.equal(e.reason, "no rpc backend configured");
      e = await rejection(h.publish("news", "x", 1));
      assert.equal(e.code, 4003);
      assert.match(e.reason, /forbidden/);
      e = await rejection(h.join("secret"));
      assert.equal(e.code, 4003);
      assert.deepEqual(h.channels, [], "a refused join is not kept");
      e = await rejection(h.join("bad name!"));
      assert.equal(e.code, 4000);
      e = await rejection(h.leave("*"));
      assert.equal(e.code, 4003);
      e = await rejection(h.publish("chat:x", "x".repeat(300), 1));
      assert.equal(e.code, 4000);
      e = await rejection(h.publish("chat:x", "big", "x".repeat(70000)));
      assert.equal(e.code, 4009);
      assert.equal(h.state, "connected", "errors leave the connection alone");
      assert.deepEqual(await h.ping(), {});
    });

    test("a cut with reconnect:true recovers exactly the missed events", async () => {
      const channel = `chat:rec-${t}`;
      const h = client(`r-${t}`, { transports, channels: [channel], gated: true });
      const got = collect(h, "N");
      const disconnects = [];
      h.on("disconnect", (d) => disconnects.push(d));
      await h.connect();
      let n = 0;
      for (let cut = 0; cut < 3; cut++) {
        for (let i = 0; i < 5; i++) await herald.publish({ event: "N", channels: [channel], data: ++n });
        await until(() => got.length === n, 5000, `events up to ${n}`);
        h.hold();
        await herald.disconnect({ user: `r-${t}`, reconnect: true });
        await until(() => h.cuts === cut + 1, 5000, "the client to notice the cut");
        for (let i = 0; i < 5; i++) await herald.publish({ event: "N", channels: [channel], data: ++n });
        assert.equal(h.state, "connecting", "these five are missed, to be recovered");
        h.release();
        await until(() => h.state === "connected", 5000, "a reconnect");
      }
      await until(() => got.length >= n, 5000, "every event");
      await sleep(100);
      assert.deepEqual(got.map((g) => g.data), Array.from({ length: n }, (_, i) => i + 1));
      assert.equal(disconnects.length, 3);
      assert.equal(h.stats.duplicates, 0);
      assert.ok(disconnects.every((d) => d.code === 4101 && d.reconnect === true));
      assert.ok(h.stats.recovered >= 3);
    });

    test("disconnect with reconnect:false stops: state disconnected, 'disconnect' with code and reason", async () => {
      const h = client(`s-${t}`, { transports });
      await h.connect();
      const disconnects = [];
      const states = [];
      h.on("disconnect", (d) => disconnects.push(d));
      h.on("state", (s) => states.push(s));
      await herald.disconnect({ user: `s-${t}`, reconnect: false, reason: "banned" });
      await until(() => h.state === "disconnected", 5000, "the stop");
      assert.deepEqual(disconnects, [{ code: 4101, reason: "banned", reconnect: false }]);
      await sleep(300);
      assert.deepEqual(states, ["disconnected"], "no reconnect");
      const e = await h.publish("chat:x", "x", 1).then(() => null, (err) => err);
      assert.equal(e.code, 4101);
    });

    test("publish and rpc made while disconnected wait in the queue and go after reconnecting", async () => {
      const channel = `chat:q-${t}`;
      const sender = client(`qs-${t}`, { transports, channels: [channel], gated: true });
      const reader = client(`qr-${t}`, { transports, channels: [channel] });
      await sender.connect();
      await reader.connect();
      const got = collect(reader, "Q");
      sender.hold();
      await herald.disconnect({ user: `qs-${t}` });
      await until(() => sender.cuts === 1, 5000, "the sender to notice the cut");
      assert.equal(sender.state, "connecting");
      const sent = [1, 2, 3, 4, 5].map((i) => sender.publish(channel, "Q", i));
      const call = sender.rpc("m", {}).then(() => null, (e) => e.code);
      sender.release();
      const results = await Promise.all(sent);
      assert.equal(sender.state, "connected");
      assert.ok(results.every((r) => typeof r.id === "string"));
      assert.equal(await call, 4500, "the queued rpc went too (and no backend answers it)");
      await until(() => got.length === 5, 5000, "the queued publishes");
      assert.deepEqual(got.map((g) => g.data), [1, 2, 3, 4, 5]);
    });
  });
}

describe("client-side bounds", { timeout: 20000 }, () => {
  test("the offline queue is bounded (4503) and rpc has its own timeout (4504)", async () => {
    const h = client("bounded", { queueSize: 3 });
    // Never connected: everything waits in the queue.
    const queued = [1, 2, 3].map((i) => h.publish("chat:b", "x", i));
    const over = await h.publish("chat:b", "x", 4).then(() => null, (e) => e);
    assert.equal(over.code, 4503);
    assert.match(over.reason, /queue full/);
    h.close();
    for (const p of queued) assert.equal((await p.then(() => null, (e) => e)).code, 1000);
    const idle = client("bounded2");
    const started = Date.now();
    const timedOut = await idle.rpc("m", {}, { timeout: 150 }).then(() => null, (e) => e);
    assert.equal(timedOut.code, 4504);
    assert.ok(Date.now() - started < 2000);
    idle.close();
  });

  test("an event seen again (history replayed by a join with since) is delivered once", async () => {
    const channel = "chat:dup";
    const h = client("dup", { channels: [channel] });
    const got = collect(h, "D");
    await h.connect();
    const start = h.position(channel);
    for (let i = 1; i <= 3; i++) await herald.publish({ event: "D", channels: [channel], data: i });
    await until(() => got.length === 3, 5000, "three events");
    const reply = await h.join(channel, { since: start });
    assert.equal(reply.recovered, true);
    await until(() => h.stats.duplicates === 3, 5000, "the replayed events to be dropped");
    assert.deepEqual(got.map((g) => g.data), [1, 2, 3]);
  });

  test("history gone while away: 'unrecovered' names the channel", async () => {
    const channel = "tiny:x";
    const h = client("unrec", { channels: [channel], gated: true });
    const unrecovered = [];
    h.on("unrecovered", (u) => unrecovered.push(u));
    const got = collect(h, "T");
    await h.connect();
    await herald.publish({ event: "T", channels: [channel], data: 0 });
    await until(() => got.length === 1, 5000, "a first event");
    h.hold();
    await herald.disconnect({ user: "unrec" });
    await until(() => h.cuts === 1, 5000, "the cut");
    for (let i = 1; i <= 5; i++) await herald.publish({ event: "T", channels: [channel], data: i });
    h.release();
    await until(() => unrecovered.length === 1, 5000, "'unrecovered'");
    assert.equal(unrecovered[0].channel, channel);
    assert.equal(h.state, "connected");
  });

  test("long-poll: a session ended under the client (404/4404) is replaced and recovered", async () => {
    const channel = "chat:lp404";
    const h = client("lp404", { transports: ["longpoll"], channels: [channel] });
    const got = collect(h, "L");
    await h.connect();
    const sid = h.sid;
    await herald.publish({ event: "L", channels: [channel], data: 1 });
    await until(() => got.length === 1, 5000, "the first event");
    const closed = await fetch(`${herald.url}/lp/close?sid=${sid}`, { method: "POST" });
    assert.equal(closed.status, 204);
    await herald.publish({ event: "L", channels: [channel], data: 2 });
    await herald.publish({ event: "L", channels: [channel], data: 3 });
    await until(() => got.length === 3 && h.sid !== sid, 5000, "a new session with the missed events");
    assert.deepEqual(got.map((g) => g.data), [1, 2, 3]);
  });
});
