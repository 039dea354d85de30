"""``handeye demo-data``: the embedded demo dataset every stage runs on by default, rendered on the CPU.

Writes into ``--out`` (built in a temp folder beside it and renamed into place when complete):
  ego/<clip>.mp4 + <clip>.json      unlabelled egocentric clips, H.265 like Egocentric-10K
  epic/PXX/videos/PXX_YY.MP4        labelled videos, H.264 like EPIC-KITCHENS-100, and
  epic/annotations/EPIC_100_*.csv   train/validation segments and class lists in EPIC-100's column schema
  generic/<photo>/<n>.jpg           random crops of scikit-image's photographs: the stand-in for ImageNet
  weights/dinov3-standin/           a tiny randomly initialised transformers DINOv3ViTModel (stand-in)
  run_manifest.json

Every video is a pure function of (seed, its index): workers render in any order and the bytes match.
Encoders run single-threaded, since x264/x265 output depends on their thread count; x265 also needs the
settings of `x265_params`, and x264 those of X264_X86_PARAMS, to give the same bytes every time.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import multiprocessing as mp
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from handeye.config import PARAMS_FILE, load_config
from handeye.errors import HandEyeError
from handeye.repro import atomic_dir, atomic_write_json, write_manifest

EPIC_COLUMNS = (
    "narration_id", "participant_id", "video_id", "narration_timestamp", "start_timestamp", "stop_timestamp",
    "start_frame", "stop_frame", "narration", "verb", "verb_class", "noun", "noun_class", "all_nouns",
    "all_noun_classes",
)
CLASS_COLUMNS = ("id", "key", "instances", "category")
VIDEO_INFO_COLUMNS = ("video_id", "duration", "fps", "resolution")
# Photographs bundled in scikit-image's wheel (read from disk: skimage.data may try to download others).
PHOTOS = (
    "astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "motorcycle_right.png", "rocket.jpg",
    "hubble_deep_field.jpg", "retina.jpg", "ihc.png", "camera.png", "coins.png", "moon.png", "brick.png",
    "grass.png", "gravel.png", "clock_motion.png",
)
STANDIN_README = """\
Random-weight stand-in for DINOv3, for the offline demo only.

