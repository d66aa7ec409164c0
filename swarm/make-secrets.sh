#!/usr/bin/env bash
# Create the files docker-stack.yml turns into Swarm secrets, in DIR (default ./secrets):
#   jwt_secret, aes_key (base64 of 32 bytes), db_password, broker_password, controlplane_token
#   (for you and Alertmanager), controlplane_token_sha256 (its hash: all the control plane keeps),
#   tls.pem (certificate + key for HAProxy; self-signed for CN=$TLS_CN unless tls.pem exists),
#   smtp_password (a placeholder: Alertmanager's SMTP password for paging by e-mail),
#   grafana_admin_password (the optional Grafana of docker-stack.grafana.yml).
# Existing files are kept, so this is safe to run again. Replace tls.pem with your real
# certificate chain + key (one PEM file) for production.
set -euo pipefail
dir="${1:-secrets}"
cn="${TLS_CN:-localhost}"
command -v openssl >/dev/null || { echo "make-secrets.sh: needs openssl (apt-get install openssl)" >&2; exit 1; }
mkdir -p "$dir"; chmod 700 "$dir"
umask 077
make() { # name command...
  local f="$dir/$1"; shift
  if [ -s "$f" ]; then echo "kept    $f"; return; fi
  "$@" >"$f"; echo "created $f"
}
# Hex and base64 only: the values go into URLs and config files without quoting trouble.
make jwt_secret         openssl rand -hex 32
make aes_key            openssl rand -base64 32
make db_password        openssl rand -hex 24
make broker_password    openssl rand -hex 24
make controlplane_token openssl rand -hex 24
# The control plane only needs the token's hash; made from the token above (also for an older
# secrets directory that has only controlplane_token).
token_hash() { printf 'sha256:%s\n' "$(tr -d '\n' <"$dir/controlplane_token" | openssl dgst -sha256 -r | cut -d' ' -f1)"; }
make controlplane_token_sha256 token_hash
# Alertmanager's SMTP password (used when ALERT_SMTP_USERNAME is set): replace the placeholder.
make smtp_password      echo unset
make grafana_admin_password openssl rand -hex 16   # docker-stack.grafana.yml
if [ -s "$dir/tls.pem" ]; then
  echo "kept    $dir/tls.pem"
else
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
    -subj "/CN=$cn" -addext "subjectAltName=DNS:$cn" \
    -keyout "$tmp/key.pem" -out "$tmp/cert.pem" 2>/dev/null
  cat "$tmp/cert.pem" "$tmp/key.pem" >"$dir/tls.pem"
  echo "created $dir/tls.pem (self-signed for $cn)"
fi
