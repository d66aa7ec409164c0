#!/usr/bin/env bash
# Deploy (or update) the Tidedesk stack: `docker stack deploy` with every Swarm config and secret
# named by its content.
#
#   swarm/deploy.sh STACK [docker stack deploy options, e.g. -c docker-stack.publish.yml]
#
# Swarm configs and secrets are immutable: redeploying a changed file under the same name fails
# with "only updates to Labels are allowed". docker-stack.yml therefore names each of them
# <STACK>_<short name>-<first 8 hex digits of the file's SHA-256>, from the *_HASH variables this
# script exports; a changed file is a new object, and the services using it roll over to it
# (start-first where the service allows). Versions no service uses any more are removed after
# the deploy. The file variables of docker-stack.yml (PROMETHEUS_CONFIG, TIDEDESK_SECRETS_DIR,
# ...) are honoured: relative paths are relative to the repository (the stack file's directory).
# `docker stack deploy` alone refuses the stack file and names this script.
set -euo pipefail
stack="${1:-}"
if [ -z "$stack" ] || [ "${stack#-}" != "$stack" ]; then
  echo "usage: swarm/deploy.sh STACK [docker stack deploy options]" >&2
  exit 2
fi
shift
case "$stack" in
  *[!A-Za-z0-9_.-]*) echo "deploy.sh: not a stack name: $stack" >&2; exit 2 ;;
esac
# 64 characters per object name: <stack>_<up to 15>-<8 hex>.
if [ "${#stack}" -gt 39 ]; then
  echo "deploy.sh: stack name longer than 39 characters: $stack" >&2; exit 2
fi
repo="$(cd "$(dirname "$0")/.." && pwd)"

