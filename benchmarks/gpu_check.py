"""The prepared GPU check (issue #23): the paper profile's models on one NVIDIA GPU, in one call, under 8 minutes.

    PYTHONPATH=src python benchmarks/gpu_check.py [--device cuda] [--steps 20] [--batch 256] [--json OUT]
    PYTHONPATH=src python benchmarks/gpu_check.py --device cpu --tiny --steps 1      # the test's smoke run

Needs torch, timm and transformers in the Python that runs it, and this project's package importable: run it
from the repository root with ``PYTHONPATH=src`` (nothing installed), or after ``pip install --no-deps -e .``.
No data, weights or network: every input is random, every model built by the project's own builders.

Prints one summary line per figure (docs/gpu_check.md):
 (a) the bf16 matmul peak, measured: 8192^3 matmuls after warm-up, timed with CUDA events;
 (b) HandEye's MAE (``pretrain.build_model`` of the paper profile's pretrain section: vit_base_patch16_224,
     decoder 512 x 8, 16 heads, norm_pix_loss, mask 0.75) training steps in bf16 autocast with the stage's
     AdamW: images/s and MFU = model FLOP/s / measured peak. Model FLOPs are counted analytically (the
     matmuls: encoder on the 1 + 25 % visible tokens, decoder on all tokens, training = 3 x forward);
     tests/test_gpu_check.py checks that count against torch.utils.flop_counter.FlopCounterMode;
 (c) the same steps of transformers' ViTMAEForPreTraining with the matching config, in the same run, and the
     ratio HandEye / reference (the official facebookresearch model needs its repository; transformers' is
     the stand-in reference);
 (d) the features stage's path: ``encoder.embed`` of a ViT-B/16 encoder on uint8 224 px frames from host
     memory, ``features.batch_size`` 256 per call, fp32 as the stage runs it: images/s;
 (e) the RL path: ``encoder.embed`` under bf16 autocast on 120 px frames already on the GPU, two cameras of
     ``rl.env.num_envs`` 1225 envs per call, as the Isaac Lab task embeds them: images/s.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import handeye  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads)

# isort: split
import torch

from handeye import pretrain
from handeye.errors import HandEyeError
from handeye.models import encoders
from handeye.models.mae import MaskedAutoencoder
from handeye.models.vit import sincos_pos_embed


@dataclass(frozen=True)
class CheckConfig:
    """What one run measures; ``paper`` is configs/paper.yaml's models, ``tiny`` runs on a CPU in seconds."""

    arch: str  # handeye.models.vit.ARCHS name, for the MAE and both encoders
    decoder_embed_dim: int
    decoder_depth: int
    decoder_num_heads: int
    matmul_n: int  # side of the square bf16 matmuls that measure the peak
    batch: int  # MAE training images per step, and frames per features embed call
    rl_envs: int  # envs of one RL embed call (two cameras each)
    rl_image_size: int
    frame_size: int  # the features stage's frame side


PAPER = CheckConfig("vit_base_patch16_224", 512, 8, 16, matmul_n=8192, batch=256, rl_envs=1225, rl_image_size=120,
                    frame_size=224)
TINY = CheckConfig("vit_test_patch8_32", 32, 1, 2, matmul_n=256, batch=4, rl_envs=2, rl_image_size=120,
                   frame_size=32)
MASK_RATIO = 0.75
RL_ENCODER_BATCH = 64  # load_encoder's default batch_size, which the Isaac Lab backend keeps


# ------------------------------------------------------------------------------------------------ timing
def pick_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise HandEyeError(f"--device {name}: torch {torch.__version__} sees no CUDA GPU here "
                           f"(run it on the lent GPU machine, or pass --device cpu --tiny)")
    return device


