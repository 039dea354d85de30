"""``handeye pretrain``: MAE pretraining of one strategy on a frame-shard folder, resumable bit for bit.

    handeye pretrain --data-dir out/frames/ego --output-dir out/models/ego_frozen --epochs 10 \
        --init imagenet --freeze-blocks 6

Every other knob is in the ``pretrain`` section of params.yaml (``PretrainConfig``). The output folder holds
``checkpoint.pt`` (the full training state, rewritten atomically after an epoch once ``checkpoint_every_s``
has passed, and after the last), and at the end
``encoder.pt`` (a HandEye encoder export), ``preview.png`` (reconstructions), ``live/`` (dvclive: loss per
epoch), ``timings.json`` and ``run_manifest.json``. Rerunning the same command on the same folder resumes from
``checkpoint.pt``; a run killed at any moment ends, once rerun, with the same bytes as an uninterrupted one.

    torchrun --nproc_per_node N -m handeye pretrain ...     # DDP: nccl on CUDA, gloo on the CPU

Under torchrun ``batch_size`` stays the global batch of one optimiser step (the lr scales from it as MAE's
blr x batch / 256), so the recipe does not change with the launch: each rank's forward takes
batch_size / (N x accum_iter) images. EpochSampler hands every frame of an epoch to exactly one rank, in a
seeded order that depends on (seed, epoch) only; each sample's crop, flip and masking noise depend on
(seed, epoch, index) only. World size N therefore sees the same images as world size 1 and differs only
in the order of the gradient sum (last bits, tests/test_pretrain_distributed.py). Rank 0 alone writes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from handeye import distributed, repro
from handeye.config import PARAMS_FILE, load_config
from handeye.distributed import World
from handeye.errors import HandEyeError
from handeye.models import vit
from handeye.models.mae import DecoderArch, MaskedAutoencoder

CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class PretrainConfig:
    arch: str = "vit_demo_patch8_64"  # encoder (handeye.models.vit.ARCHS); paper: vit_base_patch16_224
    decoder_embed_dim: int = 512  # decoder width (official MAE: 512)
    decoder_depth: int = 8  # decoder blocks (official: 8)
    decoder_num_heads: int = 16  # decoder attention heads (official: 16)
    mask_ratio: float = 0.75  # fraction of patches removed from the encoder's input
    norm_pix_loss: bool = True  # regress per-patch normalised pixels (the official released weights' loss)
    epochs: int = 20  # passes over the frames; 0 exports the initial weights without training
    warmup_epochs: float = 2.0  # linear learning-rate warmup before the cosine decay
    batch_size: int = 64  # images per optimiser step over all ranks (official: 4096); the recipe does not
    # change with the cluster: each rank's forward pass takes batch_size / (world size x accum_iter) images
    accum_iter: int = 1  # micro-steps whose gradients add up to one optimiser step (for memory, not recipe)
    blr: float = 1.5e-4  # base learning rate: lr = blr * batch_size / 256
    min_lr: float = 0.0  # floor of the per-iteration cosine schedule
    weight_decay: float = 0.05  # AdamW decay; none on norms, biases, position embeddings and tokens
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW betas of MAE
    crop_scale: tuple[float, float] = (0.2, 1.0)  # RandomResizedCrop area range (plus a horizontal flip)
    init: str = "random"  # random | imagenet | PATH (HandEye export/checkpoint, official .pth, HF folder)
    imagenet_init: str = "out/models/imagenet/checkpoint.pt"  # what init 'imagenet' loads
    freeze_blocks: int = 0  # freeze patch/pos embedding, CLS token and the first N encoder blocks
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast where the hardware has bf16 math
    device: str = "auto"  # auto: this rank's GPU (cuda:LOCAL_RANK) when CUDA is there, else cpu
    threads: int = 2  # CPU threads; the bits of a run depend on it (FIELD_NOTES)
    num_workers: int = 0  # DataLoader workers; frames are memory-mapped, so 0 is fast on small machines
    seed: int = 0  # seeds init, and per (epoch, frame) the shuffle, crop, flip and masking
    checkpoint_every_s: float = 60.0  # wall seconds between checkpoints (and dvclive updates); the last epoch
    # is always saved. The demo's 1-2 s epochs would otherwise spend a tenth of their time saving
    preview_images: int = 6  # frames shown in preview.png
    license: str = "MIT (trained by HandEye on the demo data)"  # travels in encoder.pt's preprocessing


@dataclass(frozen=True)
class PretrainResult:
    out_dir: Path
    epochs_run: int
    final_loss: float | None
    seconds: float


# ----------------------------------------------------------------------------------------------- data
def sample_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


def crop_box(h: int, w: int, scale: tuple[float, float], g: torch.Generator,
             ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box (top, left, height, width), drawn from ``g``: torchvision's sampling (ten tries
    of an area in ``scale`` and a log-uniform aspect ratio, else a centre crop), with a generator of its own."""
    area, log_ratio = h * w, (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * torch.empty(1).uniform_(scale[0], scale[1], generator=g).item()
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=g).item())
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, (1,), generator=g))
            left = int(torch.randint(0, w - cw + 1, (1,), generator=g))
            return top, left, ch, cw
    if w / h < ratio[0]:
        cw, ch = w, round(w / ratio[0])
    elif w / h > ratio[1]:
        cw, ch = round(h * ratio[1]), h
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


