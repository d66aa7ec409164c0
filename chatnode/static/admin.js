/* Tidedesk admin page (issue 16): agents, sites (branding, hours, routing, embed snippet, live
 * preview), canned responses, API tokens and webhooks with their delivery log. Every action is
 * a REST call (see /api/v1/openapi.json); the server checks and audits it. */
(function () {
  "use strict";
  var I18N = {
    en: {
      title: "Admin", console: "Agent console", signOut: "Sign out", agents: "Agents",
      email: "Email", name: "Name", role: "Role", pools: "Pools", invite: "Invite",
      inviteLink: "Send this one-time link to {email}:", deactivate: "Deactivate",
      inactive: "deactivated", sites: "Sites", site: "Site", color: "Colour",
      position: "Position", greeting: "Greeting", hours: "Business hours (JSON)",
      routing: "Routing rules (YAML)", load: "Load", save: "Save", saved: "Saved.",
      embed: "Paste this into the shop's pages:", canned: "Canned responses",
      shortcut: "Shortcut", body: "Text ({{visitor.name}}, {{agent.name}} allowed)",
      personal: "Only mine", add: "Add", remove: "Delete", tokens: "API tokens",
      scopes: "Scopes (comma-separated)", create: "Create",
      tokenOnce: "Copy the token now; it is not shown again:", revoke: "Revoke",
      webhooks: "Webhooks", events: "Events (comma-separated)",
      secretOnce: "Signing secret (shown once):", deliveries: "Deliveries", resend: "Send again",
      failing: "failing", forbidden: "The admin page needs the admin role.",
      signInTitle: "Sign in", signInIntro: "Admins only.", password: "Password",
      totp: "Authentication code", totpIntro: "Enter the 6-digit code from your authenticator app.",
      signIn: "Sign in", back: "Back", fillBoth: "Enter your email and password.",
      totpMissing: "Enter the code from your authenticator app.", totpWrong: "That code is not right. Try the current one.",
      badCredentials: "Email or password is not right.", tooMany: "Too many attempts. Wait a minute and try again.",
      networkError: "Cannot reach the server.", notJson: "Business hours must be JSON.",
      edit: "Edit", maxChats: "Chats at once", editAgent: "Edit agent {name}",
      agentSaved: "Agent saved.", badMaxChats: "Chats at once must be a whole number from 0 to 50.",
      cancel: "Cancel",
    },
    "zh-CN": {
      title: "管理", console: "客服工作台", signOut: "退出登录", agents: "客服",
      email: "邮箱", name: "名称", role: "角色", pools: "分组", invite: "邀请",
      inviteLink: "请把这个一次性链接发给 {email}：", deactivate: "停用",
      inactive: "已停用", sites: "站点", site: "站点", color: "颜色",
      position: "位置", greeting: "欢迎语", hours: "营业时间（JSON）",
      routing: "路由规则（YAML）", load: "读取", save: "保存", saved: "已保存。",
      embed: "把这段代码粘贴到店铺页面中：", canned: "快捷回复",
      shortcut: "快捷键", body: "内容（可用 {{visitor.name}}、{{agent.name}}）",
      personal: "仅自己可用", add: "添加", remove: "删除", tokens: "API 令牌",
      scopes: "权限范围（逗号分隔）", create: "创建",
      tokenOnce: "请立即复制令牌，之后不再显示：", revoke: "吊销",
      webhooks: "Webhook", events: "事件（逗号分隔）",
      secretOnce: "签名密钥（只显示一次）：", deliveries: "投递记录", resend: "重新发送",
      failing: "投递失败", forbidden: "管理页面需要管理员角色。",
      signInTitle: "登录", signInIntro: "仅限管理员。", password: "密码",
      totp: "动态验证码", totpIntro: "请输入身份验证器应用中的 6 位验证码。",
      signIn: "登录", back: "返回", fillBoth: "请输入邮箱和密码。",
      totpMissing: "请输入身份验证器中的验证码。", totpWrong: "验证码不正确，请输入当前的验证码。",
      badCredentials: "邮箱或密码不正确。", tooMany: "尝试次数过多，请稍后再试。",
      networkError: "无法连接服务器。", notJson: "营业时间必须是 JSON。",
      edit: "编辑", maxChats: "同时接待数", editAgent: "编辑客服 {name}",
      agentSaved: "客服已保存。", badMaxChats: "同时接待数必须是 0 到 50 的整数。",
      cancel: "取消",
    },
  };
  // Sign-in check, language and sign-out: auth.js (the same on every console page).
  var page = TDAuth.consolePage({ i18n: I18N, title: "title", onSignedIn: signedIn });
  var t = page.t;
  var h = window.TidedeskDom.h;
  function $(s) { return document.querySelector(s); }
  function $$(s) { return Array.prototype.slice.call(document.querySelectorAll(s)); }
  function list(v) { return String(v || "").split(",").map(function (x) { return x.trim(); }).filter(Boolean); }
  function fail(err) { $("[data-error]").textContent = (err && err.message) || String(err); }
  function clearError() { $("[data-error]").textContent = ""; }
  function api(path, method, body) {
    clearError();
    return TDAuth.api(path, { method: method || "GET", body: body });
  }
  function row(cells) { return h("tr", null, cells.map(function (c) { return h("td", null, [c]); })); }
  function button(label, onclick, testid) {
    return h("button", { class: "btn", type: "button", text: label, onclick: onclick, "data-testid": testid });
  }
  function formData(form) {
    var out = {};
    Array.prototype.forEach.call(form.elements, function (el) {
      if (el.name) out[el.name] = el.type === "checkbox" ? el.checked : el.value;
    });
    return out;
  }
  function onSubmit(sel, fn) {
    $(sel).addEventListener("submit", function (e) { e.preventDefault(); fn(formData(e.target), e.target); });
  }

  // ---- agents ----
  function loadAgents() {
    api("/api/v1/agents").then(function (j) {
      var body = $("[data-agents]");
      body.textContent = "";
      (j.agents || []).forEach(function (a) {
        body.appendChild(row([a.name, a.role, (a.pools || []).join(", "), String(a.max_chats),
          button(t("edit"), function () { editAgent(a); }, "adm-agent-edit"),
          button(t("deactivate"), function () {
            api("/api/v1/agents/" + a.id, "PUT", { active: false }).then(loadAgents, fail);
          }, "adm-deactivate")]));
      });
    }, fail);
  }
  // The edit form: name, pools and chats at once through PUT /api/v1/agents/{id}; the role
  // through its own call (POST /api/v1/agents/{id}/role, which needs the admin's two-factor
  // sign-in), only when it changed and after the rest was saved.
  var editing = null;
  function editAgent(a) {
    editing = a;
    var form = $("[data-agent-edit]");
    form.hidden = false;
    $("[data-agent-edit-title]").textContent = t("editAgent", { name: a.name });
    form.elements.name.value = a.name;
    form.elements.pools.value = (a.pools || []).join(", ");
    form.elements.max_chats.value = String(a.max_chats);
    form.elements.role.value = a.role;
    $("[data-agent-edit-result]").textContent = "";
    form.elements.name.focus();
  }
  onSubmit("[data-agent-edit]", function (d, form) {
    if (!editing) return;
    var a = editing;
    var max = Number(d.max_chats);
    if (!/^\d+$/.test(String(d.max_chats).trim()) || max > 50) { fail(new Error(t("badMaxChats"))); return; }
    api("/api/v1/agents/" + a.id, "PUT", { name: d.name, pools: list(d.pools), max_chats: max })
      .then(function () {
        return d.role === a.role ? null : api("/api/v1/agents/" + a.id + "/role", "POST", { role: d.role });
      })
      .then(function () {
        editing = null;
        form.hidden = true;
        $("[data-agent-edit-result]").textContent = t("agentSaved");
        loadAgents();
      }, function (err) {
        loadAgents();  // what was saved before a refusal (the role's call is the last) shows
        fail(err);
      });
  });
  $("[data-agent-edit-cancel]").addEventListener("click", function () {
    editing = null;
    $("[data-agent-edit]").hidden = true;
  });
  onSubmit("[data-invite]", function (d, form) {
    api("/api/v1/agents/invite", "POST", { email: d.email, name: d.name || undefined, role: d.role, pools: list(d.pools) })
      .then(function (j) {
        var url = location.origin + j.invite_url;
        $("[data-invite-result]").textContent = "";
        $("[data-invite-result]").appendChild(h("p", null, [t("inviteLink", { email: j.email }), " ", h("code", { text: url })]));
        form.reset();
        loadAgents();
      }, fail);
  });

  // ---- sites ----
  function siteName() { return $("[data-site-form] [name=site]").value.trim() || "default"; }
  function showEmbed(site) {
    var tag = '<script src="' + location.origin + '/widget.js" data-site="' + site + '" async></scr' + 'ipt>';
    $("[data-embed]").textContent = tag;
    // The live preview: the real widget of this site in a frame of our own origin.
    $("[data-preview]").srcdoc = "<!doctype html><body style='margin:0;font:13px system-ui'>" +
      "<p style='margin:8px'>" + site + "</p>" + tag.replace(" async", "") + "</body>";
  }
  function loadSite() {
    var site = siteName();
    api("/api/v1/sites/" + encodeURIComponent(site)).then(function (s) {
      var f = $("[data-site-form]");
      f.color.value = s.color.length === 4 ? "#" + s.color.slice(1).split("").map(function (c) { return c + c; }).join("") : s.color;
      f.position.value = s.position;
      f.greeting.value = s.greeting;
      f.business_hours.value = s.business_hours ? JSON.stringify(s.business_hours) : "";
      f.routing.value = s.routing ? JSON.stringify(s.routing) : "";
      showEmbed(site);
    }, function (err) { if (err.status === 404) showEmbed(site); else fail(err); });
  }
  $("[data-site-load]").addEventListener("click", loadSite);
  onSubmit("[data-site-form]", function (d) {
    var body = { color: d.color, position: d.position, greeting: d.greeting };
    if (d.business_hours.trim()) {
      try { body.business_hours = JSON.parse(d.business_hours); } catch (e) { fail(t("notJson")); return; }
    }
    if (d.routing.trim()) body.routing = d.routing;
    var site = siteName();
    api("/api/v1/sites/" + encodeURIComponent(site), "PUT", body).then(function () {
      $("[data-site-result]").textContent = t("saved");
      // The config is cacheable for 30 s: refresh this browser's copy so the preview (and
      // this admin's own visits) show the change now.
      return fetch("/api/v1/sites/" + encodeURIComponent(site) + "/widget-config", { cache: "reload" })
        .catch(function () { return null; });
    }).then(function () { showEmbed(site); }, fail);
  });

  // ---- canned ----
  function loadCanned() {
    api("/api/v1/canned").then(function (j) {
      var body = $("[data-canned]");
      body.textContent = "";
      (j.canned || []).forEach(function (c) {
        body.appendChild(row(["/" + c.shortcut, c.body, c.personal ? t("personal") : "",
          button(t("remove"), function () { api("/api/v1/canned/" + c.id, "DELETE").then(loadCanned, fail); })]));
      });
    }, fail);
  }
  onSubmit("[data-canned-form]", function (d, form) {
    api("/api/v1/canned", "POST", { shortcut: d.shortcut, body: d.body, personal: d.personal })
      .then(function () { form.reset(); loadCanned(); }, fail);
  });

  // ---- API tokens ----
  function loadTokens() {
    api("/api/v1/api-tokens").then(function (j) {
      var body = $("[data-tokens]");
      body.textContent = "";
      (j.tokens || []).forEach(function (k) {
        body.appendChild(row([k.name, k.scopes.join(", "),
          button(t("revoke"), function () { api("/api/v1/api-tokens/" + k.id, "DELETE").then(loadTokens, fail); })]));
      });
    }, fail);
  }
  onSubmit("[data-token-form]", function (d, form) {
    api("/api/v1/api-tokens", "POST", { name: d.name, scopes: list(d.scopes) }).then(function (j) {
      $("[data-token-result]").textContent = "";
      $("[data-token-result]").appendChild(h("p", null, [t("tokenOnce"), " ", h("code", { text: j.token })]));
      form.reset();
      loadTokens();
    }, fail);
  });

  // ---- webhooks ----
  function showDeliveries(hook) {
    api("/api/v1/webhooks/" + hook.id + "/deliveries").then(function (j) {
      var body = $("[data-deliveries]");
      body.textContent = "";
      body.appendChild(h("tr", null, [h("th", { text: t("deliveries") + " — " + hook.url, colspan: "6" })]));
      (j.deliveries || []).forEach(function (d) {
        body.appendChild(row([d.event, h("span", { class: d.status === "delivered" ? "ok" : "bad", text: d.status }),
          String(d.attempts), d.code === null ? "–" : String(d.code),
          d.latency_ms === null ? "–" : d.latency_ms + " ms",
          button(t("resend"), function () {
            api("/api/v1/webhooks/" + hook.id + "/resend", "POST", { delivery_id: d.id }).then(function () { showDeliveries(hook); }, fail);
          })]));
      });
    }, fail);
  }
  function loadHooks() {
    api("/api/v1/webhooks").then(function (j) {
      var body = $("[data-hooks]");
      body.textContent = "";
      (j.webhooks || []).forEach(function (w) {
        body.appendChild(row([w.url, w.events.join(", "), w.failing ? h("span", { class: "bad", text: t("failing") }) : "",
          button(t("deliveries"), function () { showDeliveries(w); }),
          button(t("remove"), function () { api("/api/v1/webhooks/" + w.id, "DELETE").then(loadHooks, fail); })]));
      });
    }, fail);
  }
  onSubmit("[data-hook-form]", function (d, form) {
    api("/api/v1/webhooks", "POST", { url: d.url, events: list(d.events) }).then(function (j) {
      $("[data-hook-result]").textContent = "";
      $("[data-hook-result]").appendChild(h("p", null, [t("secretOnce"), " ", h("code", { text: j.secret })]));
      form.reset();
      loadHooks();
    }, fail);
  });

  // ---- page ----
  function signedIn(me) {
    if (me.role !== "admin") { fail(t("forbidden")); return; }
    loadAgents(); loadSite(); loadCanned(); loadTokens(); loadHooks();
  }
  page.run();
})();
