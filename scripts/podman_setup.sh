#!/usr/bin/env bash
# Engine-less containers for `make docker-test` (FIELD_NOTES "Containers without a Docker engine"):
# podman with the vfs storage driver and the runc runtime, and a Debian bookworm base image with Python 3.11
# bootstrapped locally, because no registry image can be pulled here. Idempotent; meant to be sourced:
#   source scripts/podman_setup.sh   ->  "${PODMAN[@]}" images, $BASE_IMAGE, $DOCKER_CACHE
# Everything heavy lives in $DOCKER_CACHE, outside the repository, so that neither git, DVC's stage
# collection nor a build context ever walks a multi-GB container store.
set -euo pipefail

DOCKER_CACHE=${DOCKER_CACHE:-$HOME/.cache/handeye/docker}
BASE_IMAGE=${BASE_IMAGE:-localhost/handeye-base:bookworm-py311}
# crun fails here on rlimits and hybrid cgroups, runc works; vfs needs no overlay support from the kernel.
PODMAN=(podman --root "$DOCKER_CACHE/storage" --runroot "$DOCKER_CACHE/run" --storage-driver vfs --runtime runc)
ULIMITS=(--ulimit nofile=4096:4096 --ulimit nproc=4096:4096)

_podman_log() { echo "podman-setup: $*" >&2; }

_podman_install_packages() {
  local pkgs=(podman buildah debootstrap runc uidmap containernetworking-plugins) missing=() p
  for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  _podman_log "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# The first Debian mirror apt is configured with (deb822 .sources or one-line .list), else deb.debian.org.
_podman_mirror() {
  local m
  m=$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -m1 '/debian/\?$' || true)
  [ -n "$m" ] || m=$(grep -hsE '^deb +(\[[^]]*\] +)?https?://' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
                     | sed -E 's/^deb +(\[[^]]*\] +)?//' | awk '{print $1}' | grep -m1 '/debian/\?$' || true)
  echo "${m:-http://deb.debian.org/debian}"
}

# A minimal bookworm with Debian's Python 3.11 (3.11.2) and venv: the stand-in for python:3.11-slim-bookworm.
_podman_base_image() {
  if "${PODMAN[@]}" image exists "$BASE_IMAGE"; then return 0; fi
  local rootfs="$DOCKER_CACHE/rootfs" mirror
  mirror=$(_podman_mirror)
  if [ ! -x "$rootfs/usr/bin/python3" ]; then
    _podman_log "debootstrapping bookworm from $mirror into $rootfs (a few minutes)"
    rm -rf "$rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$mirror" \
      > "$DOCKER_CACHE/debootstrap.log" 2>&1 \
      || { _podman_log "debootstrap failed, see $DOCKER_CACHE/debootstrap.log"; return 1; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  fi
  _podman_log "importing $rootfs as $BASE_IMAGE"
  tar -C "$rootfs" -c . | "${PODMAN[@]}" import --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
}

mkdir -p "$DOCKER_CACHE"
_podman_install_packages
_podman_base_image
