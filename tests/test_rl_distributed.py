"""The rl stage on several ranks (torchrun, gloo on the CPU): identical policies on every rank after each PPO
update, one run folder written by rank 0, resume, one-line errors; and the pure parts of the multi-GPU path.

Run as a script under torchrun (``main``), this file is the per-rank program of the 2-rank test.
"""

import handeye  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads OpenMP)

# isort: split
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

os.environ.setdefault("MUJOCO_GL", "egl")

from handeye import distributed
from handeye.distributed import World
from handeye.errors import HandEyeError
from handeye.rl.config import EnvConfig, RLConfig
from handeye.rl.envs.isaaclab.train import apply_overrides, check_task, env_cfg_overrides
from handeye.rl.runner import Runner, train_cfg

TESTS = Path(__file__).resolve().parent


# ------------------------------------------------------------------------------ the per-rank program


def dump_updates(dumps: Path, rank: int) -> None:
    """In this process only: after each PPO update, save this rank's actor, critic, learning rate and the
    rewards of the rollout it learnt from to ``dumps/rank<r>_update<k>.pt``."""
    from rsl_rl.algorithms import PPO

    original, count = PPO.update, itertools.count()

    def update(self):
        rewards = self.storage.rewards.clone()
        losses = original(self)
        torch.save({"actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
                    "lr": self.learning_rate, "rewards": rewards}, dumps / f"rank{rank}_update{next(count)}.pt")
        return losses

    PPO.update = update


def main(out: Path, dumps: Path) -> None:
    """3 iterations, then resumed to 5, on every rank of the launch."""
    from test_envs import FakeEncoder
    from test_rl import tiny

    from handeye.rl.train import run_rl

    dump_updates(dumps, distributed.world_from_env().rank)
    run_rl(tiny(out), encoder=FakeEncoder())
    run_rl(tiny(out, iterations=5), resume=True, encoder=FakeEncoder())


def torchrun_this_file(nproc: int, *args, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "--max_restarts=0", __file__, *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)


# ------------------------------------------------------------------------------ 2 ranks, end to end


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    root = tmp_path_factory.mktemp("rl2")
    (root / "dumps").mkdir()
    done = torchrun_this_file(2, root / "out", root / "dumps", cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    return root, done


def load_dumps(dumps: Path, rank: int) -> list[dict]:
    found = sorted(dumps.glob(f"rank{rank}_update*.pt"), key=lambda p: int(p.stem.split("update")[1]))
    return [torch.load(p, weights_only=False) for p in found]


@pytest.mark.slow
def test_every_rank_holds_the_same_policy_after_each_update(two_ranks):
    root, _ = two_ranks
    rank0, rank1 = load_dumps(root / "dumps", 0), load_dumps(root / "dumps", 1)
    assert len(rank0) == len(rank1) == 5  # 3 updates, then 2 after the resume
    for k, (a, b) in enumerate(zip(rank0, rank1, strict=True)):
        for net in ("actor", "critic"):  # weights, Gaussian std and observation normaliser, bit for bit
            assert a[net].keys() == b[net].keys()
            differ = [name for name in a[net] if not torch.equal(a[net][name], b[net][name])]
            assert differ == [], f"update {k}: {net} {differ}"
        assert a["lr"] == b["lr"]
        # seed + rank: each rank learnt from its own rollouts
        assert not torch.equal(a["rewards"], b["rewards"]), f"update {k}"
    assert not torch.equal(rank0[0]["actor"]["mlp.0.weight"], rank0[-1]["actor"]["mlp.0.weight"])  # it learnt


@pytest.mark.slow
def test_rank_0_alone_writes_one_run_folder(two_ranks):
    root, _ = two_ranks
    out = root / "out"
    assert sorted(p.name for p in out.iterdir()) == ["fake_s0"]  # no .partial, nothing from rank 1
    run = out / "fake_s0"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["model_0.pt", "model_2.pt", "model_4.pt"]
    manifest = json.loads((run / "run_manifest.json").read_text())
    assert manifest["launch"] == {"world_size": 2, "device": "cpu"}
    summary = json.loads((run / "live/metrics.json").read_text())
    assert summary["step"] == 4 and summary["Train"]["env_steps"] == 5 * 4 * 2 * 2  # iterations x steps x envs x ranks
    tsv = (run / "live/plots/metrics/Reward/total.tsv").read_text().splitlines()
    assert [line.split("\t")[0] for line in tsv[1:]] == ["0", "1", "2", "3", "4"]
    timings = json.loads((run / "timings.json").read_text())["iterations"]
    assert [t["iteration"] for t in timings] == [0, 1, 2, 3, 4]
    policy = torch.load(run / "policy.pt", weights_only=False)
    last = load_dumps(root / "dumps", 0)[-1]["actor"]
    assert all(torch.equal(policy["actor_state_dict"][k], v) for k, v in last.items())


# ------------------------------------------------------------------------------ bad launches


def rl_args(tmp_path: Path, *argv: str) -> list[str]:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"rl": {"out_dir": str(tmp_path / "out"), "iterations": 1}}))
    return ["rl", "--params", str(params), *argv]


