#!/usr/bin/env python3
"""Make a wheelhouse that installs Tidedesk offline on a given Python (the image's, not ours).

    python swarm/wheelhouse.py --python 3.11.2 build/wheelhouse

``pip wheel`` evaluates environment markers against the Python running it: on 3.11.7 it skips
``async-timeout; python_full_version < "3.11.3"``, which Debian bookworm's 3.11.2 needs. So after
``pip wheel .`` this reads every wheel's ``Requires-Dist``, evaluates the markers for the target
version and downloads what is missing (binary wheels only), until nothing is missing.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import zipfile
from pathlib import Path

try:
    from packaging import markers, requirements, utils
except ImportError:  # pip vendors packaging; good enough when the test extras are not installed
    from pip._vendor.packaging import markers, requirements, utils  # type: ignore[no-redef]

MAX_ROUNDS = 5  # dependency chains that only the target needs are short; stop a runaway loop


def wheel_names(house: Path) -> set[str]:
    return {utils.canonicalize_name(w.name.split("-")[0]) for w in house.glob("*.whl")}


def requires_dist(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
        text = z.read(meta).decode("utf-8", "replace")
    head = text.split("\n\n", 1)[0]
    return [line.split(":", 1)[1].strip() for line in head.splitlines()
            if line.startswith("Requires-Dist:")]


def missing_for(house: Path, env: dict[str, str]) -> list[str]:
    have = wheel_names(house)
    missing: dict[str, str] = {}
    for wheel in sorted(house.glob("*.whl")):
        for line in requires_dist(wheel):
            req = requirements.Requirement(line)
            if req.marker is not None and not req.marker.evaluate({**env, "extra": ""}):
                continue
            name = utils.canonicalize_name(req.name)
            if name not in have:
                missing[name] = f"{req.name}{req.specifier}"
    return sorted(missing.values())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", required=True, help="target Python version, e.g. 3.11.2")
    ap.add_argument("--project", default=".", help="project to build (default .)")
    ap.add_argument("house", type=Path)
    args = ap.parse_args()
    args.house.mkdir(parents=True, exist_ok=True)
    for old in args.house.glob("tidedesk-*.whl"):
        old.unlink()
    pip = [sys.executable, "-m", "pip", "-q"]
    subprocess.run([*pip, "wheel", "--find-links", str(args.house), args.project,
                    "-w", str(args.house)], check=True)
    env = {**markers.default_environment(), "python_full_version": args.python,
           "python_version": ".".join(args.python.split(".")[:2])}
    for _ in range(MAX_ROUNDS):
        missing = missing_for(args.house, env)
        if not missing:
            return 0
        print(f"wheelhouse: Python {args.python} also needs {', '.join(missing)}", flush=True)
        subprocess.run([*pip, "download", "--only-binary=:all:", "--find-links",
                        str(args.house), "-d", str(args.house), *missing], check=True)
    print("wheelhouse: dependencies still missing after several rounds", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
