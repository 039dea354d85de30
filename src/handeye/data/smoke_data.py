"""``handeye smoke-data --out data``: a few frames in the paper's real input formats, for the paper-smoke profile.

configs/paper-smoke.yaml runs configs/paper.yaml's models and recipes end to end on the CPU; this writes what the
paper profile reads, at the paths it reads them from, with random weights and a handful of frames:

  ego/part-00000N.tar               Egocentric-10K layout: WebDataset shards of <clip>.mp4 (H.265) + <clip>.json
  epic/PXX/rgb_frames/PXX_YY.tar    EPIC-KITCHENS-100 rgb_frames: frame_%010d.jpg (456x256, numbered from 1)
  epic/annotations/EPIC_100_*.csv   train/validation segments, video info and class lists in EPIC-100's column
                                    schema, with its class counts (97 verbs, 300 nouns; synthetic names)
  generic/<photo>/<n>.jpg           the ImageNet stand-in folder that stage extract_frames@generic reads
  weights/mae_pretrain_vit_base_full.pth   ViT-B/16 MAE (512-d x 8 decoder) in the official `_full.pth` key
                                    layout ({'model': encoder + decoder state}), RANDOM weights
  weights/dinov3-vitb16/            transformers DINOv3ViTModel folder (config.json + model.safetensors) of the
                                    real ViT-B/16 architecture, RANDOM weights
  weights/dinov3-standin/           the demo's stand-in (a dependency every extract_frames stage declares)
  run_manifest.json

Pictures are pans over scikit-image's bundled photographs, so that neighbouring frames differ a little, as in
video. Nothing here has learned anything: a smoke run tests that the paper's code paths fit together.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from handeye.errors import HandEyeError
from handeye.repro import atomic_dir, atomic_torch_save, write_manifest

EPIC_FPS = 59.9400599400599  # the rate EPIC-100's rgb_frames are numbered at (EPIC_100_video_info.csv)
EPIC_VERBS, EPIC_NOUNS = 97, 300  # sizes of EPIC-100's class lists: the probe heads' shapes
MAE_FILE = "mae_pretrain_vit_base_full.pth"  # configs/paper.yaml pretrain.imagenet_init, under weights/
MAE_ARCH = "vit_base_patch16_224"  # configs/paper.yaml pretrain.arch
MAE_DECODER = (512, 8, 16)  # configs/paper.yaml pretrain.decoder_embed_dim, decoder_depth, decoder_num_heads
DINOV3_DIR = "dinov3-vitb16"  # configs/paper.yaml report.encoders.dinov3.weights, under weights/
# The architecture fields of facebook/dinov3-vitb16-pretrain-lvd1689m's config.json (the gated Hub model).
DINOV3_VITB16 = {
    "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
    "patch_size": 16, "image_size": 224, "num_register_tokens": 4, "hidden_act": "gelu", "layer_norm_eps": 1e-5,
    "layerscale_value": 1.0, "rope_theta": 100.0, "pos_embed_rescale": 2.0, "query_bias": True,
    "key_bias": False, "value_bias": True, "proj_bias": True, "mlp_bias": True, "use_gated_mlp": False,
    "drop_path_rate": 0.0,
}
RANDOM_README = """\
RANDOM weights in the layout of the real file, written by `handeye smoke-data` for the paper-smoke profile.

