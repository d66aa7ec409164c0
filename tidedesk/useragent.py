"""Browser and operating system from a User-Agent header (pure).

A small table of the browsers and systems that make up nearly all traffic, tried in order (the
order matters: Edge and Opera say "Chrome", Chrome says "Safari"). An agent only needs "Chrome
120 on Windows"; a library with thousands of regexes (ua-parser) would not earn its place.
"""

from __future__ import annotations

import re

_BROWSERS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("WeChat", re.compile(r"MicroMessenger/(\d+)")),
    ("Edge", re.compile(r"Edg(?:e|A|iOS)?/(\d+)")),
    ("Opera", re.compile(r"(?:OPR|Opera)/(\d+)")),
    ("Samsung Internet", re.compile(r"SamsungBrowser/(\d+)")),
    ("UC Browser", re.compile(r"UCBrowser/(\d+)")),
    ("Firefox", re.compile(r"(?:Firefox|FxiOS)/(\d+)")),
    ("Chrome", re.compile(r"(?:Chrome|CriOS)/(\d+)")),
    ("Safari", re.compile(r"Version/(\d+)[.\d]* (?:Mobile/\S+ )?Safari/")),
)
_SYSTEMS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("iOS", re.compile(r"(?:iPhone|iPad|iPod).*? OS (\d+)")),
    ("Android", re.compile(r"Android (\d+)")),
    ("Windows", re.compile(r"Windows NT (\d+\.\d+)")),
    ("macOS", re.compile(r"Mac OS X (\d+[._]\d+)")),
    ("ChromeOS", re.compile(r"CrOS \S+ (\d+)")),
    ("Linux", re.compile(r"Linux()")),
)
_WINDOWS = {"10.0": "10/11", "6.3": "8.1", "6.2": "8", "6.1": "7"}


def parse(user_agent: str) -> tuple[str, str]:
    """``("Chrome 120", "Windows 10/11")``; ``""`` for a part not recognised."""
    browser = ""
    for name, pattern in _BROWSERS:
        found = pattern.search(user_agent)
        if found:
            browser = f"{name} {found.group(1)}"
            break
    system = ""
    for name, pattern in _SYSTEMS:
        found = pattern.search(user_agent)
        if found:
            version = found.group(1).replace("_", ".")
            if name == "Windows":
                version = _WINDOWS.get(version, version)
            system = f"{name} {version}".strip()
            break
    return browser, system
