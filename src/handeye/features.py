"""Stage `features`: embed the K sampled frames of every EPIC segment once per encoder and cache them.

The official MAE linear probe re-encodes every image every epoch although the encoder is frozen; caching
the features turns 100 probe epochs into 100 passes over a small float matrix (benchmarks/bench_probe.py).

`handeye features --rows` (the DVC stage) writes out/features/KEY for every row of report.encoders,
decoding each split once for all encoders. Output folder, one per encoder::

    <split>.pt        {"features": float32 (N, D) or (N, K, D), "verb": int64 (N,), "noun": int64 (N,),
                       "narration_id": [str] * N}   for each split (train, validation)
    meta.json         encoder, dims, classes, per-split counts and skipped segments, the cache key
    timings.json      wall-clock seconds (decoding, shared by the encoders of a run, and decoding + this
                      encoder's embedding; the slowest rank's under torchrun), images/s and the world size
                      (not compared bit for bit)
    run_manifest.json its "launch" names the world size and device

    torchrun --nproc_per_node N -m handeye features --rows     # segments sharded over N ranks

Sharding: the bits of ``encoder.embed`` can depend on the batch it runs in (oneDNN picks kernels by shape),
so the batches are planned from the annotations alone, before anything is decoded, and do not depend on
the world size: the segments of each video (videos in order of first appearance) cut into chunks of
batch_size // K segments, never across videos. Rank r embeds batches r, r+N, r+2N, ... and decodes only
their segments; rank 0 gathers every rank's features and skipped segments, merges them in segment order and
alone writes. A segment without frames only makes its batch smaller, the same on every world size, so the
cache is byte-identical to the single-process one (tests/test_features_distributed.py). One exception: a
video that fails to decode part-way costs the segments that one read of it asked for, which under torchrun
are one rank's share of that video, not all of it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm

from handeye import distributed, repro
from handeye.config import PARAMS_FILE, load_config
from handeye.data import epic
from handeye.distributed import RankError, World
from handeye.errors import HandEyeError
from handeye.models import encoders

FEATURES_ROOT = Path("out/features")


@dataclass(frozen=True)
class FeaturesConfig:
    data_dir: str = "data/epic"  # EPIC-KITCHENS-100 layout: PXX/rgb_frames/*.tar or PXX/videos/*.MP4
    annotations_dir: str | None = None  # folder of the annotation CSVs; None: <data_dir>/annotations
    splits: list[str] = field(default_factory=lambda: ["train", "validation"])  # split names or CSV files
    frames_per_segment: int = 4  # K frames at the centres of K equal slices of each segment
    aggregate: Literal["mean", "frames"] = "mean"  # average the K features per segment, or keep all K
    pooling: Literal["cls", "mean"] = "cls"  # CLS token (MAE linear probe) or mean of the patch tokens
    batch_size: int = 64  # images per encoder forward pass
    max_missing_fraction: float = 0.05  # error when more segments than this have no frames or video
    models_root: str = "out/models"  # where registry names of MAE strategies find <name>/encoder.pt
    weights_root: str = "data/weights"  # where DINOv3 names find their folder before trying the Hub
    device: str = "cpu"  # torch device for the encoder
    threads: int = 2  # torch CPU threads; on a loaded 2-core machine 1 thread embedded 3-4x faster than 2
    seed: int = 0


@dataclass(frozen=True)
class FeaturesResult:
    out_dir: Path
    segments: dict[str, int]  # split -> segments with features
    skipped: dict[str, int]
    images_per_s: float


# -------------------------------------------------------------------------------------------- core


def run_features(cfg: FeaturesConfig, encoder_spec: str, out_dir: str | Path,
                 world: World | None = None) -> FeaturesResult:
    """Embed every split of ``cfg.data_dir`` with ``encoder_spec`` and write the cache to ``out_dir``."""
    return run_features_many(cfg, [(encoder_spec, Path(out_dir))], world)[0]


def run_features_many(cfg: FeaturesConfig, targets: Sequence[tuple[str, Path]],
                      world: World | None = None) -> list[FeaturesResult]:
    """Write one cache per (encoder spec, output folder), decoding each split's frames once per input size.

    Decoding a split costs about as much as embedding it with a demo encoder, and at paper scale (ViT-B on a
    GPU) it is most of the work, so encoders that take the same input size share one pass over the videos.
    Every cache is swapped into place only when all of them are complete. world: this process's rank, by
    default as torchrun sets it (world size 1 without torchrun); each rank embeds its share of the batches,
    rank 0 alone writes, and every rank returns the same results.
    """
    world = world or distributed.world_from_env()
    repro.seed_everything(cfg.seed, threads=cfg.threads)
    device = distributed.device_for(world, cfg.device)  # cuda: this rank's GPU, cuda:LOCAL_RANK
    with distributed.process_group(world, device):
        problem = None
        try:
            splits, jobs = prepare(cfg, targets, str(device))
        except HandEyeError as e:  # raised on all ranks through agree, so that no rank waits for one that left
            problem = str(e)
        distributed.agree(world, problem)
        distributed.check_same(world, launch_values(cfg, targets, splits), "features parameters")
        return write_caches(cfg, splits, jobs, world, device)


def prepare(cfg: FeaturesConfig, targets: Sequence[tuple[str, Path]], device: str
            ) -> tuple[dict[str, epic.Annotations], list[_Job]]:
    """Everything that bad params or missing inputs break, before any decoding: annotations and encoders."""
    if not Path(cfg.data_dir).is_dir():
        raise HandEyeError(f"EPIC data folder {cfg.data_dir} not found (features.data_dir / --data-dir)")
    if cfg.batch_size < 1:
        raise HandEyeError(f"features.batch_size must be >= 1, got {cfg.batch_size}")
    splits = {s: epic.load_split(cfg.data_dir, s, cfg.annotations_dir) for s in cfg.splits}
    first = next(iter(splits.values()))
    for ann in splits.values():
        if (ann.verbs, ann.nouns) != (first.verbs, first.nouns):
            raise HandEyeError(f"{ann.source}: class lists differ from those of {first.source}")
    jobs = [_Job(spec, Path(out), encoders.load_encoder(
        spec, models_root=cfg.models_root, weights_root=cfg.weights_root, pooling=cfg.pooling, device=device,
        batch_size=cfg.batch_size)) for spec, out in targets]
    return splits, jobs


def launch_values(cfg: FeaturesConfig, targets: Sequence[tuple[str, Path]],
                  splits: dict[str, epic.Annotations]) -> dict[str, Any]:
    """What every rank must share: the params, the encoders and a digest of each split's annotations (the
    batch plan is made from them, so ranks that read other CSVs would embed a mix of two plans)."""
    digests = {name: hashlib.md5("\n".join(map(repr, ann.segments)).encode()).hexdigest()
               for name, ann in splits.items()}
    return {**dataclasses.asdict(cfg), "targets": [[spec, str(out)] for spec, out in targets],
            "annotations": digests}


def write_caches(cfg: FeaturesConfig, splits: dict[str, epic.Annotations], jobs: list[_Job], world: World,
                 device: torch.device) -> list[FeaturesResult]:
    groups: dict[int, list[_Job]] = {}  # input size -> the encoders that share its decoding pass
    for job in jobs:
        groups.setdefault(job.encoder.preprocess.input_size, []).append(job)
    with contextlib.ExitStack() as stack:
        if world.is_main:
            for job in jobs:
                job.tmp = stack.enter_context(repro.atomic_dir(job.out_dir))
        for name, ann in splits.items():
            for _, group in sorted(groups.items()):
                write_split(cfg, name, ann, group, world)
        first = next(iter(splits.values()))
        for job in jobs:
            total = sum(job.timings[f"{name}_s"] for name in splits)
            job.timings["images_per_s"] = job.images / total if total else 0.0
            job.timings["world_size"] = world.world_size
            if job.tmp is not None:
                write_meta(cfg, job, first, world, device)
    return [FeaturesResult(job.out_dir, {s: m["segments"] for s, m in job.splits.items()},
                           {s: m["skipped"] for s, m in job.splits.items()}, job.timings["images_per_s"])
            for job in jobs]


def write_split(cfg: FeaturesConfig, name: str, ann: epic.Annotations, group: list[_Job], world: World) -> None:
    """Embed one split with the encoders of one input size; rank 0 writes its <split>.pt into each cache."""
    missing = epic.MissingReport()
    feats, keep, decode_s, embed_s = embed_segments([job.encoder for job in group], cfg, ann.segments, missing,
                                                    desc=f"{name}, {len(group)} encoder(s)", world=world)
    try:
        missing.check(cfg.max_missing_fraction, f"{ann.source}")
    except HandEyeError as e:  # every rank holds the merged report, so every rank stops; rank 0 prints
        raise RankError(str(e), quiet=not world.is_main) from None
    if missing.skipped and world.is_main:
        print(f"{name}: {missing.summary()}")
    segs = [ann.segments[i] for i in keep]
    labels = {"verb": torch.tensor([s.verb_class for s in segs], dtype=torch.int64),
              "noun": torch.tensor([s.noun_class for s in segs], dtype=torch.int64),
              "narration_id": [s.narration_id for s in segs]}
    for job, f, seconds in zip(group, feats, embed_s, strict=True):
        if job.tmp is not None:
            repro.atomic_torch_save({"features": f, **labels}, job.tmp / f"{name}.pt")
        job.splits[name] = {"csv": str(ann.source), "segments": len(keep), "skipped": missing.skipped,
                            "summary": missing.summary()}
        job.timings |= {f"{name}_s": decode_s + seconds, f"{name}_decode_s": decode_s}
        job.images += len(keep) * cfg.frames_per_segment


def write_meta(cfg: FeaturesConfig, job: _Job, first: epic.Annotations, world: World, device: torch.device) -> None:
    repro.atomic_write_json(job.tmp / "meta.json", {
        "cache_key": cache_key(cfg, job.spec), "encoder": job.encoder.name,
        "embed_dim": job.encoder.embed_dim, "preprocess": dataclasses.asdict(job.encoder.preprocess),
        "provenance": getattr(job.encoder, "provenance", {}), "aggregate": cfg.aggregate,
        "frames_per_segment": cfg.frames_per_segment, "verbs": list(first.verbs),
        "nouns": list(first.nouns), "splits": job.splits})
    repro.atomic_write_json(job.tmp / "timings.json", job.timings)
    repro.write_manifest(job.tmp, "features", {"encoder": job.spec, **dataclasses.asdict(cfg)}, cfg.seed,
                         launch={"world_size": world.world_size, "device": str(device)})


@dataclass
class _Job:
    """One encoder's cache being written: what run_features_many accumulates for its meta and timings."""

    spec: str
    out_dir: Path
    encoder: encoders.Encoder
    tmp: Path | None = None  # rank 0's temp folder that atomic_dir swaps into out_dir once every cache is complete
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    images: int = 0


