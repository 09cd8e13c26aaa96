// Herald JavaScript client: one self-contained ES module, no dependencies.
// Works in browsers and in Node >= 18 (pass `WebSocket` from the `ws` package before Node 22,
// or let it use long-poll). The protocol is docs/protocol.md of the Herald repository.
// dist/herald.global.js is generated from this file by build.mjs: do not edit that one.

const VERSION = "0.1.0";

const DEFAULTS = {
  token: undefined,
  getToken: undefined,
  transports: ["websocket", "longpoll"],
  channels: [],
  minDelay: 500,
  maxDelay: 30000,
  fallbackAfter: 2,
  wsRetryAfter: 60000,
  connectTimeout: 10000,
  pingInterval: 20000,
  pingTimeout: 10000,
  pollTimeout: 40000,
  rpcTimeout: 10000,
  queueSize: 100,
  dedupSize: 2048,
  maxMessageSize: 65536,
  persist: false,
  persistKey: undefined,
  WebSocket: undefined,
  fetch: undefined,
};

// Lifecycle events the client emits itself; server events with these names reach only "*".
const RESERVED = new Set([
  "state", "joined", "left", "unsubscribed", "disconnect", "error", "unrecovered",
  "reconnecting", "*",
]);

const CHANNEL_RE = /^[A-Za-z0-9_\-:./]{1,128}$/;

/** An error with the contract's `code` and `reason` (a reply's `code` and `error`). */
export class HeraldError extends Error {
  constructor(code, reason, extra) {
    super(`${reason} (${code})`);
    this.name = "HeraldError";
    this.code = code;
    this.reason = reason;
    if (extra) Object.assign(this, extra);
  }
}

function now() {
  return Date.now();
}

function isChannel(name) {
  return typeof name === "string" && (CHANNEL_RE.test(name) || name === "*" || /^@./.test(name));
}

function decodeText(data) {
  if (typeof data === "string") return data;
  if (data instanceof ArrayBuffer || ArrayBuffer.isView(data)) return new TextDecoder().decode(data);
  if (Array.isArray(data)) return data.map(decodeText).join("");
  return String(data);
}

/** Parses a message holding one frame or several separated by newlines. */
function parseFrames(text, onBad) {
  const frames = [];
  for (const line of text.split("\n")) {
    if (!line.trim()) continue;
    try {
      frames.push(JSON.parse(line));
    } catch (e) {
      onBad(line);
    }
  }
  return frames;
}

function later(fn, ms) {
  return setTimeout(fn, Math.max(0, ms));
}

// ---------------------------------------------------------------------------------------
// Transports. Each calls handlers.open() once ready, handlers.frames(array) for what comes
// in, and handlers.close(code, reason) once when it ends by itself (not after close()).

class WsTransport {
  constructor(url, Ctor, handlers) {
    this.name = "websocket";
    this.sid = null;
    this._h = handlers;
    this._done = false;
    try {
      this._ws = new Ctor(url);
    } catch (e) {
      later(() => this._end(1006, `websocket: ${e && e.message ? e.message : e}`), 0);
      return;
    }
    try {
      this._ws.binaryType = "arraybuffer";
    } catch (e) {
      /* not supported: text is all Herald sends */
    }
    this._ws.onopen = () => {
      if (!this._done) this._h.open();
    };
    this._ws.onmessage = (event) => {
      if (this._done) return;
      const data = event.data;
      if (typeof Blob !== "undefined" && data instanceof Blob) {
        data.text().then((text) => this._deliver(text), () => {});
      } else {
        this._deliver(decodeText(data));
      }
    };
    this._ws.onerror = () => {
      /* a close event follows */
    };
    this._ws.onclose = (event) => {
      this._end(event && event.code ? event.code : 1006, (event && event.reason) || "websocket closed");
    };
  }

  _deliver(text) {
    if (this._done) return;
    const frames = parseFrames(text, (line) => this._h.bad(line));
    if (frames.length) this._h.frames(frames);
  }

  _end(code, reason) {
    if (this._done) return;
    this._done = true;
    this._h.close(code, reason);
  }

  send(frame) {
    if (this._done) return;
    try {
      this._ws.send(JSON.stringify(frame));
    } catch (e) {
      this._end(1006, `websocket send: ${e && e.message ? e.message : e}`);
    }
  }

  close() {
    this._done = true;
    try {
      if (this._ws) this._ws.close(1000, "client closed");
    } catch (e) {
      /* already closed */
    }
  }
}

class LpTransport {
  constructor(base, fetchImpl, pollTimeout, handlers) {
    this.name = "longpoll";
    this.sid = null;
    this._base = base;
    this._fetch = fetchImpl;
    this._pollTimeout = pollTimeout;
    this._h = handlers;
    this._done = false;
    this._ack = 0;
    this._out = [];
    this._sending = false;
    this._abort = null;
    this._start();
  }

