/* Tidedesk supervisor view: polls GET /api/v1/supervisor/overview every few seconds.
 * Language lookup and the element builder come from tidedesk-core.js and tidedesk-dom.js. */
(function () {
  "use strict";
  var POLL_MS = 3000; // live enough for a wall screen, cheap for the server

  var I18N = {
    en: {
      title: "Supervisor view", console: "Agent console", signOut: "Sign out",
      onlineAgents: "Agents online", openConversations: "Open conversations", waiting: "Visitors waiting",
      agents: "Agents", agent: "Agent", status: "Status", load: "Load", pools: "Pools", queues: "Waiting queues",
      online: "Online", away: "Away", offline: "Offline", noAgents: "No agents yet.",
      emptyQueue: "Nobody waiting.", waitingFor: "waiting {t}", updated: "Updated {t}",
      stale: "Cannot reach the server — showing data from {t}", forbidden: "The supervisor view needs the supervisor or admin role.",
      signInTitle: "Sign in", signInIntro: "Supervisors and admins only.", email: "Email", password: "Password",
      totp: "Authentication code", totpIntro: "Enter the 6-digit code from your authenticator app.", signIn: "Sign in",
      back: "Back", fillBoth: "Enter your email and password.", totpMissing: "Enter the code from your authenticator app.",
      totpWrong: "That code is not right. Try the current one.", badCredentials: "Email or password is not right.",
      tooMany: "Too many attempts. Wait a minute and try again.", networkError: "Cannot reach the server.",
      visitor: "Visitor",
      ratings: "Average rating ({n} ratings)",
    },
    "zh-CN": {
      title: "主管视图", console: "客服工作台", signOut: "退出登录",
      onlineAgents: "在线客服", openConversations: "进行中的对话", waiting: "排队访客",
      agents: "客服", agent: "客服", status: "状态", load: "负载", pools: "分组", queues: "排队队列",
      online: "在线", away: "离开", offline: "离线", noAgents: "暂无客服。", ratings: "平均评分（共 {n} 条）",
      emptyQueue: "无人排队。", waitingFor: "已等待 {t}", updated: "更新于 {t}",
      stale: "无法连接服务器 — 显示的是 {t} 的数据", forbidden: "主管视图需要主管或管理员角色。",
      signInTitle: "登录", signInIntro: "仅限主管和管理员。", email: "邮箱", password: "密码",
      totp: "动态验证码", totpIntro: "请输入身份验证器应用中的 6 位验证码。", signIn: "登录",
      back: "返回", fillBoth: "请输入邮箱和密码。", totpMissing: "请输入身份验证器中的验证码。",
      totpWrong: "验证码不正确，请输入当前的验证码。", badCredentials: "邮箱或密码不正确。",
      tooMany: "尝试次数过多，请稍后再试。", networkError: "无法连接服务器。",
      visitor: "访客",
    },
  };
  var last = null, lastAt = 0, timer = null;

  // Sign-in check, language and sign-out: auth.js (the same on every console page).
  var page = TDAuth.consolePage({
    i18n: I18N, title: "title", onLang: render, onSignedIn: signedIn,
    onSignedOut: function () { clearTimeout(timer); },
  });
  var t = page.t;
  function $(s) { return document.querySelector(s); }
  function $$(s) { return Array.prototype.slice.call(document.querySelectorAll(s)); }
  var h = window.TidedeskDom.h;
  function dur(s) {
    s = Math.round(s);
    if (s < 60) return s + "s";
    var m = Math.floor(s / 60);
    return m < 60 ? m + "m " + (s % 60) + "s" : Math.floor(m / 60) + "h " + (m % 60) + "m";
  }
  function clock(ms) { var d = new Date(ms); return d.toLocaleTimeString(page.lang); }


  function render() {
    if (!last) return;
    var counts = last.counts || {};
    $$("[data-count]").forEach(function (el) {
      var v = counts[el.getAttribute("data-count")];
      el.textContent = v === undefined ? "–" : String(v);
    });
    // issue 13: the visitors' ratings of closed chats
    var ratings = last.ratings || { average: null, count: 0 };
    $("[data-rating-average]").textContent = ratings.average === null || ratings.average === undefined ? "–" : ratings.average.toFixed(1) + " / 5";
    $("[data-rating-label]").textContent = t("ratings", { n: ratings.count || 0 });
    var tb = $("[data-agents]");
    tb.textContent = "";
    var agents = (last.agents || []).slice().sort(function (a, b) {
      var rank = { online: 0, away: 1, offline: 2 };
      return (rank[a.status] || 3) - (rank[b.status] || 3) || a.name.localeCompare(b.name);
    });
    if (!agents.length) tb.appendChild(h("tr", {}, [h("td", { colspan: "4", class: "muted", text: t("noAgents") })]));
    agents.forEach(function (a) {
      var pct = a.max_chats ? Math.min(100, Math.round(100 * a.open_chats / a.max_chats)) : 0;
      var bar = h("i", { class: pct >= 100 ? "full" : "", style: "width:" + pct + "%" });
      tb.appendChild(h("tr", { "data-testid": "sv-agent", "data-agent": a.id }, [
        h("td", { text: a.name }),
        h("td", {}, [h("span", { class: "dot " + a.status }), " " + (t(a.status) || a.status)]),
        h("td", {}, [h("div", { class: "load" }, [h("div", { class: "bar" }, [bar]), h("span", { text: a.open_chats + " / " + a.max_chats })])]),
        h("td", { class: "muted", text: (a.pools || []).join(", ") }),
      ]));
    });
    var qs = $("[data-queues]");
    qs.textContent = "";
    var queues = last.queues || {};
    Object.keys(queues).sort().forEach(function (pool) {
      var items = queues[pool] || [];
      var box = h("div", { class: "pool", "data-testid": "sv-pool", "data-pool": pool }, [
        h("h3", {}, [h("span", { text: pool }), h("span", { class: "unread", text: String(items.length) })]),
      ]);
      if (!items.length) box.appendChild(h("div", { class: "muted", text: t("emptyQueue") }));
      items.forEach(function (it) {
        // waiting_s was measured at fetch time; keep it ticking between polls.
        var waited = it.waiting_s + (Date.now() - lastAt) / 1000;
        box.appendChild(h("div", { class: "wait-row", "data-testid": "sv-waiting" }, [
          h("span", {}, [it.visitor_name || t("visitor") + " " + it.conversation_id.slice(-4).toUpperCase(), it.vip ? h("span", { class: "tag vip", text: "VIP" }) : null]),
          h("span", { class: "muted", text: t("waitingFor", { t: dur(waited) }) }),
        ]));
      });
      qs.appendChild(box);
    });
    $("[data-updated]").textContent = t("updated", { t: clock(lastAt) });
  }

  function poll() {
    clearTimeout(timer);
    TDAuth.api("/api/v1/supervisor/overview").then(function (j) {
      last = j; lastAt = Date.now();
      $("[data-error]").textContent = "";
      render();
      timer = setTimeout(poll, POLL_MS);
    }, function (err) {
      if (err.status === 401) { page.showLogin(); return; }
      $("[data-error]").textContent = err.status === 403 ? t("forbidden") : t("stale", { t: lastAt ? clock(lastAt) : "—" });
      timer = setTimeout(poll, err.status === 403 ? POLL_MS * 10 : POLL_MS);
    });
  }

  function signedIn(me) {
    $("[data-me-name]").textContent = me.name;
    poll();
  }

  document.addEventListener("visibilitychange", function () { if (!document.hidden && TDAuth.session && !$("#app").hidden) poll(); });
  setInterval(function () { if (last && !document.hidden) render(); }, 1000);
  page.run();
})();
