// ringcast.js: the browser client of ringcast. A dependency-free ES module, no build step.
//
//   import {Ringcast} from '/ringcast.js';
//   const rc = new Ringcast(location.origin, {token, transport: 'ws'});   // or 'sse'
//   // or several nodes of a cluster, tried in turn: new Ringcast(null, {urls: [a, b, c]})
//   const off = rc.subscribe('prices.>', (m) => show(m.subject, m.seq, m.data), {snapshot: true});
//   rc.on('status', (s) => ...);     // 'connecting' | 'open' | 'closed'
//   rc.on('gap', (g) => ...);        // {subject, from, to}: messages that will not come
//   rc.on('error', (e) => ...);      // {code, message, subject?}: refused subscription, failed fetch
//   rc.on('duplicate', (d) => ...);  // {subject, seq, last}: a message dropped as already seen
//   rc.on('session', (s) => ...);    // {resumed}: after a reconnect, whether the session resumed
//   rc.on('drain', (d) => ...);      // {retryMs, url}: the node is draining; reconnecting (to url)
//   const {seq, ts} = await rc.publish('orders.1', {qty: 1}, {msgId: 'order-1'});
//   off(); rc.close();
//
// Delivery: handlers get each subject's messages once, in increasing seq (anything at or below
// the last seq seen is dropped). A lost connection is retried with exponential backoff and
// jitter, then resumed:
// - WebSocket: the `resume` op continues the session exactly. If it expired, every pattern is
//   subscribed again: a concrete subject no other pattern covers asks for `since: lastSeq`;
//   known subjects reached through a wildcard are caught up from `GET /history` while their
//   live messages are held back (the server does not hold a wildcard's live messages back for
//   a `since` replay running on another subscription of the same connection).
// - SSE: the browser reconnects with Last-Event-ID and the server resumes the session; if it
//   expired (or the stream restarts for a pattern change), known subjects are caught up from
//   `/history` the same way. With `conflate`, jumps in seq are reported as gaps.
// - A draining node (close 1012 `{"reason":"draining","retry_ms":N}`, or the SSE `drain`
//   event) is left for the next of `urls` (the same URL when there is one: a load balancer
//   picks another node) after the node's own hint N, spread per connection by the server;
//   nothing is lost, as the session's subjects resume there with `since` and `/history`
//   (seqs are the same on every node of a cluster). A connection that fails before `hello`
//   also moves on to the next URL; one lost after it tries the same URL first (its session
//   can resume there).

const BACKOFF_MIN_MS = 250;
const BACKOFF_MAX_MS = 10_000;
const PING_EVERY_MS = 20_000; // WebSocket liveness probe: a connection silent for
const PING_TIMEOUT_MS = 10_000; // this long after a ping is closed and retried

/** True if `subject` matches `pattern` (`*`: one token, `>`: one or more trailing tokens). */
export function matches(pattern, subject) {
  const p = pattern.split('.'), s = subject.split('.');
  for (let i = 0; i < p.length; i++) {
    if (p[i] === '>') return s.length > i;
    if (i >= s.length || (p[i] !== '*' && p[i] !== s[i])) return false;
  }
  return p.length === s.length;
}

const isLiteral = (pattern) => !pattern.split('.').some((t) => t === '*' || t === '>');
const TOKEN = /^[A-Za-z0-9_:-]{1,64}$/;
const isPattern = (p, t = p.split('.')) =>
  p.length <= 256 && t.length <= 16 && t.every((x, i) => TOKEN.test(x) || x === '*' || (x === '>' && i === t.length - 1));
const lost = (e) => e.code === undefined; // a request failed for want of a connection, not an `err`

/** The `retry_ms` of a drain's JSON (close reason, SSE event data); 1 s if unreadable. */
function drainRetryMs(json) {
  try {
    const ms = JSON.parse(json).retry_ms;
    return Number.isFinite(ms) && ms >= 0 ? Math.min(ms, 60_000) : 1000;
  } catch {
    return 1000;
  }
}

/** A WebSocket close from a draining node (1012 "service restart"): `{retryMs}`, else undefined. */
const drainHint = (e) => (e?.code === 1012 ? {retryMs: drainRetryMs(e.reason)} : undefined);

