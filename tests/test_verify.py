"""handeye.verify on tiny DVC projects: exempt files are skipped and listed, any other difference fails."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from handeye import verify
from handeye.errors import HandEyeError

# res/ holds a deterministic file plus the two kinds of exempt file, each written with fresh random bytes.
GEN = """\
import os, pathlib, sys
res = pathlib.Path("res"); (res / "sub").mkdir(parents=True, exist_ok=True)
(res / "a.txt").write_text("same bytes every run\\n")
(res / "sub" / "timings.json").write_text(os.urandom(8).hex())
(res / "run_manifest.json").write_text(os.urandom(8).hex())
pathlib.Path("metric.json").write_text('{"acc": 0.5}\\n')
plots = pathlib.Path("plots"); plots.mkdir(exist_ok=True)
(plots / "acc.tsv").write_text("step\\tacc\\n0\\t0.5\\n")
pathlib.Path("paper_figs").mkdir(exist_ok=True)
pathlib.Path("paper_figs/rl_wall_time.png").write_bytes(os.urandom(8))
noisy = pathlib.Path("noisy.txt")
pathlib.Path("paper_figs/curve.png").write_bytes(os.urandom(8) if noisy.exists() else b"png")
"""


def cli_args(**values) -> argparse.Namespace:
    """`handeye verify`'s arguments: its defaults, with ``values`` set."""
    parser = argparse.ArgumentParser()
    verify.add_arguments(parser)
    args = parser.parse_args([])
    vars(args).update(values)
    return args


def dvc(project: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, check=True, capture_output=True)


def make_project(root: Path) -> Path:
    root.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    dvc(root, "init", "-q")
    (root / "gen.py").write_text(GEN)
    (root / "dvc.yaml").write_text(textwrap.dedent(f"""\
        stages:
          gen:
            cmd: {sys.executable} gen.py
            deps: [gen.py]
            outs: [res, paper_figs/curve.png, paper_figs/rl_wall_time.png, {{plots: {{cache: false}}}}]
            metrics: [{{metric.json: {{cache: false}}}}]
        """))
    dvc(root, "repro", "-q")
    return root


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return make_project(tmp_path_factory.mktemp("verify") / "p")


def test_exempt_patterns():
    assert verify.is_exempt("out/rl/ego_full_s0/timings.json")
    assert verify.is_exempt("out/models/random/run_manifest.json")
    assert verify.is_exempt("paper_figs/reward_wall_time.png")
    assert not verify.is_exempt("paper_figs/reward_curves.png")
    assert not verify.is_exempt("out/rl/ego_full_s0/metrics.json")
    assert not verify.is_exempt("out/wall/metrics.json")


def test_rerun_is_identical_except_exempt_files(project, capsys):
    report = verify.run_verify(project, project / "dvc.lock")
    assert report.ok, report.mismatches
    assert set(report.exempt) == {"res/run_manifest.json", "res/sub/timings.json", "paper_figs/rl_wall_time.png"}
    assert set(report.checked) == {"res/a.txt", "metric.json", "paper_figs/curve.png", "plots/acc.tsv"}
    verify.print_report(report)
    out = capsys.readouterr().out
    assert "exempt  res/sub/timings.json" in out and "OK, 4 files identical" in out


def test_changed_output_fails_with_its_path(tmp_path, capsys):
    project = make_project(tmp_path / "p")
    (project / "noisy.txt").write_text("")  # curve.png now gets random bytes on every run
    dvc(project, "repro", "-q", "-f")
    args = cli_args(lock=project / "dvc.lock", repro=True, outputs=None, claims=None, lock_cpu=None)
    assert verify.main(args) == 1  # the lock names no CPU, so nothing excuses the difference
    out = capsys.readouterr().out
    assert "1 of 4 files differ" in out
    assert "differs paper_figs/curve.png: md5" in out
    assert "bits differ: 1 of 4 files, and dvc.lock's run manifests name no CPU; claims: not checked" in out


def test_copy_of_outputs_is_checked_file_by_file(project, tmp_path):
    copy = tmp_path / "copy"
    for rel in ("res", "paper_figs", "metric.json", "plots"):
        src = project / rel
        (shutil.copytree if src.is_dir() else shutil.copy)(src, copy / rel)
    lock = project / "dvc.lock"
    assert verify.run_verify(project, lock, copy, repro=False).ok

    (copy / "res" / "a.txt").write_text("changed\n")
    (copy / "res" / "extra.txt").write_text("not from the pipeline\n")
    (copy / "metric.json").unlink()
    report = verify.run_verify(project, lock, copy, repro=False)
    by_path = {m.path: m for m in report.mismatches}
    assert set(by_path) == {"res/a.txt", "res/extra.txt", "metric.json"}
    assert by_path["res/extra.txt"].expected is None
    assert by_path["metric.json"].actual is None
    assert by_path["res/a.txt"].expected != by_path["res/a.txt"].actual