This folder is a transformers DINOv3ViTModel (config.json + model.safetensors) with a tiny configuration and
seeded RANDOM weights, written by `handeye demo-data`. It is NOT Meta's DINOv3 and has learned nothing: it
exists so that the demo exercises the same loading and feature code path as facebook/dinov3-* checkpoints
without downloading them. Results obtained with it say nothing about DINOv3.
"""


@dataclass(frozen=True)
class DemoDataConfig:
    seed: int = 0                      # every random draw derives from it (per video: seed + video index)
    size: int = 96                     # rendered frame width = height, pixels (the demo ViT reads 64 px)
    workers: int = 2                   # rendering processes
    nuisance: float = 1.0              # strength in [0, 1] of colour/light/camera/table/clutter variation
    max_distractors: int = 4           # clutter objects per shot at full nuisance
    ego_clips: int = 32                # unlabelled egocentric clips
    ego_frames: int = 160              # frames per ego clip
    ego_fps: int = 30                  # Egocentric-10K is 30 fps
    ego_crf: int = 24                  # libx265 constant rate factor (lower: better, bigger)
    epic_participants: int = 10        # P01..; the last `epic_val_participants` form the validation split
    epic_val_participants: int = 4     # 444 validation segments: one is 0.23 points of top-1
    epic_videos: int = 3               # videos per participant
    epic_segments: int = 37            # labelled segments per video
    epic_fps: int = 25                 # must divide 100: frames then start on EPIC's 10 ms timestamps
    epic_lead_in: int = 4              # unlabelled frames moving into each segment's hand configuration
    epic_hold_min: int = 8             # labelled frames per segment, drawn in [min, max]
    epic_hold_max: int = 12
    epic_crf: int = 20                 # libx264 constant rate factor
    generic_images: int = 1200         # ImageNet stand-in crops
    generic_size: int = 96             # crop side, pixels
    generic_min_scale: float = 0.08    # RandomResizedCrop area range [min, 1], aspect in [3/4, 4/3]
    generic_quality: int = 90          # JPEG quality
    standin_hidden: int = 96           # DINOv3 stand-in: width, depth, heads, patch and image size
    standin_layers: int = 4
    standin_heads: int = 4
    standin_patch: int = 8
    standin_image: int = 64


@dataclass(frozen=True)
class Segment:
    verb: int
    noun: int
    hold: int  # labelled frames


@dataclass(frozen=True)
class VideoJob:
    kind: str            # "ego" or "epic"
    index: int           # position among videos of its kind: the seed of its content
    path: str            # relative to the output root
    segments: tuple[Segment, ...] = ()  # epic only


# ---------------------------------------------------------------------------------------------------------
# Plans: which videos exist and what their segments show. Cheap and deterministic; no rendering here.
def participant_ids(cfg: DemoDataConfig) -> list[str]:
    return [f"P{p + 1:02d}" for p in range(cfg.epic_participants)]


def split_of(cfg: DemoDataConfig, participant: str) -> str:
    val = participant_ids(cfg)[cfg.epic_participants - cfg.epic_val_participants:]
    return "validation" if participant in val else "train"


def plan_jobs(cfg: DemoDataConfig) -> list[VideoJob]:
    from handeye.sim.demo_shots import NOUNS, VERBS

    jobs = [VideoJob("ego", i, f"ego/{ego_clip_name(i)}.mp4") for i in range(cfg.ego_clips)]
    for p, pid in enumerate(participant_ids(cfg)):
        rng = np.random.default_rng([cfg.seed, 1, p])
        n = cfg.epic_videos * cfg.epic_segments
        # Balanced labels per participant, verb and noun drawn independently of each other.
        verbs, nouns = balanced(rng, len(VERBS), n), balanced(rng, len(NOUNS), n)
        holds = rng.integers(cfg.epic_hold_min, cfg.epic_hold_max + 1, n)
        for v in range(cfg.epic_videos):
            sl = slice(v * cfg.epic_segments, (v + 1) * cfg.epic_segments)
            segs = tuple(Segment(int(a), int(b), int(h)) for a, b, h in zip(verbs[sl], nouns[sl], holds[sl], strict=True))
            path = f"epic/{pid}/videos/{pid}_{v + 1:02d}.MP4"
            jobs.append(VideoJob("epic", p * cfg.epic_videos + v, path, segs))
    return jobs


def balanced(rng: np.random.Generator, classes: int, n: int) -> np.ndarray:
    """n labels in random order, each class count within one of the others."""
    cycles = [rng.permutation(classes) for _ in range(-(-n // classes))]
    return rng.permutation(np.concatenate(cycles)[:n])


def ego_clip_name(i: int) -> str:
    factory, worker = ego_ids(i)
    return f"{factory}_{worker}_{i:04d}"


def ego_ids(i: int) -> tuple[str, str]:
    """Egocentric-10K groups footage by factory and worker: 8 clips per factory, 2 per worker."""
    return f"factory_{i // 8 + 1:03d}", f"worker_{i // 2 + 1:03d}"


# ---------------------------------------------------------------------------------------------------------
# Rendering + encoding of one video (runs in a worker process).
_SCENE = None


def _init_worker(size: int) -> None:
    global _SCENE
    # One llvmpipe thread per worker, whatever the worker count: the workers fill the cores already.
    os.environ["LP_NUM_THREADS"] = "1"
    from handeye.sim.demo_scene import DemoScene

    _SCENE = DemoScene(size)


def render_job(cfg: DemoDataConfig, job: VideoJob, root: Path) -> int:
    """Render ``job`` and write its video under ``root``; returns its frame count."""
    from handeye.sim.demo_shots import sample_ego_shot, sample_segment_shot

    rng = np.random.default_rng([cfg.seed, 2 if job.kind == "ego" else 3, job.index])
    if job.kind == "ego":
        shots = [sample_ego_shot(rng, cfg.nuisance, cfg.ego_frames, cfg.max_distractors)]
        fps, codec, crf = cfg.ego_fps, "libx265", cfg.ego_crf
    else:
        shots = [sample_segment_shot(rng, s.verb, s.noun, cfg.nuisance, cfg.epic_lead_in, s.hold,
                                     cfg.max_distractors) for s in job.segments]
        fps, codec, crf = cfg.epic_fps, "libx264", cfg.epic_crf
    frames = np.concatenate([_SCENE.render(shot, fps) for shot in shots])
    path = root / job.path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_video(frames, fps, codec, crf))
    return len(frames)


def _render_task(task: tuple[DemoDataConfig, VideoJob, Path]) -> tuple[str, int]:
    return task[1].path, render_job(*task)


def encode_video(frames: np.ndarray, fps: int, codec: str, crf: int) -> bytes:
    """frames: uint8 (T, H, W, 3) -> MP4 bytes (libx264 or libx265, yuv420p, one encoder thread), the same bytes
    whatever ran in the process before (`x265_params`, X264_X86_PARAMS)."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        opts = {"crf": str(crf), "preset": "medium", "threads": "1"}
        if codec == "libx265":
            opts["x265-params"] = x265_params(*frames.shape[1:3])
        elif codec == "libx264" and platform.machine() in ("x86_64", "AMD64"):
            opts["x264-params"] = X264_X86_PARAMS
        stream.options = opts
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode())
    return buf.getvalue()