class MaskedSamples(Dataset):
    """Frame i of one epoch -> (uint8 (3, S, S), noise (L,)): a RandomResizedCrop(scale) + horizontal flip,
    and the masking noise. All three come from a generator seeded by (seed, epoch, i), so a sample is the
    same whichever rank, worker or batch loads it: world size 2 with batch b trains on what world size 1 with
    batch 2b does. Normalising happens per batch in float on the training device (one vectorised op)."""

    def __init__(self, frames: Dataset, size: int, scale: tuple[float, float], num_patches: int, seed: int,
                 epoch: int):
        self.frames, self.size, self.scale, self.num_patches = frames, size, scale, num_patches
        self.seed, self.epoch = seed, epoch

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2 import functional as F

        g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, i))
        frame = self.frames[i]
        top, left, h, w = crop_box(frame.shape[-2], frame.shape[-1], self.scale, g)
        img = F.resized_crop(frame, top, left, h, w, [self.size, self.size], InterpolationMode.BICUBIC,
                             antialias=True)
        if torch.rand(1, generator=g).item() < 0.5:
            img = F.horizontal_flip(img)
        return img, torch.rand(self.num_patches, generator=g)


class EpochSampler(Sampler[int]):
    """One rank's frames of one epoch, in the order it trains on them.

    The epoch is a permutation of the n frames seeded by (seed, epoch) alone, cut into global batches of
    ``batch_size`` (a tail short of a batch is dropped, as drop_last does). Each global batch is split into
    ``accum`` micro-steps and each micro-step into ``world_size`` slices; rank r takes slice r. So every used
    frame goes to exactly one rank once, and the global batches do not depend on the layout."""

    def __init__(self, n: int, batch_size: int, world_size: int, rank: int, accum: int, seed: int, epoch: int):
        self.micro = micro_batch(batch_size, world_size, accum)
        self.n, self.batch_size, self.world_size, self.rank, self.accum = n, batch_size, world_size, rank, accum
        self.seed, self.epoch = seed, epoch

    @property
    def steps(self) -> int:
        return self.n // self.batch_size

    def __len__(self) -> int:
        return self.steps * self.accum * self.micro

    def __iter__(self) -> Iterator[int]:
        g = repro.torch_generator(int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0]))
        order = torch.randperm(self.n, generator=g)[: self.steps * self.batch_size]
        mine = order.view(self.steps, self.accum, self.world_size, self.micro)[:, :, self.rank]
        return iter(mine.reshape(-1).tolist())


def micro_batch(batch_size: int, world_size: int, accum: int) -> int:
    """Images per rank per forward pass, so that world_size x accum of them make one optimiser step."""
    if accum < 1 or batch_size % (world_size * accum):
        raise HandEyeError(f"pretrain.batch_size {batch_size} is not divisible by world size {world_size} x "
                           f"pretrain.accum_iter {accum}; choose a batch size that is, or another world size")
    return batch_size // (world_size * accum)


