/* Tidedesk agent console. No framework: one state object, render functions, one WebSocket.
 *
 * Per conversation the console keeps a sequence log and an outbox from tidedesk-core.js (loaded
 * before this file): messages by seq (a seq seen twice is dropped, a hole is asked for with
 * `resume`), the unacknowledged messages it sent (re-sent with the same id after a reconnect),
 * and the lowest seq loaded so older history can be fetched with `before_seq`. The core's link
 * carries every conversation over one socket.
 */
(function () {
  "use strict";
  var Core = window.TidedeskCore;
  var PAGE = 30; // messages per history page
  var TYPING_RESEND_MS = 3000;
  var TYPING_IDLE_MS = 2500;
  var TYPING_SHOW_MS = 7000;
  var TYPING_OVERTAKE_MS = 1000;
  var CLOSE_CONFIRM_MS = 4000;
  var LANG_KEY = "tidedesk.console.lang";
  var STATUS_KEY = "tidedesk.console.status";
  var READ_KEY = "tidedesk.console.read.";

  var I18N = {
    en: {
      consoleName: "Agent console", signInTitle: "Sign in", signInIntro: "Use your Tidedesk agent account.",
      email: "Email", password: "Password", totp: "Authentication code",
      totpIntro: "Enter the 6-digit code from your authenticator app.", signIn: "Sign in", back: "Back",
      fillBoth: "Enter your email and password.", totpMissing: "Enter the code from your authenticator app.",
      totpWrong: "That code is not right. Codes change every 30 seconds — try the current one.",
      badCredentials: "Email or password is not right.", tooMany: "Too many attempts. Wait a minute and try again.",
      networkError: "Cannot reach the server. Check your connection.",
      inviteTitle: "Welcome! Choose a password (at least 10 characters)", inviteSubmit: "Set password",
      inviteDone: "Your password is set. Sign in.",
      supervisor: "Supervisor view", online: "Online", away: "Away", offline: "Offline", signOut: "Sign out",
      myChats: "My chats", noChatTitle: "No chat selected",
      noChatHint: "New chats appear on the left as soon as they are assigned to you.",
      noChats: "No open chats. Stay online and new visitors will be routed to you.",
      transfer: "Transfer", closeChat: "Close chat", confirmClose: "Click again to close",
      ticket: "Ticket", take: "Take", takeFailed: "Could not take it: {m}",
      reply: "Reply", privateNote: "Private note", canned: "Canned responses", send: "Send",
      addNote: "Add note", chatClosed: "This conversation is closed.", dismiss: "Remove from list",
      rated: "Rated {score}/5 by the visitor", ratedComment: "Rated {score}/5 by the visitor: “{comment}”",
      transferTitle: "Transfer this chat", toAgent: "To an agent", toPool: "To a pool", cancel: "Cancel",
      noAgents: "No other agents.", pool: "Pool {p}",
      replyPlaceholder: "Write a reply — Enter sends, Shift+Enter adds a line, / for canned responses",
      notePlaceholder: "Private note — only agents see it",
      connConnected: "Connected", connConnecting: "Connecting…", connReconnecting: "Reconnecting in {s}s…",
      connOffline: "Offline — waiting for the network",
      visitor: "Visitor", typing: "typing…", earlier: "Load earlier messages", noteLabel: "Private note",
      sending: "Sending…", unsent: "Not sent yet — will retry", you: "You",
      newChat: "New chat: {name}", transferredAway: "Chat with {name} was transferred.",
      chatEnded: "Chat with {name} was closed.", conv: "Conversation {id}", lang: "Language: {l}",
      noCanned: "No canned responses yet.", error: "Error: {m}", loadFailed: "Could not load history: {m}",
      chatsLoad: "{n} / {max}", sessionExpired: "Your session expired. Sign in again.", seen: "Seen",
      enableNotifications: "Enable notifications",
      attach: "Attach a file", enlarge: "Enlarge", download: "Download", closeImage: "Close",
      cancelUpload: "Cancel", unavailableFile: "file no longer available",
      fileTooLarge: "The file is larger than {max}: choose a smaller one.",
      fileType: "This type of file cannot be sent: send an image (PNG, JPEG, GIF, WebP), a PDF, a text or a ZIP file.",
      fileDamaged: "The image is damaged or incomplete: save it again and retry.",
      filePixels: "The image has too many pixels: make it smaller and retry.",
      fileEmpty: "The file is empty: choose a file with something in it.",
      uploadTimeout: "The upload took too long: check your connection and try again.",
      uploadNetwork: "The file could not be sent: check your connection and try again.",
      uploadCancelled: "Upload cancelled.", uploadFailed: "The file could not be sent: {m}",
      soundOn: "Sound", flashOn: "Flash tab", tooLong: "This reply is {n} characters; the limit is {max}. Shorten it or send it in parts.",
      counter: "{n} / {max}", inbox: "Inbox", composerLabel: "Reply to the visitor",
      chatListLabel: "My chats", contactTitle: "Contact", name: "Name", phone: "Phone", page: "Page",
      referrer: "Came from", browser: "Browser", localTime: "Time zone", pastChats: "Conversations",
      state_queued: "waiting", state_assigned: "open", state_closed: "closed", state_offline: "ticket",
    },
    "zh-CN": {
      consoleName: "客服工作台", signInTitle: "登录", signInIntro: "使用您的 Tidedesk 客服账号登录。",
      email: "邮箱", password: "密码", totp: "动态验证码",
      totpIntro: "请输入身份验证器应用中的 6 位验证码。", signIn: "登录", back: "返回",
      fillBoth: "请输入邮箱和密码。", totpMissing: "请输入身份验证器中的验证码。",
      totpWrong: "验证码不正确。验证码每 30 秒更新一次，请输入当前的验证码。",
      badCredentials: "邮箱或密码不正确。", tooMany: "尝试次数过多，请稍后再试。",
      networkError: "无法连接服务器，请检查网络。",
      inviteTitle: "欢迎！请设置密码（至少 10 个字符）", inviteSubmit: "设置密码",
      inviteDone: "密码已设置，请登录。",
      supervisor: "主管视图", online: "在线", away: "离开", offline: "离线", signOut: "退出登录",
      myChats: "我的对话", noChatTitle: "未选择对话", noChatHint: "新对话分配给您后会立即出现在左侧。",
      noChats: "暂无进行中的对话。保持在线，新访客会被分配给您。",
      transfer: "转接", closeChat: "结束对话", confirmClose: "再次点击以结束",
      ticket: "工单", take: "接入", takeFailed: "无法接入：{m}",
      reply: "回复", privateNote: "内部备注", canned: "快捷回复", send: "发送",
      addNote: "添加备注", chatClosed: "此对话已结束。", dismiss: "从列表移除",
      rated: "访客评分：{score}/5", ratedComment: "访客评分：{score}/5，“{comment}”",
      transferTitle: "转接此对话", toAgent: "转给客服", toPool: "转到分组", cancel: "取消",
      noAgents: "没有其他客服。", pool: "分组 {p}",
      replyPlaceholder: "输入回复 — Enter 发送，Shift+Enter 换行，输入 / 使用快捷回复",
      notePlaceholder: "内部备注 — 仅客服可见",
      connConnected: "已连接", connConnecting: "正在连接…", connReconnecting: "{s} 秒后重新连接…",
      connOffline: "网络已断开，等待恢复",
      visitor: "访客", typing: "正在输入…", earlier: "加载更早的消息", noteLabel: "内部备注",
      sending: "发送中…", unsent: "尚未发送，将自动重试", you: "我",
      newChat: "新对话：{name}", transferredAway: "与 {name} 的对话已转接。",
      chatEnded: "与 {name} 的对话已结束。", conv: "对话 {id}", lang: "语言：{l}",
      noCanned: "暂无快捷回复。", error: "错误：{m}", loadFailed: "无法加载历史消息：{m}",
      chatsLoad: "{n} / {max}", sessionExpired: "登录已过期，请重新登录。", seen: "已读",
      enableNotifications: "开启桌面通知",
      attach: "添加附件", enlarge: "放大", download: "下载", closeImage: "关闭",
      cancelUpload: "取消", unavailableFile: "文件已不可用",
      fileTooLarge: "文件超过 {max}：请选择更小的文件。",
      fileType: "无法发送此类文件：请发送图片（PNG、JPEG、GIF、WebP）、PDF、文本或 ZIP 文件。",
      fileDamaged: "图片已损坏或不完整：请重新保存后再试。",
      filePixels: "图片像素过多：请缩小后再试。",
      fileEmpty: "文件是空的：请选择有内容的文件。",
      uploadTimeout: "上传时间过长：请检查网络后重试。",
      uploadNetwork: "文件未能发送：请检查网络后重试。",
      uploadCancelled: "已取消上传。", uploadFailed: "文件未能发送：{m}",
      soundOn: "提示音", flashOn: "标签闪烁", tooLong: "这条回复有 {n} 个字符，上限是 {max}。请缩短或分成几条发送。",
      counter: "{n} / {max}", inbox: "收件箱", composerLabel: "回复访客",
      chatListLabel: "我的对话", contactTitle: "联系人", name: "姓名", phone: "电话", page: "页面",
      referrer: "来源", browser: "浏览器", localTime: "时区", pastChats: "对话记录",
      state_queued: "等待中", state_assigned: "进行中", state_closed: "已结束", state_offline: "工单",
    },
  };

  function lsGet(k) { try { return localStorage.getItem(k); } catch (e) { return null; } }
  function lsSet(k, v) { try { if (v === null) localStorage.removeItem(k); else localStorage.setItem(k, v); } catch (e) { /* ignore */ } }

  var S = {
    lang: Core.pickLang(lsGet(LANG_KEY) || navigator.language),
    me: null,
    status: lsGet(STATUS_KEY) || "online",
    chats: {}, // conversation_id -> chat
    current: null,
    canned: [],
    mode: "reply",
  };
  var link = new Core.Link({
    url: function () {
      // A one-time ticket, never the access token, goes in the URL (URLs reach access logs).
      return TDAuth.ensureFresh().then(function () {
        return TDAuth.api("/api/v1/ws-ticket", { method: "POST" });
      }).then(function (j) {
        var proto = location.protocol === "https:" ? "wss:" : "ws:";
        return proto + "//" + location.host + "/ws/agent?ticket=" + encodeURIComponent(j.ticket);
      });
    },
    onUrlFailed: function (err) {
      if (err.status === 401) signedOut(t("sessionExpired")); else link.scheduleReconnect();
    },
    onFrame: onFrame,
    onClose: function (ev) {
      if (ev.code === 4401) {
        TDAuth.refresh().then(function () { link.scheduleReconnect(0); }, function () { signedOut(t("sessionExpired")); });
        return true;
      }
      if (ev.code === 4403) { toast(t("error", { m: ev.reason || "forbidden" })); }
      return false;
    },
    onConn: function () { renderConn(); },
    mayConnect: function () { return !!TDAuth.session; },
    pending: function () { return chatList().some(function (c) { return c.outbox.items.length > 0; }); },
    onAckTimeout: function () { chatList().forEach(function (c) { c.outbox.markFailed(); }); renderChat(); },
  });
  var typingSentAt = 0, typingConv = null, typingOffTimer = null;
  var login = null;

  var t = Core.translator(I18N, function () { return S.lang; });
  function $(sel, root) { return (root || document).querySelector(sel); }
  function $$(sel, root) { return Array.prototype.slice.call((root || document).querySelectorAll(sel)); }
  var h = window.TidedeskDom.h;
  var fmtTime = window.TidedeskDom.fmtTime;
  function toast(text) {
    var el = h("div", { class: "toast", role: "status", text: text, "data-testid": "toast" });
    document.body.appendChild(el);
    setTimeout(function () { el.remove(); }, 4000);
  }

  // ---------------------------------------------------------------- language
  function applyLang() {
    document.documentElement.lang = S.lang;
    $$("[data-i18n]").forEach(function (el) { el.textContent = t(el.getAttribute("data-i18n")); });
    $$("[data-lang-select]").forEach(function (el) { el.value = S.lang; });
    document.title = "Tidedesk — " + t("consoleName");
    if (login) login.translate();
    if (S.me) { renderTop(); renderList(); renderChat(); }
  }
  function setLang(l) { S.lang = Core.pickLang(l); lsSet(LANG_KEY, S.lang); applyLang(); }

  // ---------------------------------------------------------------- chats
  function visitorName(chat) {
    var v = chat.visitor || {};
    var contact = chat.contact || {};
    return v.name || contact.name || contact.email || (t("visitor") + " " + String(v.id || chat.id).slice(-4).toUpperCase());
  }

  // The contact side panel (issue 14): who the visitor is, where they came from, their past chats.
  function loadContact(c) {
    if (c.contact || c.contactLoading || !c.visitor || !c.visitor.id) { renderContact(c); return; }
    c.contactLoading = true;
    TDAuth.api("/api/v1/contacts/" + encodeURIComponent(c.visitor.id)).then(function (j) {
      c.contact = j; c.contactLoading = false;
      if (S.current === c.id) { renderChat(); renderList(); }
    }, function () { c.contactLoading = false; });
  }
  function renderContact(c) {
    var box = $("[data-contact]");
    if (!box) return;
    box.textContent = "";
    box.hidden = !c || !c.contact;
    box.parentNode.classList.toggle("with-contact", !box.hidden);
    if (!c || !c.contact) return;
    var k = c.contact, ctx = k.context || {};
    function row(label, value, href) {
      if (!value) return null;
      var v = href ? h("a", { href: href, rel: "noopener noreferrer", target: "_blank", text: value }) : h("span", { text: value });
      return h("div", { class: "kv" }, [h("dt", { text: label }), h("dd", {}, [v])]);
    }
    var safe = function (u) { return /^https?:\/\//i.test(u || "") ? u : null; };
    box.appendChild(h("h2", { text: t("contactTitle") }));
    box.appendChild(h("dl", {}, [
      row(t("name"), k.name), row(t("email"), k.email, k.email ? "mailto:" + k.email : null), row(t("phone"), k.phone),
      row(t("page"), ctx.page_url, safe(ctx.page_url)), row(t("referrer"), ctx.referrer, safe(ctx.referrer)),
      row(t("browser"), [ctx.browser, ctx.os].filter(Boolean).join(" · ")), row(t("localTime"), ctx.tz),
    ].concat(Object.keys(k.fields || {}).map(function (f) { return row(f, k.fields[f]); }))));
    if ((k.tags || []).length) box.appendChild(h("div", {}, k.tags.map(function (tg) { return h("span", { class: "tag", text: tg }); })));
    box.appendChild(h("h3", { text: t("pastChats") }));
    box.appendChild(h("ul", { class: "past" }, (k.conversations || []).map(function (pc) {
      var when = new Date(pc.created_at * 1000).toLocaleDateString(S.lang);
      return h("li", {}, [h("a", { href: "/inbox#conv=" + pc.id, "data-testid": "past-chat",
        text: when + " · " + t("state_" + pc.state) + (pc.last_message ? " · " + String(pc.last_message.body).slice(0, 60) : "") })]);
    })));
  }
  function readSeq(cid) { return Number(lsGet(READ_KEY + cid) || 0); }

  function chatList() { return Object.keys(S.chats).map(function (cid) { return S.chats[cid]; }); }

  function getChat(cid, visitor, state) {
    var c = S.chats[cid];
    if (!c) {
      c = S.chats[cid] = {
        id: cid, visitor: visitor || {}, state: state || "assigned", hasMore: false, loadingOlder: false,
        // The log starts where `follow` or the first message puts it (top null until then).
        log: new Core.SeqLog(function (top) { send({ type: "resume", conversation_id: cid, after_seq: top }); },
          { start: null, onStep: function () { renderChat(); } }),
        outbox: new Core.Outbox(), unread: 0, typing: false,
        typingTimer: null, lastActivity: Date.now(), closeArmed: false, draft: "",
      };
    } else {
      if (visitor) c.visitor = visitor;
      if (state) c.state = state;
    }
    return c;
  }

  /** Start following a conversation whose newest seq is lastSeq: load its latest page. */
  function follow(c, lastSeq) {
    if (c.log.top === null) {
      var from = Math.max(0, (lastSeq || 0) - PAGE);
      c.log.startAt(from); c.hasMore = from > 0;
    }
    c.log.catchUp(Math.max(lastSeq || 0, c.log.maxSeq));
  }

  function addMessage(f) {
    var c = S.chats[f.conversation_id];
    if (!c || typeof f.seq !== "number") return;
    if (f.id) c.outbox.take(f.id);
    var top = c.log.top;
    if (!c.log.add(f)) return;
    if (top === null) c.hasMore = f.seq > 1;
    if (f.from === "visitor") {
      if (f.seq > (c.maxVisitorSeq || 0)) c.maxVisitorSeq = f.seq;
      // Typing frames are relayed faster than stored messages: a very recent "on" still stands.
      if (Date.now() - (c.typingAt || 0) > TYPING_OVERTAKE_MS) c.typing = false;
      var reading = S.current === c.id && !document.hidden;
      if (!reading && f.seq > readSeq(c.id)) c.unread += 1;
    }
    if (f.seq > top) c.lastActivity = Date.now();
  }

  function markRead(c) {
    c.unread = 0;
    if (c.log.top) lsSet(READ_KEY + c.id, String(Math.max(c.log.top, readSeq(c.id))));
    // Tell the visitor (their widget shows "Seen"); only when a newer visitor message was shown.
    if (S.current === c.id && !document.hidden && c.state !== "closed" && (c.maxVisitorSeq || 0) > (c.readSent || 0)) {
      if (send({ type: "read", conversation_id: c.id, seq: c.maxVisitorSeq })) c.readSent = c.maxVisitorSeq;
    }
  }

  function loadOlder(c) {
    if (!c.hasMore || c.loadingOlder) return;
    c.loadingOlder = true;
    var log = $("[data-log]");
    var prevHeight = log.scrollHeight, prevTop = log.scrollTop;
    TDAuth.api("/api/v1/conversations/" + encodeURIComponent(c.id) + "/messages?before_seq=" + c.log.low + "&limit=" + PAGE)
      .then(function (j) {
        var got = (j && j.messages) || [];
        got.forEach(function (m) {
          if (typeof m.seq !== "number" || c.log.msgs[m.seq]) return;
          m.conversation_id = m.conversation_id || c.id;
          c.log.addOlder(m);
        });
        if (got.length < PAGE || c.log.low <= 1) c.hasMore = false;
        c.loadingOlder = false;
        if (S.current === c.id) {
          renderLog(c, true);
          log.scrollTop = log.scrollHeight - prevHeight + prevTop; // keep what the agent was reading in place
        }
      }, function (err) {
        c.loadingOlder = false;
        toast(t("loadFailed", { m: err.message }));
      });
  }

  // ---------------------------------------------------------------- tickets
  // Conversations nobody could take (state offline) of the agent's pools: listed with the
  // chats, readable and answerable whether or not the visitor is there; "Take" makes one yours.
  var TICKETS_EVERY_MS = 30000;
  var ticketsTimer = null;

  function loadTickets() {
    clearTimeout(ticketsTimer);
    if (!TDAuth.session) return;
    TDAuth.api("/api/v1/tickets").then(function (j) {
      ((j && j.tickets) || []).forEach(function (tk) {
        if (tk.state !== "offline") return;
        var known = S.chats[tk.conversation_id];
        if (known && known.state !== "offline") return;
        var c = getChat(tk.conversation_id, tk.visitor, "offline");
        c.ticket = tk.status;
        if (c.log.top === null) {
          c.log.startAt(0);
          send({ type: "resume", conversation_id: c.id, after_seq: 0 });
        }
      });
      renderList(); renderChat();
    }, function () { /* the next round tries again */ });
    ticketsTimer = setTimeout(loadTickets, TICKETS_EVERY_MS);
  }

  function takeCurrent() {
    var c = S.chats[S.current];
    if (!c) return;
    TDAuth.api("/api/v1/conversations/" + encodeURIComponent(c.id) + "/take", { method: "POST" })
      .then(function () { c.state = "assigned"; c.ticket = null; renderList(); renderChat(); },
        function (err) { toast(t("takeFailed", { m: err.message })); loadTickets(); });
  }

  // ---------------------------------------------------------------- socket
  function send(obj) { return link.send(obj); }

  function onFrame(f) {
    var c;
    switch (f.type) {
      case "hello": {
        link.established();
        send({ type: "status", status: S.status });
        var seen = {};
        (f.conversations || []).forEach(function (it) {
          seen[it.conversation_id] = true;
          c = getChat(it.conversation_id, it.visitor, it.state || "assigned");
          follow(c, it.last_seq);
        });
        Object.keys(S.chats).forEach(function (cid) {
          // Closed or transferred while we were away.
          // (Tickets are not in hello: loadTickets() below brings them up to date.)
          var st = S.chats[cid].state;
          if (!seen[cid] && st !== "closed" && st !== "offline") S.chats[cid].state = "closed";
        });
        chatList().forEach(function (chat) { chat.outbox.resend(function (m) { transmit(chat, m); }); });
        if (!S.current) {
          var first = sortedChats()[0];
          if (first) S.current = first.id;
        }
        renderList(); renderChat();
        loadTickets();
        break;
      }
      case "assigned":
        c = getChat(f.conversation_id, f.visitor, "assigned");
        follow(c, f.last_seq);
        c.lastActivity = Date.now();
        if (!S.current) S.current = c.id;
        toast(t("newChat", { name: visitorName(c) }));
        notify(t("newChat", { name: visitorName(c) }), c.id);
        renderList(); renderChat();
        break;
      case "message":
        addMessage(f);
        if (f.from === "visitor" && document.hidden && S.chats[f.conversation_id] && f.seq > readSeq(f.conversation_id)) {
          notify(visitorName(S.chats[f.conversation_id]) + ": " + f.body, f.conversation_id);
        }
        renderList();
        if (S.current === f.conversation_id) { renderLog(S.chats[f.conversation_id]); renderTyping(); }
        break;
      case "ack":
        onAck(f);
        break;
      case "typing":
        c = S.chats[f.conversation_id];
        if (!c) break;
        c.typing = !!f.on;
        c.typingAt = Date.now();
        clearTimeout(c.typingTimer);
        if (c.typing) c.typingTimer = setTimeout(function () { c.typing = false; renderList(); renderTyping(); }, TYPING_SHOW_MS);
        renderList(); renderTyping();
        break;
      case "read":
        // The visitor has seen everything up to this seq.
        c = S.chats[f.conversation_id];
        if (!c || typeof f.seq !== "number" || f.seq <= (c.visitorRead || 0)) break;
        c.visitorRead = f.seq;
        if (S.current === c.id) renderLog(c, true);
        break;
      case "closed":
        c = S.chats[f.conversation_id];
        if (!c) break;
        c.state = "closed"; c.typing = false;
        renderList(); renderChat();
        break;
      case "rated":
        // issue 13: the visitor rated a chat this agent had.
        c = S.chats[f.conversation_id];
        if (!c) break;
        c.rating = { score: f.score, comment: f.comment || "" };
        renderChat();
        break;
      case "unassigned":
        c = S.chats[f.conversation_id];
        if (!c) break;
        toast(t("transferredAway", { name: visitorName(c) }));
        removeChat(c.id);
        break;
      case "state":
        c = S.chats[f.conversation_id];
        if (c && f.state) { c.state = f.state; renderList(); renderChat(); }
        break;
      case "error":
        onError(f);
        break;
      default:
        break;
    }
  }

  /** An error frame: shown once. One for a message that can never succeed (too long,
   *  forbidden, closed) takes it out of the outbox, so it is never re-sent, and gives its text
   *  back to the composer; a retryable one leaves it for the next reconnect. */
  function onError(f) {
    var c = f.id ? chatList().filter(function (chat) { return chat.outbox.find(f.id); })[0] : null;
    var m = c ? c.outbox.reject(f) : null;
    if (m) {
      if (S.current === c.id) {
        var input = $("[data-input]");
        if (!input.value) { input.value = m.body; updateCounter(); }
      } else if (!c.draft) c.draft = m.body;
      renderLog(c); renderList();
    }
    // The server's limit (named in its message) may differ from the page's.
    var limit = /limit is (\d+)/.exec(f.message || "");
    if (f.code === "body_too_long" && m) toast(t("tooLong", { n: m.body.length, max: limit ? Number(limit[1]) : Core.MAX_BODY_CHARS }));
    else toast(t("error", { m: f.message || f.code }));
  }

  function updateCounter() {
    var input = $("[data-input]"), el = $("[data-counter]");
    if (!input || !el) return;
    var n = input.value.trim().length, max = Core.MAX_BODY_CHARS;
    el.textContent = t("counter", { n: n, max: max });
    el.hidden = n < max * 0.8;
    el.classList.toggle("over", n > max);
    var msg = $("[data-too-long]");
    msg.hidden = n <= max;
    msg.textContent = n > max ? t("tooLong", { n: n, max: max }) : "";
  }

  var growComposer = function () { /* set by wire() */ };

  function onAck(f) {
    // Ids are unique, so the chat whose outbox holds the id is the one the ack is for.
    var c = chatList().filter(function (chat) { return chat.outbox.find(f.id); })[0];
    if (!c) return;
    var m = c.outbox.take(f.id);
    if (typeof f.seq === "number") {
      c.log.add({
        type: "message", conversation_id: c.id, seq: f.seq, id: m.id, from: "agent", body: m.body,
        ts: m.ts, private: m.private, name: S.me && S.me.name, attachments: m.attachments,
      });
    }
    link.armAckTimer();
    renderList();
    if (S.current === c.id) renderLog(c);
  }

  function transmit(c, m) {
    var frame = { type: m.private ? "note" : "message", conversation_id: c.id, id: m.id, body: m.body };
    // Uploaded once; a resend after a reconnect names the same ids with the same client id.
    if (m.attachments && m.attachments.length) frame.attachments = m.attachments.map(function (a) { return a.id; });
    link.transmit(frame);
  }

  var links = new Core.AttachmentLinks("", function () { return TDAuth.session ? TDAuth.session.access_token : ""; });

  function showUploadError(text) {
    var el = $("[data-upload-error]");
    el.textContent = text || ""; el.hidden = !text;
  }

  function uploadFiles(files) {
    var c = S.chats[S.current];
    if (!c || c.state === "closed") return;
    showUploadError(null);
    files.forEach(function (file) {
      var job = null;
      var chip = window.TidedeskDom.uploadChip(file, t, function () { if (job) job.cancel(); });
      $("[data-uploads]").appendChild(chip);
      TDAuth.ensureFresh().then(function (sess) {
        job = Core.uploadFile({ base: "", token: sess.access_token, file: file, onProgress: chip.progress });
        return job.promise;
      }).then(function (res) {
        chip.remove();
        if (!res.ok) { showUploadError(t(res.key, res.vars)); return; }
        var m = { id: Core.newId(), body: "", ts: Date.now() / 1000, private: S.mode === "note", attachments: [res.attachment] };
        c.outbox.push(m);
        transmit(c, m);
        renderLog(c); renderList();
      }, function () { chip.remove(); showUploadError(t("uploadNetwork")); });
    });
  }

  function sendCurrent() {
    var c = S.chats[S.current];
    var input = $("[data-input]");
    var body = input.value.trim();
    if (!c || !body || c.state === "closed") return;
    if (body.length > Core.MAX_BODY_CHARS) { updateCounter(); input.focus(); return; } // never sent: it cannot succeed
    var m = { id: Core.newId(), body: body, ts: Date.now() / 1000, private: S.mode === "note" };
    c.outbox.push(m);
    input.value = ""; c.draft = "";
    updateCounter(); growComposer();
    stopTyping();
    hideCanned();
    transmit(c, m);
    markRead(c);
    renderLog(c); renderList();
    var log = $("[data-log]"); log.scrollTop = log.scrollHeight;
  }

  function onInputTyping() {
    var c = S.chats[S.current];
    if (!c || S.mode === "note") return;
    var now = Date.now();
    if (typingConv !== c.id || now - typingSentAt > TYPING_RESEND_MS) {
      if (typingConv && typingConv !== c.id) stopTyping();
      if (send({ type: "typing", conversation_id: c.id, on: true })) { typingSentAt = now; typingConv = c.id; }
    }
    clearTimeout(typingOffTimer);
    typingOffTimer = setTimeout(stopTyping, TYPING_IDLE_MS);
  }
  function stopTyping() {
    clearTimeout(typingOffTimer);
    if (typingConv) send({ type: "typing", conversation_id: typingConv, on: false });
    typingConv = null; typingSentAt = 0;
  }

  function removeChat(cid) {
    delete S.chats[cid];
    lsSet(READ_KEY + cid, null);
    if (S.current === cid) { S.current = null; var first = sortedChats()[0]; if (first) S.current = first.id; }
    renderList(); renderChat();
  }

  // ---------------------------------------------------------------- notifications
  // A console in a background tab must still get noticed: a system notification when the tab is
  // hidden (after the agent allowed it with the top-bar button), the unread total in the title.
  // A sound and a tab-title flash on a new chat or message (issue 14), each with a switch in
  // the top bar, kept in localStorage.
  var SOUND_KEY = "tidedesk.console.sound", FLASH_KEY = "tidedesk.console.flash";
  var flashTimer = null, audioCtx = null;
  function alertsOn(key) { return lsGet(key) !== "off"; }
  function chime() {
    if (!alertsOn(SOUND_KEY)) return;
    try {
      audioCtx = audioCtx || new (window.AudioContext || window.webkitAudioContext)();
      var osc = audioCtx.createOscillator(), gain = audioCtx.createGain();
      osc.frequency.value = 880; gain.gain.value = 0.06;
      osc.connect(gain); gain.connect(audioCtx.destination);
      osc.start(); osc.stop(audioCtx.currentTime + 0.15);
    } catch (e) { /* no audio here */ }
  }
  function flashTitle(text) {
    if (!alertsOn(FLASH_KEY) || !document.hidden || flashTimer) return;
    var plain = document.title, on = false;
    flashTimer = setInterval(function () {
      if (!document.hidden) { clearInterval(flashTimer); flashTimer = null; renderList(); return; }
      on = !on; document.title = on ? "● " + text : plain;
    }, 1000);
  }
  function alertNew(text) { chime(); flashTitle(text); }

  function notify(text, cid) {
    alertNew(text);
    if (!document.hidden || !("Notification" in window) || Notification.permission !== "granted") return;
    try {
      var n = new Notification("Tidedesk", { body: text.slice(0, 140), tag: "tidedesk-" + cid });
      n.onclick = function () { window.focus(); selectChat(cid); n.close(); };
    } catch (e) { /* some browsers only allow notifications from a service worker */ }
  }
  function renderNotifyButton() {
    var b = $("[data-notify]");
    b.hidden = !("Notification" in window) || Notification.permission !== "default";
  }

  // ---------------------------------------------------------------- rendering
  function sortedChats() {
    return Object.keys(S.chats).map(function (k) { return S.chats[k]; }).sort(function (a, b) {
      var ac = a.state === "closed" ? 1 : 0, bc = b.state === "closed" ? 1 : 0;
      if (ac !== bc) return ac - bc;
      return b.lastActivity - a.lastActivity;
    });
  }

  function lastMessage(c) {
    var best = null;
    Object.keys(c.log.msgs).forEach(function (k) { var m = c.log.msgs[k]; if (!best || m.seq > best.seq) best = m; });
    if (c.outbox.items.length) return c.outbox.items[c.outbox.items.length - 1];
    return best;
  }

  function renderConn() {
    var el = $("[data-testid=conn]");
    if (!el) return;
    var conn = link.conn;
    el.setAttribute("data-state", conn);
    var text = conn === "online" ? t("connConnected")
      : conn === "offline" ? t("connOffline")
      : conn === "reconnecting" ? t("connReconnecting", { s: link.secondsToRetry() })
      : t("connConnecting");
    $("[data-conn-text]").textContent = text;
  }

  function renderTop() {
    $("[data-me-name]").textContent = S.me.name || S.me.email;
    $("[data-status]").value = S.status;
    $("[data-status-dot]").className = "dot " + S.status;
    $("[data-supervisor-link]").hidden = !(S.me.role === "supervisor" || S.me.role === "admin");
    renderNotifyButton();
    renderConn();
  }

  function renderList() {
    var ul = $("[data-chat-list]");
    ul.textContent = "";
    var list = sortedChats();
    var open = list.filter(function (c) { return c.state !== "closed" && c.state !== "offline"; }).length;
    $("[data-chat-count]").textContent = S.me && S.me.max_chats ? "(" + t("chatsLoad", { n: open, max: S.me.max_chats }) + ")" : "(" + open + ")";
    if (!list.length) ul.appendChild(h("li", { class: "empty-list", role: "option", "aria-disabled": "true", "aria-selected": "false", text: t("noChats") }));
    var totalUnread = 0;
    list.forEach(function (c) {
      totalUnread += c.unread;
      var name = visitorName(c);
      var last = lastMessage(c);
      var preview = c.typing ? t("typing") : last ? (last.private ? t("noteLabel") + ": " : last.from === "agent" ? t("you") + ": " : "") + last.body : "";
      var tags = (c.visitor.tags || []).map(function (tg) { return h("span", { class: "tag" + (tg === "vip" ? " vip" : ""), text: tg }); });
      var li = h("li", {
        class: "chat-item" + (c.id === S.current ? " active" : "") + (c.state === "closed" ? " closed" : ""),
        "data-testid": "chat-item", "data-conversation": c.id, "data-unread": String(c.unread),
        tabindex: "0", role: "option", "aria-selected": c.id === S.current ? "true" : "false",
        onclick: function () { selectChat(c.id); },
        onkeydown: function (e) { listKeys(e, function () { selectChat(c.id); }); },
      }, [
        h("div", { class: "avatar", text: name.slice(0, 1).toUpperCase() }),
        h("div", { class: "ci-main" }, [
          h("div", { class: "ci-name" }, [name].concat(tags, c.state === "closed" ? [h("span", { class: "tag closed", text: t("chatClosed").replace(/[.。]$/, "") })] : [],
            c.state === "offline" ? [h("span", { class: "tag ticket", "data-testid": "ticket-tag", text: t("ticket") })] : [])),
          h("div", { class: "ci-preview" + (c.typing ? " typing" : ""), text: preview }),
        ]),
        c.unread ? h("span", { class: "unread", "data-testid": "unread", text: String(c.unread) }) : h("span"),
      ]);
      ul.appendChild(li);
    });
    document.title = (totalUnread ? "(" + totalUnread + ") " : "") + "Tidedesk — " + t("consoleName");
  }

  /** Keyboard on list items: Enter or Space opens, arrow keys move between items. */
  function listKeys(e, open) {
    var item = e.currentTarget;
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); open(); return; }
    if (e.key !== "ArrowDown" && e.key !== "ArrowUp") return;
    e.preventDefault();
    var next = e.key === "ArrowDown" ? item.nextElementSibling : item.previousElementSibling;
    if (next && next.getAttribute("tabindex") !== null) next.focus();
  }

  function selectChat(cid) {
    var prev = S.chats[S.current];
    if (prev) prev.draft = $("[data-input]").value;
    if (S.current !== cid) stopTyping();
    S.current = cid;
    var c = S.chats[cid];
    if (c) markRead(c);
    renderList(); renderChat();
    var input = $("[data-input]");
    input.value = (c && c.draft) || "";
    updateCounter(); growComposer();
    if (c) loadContact(c);
    if (c && c.state !== "closed") input.focus();
  }

  function renderChat() {
    var c = S.chats[S.current];
    $("[data-empty]").hidden = !!c;
    $("[data-head]").hidden = !c;
    $("[data-log]").hidden = !c;
    $("[data-composer]").hidden = !c || c.state === "closed";
    $("[data-closed-bar]").hidden = !c || c.state !== "closed";
    var ratingEl = $("[data-rating]");
    ratingEl.hidden = !c || !c.rating;
    if (c && c.rating) {
      ratingEl.textContent = t(c.rating.comment ? "ratedComment" : "rated", c.rating);
      ratingEl.setAttribute("data-score", String(c.rating.score));
    }
    if (!c) { $("[data-typing]").hidden = true; renderContact(null); return; }
    var name = visitorName(c);
    $("[data-head-avatar]").textContent = name.slice(0, 1).toUpperCase();
    var nameEl = $("[data-head-name]");
    nameEl.textContent = name;
    (c.visitor.tags || []).forEach(function (tg) { nameEl.appendChild(h("span", { class: "tag" + (tg === "vip" ? " vip" : ""), text: tg })); });
    var sub = [];
    var email = c.visitor.email || (c.contact && c.contact.email);
    if (email && email !== name) sub.push(email);
    if (c.visitor.locale) sub.push(t("lang", { l: c.visitor.locale }));
    $("[data-head-sub]").textContent = sub.join(" · ");
    var closeBtn = $("[data-close]");
    closeBtn.hidden = c.state === "closed";
    $("[data-transfer]").hidden = c.state === "closed" || c.state === "offline";
    $("[data-take]").hidden = c.state !== "offline";
    closeBtn.textContent = c.closeArmed ? t("confirmClose") : t("closeChat");
    closeBtn.classList.toggle("confirming", !!c.closeArmed);
    var input = $("[data-input]");
    input.placeholder = S.mode === "note" ? t("notePlaceholder") : t("replyPlaceholder");
    $("[data-composer]").classList.toggle("note-mode", S.mode === "note");
    $$("[data-mode]").forEach(function (b) { b.classList.toggle("active", b.getAttribute("data-mode") === S.mode); });
    $("[data-send]").textContent = S.mode === "note" ? t("addNote") : t("send");
    renderLog(c, true);
    renderTyping();
    renderContact(c);
  }

  function renderTyping() {
    var c = S.chats[S.current];
    var el = $("[data-typing]");
    el.hidden = !(c && c.typing && c.state !== "closed");
    el.textContent = c && c.typing ? visitorName(c) + " " + t("typing") : "";
  }

  function renderLog(c, keepScroll) {
    if (!c || S.current !== c.id) return;
    var log = $("[data-log]");
    var nearBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 80;
    var scrollTop = log.scrollTop;
    log.textContent = "";
    if (c.hasMore) log.appendChild(h("button", {
      class: "btn earlier", type: "button", "data-testid": "load-earlier", text: t("earlier"),
      onclick: function () { loadOlder(c); },
    }));
    var seqs = c.log.seqs();
    var seenSeq = 0;
    seqs.forEach(function (seq) {
      var m = c.log.msgs[seq];
      if (m.from === "agent" && !m.private && seq <= (c.visitorRead || 0)) seenSeq = seq;
    });
    seqs.forEach(function (seq) { log.appendChild(msgEl(c, c.log.msgs[seq], false, seq === seenSeq)); });
    c.outbox.items.forEach(function (m) { log.appendChild(msgEl(c, m, true)); });
    if (!document.hidden) markRead(c);
    if (nearBottom || !keepScroll) log.scrollTop = log.scrollHeight;
    else log.scrollTop = scrollTop;
  }

  function msgEl(c, m, pending, seen) {
    if (m.from === "system") return h("div", { class: "sys", "data-testid": "msg", "data-seq": m.seq, "data-from": "system", text: m.body });
    var from = pending ? "agent" : m.from;
    var cls = "msg " + from + (m.private ? " note" : "") + (pending ? " pending" : "");
    var who = from === "visitor" ? visitorName(c) : (m.name || (S.me && S.me.name) || "");
    var meta = pending ? (m.failed ? t("unsent") : t("sending"))
      : (m.private ? t("noteLabel") + " · " : "") + who + " · " + fmtTime(m.ts || Date.now() / 1000) + (seen ? " · " + t("seen") : "");
    return h("div", {
      class: cls, "data-testid": "msg", "data-seq": pending ? null : m.seq, "data-id": m.id, "data-from": from,
      "data-private": m.private ? "true" : null, "data-pending": pending ? "true" : null,
    }, [(m.body || !(m.attachments && m.attachments.length)) && h("div", { class: "bubble", "data-testid": "msg-body" }, window.TidedeskDom.richText(m.body)),
      m.attachments && m.attachments.length && window.TidedeskDom.attachmentList(m.attachments, links, t, document.body),
      h("div", { class: "meta", text: meta })]);
  }

  // ---------------------------------------------------------------- canned responses
  var cannedSel = 0, cannedItems = [];
  function showCanned(filter) {
    var box = $("[data-canned]");
    var f = String(filter || "").toLowerCase();
    cannedItems = S.canned.filter(function (c) {
      return !f || c.shortcut.toLowerCase().indexOf(f) === 0 || c.body.toLowerCase().indexOf(f) >= 0;
    });
    box.textContent = "";
    if (!cannedItems.length) {
      if (filter) { hideCanned(); return; }
      box.appendChild(h("div", { class: "muted", style: "padding:8px", text: t("noCanned") }));
    }
    cannedSel = Math.min(cannedSel, Math.max(0, cannedItems.length - 1));
    cannedItems.forEach(function (c, i) {
      box.appendChild(h("div", {
        class: "canned-item" + (i === cannedSel ? " sel" : ""), "data-testid": "canned-item",
        onmousedown: function (e) { e.preventDefault(); insertCanned(c); },
      }, [h("b", { text: "/" + c.shortcut }), h("span", { text: c.body })]));
    });
    box.hidden = false;
  }
  function hideCanned() { $("[data-canned]").hidden = true; cannedItems = []; cannedSel = 0; }
  // The variables a canned response may hold (the server refuses others).
  function expandCanned(body) {
    var chat = S.current && S.chats[S.current];
    var values = {
      "visitor.name": chat ? visitorName(chat) : "",
      "visitor.email": (chat && chat.visitor && chat.visitor.email) || "",
      "agent.name": (S.me && S.me.name) || "",
    };
    return body.replace(/\{\{\s*([a-z.]+)\s*\}\}/g, function (all, name) {
      return Object.prototype.hasOwnProperty.call(values, name) ? values[name] : all;
    });
  }

  // Typing "/" reads the list again when it is old, or when nothing in it matches what was
  // typed, so responses an admin added meanwhile are there (at most once a second: a miss
  // within a second of the last read is read again when that second is over).
  var CANNED_FRESH_MS = 30000, CANNED_MISS_MS = 1000, cannedAt = 0, cannedTimer = null;
  function cannedRefreshIn(prefix) { // ms until the list is read again; -1: no need
    var age = Date.now() - cannedAt;
    if (age > CANNED_FRESH_MS) return 0;
    if (S.canned.some(function (c) { return c.shortcut.indexOf(prefix) === 0; })) return -1;
    return Math.max(0, CANNED_MISS_MS - age);
  }
  function refreshCannedIn(wait) {
    if (wait === 0) refreshCanned();
    else if (wait > 0 && cannedTimer === null) {
      cannedTimer = setTimeout(function () { cannedTimer = null; refreshCanned(); }, wait);
    }
  }
  function refreshCanned() {
    cannedAt = Date.now();
    TDAuth.api("/api/v1/canned").then(function (j) {
      S.canned = (j && j.canned) || [];
      var v = $("[data-input]").value;
      if (/^\/\S*$/.test(v)) showCanned(v.slice(1));
    }, function () { /* keep the list we have */ });
  }

  function insertCanned(c) {
    var input = $("[data-input]");
    var body = expandCanned(c.body);
    input.value = input.value.replace(/^\/\S*\s?/, "");
    input.value = input.value ? body + " " + input.value : body;
    hideCanned();
    input.focus();
    input.setSelectionRange(input.value.length, input.value.length);
  }

  // ---------------------------------------------------------------- transfer dialog
  var transferChoice = null;
  function openTransfer() {
    var c = S.chats[S.current];
    if (!c) return;
    var dlg = $("[data-transfer-dialog]");
    transferChoice = null;
    TDAuth.api("/api/v1/agents").then(function (j) {
      var agents = ((j && j.agents) || []).filter(function (a) { return !S.me || a.id !== S.me.id; });
      var pools = {};
      (S.me.pools || []).forEach(function (p) { pools[p] = true; });
      ((j && j.agents) || []).forEach(function (a) { (a.pools || []).forEach(function (p) { pools[p] = true; }); });
      var ao = $("[data-agent-opts]"), po = $("[data-pool-opts]");
      ao.textContent = ""; po.textContent = "";
      if (!agents.length) ao.appendChild(h("div", { class: "muted", text: t("noAgents") }));
      agents.sort(function (a, b) { return (a.status === "online" ? 0 : 1) - (b.status === "online" ? 0 : 1) || a.name.localeCompare(b.name); });
      agents.forEach(function (a) {
        // The server only hands a chat to an online agent with a free slot; say so up front.
        var free = a.status === "online" && a.open_chats < a.max_chats;
        ao.appendChild(option("agent", a.id, [
          h("span", { class: "dot " + (a.status || "offline") }),
          h("span", { class: "grow", text: a.name }),
          h("span", { class: "muted", text: (t(a.status) || a.status) + " · " + a.open_chats + "/" + a.max_chats }),
        ], !free));
      });
      Object.keys(pools).sort().forEach(function (p) { po.appendChild(option("pool", p, [h("span", { class: "grow", text: t("pool", { p: p }) })])); });
      $("[data-do-transfer]").disabled = true;
      dlg.showModal();
    }, function (err) { toast(t("error", { m: err.message })); });
  }
  function option(kind, value, kids, disabled) {
    var input = h("input", {
      type: "radio", name: "transfer-target", value: value, "data-kind": kind, disabled: !!disabled,
      onchange: function () { transferChoice = { kind: kind, value: value }; $("[data-do-transfer]").disabled = false; },
    });
    return h("label", { class: "opt" + (disabled ? " disabled" : ""), "data-testid": "transfer-" + kind, "data-value": value }, [input].concat(kids));
  }
  function doTransfer() {
    var c = S.chats[S.current];
    if (!c || !transferChoice) return;
    var f = { type: "transfer", conversation_id: c.id };
    if (transferChoice.kind === "agent") f.to_agent = transferChoice.value; else f.to_pool = transferChoice.value;
    send(f);
    $("[data-transfer-dialog]").close();
  }

  // ---------------------------------------------------------------- start / sign-in
  // An invited agent's one-time link: choose a password, then sign in as usual.
  function acceptInvite(token) {
    TDAuth.logout();
    $("#app").hidden = true;
    $("#login").hidden = false;
    var box = $("#login-form");
    var pass = h("input", { type: "password", autocomplete: "new-password", "data-testid": "invite-password" });
    var err = h("div", { class: "form-error", role: "alert", "data-testid": "invite-error" });
    box.textContent = "";
    box.appendChild(h("form", {
      class: "login", onsubmit: function (e) {
        e.preventDefault();
        fetch("/api/v1/auth/accept-invite", {
          method: "POST", headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ token: token, password: pass.value }),
        }).then(function (r) {
          return r.json().then(function (j) {
            if (!r.ok) { err.textContent = (j.error && j.error.message) || ("HTTP " + r.status); return; }
            history.replaceState(null, "", location.pathname);
            signedOut(t("inviteDone"));
            var email = $("[data-testid=login-email]");
            if (email) email.value = j.email;
          });
        }, function () { err.textContent = t("networkError"); });
      },
    }, [h("h2", { text: t("inviteTitle") }), h("label", null, [h("span", { text: t("password") }), pass]), err,
      h("button", { class: "btn primary wide", type: "submit", text: t("inviteSubmit"), "data-testid": "invite-submit" })]));
  }

  function signedOut(message) {
    link.drop();
    link.cancelRetry();
    TDAuth.logout();
    clearTimeout(ticketsTimer);
    S.me = null; S.chats = {}; S.current = null;
    $("#app").hidden = true;
    $("#login").hidden = false;
    login = TDAuth.mountLogin($("#login-form"), t, start);
    if (message) $("[data-testid=login-error]").textContent = message;
  }

  function start() {
    TDAuth.api("/api/v1/me").then(function (me) {
      S.me = me;
      $("#login").hidden = true;
      $("#app").hidden = false;
      applyLang();
      link.connect();
      cannedAt = Date.now();
      TDAuth.api("/api/v1/canned").then(function (j) { S.canned = (j && j.canned) || []; }, function () { S.canned = []; });
    }, function (err) {
      if (err.status === 401) signedOut(); else { toast(t("error", { m: err.message })); setTimeout(start, 3000); }
    });
  }

  function wire() {
    $$("[data-lang-select]").forEach(function (el) { el.addEventListener("change", function () { setLang(el.value); }); });
    $("[data-status]").addEventListener("change", function (e) {
      S.status = e.target.value;
      lsSet(STATUS_KEY, S.status);
      send({ type: "status", status: S.status });
      renderTop();
    });
    $("[data-logout]").addEventListener("click", function () {
      send({ type: "status", status: "offline" });
      lsSet(STATUS_KEY, null); S.status = "online";
      TDAuth.revoke();
      signedOut();
    });
    var input = $("[data-input]");
    input.addEventListener("keydown", function (e) {
      var box = $("[data-canned]");
      if (!box.hidden && cannedItems.length) {
        if (e.key === "ArrowDown" || e.key === "ArrowUp") {
          e.preventDefault();
          cannedSel = (cannedSel + (e.key === "ArrowDown" ? 1 : cannedItems.length - 1)) % cannedItems.length;
          showCanned(input.value.charAt(0) === "/" ? input.value.slice(1) : "");
          return;
        }
        if (e.key === "Enter" || e.key === "Tab") { e.preventDefault(); insertCanned(cannedItems[cannedSel]); return; }
        if (e.key === "Escape") { hideCanned(); return; }
      }
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); sendCurrent(); }
    });
    growComposer = window.TidedeskDom.autoGrow(input, 220);
    input.addEventListener("input", function () {
      updateCounter();
      var v = input.value;
      if (/^\/\S*$/.test(v)) refreshCannedIn(cannedRefreshIn(v.slice(1)));
      if (/^\/\S*$/.test(v)) showCanned(v.slice(1)); else if (!$("[data-canned]").hidden && v.charAt(0) === "/") hideCanned();
      onInputTyping();
    });
    input.addEventListener("blur", function () { setTimeout(hideCanned, 150); });
    $("[data-send]").addEventListener("click", sendCurrent);
    window.TidedeskDom.fileInputs($("[data-attach]"), $("[data-log]"), input, uploadFiles);
    $("[data-attach]").setAttribute("aria-label", t("attach"));
    document.head.appendChild(h("style", { text: window.TidedeskDom.ATTACHMENT_CSS }));
    $("[data-canned-btn]").addEventListener("mousedown", function (e) { e.preventDefault(); });
    $("[data-canned-btn]").addEventListener("click", function () {
      if ($("[data-canned]").hidden) { input.focus(); showCanned(""); } else hideCanned();
    });
    $$("[data-mode]").forEach(function (b) {
      b.addEventListener("click", function () {
        if (S.mode !== b.getAttribute("data-mode")) stopTyping();
        S.mode = b.getAttribute("data-mode"); renderChat(); input.focus();
      });
    });
    $("[data-close]").addEventListener("click", function () {
      var c = S.chats[S.current];
      if (!c) return;
      if (!c.closeArmed) {
        // Two clicks instead of a blocking confirm(): cheap to undo, hard to do by accident.
        c.closeArmed = true; renderChat();
        setTimeout(function () { c.closeArmed = false; if (S.current === c.id) renderChat(); }, CLOSE_CONFIRM_MS);
        return;
      }
      c.closeArmed = false;
      send({ type: "close", conversation_id: c.id });
    });
    $("[data-notify]").addEventListener("click", function () {
      Notification.requestPermission().then(renderNotifyButton, renderNotifyButton);
    });
    [["[data-sound]", SOUND_KEY], ["[data-flash]", FLASH_KEY]].forEach(function (p) {
      var box = $(p[0]);
      box.checked = alertsOn(p[1]);
      box.addEventListener("change", function () { lsSet(p[1], box.checked ? null : "off"); });
    });
    $("[data-dismiss]").addEventListener("click", function () { if (S.current) removeChat(S.current); });
    $("[data-transfer]").addEventListener("click", openTransfer);
    $("[data-take]").addEventListener("click", takeCurrent);
    $("[data-cancel]").addEventListener("click", function () { $("[data-transfer-dialog]").close(); });
    $("[data-do-transfer]").addEventListener("click", doTransfer);
    $("[data-log]").addEventListener("scroll", function (e) {
      var c = S.chats[S.current];
      if (c && e.target.scrollTop < 40) loadOlder(c);
    });
    window.addEventListener("offline", function () { link.goOffline(); });
    window.addEventListener("online", function () { if (TDAuth.session) link.reconnectNow(); });
    document.addEventListener("visibilitychange", function () {
      var c = S.chats[S.current];
      if (!document.hidden && c) { markRead(c); renderList(); }
    });
    TDAuth.onChange(function (sess) { if (!sess && S.me) signedOut(t("sessionExpired")); });
  }

  wire();
  applyLang();
  var invite = /^#invite=([A-Za-z0-9_-]+)$/.exec(location.hash);
  if (invite) acceptInvite(invite[1]);
  else if (TDAuth.session) start(); else signedOut();

  window.TidedeskConsole = { get state() { return S; }, setLang: setLang, reconnectNow: function () { link.reconnectNow(); } };
})();
