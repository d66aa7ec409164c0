#!/usr/bin/env bash
# Render prometheus/alertmanager.yml with the paging settings (see its header):
#
#   swarm/render-alertmanager.sh SRC OUT
#
# Lines marked ` #email` (` #smtpauth`, ` #webhook`) are dropped unless ALERT_EMAIL_TO
# (ALERT_SMTP_USERNAME, ALERT_WEBHOOK_URL) is set; ${ALERT_*} are filled in. swarm/deploy.sh
# calls it; the tests render with it too.
set -euo pipefail
src="${1:?usage: render-alertmanager.sh SRC OUT}"; out="${2:?usage: render-alertmanager.sh SRC OUT}"
ALERT_EMAIL_FROM="${ALERT_EMAIL_FROM:-alertmanager@localhost}"
ALERT_SMTP_SMARTHOST="${ALERT_SMTP_SMARTHOST:-localhost:25}"
ALERT_SMTP_REQUIRE_TLS="${ALERT_SMTP_REQUIRE_TLS:-true}"
vars=(ALERT_EMAIL_TO ALERT_EMAIL_FROM ALERT_SMTP_SMARTHOST ALERT_SMTP_REQUIRE_TLS
      ALERT_SMTP_USERNAME ALERT_WEBHOOK_URL)
for v in "${vars[@]}"; do
  value="${!v:-}"
  case "$value" in
    *"'"*|*$'\n'*) echo "render-alertmanager.sh: $v must not hold quotes or newlines" >&2; exit 2 ;;
  esac
done
case "$ALERT_SMTP_REQUIRE_TLS" in true|false) ;; *)
  echo "render-alertmanager.sh: ALERT_SMTP_REQUIRE_TLS must be true or false" >&2; exit 2 ;;
esac
keep() { # MARKER VAR: keep lines with MARKER only when VAR is set
  if [ -n "${!2:-}" ]; then cat; else grep -v " #$1\$"; fi
}
{
  while IFS= read -r line || [ -n "$line" ]; do
    for v in "${vars[@]}"; do
      line="${line//\$\{$v\}/${!v:-}}"
    done
    printf '%s\n' "$line"
  done <"$src"
} | keep email ALERT_EMAIL_TO | keep webhook ALERT_WEBHOOK_URL |
  { if [ -n "${ALERT_EMAIL_TO:-}" ]; then keep smtpauth ALERT_SMTP_USERNAME; else grep -v ' #smtpauth$'; fi; } \
  >"$out"
