/*! Tidedesk visitor widget — one <script src="https://HOST/widget.js" data-lang="en"> tag.
 *
 * Adds a launcher button and a chat panel inside a Shadow DOM, so the page's styles and the
 * widget's styles never meet. No framework, no build step: at /widget.js the chat node serves
 * tidedesk-core.js (the delivery protocol, shared with the console) and tidedesk-dom.js in front
 * of this file, so the shop still loads one script.
 *
 * Script-tag options (all optional):
 *   data-lang   "en" | "zh-CN"  (default: the browser's language)
 *   data-name, data-email       visitor details a signed-in shop already knows
 *   data-tags   comma-separated routing tags, e.g. "vip"
 *   data-open   "true" opens the panel on load
 *   data-site   the shop (site) this page belongs to (default: "default"); its colour,
 *               position, greeting and offline text come from GET /api/v1/sites/{site}/
 *               widget-config. An unknown or deleted site shows a quiet "chat unavailable".
 *
 * Delivery rules (see docs/ui.md): messages are kept by seq and rendered in seq order; a seq seen
 * twice is dropped; a hole in the seqs is asked for with `resume`; after every (re)connect the
 * widget sends `resume` with the last contiguous seq it holds and re-sends every unacknowledged
 * message with its original client-made id, so the server's idempotency makes retries safe.
 * The rules themselves live in TidedeskCore (SeqLog, Outbox, Link); this file is the view.
 */
