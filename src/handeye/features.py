"""Stage `features`: embed the K sampled frames of every EPIC segment once per encoder and cache them.

The official MAE linear probe re-encodes every image every epoch although the encoder is frozen; caching
the features turns 100 probe epochs into 100 passes over a small float matrix (benchmarks/bench_probe.py).

Output folder (one per encoder, a DVC output)::

    <split>.pt        {"features": float32 (N, D) or (N, K, D), "verb": int64 (N,), "noun": int64 (N,),
                       "narration_id": [str] * N}   for each split (train, validation)
    meta.json         encoder, dims, classes, per-split counts and skipped segments, the cache key
    timings.json      wall-clock seconds and images/s (not compared bit for bit)
    run_manifest.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm

from handeye import encoders, epic, repro
from handeye.config import PARAMS_FILE, load_config
from handeye.errors import HandEyeError

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
    repro.seed_everything(cfg.seed, threads=cfg.threads)
    if not Path(cfg.data_dir).is_dir():
        raise HandEyeError(f"EPIC data folder {cfg.data_dir} not found (features.data_dir / --data-dir)")
    splits = {s: epic.load_split(cfg.data_dir, s, cfg.annotations_dir) for s in cfg.splits}
    first = next(iter(splits.values()))
    encoder = encoders.load_encoder(encoder_spec, models_root=cfg.models_root, weights_root=cfg.weights_root,
                                    pooling=cfg.pooling, device=cfg.device, batch_size=cfg.batch_size)
    meta: dict[str, Any] = {
        "cache_key": cache_key(cfg, encoder_spec), "encoder": encoder.name, "embed_dim": encoder.embed_dim,
        "preprocess": dataclasses.asdict(encoder.preprocess),
        "provenance": getattr(encoder, "provenance", {}),
        "aggregate": cfg.aggregate, "frames_per_segment": cfg.frames_per_segment,
        "verbs": list(first.verbs), "nouns": list(first.nouns), "splits": {},
    }
    timings: dict[str, float] = {}
    images = 0
    with repro.atomic_dir(out_dir) as tmp:
        for name, ann in splits.items():
            if (ann.verbs, ann.nouns) != (first.verbs, first.nouns):
                raise HandEyeError(f"{ann.source}: class lists differ from those of {first.source}")
            missing = epic.MissingReport()
            start = time.perf_counter()
            feats, keep = embed_segments(encoder, cfg, ann.segments, missing, desc=f"{encoder.name} {name}")
            timings[f"{name}_s"] = time.perf_counter() - start
            missing.check(cfg.max_missing_fraction, f"{ann.source}")
            images += len(keep) * cfg.frames_per_segment
            segs = [ann.segments[i] for i in keep]
            repro.atomic_torch_save({
                "features": feats,
                "verb": torch.tensor([s.verb_class for s in segs], dtype=torch.int64),
                "noun": torch.tensor([s.noun_class for s in segs], dtype=torch.int64),
                "narration_id": [s.narration_id for s in segs],
            }, tmp / f"{name}.pt")
            meta["splits"][name] = {"csv": str(ann.source), "segments": len(keep), "skipped": missing.skipped,
                                    "summary": missing.summary()}
            if missing.skipped:
                print(f"{name}: {missing.summary()}")
        total = sum(timings.values())
        timings["images_per_s"] = images / total if total else 0.0
        repro.atomic_write_json(tmp / "meta.json", meta)
        repro.atomic_write_json(tmp / "timings.json", timings)
        repro.write_manifest(tmp, "features", {"encoder": encoder_spec, **dataclasses.asdict(cfg)}, cfg.seed)
    return FeaturesResult(Path(out_dir), {s: m["segments"] for s, m in meta["splits"].items()},
                          {s: m["skipped"] for s, m in meta["splits"].items()}, timings["images_per_s"])


def embed_segments(encoder: encoders.Encoder, cfg: FeaturesConfig, segments, missing: epic.MissingReport,
                   desc: str = "") -> tuple[torch.Tensor, list[int]]:
    """-> (features (M, D) or (M, K, D) in segment order, indices of the M segments that had frames)."""
    k = cfg.frames_per_segment
    frames = epic.segment_frames(cfg.data_dir, segments, k, encoder.preprocess.input_size, missing)
    out: dict[int, torch.Tensor] = {}
    with tqdm(total=len(segments), desc=desc, unit="seg", leave=False) as bar:
        for idx, batch in _batches(frames, max(1, cfg.batch_size // k)):
            images = torch.from_numpy(batch).permute(0, 3, 1, 2)  # (B*K, 3, H, W)
            feats = encoder.embed(images).reshape(len(idx), k, -1)
            for i, f in zip(idx, feats, strict=True):
                out[i] = f.mean(0) if cfg.aggregate == "mean" else f
            bar.update(len(idx))
    keep = sorted(out)
    if not keep:
        return torch.empty(0), keep
    return torch.stack([out[i] for i in keep]).contiguous(), keep


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
    except Exception as e:  # zip or unpickling errors of a damaged file
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
    add_encoder_arguments(p)
    p.add_argument("--out", type=Path, help="output folder (default out/features/<encoder>)")


def main(args: argparse.Namespace) -> int:
    cfg = features_config(args)
    spec = args.encoder or args.checkpoint
    out = args.out or default_dir(FEATURES_ROOT, spec)
    res = run_features(cfg, spec, out)
    counts = ", ".join(f"{s} {n} segments ({res.skipped[s]} skipped)" for s, n in res.segments.items())
    print(f"features of {spec}: {counts}, {res.images_per_s:.1f} images/s -> {res.out_dir}")
    return 0