export class Ringcast {
  /**
   * @param {string} url the server, `http(s)://host:port` or `ws(s)://...` (only the origin counts)
   * @param {{token?: string, transport?: 'ws'|'sse', urls?: string[]}} options `urls`: several
   *   servers (nodes of one cluster), used in turn in place of `url`
   */
  constructor(url = location.origin, {token, transport = 'ws', urls} = {}) {
    const list = urls?.length ? urls : [url ?? location.origin];
    this._bases = list.map((x) => {
      const u = new URL(x, location.href);
      return `${u.protocol.replace(/^ws/, 'http')}//${u.host}`;
    });
    this._baseAt = 0;
    this.base = this._bases[0]; // the server in use
    this.token = token;
    this.transport = transport === 'sse' ? 'sse' : 'ws';
    this.status = 'closed';
    this._subs = new Map(); // pattern -> {handlers: Set, snapshot}
    this._last = new Map(); // subject -> {seq, ts} of the last message delivered
    this._held = new Map(); // subject -> {buf, runs}: live messages held during a catch-up
    this._listeners = new Map(); // event -> Set of listeners
    this._pending = new Map(); // request id -> {resolve, reject}
    this._nextId = 1;
    this._serverPatterns = new Set(); // what the server-side WebSocket session subscribed to
    this._session = null; // WebSocket session to resume, and the `msg` ops received over it
    this._received = 0; //   (the count goes on across resumes)
    this._lastEventId = ''; // SSE: id of the last `msg` event
    this._attempt = 0; // reconnects since the last successful open
    this._greeted = false; // the current connection got its `hello`
    this._closed = false;
    // Connect once the caller's first subscribe() calls are made, so they go out together (an
    // SSE stream opens when a pattern is added).
    if (this.transport === 'ws') queueMicrotask(() => this._connect());
  }