(function () {
  "use strict";
  if (window.Tidedesk && window.Tidedesk.version) return; // loaded twice: keep the first
  // The sequence log, the link and i18n lookup: tidedesk-core.js, served in front of this file.
  var Core = window.TidedeskCore;

  var script = document.currentScript;
  if (!script) {
    var all = document.querySelectorAll('script[src*="widget.js"]');
    script = all[all.length - 1] || null;
  }
  var ds = (script && script.dataset) || {};
  var ORIGIN = new URL((script && script.src) || location.href, location.href).origin;
  var WS_ORIGIN = ORIGIN.replace(/^http/, "ws");
  var SITE = ds.site || "default";
  // Each site keeps its own visitor (the default site keeps the key it always had).
  var KEY = "tidedesk:" + ORIGIN + ":" + (SITE === "default" ? "" : SITE + ":");
  var SITE_CONFIG = { color: null, position: "bottom-right", greeting: "", offline_message: "" };
  var CONSENT = ds.consent === "true";
  var PRIVACY_URL = /^https?:\/\//i.test(ds.privacyUrl || "") ? ds.privacyUrl : "";

  var ARCHIVE_MAX = 100; // earlier conversations' messages kept on screen after a new one starts
  var TYPING_RESEND_MS = 3000; // keep "typing on" alive without flooding the rate limit
  var TYPING_IDLE_MS = 2500; // no keystroke this long: send "typing off"
  var TYPING_SHOW_MS = 7000; // hide the agent's typing indicator if no "off" ever comes
  var TYPING_OVERTAKE_MS = 1000; // a "typing on" this recent outranks a message that arrives after it

  var I18N = {
    en: {
      launcher: "Chat with us",
      title: "Chat with us",
      close: "Close chat",
      otherLang: "中文",
      otherLangLabel: "切换到中文",
      placeholder: "Write a message…",
      send: "Send",
      consent: "Before you write: we keep this conversation and the details you give us so we can answer you.",
      consentPolicy: "Privacy policy",
      consentAgree: "I agree",
      connecting: "Connecting…",
      connected: "Connected",
      reconnecting: "Reconnecting in {s}s…",
      reconnectNow: "Retry now",
      offlineNet: "You are offline. We will reconnect when your connection is back.",
      queued: "Waiting for an agent…",
      position: "You are number {n} in line.",
      positionShort: "#{n} in line",
      assigned: "You are chatting with {name}.",
      assignedShort: "{name}",
      agent: "Agent",
      you: "You",
      typing: "{name} is typing…",
      closed: "This conversation has ended. Write again if you need anything else.",
      pending: "Sending…",
      failed: "Not sent yet — will retry",
      tooLong: "This message is {n} characters; the limit is {max}. Shorten it or send it in parts.",
      welcome: "Hi! Ask us anything.",
      replyTime: "We usually reply in a few minutes.",
      offlineContactIntro: "Leave your email and we will answer you by email.",
      offlineTitle: "We are offline right now",
      offlineIntro: "Leave a message and we will answer by email.",
      name: "Name",
      email: "Email",
      message: "Message",
      submit: "Send message",
      offlineThanks: "Thank you! We received your message and will reply by email.",
      emailRequired: "Please enter your email so we can answer you.",
      messageRequired: "Please write a message.",
      busy: "We are very busy. Please wait — you keep your place in line.",
      error: "Something went wrong: {m}",
      // A mail's one-time chat link that was refused: the widget carries on with a chat here.
      linkUsed: "This link from your e-mail was already used (each link works once), so it cannot open your earlier chat. You can write to us here, or reply to the e-mail.",
      linkExpired: "This link from your e-mail has expired (links work for 7 days), so it cannot open your earlier chat. You can write to us here, or reply to the e-mail.",
      linkFailed: "The link from your e-mail could not open your earlier chat ({m}). You can write to us here, or reply to the e-mail.",
      unread: "{n} unread",
      newConversation: "New conversation",
      unavailable: "Chat is not available right now.",
      seen: "Seen",
      // issue 13: without server mail the widget promises none; rating and transcript
      offlineIntroNoMail: "Leave a message and we will answer here, in this chat, when we are back.",
      offlineThanksNoMail: "Thank you! We received your message; come back to this page for our answer.",
      rateTitle: "How was this chat?",
      rateStar: "{n} of 5",
      rateComment: "Anything to add? (optional)",
      rateSend: "Send rating",
      rateThanks: "Thank you for your rating!",
      rateNeedScore: "Please pick 1 to 5 stars.",
      transcriptLabel: "Email me this conversation",
      transcriptSend: "Send",
      transcriptSent: "The conversation is on its way to {email}.",
      transcriptFailed: "The conversation could not be mailed: {m}",
      attach: "Attach a file",
      enlarge: "Enlarge",
      download: "Download",
      closeImage: "Close",
      cancelUpload: "Cancel",
      unavailableFile: "file no longer available",
      fileTooLarge: "The file is larger than {max}: choose a smaller one.",
      fileType: "This type of file cannot be sent: send an image (PNG, JPEG, GIF, WebP), a PDF, a text or a ZIP file.",
      fileDamaged: "The image is damaged or incomplete: save it again and retry.",
      filePixels: "The image has too many pixels: make it smaller and retry.",
      fileEmpty: "The file is empty: choose a file with something in it.",
      uploadTimeout: "The upload took too long: check your connection and try again.",
      uploadNetwork: "The file could not be sent: check your connection and try again.",
      uploadCancelled: "Upload cancelled.",
      uploadFailed: "The file could not be sent: {m}",
    },
    "zh-CN": {
      launcher: "在线客服",
      title: "在线客服",
      close: "关闭对话窗口",
      otherLang: "EN",
      otherLangLabel: "Switch to English",
      placeholder: "输入消息…",
      send: "发送",
      consent: "开始对话前：我们会保存本次对话和您提供的信息，以便答复您。",
      consentPolicy: "隐私政策",
      consentAgree: "我同意",
      connecting: "正在连接…",
      connected: "已连接",
      reconnecting: "{s} 秒后重新连接…",
      reconnectNow: "立即重试",
      offlineNet: "网络已断开，恢复后将自动重新连接。",
      queued: "正在等待客服…",
      position: "您前面还有排队，当前排在第 {n} 位。",
      positionShort: "排队第 {n} 位",
      assigned: "客服 {name} 正在为您服务。",
      assignedShort: "{name}",
      agent: "客服",
      you: "我",
      typing: "{name} 正在输入…",
      closed: "本次对话已结束。如需帮助，请再次发送消息。",
      pending: "发送中…",
      failed: "尚未发送，将自动重试",
      tooLong: "这条消息有 {n} 个字符，上限是 {max}。请缩短或分成几条发送。",
      welcome: "您好！有任何问题都可以问我们。",
      replyTime: "我们通常几分钟内回复。",
      offlineContactIntro: "请留下邮箱，我们会通过邮件回复您。",
      offlineTitle: "客服暂时不在线",
      offlineIntro: "请留言，我们会通过邮件回复您。",
      name: "姓名",
      email: "邮箱",
      message: "留言",
      submit: "提交留言",
      offlineThanks: "谢谢！我们已收到您的留言，会通过邮件回复。",
      emailRequired: "请填写邮箱，以便我们回复您。",
      messageRequired: "请填写留言内容。",
      busy: "当前咨询人数较多，请稍候，您的排队位置会保留。",
      error: "出错了：{m}",
      linkUsed: "此邮件中的链接已被使用过（每个链接只能使用一次），无法再打开之前的对话。您可以在这里给我们留言，或直接回复该邮件。",
      linkExpired: "此邮件中的链接已过期（链接有效期为 7 天），无法再打开之前的对话。您可以在这里给我们留言，或直接回复该邮件。",
      linkFailed: "无法通过邮件中的链接打开之前的对话（{m}）。您可以在这里给我们留言，或直接回复该邮件。",
      unread: "{n} 条未读",
      newConversation: "新的对话",
      unavailable: "在线客服暂不可用。",
      seen: "已读",
      offlineIntroNoMail: "请留言，客服上线后会在此对话中回复您。",
      offlineThanksNoMail: "谢谢！我们已收到您的留言，请稍后回到本页面查看回复。",
      rateTitle: "您对本次服务满意吗？",
      rateStar: "{n} 星（满分 5 星）",
      rateComment: "还有什么想说的吗？（选填）",
      rateSend: "提交评价",
      rateThanks: "感谢您的评价！",
      rateNeedScore: "请选择 1 到 5 颗星。",
      transcriptLabel: "将对话记录发送到我的邮箱",
      transcriptSend: "发送",
      transcriptSent: "对话记录正在发送至 {email}。",
      transcriptFailed: "对话记录发送失败：{m}",
      attach: "添加附件",
      enlarge: "放大",
      download: "下载",
      closeImage: "关闭",
      cancelUpload: "取消",
      unavailableFile: "文件已不可用",
      fileTooLarge: "文件超过 {max}：请选择更小的文件。",
      fileType: "无法发送此类文件：请发送图片（PNG、JPEG、GIF、WebP）、PDF、文本或 ZIP 文件。",
      fileDamaged: "图片已损坏或不完整：请重新保存后再试。",
      filePixels: "图片像素过多：请缩小后再试。",
      fileEmpty: "文件是空的：请选择有内容的文件。",
      uploadTimeout: "上传时间过长：请检查网络后重试。",
      uploadNetwork: "文件未能发送：请检查网络后重试。",
      uploadCancelled: "已取消上传。",
      uploadFailed: "文件未能发送：{m}",
    },
  };

  // ---- storage (may be unavailable: private mode, sandboxed iframes) ----
  function load(k) {
    try { return window.localStorage.getItem(KEY + k); } catch (e) { return null; }
  }
  function save(k, v) {
    try {
      if (v === null || v === undefined) window.localStorage.removeItem(KEY + k);
      else window.localStorage.setItem(KEY + k, String(v));
    } catch (e) { /* storage full or blocked: the widget still works for this page view */ }
  }

  // ---- state ----
  var S = {
    lang: Core.pickLang(load("lang") || ds.lang || navigator.language),
    open: load("open") === "1" || ds.open === "true",
    consented: load("consent") === "1",
    token: load("token"),
    visitorId: load("visitor_id"),
    conversationId: load("conversation_id"),
    agentName: load("agent_name") || "",
    convState: null, // new (no conversation until the first message) | queued | assigned | closed | offline
    available: null, // with "new": whether someone could answer now (false: the offline form first)
    contactSent: load("contact_sent") === "1", // the offline form's details went to the visitor's record
    position: null,
    archive: [], // messages of earlier conversations shown in this page view
    agentTyping: false,
    typingAt: 0,
    unread: 0,
    readSeq: Number(load("read_seq") || 0), // agent messages up to here were seen with the panel open
    lastReadSent: 0,
    offlineSent: false,
    notice: null,
    linkNote: null, // {key, m}: why a mail's link did not open the earlier chat (this page view)
    mail: false, // the server sends e-mail (hello's "mail"): only then is an answer by mail promised
    rated: load("rated") || "", // the conversation the visitor has rated
    score: 0,
    transcriptNote: "",
  };
  // This conversation's messages by seq; a hole is asked for with `resume`.
  var seqLog = new Core.SeqLog(function (top) { send({ type: "resume", after_seq: top }); });
  // Unacked own messages, in send order: {id, body, ts, from, failed, sentAt}; kept across reloads.
  var outbox = new Core.Outbox(saveOutbox);
  var link = new Core.Link({
    url: function () {
      // A one-time ticket, never the visitor token, goes in the URL (URLs reach access logs).
      return ensureVisitor().then(wsTicket).then(function (ticket) {
        return WS_ORIGIN + "/ws/visitor?ticket=" + encodeURIComponent(ticket);
      });
    },
    onUrlFailed: function (err) {
      // A network failure is already told by the reconnect banner; a refusal needs its reason.
      if (err.status) {
        S.notice = err.status === 429 || err.status === 503 ? t("busy") : t("error", { m: err.message });
        renderLog();
      }
      link.scheduleReconnect();
    },
    onFrame: onFrame,
    onClose: function (ev) {
      if (ev.code === 4401) { forgetVisitor(); link.scheduleReconnect(0); return true; }
      if (link.failedOpens >= 3) probeToken();
      return false;
    },
    onConn: function () { renderStatus(); },
    pending: function () { return outbox.items.length > 0; },
    onAckTimeout: function () { outbox.markFailed(); renderLog(); },
  });
  var typingOffTimer = null;
  var typingShowTimer = null;
  var typingSentAt = 0;
  var readTimer = null;

  var t = Core.translator(I18N, function () { return S.lang; });

  // ---- DOM ----
  var h = window.TidedeskDom.h;

  var CSS = [
    // Everything that inherits is set on .tdw, not on the host: the page's own rules (even a bare
    // `* {...}`) can style the host element, but nothing inside the shadow root.
    ".tdw{font-family:system-ui,-apple-system,'Segoe UI',Roboto,'Helvetica Neue',Arial,'Noto Sans CJK SC','PingFang SC','Microsoft YaHei',sans-serif;",
    "font-size:14px;line-height:1.45;color:#1f2933;letter-spacing:normal;word-spacing:normal;text-transform:none;text-align:left;",
    "font-weight:400;font-style:normal;white-space:normal;-webkit-font-smoothing:antialiased}",
    "*{box-sizing:border-box}",
    "button,input,textarea{font:inherit;color:inherit}",
    ".launcher{position:relative;width:56px;height:56px;border-radius:50%;border:0;cursor:pointer;",
    "background:#0f766e;color:#fff;box-shadow:0 6px 20px rgba(15,118,110,.35);display:flex;align-items:center;justify-content:center;",
    "transition:transform .15s ease}",
    ".launcher:hover{transform:scale(1.05)}.launcher:focus-visible{outline:3px solid #99f6e4;outline-offset:2px}",
    ".launcher svg{width:26px;height:26px}.launcher .i-close{display:none;width:30px;height:30px}",
    ".launcher.open .i-chat{display:none}.launcher.open .i-close{display:block}",
    ".badge{position:absolute;top:-2px;right:-2px;min-width:20px;height:20px;padding:0 6px;border-radius:10px;",
    "background:#dc2626;color:#fff;font-size:12px;font-weight:600;line-height:20px;text-align:center}",
    ".panel{position:fixed;right:20px;bottom:92px;width:370px;height:560px;max-height:calc(100vh - 110px);",
    "background:#fff;border-radius:14px;box-shadow:0 12px 40px rgba(15,23,42,.22);display:flex;flex-direction:column;overflow:hidden}",
    ".panel[hidden]{display:none}",
    "header{background:#0f766e;color:#fff;padding:14px 14px 12px 16px;display:flex;align-items:flex-start;gap:10px}",
    ".htext{flex:1;min-width:0}",
    ".title{font-size:16px;font-weight:600;margin:0}",
    ".sub{font-size:12.5px;opacity:.9;margin-top:2px;display:flex;align-items:center;gap:6px;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}",
    ".dot{width:8px;height:8px;border-radius:50%;background:#fbbf24;flex:none}",
    ".dot[data-state=online]{background:#4ade80}.dot[data-state=nobody]{background:#cbd2d9}.dot[data-state=offline]{background:#f87171}",
    ".hbtn{background:rgba(0,0,0,.2);border:0;color:#fff;border-radius:8px;height:30px;min-width:30px;padding:0 9px;cursor:pointer;font-size:12.5px}",
    ".hbtn:hover{background:rgba(0,0,0,.32)}",
    ".banner{padding:8px 14px;font-size:12.5px;background:#fef3c7;color:#78350f;display:flex;gap:8px;align-items:center}",
    ".banner[hidden]{display:none}.banner[data-kind=offline]{background:#fee2e2;color:#7f1d1d}",
    ".banner button{margin-left:auto;border:0;background:none;text-decoration:underline;cursor:pointer;color:inherit;padding:0}",
    ".log{flex:1;overflow-y:auto;padding:14px 14px 6px;background:#f8fafc;display:flex;flex-direction:column;gap:6px}",
    ".note{align-self:center;text-align:center;font-size:12.5px;color:#52606d;background:#eef2f6;border-radius:10px;padding:6px 10px;max-width:92%}",
    ".note.queue{background:#e0f2f1;color:#134e4a}",
    ".row{display:flex;flex-direction:column;max-width:80%}",
    ".row.mine{align-self:flex-end;align-items:flex-end}.row.theirs{align-self:flex-start}",
    ".who{font-size:11.5px;color:#52606d;margin:4px 4px 2px}",
    ".bubble{padding:8px 12px;border-radius:14px;white-space:pre-wrap;word-wrap:break-word;overflow-wrap:anywhere}",
    ".mine .bubble{background:#0f766e;color:#fff;border-bottom-right-radius:4px}",
    ".theirs .bubble{background:#fff;border:1px solid #e4e7eb;border-bottom-left-radius:4px}",
    ".meta{font-size:11px;color:#52606d;margin:2px 4px 0}",
    ".pending .bubble{opacity:.65}",
    ".typing{font-size:12px;color:#52606d;padding:2px 16px 6px;background:#f8fafc;min-height:22px}",
    ".typing[hidden]{display:block;visibility:hidden}",
    ".composer{display:flex;gap:8px;padding:10px;border-top:1px solid #e4e7eb;background:#fff}",
    ".composer[hidden],.offline[hidden],.consent[hidden]{display:none}",
    ".consent{flex-shrink:0;padding:10px;border-top:1px solid #e4e7eb;background:#fff;font-size:13px}",
    ".consent p{margin:0 0 8px}.consent a{color:#0f766e}",
    ".agree{display:inline-block;border:0;border-radius:10px;background:#0f766e;color:#fff;padding:6px 14px;font-weight:600;cursor:pointer}",
    "textarea{flex:1;resize:none;border:1px solid #cbd2d9;border-radius:10px;padding:8px 10px;height:40px;max-height:120px;outline:none}",
    "textarea:focus,input:focus{border-color:#0f766e;box-shadow:0 0 0 3px rgba(15,118,110,.15)}",
    ".send{border:0;border-radius:10px;background:#0f766e;color:#fff;padding:0 14px;font-weight:600;cursor:pointer}",
    ".send:disabled{background:#9aa5b1;cursor:default}",
    ".offline{padding:14px 16px;border-top:1px solid #e4e7eb;background:#fff;display:flex;flex-direction:column;gap:8px}",
    ".offline h3{margin:0;font-size:15px}.offline p{margin:0;color:#52606d;font-size:13px}",
    ".offline label{font-size:12.5px;color:#3e4c59;display:flex;flex-direction:column;gap:3px}",
    ".offline input,.offline textarea{border:1px solid #cbd2d9;border-radius:8px;padding:7px 9px;outline:none;height:auto;width:100%}",
    ".offline textarea{height:70px}",
    ".offline .err{color:#b91c1c;font-size:12.5px;min-height:1em}",
    ".offline .send{height:38px}",
    ".after{padding:10px 16px;border-top:1px solid #e4e7eb;background:#fff;display:flex;flex-direction:column;gap:8px}",
    ".after[hidden],.after [hidden]{display:none}",
    ".rate{display:flex;flex-direction:column;gap:6px}.rtitle{font-weight:600}",
    ".stars{display:flex;gap:4px}.star{border:0;background:none;font-size:24px;line-height:1;color:#cbd2d9;cursor:pointer;padding:2px}",
    ".star.on{color:#f59e0b}.star:focus-visible{outline:2px solid #0f766e;border-radius:4px}",
    ".rate textarea,.transcript input{border:1px solid #cbd2d9;border-radius:8px;padding:7px 9px;width:100%;outline:none}",
    ".rate .send,.transcript .send{height:34px}.rate .err{color:#b91c1c;font-size:12.5px}",
    ".transcript label{font-size:12.5px;color:#3e4c59;display:flex;flex-direction:column;gap:4px}",
    ".trrow{display:flex;gap:6px}",
    ".sr{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0)}",
    "@media (max-width:480px){.launcher.open{display:none}.panel{position:fixed;inset:0;width:auto;height:auto;max-height:none;border-radius:0}}",
  ].join("").replace(/#0f766e/g, "var(--td-accent,#0f766e)") + window.TidedeskDom.ATTACHMENT_CSS;

  var host = h("tidedesk-widget", { id: "tidedesk-widget", "data-tidedesk": "widget" });
  // Inline !important beats any page rule that could move or hide the host. Set through the
  // CSSOM (not a style attribute), which a strict Content-Security-Policy allows.
  [["all", "initial"], ["display", "block"], ["position", "fixed"], ["right", "20px"], ["bottom", "20px"],
    ["z-index", "2147483000"], ["width", "auto"], ["height", "auto"]].forEach(function (d) {
    host.style.setProperty(d[0], d[1], "important");
  });
  var root = host.attachShadow({ mode: "open" });
  var ui = {};

  function build() {
    // A constructed stylesheet needs no 'unsafe-inline' in the shop's CSP; <style> is the fallback.
    var sheet = null;
    try {
      if (root.adoptedStyleSheets !== undefined && typeof CSSStyleSheet === "function") {
        sheet = new CSSStyleSheet();
        sheet.replaceSync(CSS);
        root.adoptedStyleSheets = [sheet];
      }
    } catch (e) { sheet = null; }
    if (!sheet) root.appendChild(h("style", { text: CSS }));
    ui.badge = h("span", { class: "badge", hidden: true, "data-testid": "td-badge" });
    ui.launcher = h("button", {
      class: "launcher", type: "button", "data-testid": "td-launcher", onclick: function () { setOpen(!S.open); },
    }, [svgIcon("i-chat", "M4 4h16a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H9l-5 4v-4a2 2 0 0 1-2-2V6a2 2 0 0 1 2-2zm3 6.5a1.5 1.5 0 1 0 0 .01zm5 0a1.5 1.5 0 1 0 0 .01zm5 0a1.5 1.5 0 1 0 0 .01z"),
      svgIcon("i-close", "M7.4 8.6 12 13.2l4.6-4.6L18 10l-6 6-6-6z"), ui.badge]);
    ui.title = h("h2", { class: "title", "data-testid": "td-title" });
    ui.dot = h("span", { class: "dot", "data-testid": "td-conn", "aria-hidden": "true" });
    ui.subText = h("span", { "data-testid": "td-status" });
    ui.langBtn = h("button", {
      class: "hbtn", type: "button", "data-testid": "td-lang",
      onclick: function () { setLanguage(S.lang === "en" ? "zh-CN" : "en"); },
    });
    ui.closeBtn = h("button", {
      class: "hbtn", type: "button", "data-testid": "td-close", text: "✕", onclick: function () { setOpen(false); },
    });
    ui.bannerText = h("span", { "data-testid": "td-banner-text" });
    ui.bannerBtn = h("button", { type: "button", onclick: function () { reconnectNow(); } });
    ui.banner = h("div", { class: "banner", hidden: true, "data-testid": "td-banner", role: "status" }, [ui.bannerText, ui.bannerBtn]);
    ui.log = h("div", { class: "log", "data-testid": "td-log", role: "log", "aria-live": "polite" });
    ui.typing = h("div", { class: "typing", hidden: true, "data-testid": "td-typing" });
    ui.input = h("textarea", {
      rows: "1", "data-testid": "td-input",
      onkeydown: function (e) {
        if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); submitComposer(); }
      },
      oninput: onTyping,
    });
    window.TidedeskDom.autoGrow(ui.input, 120);
    ui.sendBtn = h("button", { class: "send", type: "button", "data-testid": "td-send", onclick: submitComposer });
    ui.attachBtn = h("button", { class: "td-attach", type: "button", "data-testid": "td-attach" }, [svgIcon("i-attach", "M16.5 6v11.5c0 2.21-1.79 4-4 4s-4-1.79-4-4V5c0-1.38 1.12-2.5 2.5-2.5s2.5 1.12 2.5 2.5v10.5c0 .55-.45 1-1 1s-1-.45-1-1V6H10v9.5c0 1.38 1.12 2.5 2.5 2.5s2.5-1.12 2.5-2.5V5c0-2.21-1.79-4-4-4S7 2.79 7 5v12.5c0 3.04 2.46 5.5 5.5 5.5s5.5-2.46 5.5-5.5V6h-1.5z")]);
    ui.composer = h("div", { class: "composer" }, [ui.attachBtn, ui.input, ui.sendBtn]);
    ui.uploads = h("div", { class: "td-uploads", "data-testid": "td-uploads" });
    ui.uploadError = h("div", { class: "td-upload-error", role: "alert", "data-testid": "td-upload-error", hidden: true });
    // The optional consent line (data-consent="true", data-privacy-url="https://..."): shown
    // instead of the composer until the visitor agrees, before their first message.
    ui.consentText = h("span");
    ui.consentLink = h("a", { target: "_blank", rel: "noopener noreferrer" });
    ui.consentLink.hidden = !PRIVACY_URL;
    if (PRIVACY_URL) ui.consentLink.href = PRIVACY_URL;
    ui.consentBtn = h("button", {
      class: "agree", type: "button", "data-testid": "td-consent-agree",
      onclick: function () { S.consented = true; save("consent", "1"); renderStatus(); ui.input.focus(); },
    });
    ui.consent = h("div", { class: "consent", hidden: true, "data-testid": "td-consent" },
      [h("p", null, [ui.consentText, " ", ui.consentLink]), ui.consentBtn]);
    ui.offName = h("input", { type: "text", autocomplete: "name", "data-testid": "td-off-name" });
    ui.offEmail = h("input", { type: "email", autocomplete: "email", "data-testid": "td-off-email" });
    ui.offMsg = h("textarea", { "data-testid": "td-off-message" });
    ui.offErr = h("div", { class: "err", role: "alert" });
    ui.offTitle = h("h3");
    ui.offIntro = h("p");
    ui.offNameL = h("span"); ui.offEmailL = h("span"); ui.offMsgL = h("span");
    ui.offMsgLabel = h("label", null, [ui.offMsgL, ui.offMsg]);
    ui.offSubmit = h("button", { class: "send", type: "submit", "data-testid": "td-off-submit" });
    ui.offline = h("form", {
      class: "offline", hidden: true, "data-testid": "td-offline-form", novalidate: true,
      onsubmit: function (e) { e.preventDefault(); submitOffline(); },
    }, [ui.offTitle, ui.offIntro,
      h("label", null, [ui.offNameL, ui.offName]),
      h("label", null, [ui.offEmailL, ui.offEmail]),
      ui.offMsgLabel,
      ui.offErr, ui.offSubmit]);
    buildAfterChat();
    ui.panel = h("section", {
      class: "panel", hidden: true, "data-testid": "td-panel", role: "dialog",
      onkeydown: function (e) { if (e.key === "Escape") { e.preventDefault(); setOpen(false); } },
    }, [
      h("header", null, [h("div", { class: "htext" }, [ui.title, h("div", { class: "sub" }, [ui.dot, ui.subText])]), ui.langBtn, ui.closeBtn]),
      ui.banner, ui.log, ui.typing, ui.after, ui.uploads, ui.uploadError, ui.consent, ui.composer, ui.offline,
    ]);
    ui.root = root;
    window.TidedeskDom.fileInputs(ui.attachBtn, ui.panel, ui.input, uploadFiles);
    root.appendChild(h("div", { class: "tdw" }, [ui.panel, ui.launcher]));
    (document.body || document.documentElement).appendChild(host);
  }

  /** issue 13: after a closed chat, the 1-5 rating (once per conversation) and the transcript by mail. */
  function buildAfterChat() {
    ui.rateTitle = h("div", { class: "rtitle" });
    ui.stars = [1, 2, 3, 4, 5].map(function (n) {
      return h("button", {
        type: "button", class: "star", "data-testid": "td-star-" + n, "aria-pressed": "false",
        text: "★", onclick: function () { S.score = n; renderAfterChat(); },
      });
    });
    ui.rateComment = h("textarea", { rows: "2", maxlength: "1000", "data-testid": "td-rate-comment" });
    ui.rateSend = h("button", { type: "button", class: "send", "data-testid": "td-rate-send", onclick: submitRating });
    ui.rateErr = h("div", { class: "err", role: "alert" });
    ui.rateForm = h("div", { class: "rate", "data-testid": "td-rating" },
      [ui.rateTitle, h("div", { class: "stars" }, ui.stars), ui.rateComment, ui.rateErr, ui.rateSend]);
    ui.rateThanks = h("div", { class: "note", "data-testid": "td-rate-thanks" });
    ui.trEmail = h("input", { type: "email", autocomplete: "email", "data-testid": "td-transcript-email" });
    ui.trLabel = h("span");
    ui.trSend = h("button", { type: "button", class: "send", "data-testid": "td-transcript-send", onclick: submitTranscript });
    ui.trNote = h("div", { class: "note", "data-testid": "td-transcript-note" });
    ui.transcript = h("div", { class: "transcript", "data-testid": "td-transcript" },
      [h("label", null, [ui.trLabel, h("div", { class: "trrow" }, [ui.trEmail, ui.trSend])]), ui.trNote]);
    ui.after = h("div", { class: "after", hidden: true, "data-testid": "td-after" }, [ui.rateForm, ui.rateThanks, ui.transcript]);
  }

  function renderAfterChat() {
    var closed = S.convState === "closed" && !!S.conversationId;
    ui.after.hidden = !closed;
    if (!closed) return;
    var rated = S.rated === S.conversationId;
    ui.rateForm.hidden = rated;
    ui.rateThanks.hidden = !rated;
    ui.rateThanks.textContent = t("rateThanks");
    ui.rateTitle.textContent = t("rateTitle");
    ui.stars.forEach(function (b, i) {
      b.setAttribute("aria-pressed", String(i < S.score));
      b.setAttribute("aria-label", t("rateStar", { n: i + 1 }));
      b.classList.toggle("on", i < S.score);
    });
    ui.rateComment.placeholder = t("rateComment");
    ui.rateComment.setAttribute("aria-label", t("rateComment"));
    ui.rateSend.textContent = t("rateSend");
    ui.transcript.hidden = !S.mail;
    ui.trLabel.textContent = t("transcriptLabel");
    ui.trSend.textContent = t("transcriptSend");
    if (!ui.trEmail.value && ds.email) ui.trEmail.value = ds.email;
    ui.trNote.textContent = S.transcriptNote;
    ui.trNote.hidden = !S.transcriptNote;
  }

  function submitRating() {
    if (!S.score) { ui.rateErr.textContent = t("rateNeedScore"); return; }
    ui.rateErr.textContent = "";
    var frame = { type: "rating", score: S.score };
    var comment = ui.rateComment.value.trim();
    if (comment) frame.comment = comment;
    send(frame);
  }

  function submitTranscript() {
    var email = ui.trEmail.value.trim();
    if (!email || email.indexOf("@") < 1) { S.transcriptNote = t("emailRequired"); renderAfterChat(); return; }
    fetch(ORIGIN + "/api/v1/conversations/" + encodeURIComponent(S.conversationId) + "/transcript", {
      method: "POST", headers: { "Content-Type": "application/json", Authorization: "Bearer " + S.token },
      body: JSON.stringify({ email: email }),
    }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (j) {
        S.transcriptNote = r.ok ? t("transcriptSent", { email: email })
          : t("transcriptFailed", { m: (j.error && j.error.message) || ("HTTP " + r.status) });
        renderAfterChat();
      });
    }, function (e) { S.transcriptNote = t("transcriptFailed", { m: String(e && e.message || e) }); renderAfterChat(); });
  }

  function svgIcon(cls, d) {
    var ns = "http://www.w3.org/2000/svg";
    var svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("class", cls);
    var p = document.createElementNS(ns, "path");
    p.setAttribute("fill", "currentColor");
    p.setAttribute("d", d);
    svg.appendChild(p);
    return svg;
  }

  // ---- rendering ----
  var fmtTime = window.TidedeskDom.fmtTime;

  function renderChrome() {
    host.setAttribute("lang", S.lang);
    ui.launcher.setAttribute("aria-label", S.open ? t("close") : t("launcher"));
    ui.launcher.title = t("launcher");
    ui.title.textContent = t("title");
    ui.langBtn.textContent = t("otherLang");
    ui.langBtn.setAttribute("aria-label", t("otherLangLabel"));
    ui.langBtn.title = t("otherLangLabel");
    ui.closeBtn.setAttribute("aria-label", t("close"));
    ui.input.placeholder = t("placeholder");
    ui.input.setAttribute("aria-label", t("placeholder"));
    ui.sendBtn.textContent = t("send");
    ui.attachBtn.title = t("attach"); ui.attachBtn.setAttribute("aria-label", t("attach"));
    ui.consentText.textContent = t("consent");
    ui.consentLink.textContent = t("consentPolicy");
    ui.consentBtn.textContent = t("consentAgree");
    ui.offTitle.textContent = t("offlineTitle");
    ui.offIntro.textContent = SITE_CONFIG.offline_message || t(S.mail ? "offlineIntro" : "offlineIntroNoMail");
    ui.offNameL.textContent = t("name");
    ui.offEmailL.textContent = t("email");
    ui.offMsgL.textContent = t("message");
    ui.offSubmit.textContent = t("submit");
    ui.panel.setAttribute("aria-label", t("title"));
    renderStatus();
    renderLog();
  }

  function renderStatus() {
    // Green means "connected and someone can answer"; grey when connected but nobody is online.
    var conn = link.conn;
    ui.dot.setAttribute("data-state", conn === "online" && S.convState === "offline" ? "nobody" : conn);
    host.setAttribute("data-conn", conn);
    host.setAttribute("data-state", S.convState || "");
    var sub;
    if (S.unavailable) {
      ui.subText.textContent = t("unavailable");
      ui.banner.hidden = true;
      ui.offline.hidden = true;
      ui.composer.hidden = true;
      return;
    }
    if (conn === "offline") sub = t("offlineNet");
    else if (conn !== "online") sub = t("connecting");
    else if (S.convState === "assigned" && S.agentName) sub = t("assignedShort", { name: S.agentName });
    else if (S.convState === "queued" && S.position) sub = t("positionShort", { n: S.position });
    else if (S.convState === "queued") sub = t("queued");
    else if (isOffline()) sub = t("offlineTitle");
    else sub = t("connected");
    ui.subText.textContent = sub;

    var banner = null, kind = "", btn = false;
    if (conn === "offline") { banner = t("offlineNet"); kind = "offline"; }
    else if (conn === "reconnecting") {
      banner = t("reconnecting", { s: link.secondsToRetry() });
      btn = true;
    } else if (conn === "connecting" && link.attempt > 0) banner = t("connecting");
    ui.banner.hidden = !banner;
    ui.banner.setAttribute("data-kind", kind);
    ui.bannerText.textContent = banner || "";
    ui.bannerBtn.hidden = !btn;
    ui.bannerBtn.textContent = t("reconnectNow");

    // The form until the visitor has left a message (also after a reload: their message is resumed).
    // Nobody can answer (a ticket, or nobody online before the first message): the form asks
    // for an address; once the visitor has written, only for the address (the composer stays).
    var wrote = outbox.items.length > 0 ||
      seqLog.seqs().some(function (seq) { return seqLog.msgs[seq].from === "visitor"; });
    // Without mail there is no address to ask for once the visitor has written.
    var offlineForm = isOffline() && !S.offlineSent && !(wrote && (S.contactSent || !S.mail));
    var contactOnly = offlineForm && wrote;
    // The consent line stands in for the composer and the offline form alike until agreed.
    var needConsent = CONSENT && !S.consented && !wrote;
    ui.consent.hidden = !needConsent;
    ui.offline.hidden = !offlineForm || needConsent;
    ui.offline.setAttribute("data-mode", contactOnly ? "contact" : "message");
    ui.offMsgLabel.hidden = contactOnly;
    ui.offIntro.textContent = contactOnly ? t("offlineContactIntro")
      : SITE_CONFIG.offline_message || t(S.mail ? "offlineIntro" : "offlineIntroNoMail");
    ui.composer.hidden = (offlineForm && !contactOnly) || needConsent;
    ui.typing.hidden = !S.agentTyping;
    ui.typing.style.display = offlineForm ? "none" : "";
    ui.typing.textContent = S.agentTyping ? t("typing", { name: S.agentName || t("agent") }) : "";
    ui.badge.hidden = !S.unread || S.open;
    ui.badge.textContent = String(S.unread);
    ui.badge.setAttribute("aria-label", t("unread", { n: S.unread }));
    renderAfterChat();
  }

  function renderLog() {
    var log = ui.log;
    var nearBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 60;
    log.textContent = "";
    if (S.unavailable) {
      log.appendChild(h("div", { class: "note", "data-testid": "td-unavailable", text: t("unavailable") }));
      return;
    }
    // "We usually reply in a few minutes" only when someone can (never above "we are offline");
    // a site's own greeting is shown as written.
    log.appendChild(h("div", { class: "note", "data-testid": "td-welcome",
      text: SITE_CONFIG.greeting || (isOffline() ? t("welcome") : t("welcome") + " " + t("replyTime")) }));
    var lastWho = null;
    if (S.archive.length) {
      S.archive.forEach(function (m) { lastWho = appendMsg(m, false, lastWho, true); });
      log.appendChild(h("div", { class: "note", "data-testid": "td-new-conversation", text: t("newConversation") }));
      lastWho = null;
    }
    var seqs = seqLog.seqs();
    var seenSeq = 0;
    seqs.forEach(function (seq) { if (seqLog.msgs[seq].from === "visitor" && seq <= (S.agentRead || 0)) seenSeq = seq; });
    seqs.forEach(function (seq) {
      var m = seqLog.msgs[seq];
      lastWho = appendMsg(m, false, lastWho, false, seq === seenSeq);
    });
    outbox.items.forEach(function (m) { lastWho = appendMsg(m, true, lastWho); });
    if (S.convState === "queued" && S.position) {
      log.appendChild(h("div", { class: "note queue", "data-testid": "td-queue", text: t("position", { n: S.position }) }));
    } else if (S.convState === "queued") {
      log.appendChild(h("div", { class: "note queue", "data-testid": "td-queue", text: t("queued") }));
    } else if (S.convState === "assigned" && S.agentName) {
      log.appendChild(h("div", { class: "note", "data-testid": "td-assigned", text: t("assigned", { name: S.agentName }) }));
    } else if (S.convState === "closed") {
      log.appendChild(h("div", { class: "note", "data-testid": "td-closed", text: t("closed") }));
    }
    if (S.offlineSent) log.appendChild(h("div", { class: "note", "data-testid": "td-offline-thanks", text: t(S.mail ? "offlineThanks" : "offlineThanksNoMail") }));
    if (S.notice) log.appendChild(h("div", { class: "note", "data-testid": "td-notice", text: S.notice }));
    if (S.linkNote) log.appendChild(h("div", { class: "note", "data-testid": "td-link-note", text: t(S.linkNote.key, { m: S.linkNote.m }) }));
    if (nearBottom || !S._rendered) log.scrollTop = log.scrollHeight;
    S._rendered = true;
  }

  function isOffline() {
    return S.convState === "offline" || (S.convState === "new" && S.available === false);
  }

  function appendMsg(m, pending, lastWho, archived, seen) {
    var testid = archived ? "td-old-msg" : "td-msg";
    var seq = pending || archived ? null : m.seq;
    if (m.from === "system") {
      ui.log.appendChild(h("div", { class: "note", "data-testid": testid, "data-seq": seq, "data-from": "system", text: m.body }));
      return null;
    }
    var mine = m.from === "visitor";
    var who = mine ? "visitor" : (m.name || S.agentName || t("agent"));
    var row = h("div", {
      class: "row " + (mine ? "mine" : "theirs") + (pending ? " pending" : ""),
      "data-testid": testid, "data-seq": seq, "data-id": m.id, "data-from": m.from,
      "data-pending": pending ? "true" : null,
    });
    if (!mine && who !== lastWho) row.appendChild(h("div", { class: "who", text: who }));
    if (m.body || !(m.attachments && m.attachments.length)) {
      row.appendChild(h("div", { class: "bubble", "data-testid": "td-body" }, window.TidedeskDom.richText(m.body)));
    }
    if (m.attachments && m.attachments.length) {
      row.appendChild(window.TidedeskDom.attachmentList(m.attachments, links, t, ui.root));
    }
    var meta = pending ? (m.failed ? t("failed") : t("pending")) : fmtTime(m.ts || Date.now() / 1000) + (seen ? " · " + t("seen") : "");
    row.appendChild(h("div", { class: "meta", text: meta }));
    ui.log.appendChild(row);
    return who;
  }

  // ---- message bookkeeping ----
  /** Keep the transcript of a finished conversation on screen above the new one (this page view only). */
  function archiveConversation() {
    var old = seqLog.seqs().map(function (seq) { return seqLog.msgs[seq]; });
    S.archive = S.archive.concat(old).slice(-ARCHIVE_MAX);
  }

  function addMessage(m) {
    if (typeof m.seq !== "number" || m.seq < 1) return;
    if (m.conversation_id && S.conversationId && m.conversation_id !== S.conversationId) return;
    if (m.private) return; // never for visitors; belt and braces
    // A message we sent that comes back (echo or resume) confirms the pending copy.
    if (m.from === "visitor") outbox.take(m.id);
    var top = seqLog.top;
    if (!seqLog.add(m)) return; // seen already: a resume overlapping what we hold
    if (m.from === "agent" && m.name) { S.agentName = m.name; save("agent_name", m.name); }
    if (m.from === "agent") {
      // A reply ends the typing indicator, unless "typing on" came after it was sent (the relay
      // of typing frames is faster than the delivery of stored messages).
      if (Date.now() - S.typingAt > TYPING_OVERTAKE_MS) S.agentTyping = false;
      // An agent's reply means someone has the chat, even if the "assigned" frame was missed.
      if (S.convState === "queued" && m.seq > top) { S.convState = "assigned"; S.position = null; }
      if ((!S.open || document.hidden) && m.seq > S.readSeq) S.unread += 1;
    }
    scheduleRead();
  }

  function saveOutbox() {
    save("outbox", outbox.items.length ? JSON.stringify(outbox.items.map(function (m) {
      return { id: m.id, body: m.body, ts: m.ts, from: "visitor", attachments: m.attachments };
    })) : null);
  }

  function resetConversation() {
    seqLog.reset();
    S.agentTyping = false; S.position = null; S.offlineSent = false;
    S.readSeq = 0; S.unread = 0; S.lastReadSent = 0; S.agentRead = 0; save("read_seq", null);
  }

  // ---- connection ----
  function send(obj) { return link.send(obj); }

  var creatingVisitor = null; // one POST /visitors at a time, however many connects race

  function ensureVisitor() {
    if (S.token) return Promise.resolve(S.token);
    if (creatingVisitor) return creatingVisitor;
    if (S.unavailable) return Promise.reject(new Error(t("unavailable")));
    var body = { locale: S.lang };
    if (SITE !== "default") body.site = SITE;
    if (ds.name) body.name = ds.name;
    if (ds.email) body.email = ds.email;
    if (ds.tags) body.tags = ds.tags.split(",").map(function (x) { return x.trim(); }).filter(Boolean);
    // issue 14: where the visitor is (the agent's contact panel shows it), and identify: the
    // shop's server signs its customer's id (data-customer-id + data-customer-hash).
    var tz = "";
    try { tz = Intl.DateTimeFormat().resolvedOptions().timeZone || ""; } catch (e) { tz = ""; }
    body.context = { page_url: String(location.href).slice(0, 2048), referrer: String(document.referrer || "").slice(0, 2048),
      user_agent: String(navigator.userAgent || "").slice(0, 512), tz: tz.slice(0, 64) };
    if (ds.customerId && ds.customerHash) { body.customer_id = ds.customerId; body.customer_hash = ds.customerHash; }
    creatingVisitor = fetch(ORIGIN + "/api/v1/visitors", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (j) {
        if (!r.ok) {
          var err = new Error((j.error && j.error.message) || ("HTTP " + r.status));
          err.status = r.status;
          throw err;
        }
        S.token = j.token; S.visitorId = j.visitor_id;
        save("token", j.token); save("visitor_id", j.visitor_id);
        return j.token;
      });
    }).finally(function () { creatingVisitor = null; });
    return creatingVisitor;
  }

  /** A one-time WebSocket ticket for the visitor token; a token the server no longer takes
   *  (expired, unknown) is forgotten and a new visitor made, as a 4401 close did before. */
  function wsTicket(token, again) {
    return fetch(ORIGIN + "/api/v1/ws-ticket", {
      method: "POST", headers: { Authorization: "Bearer " + token },
    }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (j) {
        if (r.status === 401 && S.token === token && !again) {
          forgetVisitor();
          return ensureVisitor().then(function (fresh) { return wsTicket(fresh, true); });
        }
        if (!r.ok) {
          var err = new Error((j.error && j.error.message) || ("HTTP " + r.status));
          err.status = r.status;
          throw err;
        }
        return j.ticket;
      });
    });
  }

  function forgetVisitor() {
    S.token = null; S.visitorId = null; S.conversationId = null;
    save("token", null); save("visitor_id", null); save("conversation_id", null);
    S.contactSent = false; save("contact_sent", null);
    resetConversation();
  }

  /** The upgrade keeps failing: ask over HTTP whether our token is still valid. */
  function probeToken() {
    if (!S.conversationId || !S.token) return;
    fetch(ORIGIN + "/api/v1/conversations/" + encodeURIComponent(S.conversationId) + "/messages?after_seq=0&limit=1", {
      headers: { Authorization: "Bearer " + S.token },
    }).then(function (r) {
      if (r.status === 401 || r.status === 403) { forgetVisitor(); link.reconnectNow(); }
    }, function () { /* still unreachable: keep backing off */ });
  }

  function onFrame(f) {
    switch (f.type) {
      case "hello":
        // A second hello on an open link names the conversation our first message opened
        // (the socket opens none): that message is on its way, so nothing is sent again.
        var opening = link.conn === "online" && !S.conversationId && !!f.conversation_id;
        link.established(); S.notice = null;
        if (f.conversation_id !== S.conversationId) {
          if (S.conversationId) archiveConversation();
          if (!opening) resetConversation();
          S.conversationId = f.conversation_id || null;
          save("conversation_id", f.conversation_id || null);
        }
        if (f.visitor_id) { S.visitorId = f.visitor_id; save("visitor_id", f.visitor_id); }
        S.available = typeof f.available === "boolean" ? f.available : null;
        if (S.mail !== (f.mail === true)) { S.mail = f.mail === true; renderChrome(); }
        setConvState(f.state);
        if (f.conversation_id) seqLog.catchUp(f.last_seq);
        if (!opening) outbox.resend(transmit);
        renderStatus(); renderLog();
        break;
      case "message":
        addMessage(f);
        renderStatus(); renderLog();
        break;
      case "ack":
        onAck(f);
        break;
      case "queue":
        S.position = f.position;
        if (S.convState !== "queued") S.convState = "queued";
        renderStatus(); renderLog();
        break;
      case "assigned":
        if (f.agent && f.agent.name) { S.agentName = f.agent.name; save("agent_name", f.agent.name); }
        S.position = null;
        setConvState("assigned");
        break;
      case "state":
        setConvState(f.state);
        break;
      case "read":
        // The agent has seen the visitor's messages up to this seq.
        if (typeof f.seq === "number" && f.seq > (S.agentRead || 0)) { S.agentRead = f.seq; renderLog(); }
        break;
      case "typing":
        S.agentTyping = !!f.on;
        S.typingAt = Date.now();
        clearTimeout(typingShowTimer);
        if (S.agentTyping) typingShowTimer = setTimeout(function () { S.agentTyping = false; renderStatus(); }, TYPING_SHOW_MS);
        renderStatus();
        break;
      case "busy":
        S.position = f.position || S.position;
        S.notice = t("busy");
        renderStatus(); renderLog();
        break;
      case "rated":
        if (f.conversation_id) { S.rated = f.conversation_id; save("rated", f.conversation_id); }
        renderStatus();
        break;
      case "error":
        if (f.code === "already_rated") { S.rated = S.conversationId; save("rated", S.rated); renderStatus(); break; }
        onError(f);
        break;
      default:
        break; // newer server, older widget: ignore what we do not know
    }
  }

  function onError(f) {
    var m = outbox.find(f.id);
    if (m && Core.RETRYABLE_ERRORS[f.code]) {
      // Not stored: send it again with the same id (the server dedupes on it).
      m.failed = true;
      setTimeout(function () { if (outbox.items.indexOf(m) >= 0) transmit(m); }, 1000 + Math.random() * 1000);
      renderLog();
      return;
    }
    // Anything else can never succeed: out of the outbox (never re-sent), text back to the composer.
    if (m) { outbox.reject(f); ui.input.value = ui.input.value || m.body; }
    if (m && m.attachments && m.attachments.length && /attachment/.test(f.code || "")) {
      showUploadError(t("uploadFailed", { m: f.message || f.code }));
    }
    S.notice = f.code === "busy" || f.code === "unavailable" ? t("busy") : t("error", { m: f.message || f.code });
    renderLog();
  }

  function setConvState(st) {
    if (!st) return;
    var prev = S.convState;
    S.convState = st;
    if (st !== "queued") S.position = null;
    if (st === "closed" || st === "offline") S.agentTyping = false;
    if (prev === "closed" && st !== "closed") S.notice = null;
    renderStatus(); renderLog();
  }

  function onAck(f) {
    var m = outbox.take(f.id);
    if (m && typeof f.seq === "number") {
      seqLog.add({
        type: "message", conversation_id: S.conversationId, seq: f.seq, id: m.id,
        from: "visitor", body: m.body, ts: m.ts, attachments: m.attachments,
      });
    }
    link.armAckTimer();
    renderLog();
  }

  function transmit(m) {
    var frame = { type: "message", id: m.id, body: m.body };
    // A file is uploaded once; the message names it by id, so a resend after a reconnect
    // (same client id) sends only the id again.
    if (m.attachments && m.attachments.length) frame.attachments = m.attachments.map(function (a) { return a.id; });
    if (link.transmit(frame)) m.sentAt = Date.now();
  }

  var links = new Core.AttachmentLinks(ORIGIN, function () { return S.token; });

  function showUploadError(text) {
    ui.uploadError.textContent = text || "";
    ui.uploadError.hidden = !text;
  }

  function uploadFiles(files) {
    showUploadError(null);
    files.forEach(function (file) {
      var job = null;
      var chip = window.TidedeskDom.uploadChip(file, t, function () { if (job) job.cancel(); });
      ui.uploads.appendChild(chip);
      ensureVisitor().then(function (token) {
        job = Core.uploadFile({ base: ORIGIN, token: token, file: file, onProgress: chip.progress });
        return job.promise;
      }).then(function (res) {
        chip.remove();
        if (res.ok) sendMessage("", [res.attachment]);
        else showUploadError(t(res.key, res.vars));
      }, function () { chip.remove(); showUploadError(t("uploadNetwork")); });
    });
  }

  function sendMessage(body, attachments) {
    body = String(body || "").trim();
    if (!body && !(attachments && attachments.length)) return false;
    if (body.length > Core.MAX_BODY_CHARS) {
      // Never sent: the server would refuse it every time (issue 14). The text stays put.
      S.notice = t("tooLong", { n: body.length, max: Core.MAX_BODY_CHARS });
      renderLog();
      return false;
    }
    var m = { id: Core.newId(), body: body, ts: Date.now() / 1000, from: "visitor" };
    if (attachments && attachments.length) m.attachments = attachments;
    S.linkNote = null; // the visitor carries on here: the note about the mail's link is done
    outbox.push(m);
    stopTyping();
    transmit(m);
    if (link.isIdle()) link.connect();
    renderLog();
    ui.log.scrollTop = ui.log.scrollHeight;
    return m.id;
  }

  function submitComposer() {
    if (sendMessage(ui.input.value)) ui.input.value = "";
    ui.input.focus();
  }

  function submitOffline() {
    var email = ui.offEmail.value.trim(), body = ui.offMsg.value.trim(), name = ui.offName.value.trim();
    var contactOnly = ui.offline.getAttribute("data-mode") === "contact";
    // The address is needed only when the server can mail the answer (hello's "mail").
    if ((S.mail && !email) || (email && email.indexOf("@") < 1)) { ui.offErr.textContent = t("emailRequired"); ui.offEmail.focus(); return; }
    if (!body && !contactOnly) { ui.offErr.textContent = t("messageRequired"); ui.offMsg.focus(); return; }
    ui.offErr.textContent = "";
    // The contact details go to the visitor's own (encrypted) record, never into the message.
    var contact = {};
    if (email) contact.email = email;
    if (name) contact.name = name;
    if (email || name) {
      ensureVisitor().then(function (token) {
        return fetch(ORIGIN + "/api/v1/visitors/contact", {
          method: "POST", body: JSON.stringify(contact),
          headers: { "Content-Type": "application/json", Authorization: "Bearer " + token },
        });
      }).then(function (r) {
        if (r.ok) { S.contactSent = true; save("contact_sent", "1"); renderStatus(); }
      }, function () { /* the message still goes; the details can be given again */ });
    }
    if (body && !contactOnly) sendMessage(body);
    S.offlineSent = true;
    ui.offMsg.value = "";
    renderStatus(); renderLog();
  }

  function onTyping() {
    var now = Date.now();
    if (now - typingSentAt > TYPING_RESEND_MS) { if (send({ type: "typing", on: true })) typingSentAt = now; }
    clearTimeout(typingOffTimer);
    typingOffTimer = setTimeout(stopTyping, TYPING_IDLE_MS);
  }

  function stopTyping() {
    clearTimeout(typingOffTimer);
    if (typingSentAt) { send({ type: "typing", on: false }); typingSentAt = 0; }
  }

  function markRead() {
    if (!S.open || document.hidden) return;
    S.unread = 0;
    if (seqLog.maxSeq > S.readSeq) { S.readSeq = seqLog.maxSeq; save("read_seq", S.readSeq); }
  }

  function scheduleRead() {
    if (!S.open || document.hidden) return;
    markRead();
    if (readTimer) return;
    readTimer = setTimeout(function () {
      readTimer = null;
      if (S.open && !document.hidden && seqLog.maxSeq > S.lastReadSent && send({ type: "read", seq: seqLog.maxSeq })) S.lastReadSent = seqLog.maxSeq;
    }, 400);
  }

  // ---- public actions ----
  function setOpen(open) {
    S.open = !!open;
    save("open", S.open ? "1" : null);
    ui.panel.hidden = !S.open;
    ui.launcher.setAttribute("aria-expanded", String(S.open));
    ui.launcher.classList.toggle("open", S.open);
    ui.launcher.setAttribute("aria-label", S.open ? t("close") : t("launcher"));
    if (S.open) {
      markRead();
      if (link.isIdle() && !S.unavailable) link.connect();
      scheduleRead();
      renderLog();
      ui.log.scrollTop = ui.log.scrollHeight;
      setTimeout(function () { try { ui.input.focus(); } catch (e) { /* hidden */ } }, 0);
    }
    renderStatus();
  }

  function setLanguage(lang) {
    S.lang = Core.pickLang(lang);
    save("lang", S.lang);
    renderChrome();
  }

  // ---- the site's branding ----
  function applySiteConfig(cfg) {
    SITE_CONFIG = cfg;
    if (cfg.color) host.style.setProperty("--td-accent", cfg.color);
    var left = cfg.position === "bottom-left";
    host.style.setProperty("right", left ? "auto" : "20px", "important");
    host.style.setProperty("left", left ? "20px" : "auto", "important");
    host.setAttribute("data-position", left ? "bottom-left" : "bottom-right");
    renderChrome();
  }

  function loadSiteConfig() {
    fetch(ORIGIN + "/api/v1/sites/" + encodeURIComponent(SITE) + "/widget-config").then(function (r) {
      if (r.status === 404) {
        // Deleted or unknown site: say so quietly; never open a socket for it.
        S.unavailable = true;
        host.setAttribute("data-unavailable", "true");
        link.drop();
        link.cancelRetry();
        renderChrome();
        return null;
      }
      return r.ok ? r.json() : null;
    }).then(function (cfg) { if (cfg) applySiteConfig(cfg); }).catch(function () {
      /* network trouble: the built-in look stays; the link reports the connection */
    });
  }

  // ---- start ----
  /** Take the visitor's session for this page: keep it (and the saved state) when it is the
   *  one this browser has, else start over from it. */
  function adoptToken(token) {
    if (token !== S.token) {
      S.token = token; S.visitorId = null; S.conversationId = null;
      save("token", S.token); save("visitor_id", null); save("conversation_id", null); save("outbox", null);
      outbox.items = []; // another visitor's unsent messages are not this one's
    }
  }

  /** Whatever follows `#` as `name=value`, dropped from the address bar (and history). */
  function takeFragment(name) {
    var m = new RegExp("(?:^#|&)" + name + "=([A-Za-z0-9._-]+)").exec(location.hash || "");
    if (!m) return null;
    try { history.replaceState(null, "", location.pathname + location.search); } catch (e) { location.hash = ""; }
    return m[1];
  }

  /** A mail's link opens this page with #tidedesk-code=<one-time code>: trade it for the
   *  visitor's session (once: the server spends it). A code that was used, has expired or
   *  cannot be traded now leaves this browser's own chat (a new one if it has none), with a
   *  note that says why and that the e-mail can be answered. Mails sent before one-time codes
   *  carry #tidedesk=<visitor token>, still taken as it is. */
  function takeMailLink() {
    var token = takeFragment("tidedesk");
    if (token) { adoptToken(token); S.open = true; return Promise.resolve(); }
    var code = takeFragment("tidedesk-code");
    if (!code) return Promise.resolve();
    S.open = true;
    return fetch(ORIGIN + "/api/v1/visitors/mail-link", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ code: code }),
    }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (j) {
        var err = j.error || {};
        if (r.ok && j.token) adoptToken(j.token);
        else if (err.code === "link_expired") S.linkNote = { key: "linkExpired" };
        else if (err.code === "link_used" || err.code === "link_unknown") S.linkNote = { key: "linkUsed" };
        else S.linkNote = { key: "linkFailed", m: err.message || ("HTTP " + r.status) };
      });
    }, function (e) {
      S.linkNote = { key: "linkFailed", m: String(e && e.message || e) };
    });
  }

  function start() {
    build();
    try {
      var saved = JSON.parse(load("outbox") || "[]");
      if (Array.isArray(saved)) outbox.items = saved.filter(function (m) { return m && m.id && (m.body || (m.attachments && m.attachments.length)); });
    } catch (e) { outbox.items = []; }
    renderChrome();
    loadSiteConfig();
    window.addEventListener("offline", function () { link.goOffline(); });
    window.addEventListener("online", function () { if (S.token || S.open) link.reconnectNow(); else link.setConn("idle"); });
    document.addEventListener("visibilitychange", function () { if (!document.hidden) { scheduleRead(); renderStatus(); } });
    // The session comes from the mail's link (if this page was opened from one) before the
    // widget connects with it.
    takeMailLink().then(function () {
      setOpen(S.open);
      // A returning visitor reconnects at once so agent replies arrive even with the panel closed;
      // a new one gets a session only when they open the panel (no empty chats for every page view).
      if (S.token && !S.unavailable) link.connect();
    });
  }

  window.Tidedesk = {
    version: "1",
    open: function () { setOpen(true); },
    close: function () { setOpen(false); },
    toggle: function () { setOpen(!S.open); },
    setLanguage: setLanguage,
    send: sendMessage,
    get state() {
      return { conn: link.conn, conversation: S.convState, position: S.position, agent: S.agentName, lastSeq: seqLog.top, pending: outbox.items.length, lang: S.lang };
    },
    _backoffMs: Core.backoffMs,
  };

  if (document.body) start();
  else document.addEventListener("DOMContentLoaded", start);
})();
