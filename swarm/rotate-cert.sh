#!/usr/bin/env bash
# Rotate HAProxy's TLS certificate without dropping a connection:
#
#   swarm/rotate-cert.sh STACK NEW.pem      # certificate chain + key in one PEM file
#
# Each HAProxy task of the stack on this node gets the new PEM through HAProxy's runtime API
# (`set ssl cert` + `commit ssl cert`, on the container's 127.0.0.1:9999): new handshakes get
# the new certificate at once, open WebSockets are not touched. Run it on every edge node (or
# over `DOCKER_HOST=ssh://node`). Then copy NEW.pem to secrets/tls.pem, so the next
# swarm/deploy.sh creates the new secret version that restarted tasks will read (that deploy
# restarts HAProxy once, at a time you choose).
set -euo pipefail
stack="${1:-}"; pem="${2:-}"
if [ -z "$stack" ] || [ ! -r "$pem" ]; then
  echo "usage: swarm/rotate-cert.sh STACK NEW.pem" >&2; exit 2
fi
grep -q 'PRIVATE KEY' "$pem" || { echo "rotate-cert.sh: $pem holds no private key" >&2; exit 2; }
cert_path="${TIDEDESK_TLS_CERT:-/run/secrets/tidedesk_tls_pem}"
containers="$(docker ps -q --filter "label=com.docker.swarm.service.name=${stack}_haproxy")"
[ -n "$containers" ] || { echo "rotate-cert.sh: no ${stack}_haproxy task on this node" >&2; exit 1; }
api() { # CONTAINER: send stdin to the runtime API, print the answer
  docker exec -i "$1" bash -c 'exec 3<>/dev/tcp/127.0.0.1/9999 && cat >&3 && cat <&3'
}
for c in $containers; do
  { printf 'set ssl cert %s <<\n' "$cert_path"; cat "$pem"; printf '\n'; } | api "$c"
  answer="$(printf 'commit ssl cert %s\n' "$cert_path" | api "$c")"
  case "$answer" in
    *Success*) echo "$c: certificate replaced" ;;
    *) echo "$c: commit failed: $answer" >&2; printf 'abort ssl cert %s\n' "$cert_path" | api "$c" >/dev/null || true; exit 1 ;;
  esac
done
