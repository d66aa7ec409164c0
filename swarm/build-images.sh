#!/usr/bin/env bash
# Build Tidedesk's images on a machine with no Docker registry (CI, air-gapped hosts).
#
#   swarm/build-images.sh [--force] [--tidedesk-only]
#
# 1. tidedesk-base:bookworm  - `debootstrap --variant=minbase bookworm` + python3, python3-venv,
#                              then `docker import`. The root filesystem is cached in $CACHE_DIR.
# 2. $TIDEDESK_IMAGE         - the Dockerfile at the repository root, built FROM the base above,
#                              installing Tidedesk offline from wheels downloaded here on the host.
#                              Rebuilt only when the sources changed (label tidedesk.source-hash).
# 3. Test-only images made from Debian's packages (one shared layer, different commands):
#    tidedesk-test/{redis,rabbitmq,mariadb,haproxy,prometheus,alertmanager}:bookworm.
#
# Images that exist are kept unless --force. Real deployments use the official images instead
# (see docs/deploy.md); these exist so CI can run `docker stack deploy` without pulling anything.
set -euo pipefail
cd "$(dirname "$0")/.."

FORCE=0
TIDEDESK_ONLY=0
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    --tidedesk-only) TIDEDESK_ONLY=1 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "build-images.sh: unknown option $arg (use --force, --tidedesk-only)" >&2; exit 2 ;;
  esac
done

SUITE=bookworm
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
CACHE_DIR="${TIDEDESK_BUILD_CACHE:-/var/cache/tidedesk-build}"
BASE_IMAGE="tidedesk-base:$SUITE"
INFRA_IMAGE="tidedesk-infra:$SUITE"
TIDEDESK_IMAGE="${TIDEDESK_IMAGE:-tidedesk/tidedesk:local}"
TEST_PREFIX="${TIDEDESK_TEST_IMAGE_PREFIX:-tidedesk-test}"
WHEELHOUSE=build/wheelhouse
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
INFRA_PACKAGES=(redis-server rabbitmq-server mariadb-server haproxy prometheus prometheus-alertmanager)

mkdir -p "$CACHE_DIR" 2>/dev/null || { CACHE_DIR=build/cache; mkdir -p "$CACHE_DIR"; }
export DOCKER_BUILDKIT=0 # the legacy builder needs no buildx plugin and no network
start=$(date +%s)
say() { printf '[build-images %3ss] %s\n' "$(( $(date +%s) - start ))" "$*"; }
have_image() { [ "$FORCE" = 0 ] && docker image inspect "$1" >/dev/null 2>&1; }

command -v docker >/dev/null || { echo "build-images.sh: docker is not installed (apt-get install docker.io)" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "build-images.sh: dockerd is not answering (start it: dockerd &)" >&2; exit 1; }