def error_lines(done) -> list[str]:
    return [line for p in done for line in p.stderr.splitlines() if line.startswith("handeye: error:")]


@pytest.mark.slow
@pytest.mark.parametrize(("rank1", "says"), [
    (["--encoder", "out/models/nope/encoder.pt"], ["rank 1 of 2", "nope/encoder.pt"]),
    (["--encoder", "random:vit_demo_patch8_64", "--seed", "1"], ["seed: 0 on rank 0, 1 on rank 1"]),
], ids=["missing-encoder-on-rank-1", "other-params-on-rank-1"])
def test_a_bad_rank_stops_every_rank_with_one_line(tmp_path, ranks, rank1, says):
    done = ranks([rl_args(tmp_path, "--encoder", "random:vit_demo_patch8_64"), rl_args(tmp_path, *rank1)],
                 cwd=tmp_path)
    assert [p.returncode for p in done] == [2, 2]
    lines = error_lines(done)
    assert len(lines) == 1 and all(s in lines[0] for s in says), lines
    assert "Traceback" not in done[0].stderr + done[1].stderr
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ pure parts


def test_world_size_1_keeps_rsl_rls_setup(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    runner = Runner.__new__(Runner)  # the multi-GPU setup alone, before any env or model exists
    runner.device, runner.cfg = "cpu", {}
    runner._configure_multi_gpu()
    assert runner.cfg["multi_gpu"] is None and not runner.is_distributed and runner.gpu_global_rank == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")
def test_a_gpu_rank_without_a_gpu_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    runner = Runner.__new__(Runner)
    runner.device, runner.cfg = "cuda:1", {}
    with pytest.raises(HandEyeError, match="no GPU"):
        runner._configure_multi_gpu()


def test_logged_env_steps_count_every_rank():
    cfg = RLConfig(num_steps_per_env=16)
    one = train_cfg(cfg, 8, Path("live"), Path("t.json"), False)
    four = train_cfg(cfg, 8, Path("live"), Path("t.json"), False, world_size=4)
    assert one["logger"]["steps_per_iteration"] == 16 * 8
    assert four["logger"]["steps_per_iteration"] == 16 * 8 * 4
    assert {k: v for k, v in four.items() if k != "logger"} == {k: v for k, v in one.items() if k != "logger"}


def test_isaaclab_rank_runs_on_its_gpu_with_its_seed():
    cfg = RLConfig(seed=3)
    single = env_cfg_overrides(cfg, World())
    assert single["seed"] == 3 and single["sim.device"] == "cuda:0"
    # the second GPU of the second node of 2 x 4: Isaac Lab's cuda:LOCAL_RANK; the seed adds the global rank
    rank5 = env_cfg_overrides(cfg, World(rank=5, world_size=8, local_rank=1))
    assert rank5["seed"] == 8 and rank5["sim.device"] == "cuda:1"
    assert {k: v for k, v in rank5.items() if k not in ("seed", "sim.device")} == \
           {k: v for k, v in single.items() if k not in ("seed", "sim.device")}


def test_isaaclab_refuses_the_mujoco_task_variants():
    cfg = RLConfig(env=EnvConfig(goal_max_angle=0.5, start_max_angle=0.0))
    with pytest.raises(HandEyeError, match=r"rl\.env\.goal_max_angle, rl\.env\.start_max_angle: a task variant"):
        check_task(cfg)
    check_task(RLConfig())


def test_isaaclab_overrides_set_nested_fields_and_refuse_unknown_ones():
    env_cfg = SimpleNamespace(seed=0, scene=SimpleNamespace(num_envs=1225), sim=SimpleNamespace(device="cuda:0"))
    apply_overrides(env_cfg, {"seed": 4, "scene.num_envs": 16, "sim.device": "cuda:2"})
    assert (env_cfg.seed, env_cfg.scene.num_envs, env_cfg.sim.device) == (4, 16, "cuda:2")
    with pytest.raises(HandEyeError, match=r"no field scene.num_env;"):
        apply_overrides(env_cfg, {"scene.num_env": 16})


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
