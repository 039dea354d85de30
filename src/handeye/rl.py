"""Stage `rl`: PPO (rsl-rl's OnPolicyRunner) on the two-camera cube reorientation task, through a frozen encoder.

    handeye rl --encoder imagenet --seed 0 [--backend mujoco|isaaclab] [--resume]

writes ``out/rl/<encoder>_s<seed>/``: ``live/`` (dvclive metrics, one step per PPO iteration, bit-for-bit
repeatable), ``timings.json`` (wall clock: the one output that cannot repeat), ``checkpoints/model_<it>.pt``,
``policy.pt`` (final actor + resolved config) and ``run_manifest.json``. The folder is built as
``.<name>.partial`` beside it and renamed into place when training ends; ``--resume`` continues from the
last checkpoint of that partial folder (or of a finished run, to train it further).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import io
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from rsl_rl.runners import OnPolicyRunner
from rsl_rl.utils.log_writer import LogWriter

from handeye import repro
from handeye.config import PARAMS_FILE, load_config
from handeye.envs import BACKENDS
from handeye.envs.base import OBS_GROUPS
from handeye.errors import HandEyeError
from handeye.rl_config import RLConfig, run_name

ISAACLAB_HINT = ("the isaaclab backend runs only inside the Isaac Lab image on a GPU machine: build and run "
                 "docker/Dockerfile.isaaclab (see README)")


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise HandEyeError(f"unknown backend '{backend}'; known: {', '.join(BACKENDS)} "
                           f"(mujoco runs here on the CPU; {ISAACLAB_HINT})")


def train_cfg(cfg: RLConfig, num_envs: int, live_dir: Path, timings: Path, resume: bool) -> dict[str, Any]:
    """rsl-rl 5.5 OnPolicyRunner config (Isaac Lab's RslRlOnPolicyRunnerCfg.to_dict() layout)."""
    return {
        "num_steps_per_env": cfg.num_steps_per_env,
        "save_interval": cfg.save_interval,
        "obs_groups": {k: list(v) for k, v in OBS_GROUPS.items()},
        "check_for_nan": True,
        "logger": {"class_name": "handeye.rl:DvcLiveWriter", "live_dir": str(live_dir), "timings": str(timings),
                   "steps_per_iteration": cfg.num_steps_per_env * num_envs, "total": cfg.iterations,
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
    """OnPolicyRunner whose checkpoints are atomic, carry the resolved config, and resume at it + 1."""

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


def _prepare_folder(final: Path, work: Path, resume: bool) -> bool:
    """-> whether there is a run to resume in ``work``."""
    if resume and not work.exists() and final.exists():
        os.replace(final, work)
    if resume and last_checkpoint(work / "checkpoints"):
        return True
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    return False


def run_config(cfg: RLConfig) -> dict[str, Any]:
    """The resolved config of one run, saved in its checkpoints, policy and manifest: every field but the sweep
    (``encoders``, ``seeds``), which is not a setting of the run. Saving it would change every run's files when
    a run is added, though DVC rightly reruns none of them (the rl stage does not list the sweep)."""
    config = dataclasses.asdict(cfg)
    del config["encoders"], config["seeds"]
    return config


def run_rl(cfg: RLConfig, resume: bool = False, encoder=None) -> Path:
    """Train one policy; -> the finished run folder. ``encoder``: an ``Encoder`` to use instead of loading
    ``cfg.encoder`` (tests)."""
    check_backend(cfg.backend)
    if cfg.backend == "isaaclab":
        from handeye.envs.isaaclab import run_isaaclab

        return run_isaaclab(cfg, resume)
    if encoder is None:
        from handeye.encoders import load_encoder

        encoder = load_encoder(cfg.encoder)
    from handeye.sim.assets import require_egl

    require_egl()
    final = Path(cfg.out_dir) / run_name(cfg.encoder, cfg.seed)
    work = final.with_name(f".{final.name}.partial")
    resuming = _prepare_folder(final, work, resume)
    repro.seed_everything(cfg.seed, threads=cfg.threads)

    from handeye.envs.mujoco_env import MujocoCubeEnv

    env = MujocoCubeEnv(cfg.env, encoder, seed=cfg.seed)
    live_dir, timings, ckpts = work / "live", work / "timings.json", work / "checkpoints"
    config = run_config(cfg)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # rsl-rl prints a page per iteration; tqdm reports
            runner = Runner(env, train_cfg(cfg, env.num_envs, live_dir, timings, resuming), log_dir=str(ckpts))
            runner.config = config
            runner.quiet()
            if resuming:
                runner.load(str(last_checkpoint(ckpts)))
                truncate_metrics(live_dir, timings, runner.current_learning_iteration)
            remaining = max(0, cfg.iterations - runner.current_learning_iteration)
            runner.learn(remaining, init_at_random_ep_len=cfg.init_at_random_ep_len and not resuming)
        policy = {"actor_state_dict": runner.alg.get_policy().state_dict(), "config": config,
                  "obs_dims": {k: int(v.shape[-1]) for k, v in env.get_observations().items()},
                  "encoder": {"spec": cfg.encoder, "name": encoder.name, "embed_dim": encoder.embed_dim}}
    finally:
        env.close()
    repro.atomic_torch_save(policy, work / "policy.pt")
    repro.write_manifest(work, "rl", config, cfg.seed)
    if final.exists():
        shutil.rmtree(final)
    os.replace(work, final)
    return final


# ------------------------------------------------------------------------------------------------ CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--encoder", help="encoder: registry name (random, imagenet, ego_frozen, ...) or checkpoint")
    p.add_argument("--backend", help=f"simulator: {' or '.join(BACKENDS)} (default: params rl.backend)")
    p.add_argument("--seed", type=int, help="seed (default: params rl.seed)")
    p.add_argument("--iterations", type=int, help="PPO iterations (default: params rl.iterations)")
    p.add_argument("--out-dir", dest="out_dir", help="parent folder of the run (default: out/rl)")
    p.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    p.add_argument("--params", type=Path, default=PARAMS_FILE, help="parameter file")


def main(args: argparse.Namespace) -> int:
    overrides = {k: getattr(args, k) for k in ("encoder", "backend", "seed", "iterations", "out_dir")}
    cfg = load_config(RLConfig, "rl", args.params, overrides)
    start = time.perf_counter()
    out = run_rl(cfg, resume=args.resume)
    print(f"rl: {cfg.encoder} seed {cfg.seed}: {cfg.iterations} iterations in "
          f"{time.perf_counter() - start:.0f} s -> {out}")
    return 0
