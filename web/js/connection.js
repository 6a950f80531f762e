// One WebSocket to /ws on the same origin, speaking JSON-RPC 2.0: login, calls with streamed
// deltas, notifications, and reconnecting with backoff. Knows nothing about the page.

import { CLOSE_REASONS, RpcError } from "./errors.js";

const RECONNECT_CODES = new Set([1001, 1006, 1011, 1012, 1013]);
const BACKOFF_START_MS = 500;
const BACKOFF_MAX_MS = 30_000;

const STOP_REASONS = {
  1000: "The gateway closed the connection.",
  1003: "The gateway refused a message.",
  1007: "The gateway refused a message.",
  1008: "The gateway refused the connection.",
  1009: "A message was too large for the gateway.",
};

function wsUrl() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  return `${proto}//${location.host}/ws`;
}

/**
 * `hooks`: `state(connState, text?, detail?)` on every change of connection state
 * (connecting | connected | reconnecting | disconnected | signed-out); `login(result, again)`
 * once signed in on a new socket; `signedOut(message?)` when the gateway refused the token.
 */
export class Connection {
  constructor(hooks) {
    this.hooks = hooks;
    this.token = null;
    this.ws = null;
    this.connState = "signed-out";
    this.everConnected = false;
    this.attempt = 0;
    this.reconnectTimer = null;
    this.countdownTimer = null;
    this.nextId = 1;
    this.pending = new Map(); // id -> {resolve, reject, onDelta}
  }

  get ready() { return this.connState === "connected"; }

  setState(connState, text, detail = "") {
    this.connState = connState;
    this.hooks.state(connState, text, detail);
  }

  signIn(token) {
    this.token = token;
    this.attempt = 0;
    this.connect();
  }

  /** Close the socket and forget the token; `message` says why when the gateway decided it. */
  signOut(message) {
    this.token = null;
    clearTimeout(this.reconnectTimer);
    clearInterval(this.countdownTimer);
    this.attempt = 0;
    this.everConnected = false;
    this.dropSocket(1000, "signed out");
    this.failPending();
    this.setState("signed-out");
    this.hooks.signedOut(message);
  }

  retryNow() {
    this.attempt = Math.max(this.attempt, 1);
    this.connect();
  }

  dropSocket(code, reason) {
    if (!this.ws) return;
    const ws = this.ws;
    this.ws = null;
    ws.onclose = ws.onmessage = ws.onopen = ws.onerror = null;
    try { ws.close(code, reason); } catch { /* already closed */ }
  }

  connect() {
    clearTimeout(this.reconnectTimer);
    clearInterval(this.countdownTimer);
    this.reconnectTimer = null;
    if (!this.token) return;
    this.dropSocket(1000);
    this.setState(this.attempt > 0 ? "reconnecting" : "connecting");
    let ws;
    try {
      ws = new WebSocket(wsUrl());
    } catch (err) {
      console.error(err);
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    ws.onopen = () => this.onOpen(ws);
    ws.onmessage = (ev) => this.onFrame(ws, ev);
    ws.onclose = (ev) => this.onClose(ws, ev);
    ws.onerror = () => { /* onclose follows with the details */ };
  }

  async onOpen(ws) {
    let result;
    try {
      result = await this.rpc("auth.login", { token: this.token });
    } catch (err) {
      if (ws !== this.ws) return;
      if (err.code === -32001 || err.code === -32002) {
        this.signOut(err.code === -32002 ? CLOSE_REASONS[4501] : CLOSE_REASONS[4500]);
      }
      return; // other failures: onclose handles reconnecting
    }
    if (ws !== this.ws) return;
    this.attempt = 0;
    const again = this.everConnected;
    this.everConnected = true;
    this.setState("connected");
    this.hooks.login(result, again);
  }

  onFrame(ws, ev) {
    if (ws !== this.ws || typeof ev.data !== "string") return;
    let msg;
    try {
      msg = JSON.parse(ev.data);
    } catch {
      console.warn("unreadable frame from gateway");
      return;
    }
    for (const frame of Array.isArray(msg) ? msg : [msg]) this.handleFrame(frame);
  }

  handleFrame(frame) {
    if (!frame || typeof frame !== "object") return;
    if (frame.method === "stream.delta" && frame.params) {
      const p = this.pending.get(frame.params.id);
      if (p?.onDelta) p.onDelta(frame.params);
      return;
    }
    if (frame.method) return; // other notifications: nothing to show yet
    if (frame.id == null) {
      if (frame.error) console.warn("gateway error", frame.error);
      return;
    }
    const p = this.pending.get(frame.id);
    if (!p) return;
    this.pending.delete(frame.id);
    if (frame.error) p.reject(new RpcError(frame.error));
    else p.resolve(frame.result);
  }

  failPending() {
    const lost = new RpcError({ code: "disconnected", message: "connection lost" });
    const pending = [...this.pending.values()];
    this.pending.clear();
    for (const p of pending) p.reject(lost);
  }

  onClose(ws, ev) {
    if (ws !== this.ws) return;
    this.ws = null;
    this.failPending();
    const code = ev.code;
    if (code >= 4500 && code <= 4999) {
      this.signOut(CLOSE_REASONS[code] || `The gateway closed the connection (${code}). Please sign in again.`);
      return;
    }
    if (!this.token) return;
    if (RECONNECT_CODES.has(code) || (code >= 4000 && code <= 4499)) {
      this.scheduleReconnect();
      return;
    }
    // 1000, 1003, 1007, 1008, 1009, ...: do not loop, let the person retry.
    const why = STOP_REASONS[code] || `The connection closed (${code}).`;
    this.setState("disconnected", `Disconnected — ${why}`);
  }

  scheduleReconnect() {
    clearTimeout(this.reconnectTimer);
    clearInterval(this.countdownTimer);
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_START_MS * 2 ** this.attempt);
    const delay = Math.round(base * (0.8 + Math.random() * 0.4));
    this.attempt += 1;
    const due = Date.now() + delay;
    const tick = () => {
      const left = Math.ceil((due - Date.now()) / 1000);
      this.setState("reconnecting", undefined, left > 1 ? `in ${left}s` : "");
    };
    tick();
    this.countdownTimer = setInterval(tick, 1000);
    this.reconnectTimer = setTimeout(() => {
      clearInterval(this.countdownTimer);
      this.connect();
    }, delay);
  }

  send(obj) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
      throw new RpcError({ code: "disconnected", message: "not connected" });
    }
    this.ws.send(JSON.stringify(obj));
  }

  /** A request; `onDelta(params)` gets its `stream.delta` frames. Returns `{id, promise}`. */
  call(method, params, onDelta) {
    const id = this.nextId++;
    const promise = new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, onDelta });
    });
    try {
      this.send(params === undefined ? { jsonrpc: "2.0", id, method } : { jsonrpc: "2.0", id, method, params });
    } catch (err) {
      const p = this.pending.get(id);
      this.pending.delete(id);
      p.reject(err);
    }
    return { id, promise };
  }

  rpc(method, params) {
    return this.call(method, params).promise;
  }

  notify(method, params) {
    try { this.send({ jsonrpc: "2.0", method, params }); } catch { /* not connected */ }
  }
}