{what} It has learned nothing; results obtained with it test the pipeline only. The real weights: {where}.
"""
PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "motorcycle_left.png", "rocket.jpg", "retina.jpg")


@dataclass(frozen=True)
class SmokeDataConfig:
    seed: int = 0  # labels, crops and random weights derive from it
    ego_shards: int = 2  # WebDataset tars
    ego_clips_per_shard: int = 1
    ego_frames: int = 18  # per clip: 0.6 s at 30 fps, sampled by frames.fps 2.0 at frames 0 and 15
    ego_fps: int = 30  # Egocentric-10K: 30 fps
    ego_size: tuple[int, int] = (224, 400)  # (height, width): 16:9 like Ego10K's 1080p, short side 224
    ego_crf: int = 28
    epic_train_segments: int = 2  # segments of the train video (the probe needs 2+ samples)
    epic_val_segments: int = 1
    epic_segment_frames: int = 30  # rgb_frames per segment (0.5 s at EPIC_FPS)
    epic_size: tuple[int, int] = (256, 456)  # (height, width) of EPIC-100's extracted rgb_frames
    generic_images: int = 2
    generic_size: int = 256


# ---------------------------------------------------------------------------------------------- pictures
def load_photos() -> list[np.ndarray]:
    from PIL import Image

    from handeye.data.demo_data import photo_dir

    paths = [photo_dir() / p for p in PHOTOS if (photo_dir() / p).is_file()]
    if len(paths) < 2:
        raise HandEyeError(f"scikit-image's photographs not found in {photo_dir()}; reinstall scikit-image")
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


def pan(photo: np.ndarray, size: tuple[int, int], frames: int, step: int = 2) -> np.ndarray:
    """uint8 (frames, H, W, 3): a window of ``size`` sliding ``step`` px per frame across ``photo``, which is
    first scaled to cover the window and the whole pan."""
    from PIL import Image

    h, w = size
    need_w = w + step * (frames - 1)
    scale = max(h / photo.shape[0], need_w / photo.shape[1])
    sw, sh = max(need_w, round(photo.shape[1] * scale)), max(h, round(photo.shape[0] * scale))
    big = np.asarray(Image.fromarray(photo).resize((sw, sh), Image.Resampling.BILINEAR))
    top = (sh - h) // 2
    return np.stack([big[top:top + h, i * step:i * step + w] for i in range(frames)])


# ---------------------------------------------------------------------------------------------- ego
def write_ego(cfg: SmokeDataConfig, photos: list[np.ndarray], root: Path) -> int:
    """Egocentric-10K-style shards: each clip's H.265 MP4 and its JSON metadata under the same key."""
    from handeye.data.demo_data import encode_video
    from handeye.data.frames import write_tar

    out = root / "ego"
    out.mkdir(parents=True)
    clip = 0
    for shard in range(cfg.ego_shards):
        members = []
        for _ in range(cfg.ego_clips_per_shard):
            key = f"factory_{clip // 2 + 1:03d}_worker_{clip + 1:03d}_{clip:04d}"
            frames = pan(photos[clip % len(photos)], cfg.ego_size, cfg.ego_frames)
            meta = {"codec": "hevc", "fps": cfg.ego_fps, "width": cfg.ego_size[1], "height": cfg.ego_size[0],
                    "num_frames": cfg.ego_frames, "duration": round(cfg.ego_frames / cfg.ego_fps, 6),
                    "factory_id": f"factory_{clip // 2 + 1:03d}", "worker_id": f"worker_{clip + 1:03d}"}
            members += [(f"{key}.mp4", encode_video(frames, cfg.ego_fps, "libx265", cfg.ego_crf)),
                        (f"{key}.json", (json.dumps(meta, sort_keys=True) + "\n").encode())]
            clip += 1
        write_tar(out / f"part-{shard:06d}.tar", members)
    return clip


# ---------------------------------------------------------------------------------------------- EPIC
def epic_time(seconds: float, decimals: int) -> str:
    """Seconds -> EPIC's 'HH:MM:SS.ff' (2 decimals) or 'HH:MM:SS.fff' (3)."""
    from handeye.data.demo_data import timestamp

    return timestamp(round(seconds * 10**decimals), decimals)