  async _start() {
    let answer;
    try {
      const response = await this._fetch(`${this._base}/lp/open`, { method: "POST" });
      if (!response.ok) {
        this._end(response.status === 503 ? 4503 : 1006, `long-poll open: HTTP ${response.status}`);
        return;
      }
      answer = await response.json();
    } catch (e) {
      this._end(1006, `long-poll open: ${e && e.message ? e.message : e}`);
      return;
    }
    if (this._done) {
      this._fireClose(answer && answer.sid);
      return;
    }
    this.sid = answer.sid;
    this._h.open();
    this._flush();
    this._loop();
  }

  _url(path, extra) {
    return `${this._base}/lp/${path}?sid=${encodeURIComponent(this.sid)}${extra || ""}`;
  }

  async _loop() {
    let failures = 0;
    while (!this._done) {
      const controller = typeof AbortController !== "undefined" ? new AbortController() : null;
      this._abort = controller;
      const timer = controller ? later(() => controller.abort(), this._pollTimeout) : null;
      let items;
      try {
        const response = await this._fetch(this._url("poll", `&ack=${this._ack}`), {
          signal: controller ? controller.signal : undefined,
        });
        if (response.status === 404) {
          this._end(4404, "long-poll session ended");
          return;
        }
        if (!response.ok) throw new Error(`HTTP ${response.status}`);
        items = await response.json();
        failures = 0;
      } catch (e) {
        if (this._done) return;
        failures += 1;
        if (failures > 3) {
          this._end(1006, `long-poll poll: ${e && e.message ? e.message : e}`);
          return;
        }
        await new Promise((resolve) => later(resolve, 250 * 2 ** failures));
        continue;
      } finally {
        if (timer) clearTimeout(timer);
      }
      if (this._done) return;
      const frames = [];
      for (const item of Array.isArray(items) ? items : []) {
        if (item && typeof item.seq === "number" && item.seq > this._ack) {
          this._ack = item.seq;
          frames.push(item.frame);
        }
      }
      if (frames.length) this._h.frames(frames);
    }
  }

  send(frame) {
    if (this._done) return;
    this._out.push(frame);
    this._flush();
  }

  // One /lp/send at a time, so frames reach the server in the order they were sent.
  async _flush() {
    if (this._sending || !this.sid || this._done) return;
    this._sending = true;
    while (this._out.length && !this._done) {
      // At most 256 frames and about 512 KiB per request (the server's body limit is 1 MiB).
      let size = 0;
      let n = 0;
      while (n < this._out.length && n < 256) {
        size += JSON.stringify(this._out[n]).length + 1;
        if (n > 0 && size > 524288) break;
        n += 1;
      }
      const batch = this._out.splice(0, n);
      try {
        const response = await this._fetch(this._url("send"), {
          method: "POST",
          body: JSON.stringify(batch),
        });
        if (response.status === 404) {
          this._end(4404, "long-poll session ended");
          break;
        }
        if (response.status === 413) {
          this._h.tooLarge(batch);
        } else if (!response.ok) {
          throw new Error(`HTTP ${response.status}`);
        }
      } catch (e) {
        this._end(1006, `long-poll send: ${e && e.message ? e.message : e}`);
        break;
      }
    }
    this._sending = false;
  }

  _fireClose(sid) {
    if (!sid) return;
    try {
      const p = this._fetch(`${this._base}/lp/close?sid=${encodeURIComponent(sid)}`, {
        method: "POST",
        keepalive: true,
      });
      if (p && p.catch) p.catch(() => {});
    } catch (e) {
      /* best effort */
    }
  }

  _end(code, reason) {
    if (this._done) return;
    this._done = true;
    if (this._abort) this._abort.abort();
    this._h.close(code, reason);
  }

  close() {
    if (this._done && !this.sid) return;
    this._done = true;
    if (this._abort) this._abort.abort();
    this._fireClose(this.sid);
  }
}

// ---------------------------------------------------------------------------------------
// The offline queue's copy in IndexedDB (browsers only, with `persist: true`).

class Store {
  constructor(name) {
    this._name = name;
    this._db = null;
  }

  _open() {
    if (!this._db) {
      this._db = new Promise((resolve, reject) => {
        const request = indexedDB.open(this._name, 1);
        request.onupgradeneeded = () => request.result.createObjectStore("queue", { autoIncrement: true });
        request.onsuccess = () => resolve(request.result);
        request.onerror = () => reject(request.error);
      });
    }
    return this._db;
  }

  async _tx(mode, work) {
    const db = await this._open();
    return new Promise((resolve, reject) => {
      const tx = db.transaction("queue", mode);
      const result = work(tx.objectStore("queue"));
      tx.oncomplete = () => resolve(result && "result" in result ? result.result : undefined);
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    });
  }

