"""Scrape a running process's /metrics and compare samples before and after."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import AsyncHTTPClient

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_metrics(text: str) -> Samples:
    """Every sample of a Prometheus text page, keyed by (name, sorted labels)."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def scrape(port: int) -> Samples:
    resp = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/metrics")
    assert resp.headers["Content-Type"].startswith("text/plain")
    return parse_metrics(resp.body.decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)