def epic_segment_rows(video_id: str, segments: int, span: int, rng: np.random.Generator) -> list[dict]:
    """Consecutive segments of ``span`` frames from frame 1. Frame n (1-based) spans [(n - 1) / fps, n / fps),
    so a segment of frames a..b is [(a - 1) / fps, b / fps] (the real CSV's convention: start 0.00 is frame 1)."""
    rows = []
    for k in range(segments):
        first, last = 1 + k * span, (k + 1) * span
        verb, noun = int(rng.integers(EPIC_VERBS)), int(rng.integers(EPIC_NOUNS))
        start, stop = (first - 1) / EPIC_FPS, last / EPIC_FPS
        rows.append({
            "narration_id": f"{video_id}_{k}", "participant_id": video_id[:3], "video_id": video_id,
            "narration_timestamp": epic_time((start + stop) / 2, 3), "start_timestamp": epic_time(start, 2),
            "stop_timestamp": epic_time(stop, 2), "start_frame": first, "stop_frame": last,
            "narration": f"verb{verb} noun{noun}", "verb": f"verb{verb}", "verb_class": verb,
            "noun": f"noun{noun}", "noun_class": noun, "all_nouns": str([f"noun{noun}"]),
            "all_noun_classes": str([noun]),
        })
    return rows


def write_rgb_frames(path: Path, frames: np.ndarray) -> None:
    """EPIC-100's rgb_frames tar: ./frame_%010d.jpg numbered from 1."""
    from handeye.data.frames import encode_jpeg, write_tar

    path.parent.mkdir(parents=True, exist_ok=True)
    write_tar(path, [(f"./frame_{n:010d}.jpg", encode_jpeg(f, 90)) for n, f in enumerate(frames, start=1)])


def write_epic(cfg: SmokeDataConfig, photos: list[np.ndarray], root: Path) -> dict[str, int]:
    """One train video (P01_01) and one validation video (P01_11, a real validation video id)."""
    from handeye.data.demo_data import CLASS_COLUMNS, EPIC_COLUMNS, VIDEO_INFO_COLUMNS, write_csv

    rng = np.random.default_rng([cfg.seed, 5])
    ann = root / "epic" / "annotations"
    info, counts = [], {}
    for i, (split, video_id, n) in enumerate((("train", "P01_01", cfg.epic_train_segments),
                                              ("validation", "P01_11", cfg.epic_val_segments))):
        rows = epic_segment_rows(video_id, n, cfg.epic_segment_frames, rng)
        frames = np.concatenate([pan(photos[(i * 3 + k) % len(photos)], cfg.epic_size, cfg.epic_segment_frames)
                                 for k in range(n)])
        write_rgb_frames(root / "epic" / video_id[:3] / "rgb_frames" / f"{video_id}.tar", frames)
        write_csv(ann / f"EPIC_100_{split}.csv", EPIC_COLUMNS, rows)
        info.append({"video_id": video_id, "duration": round(len(frames) / EPIC_FPS, 6), "fps": EPIC_FPS,
                     "resolution": f"{cfg.epic_size[1]}x{cfg.epic_size[0]}"})
        counts[split] = len(rows)
    write_csv(ann / "EPIC_100_video_info.csv", VIDEO_INFO_COLUMNS, info)
    for kind, n in (("verb", EPIC_VERBS), ("noun", EPIC_NOUNS)):
        write_csv(ann / f"EPIC_100_{kind}_classes.csv", CLASS_COLUMNS,
                  [{"id": i, "key": f"{kind}{i}", "instances": str([f"{kind}{i}"]), "category": "smoke"}
                   for i in range(n)])
    return counts


def write_generic(cfg: SmokeDataConfig, root: Path) -> None:
    from PIL import Image

    from handeye.data.demo_data import photo_dir, random_resized_crop

    rng = np.random.default_rng([cfg.seed, 6])
    for k in range(cfg.generic_images):
        name = PHOTOS[k % len(PHOTOS)]
        crop = random_resized_crop(Image.open(photo_dir() / name).convert("RGB"), rng, 0.2, cfg.generic_size)
        out = root / "generic" / Path(name).stem / f"{k:05d}.jpg"
        out.parent.mkdir(parents=True, exist_ok=True)
        crop.save(out, quality=90)


