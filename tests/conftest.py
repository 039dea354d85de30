"""Shared fixtures. Tests run on the CPU with 2 threads; MuJoCo renders through EGL."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
# The real EPIC-KITCHENS-100 annotation files, beside the checkout (../shared/epic100), when present.
EPIC100_DIR = REPO_ROOT.parent / "shared" / "epic100"


@pytest.fixture
def epic100_dir() -> Path:
    if not (EPIC100_DIR / "EPIC_100_validation.csv").is_file():
        pytest.skip(f"real EPIC-KITCHENS-100 annotations not found at {EPIC100_DIR}")
    return EPIC100_DIR


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def webdav(tmp_path):
    """A wsgidav server on 127.0.0.1 sharing a fresh folder read-write; yields (url, folder), then stops."""
    pytest.importorskip("wsgidav", reason="the WebDAV test server: pip install wsgidav cheroot")
    pytest.importorskip("dvc_webdav", reason="DVC's WebDAV remote: pip install dvc-webdav")
    store = tmp_path / "dav"
    # The remote's folder exists on the server, as on a real share: webdav4's makedirs gets 409 from wsgidav
    # when it tries to create a folder directly under the share root.
    (store / "store").mkdir(parents=True)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "wsgidav.server.server_cli", "--host", "127.0.0.1", "--port", str(port),
         "--root", str(store), "--auth", "anonymous", "--no-config", "-q"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError:
                assert server.poll() is None, f"wsgidav exited: {server.stderr.read().decode()}"
                time.sleep(0.1)
        else:
            pytest.fail("wsgidav did not answer within 10 s")
        yield f"webdav://127.0.0.1:{port}/store", store
    finally:
        server.terminate()
        server.wait(timeout=10)


def pytest_collection_modifyitems(config, items):
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def torchrun():
    """Launch ``handeye ARGS`` under ``torchrun --standalone --nproc_per_node N`` on the CPU (gloo backend).

    Returns a function ``run(nproc, *args, cwd=None, env=None, timeout=600) -> CompletedProcess`` (text output,
    not checked: tests assert on the exit code and the one-line errors themselves)."""

    def run(nproc: int, *args: str, cwd=None, env=None, timeout: float = 600) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "--max_restarts=0", "-m", "handeye", *map(str, args)]
        full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
        return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
                              check=False)

    return run


@pytest.fixture
def ranks():
    """Launch one ``handeye`` command per rank by hand, with the environment torchrun would set: what a
    multi-node launch looks like when each node was given its own (possibly wrong) command.

    Returns ``run([args_rank0, args_rank1, ...], cwd=None, timeout=120) -> list[CompletedProcess]``."""

    def run(per_rank: list[list[str]], cwd=None, timeout: float = 120) -> list[subprocess.CompletedProcess]:
        port, n = free_port(), len(per_rank)
        procs = []
        for rank, args in enumerate(per_rank):
            env = {**os.environ, "OMP_NUM_THREADS": "1", "RANK": str(rank), "LOCAL_RANK": str(rank),
                   "WORLD_SIZE": str(n), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
            procs.append(subprocess.Popen([sys.executable, "-m", "handeye", *map(str, args)], cwd=cwd, env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        done = []
        try:
            for p in procs:
                out, err = p.communicate(timeout=timeout)
                done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
        finally:
            for p in procs:
                p.kill()
        return done

    return run
