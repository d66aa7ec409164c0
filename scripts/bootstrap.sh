#!/usr/bin/env bash
# Create .venv (Python 3.11+) and install Tidedesk into it; re-installs only when pyproject.toml changed.
# Usage: scripts/bootstrap.sh [extra]   e.g. "test" installs the test tools too.
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
py="${PYTHON:-}"
if [ -z "$py" ]; then
  for cand in python3.11 python3.12 python3.13 python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      py="$cand"; break
    fi
  done
fi
[ -n "$py" ] || { echo "Tidedesk needs Python 3.11 or newer on PATH (set PYTHON=/path/to/python3.11)" >&2; exit 1; }
if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
fi
stamp=".venv/.tidedesk-installed${extra:+-$extra}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "installing Tidedesk into .venv (first run or pyproject.toml changed) ..." >&2
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  # pip's build warnings would bury the start-up message: keep them in a log unless it fails.
  log=.venv/pip-install.log
  if ! .venv/bin/python -m pip install -q -e ".${extra:+[$extra]}" >"$log" 2>&1; then
    cat "$log" >&2
    echo "pip install failed (log above, also in $log)" >&2
    exit 1
  fi
  touch "$stamp"
fi
