/* Tidedesk reports (issue 14): GET /api/v1/reports/summary as tiles and a table, and the
 * server-drawn SVG chart of GET /api/v1/reports/by_hour.svg (fetched with the token, shown as an
 * image: no markup from the server enters the page). Supervisors and admins. */
(function () {
  "use strict";
  var Core = window.TidedeskCore, h = window.TidedeskDom.h;
  var I18N = {
    en: {
      title: "Reports", inbox: "Inbox", supervisor: "Supervisor view", from: "From", to: "To", pool: "Pool",
      show: "Show", conversations: "Conversations", firstResponse: "First response (p50 / p90)",
      resolution: "Resolution (p50 / p90)", rating: "Rating (average, count)", hour: "Hour (UTC)",
      chartAlt: "Conversations by hour of the day (UTC)", none: "—", error: "Error: {m}",
      forbidden: "Reports need the supervisor or admin role.",
      signInTitle: "Sign in", signInIntro: "Supervisors and admins only.", email: "Email", password: "Password",
      totp: "Authentication code", totpIntro: "Enter the 6-digit code from your authenticator app.", signIn: "Sign in",
      back: "Back", fillBoth: "Enter your email and password.", totpMissing: "Enter the code from your authenticator app.",
      totpWrong: "That code is not right.", badCredentials: "Email or password is not right.",
      tooMany: "Too many attempts. Wait a minute.", networkError: "Cannot reach the server.",
    },
    "zh-CN": {
      title: "报表", inbox: "收件箱", supervisor: "主管视图", from: "开始", to: "结束", pool: "分组",
      show: "查看", conversations: "对话数", firstResponse: "首次响应（中位数 / 90 分位）",
      resolution: "解决时长（中位数 / 90 分位）", rating: "评分（平均、数量）", hour: "小时（UTC）",
      chartAlt: "每小时对话量（UTC）", none: "—", error: "错误：{m}",
      forbidden: "报表需要主管或管理员角色。",
      signInTitle: "登录", signInIntro: "仅限主管和管理员。", email: "邮箱", password: "密码",
      totp: "动态验证码", totpIntro: "请输入身份验证器应用中的 6 位验证码。", signIn: "登录",
      back: "返回", fillBoth: "请输入邮箱和密码。", totpMissing: "请输入身份验证器中的验证码。",
      totpWrong: "验证码不正确。", badCredentials: "邮箱或密码不正确。",
      tooMany: "尝试次数过多，请稍后再试。", networkError: "无法连接服务器。",
    },
  };
  // Sign-in check, language and sign-out: auth.js (the same on every console page).
  var page = TDAuth.consolePage({
    i18n: I18N, onLang: render, onSignedIn: function () { load(); },
    onLangSwitch: function () { if (last) load(); }, // the chart is drawn in the language
  });
  var t = page.t;
  function $(s) { return document.querySelector(s); }
  function $$(s) { return Array.prototype.slice.call(document.querySelectorAll(s)); }
  var last = null, chartUrl = null;

  function dur(s) {
    if (s === null || s === undefined) return t("none");
    if (s < 60) return Math.round(s) + "s";
    var m = Math.floor(s / 60);
    return m < 60 ? m + "m " + Math.round(s % 60) + "s" : Math.floor(m / 60) + "h " + (m % 60) + "m";
  }

  function query() {
    var q = [];
    var from = $("[data-from]").value, to = $("[data-to]").value, pool = $("[data-pool]").value.trim();
    if (from) q.push("from=" + encodeURIComponent(from));
    if (to) q.push("to=" + encodeURIComponent(to));
    if (pool) q.push("pool=" + encodeURIComponent(pool));
    return q.join("&");
  }

  function render() {
    if (!last) return;
    var tiles = $("[data-tiles]");
    tiles.textContent = "";
    [[t("conversations"), String(last.conversations)],
      [t("firstResponse"), dur(last.first_response_s.p50) + " / " + dur(last.first_response_s.p90)],
      [t("resolution"), dur(last.resolution_s.p50) + " / " + dur(last.resolution_s.p90)],
      [t("rating"), last.rating.average === null ? t("none") : last.rating.average + " (" + last.rating.count + ")"],
    ].forEach(function (p) {
      tiles.appendChild(h("div", { class: "tile", "data-testid": "rp-tile" }, [h("div", { class: "lbl", text: p[0] }), h("div", { class: "num", text: p[1] })]));
    });
    var table = $("[data-table]");
    table.textContent = "";
    table.appendChild(h("caption", { text: t("chartAlt") }));
    table.appendChild(h("tr", {}, [h("th", { scope: "row", text: t("hour") })].concat(last.by_hour.map(function (b) { return h("th", { scope: "col", text: ("0" + b.hour).slice(-2) }); }))));
    table.appendChild(h("tr", {}, [h("th", { scope: "row", text: t("conversations") })].concat(last.by_hour.map(function (b) { return h("td", { text: String(b.conversations) }); }))));
    $("[data-chart]").alt = t("chartAlt");
  }

  function load() {
    var q = query();
    TDAuth.api("/api/v1/reports/summary" + (q ? "?" + q : "")).then(function (j) {
      last = j; $("[data-error]").textContent = ""; render();
    }, function (err) {
      if (err.status === 401) { page.showLogin(); return; }
      $("[data-error]").textContent = err.status === 403 ? t("forbidden") : t("error", { m: err.message });
    });
    var sess = TDAuth.session;
    fetch("/api/v1/reports/by_hour.svg" + (q ? "?" + q : ""), {
      headers: { Authorization: "Bearer " + (sess && sess.access_token), "Accept-Language": page.lang },
    }).then(function (r) { return r.ok ? r.blob() : null; }).then(function (b) {
      if (!b) return;
      if (chartUrl) URL.revokeObjectURL(chartUrl);
      chartUrl = URL.createObjectURL(b);
      $("[data-chart]").src = chartUrl;
    }, function () { /* the tiles and the table say it too */ });
  }

  $("[data-filters]").addEventListener("submit", function (e) { e.preventDefault(); load(); });
  page.run();
})();