  add(value) {
    return this._tx("readwrite", (store) => store.add(value));
  }

  delete(key) {
    return this._tx("readwrite", (store) => store.delete(key));
  }

  async all() {
    const db = await this._open();
    return new Promise((resolve, reject) => {
      const tx = db.transaction("queue", "readonly");
      const store = tx.objectStore("queue");
      const keys = store.getAllKeys();
      const values = store.getAll();
      tx.oncomplete = () => resolve(keys.result.map((key, i) => ({ key, value: values.result[i] })));
      tx.onerror = () => reject(tx.error);
    });
  }
}

// ---------------------------------------------------------------------------------------

export class Herald {
  /**
   * @param {string} url the server's base, http(s)://host:port (ws(s):// works too)
   * @param {object} options see README.md
   */
  constructor(url, options) {
    this.options = Object.assign({}, DEFAULTS, options || {});
    let base = url;
    if (!base && typeof location !== "undefined") base = location.origin;
    base = String(base || "").replace(/\/+$/, "");
    if (/^wss?:/i.test(base)) base = base.replace(/^ws/i, "http");
    this.url = base;
    this._wsUrl = `${base.replace(/^http/i, "ws")}/ws`;
    this._fetch = this.options.fetch || (typeof fetch !== "undefined" ? fetch.bind(globalThis) : null);
    this._WebSocket = this.options.WebSocket || (typeof WebSocket !== "undefined" ? WebSocket : null);

    this._listeners = new Map();
    this._state = "disconnected";
    this._running = false;
    this._stopped = false;
    this._transport = null;
    this._ready = false;
    this._gen = 0;
    this._attempt = 0;
    this._timer = null;
    this._identTimer = null;
    this._pingTimer = null;
    this._lastRecv = 0;
    this._lastDisconnect = null;
    this._wsFailures = 0;
    this._fallbackAt = 0;
    this._useLongpoll = false;
    this._authRetries = 0;
    this._nextId = 0;
    this._pending = new Map();
    this._queue = [];
    this._joinWaiters = [];
    this._connectWaiters = [];
    this._joined = new Set();
    this._positions = new Map();
    this._defaults = new Set();
    this._seen = new Map();
    this._token = this.options.token;
    this._tokenUsed = false;
    this.user = null;
    this.conn = null;
    this.node = null;
    this.stats = { received: 0, duplicates: 0, reconnects: 0, recovered: 0, unrecovered: 0 };

    for (const channel of this.options.channels || []) {
      if (CHANNEL_RE.test(channel)) this._joined.add(channel);
      else later(() => this._emit("error", new HeraldError(4000, `channel: bad channel name ${JSON.stringify(channel)}`)), 0);
    }

    this._store = null;
    this._restored = null;
    if (this.options.persist && typeof indexedDB !== "undefined") {
      this._store = new Store(this.options.persistKey || `herald:${base}`);
    }

    // Offline (browsers): the connection is useless (a WebSocket may stall unnoticed), so it
    // ends now; what is published meanwhile waits in the queue, and recovery fills the gap.
    this._onOffline = () => {
      const transport = this._transport;
      if (this._running && transport) {
        transport.close();
        this._onClose(transport, 1006, "the browser went offline");
      }
    };
    // Back online (browsers): reconnect now instead of at the end of the backoff.
    this._onOnline = () => {
      if (this._running && this._timer && !this._transport) {
        clearTimeout(this._timer);
        this._timer = null;
        this._open();
      }
    };
  }

  // -- events ---------------------------------------------------------------------------

  /** Listens to an event; returns a function that stops listening. */
  on(name, fn) {
    if (!this._listeners.has(name)) this._listeners.set(name, new Set());
    this._listeners.get(name).add(fn);
    return () => this.off(name, fn);
  }

  off(name, fn) {
    const set = this._listeners.get(name);
    if (set) set.delete(fn);
    return this;
  }

  once(name, fn) {
    const off = this.on(name, (...args) => {
      off();
      fn(...args);
    });
    return off;
  }

  _emit(name, ...args) {
    const set = this._listeners.get(name);
    if (!set || set.size === 0) return false;
    for (const fn of [...set]) {
      try {
        fn(...args);
      } catch (e) {
        if (name === "error") {
          if (typeof console !== "undefined") console.error("herald: an error listener threw", e);
        } else {
          this._emit("error", e);
        }
      }
    }
    return true;
  }

  // -- public state -----------------------------------------------------------------------

  get state() {
    return this._state;
  }

  /** "websocket", "longpoll" or null. */
  get transport() {
    return this._transport ? this._transport.name : null;
  }

