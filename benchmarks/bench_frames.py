"""Frame extraction throughput vs a plain sequential PyAV decode of the same frames; dedup embedding speed;
training-read throughput of the shard formats.

    .venv/bin/python benchmarks/bench_frames.py [--videos DIR] [--size 960x540] [--frames 300]
    .venv/bin/python benchmarks/bench_frames.py --part reads [--read-frames 2048,1024]

Without --videos it encodes its own H.264 and H.265 clips (moving gradients + noise) into a temp folder.
For each sampling setting it times ``handeye.data.frames.run_frames`` (dedup off, npy shards written; the decoder
it chose, decord or PyAV, is printed) and a plain
PyAV loop that decodes every frame and converts the requested ones to RGB arrays; both in this run, on the
same files, each the best of --repeat interleaved runs. The extractor's time includes its
fixed per-run cost (probing, shard and manifest writing), which weighs most on the short sparse settings.
Target: extractor >= 0.8x plain decode (wall clock).

Reads (``--part reads``): the same frames (random crops of scikit-image's photographs, at 64 px, the demo,
and 224 px, the paper) written as npy shards and as wds tar shards (JPEG at frames.jpg_quality), then read in
a seeded random order as pretraining does: through FrameDataset alone, and through a DataLoader (batches of
64) with 0 and 2 workers; plus bytes on disk per frame. Each figure is printed with its ratio to npy, the
reference, measured in the same run (best of --repeat). Both formats are read from the page cache here, which
favours npy: a corpus larger than memory reads every npy frame from disk, 147 KiB of it per 224 px frame.
One line compares JPEG and PNG members (size, decode speed, PSNR), the choice behind wds's .jpg members.

The CPU ratio (process CPU seconds, all threads) is printed beside it because on an oversubscribed machine
wall clock mostly measures the scheduler's share, which grows with a process's thread count (PyAV's
default swscale starts a thread pool per converted frame), not how much work each side does.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from PIL import Image

from handeye import repro
from handeye.data import frames, video
from handeye.data.dedup import embed_frames

CODECS = {"h264": "libx264", "hevc": "libx265"}


def make_clip(path: Path, codec: str, width: int, height: int, n: int, fps: int = 30) -> Path:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    with av.open(str(path), "w") as c:
        s = c.add_stream(CODECS[codec], rate=fps)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.options = {"g": "30"} if codec == "h264" else {"x265-params": "keyint=30:log-level=error"}
        for i in range(n):
            base = np.stack([(xx + 3 * i) % 256, (yy + 2 * i) % 256, (xx + yy + i) % 256], -1)
            img = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def plain_decode(path: Path, wanted: list[int]) -> int:
    """The reference: PyAV defaults, decode in order, convert the requested frames to RGB arrays."""
    wanted_set, last, got = set(wanted), max(wanted), 0
    with av.open(str(path)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i in wanted_set:
                f.to_ndarray(format="rgb24")
                got += 1
            if i >= last:
                break
    return got


def timed(fn) -> tuple[float, float]:
    """(wall, CPU) seconds of fn(); CPU counts every thread of this process."""
    t, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t, time.process_time() - c


def bench_extraction(videos: Path, cfg: frames.FramesConfig, repeat: int) -> dict:
    paths = sorted(p for p in videos.iterdir() if p.suffix.lower() in frames.VIDEO_EXTS)
    wanted, backends = {}, set()
    for p in paths:
        info = video.probe(p)
        wanted[p] = frames.sample_indices(info.num_frames, info.fps, cfg)
        backends.add(video.choose_backend(p, info.codec, wanted[p]))
    n = sum(len(w) for w in wanted.values())
    t_ext, t_ref = [], []
    with tempfile.TemporaryDirectory() as d:
        for _ in range(repeat):  # interleaved, so that a load change on a shared machine hits both
            t_ext.append(timed(lambda: frames.run_frames(cfg, videos, Path(d) / "out", progress=False)))
            t_ref.append(timed(lambda: [plain_decode(p, w) for p, w in wanted.items()]))
    (w_ext, c_ext), (w_ref, c_ref) = [(min(w for w, _ in t), min(c for _, c in t)) for t in (t_ext, t_ref)]
    return {"frames": n, "extractor_fps": n / w_ext, "plain_pyav_fps": n / w_ref, "ratio": w_ref / w_ext,
            "cpu_ratio": c_ref / c_ext, "backend": "+".join(sorted(backends))}


def bench_dedup(spec: str | None, n: int, resolution: int) -> dict:
    from handeye.models import encoders

    if spec and Path(spec).exists():
        enc, name = encoders.load_encoder(spec), spec
    else:  # no demo weights here: a random ViT of the demo's size, the same code path minus the HF model
        enc, name = encoders.random_encoder("vit_demo_patch8_64"), "random:vit_demo_patch8_64"
    imgs = np.random.default_rng(0).integers(0, 256, (n, resolution, resolution, 3), dtype=np.uint8)
    embed_frames(enc, imgs[:8])  # warm-up
    t = time.perf_counter()
    embed_frames(enc, imgs, batch_size=64)
    return {"encoder": name, "images": n, "images_per_s": n / (time.perf_counter() - t)}


def photo_frames(n: int, resolution: int, seed: int = 0) -> np.ndarray:
    """uint8 (n, R, R, 3): random square crops (side R .. the photo's short side), flipped at random, of
    scikit-image's colour photographs: natural content, so that JPEG sizes are realistic."""
    import skimage.data

    photos = [getattr(skimage.data, name)() for name in ("astronaut", "chelsea", "coffee", "rocket")]
    rng = np.random.default_rng(seed)
    out = np.empty((n, resolution, resolution, 3), np.uint8)
    for i in range(n):
        photo = photos[i % len(photos)]
        short = min(photo.shape[:2])
        side = int(rng.integers(min(resolution, short), short + 1))
        top, left = (int(rng.integers(0, d - side + 1)) for d in photo.shape[:2])
        crop = Image.fromarray(photo[top:top + side, left:left + side])
        img = np.asarray(crop.resize((resolution, resolution), Image.BICUBIC))
        out[i] = img[:, ::-1] if rng.random() < 0.5 else img
    return out


def write_shards(fmt: str, imgs: np.ndarray, root: Path) -> Path:
    """imgs as a frame-shard folder of format npy or wds, written by extract-frames' own writers."""
    cfg = frames.FramesConfig()
    writer = (frames.ShardWriter(root, cfg.shard_size) if fmt == "npy"
              else frames.TarShardWriter(root, cfg.shard_size, cfg.jpg_quality))
    src = frames.Source("bench.mp4", "video", Path("bench.mp4"))
    for i, img in enumerate(imgs):
        writer.add(src, i, i / 2, img)
    writer.close()
    return root


def read_rates(root: Path, repeat: int, batch_size: int = 64) -> dict:
    """images/s of one pass in a seeded random order: FrameDataset alone, DataLoader with 0 and 2 workers."""
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    ds = frames.FrameDataset(root)
    order = torch.randperm(len(ds), generator=repro.torch_generator(0)).tolist()

    def direct():
        for i in order:
            ds[i]

    def loader(workers: int):
        sampler = RandomSampler(ds, generator=repro.torch_generator(0))
        for _ in DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers,
                            worker_init_fn=repro.seed_worker):
            pass

    runs = {"dataset": direct, "loader_0": lambda: loader(0), "loader_2": lambda: loader(2)}
    return {k: len(ds) / min(timed(fn)[0] for _ in range(repeat)) for k, fn in runs.items()}


