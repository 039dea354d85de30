import subprocess
import sys

import pytest

from handeye.cli import COMMANDS, main


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_every_subcommand_has_help():
    for name in COMMANDS:
        proc = subprocess.run([sys.executable, "-m", "handeye", name, "--help"], capture_output=True, text=True,
                              check=False)
        assert proc.returncode == 0, (name, proc.stderr)
        assert "usage: handeye" in proc.stdout


def test_unknown_profile_is_one_line_error(capsys, tmp_path, monkeypatch):
    import shutil
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    shutil.copy(root / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(root / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    assert main(["profile", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("handeye: error: unknown profile 'nope'; known: demo, demo-long, paper")
    assert err.count("\n") == 1


def test_profile_writes_paper_params_and_refuses_to_stack(capsys, tmp_path, monkeypatch):
    import shutil
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    shutil.copy(root / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(root / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    assert main(["profile", "paper", "--out", "params.yaml"]) == 0
    paper = yaml.safe_load((root / "configs" / "paper.yaml").read_text())
    written = yaml.safe_load((tmp_path / "params.yaml").read_text())

    def assert_applied(overrides, resolved, where):
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(resolved[key], dict):
                assert_applied(value, resolved[key], f"{where}.{key}")
            else:
                assert resolved[key] == value, f"{where}.{key}"

    assert_applied(paper, written, "params")
    assert written["pretrain"]["arch"] == "vit_base_patch16_224"
    assert main(["profile", "paper", "--out", "params.yaml"]) == 2
    assert "git checkout params.yaml" in capsys.readouterr().err


# ------------------------------------------------------------------- commands run outside the project root

def repo_root():
    from pathlib import Path

    return Path(__file__).resolve().parents[1]


def run_outside(cwd, *argv: str) -> subprocess.CompletedProcess:
    """`handeye ARGV` as a user types it in a folder that is not the project (no params.yaml there)."""
    return subprocess.run([sys.executable, "-m", "handeye", *argv], cwd=cwd, capture_output=True, text=True,
                          check=False, timeout=300)


def test_profile_outside_the_project_root_reads_the_project(tmp_path):
    proc = run_outside(tmp_path, "profile", "paper")
    assert proc.returncode == 0, proc.stderr
    import yaml

    paper = yaml.safe_load((repo_root() / "configs" / "paper.yaml").read_text())
    assert yaml.safe_load(proc.stdout)["pretrain"]["arch"] == paper["pretrain"]["arch"]


def test_extract_frames_outside_the_project_root(tmp_path):
    """The issue's case: the default dedup encoder data/weights/dinov3-standin is the project's, not the cwd's."""
    import shutil

    import numpy as np
    import yaml

    root = repo_root()
    weights = root / "data" / "weights" / "dinov3-standin"
    clips = sorted((root / "data" / "ego").glob("*.mp4"))[:2]
    if not weights.is_dir() or not clips:
        pytest.skip("demo data not pulled (make data)")
    (tmp_path / "clips").mkdir()
    for clip in clips:
        shutil.copy(clip, tmp_path / "clips")
        shutil.copy(clip.with_suffix(".json"), tmp_path / "clips")
    proc = run_outside(tmp_path, "extract-frames", "clips", "--out", "frames", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    frames = yaml.safe_load((root / "params.yaml").read_text())["frames"]
    assert frames["dedup"], "the test needs the dedup encoder to be loaded"
    shard = np.load(next((tmp_path / "frames" / "shards").glob("*.npy")))
    assert shard.shape[1:] == (frames["resolution"], frames["resolution"], 3)  # the project's params.yaml
    assert not (root / "frames").exists()  # outputs stay where the user pointed


def test_outside_any_project_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    """No project above the cwd and none at the package's checkout: one line naming what to do."""
    from handeye import config

    monkeypatch.setattr(config, "PACKAGE_CHECKOUT", tmp_path / "nowhere")
    monkeypatch.chdir(tmp_path)
    assert config.project_root() is None
    assert main(["extract-frames", "clips", "--out", "frames"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--params" in err and "project root" in err