  /** The long-poll session id while on long-poll, else null. */
  get sid() {
    return this._transport ? this._transport.sid : null;
  }

  /** The ordinary channels this client is in (or will join when it connects). */
  get channels() {
    return [...this._joined];
  }

  /** The last position seen on a channel: {offset, epoch}, or undefined. */
  position(channel) {
    const p = this._positions.get(channel);
    return p ? { offset: p.offset, epoch: p.epoch } : undefined;
  }

  _setState(state) {
    if (this._state === state) return;
    this._state = state;
    this._emit("state", state);
  }

  // -- connecting -------------------------------------------------------------------------

  /** Connects (and reconnects until close()); resolves with the first ident reply's data. */
  connect() {
    if (this._state === "connected" && this._ready) return Promise.resolve(this._identData);
    const promise = new Promise((resolve, reject) => this._connectWaiters.push({ resolve, reject }));
    if (!this._running) {
      this._running = true;
      this._stopped = false;
      this._stopError = null;
      this._attempt = 0;
      this._authRetries = 0;
      this._setState("connecting");
      if (typeof addEventListener === "function" && typeof window !== "undefined") {
        addEventListener("online", this._onOnline);
        addEventListener("offline", this._onOffline);
      }
      if (this._store && !this._restored) {
        this._restored = this._restore().then(() => this._running && !this._transport && !this._timer && this._open());
      } else {
        this._open();
      }
    }
    return promise;
  }

  /** Closes the connection for good (until connect() again); rejects what waits with 1000. */
  close() {
    this._stop(new HeraldError(1000, "client closed"), false);
  }

  _transports() {
    const list = (this.options.transports || DEFAULTS.transports).filter(
      (t) => (t === "websocket" && this._WebSocket) || (t === "longpoll" && this._fetch),
    );
    return list;
  }

  _pickTransport() {
    const list = this._transports();
    if (!list.length) return null;
    if (list.includes("websocket") && list.includes("longpoll")) {
      if (this._useLongpoll && now() - this._fallbackAt > this.options.wsRetryAfter) {
        this._useLongpoll = false;
        this._wsFailures = 0;
      }
      return this._useLongpoll ? "longpoll" : "websocket";
    }
    return list[0];
  }

  async _open() {
    this._timer = null;
    if (!this._running) return;
    const gen = ++this._gen;
    const kind = this._pickTransport();
    if (!kind) {
      this._stop(new HeraldError(4000, "no usable transport: pass the WebSocket option, or allow longpoll (needs fetch)"), true);
      return;
    }
    try {
      await this._refreshToken();
    } catch (e) {
      if (gen !== this._gen || !this._running) return;
      this._emit("error", e instanceof HeraldError ? e : new HeraldError(4002, `getToken failed: ${e && e.message ? e.message : e}`));
      this._reconnect();
      return;
    }
    if (gen !== this._gen || !this._running) return;
    this._setState("connecting");
    this._lastDisconnect = null;
    this._identError = null;
    let transport;
    const handlers = {
      open: () => this._onOpen(transport),
      frames: (frames) => this._onFrames(transport, frames),
      close: (code, reason) => this._onClose(transport, code, reason),
      bad: (line) => this._emit("error", new HeraldError(4000, `unreadable frame from the server: ${line.slice(0, 100)}`)),
      tooLarge: (frames) => {
        for (const frame of frames) {
          const req = frame && this._pending.get(frame.id);
          if (req) this._settle(req, new HeraldError(4009, "frame too large"));
        }
      },
    };
    transport =
      kind === "websocket"
        ? new WsTransport(this._wsUrl, this._WebSocket, handlers)
        : new LpTransport(this.url, this._fetch, this.options.pollTimeout, handlers);
    this._transport = transport;
    this._identTimer = later(() => {
      if (this._transport === transport && !this._ready) {
        transport.close();
        this._onClose(transport, 1006, "no ident reply in time");
      }
    }, this.options.connectTimeout);
  }

  async _refreshToken() {
    const { getToken, token } = this.options;
    if (typeof getToken !== "function") {
      this._token = token;
      return;
    }
    if (!this._tokenUsed && token !== undefined) {
      this._token = token;
    } else {
      this._token = await getToken();
    }
    this._tokenUsed = true;
  }

  _identFrame() {
    const channels = {};
    for (const [channel, p] of this._positions) {
      if (channel.startsWith("@") && channel !== `@${this.user}`) continue;
      if (this._joined.has(channel) || channel === "*" || channel.startsWith("@") || this._defaults.has(channel)) {
        channels[channel] = p.epoch !== undefined ? { offset: p.offset, epoch: p.epoch } : {};
      }
    }
    for (const channel of this._joined) if (!(channel in channels)) channels[channel] = {};
    const frame = { op: "ident", id: ++this._nextId, channels };
    if (this._token !== undefined && this._token !== null && this._token !== "") frame.token = this._token;
    return frame;
  }