def member_codecs(imgs: np.ndarray, quality: int) -> dict:
    """JPEG (quality) vs PNG members for the same frames: bytes per frame, decodes/s, PSNR against raw."""
    out = {}
    for codec, options in (("jpg", {"format": "JPEG", "quality": quality}), ("png", {"format": "PNG"})):
        blobs = []
        for img in imgs:
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, **options)
            blobs.append(buf.getvalue())
        t = time.perf_counter()
        back = np.stack([frames.decode_jpeg(b) for b in blobs])  # PIL sniffs the codec from the bytes
        rate = len(blobs) / (time.perf_counter() - t)
        mse = float(np.mean((back.astype(np.float64) - imgs) ** 2))
        out[codec] = {"bytes_per_frame": sum(map(len, blobs)) / len(blobs), "decodes_per_s": rate,
                      "psnr_db": float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)}
    return out


def bench_reads(resolution: int, n: int, repeat: int) -> dict:
    imgs = photo_frames(n, resolution)
    result = {"frames": n}
    with tempfile.TemporaryDirectory() as d:
        for fmt in ("npy", "wds"):
            root = write_shards(fmt, imgs, Path(d) / fmt)
            size = sum(p.stat().st_size for p in (root / "shards").iterdir())
            result[fmt] = {"bytes_per_frame": size / n, **read_rates(root, repeat)}
    result["members"] = member_codecs(imgs[:256], frames.FramesConfig().jpg_quality)
    return result


