"""Feature extraction images/s per encoder, and the cached probe against re-encoding every epoch.

    .venv/bin/python benchmarks/bench_probe.py [--segments 48] [--k 4] [--epochs 100] [--encoders ...]

Writes its own EPIC-100 layout (rgb_frames tars of 256x456 JPEGs, EPIC's frame size) into a temp folder. For
each encoder, in this run: ``run_features`` over train + validation (JPEG decode + embed: images/s); the
time to embed the training split once more, which the official MAE linear probe pays every epoch because
it re-encodes every image; and ``run_probe`` for --epochs epochs on the cache. Ratio for E epochs:

    re-encoding  = E x (embed train split) + probe on features
    cached       = extract train + validation once + probe on features

(the official recipe also re-encodes the validation split at every evaluation; not counted, so the ratio
is conservative). Default encoders: the demo's ViT (64 px), a ViT-Ti/16 at 224 px (paper resolution), and a
tiny DINOv3ViTModel folder written here.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch

from handeye import features, probe, repro
from handeye.data import epic
from handeye.models import encoders


def write_dinov3(folder: Path) -> Path:
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    torch.manual_seed(0)
    cfg = DINOv3ViTConfig(hidden_size=96, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                          num_register_tokens=4, image_size=64, patch_size=8)
    DINOv3ViTModel(cfg).save_pretrained(folder)
    return folder


def bench_encoder(spec: str, data: Path, work: Path, k: int, epochs: int, threads: int) -> dict:
    cfg = features.FeaturesConfig(data_dir=str(data), frames_per_segment=k, batch_size=64)
    repro.seed_everything(0, threads=threads)
    start = time.perf_counter()
    res = features.run_features(cfg, spec, work / "features")
    extract_s = time.perf_counter() - start
    images = sum(res.segments.values()) * k

    # One epoch of the original recipe: decode + embed every training frame again.
    enc = encoders.load_encoder(spec, pooling=cfg.pooling, batch_size=cfg.batch_size)
    train = epic.load_split(data, "train")
    start = time.perf_counter()
    features.embed_segments([enc], cfg, train.segments, epic.MissingReport())
    reencode_epoch_s = time.perf_counter() - start

    pcfg = dataclasses.replace(probe.ProbeConfig(), epochs=epochs, batch_size=64, blr=10.0)
    start = time.perf_counter()
    probe.run_probe(pcfg, work / "features", work / "probe")
    probe_s = time.perf_counter() - start
    return {"encoder": spec, "dim": enc.embed_dim, "input": enc.preprocess.input_size, "images": images,
            "extract_s": extract_s, "images_per_s": images / extract_s, "reencode_epoch_s": reencode_epoch_s,
            "probe_s": probe_s, "ratio": (epochs * reencode_epoch_s + probe_s) / (extract_s + probe_s)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--segments", type=int, default=48, help="segments per video (half train, half val)")
    ap.add_argument("--videos", type=int, default=2)
    ap.add_argument("--k", type=int, default=4, help="frames per segment")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--encoders", nargs="*", help="encoder specs (default: demo ViT, ViT-Ti/16, tiny DINOv3)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_probe.") as tmp:
        tmp = Path(tmp)
        videos = [f"P{i + 1:02d}_01" for i in range(args.videos)]
        data = epic.write_synthetic_layout(tmp / "epic", videos=videos,
                                           segments_per_video=args.segments, num_verbs=8, num_nouns=12,
                                           span=8, size=(256, 456))
        specs = args.encoders or ["random:vit_demo_patch8_64", "random:vit_tiny_patch16_224",
                                  str(write_dinov3(tmp / "dinov3-tiny"))]
        print(f"data: {args.videos * args.segments} segments x K={args.k} frames of 256x456 JPEGs; "
              f"{args.epochs} probe epochs; torch threads {args.threads}; {torch.__version__}, "
              f"CPU {torch.backends.cpu.get_cpu_capability()}")
        header = (f"{'encoder':32} {'dim':>4} {'px':>4} {'images/s':>9} {'extract s':>9} "
                  f"{'re-encode/epoch s':>17} {'probe s':>8} {'ratio':>7}")
        print(header)
        for i, spec in enumerate(specs):
            r = bench_encoder(spec, data, tmp / f"run{i}", args.k, args.epochs, args.threads)
            name = Path(spec).name if "/" in spec else spec
            print(f"{name:32} {r['dim']:4d} {r['input']:4d} {r['images_per_s']:9.1f} {r['extract_s']:9.2f} "
                  f"{r['reencode_epoch_s']:17.2f} {r['probe_s']:8.2f} {r['ratio']:6.1f}x")
        print(f"ratio = ({args.epochs} x re-encode/epoch + probe) / (extract once + probe): the time the "
              f"original re-encoding recipe takes over the cached one, same run")


if __name__ == "__main__":
    main()
