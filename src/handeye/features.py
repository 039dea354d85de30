"""Stage `features`: embed the K sampled frames of every EPIC segment once per encoder and cache them.

The official MAE linear probe re-encodes every image every epoch although the encoder is frozen; caching
the features turns 100 probe epochs into 100 passes over a small float matrix (benchmarks/bench_probe.py).

`handeye features --rows` (the DVC stage) writes out/features/KEY for every row of report.encoders in one
process, decoding each split once for all encoders. Output folder, one per encoder::

    <split>.pt        {"features": float32 (N, D) or (N, K, D), "verb": int64 (N,), "noun": int64 (N,),
                       "narration_id": [str] * N}   for each split (train, validation)
    meta.json         encoder, dims, classes, per-split counts and skipped segments, the cache key
    timings.json      wall-clock seconds (decoding, shared by the encoders of a run, and decoding + this
                      encoder's embedding) and images/s (not compared bit for bit)
    run_manifest.json
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm

from handeye import repro
from handeye.config import PARAMS_FILE, load_config
from handeye.data import epic
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


def run_features(cfg: FeaturesConfig, encoder_spec: str, out_dir: str | Path) -> FeaturesResult:
    """Embed every split of ``cfg.data_dir`` with ``encoder_spec`` and write the cache to ``out_dir``."""
    return run_features_many(cfg, [(encoder_spec, Path(out_dir))])[0]


def run_features_many(cfg: FeaturesConfig, targets: Sequence[tuple[str, Path]]) -> list[FeaturesResult]:
    """Write one cache per (encoder spec, output folder), decoding each split's frames once per input size.

    Decoding a split costs about as much as embedding it with a demo encoder, and at paper scale (ViT-B on a
    GPU) it is most of the work, so encoders that take the same input size share one pass over the videos.
    Every cache is swapped into place only when all of them are complete.
    """
    repro.seed_everything(cfg.seed, threads=cfg.threads)
    if not Path(cfg.data_dir).is_dir():
        raise HandEyeError(f"EPIC data folder {cfg.data_dir} not found (features.data_dir / --data-dir)")
    splits = {s: epic.load_split(cfg.data_dir, s, cfg.annotations_dir) for s in cfg.splits}
    first = next(iter(splits.values()))
    for ann in splits.values():
        if (ann.verbs, ann.nouns) != (first.verbs, first.nouns):
            raise HandEyeError(f"{ann.source}: class lists differ from those of {first.source}")
    jobs = [_Job(spec, Path(out), encoders.load_encoder(
        spec, models_root=cfg.models_root, weights_root=cfg.weights_root, pooling=cfg.pooling, device=cfg.device,
        batch_size=cfg.batch_size)) for spec, out in targets]
    groups: dict[int, list[_Job]] = {}  # input size -> the encoders that share its decoding pass
    for job in jobs:
        groups.setdefault(job.encoder.preprocess.input_size, []).append(job)
    with contextlib.ExitStack() as stack:
        for job in jobs:
            job.tmp = stack.enter_context(repro.atomic_dir(job.out_dir))
        for name, ann in splits.items():
            for _, group in sorted(groups.items()):
                missing = epic.MissingReport()
                feats, keep, decode_s, embed_s = embed_segments([job.encoder for job in group], cfg, ann.segments,
                                                                missing, desc=f"{name}, {len(group)} encoder(s)")
                missing.check(cfg.max_missing_fraction, f"{ann.source}")
                if missing.skipped:
                    print(f"{name}: {missing.summary()}")
                segs = [ann.segments[i] for i in keep]
                labels = {"verb": torch.tensor([s.verb_class for s in segs], dtype=torch.int64),
                          "noun": torch.tensor([s.noun_class for s in segs], dtype=torch.int64),
                          "narration_id": [s.narration_id for s in segs]}
                for job, f, seconds in zip(group, feats, embed_s, strict=True):
                    repro.atomic_torch_save({"features": f, **labels}, job.tmp / f"{name}.pt")
                    job.splits[name] = {"csv": str(ann.source), "segments": len(keep), "skipped": missing.skipped,
                                        "summary": missing.summary()}
                    job.timings |= {f"{name}_s": decode_s + seconds, f"{name}_decode_s": decode_s}
                    job.images += len(keep) * cfg.frames_per_segment
        for job in jobs:
            total = sum(job.timings[f"{name}_s"] for name in splits)
            job.timings["images_per_s"] = job.images / total if total else 0.0
            repro.atomic_write_json(job.tmp / "meta.json", {
                "cache_key": cache_key(cfg, job.spec), "encoder": job.encoder.name,
                "embed_dim": job.encoder.embed_dim, "preprocess": dataclasses.asdict(job.encoder.preprocess),
                "provenance": getattr(job.encoder, "provenance", {}), "aggregate": cfg.aggregate,
                "frames_per_segment": cfg.frames_per_segment, "verbs": list(first.verbs),
                "nouns": list(first.nouns), "splits": job.splits})
            repro.atomic_write_json(job.tmp / "timings.json", job.timings)
            repro.write_manifest(job.tmp, "features", {"encoder": job.spec, **dataclasses.asdict(cfg)}, cfg.seed)
    return [FeaturesResult(job.out_dir, {s: m["segments"] for s, m in job.splits.items()},
                           {s: m["skipped"] for s, m in job.splits.items()}, job.timings["images_per_s"])
            for job in jobs]


@dataclass
class _Job:
    """One encoder's cache being written: what run_features_many accumulates for its meta and timings."""

    spec: str
    out_dir: Path
    encoder: encoders.Encoder
    tmp: Path | None = None  # the temp folder atomic_dir swaps into out_dir once every cache is complete
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    images: int = 0