  _onOpen(transport) {
    if (transport !== this._transport) return;
    this._lastRecv = now();
    this._sendIdent(transport);
  }

  _sendIdent(transport) {
    const frame = this._identFrame();
    this._identSent = frame.channels;
    this._pending.set(frame.id, { kind: "ident", frame });
    transport.send(frame);
  }

  _onIdent(transport, reply) {
    if (!reply.ok) {
      const error = new HeraldError(reply.code, reply.error || "ident failed");
      if (reply.code === 4002) {
        this._identError = error; // the disconnect 4002 that follows decides
        return;
      }
      const m = reply.code === 4003 && /^forbidden: (.+)$/.exec(reply.error || "");
      const channel = m && m[1];
      if (channel && (this._joined.has(channel) || this._positions.has(channel))) {
        // That channel is no longer allowed: drop it, tell the app, identify without it.
        this._dropChannel(channel);
        this._emit("error", new HeraldError(4003, reply.error, { channel }));
        this._emit("unsubscribed", { channel, code: 4003, reason: reply.error });
        this._rejectJoinWaiters(channel, error);
        this._sendIdent(transport);
        return;
      }
      if (reply.code === 4003 || reply.code === 4000) {
        this._stop(error, true);
        return;
      }
      transport.close();
      this._onClose(transport, reply.code, reply.error);
      return;
    }
    const data = reply.data || {};
    clearTimeout(this._identTimer);
    this._identTimer = null;
    if (this.user !== null && data.user !== this.user) {
      for (const channel of [...this._positions.keys()]) if (channel.startsWith("@")) this._positions.delete(channel);
    }
    this.user = data.user;
    this.conn = data.conn;
    this.node = data.node;
    this._identData = data;
    const sent = this._identSent || {};
    const unrecovered = [];
    for (const [channel, info] of Object.entries(data.channels || {})) {
      if (!this._joined.has(channel) && channel !== "*" && !channel.startsWith("@") && !(channel in sent)) {
        this._defaults.add(channel); // a server default channel
      }
      const had = sent[channel];
      const mine = this._positions.get(channel);
      if (info.recovered && had && had.offset !== undefined && mine) {
        mine.epoch = info.epoch;
        this.stats.recovered += 1;
      } else {
        if (had && had.offset !== undefined && !info.recovered) unrecovered.push({ channel, offset: info.offset, epoch: info.epoch });
        this._positions.set(channel, { offset: info.offset, epoch: info.epoch });
      }
    }
    this._ready = true;
    this._attempt = 0;
    this._authRetries = 0;
    if (transport.name === "websocket") this._wsFailures = 0;
    for (const waiter of this._joinWaiters.splice(0)) {
      const info = (data.channels || {})[waiter.channel];
      if (info) waiter.resolve({ offset: info.offset, epoch: info.epoch, recovered: !!info.recovered });
      else waiter.reject(new HeraldError(4003, `not joined: ${waiter.channel}`));
    }
    this._startPing(transport);
    this._setState("connected");
    for (const waiter of this._connectWaiters.splice(0)) waiter.resolve(data);
    for (const u of unrecovered) {
      this.stats.unrecovered += 1;
      this._emit("unrecovered", u);
    }
    this._flush();
  }

  _startPing(transport) {
    clearInterval(this._pingTimer);
    this._pingTimer = null;
    if (transport.name !== "websocket" || !(this.options.pingInterval > 0)) return;
    const { pingInterval, pingTimeout } = this.options;
    let pinged = 0;
    this._pingTimer = setInterval(() => {
      if (this._transport !== transport) return;
      const quiet = now() - this._lastRecv;
      if (quiet >= pingInterval + pingTimeout) {
        transport.close();
        this._onClose(transport, 1006, "no answer to ping");
      } else if (quiet >= pingInterval && now() - pinged >= pingInterval) {
        pinged = now();
        const id = ++this._nextId;
        this._pending.set(id, { kind: "ping" });
        transport.send({ op: "ping", id });
      }
    }, Math.max(50, Math.min(pingInterval, pingTimeout) / 4));
    if (this._pingTimer && typeof this._pingTimer.unref === "function") this._pingTimer.unref();
  }

  // -- incoming frames ----------------------------------------------------------------------