# ---------------------------------------------------------------------------------------------- weights
def write_mae_full(cfg: SmokeDataConfig, root: Path) -> Path:
    """Random ViT-B/16 MAE in the official ``*_full.pth`` layout: {'model': timm encoder keys + decoder_*}."""
    import torch

    from handeye.models import vit
    from handeye.models.mae import DecoderArch, MaskedAutoencoder

    torch.manual_seed(cfg.seed)
    model = MaskedAutoencoder(vit.arch_by_name(MAE_ARCH), DecoderArch(*MAE_DECODER), norm_pix_loss=True)
    state = {k.split(".", 1)[1]: v for k, v in model.state_dict().items()}  # drop encoder./decoder. prefixes
    path = root / "weights" / MAE_FILE
    atomic_torch_save({"model": state}, path)
    (root / "weights" / f"{MAE_FILE}.README.txt").write_text(RANDOM_README.format(
        what=f"{MAE_FILE} holds a randomly initialised MAE ViT-B/16 with the 512-d x 8-block decoder.",
        where="https://dl.fbaipublicfiles.com/mae/pretrain/mae_pretrain_vit_base_full.pth (CC BY-NC 4.0)"))
    return path


def write_dinov3(cfg: SmokeDataConfig, root: Path) -> Path:
    """A transformers DINOv3ViTModel folder of the real ViT-B/16 configuration, with seeded random weights."""
    import torch
    import transformers
    from transformers import DINOv3ViTConfig, DINOv3ViTImageProcessor, DINOv3ViTModel

    transformers.utils.logging.disable_progress_bar()
    out = root / "weights" / DINOV3_DIR
    torch.manual_seed(cfg.seed)
    DINOv3ViTModel(DINOv3ViTConfig(**DINOV3_VITB16)).save_pretrained(out, safe_serialization=True)
    side = DINOV3_VITB16["image_size"]
    DINOv3ViTImageProcessor(size={"height": side, "width": side}).save_pretrained(out)
    (out / "README.txt").write_text(RANDOM_README.format(
        what="This DINOv3ViTModel has the architecture of DINOv3 ViT-B/16 and randomly initialised weights.",
        where="facebook/dinov3-vitb16-pretrain-lvd1689m on the Hugging Face Hub (gated: HF_TOKEN)"))
    return out


# ---------------------------------------------------------------------------------------------- stage
def check_out(out: Path) -> None:
    """Refuse to replace a folder smoke-data did not write (a typo in --out must not delete real data)."""
    manifest = out / "run_manifest.json"
    ours = out.is_dir() and (not any(out.iterdir()) or (
        manifest.is_file() and json.loads(manifest.read_text()).get("stage") == "smoke_data"))
    if out.exists() and not ours:
        raise HandEyeError(f"{out} exists and is not a smoke-data output; remove it or choose another --out")


def run_smoke_data(cfg: SmokeDataConfig, out: Path) -> dict[str, object]:
    """Write the smoke data set into ``out`` (replaced when complete); returns counts and seconds."""
    from handeye.data.demo_data import DemoDataConfig, write_standin

    out = Path(out).resolve()
    check_out(out)
    start = time.perf_counter()
    with atomic_dir(out) as tmp:
        photos = load_photos()
        clips = write_ego(cfg, photos, tmp)
        segments = write_epic(cfg, photos, tmp)
        write_generic(cfg, tmp)
        write_mae_full(cfg, tmp)
        write_dinov3(cfg, tmp)
        write_standin(DemoDataConfig(seed=cfg.seed), tmp)
        write_manifest(tmp, "smoke_data", cfg, cfg.seed)
    return {"ego_clips": clips, **segments, "seconds": time.perf_counter() - start}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("data"), help="output folder, replaced when complete")
    p.add_argument("--seed", type=int, default=0, help="random seed of labels, crops and weights")


def main(args: argparse.Namespace) -> int:
    r = run_smoke_data(SmokeDataConfig(seed=args.seed), args.out)
    print(f"smoke-data: {r['ego_clips']} ego clips (H.265 in WebDataset tars), EPIC rgb_frames with "
          f"{r['train']} train / {r['validation']} validation segments, random-weight MAE ViT-B/16 (_full.pth) "
          f"and DINOv3 ViT-B/16 -> {args.out} in {r['seconds']:.0f} s")
    return 0
