// Socket.IO v4 peer for herald-bench: the server most Herald users run today, kept at its
// defaults so the comparison is fair. One process, one port, loopback only.
//
//   node server.js --port 0 [--host 127.0.0.1] [--recovery]
//
// Prints `listening <port>` on stdout once it accepts connections.
//
// Client side (what the Rust harness speaks over Engine.IO v4 / websocket):
//   emit "hello" {user, channels:[...]} with ack -> joins room "@<user>" and each channel, acks
//     {user, sid, offsets:{room: current seq}}
//   emit "join" "<channel>" with ack -> joins the room, acks {offset}
//   events arrive as 42["<event>", data, via] where via = {room: seq}; with --recovery
//     Socket.IO appends its own offset string as the last argument.
//
// HTTP side:
//   POST /publish  body: one envelope or an array of envelopes, the same shape as Herald's
//     {"event","channels":[..],"users":[..],"broadcast":bool,"data":{..}}
//     -> {"id","offsets":{room: seq}} or an array of those
//   GET /healthz -> ok;  GET /info -> {connections, rooms}
"use strict";

const http = require("http");
const { Server } = require("socket.io");

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  if (i !== -1 && i + 1 < process.argv.length) return process.argv[i + 1];
  return fallback;
}

const port = Number(arg("--port", process.env.PORT || "0"));
const host = arg("--host", process.env.HOST || "127.0.0.1");
const recovery = process.argv.includes("--recovery") || process.env.RECOVERY === "1";

// Per-room sequence numbers play the part of Herald's per-channel offsets, so the harness
// checks loss, duplicates and order the same way on both servers.
const seqs = new Map();
let nextId = 1;

function bump(room) {
  const n = (seqs.get(room) || 0) + 1;
  seqs.set(room, n);
  return n;
}

function publishOne(env) {
  if (env === null || typeof env !== "object" || typeof env.event !== "string") {
    throw new Error("envelope needs an event name");
  }
  const data = env.data === undefined ? null : env.data;
  const via = {};
  const id = String(nextId++);
  if (env.broadcast === true) {
    via["*"] = bump("*");
    io.emit(env.event, data, via);
    return { id, offsets: via };
  }
  const rooms = [];
  for (const ch of env.channels || []) rooms.push(String(ch));
  for (const u of env.users || []) rooms.push("@" + u);
  if (rooms.length === 0) throw new Error("envelope needs channels, users or broadcast");
  for (const r of rooms) via[r] = bump(r);
  // One emit to all target rooms: Socket.IO sends each matching socket the packet once.
  io.to(rooms).emit(env.event, data, via);
  return { id, offsets: via };
}

function send(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(text),
  });
  res.end(text);
}

const httpServer = http.createServer((req, res) => {
  const path = (req.url || "").split("?")[0];
  if (req.method === "GET" && path === "/healthz") {
    res.writeHead(200, { "content-type": "text/plain" });
    res.end("ok");
    return;
  }
  if (req.method === "GET" && path === "/info") {
    send(res, 200, { connections: io.engine.clientsCount, rooms: io.sockets.adapter.rooms.size });
    return;
  }
  if (req.method === "POST" && path === "/publish") {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      let body;
      try {
        body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
      } catch (e) {
        send(res, 400, { code: 4000, error: "body is not JSON" });
        return;
      }
      try {
        if (Array.isArray(body)) send(res, 200, body.map(publishOne));
        else send(res, 200, publishOne(body));
      } catch (e) {
        send(res, 400, { code: 4000, error: String(e.message || e) });
      }
    });
    return;
  }
  // Anything else (including /socket.io/ polling) is left to Socket.IO's own listener.
});

const opts = {};
if (recovery) {
  opts.connectionStateRecovery = { maxDisconnectionDuration: 2 * 60 * 1000, skipMiddlewares: true };
}
const io = new Server(httpServer, opts);

function roomOffsets(rooms) {
  const out = {};
  for (const r of rooms) out[r] = seqs.get(r) || 0;
  return out;
}

io.on("connection", (socket) => {
  socket.on("hello", (payload, ack) => {
    const p = payload && typeof payload === "object" ? payload : {};
    const user = typeof p.user === "string" ? p.user : "anon";
    const rooms = ["@" + user];
    if (Array.isArray(p.channels)) for (const c of p.channels) rooms.push(String(c));
    socket.join(rooms);
    if (typeof ack === "function") ack({ user, sid: socket.id, offsets: roomOffsets(rooms) });
  });
  socket.on("join", (channel, ack) => {
    const room = String(channel);
    socket.join(room);
    if (typeof ack === "function") ack({ offset: seqs.get(room) || 0 });
  });
});

httpServer.listen(port, host, () => {
  process.stdout.write(`listening ${httpServer.address().port}\n`);
});

function stop() {
  io.close();
  httpServer.close(() => process.exit(0));
  // Hard stop: the harness must never wait on a draining peer.
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