# x264's AVX-512 kernels read heap memory they never wrote: after an x265 encode in the same process, 10 encodes
# of the same 96 px frames gave 10 different files (a fresh process gave one). Capped at SSE4.2 (numpy 2.4's own
# baseline, so every CPU that runs this stack has it), the bytes were the same every time and the same as with
# SSE3 to AVX2 allowed (each measured on 2026-11-22); only plain C (or SSE2 alone) gives other bytes. With it an
# AVX-512 CPU regenerates data.dvc's 1,303 files exactly (so they were written without those kernels).
X264_X86_PARAMS = "asm=SSE4.2"


def x265_params(height: int, width: int) -> str:
    """x265 settings under which its output is a pure function of the frames (x265 4.2 in PyAV's wheel; each
    point was seen under valgrind and in repeated encodes of the same frames in one process):
    - ctu: when the picture is a single CTU across, motion search reads reconstructed pixels that x265 never
      wrote, so the bytes followed the heap's leftovers (the flaky ego clip at 32 px with the default 64 px
      CTU). At least two CTUs across make the C code clean under valgrind.
    - asm=0: its SIMD kernels overrun heap buffers on small frames (cuTree's propagate-cost kernel corrupted
      the heap at 40-48 px) and each SIMD level (sse2, sse4.2, avx, avx2) gives other bytes. Plain C took the
      same CPU time here (~0.2 s for a 160-frame 96 px clip).
    - pools=none, frame-threads=1: one thread, since output depends on the thread count."""
    ctu = next(c for c in (64, 32, 16) if c < min(height, width))
    return f"log-level=error:pools=none:frame-threads=1:asm=0:ctu={ctu}"


def render_all(cfg: DemoDataConfig, jobs: list[VideoJob], root: Path) -> dict[str, int]:
    """Render every job (in ``cfg.workers`` processes) under ``root``; returns frames per job path."""
    from tqdm import tqdm

    # Longest first, so that no worker is left alone with a long video at the end.
    order = sorted(jobs, key=lambda j: -(cfg.ego_frames if j.kind == "ego" else
                                         sum(cfg.epic_lead_in + s.hold for s in j.segments)))
    tasks = [(cfg, job, root) for job in order]
    frames: dict[str, int] = {}
    # Always in spawned processes: once Mesa's llvmpipe is loaded for EGL, importing triton (torchvision,
    # transformers) in the same process segfaults, and a fresh process inherits no threads or GL state.
    with mp.get_context("spawn").Pool(cfg.workers, _init_worker, (cfg.size,)) as pool:
        for path, n in tqdm(pool.imap_unordered(_render_task, tasks), total=len(tasks),
                            desc="demo-data videos", unit="video"):
            frames[path] = n
    return frames