def embed_segments(encs: Sequence[encoders.Encoder], cfg: FeaturesConfig, segments, missing: epic.MissingReport,
                   desc: str = "") -> tuple[list[torch.Tensor], list[int], float, list[float]]:
    """Decode the K frames of every segment once and embed them with each encoder (all of one input size).

    -> (per encoder: features (M, D) or (M, K, D) in segment order; indices of the M segments that had frames;
    decoding seconds; per encoder: embedding seconds)."""
    k = cfg.frames_per_segment
    frames = epic.segment_frames(cfg.data_dir, segments, k, encs[0].preprocess.input_size, missing)
    out: list[dict[int, torch.Tensor]] = [{} for _ in encs]
    embed_s = [0.0] * len(encs)
    start = time.perf_counter()
    with tqdm(total=len(segments), desc=desc, unit="seg", leave=False) as bar:
        for idx, batch in _batches(frames, max(1, cfg.batch_size // k)):
            images = torch.from_numpy(batch).permute(0, 3, 1, 2)  # (B*K, 3, H, W)
            for j, encoder in enumerate(encs):
                t = time.perf_counter()
                feats = encoder.embed(images).reshape(len(idx), k, -1)
                for i, f in zip(idx, feats, strict=True):
                    out[j][i] = f.mean(0) if cfg.aggregate == "mean" else f
                embed_s[j] += time.perf_counter() - t
            bar.update(len(idx))
    decode_s = time.perf_counter() - start - sum(embed_s)
    keep = sorted(out[0])
    if not keep:
        return [torch.empty(0) for _ in encs], keep, decode_s, embed_s
    return [torch.stack([o[i] for i in keep]).contiguous() for o in out], keep, decode_s, embed_s


def _batches(frames: Iterator[tuple[int, np.ndarray]], segments_per_batch: int
             ) -> Iterator[tuple[list[int], np.ndarray]]:
    """Group consecutive segments of the same frame size: -> (indices, uint8 (B*K, H, W, 3))."""
    idx: list[int] = []
    chunk: list[np.ndarray] = []
    for i, f in frames:
        if chunk and (len(idx) == segments_per_batch or f.shape != chunk[0].shape):
            yield idx, np.concatenate(chunk)
            idx, chunk = [], []
        idx.append(i)
        chunk.append(f)
    if chunk:
        yield idx, np.concatenate(chunk)


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
    cfg = features_config(args)
    if args.rows:
        if args.out:
            raise HandEyeError("--out names one encoder's folder; --rows writes out/features/KEY per report row")
        from handeye.report import ReportConfig

        rows = load_config(ReportConfig, "report", args.params, {}).rows()
        targets = [(row.encoder, FEATURES_ROOT / key) for key, row in rows.items()]
    else:
        spec = args.encoder or args.checkpoint
        targets = [(spec, args.out or default_dir(FEATURES_ROOT, spec))]
    for (spec, _), res in zip(targets, run_features_many(cfg, targets), strict=True):
        counts = ", ".join(f"{s} {n} segments ({res.skipped[s]} skipped)" for s, n in res.segments.items())
        print(f"features of {spec}: {counts}, {res.images_per_s:.1f} images/s -> {res.out_dir}")
    return 0