def test_dir_hash_matches_dvc(project):
    lock = verify.locked_outputs(project / "dvc.lock")
    plots = next(o for o in lock if o["path"] == "plots")  # cache: false, so no .dir object in the cache
    assert verify.dir_md5({"acc.tsv": verify.file_md5(project / "plots" / "acc.tsv")}) == plots["md5"]


def test_missing_dir_listing_falls_back_to_the_workspace_or_the_whole_folder(tmp_path):
    project = make_project(tmp_path / "p")
    for listing in (project / ".dvc" / "cache").rglob("*.dir"):
        listing.unlink()
    lock = project / "dvc.lock"
    assert verify.run_verify(project, lock, repro=False).ok
    (project / "res" / "a.txt").write_text("edited\n")
    report = verify.run_verify(project, lock, repro=False)  # no listing to compare file by file: the folder
    assert [m.path for m in report.mismatches] == ["res/"] and "res/" in report.checked


def test_folders_file_compares_a_folder_file_by_file_without_the_cache(tmp_path, monkeypatch):
    """A container: no .dir listing in its cache, and its rerun rewrote the exempt files inside res/, so the
    folder hashes differently from the lock even where every other file is identical."""
    project = make_project(tmp_path / "p")
    monkeypatch.chdir(project)  # as the stage runs it
    path = tmp_path / "lock-folders.json"
    assert verify.main(cli_args(write_folders=path)) == 0
    folders = json.loads(path.read_text())
    assert set(folders) == {"res", "plots"}  # the folder outputs, not the file outputs
    assert folders["res"] == {"a.txt": verify.file_md5(project / "res" / "a.txt")}  # exempt files left out
    for listing in (project / ".dvc" / "cache").rglob("*.dir"):
        listing.unlink()
    (project / "res" / "sub" / "timings.json").write_text("another run's wall clock")
    lock = project / "dvc.lock"
    assert [m.path for m in verify.run_verify(project, lock, repro=False).mismatches] == ["res/"]
    report = verify.run_verify(project, lock, repro=False, folders=path)
    assert report.ok and "res/sub/timings.json" in report.exempt and "res/a.txt" in report.checked
    (project / "res" / "a.txt").write_text("edited\n")
    report = verify.run_verify(project, lock, repro=False, folders=path)
    assert [m.path for m in report.mismatches] == ["res/a.txt"]


def test_missing_lock_is_a_user_error(tmp_path):
    with pytest.raises(HandEyeError, match=r"dvc.lock not found"):
        verify.locked_outputs(tmp_path / "dvc.lock")


def test_outputs_needs_no_repro(tmp_path):
    args = cli_args(lock=tmp_path / "dvc.lock", repro=True, outputs=tmp_path, claims=None, lock_cpu=None)
    with pytest.raises(HandEyeError, match="--no-repro"):
        verify.main(args)


def test_lock_outside_a_dvc_project_is_a_user_error(tmp_path):
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    args = cli_args(lock=tmp_path / "dvc.lock", repro=False, outputs=None, claims=None, lock_cpu=None)
    with pytest.raises(HandEyeError, match="not the root of a DVC project"):
        verify.main(args)


def test_bits_that_differ_on_another_cpu_pass_and_name_both_cpus(tmp_path, capsys):
    project = make_project(tmp_path / "p")
    (project / "res" / "a.txt").write_text("other CPU, other last bits\n")
    other = tmp_path / "lock-cpu.json"
    other.write_text(json.dumps({"model": "AMD EPYC 7B13", "flags": ["avx2"]}))
    args = cli_args(lock=project / "dvc.lock", repro=False, outputs=None, claims=None, lock_cpu=other)
    assert verify.main(args) == 0
    out = capsys.readouterr().out
    assert "bits differ (1 of 4 files): other CPU (" in out and "than dvc.lock (AMD EPYC 7B13 (avx2))" in out
    args.lock_cpu = tmp_path / "absent.json"
    with pytest.raises(HandEyeError, match=r"--lock-cpu .*absent.json not found"):
        verify.main(args)