def time_steps(fn: Callable[[], object], steps: int, warmup: int, device: torch.device) -> float:
    """Seconds for ``steps`` calls of ``fn`` after ``warmup`` untimed ones; CUDA events on a GPU, since
    kernels run asynchronously and the host clock would time their launch only."""
    for _ in range(warmup):
        fn()
    if device.type != "cuda":
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        return time.perf_counter() - start
    torch.cuda.synchronize(device)
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(steps):
        fn()
    end.record()
    end.synchronize()
    return begin.elapsed_time(end) / 1000.0


# ----------------------------------------------------------------------------------------------- FLOPs
def block_flops(tokens: int, dim: int, mlp_ratio: float) -> float:
    """Forward FLOPs of one pre-norm transformer block on ``tokens`` tokens (one multiply-add = 2 FLOPs):
    qkv and output projections (4 d^2 per token), the MLP (2 r d^2), scores and weighted sum (2 t d)."""
    linear = 2 * tokens * (4 * dim * dim + 2 * mlp_ratio * dim * dim)
    attention = 2 * 2 * tokens * tokens * dim
    return linear + attention


def mae_forward_flops(model: MaskedAutoencoder, mask_ratio: float) -> float:
    """Matmul FLOPs of one image's MAE forward pass: patch embedding of every patch, encoder blocks on the
    CLS + visible tokens, decoder embedding of those, decoder blocks and prediction on CLS + all patches."""
    arch, dec = model.arch, model.decoder_arch
    patches = arch.num_patches
    visible = 1 + int(patches * (1 - mask_ratio))
    pixels = arch.patch_size**2 * 3
    flops = 2 * patches * pixels * arch.embed_dim
    flops += arch.depth * block_flops(visible, arch.embed_dim, arch.mlp_ratio)
    flops += 2 * visible * arch.embed_dim * dec.embed_dim
    flops += dec.depth * block_flops(1 + patches, dec.embed_dim, dec.mlp_ratio)
    return flops + 2 * (1 + patches) * dec.embed_dim * pixels


def train_flops(model: MaskedAutoencoder, batch: int, mask_ratio: float = MASK_RATIO) -> float:
    """One training step: the backward pass costs twice the forward (gradients of inputs and of weights)."""
    return 3 * batch * mae_forward_flops(model, mask_ratio)


# ---------------------------------------------------------------------------------------------- models
def build_handeye_mae(cfg: CheckConfig) -> tuple[MaskedAutoencoder, pretrain.PretrainConfig]:
    """The model and recipe the pretraining stage builds from the paper profile's pretrain section."""
    pcfg = pretrain.PretrainConfig(arch=cfg.arch, decoder_embed_dim=cfg.decoder_embed_dim,
                                   decoder_depth=cfg.decoder_depth, decoder_num_heads=cfg.decoder_num_heads,
                                   mask_ratio=MASK_RATIO, norm_pix_loss=True, batch_size=cfg.batch, epochs=1)
    return pretrain.build_model(pcfg), pcfg


def build_reference_mae(model: MaskedAutoencoder) -> torch.nn.Module:
    """transformers' ViTMAEForPreTraining with the architecture of ``model`` (SDPA attention)."""
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    arch, dec = model.arch, model.decoder_arch
    config = ViTMAEConfig(hidden_size=arch.embed_dim, num_hidden_layers=arch.depth,
                          num_attention_heads=arch.num_heads, intermediate_size=int(arch.mlp_ratio * arch.embed_dim),
                          image_size=arch.img_size, patch_size=arch.patch_size, decoder_hidden_size=dec.embed_dim,
                          decoder_num_hidden_layers=dec.depth, decoder_num_attention_heads=dec.num_heads,
                          decoder_intermediate_size=int(dec.mlp_ratio * dec.embed_dim), mask_ratio=MASK_RATIO,
                          norm_pix_loss=True, layer_norm_eps=1e-6, attn_implementation="sdpa")
    ref = ViTMAEForPreTraining(config)
    grid = arch.img_size // arch.patch_size
    with torch.no_grad():  # transformers 5.23 leaves these all zero (FIELD_NOTES); speed does not care, but
        # a reference that cannot learn positions is no reference
        ref.vit.embeddings.position_embeddings.copy_(sincos_pos_embed(arch.embed_dim, grid))
        ref.decoder.decoder_pos_embed.copy_(sincos_pos_embed(dec.embed_dim, grid))
    return ref


