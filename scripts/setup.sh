#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine: the Debian libraries MuJoCo's EGL rendering needs,
# then .venv with the exact versions of requirements.lock and the package in editable mode.
set -euo pipefail
cd "$(dirname "$0")/.."
# The interpreter: $PYTHON if given; else Debian's own python3.11 where it can make a venv; else python3.
# Debian builds it with PGO and LTO and links libpython statically; a source build without them (pyenv's
# default, the python3 first on PATH where this was measured) started processes ~20% slower:
# `import torch, timm` and a no-op `dvc repro` (benchmarks/bench_startup.py; docs/performance.md, Interpreter start-up).
if [ -z "${PYTHON:-}" ]; then
  PYTHON=python3
  if [ -x /usr/bin/python3.11 ] && /usr/bin/python3.11 -c 'import ensurepip, venv' 2>/dev/null; then
    PYTHON=/usr/bin/python3.11
  fi
fi
VENV=${VENV:-.venv}

# MuJoCo renders offscreen through EGL on Mesa's llvmpipe (FIELD_NOTES); git is needed by dvc.
DEB_PACKAGES=(libegl1 libegl-mesa0 libgl1-mesa-dri libgles2 git)
missing=()
for p in "${DEB_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

"$PYTHON" -c 'import sys; assert sys.version_info[:2] in ((3, 11), (3, 12)), sys.version' 2>/dev/null \
  || { echo "setup: error: Python 3.11 or 3.12 is needed, $PYTHON is $("$PYTHON" --version 2>&1)" >&2; exit 2; }
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV with $PYTHON ($("$PYTHON" --version 2>&1))"
  "$PYTHON" -m venv "$VENV"
fi
# The grep drops pip's notices about local extra indexes some machines configure.
quiet() { { grep -v "is ignored: it is neither a file nor a directory" || true; }; }
"$VENV/bin/python" -m pip install -q --upgrade "pip>=24" 2>&1 | quiet
echo "setup: installing the locked stack into $VENV (torch alone is ~5 GB; about a minute from a warm pip cache)"
"$VENV/bin/python" -m pip install -q -r requirements.lock 2>&1 | quiet
"$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e .
echo "setup: done ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
