#!/usr/bin/env bash
# Run Tidedesk in embedded mode (one process, SQLite, no servers needed) on http://127.0.0.1:${TIDEDESK_PORT:-8080}.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/tidedesk dev "$@"