def mae_step(model: torch.nn.Module, optimizer, imgs: torch.Tensor, noise: torch.Tensor, device: torch.device,
             reference: bool) -> Callable[[], None]:
    """One training step as pretrain.train_one_epoch takes it: bf16 autocast forward, backward, AdamW step."""

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            if reference:
                loss = model(pixel_values=pretrain.normalise(imgs), noise=noise).loss
            else:
                loss = model(pretrain.normalise(imgs), MASK_RATIO, noise)[0]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


# ------------------------------------------------------------------------------------------ measurements
def measure_peak(cfg: CheckConfig, device: torch.device, steps: int) -> float:
    """(a) bf16 matmul FLOP/s of n x n x n products."""
    n = cfg.matmul_n
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    reps = max(steps, 10)
    seconds = time_steps(lambda: a @ b, reps, warmup=3, device=device)
    return 2 * n**3 * reps / seconds


def measure_mae(model: torch.nn.Module, pcfg: pretrain.PretrainConfig, cfg: CheckConfig, device: torch.device,
                steps: int, warmup: int, reference: bool) -> float:
    """(b)/(c) training images/s at batch ``cfg.batch`` on random uint8 images and masking noise."""
    model = model.to(device).train()
    if reference:
        optimizer = torch.optim.AdamW(model.parameters(), lr=pcfg.blr * pcfg.batch_size / 256, betas=pcfg.betas)
    else:
        optimizer, _ = pretrain.make_optimizer(model, pcfg, iters_per_epoch=steps + warmup)
    g = torch.Generator(device="cpu").manual_seed(0)
    size = model.config.image_size if reference else model.arch.img_size
    patches = (size // (model.config.patch_size if reference else model.arch.patch_size)) ** 2
    imgs = torch.randint(0, 256, (cfg.batch, 3, size, size), dtype=torch.uint8, generator=g).to(device)
    noise = torch.rand(cfg.batch, patches, generator=g).to(device)
    seconds = time_steps(mae_step(model, optimizer, imgs, noise, device, reference), steps, warmup, device)
    model.cpu()  # free the GPU for the next measurement
    return cfg.batch * steps / seconds


def measure_features(cfg: CheckConfig, device: torch.device, steps: int, warmup: int) -> float:
    """(d) encoder.embed on host uint8 frames, ``cfg.batch`` per call, as embed_segments calls it."""
    enc = encoders.random_encoder(cfg.arch, device=str(device), batch_size=cfg.batch)
    g = torch.Generator(device="cpu").manual_seed(1)
    frames = torch.randint(0, 256, (cfg.batch, cfg.frame_size, cfg.frame_size, 3), dtype=torch.uint8, generator=g)
    images = frames.permute(0, 3, 1, 2)  # the stage's (B*K, 3, H, W) view of decoded HWC frames
    seconds = time_steps(lambda: enc.embed(images), steps, warmup, device)  # embed returns on the host: synced
    return cfg.batch * steps / seconds


def measure_rl(cfg: CheckConfig, device: torch.device, steps: int, warmup: int) -> float:
    """(e) the Isaac Lab task's _embed: two 120 px views per env, on the device, bf16 autocast."""
    enc = encoders.random_encoder(cfg.arch, device=str(device), batch_size=RL_ENCODER_BATCH)
    g = torch.Generator(device="cpu").manual_seed(2)
    n = 2 * cfg.rl_envs
    views = torch.randint(0, 256, (n, 3, cfg.rl_image_size, cfg.rl_image_size), dtype=torch.uint8, generator=g)
    views = views.to(device)

    def embed() -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16):
            return enc.embed(views)

    seconds = time_steps(embed, steps, warmup, device)
    return n * steps / seconds


# ------------------------------------------------------------------------------------------------- main
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads)"


