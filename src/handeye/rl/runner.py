"""The PPO trainer both RL backends share: rsl-rl's OnPolicyRunner (atomic checkpoints, our log writer, any
world size) and the run folder's life cycle, one rank or many.

Imported by ``handeye.rl.train`` (MuJoCo, and the CLI) and by ``handeye.rl.envs.isaaclab.train`` (Isaac Lab); it imports
neither, so the dependency flows one way: ``rl -> envs.isaaclab -> rl_runner`` and ``rl -> rl_runner``.

Under torchrun (``WORLD_SIZE``/``RANK``/``LOCAL_RANK``) every rank steps its own ``num_envs`` environments,
seeded ``seed + rank``, and PPO averages gradients, KL and observation statistics over the ranks (rsl-rl), so
every rank holds the same policy after each update. Rank 0 alone writes the run folder: it logs (rsl-rl gives
the log writer to rank 0 only; its episode metrics are rank 0's envs), checkpoints, and renames the folder into
place once every rank finished.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from rsl_rl.runners import OnPolicyRunner
from rsl_rl.utils.log_writer import LogWriter

from handeye import distributed, repro
from handeye.distributed import World
from handeye.errors import HandEyeError
from handeye.rl.config import RLConfig
from handeye.rl.envs.base import obs_groups

LOG_WRITER = "handeye.rl.runner:DvcLiveWriter"  # rsl-rl builds the writer from this name, on rank 0


def train_cfg(cfg: RLConfig, num_envs: int, live_dir: Path, timings: Path, resume: bool,
              world_size: int = 1) -> dict[str, Any]:
    """rsl-rl 5.5 OnPolicyRunner config (Isaac Lab's RslRlOnPolicyRunnerCfg.to_dict() layout).
    num_envs: per rank; the logged env steps count every rank's."""
    return {
        "num_steps_per_env": cfg.num_steps_per_env,
        "save_interval": cfg.save_interval,
        "obs_groups": obs_groups(cfg.critic_images),
        "check_for_nan": True,
        "logger": {"class_name": LOG_WRITER, "live_dir": str(live_dir), "timings": str(timings),
                   "steps_per_iteration": cfg.num_steps_per_env * num_envs * world_size, "total": cfg.iterations,
                   "resume": resume},
        "algorithm": {
            "class_name": "PPO", "learning_rate": cfg.learning_rate, "schedule": cfg.schedule,
            "desired_kl": cfg.desired_kl, "num_learning_epochs": cfg.num_learning_epochs,
            "num_mini_batches": cfg.num_mini_batches, "clip_param": cfg.clip_param,
            "entropy_coef": cfg.entropy_coef, "value_loss_coef": cfg.value_loss_coef,
            "use_clipped_value_loss": cfg.use_clipped_value_loss, "gamma": cfg.gamma, "lam": cfg.lam,
            "max_grad_norm": cfg.max_grad_norm,
        },
        "actor": {"class_name": "MLPModel", "hidden_dims": list(cfg.actor_hidden_dims),
                  "activation": cfg.activation, "obs_normalization": cfg.obs_normalization,
                  "distribution_cfg": {"class_name": "GaussianDistribution", "init_std": cfg.init_noise_std}},
        "critic": {"class_name": "MLPModel", "hidden_dims": list(cfg.critic_hidden_dims),
                   "activation": cfg.activation, "obs_normalization": cfg.obs_normalization},
    }


def run_config(cfg: RLConfig) -> dict[str, Any]:
    """The resolved config of one run, saved in its checkpoints, policy and manifest: every field but the sweep
    (``encoders``, ``baselines``, ``seeds``), which is not a setting of the run. Saving it would change every run's files when
    a run is added, though DVC rightly reruns none of them (the rl stage does not list the sweep). Not the world
    size either: the manifest records the launch, and a run may resume on another one."""
    config = dataclasses.asdict(cfg)
    del config["encoders"], config["baselines"], config["seeds"]
    return config


# ------------------------------------------------------------------------------------------------ logging


class DvcLiveWriter(LogWriter):
    """rsl-rl log writer: deterministic scalars -> dvclive (step = iteration); wall clock -> timings.json.

    rsl-rl's logger calls ``add_scalar`` tag by tag; an iteration is complete when the next one's first tag
    arrives (or at ``stop``). ``Perf/*`` tags and the ``*/time`` duplicates are timings, kept apart so that
    the dvclive folder is identical for the same seed on the same machine.
    """

    def __init__(self, log_dir: str, live_dir: str, timings: str, steps_per_iteration: int, total: int,
                 resume: bool = False):
        from dvclive import Live
        from tqdm import tqdm

        self.live = Live(live_dir, save_dvc_exp=False, dvcyaml=None, resume=resume, report=None)
        self.timings_path = Path(timings)
        self.timings = json.loads(self.timings_path.read_text())["iterations"] if resume and \
            self.timings_path.is_file() else []
        self.steps_per_iteration = steps_per_iteration
        self.it: int | None = None
        self.metrics: dict[str, float] = {}
        self.perf: dict[str, float] = {}
        self.bar = tqdm(total=total, initial=len(self.timings), desc="rl", unit="it")

    def add_scalar(self, tag: str, scalar_value: float, global_step: int) -> None:
        if tag.endswith("/time"):
            return  # rsl-rl repeats reward/length keyed by elapsed seconds; timings.json has the clock
        if global_step != self.it:
            self._flush()
            self.it = global_step
        value = float(scalar_value.item() if hasattr(scalar_value, "item") else scalar_value)
        (self.perf if tag.startswith("Perf/") else self.metrics)[tag] = value

    def stop(self) -> None:
        self._flush()
        self.bar.close()

    def _flush(self) -> None:
        if self.it is None or not (self.metrics or self.perf):
            return
        self.live.step = self.it
        self.metrics["Train/env_steps"] = (self.it + 1) * self.steps_per_iteration
        for tag in sorted(self.metrics):
            self.live.log_metric(tag, self.metrics[tag])
        self.live.make_summary()
        seconds = self.perf.get("Perf/collection_time", 0.0) + self.perf.get("Perf/learning_time", 0.0)
        wall = (self.timings[-1]["wall_s"] if self.timings else 0.0) + seconds
        self.timings.append({"iteration": self.it, "collection_s": self.perf.get("Perf/collection_time"),
                             "learning_s": self.perf.get("Perf/learning_time"), "wall_s": wall})
        repro.atomic_write_json(self.timings_path, {"iterations": self.timings})
        self.bar.set_postfix(reward=f"{self.metrics.get('Reward/total', float('nan')):.2f}")
        self.bar.update(1)
        self.metrics, self.perf = {}, {}


# ------------------------------------------------------------------------------------------------ runner


class Runner(OnPolicyRunner):
    """OnPolicyRunner whose checkpoints are atomic, carry the resolved config, and resume at it + 1, and whose
    multi-process path also runs on the CPU (gloo)."""

    config: dict[str, Any] | None = None  # the resolved RLConfig (run_rl sets it)

    def save(self, path: str, infos: dict | None = None) -> None:
        state = self.alg.save()
        state.update(iter=self.current_learning_iteration, infos=infos, config=self.config)
        repro.atomic_torch_save(state, path)

    def load(self, path: str, load_cfg: dict | None = None, strict: bool = True,
             map_location: str | None = None) -> dict:
        infos = super().load(path, load_cfg, strict, map_location)
        self.current_learning_iteration += 1  # rsl-rl stores the last finished iteration
        return infos

    def quiet(self) -> Runner:
        # rsl-rl would write a git diff of every repository it finds; the run manifest records the commit.
        self.logger._store_code_state = list
        return self

    def _configure_multi_gpu(self) -> None:
        """rsl-rl's multi-GPU setup made device-neutral: the launch as torchrun describes it, nccl on
        cuda:LOCAL_RANK (rsl-rl's own rule) or gloo on the CPU. Joins the process group unless the stage already
        did (``distributed.process_group``, so that errors before training reach every rank)."""
        world = distributed.world_from_env()
        if not world.distributed:
            super()._configure_multi_gpu()
            return
        device = torch.device(self.device)
        expected = distributed.device_for(world, device.type)
        if device != expected:
            raise HandEyeError(f"rank {world.rank} (local rank {world.local_rank}) was given device {self.device}; "
                               f"a rank trains on {expected} (cuda:LOCAL_RANK, or cpu)")
        self.is_distributed = True
        self.gpu_world_size, self.gpu_global_rank, self.gpu_local_rank = (world.world_size, world.rank,
                                                                           world.local_rank)
        self.cfg["multi_gpu"] = {"global_rank": world.rank, "local_rank": world.local_rank,
                                 "world_size": world.world_size}
        if not torch.distributed.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
            torch.distributed.init_process_group(distributed.backend_for(device), rank=world.rank,
                                                 world_size=world.world_size, timeout=distributed.TIMEOUT)


# ------------------------------------------------------------------------------------------------ run folder


def last_checkpoint(folder: Path) -> Path | None:
    found = sorted(folder.glob("model_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    return found[-1] if found else None


def truncate_metrics(live_dir: Path, timings: Path, start: int) -> None:
    """Drop rows of iterations >= ``start`` (logged after the checkpoint a resumed run restarts from)."""
    for tsv in live_dir.glob("plots/metrics/**/*.tsv"):
        with open(tsv, newline="") as f:
            rows = list(csv.reader(f, delimiter="\t"))
        step = rows[0].index("step")
        kept = [rows[0]] + [r for r in rows[1:] if int(r[step]) < start]
        with repro.atomic_path(tsv) as tmp, open(tmp, "w", newline="") as f:
            csv.writer(f, delimiter="\t", lineterminator=os.linesep).writerows(kept)
    if timings.is_file():
        its = [t for t in json.loads(timings.read_text())["iterations"] if t["iteration"] < start]
        repro.atomic_write_json(timings, {"iterations": its})


def work_folder(final: Path) -> Path:
    """Where a run is built: ``.<name>.partial`` beside ``final``, renamed into place when training ends."""
    return final.with_name(f".{final.name}.partial")


def prepare_folder(final: Path, work: Path, resume: bool) -> bool:
    """-> whether there is a run to resume in ``work``."""
    if resume and not work.exists() and final.exists():
        os.replace(final, work)
    if resume and last_checkpoint(work / "checkpoints"):
        return True
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    return False


def start_run(world: World, final: Path, resume: bool) -> Path | None:
    """Collective: rank 0 prepares the work folder; -> the checkpoint every rank resumes from (None: start).
    Every rank must see rank 0's checkpoint (one filesystem for all nodes)."""
    work, problem, ckpt = work_folder(final), None, None
    if world.is_main:
        try:
            ckpt = last_checkpoint(work / "checkpoints") if prepare_folder(final, work, resume) else None
        except OSError as e:
            problem = f"cannot prepare the run folder {work}: {e}; check the rl.out_dir permissions"
    distributed.agree(world, problem)
    ckpt = distributed.all_gather_object(world, ckpt)[0]
    distributed.agree(world, None if ckpt is None or ckpt.is_file() else
                      f"cannot see rank 0's checkpoint {ckpt}; put rl.out_dir on a filesystem every node sees")
    return ckpt


def train_policy(cfg: RLConfig, env, world: World, final: Path, ckpt: Path | None, config: dict[str, Any],
                 device: str = "cpu") -> Runner:
    """PPO from scratch or from ``ckpt`` (every rank loads it) up to ``cfg.iterations``; rank 0 logs and
    checkpoints into ``final``'s work folder."""
    work = work_folder(final)
    live_dir, timings, ckpts = work / "live", work / "timings.json", work / "checkpoints"
    resuming = ckpt is not None
    with contextlib.redirect_stdout(io.StringIO()):  # rsl-rl prints a page per iteration; tqdm reports
        runner = Runner(env, train_cfg(cfg, env.num_envs, live_dir, timings, resuming, world.world_size),
                        log_dir=str(ckpts), device=device)
        runner.config = config
        runner.quiet()
        if resuming:
            runner.load(str(ckpt), map_location=device)
            if world.is_main:
                truncate_metrics(live_dir, timings, runner.current_learning_iteration)
        remaining = max(0, cfg.iterations - runner.current_learning_iteration)
        runner.learn(remaining, init_at_random_ep_len=cfg.init_at_random_ep_len and not resuming)
    return runner


def policy_state(runner: Runner, env, config: dict[str, Any], encoder) -> dict[str, Any]:
    """policy.pt: the final actor, the resolved config, the observation sizes and the encoder it reads."""
    return {"actor_state_dict": runner.alg.get_policy().state_dict(), "config": config,
            "obs_dims": {k: int(v.shape[-1]) for k, v in env.get_observations().items()},
            "encoder": {"spec": config["encoder"], "name": encoder.name, "embed_dim": encoder.embed_dim}}


def finish_run(world: World, final: Path, policy: dict[str, Any], config: dict[str, Any], seed: int,
               device: str) -> Path:
    """Collective: once every rank finished training, rank 0 writes policy.pt and the manifest and renames
    the work folder to ``final``; -> ``final`` (on every rank, after it is in place)."""
    distributed.barrier(world)
    if world.is_main:
        work = work_folder(final)
        repro.atomic_torch_save(policy, work / "policy.pt")
        repro.write_manifest(work, "rl", config, seed,
                             launch={"world_size": world.world_size, "device": str(device)})
        if final.exists():
            shutil.rmtree(final)
        os.replace(work, final)
    distributed.barrier(world)
    return final