def load_frames(data_dir: Path, img_size: int, batch_size: int):
    """The frame shards of ``data_dir``, checked against the encoder's input size and the batch size."""
    from handeye.data.frames import FrameDataset

    if not Path(data_dir).is_dir():
        raise HandEyeError(f"data folder {data_dir} not found; extract frames first (`handeye extract-frames`)")
    frames = FrameDataset(data_dir)
    h, w = frames.resolution
    if min(h, w) < img_size:
        raise HandEyeError(f"frames in {data_dir} are {h}x{w}, smaller than the encoder's {img_size}x{img_size} "
                           f"input; extract them with frames.resolution >= {img_size} or choose another arch")
    if len(frames) < batch_size:
        raise HandEyeError(f"{data_dir} holds {len(frames)} frames, fewer than one batch ({batch_size}); "
                           f"lower pretrain.batch_size or extract more frames")
    return frames


def normalise(imgs: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float (N, 3, H, W) with ImageNet mean/std, as the official MAE input."""
    mean = torch.tensor(vit.IMAGENET_MEAN, device=imgs.device).view(1, 3, 1, 1)
    std = torch.tensor(vit.IMAGENET_STD, device=imgs.device).view(1, 3, 1, 1)
    return (imgs.float() / 255.0 - mean) / std


def make_loader(frames: Dataset, model: MaskedAutoencoder, cfg: PretrainConfig, world: World,
                epoch: int) -> DataLoader:
    """This rank's micro-batches of one epoch; a resumed run sees the same ones, since all is seeded."""
    data = MaskedSamples(frames, model.arch.img_size, tuple(cfg.crop_scale), model.arch.num_patches, cfg.seed,
                         epoch)
    sampler = EpochSampler(len(frames), cfg.batch_size, world.world_size, world.rank, cfg.accum_iter, cfg.seed,
                           epoch)
    return DataLoader(data, batch_size=sampler.micro, sampler=sampler, num_workers=cfg.num_workers,
                      worker_init_fn=repro.seed_worker, persistent_workers=False)


# ---------------------------------------------------------------------------------------------- model
def build_model(cfg: PretrainConfig) -> MaskedAutoencoder:
    decoder = DecoderArch(cfg.decoder_embed_dim, cfg.decoder_depth, cfg.decoder_num_heads)
    return MaskedAutoencoder(vit.arch_by_name(cfg.arch), decoder, cfg.norm_pix_loss)


def initialise(model: MaskedAutoencoder, cfg: PretrainConfig, log=print) -> dict[str, Any]:
    """Load ``cfg.init`` into ``model`` (random: keep the MAE init). Returns the provenance of the init."""
    if cfg.init == "random":
        return {"init": "random", "seed": cfg.seed}
    source = init_source(cfg)
    if not source.exists():
        hint = " (pretrain.imagenet_init; the demo trains it in stage pretrain@imagenet)" if cfg.init == "imagenet" else ""
        raise HandEyeError(f"init weights {source} not found{hint}")
    w = vit.load_pretrained(source)
    vit.load_strict(model.encoder, w.encoder, str(source))
    if w.arch != model.arch:
        raise HandEyeError(f"{source} is a {w.arch} encoder but pretrain.arch '{cfg.arch}' is {model.arch}")
    if w.decoder is None:
        log(f"pretrain: {source} has no decoder; the decoder starts from a fresh MAE init")
    else:
        if w.decoder_arch is not None and DecoderArch(**w.decoder_arch) != model.decoder_arch:
            raise HandEyeError(f"{source} has decoder {w.decoder_arch} but params give {model.decoder_arch}; "
                               f"set pretrain.decoder_* to match")
        vit.load_strict(model.decoder, w.decoder, f"{source} (decoder)")
    model.check_position_embeddings(str(source))
    return {"init": cfg.init, **w.provenance, "decoder": "fresh" if w.decoder is None else "loaded"}


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 doubles matmul speed where the hardware has it and crawls where it is emulated (AVX2 CPUs)."""
    if precision != "auto":
        return torch.bfloat16 if precision == "bf16" else None
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported()
    else:
        native = any(getattr(torch.cpu, f, lambda: False)() for f in ("_is_avx512_bf16_supported",
                                                                         "_is_amx_tile_supported"))
    return torch.bfloat16 if native else None


def lr_factor(it: int, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the peak lr at iteration ``it``: linear warmup, then half-cycle cosine to min_lr."""
    if it < warmup:
        return it / warmup
    progress = (it - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model: MaskedAutoencoder, cfg: PretrainConfig, iters_per_epoch: int):
    from timm.optim import param_groups_weight_decay

    lr = cfg.blr * cfg.batch_size / 256
    skip = ["encoder.pos_embed", "encoder.cls_token", "decoder.mask_token", "decoder.decoder_pos_embed"]
    groups = param_groups_weight_decay(model, cfg.weight_decay, no_weight_decay_list=skip)
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas))
    factor = partial(lr_factor, warmup=round(cfg.warmup_epochs * iters_per_epoch),
                     total=cfg.epochs * iters_per_epoch, min_ratio=cfg.min_lr / lr if lr else 0.0)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --------------------------------------------------------------------------------------------- engine
