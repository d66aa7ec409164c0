"""Server-side texts that reach visitors (the UI carries its own translations)."""

from __future__ import annotations

LOCALES = ("en", "zh-CN")

_TEXTS: dict[str, dict[str, str]] = {
    "busy": {
        "en": "We are busy right now, please wait: you are number {position} in line.",
        "zh-CN": "客服正忙，请稍候：您前面还有 {ahead} 位，您排在第 {position} 位。",
    },
    "unavailable": {
        "en": "We are busy right now, please wait a moment and try again.",
        "zh-CN": "系统繁忙，请稍候再试。",
    },
    # issue 14: the title of the reports page's chart (an SVG the server draws)
    "report_by_hour": {
        "en": "Conversations by hour of the day (UTC)",
        "zh-CN": "每小时对话量（UTC）",
    },
}


def text(key: str, locale: str, **values: object) -> str:
    table = _TEXTS[key]
    template = table.get(locale, table["en"])
    return template.format(**values)
