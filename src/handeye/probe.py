"""Stage `probe`: the MAE linear probe on cached features; verb, noun and action top-1/top-5 on EPIC.

Recipe of the official MAE linear probe (main_linprobe.py), on features cached once by `handeye features`:
BatchNorm1d without affine (eps 1e-6) + a linear layer, LARS, lr = blr * batch / 256, per-iteration warmup
then cosine. Two heads share the normalised feature: verb and noun; an action is right only when both are.
Per-frame features (features.aggregate = frames) train on every frame and are scored per segment by
averaging the K frames' softmax.

`handeye probe --encoder NAME | --checkpoint PATH --data-dir DIR --epochs 100 --batch-size 256` extracts
the features first when its cache (out/features/<name>) is absent or stale; `--features DIR` reads a cache
as is. `handeye probe --rows` (the DVC stage) probes every row of the report, out/features/KEY ->
out/probe/KEY, in one process: a probe trains in about a second, starting a process takes several.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import trange

from handeye import features as feats
from handeye import repro
from handeye.config import load_config
from handeye.errors import HandEyeError

PROBE_ROOT = Path("out/probe")
METRICS = ("verb_top1", "verb_top5", "noun_top1", "noun_top5", "action_top1", "action_top5")


@dataclass(frozen=True)
class ProbeConfig:
    epochs: int = 100  # passes over the cached training features (MAE: 90)
    batch_size: int = 256  # features per LARS step
    blr: float = 0.1  # base learning rate; lr = blr * batch_size / 256 (MAE linear probe)
    min_lr: float = 0.0  # floor of the cosine schedule
    warmup_epochs: int = 10  # linear warmup from 0, per iteration (MAE: 10)
    momentum: float = 0.9  # LARS momentum (MAE's LARS)
    weight_decay: float = 0.0  # on the linear weights only (MAE linear probe: 0)
    trust_coeff: float = 0.001  # LARS trust coefficient (MAE's LARS)
    threads: int = 1  # torch CPU threads: the probe's matrices are small, so OpenMP syncs cost more than
    #                   they save (20x slower per epoch with 2 threads on a loaded 2-core machine)
    seed: int = 0


class LinearProbe(nn.Module):
    """features (N, D) -> (verb logits (N, V), noun logits (N, U)); affine-free BN shared by two heads."""

    def __init__(self, dim: int, num_verbs: int, num_nouns: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.verb = nn.Linear(dim, num_verbs)
        self.noun = nn.Linear(dim, num_nouns)
        for head in (self.verb, self.noun):  # MAE: trunc_normal_(std=0.01) weights, zero bias
            nn.init.trunc_normal_(head.weight, std=0.01)
            nn.init.zeros_(head.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.norm(x)
        return self.verb(x), self.noun(x)


def build_optimizer(model: LinearProbe, cfg: ProbeConfig, lr: float) -> torch.optim.Optimizer:
    """timm LARS set up as MAE's: matrices always trust-ratio adapted (and decayed), biases plain SGD."""
    from timm.optim import Lars

    weights = [p for p in model.parameters() if p.ndim > 1]
    biases = [p for p in model.parameters() if p.ndim <= 1]
    return Lars([
        {"params": weights, "weight_decay": cfg.weight_decay, "always_adapt": True},
        {"params": biases, "weight_decay": 0.0, "always_adapt": False},
    ], lr=lr, momentum=cfg.momentum, trust_coeff=cfg.trust_coeff)