# ------------------------------------------------------------------------------------ sharded embedding


def plan_batches(segments: Sequence[epic.Segment], batch_size: int, k: int) -> list[list[int]]:
    """The batches of segment indices, from the annotations alone: each video's segments (videos in order of
    first appearance, as epic.segment_frames reads them) cut into chunks of batch_size // K segments.

    A batch never spans two videos, so its frames share one size; and the plan does not depend on the world
    size or on which segments turn out unreadable, so every segment is embedded in the same batch always."""
    if k < 1:
        raise HandEyeError(f"features.frames_per_segment must be >= 1, got {k}")
    per_batch = max(1, batch_size // k)
    by_video: dict[str, list[int]] = {}
    for i, seg in enumerate(segments):
        by_video.setdefault(seg.video_id, []).append(i)
    return [idx[s:s + per_batch] for idx in by_video.values() for s in range(0, len(idx), per_batch)]


def rank_batches(plan: list[list[int]], world: World) -> list[list[int]]:
    """Rank r's batches: r, r + N, r + 2N, ... (round robin keeps the ranks' shares within a batch)."""
    return plan[world.rank::world.world_size]


@dataclass
class _Share:
    """What one rank embedded of a split: gathered to rank 0 and merged there."""

    features: dict[int, list[torch.Tensor]] = field(default_factory=dict)  # segment -> one tensor per encoder
    skipped: dict[int, tuple[str, str]] = field(default_factory=dict)  # segment -> (reason, example)
    decode_s: float = 0.0
    embed_s: list[float] = field(default_factory=list)  # per encoder


@dataclass
class _Recorder(epic.MissingReport):
    """A MissingReport that also keeps every skip in the order segment_frames reported it."""

    events: list[tuple[str, str]] = field(default_factory=list)

    def add(self, reason: str, example: str) -> None:
        super().add(reason, example)
        self.events.append((reason, example))


def embed_segments(encs: Sequence[encoders.Encoder], cfg: FeaturesConfig, segments: Sequence[epic.Segment],
                   missing: epic.MissingReport, desc: str = "", world: World | None = None
                   ) -> tuple[list[torch.Tensor], list[int], float, list[float]]:
    """Decode the K frames of every segment once and embed them with each encoder (all of one input size),
    each rank of ``world`` (default: one process) its batches of the plan.

    -> (per encoder: features (M, D) or (M, K, D) in segment order, on rank 0 only (empty tensors on the other
    ranks); indices of the M segments that had frames; decoding seconds; per encoder: embedding seconds, the
    slowest rank's). ``missing`` receives every rank's skipped segments, on every rank."""
    world = world or World()
    plan = plan_batches(segments, cfg.batch_size, cfg.frames_per_segment)
    problem, share = None, None
    try:
        share = embed_share(encs, cfg, segments, rank_batches(plan, world), desc, show=world.is_main)
    except HandEyeError as e:  # a bad video on one rank stops them all, before the gather they would wait in
        problem = str(e)
    distributed.agree(world, problem)
    shares = distributed.all_gather_object(world, share)
    return merge_shares(shares, plan, missing, len(encs), world.is_main)


def embed_share(encs: Sequence[encoders.Encoder], cfg: FeaturesConfig, segments: Sequence[epic.Segment],
                batches: list[list[int]], desc: str, show: bool) -> _Share:
    """Decode and embed this rank's batches; nothing of the other ranks' segments is read."""
    order = [i for batch in batches for i in batch]  # grouped by video, as segment_frames reads them
    batch_of = {i: b for b, batch in enumerate(batches) for i in batch}
    share, report = _Share(embed_s=[0.0] * len(encs)), _Recorder()
    start = time.perf_counter()
    idx: list[int] = []
    chunk: list[np.ndarray] = []
    with tqdm(total=len(order), desc=desc, unit="seg", leave=False, disable=not show) as bar:
        frames = epic.segment_frames(cfg.data_dir, [segments[i] for i in order], cfg.frames_per_segment,
                                     encs[0].preprocess.input_size, report)
        for j, f in frames:
            if idx and batch_of[order[j]] != batch_of[idx[0]]:
                embed_batch(encs, cfg, idx, chunk, segments[idx[0]].video_id, share)
                bar.update(len(idx))
                idx, chunk = [], []
            idx.append(order[j])
            chunk.append(f)
        if idx:
            embed_batch(encs, cfg, idx, chunk, segments[idx[0]].video_id, share)
        bar.update(bar.total - bar.n)
    share.decode_s = time.perf_counter() - start - sum(share.embed_s)
    share.skipped = attribute_skips([i for i in order if i not in share.features], report.events)
    return share


def embed_batch(encs: Sequence[encoders.Encoder], cfg: FeaturesConfig, idx: list[int], chunk: list[np.ndarray],
                video_id: str, share: _Share) -> None:
    """One planned batch (its readable segments) through every encoder, into ``share.features``."""
    shapes = sorted({f.shape for f in chunk})
    if len(shapes) > 1:
        raise HandEyeError(f"video {video_id}: frames of different sizes {shapes} in one batch; every frame of "
                           f"a video must have the same size")
    images = torch.from_numpy(np.concatenate(chunk)).permute(0, 3, 1, 2)  # (B*K, 3, H, W)
    for j, encoder in enumerate(encs):
        t = time.perf_counter()
        feats = encoder.embed(images).cpu().reshape(len(idx), cfg.frames_per_segment, -1)
        for i, f in zip(idx, feats, strict=True):
            # clone: a view would pickle the whole batch's storage when the share is gathered
            share.features.setdefault(i, []).append(f.mean(0) if cfg.aggregate == "mean" else f.clone())
        share.embed_s[j] += time.perf_counter() - t


def attribute_skips(unread: list[int], events: list[tuple[str, str]]) -> dict[int, tuple[str, str]]:
    """Which segment each skip was for: segment_frames reports one skip per unread segment, in the order it
    reads them (per video; a video's skips of one reason in segment order), so the n-th skip is the n-th unread
    segment. Rank 0 replays them in plan order, which gives the report (counts and first examples) of one
    process reading every segment."""
    if len(unread) != len(events):
        raise HandEyeError(f"{len(events)} skips reported for {len(unread)} unread segments: "
                           f"epic.segment_frames no longer reports one skip per segment")
    return dict(zip(unread, events, strict=True))


def merge_shares(shares: list[_Share], plan: list[list[int]], missing: epic.MissingReport, n_encoders: int,
                 is_main: bool) -> tuple[list[torch.Tensor], list[int], float, list[float]]:
    """Every rank's share into the single-process result: features in segment order, skips in plan order."""
    skipped = {i: s for share in shares for i, s in share.skipped.items()}
    missing.total += sum(map(len, plan))
    for i in (i for batch in plan for i in batch if i in skipped):
        missing.add(*skipped[i])
    decode_s = max(share.decode_s for share in shares)
    embed_s = [max(share.embed_s[j] for share in shares) for j in range(n_encoders)]
    keep = sorted(i for share in shares for i in share.features)
    if not is_main or not keep:
        return [torch.empty(0) for _ in range(n_encoders)], keep, decode_s, embed_s
    merged = {i: f for share in shares for i, f in share.features.items()}
    return ([torch.stack([merged[i][j] for i in keep]).contiguous() for j in range(n_encoders)], keep, decode_s,
            embed_s)


def cache_key(cfg: FeaturesConfig, encoder_spec: str) -> dict[str, Any]:
    """What decides the cached bytes: the config and the encoder's weights (md5 of a checkpoint file)."""
    source = _encoder_file(encoder_spec, cfg)
    return {"encoder": encoder_spec, "weights_md5": repro.file_md5(source) if source else None,
            "config": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("device", "batch_size")}}


