"""What full-text search indexes and how a query matches (pure: no I/O).

Two stores, one meaning: a query is a list of terms (split on spaces, lower-cased), and a
message matches when its body contains every term as a substring. Chinese, Japanese and Korean
text has no spaces, so any run of two or more of its characters is a term that must be found.

- SQLite indexes the body itself with FTS5's trigram tokenizer (terms of three or more
  characters use the index; shorter ones a LIKE over the same table).
- MariaDB has no n-gram parser, so each message carries :func:`index_terms`: its Latin words as
  they are, and every pair of neighbouring CJK characters as one ASCII token (``z`` + both code
  points in hex) that InnoDB's FULLTEXT index keeps as a word. A query becomes
  :func:`boolean_query` (every word and pair required), and the few candidates are then checked
  with :func:`matches` (the pairs must be neighbours in the order asked).

Contacts are searched by blinded tokens (:func:`contact_tokens`), because their name and e-mail
are stored encrypted: the caller hashes each token with a key, and a query's tokens the same way.
"""

from __future__ import annotations

import re
import unicodedata

# Letters and digits of scripts written with spaces; CJK ideographs, kana and hangul apart.
_CJK = (r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
        r"\U00020000-\U0002ffff")
_CJK_RUN = re.compile(f"[{_CJK}]+")
_WORD = re.compile(f"[^\\W_{_CJK}]+")
# InnoDB keeps words of at least innodb_ft_min_token_size (3) characters.
MIN_WORD = 3
MAX_TERMS = 8
MAX_QUERY_CHARS = 200
SNIPPET_CHARS = 160


def normalise(text: str) -> str:
    return unicodedata.normalize("NFKC", text).lower()


def query_terms(q: str) -> list[str]:
    """The terms of a query: space-separated, lower-cased, duplicates dropped, at most
    :data:`MAX_TERMS`. A term that is only punctuation is dropped."""
    out: list[str] = []
    for raw in normalise(q[:MAX_QUERY_CHARS]).split():
        term = raw.strip("\"'*+-()<>~@.,;:!?")
        if term and term not in out and (_WORD.search(term) or _CJK_RUN.search(term)):
            out.append(term)
    return out[:MAX_TERMS]


def _pair_token(a: str, b: str) -> str:
    return f"z{ord(a):x}x{ord(b):x}"


def _pairs(run: str) -> list[str]:
    return [_pair_token(run[i], run[i + 1]) for i in range(len(run) - 1)]


def index_terms(body: str) -> str:
    """The FULLTEXT column of a message on MariaDB: its words and CJK pairs, space-separated."""
    text = normalise(body)
    tokens: list[str] = [w for w in _WORD.findall(text)]
    for run in _CJK_RUN.findall(text):
        tokens.extend(_pairs(run))
    seen: dict[str, None] = dict.fromkeys(tokens)
    return " ".join(seen)


def boolean_query(terms: list[str]) -> str:
    """The MATCH ... AGAINST (... IN BOOLEAN MODE) string of ``terms`` ('' when no term can
    use the index: every word too short). Words match whole (``refund`` is not ``refunds``):
    a prefix search costs InnoDB more for every word it expands to."""
    parts: list[str] = []
    for term in terms:
        for word in _WORD.findall(term):
            if len(word) >= MIN_WORD:
                parts.append(f"+{word}")
        for run in _CJK_RUN.findall(term):
            parts.extend(f"+{p}" for p in _pairs(run))
    return " ".join(dict.fromkeys(parts))


def matches(body: str, terms: list[str]) -> bool:
    """Whether ``body`` contains every term (what both stores promise)."""
    text = normalise(body)
    return all(term in text for term in terms)


def like_pattern(term: str) -> str:
    """``%term%`` for LIKE with ``\\`` as the escape character."""
    escaped = term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def snippet(body: str, terms: list[str],
            width: int = SNIPPET_CHARS) -> tuple[str, list[tuple[int, int]]]:
    """An excerpt of ``body`` around the first term found, and the [start, end) character
    ranges of every term in it (the client marks them; the server sends no HTML)."""
    lower = normalise(body)
    if len(lower) != len(body):  # NFKC changed the length: search the plain lower-case text
        lower = body.lower()
    first = min((i for i in (lower.find(t) for t in terms) if i >= 0), default=0)
    start = max(0, first - width // 3)
    end = min(len(body), start + width)
    start = max(0, min(start, end - width))
    text = body[start:end]
    prefix = "…" if start > 0 else ""
    suffix = "…" if end < len(body) else ""
    window = lower[start:end]
    ranges: list[tuple[int, int]] = []
    for term in terms:
        at = window.find(term)
        while at >= 0 and term:
            ranges.append((at + len(prefix), at + len(prefix) + len(term)))
            at = window.find(term, at + len(term))
    return prefix + text + suffix, sorted(ranges)


def contact_tokens(*values: str | None) -> list[str]:
    """The tokens a contact is found by: each word of the name and e-mail, the whole e-mail,
    its local part and domain, and every CJK pair of the name (a two-character Chinese query
    finds 张三丰 by 张三)."""
    tokens: list[str] = []
    for value in values:
        if not value:
            continue
        text = normalise(value)
        if "@" in text:
            local, _, domain = text.partition("@")
            tokens.extend([text, local, domain])
        tokens.extend(_WORD.findall(text))
        for run in _CJK_RUN.findall(text):
            tokens.extend([run[i:i + 2] for i in range(len(run) - 1)] or [run])
            tokens.append(run)
    return list(dict.fromkeys(t for t in tokens if t))


def contact_query_tokens(terms: list[str]) -> list[list[str]]:
    """For each query term, the tokens that must all be present (a CJK term longer than two
    characters needs each of its pairs)."""
    out: list[list[str]] = []
    for term in terms:
        if "@" in term:
            out.append([term])
            continue
        need = list(_WORD.findall(term))
        for run in _CJK_RUN.findall(term):
            need.extend([run[i:i + 2] for i in range(len(run) - 1)] or [run])
        if need:
            out.append(need)
    return out
