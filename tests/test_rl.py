"""The rl stage: a few PPO iterations with a fake encoder, bit-for-bit metrics, resume, bad inputs, figures."""

import dataclasses
import json
import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("MUJOCO_GL", "egl")

from test_envs import FakeEncoder

from handeye import cli
from handeye.errors import HandEyeError
from handeye.rl.config import RLConfig, run_name
from handeye.rl.envs.base import PRIVILEGED_DIM, PROPRIO_DIM, EnvConfig
from handeye.rl.runner import last_checkpoint, run_config, train_cfg
from handeye.rl.train import run_rl


def tiny(out_dir: Path, **kw) -> RLConfig:
    env = EnvConfig(num_envs=2, workers=0, image_size=32, episode_length_s=4 / 60)
    return RLConfig(**{"encoder": "fake", "out_dir": str(out_dir), "iterations": 3, "num_steps_per_env": 4,
                       "save_interval": 2, "actor_hidden_dims": [16], "critic_hidden_dims": [16],
                       "num_mini_batches": 2, "threads": 1, "env": env, **kw})


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same tiny run twice (same seed), and once with another seed."""
    root = tmp_path_factory.mktemp("rl")
    done = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        # the same out_dir every time: it is part of the config saved in checkpoints
        out = run_rl(tiny(root / "run", seed=seed), encoder=FakeEncoder())
        (root / name).mkdir()
        done.append(out.rename(root / name / out.name))
    return tuple(done)


def test_run_folder_contents(runs):
    a = runs[0]
    assert a.name == "fake_s0" and not (a.parent / ".fake_s0.partial").exists()
    for name in ("policy.pt", "timings.json", "run_manifest.json", "live/metrics.json",
                 "checkpoints/model_0.pt", "checkpoints/model_2.pt"):
        assert (a / name).is_file(), name
    summary = json.loads((a / "live/metrics.json").read_text())
    assert summary["step"] == 2 and summary["Train"]["env_steps"] == 3 * 4 * 2
    assert set(summary["Reward"]) == {"total", "track_orientation_inv_l2", "success_bonus", "track_pos_l2",
                                      "action_l2"}
    assert "success_rate" in summary["Episode"] and "mean_reward" in summary["Train"]
    assert "Perf" not in summary  # wall clock stays out of the metrics
    timings = json.loads((a / "timings.json").read_text())["iterations"]
    assert [t["iteration"] for t in timings] == [0, 1, 2]
    assert all(t["wall_s"] > 0 for t in timings) and timings[-1]["wall_s"] >= timings[0]["wall_s"]


def test_same_seed_gives_identical_metrics_and_checkpoints(runs):
    a, b, c = (tree_bytes(r) for r in runs)
    exempt = {"timings.json", "run_manifest.json"}
    assert set(a) == set(b)
    differ = [k for k in a if k not in exempt and a[k] != b[k]]
    assert differ == []
    assert a["live/metrics.json"] != c["live/metrics.json"]  # the seed matters


def test_resume_continues_from_the_last_checkpoint(runs, tmp_path):
    import shutil

    import torch

    shutil.copytree(runs[0], tmp_path / "fake_s0")
    out = run_rl(tiny(tmp_path, iterations=5), resume=True, encoder=FakeEncoder())
    steps = json.loads((out / "live/metrics.json").read_text())["step"]
    assert steps == 4
    ckpt = torch.load(out / "checkpoints/model_4.pt", weights_only=False)
    assert ckpt["iter"] == 4 and ckpt["config"]["iterations"] == 5
    tsv = (out / "live/plots/metrics/Reward/total.tsv").read_text().splitlines()
    assert [line.split("\t")[0] for line in tsv[1:]] == ["0", "1", "2", "3", "4"]  # nothing logged twice
    first = runs[0] / "live/plots/metrics/Reward/total.tsv"
    assert tsv[1:4] == first.read_text().splitlines()[1:4]  # iterations before the checkpoint are kept


def test_a_run_saves_its_own_settings_not_the_sweep(runs):
    """Adding a run to rl.encoders/rl.seeds reruns no other run (DVC), so it must change none of their files."""
    import torch

    policy = torch.load(runs[0] / "policy.pt", weights_only=False)
    cfg = tiny(Path(policy["config"]["out_dir"]))
    assert policy["config"] == run_config(cfg) and policy["config"]["seed"] == 0
    wider = run_config(dataclasses.replace(cfg, encoders=["x", "y"], seeds=[0, 1, 2]))
    assert wider == policy["config"] and "encoders" not in wider and "seeds" not in wider


def test_train_cfg_is_rsl_rl_5_schema():
    cfg = RLConfig()
    d = train_cfg(cfg, 1225, Path("live"), Path("t.json"), False)
    assert d["algorithm"]["class_name"] == "PPO" and d["actor"]["class_name"] == "MLPModel"
    assert d["actor"]["hidden_dims"] == [1024, 512, 512, 256, 128]
    assert d["obs_groups"] == {"actor": ["policy"], "critic": ["policy", "privileged"]}
    assert d["algorithm"]["desired_kl"] == 0.01 and d["algorithm"]["num_learning_epochs"] == 5
    blind = train_cfg(dataclasses.replace(cfg, critic_images=False), 1225, Path("live"), Path("t.json"), False)
    assert blind["obs_groups"] == {"actor": ["policy"], "critic": ["proprio", "privileged"]}


def test_rsl_rl_finds_the_log_writer_by_its_name():
    from rsl_rl.utils import resolve_callable

    from handeye.rl.runner import LOG_WRITER, DvcLiveWriter

    assert resolve_callable(LOG_WRITER) is DvcLiveWriter


def test_run_name():
    assert run_name("imagenet", 2) == "imagenet_s2"
    assert run_name("out/models/ego_frozen/encoder.pt", 0) == "ego_frozen_s0"
    assert run_name("weights/mae_pretrain_vit_base.pth", 0) == "mae_pretrain_vit_base_s0"
    assert run_name("data/weights/vit-mae-base", 1) == "vit-mae-base_s1"  # a Hugging Face folder


# ------------------------------------------------------------------------------------------- bad input


def run_cli(tmp_path, capsys, *argv, rl=None):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"rl": {"out_dir": str(tmp_path / "out"), **(rl or {})}}))
    code = cli.main(["rl", "--params", str(params), *argv])
    err = capsys.readouterr().err.strip()
    return code, err


def test_unknown_backend_says_where_isaac_lab_runs(tmp_path, capsys):
    code, err = run_cli(tmp_path, capsys, "--backend", "gazebo")
    assert code == 2 and len(err.splitlines()) == 1
    assert "gazebo" in err and "docker/Dockerfile.isaaclab" in err


def test_isaaclab_backend_here_is_a_one_line_error(tmp_path, capsys):
    code, err = run_cli(tmp_path, capsys, "--backend", "isaaclab")
    assert code == 2 and len(err.splitlines()) == 1 and "Dockerfile.isaaclab" in err


@pytest.mark.parametrize("encoder", ["imagenet", "out/models/nope/encoder.pt"])
def test_missing_encoder_checkpoint(tmp_path, capsys, monkeypatch, encoder):
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(tmp_path, capsys, "--encoder", encoder)
    assert code == 2 and len(err.splitlines()) == 1
    assert "encoder" in err and ("imagenet/encoder.pt" in err or "nope" in err)
    assert not (tmp_path / "out").exists()


def test_no_egl_names_what_to_install(tmp_path, monkeypatch):
    import mujoco

    def broken(*a, **k):
        raise RuntimeError("eglInitialize failed")

    monkeypatch.setattr(mujoco, "GLContext", broken)
    with pytest.raises(HandEyeError, match="libegl1"):
        run_rl(tiny(tmp_path), encoder=FakeEncoder())
    assert not (tmp_path / "fake_s0").exists()


# ------------------------------------------------------------------------------------------- figures


def test_figures_six_files_and_the_table_iteration_ones_deterministic(runs, tmp_path):
    import shutil

    from handeye.rl.figures import write_rl_figures

    root = runs[0].parent.parent  # holds a/, b/, c/; make one folder with two encoders x two seeds
    for enc, src in (("fake", runs[0]), ("other", runs[2])):
        for seed in (0, 1):
            shutil.copytree(src, tmp_path / "rl" / f"{enc}_s{seed}")
    params = {"rl": {"out_dir": str(tmp_path / "rl"), "encoders": ["fake", "other"], "seeds": [0, 1]}}
    first = write_rl_figures(params, tmp_path / "figs1")
    second = write_rl_figures(params, tmp_path / "figs2")
    figures = [p for p in first if p.suffix == ".png"]
    assert len(figures) == 6 and all(p.stat().st_size > 1000 for p in figures)
    assert sorted(p.name for p in first if p.suffix != ".png") == ["table_rl.md", "table_rl.tex"]
    for a, b in zip(first, second, strict=True):
        if "iteration" in a.name or a.name.startswith("table_rl"):
            assert a.read_bytes() == b.read_bytes(), a.name
    assert root.exists()
    with pytest.raises(HandEyeError, match="missing_s0"):
        write_rl_figures({"rl": {**params["rl"], "encoders": ["missing"]}}, tmp_path / "figs3")


def test_critic_without_the_cameras_reads_proprio_and_privileged_only(tmp_path):
    import torch

    run = run_rl(tiny(tmp_path / "run", critic_images=False), encoder=FakeEncoder())
    ckpt = torch.load(last_checkpoint(run / "checkpoints"), weights_only=False)
    assert ckpt["critic_state_dict"]["mlp.0.weight"].shape[1] == PROPRIO_DIM + PRIVILEGED_DIM
    assert ckpt["actor_state_dict"]["mlp.0.weight"].shape[1] == 2 * FakeEncoder().embed_dim + PROPRIO_DIM
    assert ckpt["config"]["critic_images"] is False