def train_one_epoch(model: torch.nn.Module, loader: DataLoader, optimizer, scheduler, cfg: PretrainConfig,
                    world: World, device: torch.device, amp: torch.dtype | None, epoch: int) -> float:
    """One pass; the lr follows the schedule per optimiser step. ``model`` is the MaskedAutoencoder, or its
    DistributedDataParallel wrapper, which averages the gradients over ranks. Returns the mean loss over
    every rank's images."""
    model.train()
    losses, step_loss = [], torch.zeros((), device=device)
    for i, (imgs, noise) in enumerate(tqdm(loader, desc=f"epoch {epoch}", unit="batch", leave=False,
                                           disable=not world.is_main)):
        last = (i + 1) % cfg.accum_iter == 0
        # Only the last micro-step of a step all-reduces; the others accumulate their gradients locally.
        sync = contextlib.nullcontext() if last or not world.distributed else model.no_sync()
        with sync:
            with torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
                loss, _, _ = model(normalise(imgs.to(device, non_blocking=True)), cfg.mask_ratio, noise.to(device))
            (loss / cfg.accum_iter).backward()
        step_loss += loss.detach() / cfg.accum_iter
        if not last:
            continue
        # Every rank checks the same global loss, so a divergence stops all of them, not one in a collective.
        step_loss = distributed.all_reduce_mean(world, step_loss)
        if not torch.isfinite(step_loss):
            raise distributed.RankError(f"loss is {step_loss.item()} at epoch {epoch}; lower pretrain.blr or use "
                                        f"precision fp32", quiet=not world.is_main)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        losses.append(step_loss)
        step_loss = torch.zeros((), device=device)
    return torch.stack(losses).mean().item()


# ----------------------------------------------------------------------------------------- checkpoint
LAYOUT = ("accum_iter",)  # how a step's batch is split over ranks and micro-steps: not part of the recipe


def resolved_config(cfg: PretrainConfig, data_dir: Path) -> dict[str, Any]:
    """What decides the recipe: the config, the data folder and the content of the frames (frames.csv lists
    every frame's sha1) and of the init weights, not the output folder, so that a run may be repeated
    elsewhere and compared byte for byte, and a checkpoint of other frames or another init is never resumed.
    Neither the world size nor accum_iter: a run may resume on another layout and continue the same recipe
    (its bits then differ in the last digits: float sums in another order). JSON round trip: tuples become
    lists on both sides."""
    recipe = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in LAYOUT}
    return json.loads(json.dumps({**recipe, "data_dir": str(data_dir),
                                  "frames_md5": repro.file_md5(data_dir / "frames.csv"),
                                  "init_md5": None if cfg.init == "random" else tree_md5(init_source(cfg))}))


def init_source(cfg: PretrainConfig) -> Path:
    return Path(cfg.imagenet_init if cfg.init == "imagenet" else cfg.init)


def tree_md5(path: Path) -> str:
    """md5 of a file, or of a folder's files (names and contents, in sorted order)."""
    if path.is_file():
        return repro.file_md5(path)
    h = hashlib.md5()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(path)}:{repro.file_md5(f)}\n".encode())
    return h.hexdigest()


def checkpoint_state(model, optimizer, scheduler, epoch: int, history: list, config: dict, init: dict) -> dict:
    return {
        "format": vit.CHECKPOINT_FORMAT, "epoch": epoch, "config": config, "init": init, "history": history,
        "arch": dataclasses.asdict(model.arch), "decoder_arch": dataclasses.asdict(model.decoder_arch),
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "rng": {"torch": torch.get_rng_state(),
                **({"cuda": torch.cuda.get_rng_state_all()} if torch.cuda.is_available() else {})},
    }