# ---------------------------------------------------------------------------------------------------------
# Annotations and side files (written by the main process from the plan alone).
def timestamp(centis_or_millis: int, decimals: int) -> str:
    """An integer count of 10^-decimals seconds -> EPIC's 'HH:MM:SS.ff' (2 decimals) or '.fff' (3)."""
    unit = 10**decimals
    s, frac = divmod(centis_or_millis, unit)
    return f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}.{frac:0{decimals}d}"


def epic_rows(cfg: DemoDataConfig, job: VideoJob) -> list[dict[str, object]]:
    """CSV rows of one EPIC video. Frame numbers are 1-based and inclusive, as EPIC's; frame i (0-based)
    starts at i / fps seconds, so start_frame = start * fps + 1 and stop_frame = stop * fps."""
    from handeye.sim.demo_shots import NOUNS, VERBS

    video_id = Path(job.path).stem
    cs_per_frame = 100 // cfg.epic_fps
    rows, cursor = [], 0
    for k, seg in enumerate(job.segments):
        a = cursor + cfg.epic_lead_in
        b = a + seg.hold
        cursor = b
        verb, noun = VERBS[seg.verb].name, NOUNS[seg.noun].name
        rows.append({
            "narration_id": f"{video_id}_{k}", "participant_id": video_id[:3], "video_id": video_id,
            "narration_timestamp": timestamp((a + b) * 1000 // (2 * cfg.epic_fps), 3),
            "start_timestamp": timestamp(a * cs_per_frame, 2),
            "stop_timestamp": timestamp(b * cs_per_frame, 2),
            "start_frame": a + 1, "stop_frame": b, "narration": f"{verb} {noun}",
            "verb": verb, "verb_class": seg.verb, "noun": noun, "noun_class": seg.noun,
            "all_nouns": str([noun]), "all_noun_classes": str([seg.noun]),
        })
    return rows


def write_csv(path: Path, columns: tuple[str, ...], rows: list[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def write_epic_annotations(cfg: DemoDataConfig, jobs: list[VideoJob], frames: dict[str, int],
                           root: Path) -> dict[str, int]:
    from handeye.sim.demo_shots import NOUNS, VERBS

    ann = root / "epic" / "annotations"
    splits: dict[str, list[dict[str, object]]] = {"train": [], "validation": []}
    info = []
    for job in (j for j in jobs if j.kind == "epic"):
        rows = epic_rows(cfg, job)
        splits[split_of(cfg, rows[0]["participant_id"])].extend(rows)
        info.append({"video_id": Path(job.path).stem, "duration": round(frames[job.path] / cfg.epic_fps, 6),
                     "fps": float(cfg.epic_fps), "resolution": f"{cfg.size}x{cfg.size}"})
    for split, rows in splits.items():
        write_csv(ann / f"EPIC_100_{split}.csv", EPIC_COLUMNS, rows)
    write_csv(ann / "EPIC_100_video_info.csv", VIDEO_INFO_COLUMNS, info)
    for kind, vocab in (("verb", VERBS), ("noun", NOUNS)):
        rows = [{"id": i, "key": x.name, "instances": str([x.name]), "category": x.category}
                for i, x in enumerate(vocab)]
        write_csv(ann / f"EPIC_100_{kind}_classes.csv", CLASS_COLUMNS, rows)
    return {split: len(split_rows) for split, split_rows in splits.items()}


def write_ego_metadata(cfg: DemoDataConfig, jobs: list[VideoJob], frames: dict[str, int], root: Path) -> None:
    """Egocentric-10K-like JSON beside each clip."""
    for job in (j for j in jobs if j.kind == "ego"):
        factory, worker = ego_ids(job.index)
        n = frames[job.path]
        meta = {"codec": "hevc", "fps": cfg.ego_fps, "width": cfg.size, "height": cfg.size, "num_frames": n,
                "duration": round(n / cfg.ego_fps, 6), "factory_id": factory, "worker_id": worker}
        atomic_write_json((root / job.path).with_suffix(".json"), meta)


def photo_dir() -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data"


def write_generic(cfg: DemoDataConfig, root: Path) -> int:
    """RandomResizedCrop + flip crops of real photographs, in one folder per source photo."""
    from PIL import Image

    photos = [photo_dir() / p for p in PHOTOS if (photo_dir() / p).is_file()]
    if len(photos) < 5:
        raise HandEyeError(f"only {len(photos)} photographs found in {photo_dir()}; reinstall scikit-image")
    images = [Image.open(p).convert("RGB") for p in photos]
    rng = np.random.default_rng([cfg.seed, 4])
    for k in range(cfg.generic_images):
        i = k % len(images)
        crop = random_resized_crop(images[i], rng, cfg.generic_min_scale, cfg.generic_size)
        out = root / "generic" / photos[i].stem / f"{k:05d}.jpg"
        out.parent.mkdir(parents=True, exist_ok=True)
        crop.save(out, quality=cfg.generic_quality)
    return cfg.generic_images


def random_resized_crop(img, rng: np.random.Generator, min_scale: float, size: int):
    """torchvision's RandomResizedCrop recipe (area in [min_scale, 1], log-uniform aspect 3/4..4/3) + flip."""
    from PIL import Image

    w, h = img.size
    for _ in range(10):
        area = w * h * rng.uniform(min_scale, 1.0)
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            break
    else:
        cw = ch = min(w, h)
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    crop = img.resize((size, size), Image.Resampling.BICUBIC, box=(x, y, x + cw, y + ch))
    return crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop


def write_standin(cfg: DemoDataConfig, root: Path) -> Path:
    """A tiny DINOv3ViTModel with seeded random weights, saved like a Hub checkpoint (safetensors)."""
    import torch
    import transformers
    from transformers import DINOv3ViTConfig, DINOv3ViTImageProcessor, DINOv3ViTModel

    transformers.utils.logging.disable_progress_bar()
    out = root / "weights" / "dinov3-standin"
    config = DINOv3ViTConfig(
        hidden_size=cfg.standin_hidden, num_hidden_layers=cfg.standin_layers,
        num_attention_heads=cfg.standin_heads, intermediate_size=4 * cfg.standin_hidden,
        patch_size=cfg.standin_patch, image_size=cfg.standin_image, num_register_tokens=4)
    torch.manual_seed(cfg.seed)
    DINOv3ViTModel(config).save_pretrained(out, safe_serialization=True)
    side = cfg.standin_image
    DINOv3ViTImageProcessor(size={"height": side, "width": side}).save_pretrained(out)
    (out / "README.txt").write_text(STANDIN_README)
    return out


# ---------------------------------------------------------------------------------------------------------
def check(cfg: DemoDataConfig) -> None:
    if 100 % cfg.epic_fps:
        raise HandEyeError(f"demo_data.epic_fps={cfg.epic_fps} must divide 100 (25, 50, ...) so that frame "
                           "boundaries fall on EPIC's 2-decimal timestamps")
    if not 0 <= cfg.nuisance <= 1:
        raise HandEyeError(f"demo_data.nuisance={cfg.nuisance} must lie in [0, 1]")
    if cfg.size < 32 or cfg.size % 16:
        raise HandEyeError(f"demo_data.size={cfg.size} must be a multiple of 16 and at least 32 (the sizes at "
                           "which the H.265 encoder was checked to give the same bytes every run)")
    if not 0 < cfg.epic_val_participants < cfg.epic_participants:
        raise HandEyeError("demo_data.epic_val_participants must leave at least one participant on each side")
    from handeye.sim.demo_shots import MAX_DISTRACTORS

    if not 0 <= cfg.max_distractors <= MAX_DISTRACTORS:
        raise HandEyeError(f"demo_data.max_distractors={cfg.max_distractors} must lie in "
                           f"0..{MAX_DISTRACTORS}")
    if cfg.workers < 1:
        raise HandEyeError(f"demo_data.workers={cfg.workers} must be >= 1")
    if not 1 <= cfg.epic_hold_min <= cfg.epic_hold_max:
        raise HandEyeError("demo_data.epic_hold_min must be >= 1 and <= epic_hold_max")


def check_out(out: Path) -> None:
    """Refuse to replace a folder demo-data did not write (a typo in --out must not delete someone's data)."""
    ours = out.is_dir() and (not any(out.iterdir()) or (out / "run_manifest.json").is_file())
    if out.exists() and not ours:
        raise HandEyeError(f"{out} exists and is not a demo-data output; remove it or choose another --out")


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run_demo_data(cfg: DemoDataConfig, out: Path) -> dict[str, object]:
    """Generate the demo dataset into ``out``; returns counts, sizes and per-part wall times (seconds)."""
    check(cfg)
    out = Path(out).resolve()
    check_out(out)
    with atomic_dir(out) as tmp:
        timings: dict[str, float] = {}
        t = time.perf_counter()
        jobs = plan_jobs(cfg)
        frames = render_all(cfg, jobs, tmp)
        timings["render_encode"] = time.perf_counter() - t
        t = time.perf_counter()
        write_ego_metadata(cfg, jobs, frames, tmp)
        segments = write_epic_annotations(cfg, jobs, frames, tmp)
        timings["annotations"] = time.perf_counter() - t
        t = time.perf_counter()
        n_generic = write_generic(cfg, tmp)
        timings["generic"] = time.perf_counter() - t
        t = time.perf_counter()
        write_standin(cfg, tmp)
        timings["standin"] = time.perf_counter() - t
        write_manifest(tmp, "demo_data", cfg, cfg.seed)
    return {
        "ego_clips": cfg.ego_clips,
        "ego_frames": sum(n for p, n in frames.items() if p.startswith("ego/")),
        "epic_videos": sum(1 for j in jobs if j.kind == "epic"),
        "epic_frames": sum(n for p, n in frames.items() if p.startswith("epic/")),
        "train_segments": segments["train"], "validation_segments": segments["validation"],
        "generic_images": n_generic,
        "bytes": {d: folder_bytes(out / d) for d in ("ego", "epic", "generic", "weights")},
        "seconds": timings,
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=None, help="random seed (default: params.yaml demo_data.seed)")
    p.add_argument("--out", type=Path, default=Path("data"), help="output folder, replaced when complete")
    p.add_argument("--workers", type=int, default=None, help="rendering processes")
    p.add_argument("--params", type=Path, default=PARAMS_FILE, help="parameter file with a demo_data section")


def main(args: argparse.Namespace) -> int:
    cfg = load_config(DemoDataConfig, "demo_data", args.params, {"seed": args.seed, "workers": args.workers})
    t = time.perf_counter()
    r = run_demo_data(cfg, args.out)
    total = time.perf_counter() - t
    mb = sum(r["bytes"].values()) / 1e6
    parts = ", ".join(f"{k} {v:.0f}s" for k, v in r["seconds"].items())
    print(f"demo-data: {r['ego_clips']} ego clips ({r['ego_frames']} frames), {r['epic_videos']} EPIC videos "
          f"({r['epic_frames']} frames; {r['train_segments']} train / {r['validation_segments']} validation "
          f"segments), {r['generic_images']} generic images, DINOv3 stand-in -> {args.out} "
          f"({mb:.1f} MB) in {total:.0f}s ({parts})")
    return 0
