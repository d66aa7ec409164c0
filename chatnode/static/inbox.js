/* Tidedesk inbox (issue 14): the views of GET /api/v1/conversations with filters and cursor
 * paging, search (GET /api/v1/search) whose results open the conversation at the message, a
 * read view of any conversation the agent may see, labels, and the contact panel. Live: the
 * view is fetched again every few seconds while the tab is visible. */
(function () {
  "use strict";
  var Core = window.TidedeskCore, Dom = window.TidedeskDom, h = Dom.h;
  var POLL_MS = 5000;
  var VIEWS = ["mine", "unassigned", "tickets", "open", "closed"];

  var I18N = {
    en: {
      title: "Inbox", console: "Agent console", reports: "Reports", search: "Search",
      searchLabel: "Search messages and contacts", label: "Label", pool: "Pool", more: "Load more",
      pick: "Pick a conversation, or search.", labels: "Labels (comma-separated)", save: "Save labels",
      view_mine: "Mine", view_unassigned: "Waiting", view_tickets: "Tickets", view_open: "All open",
      view_closed: "Closed", empty: "Nothing here.", results: "{n} messages, {c} contacts found",
      noResults: "Nothing found for “{q}”.", error: "Error: {m}", saved: "Labels saved.",
      visitor: "Visitor", you: "Agent", noteLabel: "Private note", unread: "{n} unread",
      contactTitle: "Contact", name: "Name", email: "Email", phone: "Phone", page: "Page",
      referrer: "Came from", browser: "Browser", localTime: "Time zone", pastChats: "Conversations",
      state_queued: "waiting", state_assigned: "open", state_closed: "closed", state_offline: "ticket",
      signInTitle: "Sign in", signInIntro: "Use your Tidedesk agent account.", password: "Password",
      totp: "Authentication code", totpIntro: "Enter the 6-digit code from your authenticator app.",
      signIn: "Sign in", back: "Back", fillBoth: "Enter your email and password.",
      totpMissing: "Enter the code from your authenticator app.", totpWrong: "That code is not right.",
      badCredentials: "Email or password is not right.", tooMany: "Too many attempts. Wait a minute.",
      networkError: "Cannot reach the server.",
    },
    "zh-CN": {
      title: "收件箱", console: "客服工作台", reports: "报表", search: "搜索",
      searchLabel: "搜索消息和联系人", label: "标签", pool: "分组", more: "加载更多",
      pick: "选择一个对话，或进行搜索。", labels: "标签（用逗号分隔）", save: "保存标签",
      view_mine: "我的", view_unassigned: "等待中", view_tickets: "工单", view_open: "全部进行中",
      view_closed: "已结束", empty: "暂无内容。", results: "找到 {n} 条消息、{c} 个联系人",
      noResults: "没有找到“{q}”。", error: "错误：{m}", saved: "标签已保存。",
      visitor: "访客", you: "客服", noteLabel: "内部备注", unread: "{n} 条未读",
      contactTitle: "联系人", name: "姓名", email: "邮箱", phone: "电话", page: "页面",
      referrer: "来源", browser: "浏览器", localTime: "时区", pastChats: "对话记录",
      state_queued: "等待中", state_assigned: "进行中", state_closed: "已结束", state_offline: "工单",
      signInTitle: "登录", signInIntro: "使用您的 Tidedesk 客服账号登录。", password: "密码",
      totp: "动态验证码", totpIntro: "请输入身份验证器应用中的 6 位验证码。",
      signIn: "登录", back: "返回", fillBoth: "请输入邮箱和密码。",
      totpMissing: "请输入身份验证器中的验证码。", totpWrong: "验证码不正确。",
      badCredentials: "邮箱或密码不正确。", tooMany: "尝试次数过多，请稍后再试。",
      networkError: "无法连接服务器。",
    },
  };
  // Sign-in check, language and sign-out: auth.js (the same on every console page).
  var page = TDAuth.consolePage({
    i18n: I18N, onLang: renderAll, onSignedIn: signedIn,
    onSignedOut: function () { clearTimeout(S.timer); },
  });
  var t = page.t;
  function $(s) { return document.querySelector(s); }
  function $$(s) { return Array.prototype.slice.call(document.querySelectorAll(s)); }

  var S = { view: "mine", items: [], cursor: null, current: null, seq: null, search: null, me: null, timer: null };

  function visitorName(v, cid) {
    v = v || {};
    return v.name || v.email || t("visitor") + " " + String(v.id || cid || "").slice(-4).toUpperCase();
  }

  function listKeys(e, open) {
    var item = e.currentTarget;
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); open(); return; }
    if (e.key !== "ArrowDown" && e.key !== "ArrowUp") return;
    e.preventDefault();
    var next = e.key === "ArrowDown" ? item.nextElementSibling : item.previousElementSibling;
    if (next && next.getAttribute("tabindex") !== null) next.focus();
  }

  function renderAll() {
    renderViews(); renderList(); renderCurrent();
    if (S.contact) renderContact(S.contact);
  }

  function renderViews() {
    var nav = $("[data-views]");
    nav.textContent = "";
    VIEWS.forEach(function (v) {
      nav.appendChild(h("button", {
        type: "button", class: "tab" + (S.view === v && !S.search ? " active" : ""), "data-testid": "ib-view-" + v,
        "aria-pressed": S.view === v && !S.search ? "true" : "false", text: t("view_" + v),
        onclick: function () { S.view = v; S.search = null; $("[data-q]").value = ""; load(true); },
      }));
    });
  }

  function query() {
    var q = "view=" + S.view + "&limit=25";
    var label = $("[data-label-filter]").value.trim(), pool = $("[data-pool-filter]").value.trim();
    if (label) q += "&label=" + encodeURIComponent(label);
    if (pool) q += "&pool=" + encodeURIComponent(pool);
    return q;
  }

  function load(reset) {
    clearTimeout(S.timer);
    if (S.search) return;
    var q = query();
    var cursor = reset ? null : S.cursor;
    TDAuth.api("/api/v1/conversations?" + q + (cursor ? "&cursor=" + encodeURIComponent(cursor) : "")).then(function (j) {
      S.items = reset ? j.conversations : S.items.concat(j.conversations);
      S.cursor = j.next_cursor;
      $("[data-status]").textContent = S.items.length ? "" : t("empty");
      renderViews(); renderList();
      refreshCurrent();
      S.timer = setTimeout(function () { if (!document.hidden) load(true); else S.timer = setTimeout(load, POLL_MS, true); }, POLL_MS);
    }, fail);
  }

  function fail(err) {
    if (err.status === 401) { page.showLogin(); return; }
    $("[data-status]").textContent = t("error", { m: err.message });
  }

  function renderList() {
    var ul = $("[data-list]");
    ul.textContent = "";
    $("[data-more]").hidden = !S.cursor || !!S.search;
    if (S.search) { renderResults(ul); return; }
    S.items.forEach(function (c) {
      var last = c.last_message;
      var open = function () { openConversation(c.id, null); };
      ul.appendChild(h("li", {
        class: "chat-item" + (c.id === S.current ? " active" : ""), tabindex: "0", role: "option",
        "data-testid": "ib-item", "data-conversation": c.id, "aria-selected": c.id === S.current ? "true" : "false",
        onclick: open, onkeydown: function (e) { listKeys(e, open); },
      }, [
        h("div", { class: "avatar", "aria-hidden": "true", text: visitorName(c.visitor, c.id).slice(0, 1).toUpperCase() }),
        h("div", { class: "ci-main" }, [
          h("div", { class: "ci-name" }, [visitorName(c.visitor, c.id), h("span", { class: "tag", text: t("state_" + c.state) })]
            .concat(c.labels.map(function (l) { return h("span", { class: "tag", text: l }); }))),
          h("div", { class: "ci-preview", text: last ? String(last.body).slice(0, 80) : "" }),
        ]),
        c.unread ? h("span", { class: "unread", "data-testid": "ib-unread", "aria-label": t("unread", { n: c.unread }), text: String(c.unread) }) : h("span"),
      ]));
    });
  }

  function marked(text, ranges) {
    var out = [], at = 0;
    (ranges || []).forEach(function (r) {
      if (r[0] < at) return;
      out.push(text.slice(at, r[0]));
      out.push(h("mark", { text: text.slice(r[0], r[1]) }));
      at = r[1];
    });
    out.push(text.slice(at));
    return out;
  }

  function renderResults(ul) {
    var r = S.search.results;
    if (!r) return;
    $("[data-status]").textContent = r.messages.length || r.contacts.length
      ? t("results", { n: r.messages.length, c: r.contacts.length }) : t("noResults", { q: S.search.q });
    r.contacts.forEach(function (k) {
      var open = function () { openContact(k.id); };
      ul.appendChild(h("li", { class: "chat-item", tabindex: "0", role: "option", "data-testid": "ib-contact-result",
        onclick: open, onkeydown: function (e) { listKeys(e, open); } }, [
        h("div", { class: "avatar", "aria-hidden": "true", text: visitorName(k).slice(0, 1).toUpperCase() }),
        h("div", { class: "ci-main" }, [h("div", { class: "ci-name", text: visitorName(k) }), h("div", { class: "ci-preview", text: k.email || "" })]),
        h("span"),
      ]));
    });
    r.messages.forEach(function (m) {
      var open = function () { openConversation(m.conversation_id, m.seq); };
      ul.appendChild(h("li", { class: "chat-item", tabindex: "0", role: "option", "data-testid": "ib-result",
        "data-conversation": m.conversation_id, "data-seq": String(m.seq),
        onclick: open, onkeydown: function (e) { listKeys(e, open); } }, [
        h("div", { class: "avatar", "aria-hidden": "true", text: m.from === "visitor" ? "V" : "A" }),
        h("div", { class: "ci-main" }, [
          h("div", { class: "ci-name", text: (m.private ? t("noteLabel") + " · " : "") + Dom.fmtTime(m.ts) }),
          h("div", { class: "ci-preview snippet" }, marked(m.snippet, m.highlights)),
        ]),
        h("span"),
      ]));
    });
  }

  function doSearch(q) {
    q = String(q || "").trim();
    if (!q) { S.search = null; load(true); return; }
    clearTimeout(S.timer);
    S.search = { q: q, results: null };
    TDAuth.api("/api/v1/search?limit=30&q=" + encodeURIComponent(q)).then(function (j) {
      if (!S.search || S.search.q !== q) return;
      S.search.results = j;
      renderViews(); renderList();
    }, fail);
  }

  function openConversation(cid, seq) {
    S.current = cid; S.seq = seq;
    try { history.replaceState(null, "", "#conv=" + cid + (seq ? "&seq=" + seq : "")); } catch (e) { /* file: */ }
    renderList();
    var conv = null, msgs = null;
    var page = seq ? "?after_seq=" + Math.max(0, seq - 20) + "&limit=100" : "?before_seq=9007199254740991&limit=100";
    TDAuth.api("/api/v1/conversations/" + cid).then(function (j) { conv = j; S.conv = j; renderCurrent(msgs); if (j.visitor) openContact(j.visitor.id, true); }, fail);
    TDAuth.api("/api/v1/conversations/" + cid + "/messages" + page).then(function (j) { msgs = j.messages; S.msgs = msgs; renderCurrent(msgs); }, fail);
    S.conv = null; S.msgs = null;
    renderCurrent(null);
  }

  /** The open conversation's newest messages again (live, without a reload), unless it was
   *  opened at a search hit, which stays where it is. */
  function refreshCurrent() {
    if (!S.current || S.seq) return;
    var cid = S.current;
    TDAuth.api("/api/v1/conversations/" + cid + "/messages?before_seq=9007199254740991&limit=100").then(function (j) {
      if (S.current !== cid) return;
      var had = (S.msgs || []).length ? S.msgs[S.msgs.length - 1].seq : 0;
      var now = j.messages.length ? j.messages[j.messages.length - 1].seq : 0;
      if (now !== had) { S.msgs = j.messages; renderCurrent(); }
    }, function () { /* the next poll tries again */ });
  }

  function renderCurrent() {
    var c = S.conv;
    $("[data-empty]").hidden = !!S.current;
    $("[data-head]").hidden = !c;
    $("[data-labels]").hidden = !c;
    $("[data-log]").hidden = !S.current;
    if (c) {
      $("[data-head-name]").textContent = visitorName(c.visitor, c.id);
      $("[data-head-sub]").textContent = [c.visitor.email, t("state_" + c.state), c.pool].filter(Boolean).join(" · ");
      var input = $("[data-labels-input]");
      if (document.activeElement !== input) input.value = (c.labels || []).join(", ");
    }
    var log = $("[data-log]");
    log.textContent = "";
    var target = null;
    (S.msgs || []).forEach(function (m) {
      var who = m.from === "visitor" ? visitorName(c && c.visitor, S.current) : (m.name || t("you"));
      var el = h("div", {
        class: "msg " + m.from + (m.private ? " note" : "") + (m.seq === S.seq ? " found" : ""),
        "data-testid": "ib-msg", "data-seq": String(m.seq), tabindex: m.seq === S.seq ? "-1" : null,
      }, [h("div", { class: "bubble" }, Dom.richText(m.body)),
        h("div", { class: "meta", text: (m.private ? t("noteLabel") + " · " : "") + who + " · " + Dom.fmtTime(m.ts) })]);
      if (m.seq === S.seq) target = el;
      log.appendChild(el);
    });
    if (target) { target.scrollIntoView({ block: "center" }); } else log.scrollTop = log.scrollHeight;
  }

  function openContact(visitorId, quiet) {
    TDAuth.api("/api/v1/contacts/" + encodeURIComponent(visitorId)).then(renderContact, function (err) {
      if (!quiet) fail(err);
    });
  }

  function renderContact(k) {
    S.contact = k;
    var box = $("[data-contact]");
    box.textContent = "";
    box.hidden = !k;
    if (!k) return;
    var ctx = k.context || {};
    var safe = function (u) { return /^https?:\/\//i.test(u || "") ? u : null; };
    function row(label, value, href) {
      if (!value) return null;
      var v = href ? h("a", { href: href, rel: "noopener noreferrer", target: "_blank", text: value }) : h("span", { text: value });
      return h("div", { class: "kv" }, [h("dt", { text: label }), h("dd", {}, [v])]);
    }
    box.appendChild(h("h2", { text: t("contactTitle") }));
    box.appendChild(h("dl", {}, [
      row(t("name"), k.name), row(t("email"), k.email, k.email ? "mailto:" + k.email : null), row(t("phone"), k.phone),
      row(t("page"), ctx.page_url, safe(ctx.page_url)), row(t("referrer"), ctx.referrer, safe(ctx.referrer)),
      row(t("browser"), [ctx.browser, ctx.os].filter(Boolean).join(" · ")), row(t("localTime"), ctx.tz),
    ].concat(Object.keys(k.fields || {}).map(function (f) { return row(f, k.fields[f]); }))));
    if ((k.tags || []).length) box.appendChild(h("div", {}, k.tags.map(function (tg) { return h("span", { class: "tag", text: tg }); })));
    box.appendChild(h("h3", { text: t("pastChats") }));
    var ul = h("ul", { class: "past", role: "listbox", "aria-label": t("pastChats"), "data-testid": "past-chats" });
    (k.conversations || []).forEach(function (pc) {
      var open = function () { openConversation(pc.id, null); };
      ul.appendChild(h("li", { tabindex: "0", role: "option", "data-testid": "past-chat", onclick: open, onkeydown: function (e) { listKeys(e, open); },
        text: new Date(pc.created_at * 1000).toLocaleDateString(page.lang) + " · " + t("state_" + pc.state) +
          (pc.last_message ? " · " + String(pc.last_message.body).slice(0, 60) : "") }));
    });
    box.appendChild(ul);
  }

  function saveLabels() {
    if (!S.current) return;
    var labels = $("[data-labels-input]").value.split(/[,，]/).map(function (x) { return x.trim(); }).filter(Boolean);
    TDAuth.api("/api/v1/conversations/" + S.current + "/labels", { method: "PUT", body: { labels: labels } }).then(function (j) {
      if (S.conv) S.conv.labels = j.labels;
      $("[data-status]").textContent = t("saved");
      renderCurrent(); load(true);
    }, fail);
  }

  function signedIn(me) {
    S.me = me;
    $("[data-me-name]").textContent = me.name;
    $("[data-reports-link]").hidden = !(me.role === "supervisor" || me.role === "admin");
    load(true);
    var m = /conv=([0-9a-f]+)(?:&seq=(\d+))?/.exec(location.hash);
    if (m) openConversation(m[1], m[2] ? Number(m[2]) : null);
  }

  $("[data-search-form]").addEventListener("submit", function (e) { e.preventDefault(); doSearch($("[data-q]").value); });
  $("[data-more]").addEventListener("click", function () { load(false); });
  $("[data-labels-save]").addEventListener("click", saveLabels);
  ["[data-label-filter]", "[data-pool-filter]"].forEach(function (sel) {
    $(sel).addEventListener("change", function () { load(true); });
  });
  document.addEventListener("visibilitychange", function () { if (!document.hidden && S.me && !S.search) load(true); });
  page.run();
  window.TidedeskInbox = { get state() { return S; }, search: doSearch, open: openConversation };
})();