def run_check(cfg: CheckConfig, device: torch.device, steps: int, log=print) -> dict:
    """Every figure, printed as it is measured (one line each), and returned as a dict."""
    warmup = 3 if device.type == "cuda" else 1
    name = device_name(device)
    torch.manual_seed(0)
    peak = measure_peak(cfg, device, steps)
    log(f"gpu_check (a) bf16 matmul peak: {peak / 1e12:.1f} TFLOP/s ({cfg.matmul_n}^3, {name})")
    model, pcfg = build_handeye_mae(cfg)
    flops = train_flops(model, cfg.batch)
    ours = measure_mae(model, pcfg, cfg, device, steps, warmup, reference=False)
    mfu = ours / cfg.batch * flops / peak
    log(f"gpu_check (b) HandEye MAE {cfg.arch} + decoder {cfg.decoder_embed_dim}x{cfg.decoder_depth}, bf16 autocast, "
        f"batch {cfg.batch}: {ours:.1f} img/s, MFU {mfu:.1%} ({flops / cfg.batch / 1e9:.1f} GFLOP/img/step)")
    ref = measure_mae(build_reference_mae(model), pcfg, cfg, device, steps, warmup, reference=True)
    ref_mfu = ref / cfg.batch * flops / peak
    log(f"gpu_check (c) reference transformers ViTMAEForPreTraining, same config: {ref:.1f} img/s, "
        f"MFU {ref_mfu:.1%}; HandEye/reference {ours / ref:.2f}x")
    feats = measure_features(cfg, device, steps, warmup)
    log(f"gpu_check (d) features embed {cfg.arch}, {cfg.frame_size} px uint8 frames from host, batch {cfg.batch}, "
        f"fp32: {feats:.1f} img/s")
    rl = measure_rl(cfg, device, steps, warmup)
    log(f"gpu_check (e) RL embed {cfg.arch}, {cfg.rl_image_size} px x 2 cameras x {cfg.rl_envs} envs on device, "
        f"bf16 autocast: {rl:.1f} img/s ({rl / 2:.1f} env steps/s)")
    figures = {"matmul_bf16_tflops": peak / 1e12, "handeye_mae_img_s": ours, "handeye_mae_mfu": mfu,
               "reference_mae_img_s": ref, "reference_mae_mfu": ref_mfu, "handeye_over_reference": ours / ref,
               "features_img_s": feats, "rl_embed_img_s": rl}
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"device": name, "torch": torch.__version__, "config": cfg.__dict__, "steps": steps,
            "mae_train_gflop_per_img": flops / cfg.batch / 1e9, "flop_count": "analytical (matmuls)",
            "gpu_memory_peak_gib": memory, "figures": figures}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="torch device (default cuda)")
    p.add_argument("--steps", type=int, default=20, help="timed steps of each measurement, after warm-up")
    p.add_argument("--batch", type=int, default=None, help="MAE and features batch (default: 256, tiny: 4)")
    p.add_argument("--tiny", action="store_true", help="a tiny ViT and batch, for a CPU smoke run in seconds")
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.steps < 1:
            raise HandEyeError(f"--steps must be at least 1, got {args.steps}")
        device = pick_device(args.device)
        cfg = TINY if args.tiny else PAPER
        if args.batch is not None:
            if args.batch < 1:
                raise HandEyeError(f"--batch must be at least 1, got {args.batch}")
            cfg = CheckConfig(**{**cfg.__dict__, "batch": args.batch})
        start = time.perf_counter()
        result = run_check(cfg, device, args.steps)
    except HandEyeError as e:
        print(f"gpu_check: error: {e}", file=sys.stderr)
        return 2
    result["wall_s"] = time.perf_counter() - start
    bad = [k for k, v in result["figures"].items() if not (math.isfinite(v) and v > 0)]
    print(f"gpu_check done in {result['wall_s']:.0f} s" + (f"; NOT finite/positive: {', '.join(bad)}" if bad else ""))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