rootfs="$CACHE_DIR/rootfs-$SUITE"
rootfs_fresh=0
ensure_rootfs() {
  # One debootstrap, cached: later builds (and the infra image) start from this directory.
  if [ -f "$rootfs/.complete" ] && { [ "$FORCE" = 0 ] || [ "$rootfs_fresh" = 1 ]; }; then return; fi
  command -v debootstrap >/dev/null || { echo "build-images.sh: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }
  [ "$(id -u)" = 0 ] || { echo "build-images.sh: debootstrap needs root" >&2; exit 1; }
  rm -rf "$rootfs"; mkdir -p "$CACHE_DIR"
  say "debootstrap --variant=minbase $SUITE (+ python3, python3-venv) from $MIRROR"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$SUITE" "$rootfs" "$MIRROR" >"$CACHE_DIR/debootstrap.log" 2>&1 \
    || { tail -20 "$CACHE_DIR/debootstrap.log" >&2; exit 1; }
  # Containers never start services through init scripts; apt caches are dead weight.
  printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"; chmod +x "$rootfs/usr/sbin/policy-rc.d"
  printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' >"$rootfs/etc/apt/apt.conf.d/90tidedesk"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  touch "$rootfs/.complete"
  rootfs_fresh=1
}

image_id() { docker image inspect -f '{{.Id}}' "$1" 2>/dev/null || true; }
drop_replaced() { # old-id tag: remove our previous image once the tag points elsewhere
  if [ -n "$1" ] && [ "$1" != "$(image_id "$2")" ]; then docker rmi "$1" >/dev/null 2>&1 || true; fi
}

import_rootfs() { # dir tag
  tar --numeric-owner --exclude=./.complete --exclude=./proc/* --exclude=./sys/* --exclude=./dev/* \
    -C "$1" -c . | docker import \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENV LANG=C.UTF-8' \
      --change 'CMD ["/bin/bash"]' - "$2" >/dev/null
}

if have_image "$BASE_IMAGE"; then
  say "$BASE_IMAGE exists"
else
  ensure_rootfs
  say "docker import $BASE_IMAGE"
  import_rootfs "$rootfs" "$BASE_IMAGE"
fi

if [ "$TIDEDESK_ONLY" = 0 ]; then
  if have_image "$INFRA_IMAGE"; then
    say "$INFRA_IMAGE exists"
  else
    ensure_rootfs
    infra="$CACHE_DIR/rootfs-$SUITE-infra"
    cleanup_infra() {
      umount "$infra/proc" 2>/dev/null || true
      umount "$infra/dev" 2>/dev/null || true
      rm -rf "$infra"
    }
    trap cleanup_infra EXIT
    rm -rf "$infra"; cp -a "$rootfs" "$infra"
    cp /etc/resolv.conf "$infra/etc/resolv.conf"
    echo "deb $MIRROR $SUITE main" >"$infra/etc/apt/sources.list"
    mount -t proc proc "$infra/proc"; mount --bind /dev "$infra/dev"
    say "apt-get install ${INFRA_PACKAGES[*]} (test-only images)"
    chroot "$infra" sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ${INFRA_PACKAGES[*]}" \
      >"$CACHE_DIR/infra-apt.log" 2>&1 || { tail -30 "$CACHE_DIR/infra-apt.log" >&2; exit 1; }
    chroot "$infra" sh -c 'apt-get clean; rm -rf /var/lib/apt/lists/* /var/lib/mysql/* /var/lib/rabbitmq/mnesia /var/log/*.log'
    umount "$infra/proc"; umount "$infra/dev"
    : >"$infra/etc/resolv.conf"
    say "docker import $INFRA_IMAGE"
    import_rootfs "$infra" "$INFRA_IMAGE"
    cleanup_infra; trap - EXIT
  fi
  for name in redis rabbitmq mariadb haproxy prometheus alertmanager; do
    tag="$TEST_PREFIX/$name:$SUITE"
    if have_image "$tag"; then say "$tag exists"; continue; fi
    say "docker build $tag"
    old_id=$(image_id "$tag")
    docker build -q --build-arg "INFRA_IMAGE=$INFRA_IMAGE" -t "$tag" "swarm/images/$name" >/dev/null 2>&1 \
      || docker build --build-arg "INFRA_IMAGE=$INFRA_IMAGE" -t "$tag" "swarm/images/$name"
    drop_replaced "$old_id" "$tag"
  done
fi

# --- the Tidedesk image -------------------------------------------------------------------------
hash=$( { find tidedesk chatnode routernode controlplane -type f -not -name '*.pyc' -print0 \
          | sort -z | xargs -0 sha256sum; sha256sum pyproject.toml Dockerfile swarm/tidedesk-entrypoint swarm/tidedesk-healthcheck swarm/wheelhouse.py; } \
        | sha256sum | cut -c1-16 )
current=$(docker image inspect -f '{{ index .Config.Labels "tidedesk.source-hash" }}' "$TIDEDESK_IMAGE" 2>/dev/null || true)
if [ "$FORCE" = 0 ] && [ "$current" = "$hash" ]; then
  say "$TIDEDESK_IMAGE is up to date (sources $hash)"
else
  pyver=$(docker run --rm --entrypoint python3 "$BASE_IMAGE" -c 'import platform; print(platform.python_version())')
  say "wheels for the image's Python $pyver into $WHEELHOUSE"
  "$PYTHON" swarm/wheelhouse.py --python "$pyver" "$WHEELHOUSE" >"$CACHE_DIR/wheelhouse.log" 2>&1 \
    || { grep -v "is ignored: it is neither" "$CACHE_DIR/wheelhouse.log" | tail -20 >&2; exit 1; }
  grep "^wheelhouse:" "$CACHE_DIR/wheelhouse.log" || true
  say "docker build $TIDEDESK_IMAGE (FROM $BASE_IMAGE)"
  old_id=$(image_id "$TIDEDESK_IMAGE")
  docker build -q --build-arg "BASE_IMAGE=$BASE_IMAGE" --label "tidedesk.source-hash=$hash" \
    -t "$TIDEDESK_IMAGE" . >"$CACHE_DIR/tidedesk-build.log" 2>&1 \
    || { tail -30 "$CACHE_DIR/tidedesk-build.log" >&2; exit 1; }
  drop_replaced "$old_id" "$TIDEDESK_IMAGE"
  stale=$(docker images -q -f dangling=true -f label=tidedesk.stage=install)
  [ -z "$stale" ] || docker rmi $stale >/dev/null 2>&1 || true
fi
say "done"
