#!/usr/bin/env bash
# Install the Debian packages the test suite drives (only the missing ones), and start the
# services that the machine normally runs if one of them has stopped.
set -uo pipefail
need=()
command -v haproxy >/dev/null || need+=(haproxy)
command -v prometheus >/dev/null || need+=(prometheus)
command -v prometheus-alertmanager >/dev/null || need+=(prometheus-alertmanager)
command -v dockerd >/dev/null || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v openssl >/dev/null || need+=(openssl)  # swarm/make-secrets.sh (deploy e2e test)
# the control-plane Swarm tests import a tiny image holding only a static busybox
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
command -v chromium >/dev/null || need+=(chromium)
# the mail tests start their own IMAP server (tests/support/mail.py)
[ -x /usr/sbin/dovecot ] || need+=(dovecot-imapd)
[ -d /usr/share/fonts/opentype/noto ] || need+=(fonts-noto-cjk)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing Debian packages: ${need[*]}"
    apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 \
      || echo "warning: apt-get install ${need[*]} failed; tests needing them will say what is missing"
  else
    echo "warning: not root; install ${need[*]} yourself for the tests that drive them"
  fi
fi
# Services this kind of machine runs by default; restart any that has stopped.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
port_open 6379 || redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
  --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
port_open 3306 || start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
port_open 5672 || rabbitmq-server -detached || true
for _ in $(seq 1 60); do
  port_open 6379 && port_open 3306 && port_open 5672 && break
  sleep 1
done
exit 0
