/*! Tidedesk protocol core: the delivery rules the visitor widget and the agent console share.
 *
 * DOM-free (no document, no elements), so the same rules run under both views and tests drive
 * them in a blank page. The contract is docs/protocol.md; the client-side decisions are in
 * docs/ui.md ("Delivery", "Reconnect"). Three parts:
 *   SeqLog  one conversation's messages by seq: dedupe, gaps asked for with `resume`, holes stepped over
 *   Outbox  own messages not yet acknowledged, re-sent with their original ids after a reconnect
 *   Link    one WebSocket: backoff with equal jitter, the ack timer, the server's `reconnect` frame
 * plus i18n lookup (translator, pickLang). The chat node serves this file in front of widget.js at
 * /widget.js (the shop keeps one script tag) and as /static/tidedesk-core.js for the console and
 * the supervisor view.
 */
(function (global) {
  "use strict";
  if (global.TidedeskCore) return; // loaded twice (two widgets, or widget + console): keep the first

  // Reconnect backoff: the full range doubles from 0.5 s up to 30 s; the delay is drawn from the
  // upper half of the range (equal jitter) so a node drain does not bring every client back at once.
  var BACKOFF_BASE_MS = 500;
  var BACKOFF_MAX_MS = 30000;
  // Without an ack this long the socket is presumed dead (half-open TCP) and is replaced.
  var ACK_TIMEOUT_MS = 12000;
  // A hole in the seqs that a resume did not fill within this long is accepted (e.g. seqs taken
  // by agents' private notes, which visitors never receive).
  var GAP_WAIT_MS = 2500;
  // While waiting to reconnect the views redraw their "in N s" countdown this often.
  var COUNTDOWN_TICK_MS = 1000;

  function noop() { /* an optional hook nobody set */ }

  /** Reconnect delay for attempt n (0-based), rnd in [0, 1): equal jitter over a doubling cap. */
  function backoffMs(n, rnd) {
    var cap = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * Math.pow(2, Math.min(n, 16)));
    return Math.round(cap / 2 + rnd * (cap / 2));
  }

  /** A client-made message id (the server dedupes retries on it). */
  function newId() {
    var c = global.crypto;
    if (c && c.randomUUID) return c.randomUUID();
    var b = new Uint8Array(16);
    c.getRandomValues(b);
    return Array.prototype.map.call(b, function (x) { return (x + 256).toString(16).slice(1); }).join("");
  }

  /** The two languages there are: anything starting with "zh" is Simplified Chinese, else English. */
  function pickLang(v) {
    return String(v || "").toLowerCase().indexOf("zh") === 0 ? "zh-CN" : "en";
  }

  /**
   * t(key, vars) over tables {en: {...}, "zh-CN": {...}} in the language getLang() names now.
   * A key missing in that language falls back to English, then to the key itself; "{name}" in a
   * string is replaced by vars.name.
   */
  function translator(tables, getLang) {
    return function t(key, vars) {
      var table = tables[getLang()];
      var s = (table && table[key]) || tables.en[key] || key;
      if (vars) Object.keys(vars).forEach(function (k) { s = s.split("{" + k + "}").join(vars[k]); });
      return s;
    };
  }

  /** The keys some language of `tables` lacks, as "lang.key" (empty when every string is in both). */
  function missingKeys(tables) {
    var all = {};
    Object.keys(tables).forEach(function (l) { Object.keys(tables[l]).forEach(function (k) { all[k] = true; }); });
    var out = [];
    Object.keys(tables).forEach(function (l) {
      Object.keys(all).forEach(function (k) { if (!tables[l][k]) out.push(l + "." + k); });
    });
    return out;
  }

  /**
   * One conversation's messages, held by seq.
   *
   * `top` is the highest seq such that every seq up to it is held or accepted as a hole; it starts
   * at opts.start (0 for a log that holds a conversation from its first message, null for one
   * that starts wherever startAt or the first message puts it). `low` is the lowest seq held.
   * add(frame) keeps a frame the first time its seq is seen and returns true, false for a seq held
   * already. A hole above `top` is asked for once with resume(top); if it is still open
   * GAP_WAIT_MS later it is stepped over and opts.onStep() is called.
   */
  function SeqLog(resume, opts) {
    opts = opts || {};
    this.resume = resume;
    this.start = opts.start === undefined ? 0 : opts.start;
    this.onStep = opts.onStep || noop;
    this.gapTimer = null;
    this.reset();
  }
  SeqLog.prototype.reset = function () {
    this.msgs = {};
    this.top = this.start;
    this.low = null;
    this.maxSeq = 0;
  };
  /** Hold nothing below `top`: a console following a chat from its latest page. */
  SeqLog.prototype.startAt = function (top) {
    this.top = top;
    this.low = top + 1;
    this.maxSeq = Math.max(this.maxSeq, top);
  };
  SeqLog.prototype.add = function (f) {
    if (this.msgs[f.seq]) return false;
    if (this.top === null) { this.top = f.seq - 1; this.low = f.seq; }
    this.msgs[f.seq] = f;
    if (this.low === null || f.seq < this.low) this.low = f.seq;
    if (f.seq > this.maxSeq) this.maxSeq = f.seq;
    this.settle();
    return true;
  };
  /** Keep an older page (history) without moving `top`; false for a seq held already. */
  SeqLog.prototype.addOlder = function (f) {
    if (this.msgs[f.seq]) return false;
    this.msgs[f.seq] = f;
    if (this.low === null || f.seq < this.low) this.low = f.seq;
    return true;
  };
  /** Move `top` over what is held; ask for the first hole above it. */
  SeqLog.prototype.settle = function () {
    var log = this;
    while (log.msgs[log.top + 1]) log.top += 1;
    if (log.maxSeq <= log.top || log.gapTimer) return;
    log.resume(log.top);
    log.gapTimer = setTimeout(function () {
      log.gapTimer = null;
      if (log.maxSeq <= log.top) return;
      // The resume did not fill it: the hole is not ours to see. Step over it.
      while (log.top < log.maxSeq && !log.msgs[log.top + 1]) log.top += 1;
      log.settle();
      log.onStep();
    }, GAP_WAIT_MS);
  };
  /** After a (re)connect: ask for everything after `top` when the server holds more (lastSeq). */
  SeqLog.prototype.catchUp = function (lastSeq) {
    if ((lastSeq || 0) > this.top) this.resume(this.top);
  };
  SeqLog.prototype.seqs = function () {
    return Object.keys(this.msgs).map(Number).sort(function (a, b) { return a - b; });
  };

  /** Own messages not yet acknowledged, in send order; onChange() after every push or take. */
  function Outbox(onChange) {
    this.items = [];
    this.onChange = onChange || noop;
  }
  Outbox.prototype.push = function (m) { this.items.push(m); this.onChange(); };
  Outbox.prototype.find = function (id) {
    for (var i = 0; id && i < this.items.length; i++) if (this.items[i].id === id) return this.items[i];
    return null;
  };
  /** Remove and return the message with this id (its ack or its echo came), or null. */
  Outbox.prototype.take = function (id) {
    var m = this.find(id);
    if (!m) return null;
    this.items.splice(this.items.indexOf(m), 1);
    this.onChange();
    return m;
  };
  Outbox.prototype.markFailed = function () { this.items.forEach(function (m) { m.failed = true; }); };
  /** After a (re)connect: send every message again with its original id. */
  Outbox.prototype.resend = function (transmit) {
    this.items.forEach(function (m) { m.failed = false; transmit(m); });
  };

  // Error codes a message may still succeed after (same id, later): everything else — too long,
  // forbidden, conversation closed, invalid — never will, and must not be re-sent (issue 14).
  var RETRYABLE_ERRORS = { try_again: true, busy: true, unavailable: true, rate_limited: true };
  /**
   * An error frame for one of our messages. A retryable one leaves it queued (marked failed) and
   * returns null; any other takes it out of the outbox and returns it, so the view shows the
   * error once and gives the text back to the composer.
   */
  Outbox.prototype.reject = function (f) {
    var m = this.find(f && f.id);
    if (!m) return null;
    if (RETRYABLE_ERRORS[f.code]) { m.failed = true; return null; }
    return this.take(m.id);
  };

  // Links in message text: only http(s) URLs, mailto: and bare e-mail addresses; trailing
  // punctuation stays text ("see https://x.test/a." links https://x.test/a).
  var LINK_RE = /(https?:\/\/[^\s<>"'\u3000-\u303f\uff01-\uff5e]+|mailto:[^\s<>"']+|[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)/gi;
  var TRAILING_RE = /[.,;:!?)\]}'"]+$/;
  /** Text as segments [{text}, {text, href}]: the views render hrefs as safe links. */
  function linkify(text) {
    var out = [], last = 0, m;
    text = String(text || "");
    LINK_RE.lastIndex = 0;
    while ((m = LINK_RE.exec(text))) {
      var raw = m[0], trail = raw.match(TRAILING_RE);
      if (trail) raw = raw.slice(0, raw.length - trail[0].length);
      if (!raw) continue;
      if (m.index > last) out.push({ text: text.slice(last, m.index) });
      var href = /^(https?:|mailto:)/i.test(raw) ? raw : "mailto:" + raw;
      out.push({ text: raw, href: href });
      last = m.index + raw.length;
      LINK_RE.lastIndex = last;
    }
    if (last < text.length) out.push({ text: text.slice(last) });
    return out;
  }

  /**
   * One WebSocket that comes back by itself. `conn` is idle | connecting | online | reconnecting
   * | offline. The view hands in:
   *   url()          a promise of the socket URL (credentials made or refreshed first)
   *   onUrlFailed(err)  url() was refused; the view decides whether to scheduleReconnect()
   *   onFrame(f)     every frame but `reconnect`, which the link obeys itself
   *   onClose(ev)    the socket closed; return true when the view has handled it, else the link
   *                  reconnects with backoff (`failedOpens` counts upgrades that failed in a row)
   *   onConn(conn)   the state changed, or the countdown to the next attempt ticked
   *   pending()      whether any message awaits an ack; onAckTimeout() when none came in time
   *   mayConnect(), isOnline(), socket(url), random()  defaults: always, navigator.onLine,
   *                  new WebSocket(url), Math.random
   */
  function Link(opts) {
    this.opts = {
      onUrlFailed: noop, onClose: function () { return false; }, onConn: noop,
      pending: function () { return false; }, onAckTimeout: noop,
      mayConnect: function () { return true; },
      isOnline: function () { return global.navigator.onLine; },
      socket: function (url) { return new global.WebSocket(url); },
      random: Math.random,
    };
    for (var k in opts) this.opts[k] = opts[k];
    this.ws = null;
    this.conn = "idle";
    this.attempt = 0;
    this.reconnectAt = 0;
    this.failedOpens = 0;
    this.reconnectTimer = this.tickTimer = this.ackTimer = null;
  }
  Link.prototype.setConn = function (c) { this.conn = c; this.opts.onConn(c); };
  /** Send a frame now; false when there is no open socket (the caller keeps what it must). */
  Link.prototype.send = function (obj) {
    if (this.ws && this.ws.readyState === 1) { this.ws.send(JSON.stringify(obj)); return true; }
    return false;
  };
  /** Send a frame that the server acknowledges, and start the ack timer if it is not running. */
  Link.prototype.transmit = function (frame) {
    if (!this.send(frame)) return false;
    if (!this.ackTimer) this.armAckTimer();
    return true;
  };
  /** Neither connected nor waiting to reconnect. */
  Link.prototype.isIdle = function () { return !this.ws && !this.reconnectTimer; };
  /** The server said hello: the backoff starts over. */
  Link.prototype.established = function () { this.attempt = 0; this.setConn("online"); };
  /** Whole seconds until the next attempt, at least 1 (for "Reconnecting in N s"). */
  Link.prototype.secondsToRetry = function () {
    return Math.max(1, Math.ceil((this.reconnectAt - Date.now()) / 1000));
  };
  Link.prototype.connect = function () {
    var link = this, o = this.opts;
    if (link.ws || !o.mayConnect()) return;
    link.cancelRetry();
    if (!o.isOnline()) { link.setConn("offline"); return; }
    link.setConn("connecting");
    o.url().then(function (url) { link.open(url); }, function (err) { o.onUrlFailed(err); });
  };
  Link.prototype.open = function (url) {
    var link = this, o = this.opts;
    if (link.ws) return;
    var sock = o.socket(url);
    var opened = false;
    link.ws = sock;
    sock.onopen = function () { opened = true; link.failedOpens = 0; };
    sock.onmessage = function (ev) {
      if (sock !== link.ws) return;
      var f;
      try { f = JSON.parse(ev.data); } catch (e) { return; }
      if (f && f.type === "reconnect") {
        // The node is draining: leave now, come back after the delay it chose for us.
        link.drop();
        link.scheduleReconnect(Math.max(0, f.after_ms || 0));
        return;
      }
      o.onFrame(f);
    };
    sock.onclose = function (ev) {
      if (sock !== link.ws) return;
      link.ws = null;
      link.stopAckTimer();
      if (!opened) link.failedOpens += 1;
      if (!o.onClose(ev)) link.scheduleReconnect();
    };
  };
  /** Drop the socket without waiting for a closing handshake that may never come. */
  Link.prototype.drop = function () {
    if (!this.ws) return;
    var sock = this.ws;
    this.ws = null;
    sock.onopen = sock.onmessage = sock.onclose = sock.onerror = null;
    try { sock.close(); } catch (e) { /* already closed */ }
    this.stopAckTimer();
  };
  /** Connect again after `delay` ms, or after the backoff for the next attempt when undefined. */
  Link.prototype.scheduleReconnect = function (delay) {
    var link = this, o = this.opts;
    if (link.reconnectTimer || link.ws || !o.mayConnect()) return;
    if (!o.isOnline()) { link.setConn("offline"); return; }
    var d = delay !== undefined ? delay : backoffMs(link.attempt, o.random());
    link.attempt += 1;
    link.reconnectAt = Date.now() + d;
    link.setConn("reconnecting");
    link.reconnectTimer = setTimeout(function () { link.reconnectTimer = null; link.connect(); }, d);
    if (!link.tickTimer) link.tickTimer = setInterval(function () {
      if (link.conn === "reconnecting") o.onConn(link.conn);
      else { clearInterval(link.tickTimer); link.tickTimer = null; }
    }, COUNTDOWN_TICK_MS);
  };
  /** The person asked (or the network came back): try at once, with the backoff reset. */
  Link.prototype.reconnectNow = function () {
    this.cancelRetry();
    this.attempt = 0;
    this.connect();
  };
  /** The browser says the network is gone: a WebSocket can stay "open" for minutes on it. */
  Link.prototype.goOffline = function () {
    this.drop();
    this.cancelRetry();
    this.setConn("offline");
  };
  Link.prototype.cancelRetry = function () {
    if (this.reconnectTimer) { clearTimeout(this.reconnectTimer); this.reconnectTimer = null; }
  };
  Link.prototype.stopAckTimer = function () { clearTimeout(this.ackTimer); this.ackTimer = null; };
  /** (Re)start the ack timer while messages are pending on an open socket. */
  Link.prototype.armAckTimer = function () {
    var link = this;
    link.stopAckTimer();
    if (!link.ws || !link.opts.pending()) return;
    link.ackTimer = setTimeout(function () {
      // No ack for a long time on an "open" socket: presume it half-open and start over.
      link.opts.onAckTimeout();
      link.drop();
      link.scheduleReconnect(0);
    }, ACK_TIMEOUT_MS);
  };

  // ---- attachments (docs/protocol.md "Attachments") ----
  // Signed links are asked for again this long before they expire.
  var LINK_REFRESH_MARGIN_S = 30;

  /** 1536 → "1.5 KB" (binary multiples, as the server words its limits). */
  function fmtSize(n) {
    var units = [["GB", 1073741824], ["MB", 1048576], ["KB", 1024]];
    for (var i = 0; i < units.length; i++) {
      if (n >= units[i][1]) {
        var v = n / units[i][1];
        return (v === Math.round(v) ? String(v) : v.toFixed(1)) + " " + units[i][0];
      }
    }
    return n + " B";
  }

  /**
   * Upload one file to POST /api/v1/attachments with progress and cancel. Resolves with
   * {ok: true, attachment} or {ok: false, key, vars} (an i18n key that says what to change).
   */
  function uploadFile(opts) {
    var xhr = new global.XMLHttpRequest();
    var promise = new Promise(function (resolve) {
      xhr.open("POST", opts.base + "/api/v1/attachments");
      xhr.setRequestHeader("Authorization", "Bearer " + opts.token);
      xhr.upload.onprogress = function (e) { if (e.lengthComputable && opts.onProgress) opts.onProgress(e.loaded / e.total); };
      xhr.onload = function () {
        var data = null;
        try { data = JSON.parse(xhr.responseText); } catch (e) { data = null; }
        if (xhr.status === 201 && data) resolve({ ok: true, attachment: data });
        else resolve(uploadError(xhr.status, data));
      };
      xhr.onerror = function () { resolve({ ok: false, key: "uploadNetwork", vars: {} }); };
      xhr.onabort = function () { resolve({ ok: false, key: "uploadCancelled", vars: {}, cancelled: true }); };
      var form = new global.FormData();
      form.append("file", opts.file, opts.file.name || "screenshot.png");
      xhr.send(form);
    });
    return { promise: promise, cancel: function () { xhr.abort(); } };
  }

  /** The i18n key (and its values) for a refused upload: what the sender should change. */
  function uploadError(status, data) {
    var err = (data && data.error) || {};
    var m = /larger than ([0-9.]+ [KMG]?B)/.exec(err.message || "");
    if (status === 413) return { ok: false, key: "fileTooLarge", vars: { max: m ? m[1] : "" } };
    if (err.code === "unsupported_type") return { ok: false, key: "fileType", vars: {} };
    if (err.code === "not_decodable") return { ok: false, key: "fileDamaged", vars: {} };
    if (err.code === "too_many_pixels") return { ok: false, key: "filePixels", vars: {} };
    if (err.code === "empty_file") return { ok: false, key: "fileEmpty", vars: {} };
    if (status === 408) return { ok: false, key: "uploadTimeout", vars: {} };
    return { ok: false, key: "uploadFailed", vars: { m: err.message || String(status || "") } };
  }

  /** Signed links of attachments (for <img> and download anchors), cached until near expiry. */
  function AttachmentLinks(base, getToken) {
    this.base = base; this.getToken = getToken; this.cache = {};
  }
  AttachmentLinks.prototype.get = function (id) {
    var links = this, hit = links.cache[id], now = Date.now() / 1000;
    if (hit && hit.until > now) return hit.promise;
    var promise = global.fetch(links.base + "/api/v1/attachments/" + id + "/link", {
      headers: { Authorization: "Bearer " + links.getToken() },
    }).then(function (r) {
      if (!r.ok) throw new Error("link " + r.status);
      return r.json();
    }).then(function (d) {
      d.url = links.base + d.url;
      if (d.thumbnail_url) d.thumbnail_url = links.base + d.thumbnail_url;
      return d;
    });
    links.cache[id] = { promise: promise, until: now + 60 };
    promise.then(function (d) { links.cache[id].until = now + d.expires_in - LINK_REFRESH_MARGIN_S; },
      function () { delete links.cache[id]; });
    return promise;
  };

  global.TidedeskCore = {
    fmtSize: fmtSize, uploadFile: uploadFile, uploadError: uploadError, AttachmentLinks: AttachmentLinks,
    BACKOFF_BASE_MS: BACKOFF_BASE_MS, BACKOFF_MAX_MS: BACKOFF_MAX_MS,
    ACK_TIMEOUT_MS: ACK_TIMEOUT_MS, GAP_WAIT_MS: GAP_WAIT_MS,
    backoffMs: backoffMs, newId: newId, pickLang: pickLang, translator: translator,
    missingKeys: missingKeys, SeqLog: SeqLog, Outbox: Outbox, Link: Link, linkify: linkify,
    RETRYABLE_ERRORS: RETRYABLE_ERRORS, MAX_BODY_CHARS: 4000,
  };
})(typeof window !== "undefined" ? window : this);
