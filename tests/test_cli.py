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
