"""Remote storage round trip on a real WebDAV server on 127.0.0.1 (wsgidav, conftest's `webdav` fixture): push
with the run-cache, fresh clone, pull; the clone must be clean, reproduce nothing and hold identical files.
A toy project here; tests/test_dvc_pipeline.py does the same on the real pipeline."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from handeye.repro import file_md5

pytestmark = pytest.mark.slow

# The stage logs each execution outside the repository, so "repro ran nothing" is observable directly.
GEN = """\
import pathlib, sys
with open(sys.argv[1], "a") as log:
    log.write("ran\\n")
out = pathlib.Path("out/result"); out.mkdir(parents=True, exist_ok=True)
(out / "table.md").write_text("| encoder | top-1 |\\n| random | 0.25 |\\n")
(out / "weights.bin").write_bytes(bytes(range(256)) * 64)
pathlib.Path("paper_figs").mkdir(exist_ok=True)
pathlib.Path("paper_figs/figure.svg").write_text("<svg/>\\n")
"""
OUTPUTS = ["out/result/table.md", "out/result/weights.bin", "paper_figs/figure.svg"]


def run(cwd: Path, *cmd: str) -> str:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def dvc(cwd: Path, *args: str) -> str:
    return run(cwd, sys.executable, "-m", "dvc", *args)


def git(cwd: Path, *args: str) -> str:
    return run(cwd, "git", "-c", "user.name=test", "-c", "user.email=test@example.org", *args)


def make_project(tmp_path: Path, remote_url: str, log: Path) -> Path:
    """A git + DVC project with one stage (it appends to ``log`` each time it runs), reproduced once."""
    project = tmp_path / "project"
    project.mkdir()
    git(project, "init", "-q")
    dvc(project, "init", "-q")
    (project / "gen.py").write_text(GEN)
    (project / "dvc.yaml").write_text(textwrap.dedent(f"""\
        stages:
          gen:
            cmd: {sys.executable} gen.py {log}
            deps: [gen.py]
            outs: [out/result, paper_figs/figure.svg]
        """))
    dvc(project, "remote", "add", "-d", "storage", remote_url)
    dvc(project, "repro", "-q")
    return project


def test_push_clone_pull_is_clean_and_reproduces_nothing(webdav, tmp_path):
    remote_url, store = webdav
    log = tmp_path / "executions.log"
    project = make_project(tmp_path, remote_url, log)
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "pipeline")
    dvc(project, "push", "--run-cache")
    assert log.read_text() == "ran\n"
    assert any((store / "store" / "runs").rglob("*")), "dvc push --run-cache stored no run-cache entry"

    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(project), str(clone))
    assert not (clone / "out" / "result").exists()
    dvc(clone, "pull")

    assert json.loads(dvc(clone, "status", "--json")) == {}
    dvc(clone, "repro")
    assert log.read_text() == "ran\n", "dvc repro executed the stage in the fresh clone"
    for rel in OUTPUTS:
        assert file_md5(clone / rel) == file_md5(project / rel), rel


def test_run_cache_restores_outputs_without_executing(webdav, tmp_path):
    """Without a committed dvc.lock, `dvc repro --pull` restores the outputs from the remote run-cache."""
    remote_url, _ = webdav
    log = tmp_path / "executions.log"
    project = make_project(tmp_path, remote_url, log)
    # No dvc.lock is committed below, so only the run-cache can tell the clone what the stage produces.
    dvc(project, "push", "--run-cache")
    os.remove(project / "dvc.lock")
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "pipeline without lock")

    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(project), str(clone))
    dvc(clone, "repro", "--pull")  # fetches the run-cache entry and the outputs it names
    assert log.read_text() == "ran\n", "the stage executed instead of being restored from the run-cache"
    for rel in OUTPUTS:
        assert file_md5(clone / rel) == file_md5(project / rel), rel
    shutil.rmtree(clone)
