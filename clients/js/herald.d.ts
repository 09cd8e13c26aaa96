// Types of the Herald JavaScript client (src/herald.js, and dist/herald.global.js, which
// defines the same classes as globalThis.Herald and globalThis.HeraldError).

export type State = "connecting" | "connected" | "disconnected";
export type TransportName = "websocket" | "longpoll";

/** The last event seen on a channel: recovery resumes after it. */
export interface Position {
  offset: number;
  epoch: string;
}

export interface HeraldOptions {
  /** The client token (a JWT, or what an ident hook accepts). */
  token?: string;
  /** Asked for a token on every reconnect, and again after the server refused one (4002). */
  getToken?: () => string | Promise<string>;
  /** Transports in order of preference; default ["websocket", "longpoll"]. */
  transports?: TransportName[];
  /** Ordinary channels joined by the first ident. */
  channels?: string[];
  /** Reconnect backoff: full jitter, random(0, min(maxDelay, minDelay * 2^attempt)) ms. Defaults 500 and 30000. */
  minDelay?: number;
  maxDelay?: number;
  /** WebSocket opens that fail before long-poll takes over (default 2). */
  fallbackAfter?: number;
  /** After falling back, the WebSocket is tried again on a reconnect this long after (ms, default 60000). */
  wsRetryAfter?: number;
  /** An open plus ident taking longer than this (ms) counts as failed (default 10000). */
  connectTimeout?: number;
  /** A WebSocket quiet this long gets a ping (ms, default 20000; 0 = never)... */
  pingInterval?: number;
  /** ...and is dropped when nothing comes this much later (ms, default 10000). */
  pingTimeout?: number;
  /** A long-poll request is given up after this long (ms, default 40000; the server answers within 25 s). */
  pollTimeout?: number;
  /** Default client-side timeout of rpc (ms, default 10000). */
  rpcTimeout?: number;
  /** Requests that may wait while disconnected (default 100); past it they reject with 4503. */
  queueSize?: number;
  /** Recent event ids remembered to drop an event seen twice (default 2048). */
  dedupSize?: number;
  /** Frames larger than this are refused locally with 4009 (default 65536, the server's default). */
  maxMessageSize?: number;
  /** Keep the offline queue in IndexedDB so it survives a page reload (browsers; ignored in Node). */
  persist?: boolean;
  /** IndexedDB database name for `persist` (default "herald:" + url). */
  persistKey?: string;
  /** A WebSocket constructor, e.g. `import WebSocket from "ws"` in Node < 22. */
  WebSocket?: unknown;
  /** A fetch implementation for long-poll (default: the global fetch). */
  fetch?: typeof fetch;
}

/** What accompanies every event's data. */
export interface EventContext {
  /** The event id (a UUIDv7). */
  id: string;
  /** Milliseconds since the Unix epoch. */
  ts: number;
  /** Every channel this connection matched, with the event's offset there. */
  via: Record<string, number>;
  /** Present on events a client published. */
  from?: { user: string; conn: string };
  /** The event name. */
  event: string;
}

export interface Member {
  user: string;
  conn: string;
}

export interface ChannelInfo {
  offset: number;
  epoch: string;
  recovered: boolean;
}

export interface IdentReply {
  user: string;
  conn: string;
  node: string;
  channels: Record<string, ChannelInfo>;
}

export interface JoinReply {
  offset: number;
  epoch: string;
  recovered?: boolean;
  members?: Member[];
  total?: number;
}

export interface EventFrame {
  op: "event";
  event: string;
  data: unknown;
  id: string;
  ts: number;
  via: Record<string, number>;
  from?: { user: string; conn: string };
}

export interface HistoryPage {
  events: EventFrame[];
  offset: number;
  epoch: string;
  more: boolean;
  recovered?: boolean;
}

export interface Notice {
  channel: string;
  user: string;
  conn: string;
}

export interface DisconnectInfo {
  code: number;
  reason: string;
  /** Whether the client is reconnecting. */
  reconnect: boolean;
}

export interface Stats {
  received: number;
  duplicates: number;
  reconnects: number;
  recovered: number;
  unrecovered: number;
}

export interface Events {
  state: (state: State) => void;
  joined: (notice: Notice) => void;
  left: (notice: Notice) => void;
  unsubscribed: (info: { channel: string; code?: number; reason?: string }) => void;
  disconnect: (info: DisconnectInfo) => void;
  error: (error: HeraldError) => void;
  unrecovered: (info: { channel: string; offset: number; epoch: string }) => void;
  reconnecting: (info: { attempt: number; delay: number }) => void;
  /** Every event, whatever its name (including names the lifecycle events take). */
  "*": (data: any, ctx: EventContext) => void;
}

/** A failure: `code` and `reason` as in the protocol's codes (a reply's `code` and `error`). */
export class HeraldError extends Error {
  constructor(code: number, reason: string, extra?: object);
  code: number;
  reason: string;
  /** Set on 4003s that name a channel. */
  channel?: string;
}

export class Herald {
  constructor(url?: string, options?: HeraldOptions);
  static HeraldError: typeof HeraldError;
  static version: string;

  readonly url: string;
  readonly options: Required<Pick<HeraldOptions, "queueSize" | "minDelay" | "maxDelay">> & HeraldOptions;
  readonly state: State;
  readonly transport: TransportName | null;
  /** The long-poll session id while on long-poll. */
  readonly sid: string | null;
  /** The ordinary channels joined, or to be joined when connected. */
  readonly channels: string[];
  user: string | null;
  conn: string | null;
  node: string | null;
  readonly stats: Stats;

  on<K extends keyof Events>(name: K, fn: Events[K]): () => void;
  on(name: string, fn: (data: any, ctx: EventContext) => void): () => void;
  once<K extends keyof Events>(name: K, fn: Events[K]): () => void;
  once(name: string, fn: (data: any, ctx: EventContext) => void): () => void;
  off(name: string, fn: (...args: any[]) => void): this;

  connect(): Promise<IdentReply>;
  close(): void;
  position(channel: string): Position | undefined;

  join(channel: string, options?: { presence?: boolean; since?: Position | { offset: 0 }; timeout?: number }): Promise<JoinReply>;
  leave(channel: string, options?: { timeout?: number }): Promise<{}>;
  publish(
    channel: string,
    event: string,
    data?: unknown,
    options?: { echo?: boolean; timeout?: number; persist?: boolean },
  ): Promise<{ id: string; offset: number }>;
  rpc<T = unknown>(method: string, data?: unknown, options?: { timeout?: number; persist?: boolean }): Promise<T>;
  presence(channel: string, options?: { timeout?: number }): Promise<{ members: Member[]; total: number }>;
  history(channel: string, options?: { limit?: number; since?: Position; timeout?: number }): Promise<HistoryPage>;
  ping(options?: { timeout?: number }): Promise<{}>;
}

export default Herald;
