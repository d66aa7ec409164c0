"""The browser protocol core (chatnode/static/tidedesk-core.js), driven directly in Chromium.

A blank page loads only the core, with Playwright's fake clock and a fake WebSocket, so gap
detection, resume, dedupe, the outbox, the backoff and i18n are checked without a server or a
view. The widget and the console use these same objects (docs/ui.md, "Delivery").
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CORE = Path(__file__).resolve().parents[2] / "chatnode" / "static" / "tidedesk-core.js"
START_MS = 1_700_000_000_000  # the fake clock's epoch ms; any fixed moment does

# A WebSocket stand-in: every socket the link makes is kept in window.sockets, with the frames
# sent on it; a test opens, feeds and closes it by hand.
FAKE_SOCKET_JS = """
window.sockets = [];
window.FakeSocket = function (url) {
  this.url = url; this.readyState = 0; this.sent = []; this.closed = false;
  window.sockets.push(this);
};
FakeSocket.prototype.send = function (text) { this.sent.push(JSON.parse(text)); };
FakeSocket.prototype.close = function () { this.closed = true; this.readyState = 3; };
FakeSocket.prototype.open = function () { this.readyState = 1; if (this.onopen) this.onopen({}); };
FakeSocket.prototype.frame = function (f) { this.onmessage({ data: JSON.stringify(f) }); };
FakeSocket.prototype.lose = function (code) { this.readyState = 3; this.onclose({ code: code }); };
"""

# A view the size of a test: one log, one outbox, one link, wired the way widget.js wires them.
MINI_VIEW_JS = """
window.view = (function () {
  var C = TidedeskCore, v = { resumes: [], frames: [], timeouts: 0 };
  v.link = new C.Link({
    url: function () { return Promise.resolve("ws://test/ws"); },
    onFrame: function (f) {
      v.frames.push(f);
      if (f.type === "hello") {
        v.link.established();
        v.log.catchUp(f.last_seq);
        v.outbox.resend(function (m) {
          v.link.transmit({ type: "message", id: m.id, body: m.body });
        });
      } else if (f.type === "ack") {
        v.outbox.take(f.id);
        v.link.armAckTimer();
      }
    },
    pending: function () { return v.outbox.items.length > 0; },
    onAckTimeout: function () { v.timeouts += 1; v.outbox.markFailed(); },
    isOnline: function () { return true; },
    socket: function (url) { return new FakeSocket(url); },
    random: function () { return 0.5; },
  });
  v.log = new C.SeqLog(function (top) { v.link.send({ type: "resume", after_seq: top }); });
  v.outbox = new C.Outbox();
  v.say = function (body) {
    var m = { id: C.newId(), body: body };
    v.outbox.push(m);
    v.link.transmit({ type: "message", id: m.id, body: body });
    return m.id;
  };
  return v;
})();
"""


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A blank page with the core loaded, the fake clock installed and FakeSocket defined."""
    pg = browser.new_page()
    # Paused: time moves only by run_for, so every wait below is exact.
    pg.clock.install(time=START_MS)
    pg.clock.pause_at(START_MS + 1000)
    pg.set_content("<!doctype html><meta charset=utf-8><title>core</title>")
    pg.add_script_tag(path=str(CORE))
    pg.add_script_tag(content=FAKE_SOCKET_JS)
    try:
        yield pg
    finally:
        pg.close()


def socket_count(page: Any) -> int:
    """How many sockets the link has made (a connect opens its socket one microtask later)."""
    return int(page.evaluate("() => Promise.resolve().then(() => sockets.length)"))


def connected_view(page: Any, last_seq: int = 0) -> None:
    """The mini view, connected: its first socket is open and the server said hello."""
    page.add_script_tag(content=MINI_VIEW_JS)
    page.evaluate("() => view.link.connect()")
    assert socket_count(page) == 1
    page.evaluate("n => { sockets[0].open(); sockets[0].frame({ type: 'hello', last_seq: n }); }",
                  last_seq)


def reconnected(page: Any, last_seq: int) -> list[dict[str, Any]]:
    """Lose the first socket, wait out the first backoff (375 ms with random() = 0.5), open the
    second socket, say hello on it, and return what the view sent on it."""
    page.evaluate("() => sockets[0].lose(1006)")
    page.clock.run_for(1000)
    assert socket_count(page) == 2
    sent: list[dict[str, Any]] = page.evaluate(
        "n => { sockets[1].open(); sockets[1].frame({ type: 'hello', last_seq: n });"
        " return sockets[1].sent; }", last_seq)
    return sent