path() { # a file variable's value (or default) as docker-stack.yml resolves it
  case "$1" in /*) printf '%s' "$1" ;; *) printf '%s/%s' "$repo" "${1#./}" ;; esac
}
hash_of() { # VAR FILE: export VAR=<8 hex digits of FILE's SHA-256>
  local f; f="$(path "$2")"
  if [ ! -r "$f" ]; then
    echo "deploy.sh: cannot read $f (for $1; secrets come from swarm/make-secrets.sh)" >&2
    exit 1
  fi
  export "$1=$(sha256sum "$f" | cut -c1-8)"
}
secrets="${TIDEDESK_SECRETS_DIR:-./secrets}"
export TIDEDESK_STACK="$stack"
# Alertmanager's config with the paging settings (ALERT_* variables) filled in.
rendered_dir="$(mktemp -d)"
[ "${DEPLOY_DRY_RUN:-}" = 1 ] || trap 'rm -rf "$rendered_dir"' EXIT
"$repo/swarm/render-alertmanager.sh" \
  "$(path "${ALERTMANAGER_CONFIG:-./prometheus/alertmanager.yml}")" "$rendered_dir/alertmanager.yml"
export ALERTMANAGER_CONFIG="$rendered_dir/alertmanager.yml"
hash_of HAPROXY_CFG_HASH ./haproxy/haproxy.cfg
hash_of PROMETHEUS_YML_HASH "${PROMETHEUS_CONFIG:-./prometheus/prometheus.yml}"
hash_of PROMETHEUS_RECORDING_HASH ./prometheus/rules/tidedesk-recording.yml
hash_of PROMETHEUS_ALERTS_HASH ./prometheus/rules/tidedesk-alerts.yml
hash_of ALERTMANAGER_YML_HASH "${ALERTMANAGER_CONFIG:-./prometheus/alertmanager.yml}"
hash_of ROUTING_HASH "${TIDEDESK_ROUTING_CONFIG:-./swarm/routing.yml}"
hash_of POLICIES_HASH "${TIDEDESK_POLICIES_CONFIG:-./swarm/policies.yml}"
hash_of TLS_PEM_HASH "$secrets/tls.pem"
hash_of JWT_SECRET_HASH "$secrets/jwt_secret"
hash_of AES_KEY_HASH "$secrets/aes_key"
hash_of DB_PASSWORD_HASH "$secrets/db_password"
hash_of BROKER_PASSWORD_HASH "$secrets/broker_password"
hash_of CONTROLPLANE_TOKEN_HASH "$secrets/controlplane_token"
hash_of CONTROLPLANE_TOKEN_SHA256_HASH "$secrets/controlplane_token_sha256"
hash_of SMTP_PASSWORD_HASH "$secrets/smtp_password"
# docker-stack.grafana.yml (optional)
hash_of GRAFANA_DATASOURCE_HASH ./prometheus/grafana/provisioning/datasource.yml
hash_of GRAFANA_DASHBOARDS_HASH ./prometheus/grafana/provisioning/dashboards.yml
hash_of GRAFANA_DASHBOARD_JSON_HASH ./prometheus/grafana/tidedesk.json
hash_of GRAFANA_ADMIN_PASSWORD_HASH "$secrets/grafana_admin_password"

if [ "${DEPLOY_DRY_RUN:-}" = 1 ]; then  # print the rendered stack instead (tests, reviews)
  exec docker stack config -c "$repo/docker-stack.yml" "$@"
fi

# Placement: stateful services run on the node labelled tidedesk.data=true, HAProxy on every
# node labelled tidedesk.edge=true. A single-node swarm is labelled here; a larger one must be
# labelled by you (docs/deploy.md, Scale out), or those services would wait forever.
nodes="$(docker node ls -q)"
if [ "$(printf '%s\n' "$nodes" | wc -l)" -eq 1 ]; then
  docker node update --label-add tidedesk.data=true --label-add tidedesk.edge=true "$nodes" \
    >/dev/null
else
  for label in tidedesk.data tidedesk.edge; do
    if ! docker node inspect --format '{{index .Spec.Labels "'"$label"'"}}' $nodes | grep -qx true; then
      echo "deploy.sh: no node has the label $label=true; add it first:" >&2
      echo "  docker node update --label-add $label=true NODE" >&2
      exit 1
    fi
  done
fi
# DEPLOY_RESOLVE_IMAGE=never (deploy.env of the registry-free install) is --resolve-image never:
# local images, no registry asked. An explicit --resolve-image in the arguments wins.
resolve=()
if [ -n "${DEPLOY_RESOLVE_IMAGE:-}" ] && [[ " $* " != *" --resolve-image"* ]]; then
  case "$DEPLOY_RESOLVE_IMAGE" in always|changed|never) ;; *)
    echo "deploy.sh: DEPLOY_RESOLVE_IMAGE must be always, changed or never" >&2; exit 2 ;;
  esac
  resolve=(--resolve-image "$DEPLOY_RESOLVE_IMAGE")
fi
docker stack deploy -c "$repo/docker-stack.yml" "${resolve[@]}" "$@" "$stack"

# Old versions: every config and secret of this stack that no service names any more, in its spec
# or in the previous spec a rollback would return to. Removal errors are ignored.
used="$(docker service ls -q --filter "label=com.docker.stack.namespace=$stack" |
  xargs -r docker service inspect --format \
    '{{range .Spec.TaskTemplate.ContainerSpec.Configs}}{{.ConfigName}} {{end}}{{range .Spec.TaskTemplate.ContainerSpec.Secrets}}{{.SecretName}} {{end}}{{with .PreviousSpec}}{{range .TaskTemplate.ContainerSpec.Configs}}{{.ConfigName}} {{end}}{{range .TaskTemplate.ContainerSpec.Secrets}}{{.SecretName}} {{end}}{{end}}' |
  tr ' ' '\n' | sort -u)"
for kind in config secret; do
  for name in $(docker "$kind" ls --filter "label=com.docker.stack.namespace=$stack" \
      --format '{{.Name}}'); do
    if ! printf '%s\n' "$used" | grep -qxF "$name"; then
      docker "$kind" rm "$name" >/dev/null 2>&1 && echo "removed old $kind $name" || true
    fi
  done
done
