#!/usr/bin/env bash
# `make docker-test`: build docker/Dockerfile without a Docker engine (podman, vfs, runc, a debootstrapped
# bookworm base, the locked wheels from a host wheelhouse), run the demo in the container and check that
# every output it wrote is byte-identical to the host run recorded in dvc.lock (`handeye verify --no-repro`,
# which skips the exempt wall-clock files and lists them).
#   scripts/docker_test.sh            full test (slow: the image holds the ~5 GB torch stack)
#   scripts/docker_test.sh --smoke    stop after the image build and `handeye --help` in the container
# Caches (base rootfs, container store, wheelhouse) live in $DOCKER_CACHE (~/.cache/handeye/docker).
set -euo pipefail
cd "$(dirname "$0")/.."
SMOKE=0
case "${1:-}" in
  --smoke) SMOKE=1 ;;
  "") ;;
  *) echo "usage: $0 [--smoke]" >&2; exit 2 ;;
esac
VENV=${VENV:-.venv}
export PATH="$PWD/$VENV/bin:$PATH"  # the stages of the host run call `handeye`
IMAGE=${IMAGE:-localhost/handeye:cpu}

step_start=$SECONDS
step() { echo "docker-test: [$((SECONDS - step_start))s] $*"; }

# shellcheck source=scripts/podman_setup.sh
source scripts/podman_setup.sh
step "podman and base image $BASE_IMAGE ready"

WHEELHOUSE="$DOCKER_CACHE/wheelhouse"
if [ ! -f "$WHEELHOUSE/.complete" ] || [ requirements.lock -nt "$WHEELHOUSE/.complete" ]; then
  step "building the wheelhouse of requirements.lock in $WHEELHOUSE"
  rm -rf "$WHEELHOUSE" && mkdir -p "$WHEELHOUSE"
  # pip freeze leaves setuptools out of the lock, but torch requires setuptools>=77 at install time: an
  # offline install needs its wheel too (the version .venv has).
  extra=()
  grep -qi '^setuptools==' requirements.lock \
    || extra=("$("$VENV/bin/pip" freeze --all 2>/dev/null | grep -i '^setuptools==')")
  "$VENV/bin/pip" wheel -q --no-deps -r requirements.lock "${extra[@]}" -w "$WHEELHOUSE" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
  touch "$WHEELHOUSE/.complete"
fi

# --layers=false commits one layer: with vfs every layer is a full copy of the ~7.6 GB file system, and the
# build holds two (the working container and the committed layer). With less room it fails deep inside
# podman ("io: read/write on closed pipe"), so check first.
MIN_FREE_GB=${MIN_FREE_GB:-16}
free_gb=$(df -Pk "$DOCKER_CACHE" | awk 'NR == 2 {print int($4 / 1048576)}')
if [ "$free_gb" -lt "$MIN_FREE_GB" ]; then
  echo "docker-test: $free_gb GB free under $DOCKER_CACHE, the image build needs about $MIN_FREE_GB GB;" \
       "free some space or set DOCKER_CACHE to a larger disk" >&2
  exit 1
fi
step "building $IMAGE from docker/Dockerfile"
"${PODMAN[@]}" build --layers=false "${ULIMITS[@]}" -f docker/Dockerfile -t "$IMAGE" \
  --build-arg BASE="$BASE_IMAGE" --build-arg WHEELHOUSE=/wheels -v "$WHEELHOUSE:/wheels:ro" . \
  > "$DOCKER_CACHE/build.log" 2>&1 \
  || { tail -n 40 "$DOCKER_CACHE/build.log" >&2; echo "docker-test: build failed, log: $DOCKER_CACHE/build.log" >&2; exit 1; }
"${PODMAN[@]}" image prune --force > /dev/null  # the image this build replaced, now untagged (7.6 GB with vfs)
step "image built ($("${PODMAN[@]}" image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.1f GB", $1/1e9}'))"

"${PODMAN[@]}" run --rm "${ULIMITS[@]}" "$IMAGE" handeye --help > /dev/null
step "container runs: handeye --help"
[ "$SMOKE" = 1 ] && { echo "docker-test: smoke test passed"; exit 0; }

step "host run: dvc repro (a no-op when the workspace matches dvc.lock)"
"$VENV/bin/dvc" pull --quiet data.dvc
"$VENV/bin/dvc" repro --quiet

results=$(mktemp -d "${TMPDIR:-/tmp}/handeye-docker-test.XXXXXX")
trap 'rm -rf "$results"' EXIT
chmod 0777 "$results"  # the container runs as uid 1000, which may not own this folder
step "container run of the demo: podman run --rm -v $results:/out $IMAGE"
"${PODMAN[@]}" run --rm "${ULIMITS[@]}" -v "$results:/out" "$IMAGE"

step "comparing the container's outputs with the host's dvc.lock"
"$VENV/bin/handeye" verify --no-repro --outputs "$results"
step "docker test passed"
