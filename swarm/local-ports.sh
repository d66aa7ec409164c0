#!/usr/bin/env bash
# Open the stack's unpublished admin ports on this host's loopback only:
#
#   swarm/local-ports.sh STACK up      # control plane 127.0.0.1:8090, Prometheus :9090,
#                                      # Alertmanager :9093
#   swarm/local-ports.sh STACK down    # (and Grafana :3000 when docker-stack.grafana.yml runs)
#
# docker-stack.yml publishes only HAProxy: Prometheus and Alertmanager have no auth, and the
# control plane's API scales the stack. Swarm cannot bind a published port to one address, so
# this starts one small plain container per service on the stack's attachable overlay network
# with `docker run -p 127.0.0.1:PORT:PORT`: a TCP forwarder (Python, from the Tidedesk image)
# to the service's name. Ports: CONTROLPLANE_PORT, PROMETHEUS_PORT, ALERTMANAGER_PORT; image:
# TIDEDESK_IMAGE. Run it on a manager (the overlay is attachable there); reach it from your
# machine with an SSH tunnel (ssh -L 9090:127.0.0.1:9090 host).
set -euo pipefail
stack="${1:-}"; action="${2:-}"
if [ -z "$stack" ] || { [ "$action" != up ] && [ "$action" != down ]; }; then
  echo "usage: swarm/local-ports.sh STACK up|down" >&2; exit 2
fi
image="${TIDEDESK_IMAGE:-tidedesk/tidedesk:latest}"
forwarder='
import asyncio, sys
listen, host, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
async def pipe(r, w):
    try:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
    except OSError:
        pass
    finally:
        w.close()
async def handle(r, w):
    try:
        ur, uw = await asyncio.open_connection(host, port)
    except OSError:
        w.close()
        return
    await asyncio.gather(pipe(r, uw), pipe(ur, w))
async def main():
    server = await asyncio.start_server(handle, "0.0.0.0", listen)
    async with server:
        await server.serve_forever()
asyncio.run(main())
'
entries=("controlplane:8090:${CONTROLPLANE_PORT:-8090}" "prometheus:9090:${PROMETHEUS_PORT:-9090}"
         "alertmanager:9093:${ALERTMANAGER_PORT:-9093}")
if docker service inspect "${stack}_grafana" >/dev/null 2>&1 || [ "$action" = down ]; then
  entries+=("grafana:3000:${GRAFANA_PORT:-3000}")     # docker-stack.grafana.yml
fi
for entry in "${entries[@]}"; do
  IFS=: read -r service target published <<<"$entry"
  name="${stack}-local-${service}"
  docker rm -f "$name" >/dev/null 2>&1 || true
  if [ "$action" = up ]; then
    docker run -d --name "$name" --restart unless-stopped --network "${stack}_tidedesk" \
      --label "com.docker.stack.namespace.local=$stack" \
      -p "127.0.0.1:${published}:${target}" --entrypoint python3 "$image" \
      -c "$forwarder" "$target" "$service" "$target" >/dev/null
    echo "$service: http://127.0.0.1:${published}"
  fi
done