def test_a_hole_is_asked_for_once_then_stepped_over(page: Any) -> None:
    got = page.evaluate("""() => {
      var resumes = [], steps = 0;
      var log = new TidedeskCore.SeqLog(function (top) { resumes.push(top); },
                                        { onStep: function () { steps += 1; } });
      log.add({ seq: 1 }); log.add({ seq: 3 }); log.add({ seq: 5 });
      window.gapLog = log; window.gapSteps = function () { return steps; };
      return { top: log.top, maxSeq: log.maxSeq, resumes: resumes };
    }""")
    assert got == {"top": 1, "maxSeq": 5, "resumes": [1]}, "one resume for the first hole"
    page.clock.run_for(2400)
    assert page.evaluate("() => gapLog.top") == 1, "the hole stays open for GAP_WAIT_MS"
    page.clock.run_for(200)
    assert page.evaluate("() => [gapLog.top, gapSteps()]") == [3, 1], \
        "seq 2 stepped over, seq 3 held, the next hole (4) asked for"
    page.clock.run_for(2600)
    assert page.evaluate("() => [gapLog.top, gapSteps()]") == [5, 2]


def test_a_filled_hole_moves_top_without_another_resume(page: Any) -> None:
    got = page.evaluate("""() => {
      var resumes = [];
      var log = new TidedeskCore.SeqLog(function (top) { resumes.push(top); });
      log.add({ seq: 2 }); log.add({ seq: 1 }); log.add({ seq: 3 });
      return { top: log.top, resumes: resumes, seqs: log.seqs() };
    }""")
    assert got == {"top": 3, "resumes": [0], "seqs": [1, 2, 3]}


def test_resume_asks_after_the_last_contiguous_seq(page: Any) -> None:
    got = page.evaluate("""() => {
      var resumes = [];
      var log = new TidedeskCore.SeqLog(function (top) { resumes.push(top); });
      log.add({ seq: 1 }); log.add({ seq: 2 });
      log.catchUp(2);            // the server holds nothing newer: no resume
      log.catchUp(7);            // it holds up to 7: resume after 2
      var follow = new TidedeskCore.SeqLog(function (top) { resumes.push(top); }, { start: null });
      follow.startAt(40 - 30);   // the console follows a chat from its latest page
      follow.catchUp(40);
      return { resumes: resumes, low: follow.low, top: follow.top };
    }""")
    assert got == {"resumes": [2, 10], "low": 11, "top": 10}


def test_the_resume_frame_after_a_reconnect_carries_top(page: Any) -> None:
    connected_view(page, last_seq=0)
    page.evaluate("() => { view.log.add({ seq: 1 }); view.log.add({ seq: 2 }); }")
    sent = reconnected(page, last_seq=9)
    assert sent == [{"type": "resume", "after_seq": 2}]


def test_a_seq_or_an_id_seen_twice_is_dropped(page: Any) -> None:
    got = page.evaluate("""() => {
      var log = new TidedeskCore.SeqLog(function () {});
      var first = log.add({ seq: 1, id: "a", body: "one" });
      var again = log.add({ seq: 1, id: "a", body: "one, resumed" });
      var box = new TidedeskCore.Outbox();
      box.push({ id: "m1", body: "hi" }); box.push({ id: "m2", body: "there" });
      var acked = box.take("m1"), echoed = box.take("m1"), none = box.take(undefined);
      return { first: first, again: again, body: log.msgs[1].body, acked: acked.body,
               echoed: echoed, none: none, left: box.items.map(function (m) { return m.id; }) };
    }""")
    assert got == {"first": True, "again": False, "body": "one", "acked": "hi", "echoed": None,
                   "none": None, "left": ["m2"]}


def test_the_outbox_is_sent_again_with_the_same_ids_after_a_reconnect(page: Any) -> None:
    connected_view(page)
    ids = page.evaluate("() => [view.say('one'), view.say('two')]")
    sent = reconnected(page, last_seq=0)
    assert [(f["type"], f["id"], f["body"]) for f in sent] == [
        ("message", ids[0], "one"), ("message", ids[1], "two")]


def test_no_ack_in_time_replaces_the_socket(page: Any) -> None:
    connected_view(page)
    page.evaluate("() => view.say('anyone there?')")
    page.clock.run_for(11_900)
    assert page.evaluate("() => [view.timeouts, sockets[0].closed]") == [0, False]
    page.clock.run_for(200)
    assert page.evaluate("() => [view.timeouts, sockets[0].closed, view.outbox.items[0].failed]") \
        == [1, True, True]
    page.clock.run_for(10)
    assert socket_count(page) == 2, "reconnects at once (delay 0)"


