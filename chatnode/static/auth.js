/* Tidedesk agent sign-in, shared by the console and the supervisor view; and the start-up of
 * the console pages (admin, supervisor, inbox, reports: consolePage).
 *
 * Tokens live in localStorage so the console and the supervisor view (often in two tabs) share one
 * sign-in. The access token is refreshed before it expires; if another tab refreshed first (refresh
 * tokens may be single-use), we adopt the tokens it stored instead of failing.
 */
(function () {
  "use strict";
  var KEY = "tidedesk.agent.session";
  // Refresh when this share of the access token's life has passed (and at least this many ms early).
  var REFRESH_AT_FRACTION = 0.75;
  var REFRESH_MIN_EARLY_MS = 15000;

  var timer = null;
  var refreshing = null;
  var listeners = [];

  function load() {
    try { return JSON.parse(localStorage.getItem(KEY) || "null"); } catch (e) { return null; }
  }
  function store(s) {
    try {
      if (s) localStorage.setItem(KEY, JSON.stringify(s)); else localStorage.removeItem(KEY);
    } catch (e) { /* private mode: the session lasts as long as the page */ }
    session = s;
  }
  var session = load();

  function fromResponse(j) {
    var now = Date.now();
    return {
      access_token: j.access_token,
      refresh_token: j.refresh_token,
      expires_in: j.expires_in,
      issued_at: now,
      expires_at: now + (j.expires_in || 900) * 1000,
    };
  }

  function apiError(status, j) {
    var e = (j && j.error) || {};
    var err = new Error(e.message || ("HTTP " + status));
    err.code = e.code || (status === 401 ? "invalid_credentials" : "http_" + status);
    err.status = status;
    return err;
  }

  function postJSON(path, body, token) {
    var headers = { "Content-Type": "application/json" };
    if (token) headers.Authorization = "Bearer " + token;
    return fetch(path, { method: "POST", headers: headers, body: JSON.stringify(body) }).then(function (r) {
      return r.json().catch(function () { return null; }).then(function (j) {
        if (!r.ok) throw apiError(r.status, j);
        return j;
      });
    });
  }

  function login(email, password, totp) {
    var body = { email: email, password: password };
    if (totp) body.totp = totp;
    return postJSON("/api/v1/auth/login", body).then(function (j) {
      store(fromResponse(j));
      schedule();
      return session;
    });
  }

  function refresh() {
    if (refreshing) return refreshing;
    var before = session;
    if (!before || !before.refresh_token) return Promise.reject(apiError(401, null));
    refreshing = postJSON("/api/v1/auth/refresh", { refresh_token: before.refresh_token }).then(function (j) {
      store(fromResponse(j));
      schedule();
      listeners.forEach(function (f) { f(session); });
      return session;
    }, function (err) {
      // token_rotated: another tab refreshed with the same token a moment ago; its new tokens
      // may reach localStorage a little after our answer, so look again shortly.
      var wait = err.code === "token_rotated" ? 700 : 0;
      return new Promise(function (r) { setTimeout(r, wait); }).then(function () {
        var other = load();
        if (other && other.refresh_token !== before.refresh_token && other.expires_at > Date.now()) {
          session = other; // another tab refreshed first
          schedule();
          return session;
        }
        if (err.code === "token_rotated") {
          // Our refresh token was spent by someone and no tab of ours holds the newer one:
          // it was copied. Tell the server, which ends this sign-in everywhere (audited).
          postJSON("/api/v1/auth/theft", { refresh_token: before.refresh_token }).catch(function () {});
        }
        if (err.status === 401 || err.status === 403) { store(null); listeners.forEach(function (f) { f(null); }); }
        throw err;
      });
    }).finally(function () { refreshing = null; });
    return refreshing;
  }

  function schedule() {
    clearTimeout(timer);
    if (!session) return;
    var life = session.expires_at - session.issued_at;
    var at = session.issued_at + Math.min(life * REFRESH_AT_FRACTION, life - REFRESH_MIN_EARLY_MS);
    timer = setTimeout(function () {
      refresh().catch(function () {
        // Network trouble: try again shortly, the token may still be valid for a while.
        if (session) { clearTimeout(timer); timer = setTimeout(schedule, 5000); }
      });
    }, Math.max(1000, at - Date.now()));
  }

  /** fetch() with the access token; one refresh-and-retry on 401. Resolves to parsed JSON. */
  function api(path, opts) {
    opts = opts || {};
    function go() {
      var headers = Object.assign({}, opts.headers || {});
      if (session) headers.Authorization = "Bearer " + session.access_token;
      if (opts.body && typeof opts.body !== "string") {
        headers["Content-Type"] = "application/json";
        opts = Object.assign({}, opts, { body: JSON.stringify(opts.body) });
      }
      return fetch(path, Object.assign({}, opts, { headers: headers }));
    }
    function parse(r) {
      return r.json().catch(function () { return null; }).then(function (j) {
        if (!r.ok) throw apiError(r.status, j);
        return j;
      });
    }
    return go().then(function (r) {
      if (r.status !== 401 || !session) return parse(r);
      return refresh().then(go).then(parse);
    });
  }

  function ensureFresh() {
    if (!session) return Promise.reject(apiError(401, null));
    if (session.expires_at - Date.now() > REFRESH_MIN_EARLY_MS) return Promise.resolve(session);
    return refresh();
  }

  function logout() { clearTimeout(timer); store(null); }

  /** The sign-out button: end the sign-in on the server too (every tab's refresh token). */
  function revoke() {
    if (session && session.refresh_token) {
      fetch("/api/v1/auth/logout", { method: "POST", keepalive: true,
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ refresh_token: session.refresh_token }) }).catch(function () {});
    }
    logout();
  }

  /**
   * Build the sign-in form into `container`. `t(key)` translates; `done()` runs after sign-in.
   * Step one asks for email and password; when the server answers `totp_required`, step two asks
   * for the six-digit code and signs in again with all three.
   */
  function mountLogin(container, t, done) {
    container.textContent = "";
    var form = document.createElement("form");
    form.className = "login-card";
    form.setAttribute("novalidate", "");
    form.innerHTML =
      '<div class="brand-lg"><span class="logo">◗</span> Tidedesk</div>' +
      '<h1 data-i18n="signInTitle"></h1>' +
      '<p class="muted" data-i18n="signInIntro"></p>' +
      '<div class="step-password">' +
      '<label><span data-i18n="email"></span><input name="email" type="email" autocomplete="username" required data-testid="login-email"></label>' +
      '<label><span data-i18n="password"></span><input name="password" type="password" autocomplete="current-password" required data-testid="login-password"></label>' +
      "</div>" +
      '<div class="step-totp" hidden>' +
      '<p class="muted" data-i18n="totpIntro"></p>' +
      '<label><span data-i18n="totp"></span><input name="totp" inputmode="numeric" autocomplete="one-time-code" maxlength="8" pattern="[0-9]*" data-testid="login-totp"></label>' +
      "</div>" +
      '<div class="form-error" role="alert" data-testid="login-error"></div>' +
      '<button class="btn primary wide" type="submit" data-testid="login-submit" data-i18n="signIn"></button>' +
      '<button class="btn link" type="button" data-back hidden data-i18n="back"></button>';
    container.appendChild(form);
    var stepTotp = form.querySelector(".step-totp");
    var stepPw = form.querySelector(".step-password");
    var err = form.querySelector(".form-error");
    var back = form.querySelector("[data-back]");
    var submit = form.querySelector("[type=submit]");

    function translate() {
      form.querySelectorAll("[data-i18n]").forEach(function (el) { el.textContent = t(el.getAttribute("data-i18n")); });
    }
    translate();
    back.addEventListener("click", function () {
      stepTotp.hidden = true; stepPw.hidden = false; back.hidden = true; err.textContent = "";
      form.totp.value = "";
    });
    form.addEventListener("submit", function (e) {
      e.preventDefault();
      err.textContent = "";
      var email = form.email.value.trim(), password = form.password.value;
      var totp = stepTotp.hidden ? "" : form.totp.value.replace(/\s+/g, "");
      if (!email || !password) { err.textContent = t("fillBoth"); return; }
      if (!stepTotp.hidden && !totp) { err.textContent = t("totpMissing"); form.totp.focus(); return; }
      submit.disabled = true;
      login(email, password, totp).then(function () {
        submit.disabled = false;
        done();
      }, function (ex) {
        submit.disabled = false;
        if (ex.code === "totp_required" && stepTotp.hidden) {
          stepTotp.hidden = false; stepPw.hidden = true; back.hidden = false;
          form.totp.focus();
        } else if (ex.code === "totp_required" || ex.code === "invalid_totp") {
          err.textContent = t("totpWrong");
          form.totp.select();
        } else if (ex.status === 401) {
          err.textContent = t("badCredentials");
        } else if (ex.status === 429) {
          err.textContent = t("tooMany");
        } else {
          err.textContent = ex.message || t("networkError");
        }
      });
    });
    setTimeout(function () { form.email.focus(); }, 0);
    return { translate: translate };
  }

  var LANG_KEY = "tidedesk.console.lang"; // one language for every console page
  var START_RETRY_MS = 3000; // the server did not answer "who am I": ask again this often

  /**
   * The start-up every console page shares (admin, supervisor, inbox, reports): its language
   * (the one the pages share, else the browser's), the sign-in check, the sign-in form, the
   * language switches (`[data-lang-select]`), the sign-out button (`[data-logout]`), and the
   * page's `[data-i18n]` texts. The page gives
   *   i18n         its { en, "zh-CN" } tables (tidedesk-core.js translator);
   *   title        the key of its document title (optional);
   *   onLang()     re-render what the texts do not cover (after every language change);
   *   onLangSwitch()  what a switch by the visitor changes besides (optional, after onLang);
   *   onSignedIn(me)  start the page's work (GET /api/v1/me's answer; the texts follow it);
   *   onSignedOut()   stop it (timers), before the sign-in form shows.
   * Call `.run()` once the page has wired its own handlers. Returns { t, lang, showLogin, run }.
   */
  function consolePage(opts) {
    var Core = window.TidedeskCore;
    var lang;
    try { lang = Core.pickLang(localStorage.getItem(LANG_KEY) || navigator.language); } catch (e) { lang = Core.pickLang(navigator.language); }
    var t = Core.translator(opts.i18n, function () { return lang; });
    var form = null;
    function all(sel) { return Array.prototype.slice.call(document.querySelectorAll(sel)); }
    function el(id) { return document.getElementById(id); }

    function applyLang() {
      document.documentElement.lang = lang;
      all("[data-i18n]").forEach(function (e) { e.textContent = t(e.getAttribute("data-i18n")); });
      all("[data-lang-select]").forEach(function (e) { e.value = lang; });
      if (opts.title) document.title = "Tidedesk — " + t(opts.title);
      if (form) form.translate();
      if (opts.onLang) opts.onLang();
    }
    function showLogin() {
      if (opts.onSignedOut) opts.onSignedOut();
      logout();
      el("app").hidden = true;
      el("login").hidden = false;
      form = mountLogin(el("login-form"), t, start);
    }
    function start() {
      api("/api/v1/me").then(function (me) {
        el("login").hidden = true;
        el("app").hidden = false;
        opts.onSignedIn(me);
        applyLang();
      }, function (err) { if (err.status === 401) showLogin(); else setTimeout(start, START_RETRY_MS); });
    }
    function run() {
      all("[data-lang-select]").forEach(function (e) {
        e.addEventListener("change", function () {
          lang = Core.pickLang(e.value);
          try { localStorage.setItem(LANG_KEY, lang); } catch (ex) { /* the choice lasts this page view */ }
          applyLang();
          if (opts.onLangSwitch) opts.onLangSwitch();
        });
      });
      all("[data-logout]").forEach(function (e) {
        e.addEventListener("click", function () { revoke(); showLogin(); });
      });
      applyLang();
      if (session) start(); else showLogin();
    }
    return { t: t, get lang() { return lang; }, showLogin: showLogin, run: run };
  }

  if (session) schedule();

  window.TDAuth = {
    get session() { return session; },
    login: login,
    refresh: refresh,
    ensureFresh: ensureFresh,
    api: api,
    logout: logout,
    revoke: revoke,
    mountLogin: mountLogin,
    consolePage: consolePage,
    onChange: function (f) { listeners.push(f); },
  };
})();
