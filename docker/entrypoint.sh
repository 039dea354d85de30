#!/usr/bin/env bash
# Entrypoint of handeye:cpu. With arguments: run them (`docker run --rm handeye:cpu handeye --help`).
# Without: reproduce the demo in a scratch copy of /opt/handeye (so the image stays read-only and any --user
# works), copy paper_figs/, every stage output (out/) and dvc.lock into the mounted folder $HANDEYE_OUT, and end
# with `handeye verify`'s summary: bits against the image's dvc.lock, claims against their seed bands.
set -euo pipefail
[ $# -gt 0 ] && exec "$@"

dest=${HANDEYE_OUT:-/out}
if [ ! -d "$dest" ] || [ ! -w "$dest" ]; then
  echo "handeye: error: $dest is not a writable folder; mount one: docker run --rm -v \"\$PWD/out:/out\" handeye:cpu" \
       "(add --user \"\$(id -u):\$(id -g)\" if uid $(id -u) cannot write to it)" >&2
  exit 2
fi

work=$(mktemp -d /tmp/handeye.XXXXXX)
cp -a /opt/handeye/. "$work"
cd "$work"
dvc pull --quiet data.dvc
# The image's lock, the CPU that wrote it and its folders' file listings, before the repro rewrites them.
cp dvc.lock dvc.image.lock
cp paper_figs/machine.json image-machine.json
cp paper_figs/folders.json image-folders.json
# The cache in the image is empty, so nothing can be restored from the run-cache: every stage executes.
dvc repro
cp -r paper_figs out dvc.lock "$dest"/
echo "handeye: figures and table in $dest/paper_figs, all stage outputs in $dest/out, their md5s in $dest/dvc.lock"
# Bits against the image's lock, claims against their seed bands; the exit status is verify's (README).
handeye verify --no-repro --lock dvc.image.lock --lock-cpu image-machine.json --lock-folders image-folders.json