def test_an_ack_stops_the_ack_timer(page: Any) -> None:
    connected_view(page)
    page.evaluate("() => { var id = view.say('hi');"
                  " sockets[0].frame({ type: 'ack', id: id, seq: 1 }); }")
    page.clock.run_for(30_000)
    got = page.evaluate("() => [view.timeouts, sockets.length, view.link.conn]")
    assert got == [0, 1, "online"]


def test_a_reconnect_frame_is_obeyed_exactly(page: Any) -> None:
    connected_view(page)
    got = page.evaluate("""() => {
      var before = Date.now();
      sockets[0].frame({ type: 'reconnect', after_ms: 1234 });
      return { closed: sockets[0].closed, conn: view.link.conn,
               wait: view.link.reconnectAt - before,
               seen: view.frames.map(function (f) { return f.type; }) };
    }""")
    assert got == {"closed": True, "conn": "reconnecting", "wait": 1234, "seen": ["hello"]}
    page.clock.run_for(1200)
    assert socket_count(page) == 1
    page.clock.run_for(100)
    assert socket_count(page) == 2


# The exact schedule is a table in test_browser_chat.py (through the widget, which uses the core).
def test_backoff_stays_within_half_cap_and_cap(page: Any) -> None:
    out_of_bounds = page.evaluate("""() => {
      var bad = [];
      for (var n = 0; n < 40; n++) for (var r = 0; r < 1; r += 0.125) {
        var cap = Math.min(30000, 500 * Math.pow(2, n)), ms = TidedeskCore.backoffMs(n, r);
        if (ms < cap / 2 || ms > cap) bad.push([n, r, ms]);
      }
      return bad;
    }""")
    assert out_of_bounds == []


def test_the_link_backs_off_and_resets_on_hello(page: Any) -> None:
    connected_view(page)
    got = page.evaluate("""async () => {
      var waits = [];
      for (var i = 0; i < 3; i++) {
        sockets[sockets.length - 1].lose(1006);
        waits.push(view.link.reconnectAt - Date.now());
        view.link.cancelRetry(); view.link.connect();   // skip the wait, keep the count
        await new Promise(function (ok) { queueMicrotask(ok); });
      }
      sockets[sockets.length - 1].open(); sockets[sockets.length - 1].frame({ type: 'hello' });
      return { waits: waits, attempt: view.link.attempt };
    }""")
    # random() = 0.5: three quarters of 500, 1000, 2000 ms
    assert got == {"waits": [375, 750, 1500], "attempt": 0}


I18N_TABLES = {
    "en": {"hello": "Hello {name}", "only_en": "English only"},
    "zh-CN": {"hello": "你好，{name}"},
}


@pytest.mark.parametrize(("asked", "lang"), [
    ("en-US", "en"), ("zh-CN", "zh-CN"), ("zh-TW", "zh-CN"), ("ZH", "zh-CN"), ("fr", "en"),
    ("", "en"), (None, "en"),
])
def test_pick_lang(page: Any, asked: str | None, lang: str) -> None:
    assert page.evaluate("v => TidedeskCore.pickLang(v)", asked) == lang


def test_translator_in_both_languages(page: Any) -> None:
    got = page.evaluate("""tables => {
      var lang = "en";
      var t = TidedeskCore.translator(tables, function () { return lang; });
      var en = [t("hello", { name: "Ann" }), t("only_en"), t("no_such_key")];
      lang = "zh-CN";
      var zh = [t("hello", { name: "安" }), t("only_en"), t("no_such_key")];
      return { en: en, zh: zh, missing: TidedeskCore.missingKeys(tables) };
    }""", I18N_TABLES)
    assert got == {
        "en": ["Hello Ann", "English only", "no_such_key"],
        "zh": ["你好，安", "English only", "no_such_key"],  # a missing key falls back to English
        "missing": ["zh-CN.only_en"],
    }


def i18n_table(view: str) -> str:
    """The `var I18N = {...};` object literal of one of the views, as source text."""
    source = (CORE.parent / view).read_text(encoding="utf-8")
    start = source.index("var I18N = {") + len("var I18N = ")
    return source[start:source.index("\n  };\n", start) + len("\n  }")]


@pytest.mark.parametrize("view", ["widget.js", "console.js", "supervisor.js", "admin.js"])
def test_every_string_of_a_view_is_in_english_and_chinese(page: Any, view: str) -> None:
    missing = page.evaluate("src => TidedeskCore.missingKeys(Function('return ' + src)())",
                            i18n_table(view))
    assert missing == [], f"{view} lacks these strings (language.key): {missing}"