  _onFrames(transport, frames) {
    if (transport !== this._transport) return;
    this._lastRecv = now();
    for (const frame of frames) {
      if (transport !== this._transport) return;
      if (!frame || typeof frame !== "object") continue;
      switch (frame.op) {
        case "event":
          this._onEvent(frame);
          break;
        case "reply":
          this._onReply(transport, frame);
          break;
        case "joined":
        case "left":
          this._emit(frame.op, { channel: frame.channel, user: frame.user, conn: frame.conn });
          break;
        case "unsubscribed":
          this._dropChannel(frame.channel);
          this._emit("unsubscribed", { channel: frame.channel });
          break;
        case "disconnect":
          this._lastDisconnect = { code: frame.code, reason: frame.reason, reconnect: !!frame.reconnect };
          transport.close();
          this._onClose(transport, frame.code, frame.reason);
          return;
        default:
          break;
      }
    }
  }

  _onEvent(frame) {
    const via = frame.via || {};
    for (const channel of Object.keys(via)) {
      const p = this._positions.get(channel);
      if (p && typeof via[channel] === "number" && via[channel] > p.offset) p.offset = via[channel];
    }
    if (frame.id !== undefined) {
      if (this._seen.has(frame.id)) {
        this._seen.delete(frame.id); // least recently used goes first: this one is fresh again
        this._seen.set(frame.id, true);
        this.stats.duplicates += 1;
        return;
      }
      this._seen.set(frame.id, true);
      if (this._seen.size > this.options.dedupSize) this._seen.delete(this._seen.keys().next().value);
    }
    this.stats.received += 1;
    const ctx = { id: frame.id, ts: frame.ts, via, from: frame.from, event: frame.event };
    if (!RESERVED.has(frame.event)) this._emit(frame.event, frame.data, ctx);
    this._emit("*", frame.data, ctx);
  }

  _onReply(transport, frame) {
    if (frame.id === undefined || frame.id === null) {
      if (!frame.ok) this._emit("error", new HeraldError(frame.code, frame.error || "error"));
      return;
    }
    const req = this._pending.get(frame.id);
    if (!req) return; // timed out, or from before a reconnect
    this._pending.delete(frame.id);
    if (req.kind === "ident") {
      this._onIdent(transport, frame);
      return;
    }
    if (req.kind === "ping") return;
    if (frame.ok) {
      this._settle(req, null, frame.data);
      return;
    }
    const error = new HeraldError(frame.code, frame.error || "error");
    if (frame.code === 4029 && (req.kind === "publish" || req.kind === "rpc") && req.tries < 5) {
      req.tries += 1;
      req.retryTimer = later(() => {
        req.retryTimer = null;
        if (req.done) return;
        if (this._ready && this._transport) this._send(req);
        else this._queue.unshift(req);
      }, 500 * req.tries + Math.random() * 500);
      return;
    }
    this._settle(req, error);
  }

  // -- requests -----------------------------------------------------------------------------

  _request(kind, frame, timeout, extra) {
    return new Promise((resolve, reject) => {
      const req = Object.assign({ kind, frame, resolve, reject, tries: 0, done: false }, extra || {});
      if (this._stopped) {
        reject(this._stopError || new HeraldError(1000, "client closed"));
        return;
      }
      if (this.options.maxMessageSize > 0) {
        const size = JSON.stringify(frame).length + 16;
        if (size > this.options.maxMessageSize) {
          reject(new HeraldError(4009, `frame too large: about ${size} bytes, over maxMessageSize ${this.options.maxMessageSize}`));
          return;
        }
      }
      if (timeout > 0) req.timer = later(() => this._settle(req, new HeraldError(4504, `${kind} timed out after ${timeout} ms`)), timeout);
      if (this._ready && this._transport) {
        this._send(req);
        return;
      }
      if (this._queue.length >= this.options.queueSize) {
        this._settle(req, new HeraldError(4503, `offline queue full (queueSize ${this.options.queueSize}): not sent`));
        return;
      }
      this._queue.push(req);
      if (this._store && req.persist !== false && (kind === "publish" || kind === "rpc")) {
        req.stored = this._store.add({ kind, frame }).catch(() => undefined);
      }
    });
  }

  _send(req) {
    const id = ++this._nextId;
    req.frame = Object.assign({}, req.frame, { id });
    req.id = id;
    this._pending.set(id, req);
    this._transport.send(req.frame);
  }

  _flush() {
    while (this._queue.length && this._ready && this._transport) {
      const req = this._queue.shift();
      if (!req.done) this._send(req);
    }
  }

  _settle(req, error, data) {
    if (req.done) return;
    req.done = true;
    clearTimeout(req.timer);
    clearTimeout(req.retryTimer);
    if (req.id !== undefined && this._pending.get(req.id) === req) this._pending.delete(req.id);
    const i = this._queue.indexOf(req);
    if (i >= 0) this._queue.splice(i, 1);
    if (req.stored) req.stored.then((key) => key !== undefined && this._store.delete(key).catch(() => {}));
    if (req.restoredKey !== undefined) this._store.delete(req.restoredKey).catch(() => {});
    if (error) {
      if (req.onJoinError) req.onJoinError();
      req.reject(error);
    } else {
      if (req.onJoin) req.onJoin(data);
      req.resolve(req.map ? req.map(data) : data);
    }
  }

