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

  global.TidedeskDom = { h: h, fmtTime: fmtTime };
})(window);