def lr_at(progress: float, cfg: ProbeConfig, lr: float) -> float:
    """progress: epochs done (fractional) -> learning rate: linear warmup, then half-cycle cosine."""
    if progress < cfg.warmup_epochs:
        return lr * progress / cfg.warmup_epochs
    t = (progress - cfg.warmup_epochs) / max(1e-12, cfg.epochs - cfg.warmup_epochs)
    return cfg.min_lr + (lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def train_one_epoch(model: LinearProbe, opt: torch.optim.Optimizer, x: torch.Tensor, verb: torch.Tensor,
                    noun: torch.Tensor, epoch: int, cfg: ProbeConfig, lr: float,
                    gen: torch.Generator) -> float:
    """One shuffled pass over x: (N, D); returns the mean loss (verb CE + noun CE)."""
    model.train()
    order = torch.randperm(len(x), generator=gen)
    steps = max(1, len(x) // cfg.batch_size)  # drop_last, as MAE; at least one step on tiny sets
    total = 0.0
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(epoch + step / steps, cfg, lr)
        idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
        logits_v, logits_n = model(x[idx])
        loss = F.cross_entropy(logits_v, verb[idx]) + F.cross_entropy(logits_n, noun[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.item()
    return total / steps


@torch.inference_mode()
def evaluate(model: LinearProbe, x: torch.Tensor, verb: torch.Tensor, noun: torch.Tensor) -> dict[str, float]:
    """x: (N, D) or (N, K, D) (scores averaged over K) -> top-1/top-5 accuracy of verb, noun and action."""
    model.eval()
    n, k = len(x), (x.shape[1] if x.ndim == 3 else 1)
    logits_v, logits_n = model(x.reshape(n * k, -1))
    p_v = logits_v.softmax(-1).reshape(n, k, -1).mean(1)
    p_n = logits_n.softmax(-1).reshape(n, k, -1).mean(1)
    return {**topk_accuracy(p_v, verb, "verb"), **topk_accuracy(p_n, noun, "noun"),
            **action_accuracy(p_v, p_n, verb, noun)}


def topk_accuracy(scores: torch.Tensor, target: torch.Tensor, name: str, ks=(1, 5)) -> dict[str, float]:
    top = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices
    hit = top == target[:, None]
    return {f"{name}_top{k}": hit[:, :k].any(1).float().mean().item() for k in ks}


def action_accuracy(p_v: torch.Tensor, p_n: torch.Tensor, verb: torch.Tensor, noun: torch.Tensor,
                    ks=(1, 5)) -> dict[str, float]:
    """Action score = p(verb) * p(noun) (EPIC's convention); top-1 is right iff verb and noun both are.

    The k best (verb, noun) products lie among the k best verbs x k best nouns, so only k*k are scored.
    """
    k = max(ks)
    sv, iv = p_v.topk(min(k, p_v.shape[1]), dim=1)
    sn, i_n = p_n.topk(min(k, p_n.shape[1]), dim=1)
    joint = (sv[:, :, None] * sn[:, None, :]).flatten(1)  # (N, kv*kn)
    pair_v = iv[:, :, None].expand(-1, -1, i_n.shape[1]).flatten(1)
    pair_n = i_n[:, None, :].expand(-1, iv.shape[1], -1).flatten(1)
    order = joint.argsort(dim=1, descending=True, stable=True)[:, :k]
    hit = (pair_v.gather(1, order) == verb[:, None]) & (pair_n.gather(1, order) == noun[:, None])
    return {f"action_top{j}": hit[:, :j].any(1).float().mean().item() for j in ks}


@dataclass(frozen=True)
class ProbeResult:
    out_dir: Path
    metrics: dict[str, float]
    train_seconds: float


def run_probe(cfg: ProbeConfig, features_dir: str | Path, out_dir: str | Path,
              train_split: str = "train", eval_split: str = "validation") -> ProbeResult:
    """Train the probe on ``features_dir/<train_split>.pt``, score ``<eval_split>.pt``; write ``out_dir``."""
    from dvclive import Live

    repro.seed_everything(cfg.seed, threads=cfg.threads)
    meta = _read_meta(features_dir)
    train = feats.load_split_features(features_dir, train_split)
    val = feats.load_split_features(features_dir, eval_split)
    x, verb, noun = _flatten_frames(train)
    if len(x) < 2:
        raise HandEyeError(f"{features_dir}/{train_split}.pt has {len(x)} sample(s); the probe needs 2+")
    model = LinearProbe(x.shape[1], len(meta["verbs"]), len(meta["nouns"]))
    lr = cfg.blr * cfg.batch_size / 256
    opt = build_optimizer(model, cfg, lr)
    gen = repro.torch_generator(cfg.seed)
    start = time.perf_counter()
    with repro.atomic_dir(out_dir) as tmp:
        with Live(str(tmp), save_dvc_exp=False, dvcyaml=None) as live:
            for epoch in trange(cfg.epochs, desc="probe", unit="epoch", leave=False):
                loss = train_one_epoch(model, opt, x, verb, noun, epoch, cfg, lr, gen)
                metrics = evaluate(model, val["features"], val["verb"], val["noun"])
                # Setting the step instead of next_step(): next_step() rewrites the summary, re-reads every
                # curve and fsyncs a VS Code signal file each epoch (0.7-2.5 s per 100-epoch probe on the demo).
                live.step = epoch
                live.log_metric("train/loss", loss)
                for name in METRICS:
                    live.log_metric(f"val/{name}", metrics[name])
        seconds = time.perf_counter() - start
        repro.atomic_torch_save({"model": model.state_dict(), "config": dataclasses.asdict(cfg),
                                 "features": meta}, tmp / "probe.pt")
        repro.atomic_write_json(tmp / "timings.json", {"train_s": seconds, "epochs": cfg.epochs,
                                                       "train_samples": len(x)})
        repro.write_manifest(tmp, "probe", {"features_dir": str(features_dir), **dataclasses.asdict(cfg)},
                             cfg.seed)
    return ProbeResult(Path(out_dir), metrics, seconds)


def _flatten_frames(split: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-frame features (N, K, D) train as N*K samples with their segment's labels."""
    x, verb, noun = split["features"], split["verb"], split["noun"]
    if x.ndim == 3:
        k = x.shape[1]
        return x.reshape(-1, x.shape[-1]), verb.repeat_interleave(k), noun.repeat_interleave(k)
    return x, verb, noun


def _read_meta(features_dir: str | Path) -> dict[str, Any]:
    path = Path(features_dir) / "meta.json"
    if not path.is_file():
        raise HandEyeError(f"{path} not found; run `handeye features` (or dvc repro) first")
    return json.loads(path.read_text())


# --------------------------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    feats.add_encoder_arguments(p, rows_help="every row of report.encoders: read the feature cache "
                                             "out/features/KEY as is, write <report.probe_root>/KEY")
    p.add_argument("--epochs", type=int, help="probe.epochs")
    p.add_argument("--batch-size", type=int, help="probe.batch_size")
    p.add_argument("--blr", type=float, help="probe.blr")
    p.add_argument("--seed", type=int, help="probe.seed")
    p.add_argument("--features", type=Path,
                   help="read this feature cache as is (no extraction); default: out/features/<encoder>, "
                        "extracted when absent or stale")
    p.add_argument("--out", type=Path, help="output folder (default out/probe/<encoder>)")


def main(args: argparse.Namespace) -> int:
    cfg = load_config(ProbeConfig, "probe", args.params, {
        "epochs": args.epochs, "batch_size": args.batch_size, "blr": args.blr, "seed": args.seed})
    if args.rows:
        return probe_rows(cfg, args.params)
    spec = args.encoder or args.checkpoint
    features_dir = args.features
    if features_dir is None:
        fcfg = feats.features_config(args)
        features_dir = feats.default_dir(feats.FEATURES_ROOT, spec)
        if not feats.cache_is_current(features_dir, fcfg, spec):
            print(f"extracting features of {spec} into {features_dir}")
            feats.run_features(fcfg, spec, features_dir)
    out = args.out or feats.default_dir(PROBE_ROOT, spec)
    _print_result(spec, run_probe(cfg, features_dir, out))
    return 0


def probe_rows(cfg: ProbeConfig, params: str | Path) -> int:
    """Probe the cached features of every report row, in the report's order."""
    from handeye.report import ReportConfig

    report = load_config(ReportConfig, "report", params, {})
    for key in report.rows():
        _print_result(key, run_probe(cfg, feats.FEATURES_ROOT / key, Path(report.probe_root) / key))
    return 0


def _print_result(name: str, res: ProbeResult) -> None:
    m = res.metrics
    print(f"probe {name}: top-1 verb {m['verb_top1']:.1%} noun {m['noun_top1']:.1%} "
          f"action {m['action_top1']:.1%} (top-5 action {m['action_top5']:.1%}) "
          f"-> {res.out_dir}/metrics.json")
