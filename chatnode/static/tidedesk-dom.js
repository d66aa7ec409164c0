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

  global.TidedeskDom = { h: h, fmtTime: fmtTime, richText: richText, autoGrow: autoGrow };
})(window);
