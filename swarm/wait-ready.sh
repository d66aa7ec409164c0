#!/usr/bin/env bash
# Wait until the stack has converged after a deploy:
#
#   swarm/wait-ready.sh STACK [SECONDS]      # default 300
#
# Ready means: every service of the stack runs as many tasks as it wants (`docker service ls`
# shows n/n), no rolling update is in progress, and every container of the stack on this node
# that has a healthcheck reports healthy. `docker stack deploy` returns before any of that, so
# a script that goes on at once (docker exec into a chat node, a restore) finds nothing or a
# node still waiting for its database. Prints what it waits for every 15 s; exits 1 naming the
# services that are not ready when SECONDS have passed.
set -euo pipefail
stack="${1:-}"; limit="${2:-300}"
if [ -z "$stack" ] || ! [[ "$limit" =~ ^[0-9]+$ ]]; then
  echo "usage: swarm/wait-ready.sh STACK [SECONDS]" >&2; exit 2
fi
label="label=com.docker.stack.namespace=$stack"
not_ready() { # one line per service or container that is not ready yet
  local services
  services="$(docker service ls -q --filter "$label")"
  if [ -z "$services" ]; then echo "no service of stack $stack"; return; fi
  docker service ls --filter "$label" --format '{{.Name}} {{.Replicas}}' |
    awk '{ split($2, n, "/"); sub(/ .*/, "", n[2]); if (n[1] != n[2] || n[2] == 0) print $1 " runs " $2 }'
  # shellcheck disable=SC2086
  docker service inspect --format '{{.Spec.Name}} {{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}' $services |
    awk '$2 == "updating" || $2 == "rollback_started" { print $1 " is " $2 }'
  docker ps --filter "$label" --format '{{.Names}} {{.Status}}' |
    awk '/\(health: starting\)|\(unhealthy\)/ { print $1 " is " ($0 ~ /unhealthy/ ? "unhealthy" : "starting") }'
}
start=$SECONDS; last=-15
while :; do
  waiting="$(not_ready)"
  if [ -z "$waiting" ]; then
    echo "stack $stack is ready ($((SECONDS - start)) s)"; exit 0
  fi
  if [ $((SECONDS - start)) -ge "$limit" ]; then
    echo "wait-ready.sh: stack $stack not ready after $limit s:" >&2
    printf '%s\n' "$waiting" | sed 's/^/  /' >&2
    exit 1
  fi
  if [ $((SECONDS - last)) -ge 15 ]; then
    echo "waiting ($((SECONDS - start)) s): $(printf '%s' "$waiting" | tr '\n' ';' | sed 's/;/; /g')"
    last=$SECONDS
  fi
  sleep 2
done