  /** Calls `fn(value)` on `event`; returns a function that removes it. */
  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return () => this._listeners.get(event).delete(fn);
  }

  /**
   * Calls `handler({subject, seq, ts, data})` for each message on a subject matching `pattern`.
   * `snapshot`: first the latest message of each matching subject; `since` (concrete subject):
   * start after that seq. Returns the unsubscribe function; throws on a malformed pattern.
   */
  subscribe(pattern, handler, {snapshot = false, since} = {}) {
    if (!isPattern(pattern)) throw new Error(`not a subject pattern: '${pattern}'`);
    let sub = this._subs.get(pattern);
    const added = !sub;
    if (added) this._subs.set(pattern, (sub = {handlers: new Set(), snapshot}));
    sub.handlers.add(handler);
    if (since !== undefined && isLiteral(pattern) && !this._last.has(pattern)) {
      this._last.set(pattern, {seq: since, ts: Infinity});
    }
    if (added) this._patternsChanged(pattern, true);
    return () => {
      sub.handlers.delete(handler);
      if (sub.handlers.size || this._subs.get(pattern) !== sub) return;
      this._subs.delete(pattern);
      // Forget subjects no pattern covers any more (a later subscription starts afresh).
      for (const s of this._last.keys()) if (!this._covered(s)) this._last.delete(s);
      this._patternsChanged(pattern, false);
    };
  }

  /**
   * Publishes `data` (any JSON) on `subject`: resolves to `{seq, ts, duplicate}`. Over an open
   * WebSocket, else over HTTP. A rejection may come after the server took it: retry with the
   * same `msgId` and the server's de-duplication keeps it published once.
   */
  async publish(subject, data, {msgId} = {}) {
    if (this._ready) {
      const r = await this._request({op: 'pub', subject, data, msg_id: msgId});
      return {seq: r.seq, ts: r.ts, duplicate: !!r.duplicate};
    }
    const body = JSON.stringify({subject, data, msg_id: msgId});
    const r = await fetch(`${this.base}/publish`, {method: 'POST', headers: this._auth(), body});
    const j = await r.json();
    if (!r.ok) throw Object.assign(new Error(j.error?.message ?? `HTTP ${r.status}`), j.error);
    return {seq: j.seq, ts: j.ts, duplicate: !!j.duplicate};
  }

  /** Closes the connection for good. */
  close() {
    this._closed = true;
    clearTimeout(this._timer);
    const ws = this._ws;
    if (ws) this._lost(ws), ws.close(1000);
    this._es?.close();
    this._es = null;
    this._setStatus('closed');
  }

  // ---- delivery -----------------------------------------------------------------------------

  _emit(event, value) {
    for (const fn of this._listeners.get(event) ?? []) {
      try { fn(value); } catch (e) { console.error('ringcast listener', e); }
    }
  }

  _setStatus(s) {
    if (this.status !== s) this._emit('status', (this.status = s));
  }

  _covered(subject) {
    return [...this._subs.keys()].some((p) => matches(p, subject));
  }

  _auth() {
    return this.token ? {Authorization: `Bearer ${this.token}`} : {};
  }

  /** A `msg` from the server: held while its subject catches up, else delivered. */
  _onMsg(m) {
    const held = this._held.get(m.subject);
    if (held) held.buf.push(m);
    else this._deliver(m);
  }

  /**
   * Drops what is not newer than the last seq of its subject (reported, unless `overlap`: the
   * expected overlap after a catch-up), then calls each matching handler once.
   */
  _deliver(m, overlap = false) {
    const last = this._last.get(m.subject);
    if (last && m.seq <= last.seq) {
      // The same message again has the same ts. A newer one with a lower seq means the node
      // numbers the subject afresh (it restarted): start over from it.
      if (m.ts <= last.ts) {
        if (!overlap) this._emit('duplicate', {subject: m.subject, seq: m.seq, last: last.seq});
        return;
      }
      this._emit('gap', {subject: m.subject, reset: true, from: 1, to: m.seq - 1});
    } else if (last && m.seq > last.seq + 1) {
      this._emit('gap', {subject: m.subject, from: last.seq + 1, to: m.seq - 1});
    }
    this._last.set(m.subject, {seq: m.seq, ts: m.ts});
    const handlers = new Set(); // each once, however many of its patterns match
    for (const [p, sub] of this._subs) if (matches(p, m.subject)) sub.handlers.forEach((h) => handlers.add(h));
    for (const h of handlers) {
      try { h(m); } catch (e) { console.error('ringcast handler', e); }
    }
  }

  /** A `gap` op: history could not fill [from, to]; the jump after it is not a gap again. */
  _onGap(g) {
    this._emit('gap', {subject: g.subject, from: g.from, to: g.to});
    const last = this._last.get(g.subject);
    if (!last || last.seq < g.to) this._last.set(g.subject, {seq: g.to, ts: last?.ts ?? Infinity});
  }

  /**
   * Holds live messages of the known `subjects` now. The returned function, called once the
   * subscriptions are in place, fetches what each subject missed from `/history`, delivers it,
   * then the held messages (overlap dropped).
   */
  _holdForCatchUp(subjects) {
    const holds = subjects.map((s) => {
      const h = this._held.get(s) ?? {buf: [], runs: 0};
      h.runs++;
      this._held.set(s, h);
      return [s, h];
    });
    return () => holds.forEach(async ([s, h]) => {
      try {
        const path = `/history/${encodeURIComponent(s)}?since=${this._last.get(s)?.seq ?? 0}`;
        const r = await fetch(this.base + path, {headers: this._auth(), cache: 'no-store'});
        if (!r.ok) throw new Error(`GET ${path}: HTTP ${r.status}`);
        for (const m of (await r.json()).messages) this._deliver({op: 'msg', subject: s, ...m});
      } catch (e) {
        this._emit('error', {code: 'catch_up_failed', subject: s, message: String(e.message ?? e)});
      }
      if (--h.runs) return; // a later catch-up of this subject is still running
      this._held.delete(s);
      for (const m of h.buf.sort((a, b) => a.seq - b.seq)) this._deliver(m, true);
    });
  }

  // ---- WebSocket ----------------------------------------------------------------------------

  _connect() {
    if (this._closed) return;
    if (this.transport === 'sse') return this._connectSse(this._lastEventId);
    this._setStatus('connecting');
    const q = this.token ? `?token=${encodeURIComponent(this.token)}` : '';
    this._greeted = false;
    const ws = (this._ws = new WebSocket(`${this.base.replace(/^http/, 'ws')}/ws${q}`));
    ws.onmessage = (e) => this._onWsOp(ws, JSON.parse(e.data));
    ws.onclose = (e) => this._lost(ws, drainHint(e));
  }

  /**
   * Retries after 250 ms doubling up to 10 s, each delay drawn from the upper half; a draining
   * node's `retryMs` hint instead, on the next URL. A connection that never said `hello` moves
   * on to the next URL too.
   */
  _retry(drain) {
    if (this._closed) return;
    clearTimeout(this._timer);
    if (drain || !this._greeted) {
      this._baseAt = (this._baseAt + 1) % this._bases.length;
      this.base = this._bases[this._baseAt];
    }
    this._greeted = false;
    if (drain) {
      this._attempt = 0;
      this._emit('drain', {retryMs: drain.retryMs, url: this.base});
      this._timer = setTimeout(() => this._connect(), drain.retryMs);
      return;
    }
    const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** this._attempt++);
    this._timer = setTimeout(() => this._connect(), ceiling / 2 + (Math.random() * ceiling) / 2);
  }

  _lost(ws, drain) {
    if (this._ws !== ws) return;
    ws.onclose = ws.onmessage = null;
    this._ws = null;
    this._ready = false;
    clearInterval(this._pinger);
    for (const p of this._pending.values()) p.reject(new Error('connection lost'));
    this._pending.clear();
    this._setStatus('closed');
    this._retry(drain);
  }

  /** Sends an op with a fresh id; resolves with its `ok`/`pong`, rejects with its `err`. */
  _request(op) {
    const ws = this._ws;
    if (ws?.readyState !== WebSocket.OPEN) return Promise.reject(new Error('not connected'));
    const id = this._nextId++;
    return new Promise((resolve, reject) => {
      this._pending.set(id, {resolve, reject});
      ws.send(JSON.stringify({...op, id}));
    });
  }

  _onWsOp(ws, op) {
    switch (op.op) {
      case 'hello': this._greeted = true; return void this._onHello(ws, op.session);
      case 'msg': this._received++; return this._onMsg(op);
      case 'gap': return this._onGap(op);
    }
    const p = this._pending.get(op.id);
    if (p) {
      this._pending.delete(op.id);
      if (op.op === 'err') p.reject(Object.assign(new Error(op.message), {code: op.code}));
      else p.resolve(op);
    } else if (op.op === 'err') {
      this._emit('error', op); // not an answer: e.g. a subscription a new token dropped
    }
  }

  /**
   * A new WebSocket said hello: resume the previous session, else subscribe afresh. The session
   * to resume next moves to this connection only once it holds the session (resume `ok`, or
   * fresh subscriptions sent): a connection lost before leaves the previous one to resume.
   */
  async _onHello(ws, session) {
    try {
      let resumed = false;
      if (this._session) {
        const op = {op: 'resume', session: this._session, received: this._received};
        resumed = await this._request(op).then(() => true, (e) => (lost(e) ? Promise.reject(e) : false));
        this._emit('session', {resumed});
      }
      this._session = session; // a resumed session goes on here, and so does its count
      if (resumed) {
        await this._reconcile();
      } else {
        this._received = 0;
        await this._subscribeAll();
      }
      if (this._ws !== ws) return;
      this._ready = true;
      this._attempt = 0;
      this._setStatus('open');
      clearInterval(this._pinger);
      this._pinger = setInterval(() => this._probe(ws), PING_EVERY_MS);
    } catch (e) {
      // Lost meanwhile: its close handler scheduled the retry.
    }
  }

  async _probe(ws) {
    const timeout = setTimeout(() => (this._lost(ws), ws.close()), PING_TIMEOUT_MS);
    await this._request({op: 'ping'}).catch(() => {});
    clearTimeout(timeout);
  }

  async _sub(pattern, since) {
    const op = {op: 'sub', subject: pattern};
    if (since !== undefined) op.since = since;
    else if (this._subs.get(pattern)?.snapshot) op.snapshot = true;
    this._serverPatterns.add(pattern);
    try {
      await this._request(op);
    } catch (e) {
      this._serverPatterns.delete(pattern); // refused; or unknown (lost): sent again on resume
      if (lost(e)) throw e;
      this._emit('error', {code: e.code, message: e.message, subject: pattern});
    }
  }

  async _unsub(pattern) {
    this._serverPatterns.delete(pattern);
    try {
      await this._request({op: 'unsub', subject: pattern});
    } catch (e) {
      if (!lost(e)) return; // it was not subscribed
      if (!this._subs.has(pattern)) this._serverPatterns.add(pattern); // sent again on resume
      throw e;
    }
  }

  /** `since` for a concrete pattern that no other pattern covers, else undefined. */
  _sinceFor(pattern) {
    if (!isLiteral(pattern) || !this._last.has(pattern)) return undefined;
    for (const p of this._subs.keys()) if (p !== pattern && matches(p, pattern)) return undefined;
    return this._last.get(pattern).seq;
  }

  /** A fresh session: subscribes every pattern and catches up on what was missed. */
  async _subscribeAll() {
    this._serverPatterns.clear();
    const known = [...this._last.keys()].filter((s) => this._sinceFor(s) === undefined && this._covered(s));
    const catchUp = this._holdForCatchUp(known);
    try {
      await Promise.all([...this._subs.keys()].map((p) => this._sub(p, this._sinceFor(p))));
    } finally {
      catchUp();
    }
  }

  /** A resumed session has the previous patterns: adds and removes what changed meanwhile. */
  async _reconcile() {
    const ops = [...this._subs.keys()].filter((p) => !this._serverPatterns.has(p)).map((p) => this._sub(p, this._sinceFor(p)));
    for (const p of this._serverPatterns) if (!this._subs.has(p)) ops.push(this._unsub(p));
    await Promise.all(ops);
  }

  _patternsChanged(pattern, added) {
    if (this.transport === 'sse') {
      // An SSE stream's patterns are fixed: restart it, once for the changes made together.
      if (this._restartQueued) return;
      this._restartQueued = true;
      return queueMicrotask(() => {
        this._restartQueued = false;
        this._lastEventId = ''; // a fresh session, caught up from /history
        this._connectSse('');
      });
    }
    if (!this._ready) return; // sent when the connection opens
    (added ? this._sub(pattern, this._sinceFor(pattern)) : this._unsub(pattern)).catch(() => {});
  }

  // ---- SSE ----------------------------------------------------------------------------------

  _connectSse(lastEventId) {
    this._es?.close();
    this._es = null;
    if (this._closed || !this._subs.size) return this._setStatus('closed');
    this._setStatus('connecting');
    const q = new URLSearchParams();
    for (const p of this._subs.keys()) q.append('subject', p);
    if ([...this._subs.values()].some((s) => s.snapshot)) q.set('snapshot', '1');
    if (this.token) q.set('token', this.token);
    if (lastEventId) q.set('lastEventId', lastEventId); // the browser's own retries send a header
    const es = (this._es = new EventSource(`${this.base}/sse?${q}`));
    const on = (name, fn) => es.addEventListener(name, (e) => this._es === es && fn(e));
    const catchUp = () => this._holdForCatchUp([...this._last.keys()].filter((s) => this._covered(s)))();
    on('hello', () => {
      this._greeted = true;
      this._attempt = 0;
      this._setStatus('open');
      this._resuming = !!this._lastEventId; // resumed, unless `gap session_expired` follows
      if (!this._resuming) catchUp(); // a fresh session
    });
    on('msg', (e) => {
      if (this._resuming) this._emit('session', {resumed: true});
      this._resuming = false;
      this._lastEventId = e.lastEventId;
      this._onMsg(JSON.parse(e.data));
    });
    on('gap', (e) => {
      const g = JSON.parse(e.data);
      if (g.reason !== 'session_expired') return this._onGap(g);
      this._resuming = false;
      this._emit('session', {resumed: false});
      catchUp(); // the stream started afresh
    });
    on('drain', (e) => {
      // The node is draining: leave it (the browser would come back to the same URL).
      es.close();
      this._es = null;
      this._setStatus('closed');
      this._retry({retryMs: drainRetryMs(e.data)});
    });
    on('error', () => {
      if (es.readyState === EventSource.CONNECTING) return this._setStatus('connecting');
      this._es = null; // given up (refused, or not an event stream): retry ourselves
      this._setStatus('closed');
      this._retry();
    });
  }
}
