#!/usr/bin/env bash
# Run the whole Tidedesk test suite: installs what it needs, starts what is not running, then
# lint + type-check + pytest. Extra arguments go to pytest (e.g. scripts/test.sh -k routing).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh test
scripts/system-deps.sh
.venv/bin/ruff check .
.venv/bin/mypy tidedesk chatnode routernode controlplane
.venv/bin/lint-imports
exec .venv/bin/python -m pytest "$@"
