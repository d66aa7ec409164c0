"""The report summary and its charts (pure: numbers in, numbers and SVG text out).

First response: from a conversation's first visitor message to the first agent reply (notes do
not count). Resolution: from its creation to its last update, for closed conversations. Volume by
hour: conversations created in each hour of the day (UTC), 24 buckets.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape


@dataclass(frozen=True)
class ConversationTimes:
    created_at: float
    updated_at: float
    closed: bool
    first_visitor: float | None
    first_agent: float | None
    conversation_id: str = ""  # (which one: the report's rating is of the same conversations)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-quantile (0..1) by linear interpolation; None without values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _pair(values: Sequence[float]) -> dict[str, float | None]:
    def rounded(v: float | None) -> float | None:
        return None if v is None else round(v, 1)

    return {"p50": rounded(percentile(values, 0.5)), "p90": rounded(percentile(values, 0.9))}


def summary(rows: Sequence[ConversationTimes],
            rating: tuple[float | None, int]) -> dict[str, object]:
    first = [r.first_agent - r.first_visitor for r in rows
             if r.first_visitor is not None and r.first_agent is not None
             and r.first_agent >= r.first_visitor]
    resolution = [r.updated_at - r.created_at for r in rows if r.closed]
    by_hour = [0] * 24
    for r in rows:
        by_hour[time.gmtime(r.created_at).tm_hour] += 1
    average, count = rating
    return {"conversations": len(rows), "first_response_s": _pair(first),
            "resolution_s": _pair(resolution),
            "rating": {"average": None if average is None else round(average, 2),
                       "count": count},
            "by_hour": [{"hour": h, "conversations": n} for h, n in enumerate(by_hour)]}


def bar_chart_svg(values: Sequence[int], labels: Sequence[str], title: str,
                  width: int = 640, height: int = 220) -> str:
    """A bar chart as a standalone SVG document (text escaped; no script)."""
    pad_l, pad_b, pad_t = 36, 24, 24
    top = max(values) if values and max(values) > 0 else 1
    inner_w, inner_h = width - pad_l - 8, height - pad_b - pad_t
    step = inner_w / max(1, len(values))
    bars = []
    for i, (value, label) in enumerate(zip(values, labels, strict=True)):
        h = inner_h * value / top
        x = pad_l + i * step + step * 0.15
        y = pad_t + inner_h - h
        bars.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{step * 0.7:.1f}" height="{h:.1f}" '
                    f'fill="#0f766e"><title>{escape(label)}: {value}</title></rect>')
        if i % 3 == 0:
            bars.append(f'<text x="{x + step * 0.35:.1f}" y="{height - 8}" font-size="11" '
                        f'text-anchor="middle" fill="#3e4c59">{escape(label)}</text>')
    axis = (f'<text x="{pad_l - 6}" y="{pad_t + 4}" font-size="11" text-anchor="end" '
            f'fill="#3e4c59">{top}</text><text x="{pad_l - 6}" y="{pad_t + inner_h}" '
            f'font-size="11" text-anchor="end" fill="#3e4c59">0</text>'
            f'<line x1="{pad_l}" y1="{pad_t + inner_h}" x2="{width - 8}" y2="{pad_t + inner_h}" '
            f'stroke="#9aa5b1"/>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">'
            f'<title>{escape(title)}</title><rect width="100%" height="100%" fill="#fff"/>'
            f'<text x="{pad_l}" y="16" font-size="13" font-weight="600" fill="#1f2933">'
            f'{escape(title)}</text>{axis}{"".join(bars)}</svg>')
