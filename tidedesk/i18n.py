"""Server-side texts that reach visitors (the UI carries its own translations)."""

from __future__ import annotations

LOCALES = ("en", "zh-CN")

_TEXTS: dict[str, dict[str, str]] = {
    "busy": {
        "en": "We are busy right now, please wait: you are number {position} in line.",
        "zh-CN": "客服正忙，请稍候：您前面还有 {ahead} 位，您排在第 {position} 位。",
    },
    # issue 13: the system message of a chat that closed itself
    "idle_closed": {
        "en": "This chat was closed because the visitor left. Write again to start a new one.",
        "zh-CN": "访客已离开，本次对话已自动关闭。如需帮助，请再次发送消息。",
    },
    "handoff": {
        "en": "Connecting you to a person…",
        "zh-CN": "正在为您转接人工客服…",
    },
    "unavailable": {
        "en": "We are busy right now, please wait a moment and try again.",
        "zh-CN": "系统繁忙，请稍候再试。",
    },
    # issue 13: e-mail to visitors (tidedesk/mail/compose.py) and rating errors
    "mail_reply_subject": {
        "en": "New reply from {shop}",
        "zh-CN": "{shop} 回复了您",
    },
    "mail_reply_intro": {
        "en": "You have a new reply to your chat with {shop}:",
        "zh-CN": "您与 {shop} 的对话有新的回复：",
    },
    "mail_reply_hint": {
        "en": "Reply to this e-mail, or continue the chat in your browser:",
        "zh-CN": "直接回复此邮件，或在浏览器中继续对话：",
    },
    "mail_open_chat": {
        "en": "Open the chat",
        "zh-CN": "打开对话",
    },
    "mail_transcript_subject": {
        "en": "Your chat with {shop}",
        "zh-CN": "您与 {shop} 的对话记录",
    },
    "mail_transcript_intro": {
        "en": "Here is the transcript of your chat with {shop}, as you asked:",
        "zh-CN": "以下是您要求的与 {shop} 的对话记录：",
    },
    "mail_footer": {
        "en": "You get this e-mail because you left your address in our chat.",
        "zh-CN": "您收到此邮件，是因为您在我们的在线客服中留下了邮箱地址。",
    },
    "sender_visitor": {"en": "You", "zh-CN": "您"},
    "sender_agent": {"en": "Agent", "zh-CN": "客服"},
    "sender_system": {"en": "Tidedesk", "zh-CN": "系统"},
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
