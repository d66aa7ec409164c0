#!/usr/bin/env bash
# Run the benchmark suite (bench/): all of P1..P9, the one-in-flight P2Q, P7Q10, P7Q50 (the
# quiet desk beside P2/P7's 4 in flight) and S1 (search), or the ones named, e.g.
# scripts/bench.sh P1 P7Q10 S1. The 30-minute memory soaks P10 (cluster) and P10E (embedded)
# run only when named.
# --quick for a smoke run with small sizes; --json OUT to keep the figures. Not a test: it
# prints figures and their spreads and never fails on timing. Needs the MariaDB, Redis and
# RabbitMQ of this machine (started if stopped) and Debian's haproxy.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh bench
scripts/system-deps.sh
exec .venv/bin/python -m bench.run "$@"
