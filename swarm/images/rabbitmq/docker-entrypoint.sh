#!/bin/sh
# As root: own the data directory, then run "$@" as rabbitmq (like the official image's gosu).
set -eu
if [ "$1" = rabbitmq-server ]; then
  set -- /usr/lib/rabbitmq/bin/rabbitmq-server
fi
if [ "$(id -u)" = 0 ]; then
  mkdir -p /var/lib/rabbitmq /var/log/rabbitmq
  chown -R rabbitmq:rabbitmq /var/lib/rabbitmq /var/log/rabbitmq /etc/rabbitmq
  exec setpriv --reuid rabbitmq --regid rabbitmq --init-groups "$@"
fi
exec "$@"
