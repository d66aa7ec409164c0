/*! Tidedesk view helpers: the element builder and clock format the widget and the console share.
 *
 * Kept apart from tidedesk-core.js so that the protocol core stays DOM-free. Served in front of
 * widget.js at /widget.js (after the core) and as /static/tidedesk-dom.js for the console.
 */
(function (global) {
  "use strict";
  if (global.TidedeskDom) return; // loaded twice: keep the first

  /**
   * h(tag, attrs, kids): a new element. attrs: "text" sets the text, "class" the class name,
   * "on<event>" adds a listener, anything else is an attribute (true: present, empty; null,
   * undefined or false: left out). kids: elements or strings (text), falsy ones skipped.
   */
  function h(tag, attrs, kids) {
    var el = global.document.createElement(tag);
    if (attrs) Object.keys(attrs).forEach(function (k) {
      var v = attrs[k];
      if (v === null || v === undefined || v === false) return;
      if (k === "text") el.textContent = v;
      else if (k === "class") el.className = v;
      else if (k.slice(0, 2) === "on") el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? "" : v);
    });
    (kids || []).forEach(function (c) {
      if (c) el.appendChild(typeof c === "string" ? global.document.createTextNode(c) : c);
    });
    return el;
  }

  /** "HH:MM" in the browser's time zone for a server timestamp in seconds. */
  function fmtTime(ts) {
    var d = new Date(ts * 1000);
    return ("0" + d.getHours()).slice(-2) + ":" + ("0" + d.getMinutes()).slice(-2);
  }

  var IMAGE_TYPES = { "image/png": 1, "image/jpeg": 1, "image/gif": 1, "image/webp": 1 };

  /**
   * The attachments of a message: images as a thumbnail (click: the full image in an overlay
   * on top of `host`), other files as a chip with name and size that downloads the file.
   * `links` is a TidedeskCore.AttachmentLinks; `t` the view's translator.
   */
  function attachmentList(list, links, t, host) {
    var box = h("div", { class: "td-atts", "data-testid": "attachments" });
    (list || []).forEach(function (a) {
      var size = global.TidedeskCore.fmtSize(a.size);
      if (IMAGE_TYPES[a.content_type]) {
        var img = h("img", { class: "td-thumb", alt: a.name, title: a.name + " · " + size, "data-testid": "attachment-image", "data-id": a.id });
        var btn = h("button", { type: "button", class: "td-thumb-btn", "aria-label": t("enlarge") + ": " + a.name, onclick: function () { enlarge(a, links, t, host); } }, [img]);
        links.get(a.id).then(function (l) { img.src = l.thumbnail_url || l.url; }, function () { img.alt = a.name + " (" + t("unavailableFile") + ")"; });
        box.appendChild(btn);
      } else {
        var chip = h("a", { class: "td-chip", "data-testid": "attachment-file", "data-id": a.id, download: a.name, rel: "noopener" },
          [h("span", { class: "td-chip-name", text: a.name }), h("span", { class: "td-chip-size", text: size })]);
        links.get(a.id).then(function (l) { chip.href = l.url; }, function () { chip.title = t("unavailableFile"); });
        box.appendChild(chip);
      }
    });
    return box;
  }

  function enlarge(a, links, t, host) {
    links.get(a.id).then(function (l) {
      var overlay = h("div", { class: "td-lightbox", role: "dialog", "aria-label": a.name, "data-testid": "lightbox", onclick: function (e) { if (e.target === overlay) overlay.remove(); } }, [
        h("img", { src: l.url, alt: a.name, "data-testid": "lightbox-image" }),
        h("div", { class: "td-lightbox-bar" }, [
          h("a", { href: l.url, download: a.name, "data-testid": "lightbox-download", text: t("download") }),
          h("button", { type: "button", "data-testid": "lightbox-close", text: t("closeImage"), onclick: function () { overlay.remove(); } }),
        ]),
      ]);
      (host || global.document.body).appendChild(overlay);
    });
  }

  /** An upload in progress: name, size, a progress bar and a cancel button. */
  function uploadChip(file, t, onCancel) {
    var bar = h("progress", { max: "1", value: "0", "data-testid": "upload-progress" });
    var el = h("div", { class: "td-upload", "data-testid": "upload" }, [
      h("span", { class: "td-chip-name", text: file.name || "screenshot.png" }),
      h("span", { class: "td-chip-size", text: global.TidedeskCore.fmtSize(file.size) }), bar,
      h("button", { type: "button", class: "td-upload-cancel", "data-testid": "upload-cancel", text: t("cancelUpload"), onclick: onCancel }),
    ]);
    el.progress = function (f) { bar.value = String(f); };
    return el;
  }

  /**
   * Wire the ways in for files: a button that opens the file picker, drag and drop onto
   * `dropTarget`, and pasting a screenshot into `pasteTarget`. Calls onFiles(array of File).
   */
  function fileInputs(button, dropTarget, pasteTarget, onFiles) {
    var input = h("input", { type: "file", multiple: true, hidden: true, "data-testid": "file-input",
      onchange: function () { if (input.files.length) onFiles(Array.prototype.slice.call(input.files)); input.value = ""; } });
    button.addEventListener("click", function () { input.click(); });
    button.parentNode.appendChild(input);
    dropTarget.addEventListener("dragover", function (e) { e.preventDefault(); dropTarget.classList.add("td-drop"); });
    dropTarget.addEventListener("dragleave", function () { dropTarget.classList.remove("td-drop"); });
    dropTarget.addEventListener("drop", function (e) {
      e.preventDefault(); dropTarget.classList.remove("td-drop");
      var files = e.dataTransfer && e.dataTransfer.files;
      if (files && files.length) onFiles(Array.prototype.slice.call(files));
    });
    pasteTarget.addEventListener("paste", function (e) {
      var items = (e.clipboardData && e.clipboardData.items) || [];
      var files = [];
      for (var i = 0; i < items.length; i++) if (items[i].kind === "file") { var f = items[i].getAsFile(); if (f) files.push(f); }
      if (files.length) { e.preventDefault(); onFiles(files); }
    });
    return input;
  }

  var ATTACHMENT_CSS = [
    ".td-atts{display:flex;flex-wrap:wrap;gap:6px;margin-top:4px}",
    ".td-thumb-btn{border:0;padding:0;background:none;cursor:zoom-in}",
    ".td-thumb{max-width:180px;max-height:140px;border-radius:8px;display:block}",
    ".td-chip,.td-upload{display:inline-flex;gap:8px;align-items:center;padding:6px 10px;border:1px solid #cbd2d9;border-radius:8px;background:#fff;color:#1f2933;text-decoration:none;max-width:100%}",
    ".td-chip-name{font-weight:600;overflow:hidden;text-overflow:ellipsis;white-space:nowrap;max-width:180px}",
    ".td-chip-size{color:#616e7c;font-size:12px}",
    ".td-upload progress{width:80px}",
    ".td-upload-cancel{border:0;background:none;color:#b91c1c;cursor:pointer}",
    ".td-lightbox{position:fixed;inset:0;background:rgba(0,0,0,.8);display:flex;flex-direction:column;align-items:center;justify-content:center;z-index:2147483647}",
    ".td-lightbox img{max-width:92vw;max-height:82vh}",
    ".td-lightbox-bar{display:flex;gap:16px;margin-top:10px}",
    ".td-lightbox-bar a,.td-lightbox-bar button{color:#fff;background:none;border:1px solid #fff;border-radius:6px;padding:4px 12px;cursor:pointer;font:inherit;text-decoration:none}",
    ".td-drop{outline:2px dashed #0f766e;outline-offset:-4px}",
    ".td-attach{border:0;background:none;cursor:pointer;padding:0 6px;color:#52606d}",
    ".td-attach svg{width:20px;height:20px;display:block}",
    ".td-upload-error{color:#b91c1c;font-size:13px;padding:2px 8px}",
  ].join("");

  /**
   * Message text with its links made clickable and safe: only the http(s) and mailto links of
   * TidedeskCore.linkify, opened in a new tab without giving the page a handle on ours
   * (rel="noopener noreferrer"). Everything else stays text (never HTML).
   */
  function richText(text) {
    var core = global.TidedeskCore;
    if (!core || !core.linkify) return [String(text || "")];
    return core.linkify(text).map(function (seg) {
      if (!seg.href) return seg.text;
      return h("a", { href: seg.href, rel: "noopener noreferrer", target: "_blank", text: seg.text });
    });
  }

  /** A textarea that grows with its text up to `max` pixels, then scrolls. */
  function autoGrow(textarea, max) {
    function fit() {
      textarea.style.height = "auto";
      textarea.style.height = Math.min(textarea.scrollHeight + 2, max || 200) + "px";
    }
    textarea.addEventListener("input", fit);
    return fit;
  }

  global.TidedeskDom = { h: h, fmtTime: fmtTime, richText: richText, autoGrow: autoGrow,
    attachmentList: attachmentList, uploadChip: uploadChip, fileInputs: fileInputs,
    ATTACHMENT_CSS: ATTACHMENT_CSS };
})(window);