def print_reads(resolution: int, r: dict) -> None:
    ref = r["npy"]
    for fmt in ("npy", "wds"):
        f = r[fmt]
        cols = [f"{f['bytes_per_frame'] / 1024:7.1f} KiB/frame ({f['bytes_per_frame'] / ref['bytes_per_frame']:.3f}x)"]
        cols += [f"{k} {f[k]:8.0f} img/s ({f[k] / ref[k]:.2f}x)" for k in ("dataset", "loader_0", "loader_2")]
        print(f"reads {resolution:3d} px {fmt}  " + "  ".join(cols))
    m = r["members"]
    print(f"members {resolution:3d} px  " + "  ".join(
        f"{c}: {v['bytes_per_frame'] / 1024:.1f} KiB, {v['decodes_per_s']:.0f} decodes/s, {v['psnr_db']:.1f} dB"
        for c, v in m.items()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=Path, help="folder of videos (default: make H.264 + H.265 clips)")
    ap.add_argument("--size", default="960x540", help="WxH of the generated clips")
    ap.add_argument("--frames", type=int, default=300, help="frames per generated clip")
    ap.add_argument("--resolution", type=int, default=64, help="extracted frame side")
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement (best is kept)")
    ap.add_argument("--dedup-encoder", default="data/weights/dinov3-standin")
    ap.add_argument("--dedup-images", type=int, default=256)
    ap.add_argument("--threads", type=int, default=frames.FramesConfig().threads, help="torch threads")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--part", choices=["all", "extraction", "reads"], default="all", help="what to measure")
    ap.add_argument("--read-frames", default="2048,1024", help="frames at 64 px and at 224 px for --part reads")
    args = ap.parse_args()
    # its one-time torch imports would otherwise land in the first timed run
    repro.seed_everything(0, threads=args.threads)
    results: dict = {}
    if args.part in ("all", "extraction"):
        results.update(run_extraction(args))
    if args.part in ("all", "reads"):
        for resolution, n in zip((64, 224), map(int, args.read_frames.split(",")), strict=True):
            results[f"reads {resolution} px"] = r = bench_reads(resolution, n, min(args.repeat, 2))
            print_reads(resolution, r)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def run_extraction(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        videos = args.videos
        if videos is None:
            videos = Path(tmp)
            w, h = map(int, args.size.split("x"))
            for codec in CODECS:
                make_clip(videos / f"{codec}.mp4", codec, w, h, args.frames)
        generated = f"generated {args.size} x {args.frames} frames, H.264 + H.265"
        results: dict = {"videos": str(args.videos or generated)}
        # fps=0.25 (one frame in 120, 4 keyframe intervals) is the one setting sparse enough for decord's seeking
        for label, sampling in (("fps=0.25", {"fps": 0.25}), ("fps=2", {"fps": 2.0}),
                                ("every_n=5", {"fps": None, "every_n": 5}),
                                ("all frames", {"fps": None, "every_n": 1})):
            for codec in (CODECS if args.videos is None else [None]):
                folder = videos
                if codec is not None:  # one codec at a time: decord (H.264) and PyAV (H.265) paths apart
                    folder = Path(tmp) / codec
                    folder.mkdir(exist_ok=True)
                    link = folder / f"{codec}.mp4"
                    if not link.exists():
                        link.symlink_to(videos / f"{codec}.mp4")
                cfg = frames.FramesConfig(resolution=args.resolution, dedup=False, threads=args.threads,
                                          **sampling)
                r = bench_extraction(folder, cfg, args.repeat)
                key = f"{label} {codec or ''}".strip()
                results[key] = r
                print(f"{key:22s} {r['frames']:5d} frames  extractor {r['extractor_fps']:8.1f} f/s  "
                      f"plain PyAV {r['plain_pyav_fps']:8.1f} f/s  ratio {r['ratio']:.2f}x  "
                      f"(CPU {r['cpu_ratio']:.2f}x)  {r['backend']}")
    d = bench_dedup(args.dedup_encoder, args.dedup_images, args.resolution)
    results["dedup"] = d
    print(f"dedup embedding ({d['encoder']}, {args.resolution} px, {args.threads} thread(s)): "
          f"{d['images_per_s']:.1f} images/s")
    return results


if __name__ == "__main__":
    sys.exit(main())