  async _restore() {
    let items = [];
    try {
      items = await this._store.all();
    } catch (e) {
      this._emit("error", new HeraldError(4500, `persisted queue unreadable: ${e && e.message ? e.message : e}`));
      return;
    }
    const restored = [];
    for (const { key, value } of items) {
      if (!value || !value.frame) continue;
      const req = {
        kind: value.kind,
        frame: value.frame,
        tries: 0,
        done: false,
        restoredKey: key,
        resolve: () => {},
        reject: (e) => this._emit("error", Object.assign(e, { frame: value.frame })),
      };
      restored.push(req);
    }
    this._queue.unshift(...restored);
  }

  // -- connection loss and reconnecting ----------------------------------------------------

  _onClose(transport, code, reason) {
    if (transport !== this._transport) return;
    this._transport = null;
    const wasReady = this._ready;
    this._ready = false;
    clearTimeout(this._identTimer);
    this._identTimer = null;
    clearInterval(this._pingTimer);
    this._pingTimer = null;
    const frame = this._lastDisconnect;
    const lost = frame
      ? new HeraldError(frame.code, frame.reason || "disconnected")
      : new HeraldError(1006, `connection lost before the reply (${reason || code}): the request may have been handled`);
    this._failInFlight(lost);
    if (!this._running) return;

    if (frame && !frame.reconnect) {
      if (frame.code === 4002 && typeof this.options.getToken === "function" && this._authRetries < 1) {
        this._authRetries += 1;
        this._emit("disconnect", { code: frame.code, reason: frame.reason, reconnect: true });
        this._reconnect(0);
        return;
      }
      this._stop(this._identError && frame.code === 4002 ? this._identError : new HeraldError(frame.code, frame.reason || "disconnected"), true, frame);
      return;
    }
    if (transport.name === "websocket" && !wasReady && !frame) {
      const offline = typeof navigator !== "undefined" && navigator.onLine === false;
      if (!offline) this._wsFailures += 1;
      const list = this._transports();
      if (this._wsFailures >= this.options.fallbackAfter && list.includes("longpoll") && !this._useLongpoll) {
        this._useLongpoll = true;
        this._fallbackAt = now();
        this._emit("disconnect", { code, reason, reconnect: true });
        this._reconnect(0);
        return;
      }
    }
    this._emit("disconnect", { code: frame ? frame.code : code, reason: frame ? frame.reason : reason, reconnect: true });
    // A restarting server spreads its clients' return with `reconnect_delay` (ms).
    const advised = frame && Number.isFinite(frame.reconnect_delay) ? Math.max(0, frame.reconnect_delay) : undefined;
    this._reconnect(advised);
  }

  _failInFlight(error) {
    const again = [];
    for (const req of [...this._pending.values()]) {
      if (req.kind === "ident" || req.kind === "ping") continue;
      this._pending.delete(req.id);
      if (req.kind === "publish" || req.kind === "rpc") {
        if (req.restoredKey !== undefined && this._running) again.push(req); // from an earlier page: try again
        else this._settle(req, error);
      } else if (req.kind === "join") {
        this._joinWaiters.push({ channel: req.frame.channel, resolve: req.resolve, reject: req.reject });
        req.done = true;
        clearTimeout(req.timer);
      } else if (req.kind === "leave") {
        this._settle(req, null, {});
      } else if (this._running) {
        again.push(req); // reads: asked again after reconnecting
      } else {
        this._settle(req, error);
      }
    }
    this._pending.clear();
    this._queue.unshift(...again);
  }

  _reconnect(delay) {
    if (!this._running) return;
    this._attempt += 1;
    this.stats.reconnects += 1;
    const { minDelay, maxDelay } = this.options;
    const cap = Math.min(maxDelay, minDelay * 2 ** Math.min(this._attempt - 1, 30));
    const wait = delay !== undefined ? delay : Math.random() * cap;
    this._setState("connecting");
    this._emit("reconnecting", { attempt: this._attempt, delay: Math.round(wait) });
    clearTimeout(this._timer);
    this._timer = later(() => this._open(), wait);
  }

