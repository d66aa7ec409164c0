"""Routing rules for the servers that tests start: one YAML each, and where to write it."""

from __future__ import annotations

from pathlib import Path

# Everybody to the `general` pool, with `vip` as the VIP tag: what most chat tests want.
GENERAL_ONLY = "vip_tags: [vip]\nrules:\n  - name: everyone\n    pool: general\n"


def write_routing(directory: Path, rules_yaml: str) -> Path:
    """Write ``rules_yaml`` as ``directory``/routing.yml (TIDEDESK_ROUTING_FILE) and return
    its path."""
    path = directory / "routing.yml"
    path.write_text(rules_yaml, encoding="utf-8")
    return path
