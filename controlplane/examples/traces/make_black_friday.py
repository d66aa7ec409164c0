"""Write black_friday.csv: seven ordinary days of chat load, then Black Friday with a flash sale.

Every day has a "deal of the day" at noon (x2 within 2 minutes, for half an hour): the kind of
recurring surge the forecast learns. Last Saturday had a one-off promotion at 15:00. Black Friday
is 30 % busier all day and has the planned flash sale at 20:00: x6 within 3 minutes.

Run ``python controlplane/examples/traces/make_black_friday.py`` to regenerate (deterministic:
fixed seed). ``t`` is seconds from Friday 2026-11-20 00:00 (the shop's local time, written as
UTC); one row a minute. See docs/controlplane.md, "The Black Friday trace", for why it looks so.
"""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path

DAY = 86400
DAYS = 8  # 7 days of history, then the simulated day
ROW_S = 60
SEED = 20261127
# Open conversations on an ordinary weekday, by local hour (linear in between).
WEEKDAY = [
    (0, 220), (2, 110), (4, 70), (6, 90), (8, 260), (10, 480), (12, 520), (13, 470),
    (15, 500), (17, 460), (19, 560), (20.5, 650), (22, 520), (24, 220),
]  # fmt: skip
WEEKEND_FACTOR = 1.2  # Saturday and Sunday (days 1 and 2) are busier
BLACK_FRIDAY_FACTOR = 1.3  # the last day is busier all day long
SALE_START_H, SALE_END_H = 20.0, 21.0  # the planned flash sale on the last day
DEAL_START_H, DEAL_END_H = 12.0, 12.5  # the "deal of the day" at noon, every day: x2 in 2 min


def daily(hour: float) -> float:
    for (h0, v0), (h1, v1) in itertools.pairwise(WEEKDAY):
        if h0 <= hour <= h1:
            return v0 + (v1 - v0) * (hour - h0) / (h1 - h0)
    return WEEKDAY[-1][1]


def promotion(hour: float, start: float, peak: float, ramp_min: float, hold_min: float,
              end: float) -> float:
    """Multiplier: up to ``peak`` within ``ramp_min`` minutes, hold, decay to half, then off
    over 10 minutes after ``end``."""
    m = (hour - start) * 60
    if m < 0 or hour > end + 10 / 60:
        return 1.0
    if m < ramp_min:
        return 1 + (peak - 1) * m / ramp_min
    if hour <= end:
        decay = max(0.0, m - ramp_min - hold_min) / ((end - start) * 60 - ramp_min - hold_min)
        return peak - (peak - 1) * 0.5 * min(1.0, decay)
    tail = (peak + 1) / 2
    return tail - (tail - 1) * (hour - end) * 6


def main() -> None:
    rng = random.Random(SEED)
    rows = ["t,load"]
    noise = 0.0
    for day in range(DAYS):
        level = rng.uniform(0.93, 1.07) * (WEEKEND_FACTOR if day in (1, 2) else 1.0)
        if day == DAYS - 1:
            level = BLACK_FRIDAY_FACTOR
        for i in range(DAY // ROW_S):
            t = day * DAY + i * ROW_S
            hour = i * ROW_S / 3600
            noise = 0.9 * noise + rng.gauss(0, 0.02)  # AR(1): a few per cent, slowly varying
            mult = promotion(hour, DEAL_START_H, 2.0, 2, 15, DEAL_END_H)
            if day == 1:  # a one-off promotion last Saturday afternoon, never repeated
                mult *= promotion(hour, 15.0, 2.5, 5, 10, 15.75)
            if day == DAYS - 1:
                mult *= promotion(hour, SALE_START_H, 6.0, 3, 20, SALE_END_H)
            load = max(0.0, daily(hour) * level * mult * math.exp(noise))
            rows.append(f"{t},{load:.1f}")
    rows.append(f"{DAYS * DAY},{load:.1f}")  # the last row closes the day
    out = Path(__file__).with_name("black_friday.csv")
    out.write_text("\n".join(rows) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