def load_checkpoint(path: Path, config: dict, restart_if_changed: bool = False, log=print) -> dict | None:
    """The checkpoint to resume, or None (restart) when it has other settings and ``restart_if_changed``."""
    ckpt = vit.load_state(path)  # weights_only: anything but tensors and containers is refused
    if ckpt.get("format") != vit.CHECKPOINT_FORMAT:
        raise HandEyeError(f"{path} is not a HandEye MAE checkpoint; move it away or use another --output-dir")
    if ckpt["config"] != config:
        diff = sorted(k for k in set(config) | set(ckpt["config"]) if config.get(k) != ckpt["config"].get(k))
        changes = ", ".join(f"{k}: {ckpt['config'].get(k)!r} -> {config.get(k)!r}" for k in diff)
        if restart_if_changed:
            log(f"pretrain: {path} was written with other settings ({changes}); starting over")
            return None
        raise HandEyeError(f"{path} was written with other settings ({changes}); delete it to start over, "
                           f"or use another --output-dir")
    return ckpt


def restore(ckpt: dict, model, optimizer, scheduler) -> None:
    vit.load_strict(model, ckpt["model"], "checkpoint")
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    if "cuda" in ckpt["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])


# -------------------------------------------------------------------------------------------- outputs
def write_live(out_dir: Path, history: list[dict]) -> None:
    """dvclive metrics rebuilt from the checkpoint's history, so they always agree with it after a resume."""
    from dvclive import Live

    with Live(str(out_dir / "live"), save_dvc_exp=False, dvcyaml=None) as live:
        for row in history:
            live.step = row["epoch"]
            live.log_metric("train/loss", row["loss"])
            live.log_metric("train/lr", row["lr"])
    if not history:  # an export without training: empty curves, so that every strategy has the same outputs
        curves = out_dir / "live" / "plots" / "metrics" / "train"
        for name in ("loss", "lr"):
            repro.atomic_write_text(curves / f"{name}.tsv", f"step\t{name}\n")


@torch.no_grad()
def save_preview(model: MaskedAutoencoder, frames, cfg: PretrainConfig, path: Path) -> None:
    """Rows: original, masked input and reconstruction of the first frames, with a fixed mask.

    Drawn with PIL rather than matplotlib, whose import and layout cost ~1.3 s in each pretraining stage.
    """
    from PIL import Image, ImageDraw
    from torchvision.transforms import v2
    from torchvision.utils import make_grid

    n = min(cfg.preview_images, len(frames))
    size = model.arch.img_size
    pre = vit.Preprocess(size)
    x = normalise(v2.CenterCrop(size)(v2.Resize(size, antialias=True)(torch.stack([frames[i] for i in range(n)]))))
    device = next(model.parameters()).device
    noise = torch.rand(n, model.arch.num_patches, generator=torch.Generator().manual_seed(cfg.seed))
    model.eval()
    _, pred, mask = model(x.to(device), cfg.mask_ratio, noise.to(device))
    pred, mask = pred.cpu(), mask.cpu()
    recon = model.reconstruct(x, pred, mask)
    masked = model.unpatchify(model.patchify(x) * (1 - mask).unsqueeze(-1))
    mean, std = torch.tensor(pre.mean).view(1, 3, 1, 1), torch.tensor(pre.std).view(1, 3, 1, 1)
    rows = torch.cat([(t * std + mean).clamp(0, 1) for t in (x, masked, recon)])
    pad, zoom, margin = 2, max(1, 128 // size), 120  # small demo frames are drawn at 2x
    grid = (make_grid(rows, nrow=n, padding=pad, pad_value=1.0) * 255).round().byte().permute(1, 2, 0).numpy()
    image = Image.fromarray(grid).resize((grid.shape[1] * zoom, grid.shape[0] * zoom), Image.Resampling.NEAREST)
    canvas = Image.new("RGB", (margin + image.width, image.height), "white")
    canvas.paste(image, (margin, 0))
    draw, row = ImageDraw.Draw(canvas), (size + pad) * zoom
    for r, title in enumerate(("original", f"masked {cfg.mask_ratio:.0%}", "reconstruction")):
        draw.text((6, pad * zoom + r * row + size * zoom // 2), title, fill="black", anchor="lm")
    with repro.atomic_path(path, suffix=".png") as tmp:
        canvas.save(tmp)


def export_encoder(model: MaskedAutoencoder, cfg: PretrainConfig, out_dir: Path, ckpt: dict) -> None:
    arch = model.arch
    pre = vit.Preprocess(arch.img_size, patch_size=arch.patch_size, license=cfg.license)
    history = ckpt["history"]
    # No git commit here: it lives in run_manifest.json beside the export. In the export it would make every
    # downstream file (features, probes) differ between commits and between a checkout and a container.
    provenance = {"strategy": out_dir.name, "init": ckpt["init"], "data": ckpt["config"]["data_dir"],
                  "epochs": ckpt["epoch"], "final_loss": history[-1]["loss"] if history else None,
                  "arch_name": cfg.arch, "config": ckpt["config"]}
    vit.save_export(out_dir / "encoder.pt", arch, model.encoder.state_dict(), pre, provenance)


# ---------------------------------------------------------------------------------------------- stage
def run_pretrain(cfg: PretrainConfig, data_dir: str | Path, out_dir: str | Path, restart_if_changed: bool = False,
                 world: World | None = None) -> PretrainResult:
    """Train (or resume) into ``out_dir``. restart_if_changed: a checkpoint with other settings or frames is
    replaced instead of refused (DVC reruns a stage exactly when those changed; its checkpoint persists only so
    that a killed run resumes). world: this process's rank, by default as torchrun sets it (world size 1
    without torchrun); every rank trains, rank 0 alone writes."""
    world = world or distributed.world_from_env()
    repro.seed_everything(cfg.seed, cfg.threads)  # every rank builds the same init
    device = distributed.device_for(world, cfg.device)
    with distributed.process_group(world, device):
        return train(cfg, Path(data_dir), Path(out_dir), restart_if_changed, world, device)


def prepare(cfg: PretrainConfig, data_dir: Path, world: World, log):
    """Everything that a bad param or missing input breaks, before any compute: model, init, frames."""
    model = build_model(cfg)  # validates arch; init draws from the seeded RNG
    model.freeze(cfg.freeze_blocks)  # validates the range before any data is read
    micro_batch(cfg.batch_size, world.world_size, cfg.accum_iter)
    frames = load_frames(data_dir, model.arch.img_size, cfg.batch_size)
    init = initialise(model, cfg, log)
    return model, frames, init, resolved_config(cfg, data_dir)


def resume_point(path: Path, config: dict, restart_if_changed: bool, world: World, log) -> dict | None:
    """The checkpoint every rank resumes from (None: start), after every rank read it and before any writes."""
    problem, ckpt = None, None
    try:
        ckpt = load_checkpoint(path, config, restart_if_changed, log) if path.exists() else None
    except HandEyeError as e:
        problem = str(e)
    distributed.agree(world, problem)
    epochs = distributed.all_gather_object(world, ckpt["epoch"] if ckpt else None)
    if len(set(epochs)) > 1:
        raise distributed.RankError(f"ranks see different checkpoints in {path.parent} (epochs {epochs}); put the "
                                    f"output folder on a filesystem that every node sees", quiet=not world.is_main)
    return ckpt


def train(cfg: PretrainConfig, data_dir: Path, out_dir: Path, restart_if_changed: bool, world: World,
          device: torch.device) -> PretrainResult:
    log = print if world.is_main else (lambda *_: None)
    problem = None
    try:
        model, frames, init, config = prepare(cfg, data_dir, world, log)
    except HandEyeError as e:  # raised on all ranks through agree, so that no rank waits for one that left
        problem = str(e)
    distributed.agree(world, problem)
    distributed.check_same(world, config, "pretrain parameters")
    amp = autocast_dtype(cfg.precision, device)
    iters = len(frames) // cfg.batch_size

    path = out_dir / CHECKPOINT
    ckpt = resume_point(path, config, restart_if_changed, world, log)
    model.to(device)
    optimizer, scheduler = make_optimizer(model, cfg, iters)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    layout = (f", {world.world_size} rank(s) x {micro_batch(cfg.batch_size, world.world_size, cfg.accum_iter)} "
              f"images x {cfg.accum_iter} micro-step(s)" if world.distributed or cfg.accum_iter > 1 else "")
    log(f"pretrain: {cfg.arch}, {trainable:,} of {sum(p.numel() for p in model.parameters()):,} parameters "
        f"trainable (freeze_blocks={cfg.freeze_blocks}), {len(frames)} frames, {iters} steps/epoch{layout}, "
        f"{'bf16 autocast' if amp else 'fp32'} on {device}")
    if ckpt:
        restore(ckpt, model, optimizer, scheduler)
        init = ckpt["init"]
        log(f"pretrain: resuming {path} after epoch {ckpt['epoch']} of {cfg.epochs}")
    else:
        ckpt = checkpoint_state(model, optimizer, scheduler, 0, [], config, init)
        if world.is_main:
            repro.atomic_torch_save(ckpt, path)  # epoch 0: a kill before the first epoch resumes here too
    net = model
    if world.distributed:  # averages gradients over ranks; nothing here changes buffers, so none are broadcast
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)

    start, first = time.perf_counter(), ckpt["epoch"]
    history, saved = list(ckpt["history"]), start
    for epoch in tqdm(range(first, cfg.epochs), desc="pretrain", unit="epoch", initial=first, total=cfg.epochs,
                      disable=not world.is_main):
        loader = make_loader(frames, model, cfg, world, epoch)
        loss = train_one_epoch(net, loader, optimizer, scheduler, cfg, world, device, amp, epoch)
        history.append({"epoch": epoch + 1, "loss": loss, "lr": scheduler.get_last_lr()[0]})
        if world.is_main and (epoch + 1 == cfg.epochs or time.perf_counter() - saved >= cfg.checkpoint_every_s):
            ckpt = checkpoint_state(model, optimizer, scheduler, epoch + 1, history, config, init)
            repro.atomic_torch_save(ckpt, path)
            write_live(out_dir, history)
            saved = time.perf_counter()
    seconds = time.perf_counter() - start
    result = PretrainResult(out_dir, cfg.epochs - first, history[-1]["loss"] if history else None, seconds)
    if not world.is_main:
        return result

    if first == cfg.epochs:  # no epoch ran (an export without training, or a finished run resumed)
        write_live(out_dir, history)
    export_encoder(model, cfg, out_dir, ckpt)
    save_preview(model, frames, cfg, out_dir / "preview.png")
    images = (cfg.epochs - first) * iters * cfg.batch_size
    repro.atomic_write_json(out_dir / "timings.json", {
        "seconds": round(seconds, 3), "epochs_run": cfg.epochs - first, "world_size": world.world_size,
        "images_per_second": round(images / seconds, 1) if images else None})
    repro.write_manifest(out_dir, "pretrain", config, cfg.seed,
                         launch={"world_size": world.world_size, "accum_iter": cfg.accum_iter, "device": str(device)})
    return result


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, required=True, help="frame-shard folder (handeye extract-frames)")
    p.add_argument("--output-dir", type=Path, required=True, help="out/models/<strategy>; resumes if it has a checkpoint")
    p.add_argument("--epochs", type=int, help="override pretrain.epochs (0: export the init without training)")
    p.add_argument("--init", help="random | imagenet | PATH (override pretrain.init)")
    p.add_argument("--freeze-blocks", type=int, help="override pretrain.freeze_blocks")
    p.add_argument("--restart-if-changed", action="store_true",
                   help="start over when the output folder's checkpoint has other settings or frames "
                        "(default: refuse, so that a long run is never overwritten by mistake)")
    p.add_argument("--params", type=Path, default=PARAMS_FILE, help="parameter file (section 'pretrain')")


def main(args: argparse.Namespace) -> int:
    cfg = load_config(PretrainConfig, "pretrain", args.params,
                      {"epochs": args.epochs, "init": args.init, "freeze_blocks": args.freeze_blocks})
    world = distributed.world_from_env()
    result = run_pretrain(cfg, args.data_dir, args.output_dir, args.restart_if_changed, world)
    if not world.is_main:
        return 0
    loss = "n/a" if result.final_loss is None else f"{result.final_loss:.4f}"
    print(f"pretrain: {result.epochs_run} epoch(s) in {result.seconds:.1f} s, final loss {loss}; "
          f"encoder, checkpoint, preview and metrics in {result.out_dir}")
    return 0