  _stop(error, fromServer, frame) {
    const wasRunning = this._running;
    this._running = false;
    this._stopped = true;
    this._stopError = error;
    this._gen += 1;
    clearTimeout(this._timer);
    this._timer = null;
    clearTimeout(this._identTimer);
    clearInterval(this._pingTimer);
    const transport = this._transport;
    this._transport = null;
    this._ready = false;
    if (transport) transport.close();
    this._failInFlight(error);
    for (const req of this._queue.splice(0)) this._settle(req, error);
    for (const waiter of this._joinWaiters.splice(0)) waiter.reject(error);
    for (const waiter of this._connectWaiters.splice(0)) waiter.reject(error);
    if (typeof removeEventListener === "function" && typeof window !== "undefined") {
      removeEventListener("online", this._onOnline);
      removeEventListener("offline", this._onOffline);
    }
    this._setState("disconnected");
    if (fromServer && wasRunning) {
      this._emit("disconnect", { code: error.code, reason: error.reason, reconnect: false });
      if (!frame) this._emit("error", error);
    }
  }

  // -- channels --------------------------------------------------------------------------------

  _dropChannel(channel) {
    this._joined.delete(channel);
    this._positions.delete(channel);
    this._defaults.delete(channel);
  }

  _rejectJoinWaiters(channel, error) {
    this._joinWaiters = this._joinWaiters.filter((w) => {
      if (w.channel !== channel) return true;
      w.reject(error);
      return false;
    });
  }

  /**
   * Joins a channel; resolves with {offset, epoch, recovered?, members?, total?}. While
   * disconnected it resolves once the next ident has joined it.
   */
  join(channel, options) {
    const opts = options || {};
    if (!isChannel(channel)) return Promise.reject(new HeraldError(4000, `channel: bad channel name ${JSON.stringify(channel)}`));
    if (this._stopped) return Promise.reject(this._stopError || new HeraldError(1000, "client closed"));
    const fresh = !this._joined.has(channel);
    const ordinary = CHANNEL_RE.test(channel);
    if (ordinary) this._joined.add(channel);
    if (!this._ready || !this._transport) {
      return new Promise((resolve, reject) => this._joinWaiters.push({ channel, resolve, reject }));
    }
    const frame = { op: "join", channel };
    const mine = this._positions.get(channel);
    if (opts.since) frame.since = opts.since;
    else if (mine && mine.epoch !== undefined) frame.since = { offset: mine.offset, epoch: mine.epoch };
    if (opts.presence) frame.presence = true;
    return this._request("join", frame, opts.timeout, {
      onJoin: (data) => {
        const p = this._positions.get(channel);
        if (data.recovered && p && !opts.since) p.epoch = data.epoch;
        else this._positions.set(channel, { offset: data.offset, epoch: data.epoch });
      },
      onJoinError: () => {
        if (fresh) this._dropChannel(channel);
      },
    });
  }

  /** Leaves a channel; resolves with {}. */
  leave(channel, options) {
    this._dropChannel(channel);
    this._rejectJoinWaiters(channel, new HeraldError(4000, `left before joining: ${channel}`));
    if (!this._ready || !this._transport) return Promise.resolve({});
    return this._request("leave", { op: "leave", channel }, (options || {}).timeout);
  }

  // -- operations ------------------------------------------------------------------------------

  /** Publishes an event to a channel (client_publish channels only); resolves {id, offset}. */
  publish(channel, event, data, options) {
    const opts = options || {};
    if (typeof event !== "string" || !event) return Promise.reject(new HeraldError(4000, "event: must be 1 to 256 bytes"));
    if (!isChannel(channel)) return Promise.reject(new HeraldError(4000, `channel: bad channel name ${JSON.stringify(channel)}`));
    const frame = { op: "publish", channel, event, data: data === undefined ? null : data };
    if (opts.echo) frame.echo = true;
    return this._request("publish", frame, opts.timeout, { persist: opts.persist });
  }

  /** Calls a backend method; resolves with the backend's answer. */
  rpc(method, data, options) {
    const opts = options || {};
    if (typeof method !== "string" || !method) return Promise.reject(new HeraldError(4000, "method: must be 1 to 256 characters"));
    const timeout = opts.timeout !== undefined ? opts.timeout : this.options.rpcTimeout;
    return this._request("rpc", { op: "rpc", method, data: data === undefined ? null : data }, timeout, {
      map: (reply) => (reply && typeof reply === "object" && "data" in reply ? reply.data : reply),
      persist: opts.persist,
    });
  }

  /** Members of a channel: {members: [{user, conn}], total}. */
  presence(channel, options) {
    return this._request("presence", { op: "presence", channel }, (options || {}).timeout);
  }

  /** A page of a channel's history: {events, offset, epoch, more, recovered?}. */
  history(channel, options) {
    const opts = options || {};
    const frame = { op: "history", channel };
    if (opts.limit !== undefined) frame.limit = opts.limit;
    if (opts.since) frame.since = opts.since;
    return this._request("history", frame, opts.timeout);
  }

  /** A round trip to the server; resolves {}. */
  ping(options) {
    return this._request("ping-op", { op: "ping" }, (options || {}).timeout);
  }
}

Herald.HeraldError = HeraldError;
Herald.version = VERSION;

export default Herald;