def _encoder_file(spec: str, cfg: FeaturesConfig) -> Path | None:
    if spec in encoders.REGISTRY:
        path = encoders.registry_path(spec, Path(cfg.models_root), Path(cfg.weights_root))
    else:
        path = Path(spec)
    if path.is_dir() and (path / "model.safetensors").is_file():
        return path / "model.safetensors"
    return path if path.is_file() else None


def cache_is_current(features_dir: str | Path, cfg: FeaturesConfig, encoder_spec: str) -> bool:
    meta = Path(features_dir) / "meta.json"
    if not meta.is_file():
        return False
    current = json.loads(json.dumps(cache_key(cfg, encoder_spec)))  # tuples -> lists, as read back
    return json.loads(meta.read_text()).get("cache_key") == current


def load_split_features(features_dir: str | Path, split: str) -> dict[str, Any]:
    """One cached split: {"features", "verb", "noun", "narration_id"} (see the module docstring)."""
    path = Path(features_dir) / f"{split}.pt"
    if not path.is_file():
        raise HandEyeError(f"cached features {path} not found; run `handeye features` (or dvc repro) first")
    data = _load_cache(path)
    if len(data["verb"]) == 0:
        raise HandEyeError(f"{path} holds no segments (empty split)")
    return data


def _load_cache(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise HandEyeError(f"{path} is not a readable feature cache ({first})") from None


def default_dir(root: Path, encoder_spec: str) -> Path:
    """out/<root>/<name>: a registry name as is; a checkpoint by its file (or folder) name."""
    if encoder_spec in encoders.REGISTRY:
        return root / encoder_spec
    path = Path(encoder_spec)
    name = path.parent.name if path.stem == "encoder" else path.stem
    return root / re.sub(r"[^A-Za-z0-9_.-]+", "_", name or "encoder")


# --------------------------------------------------------------------------------------------- CLI


def add_encoder_arguments(p: argparse.ArgumentParser, rows_help: str | None = None) -> None:
    """--encoder / --checkpoint / --data-dir, shared with `handeye probe` (which adds --rows)."""
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--encoder", help=f"registry name: {', '.join(encoders.known_encoders())}")
    which.add_argument("--checkpoint", help="checkpoint: HandEye export, MAE .pth, Hugging Face folder")
    if rows_help:
        which.add_argument("--rows", action="store_true", help=rows_help)
    p.add_argument("--data-dir", help="EPIC-KITCHENS-100 layout (features.data_dir)")
    p.add_argument("--frames-per-segment", type=int, help="K (features.frames_per_segment)")
    p.add_argument("--aggregate", choices=["mean", "frames"], help="features.aggregate")
    p.add_argument("--pooling", choices=["cls", "mean"], help="features.pooling")
    p.add_argument("--device", help="features.device (cpu, cuda)")
    p.add_argument("--params", type=Path, default=PARAMS_FILE, help="parameter file")


def features_config(args: argparse.Namespace) -> FeaturesConfig:
    return load_config(FeaturesConfig, "features", args.params, {
        "data_dir": args.data_dir, "frames_per_segment": args.frames_per_segment, "aggregate": args.aggregate,
        "pooling": args.pooling, "device": args.device})


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_encoder_arguments(p, rows_help="every row of report.encoders, each into out/features/KEY, the frames "
                                       "decoded once for all (the DVC stage)")
    p.add_argument("--out", type=Path, help="output folder (default out/features/<encoder>)")


def main(args: argparse.Namespace) -> int:
    world = distributed.world_from_env()
    cfg = features_config(args)
    if args.rows:
        if args.out:  # every rank finds this alone: rank 0 alone prints it
            raise RankError("--out names one encoder's folder; --rows writes out/features/KEY per report row",
                            quiet=not world.is_main)
        from handeye.report import ReportConfig

        rows = load_config(ReportConfig, "report", args.params, {}).rows()
        targets = [(row.encoder, FEATURES_ROOT / key) for key, row in rows.items()]
    else:
        spec = args.encoder or args.checkpoint
        targets = [(spec, args.out or default_dir(FEATURES_ROOT, spec))]
    results = run_features_many(cfg, targets, world)
    if not world.is_main:
        return 0
    for (spec, _), res in zip(targets, results, strict=True):
        counts = ", ".join(f"{s} {n} segments ({res.skipped[s]} skipped)" for s, n in res.segments.items())
        print(f"features of {spec}: {counts}, {res.images_per_s:.1f} images/s -> {res.out_dir}")
    return 0
