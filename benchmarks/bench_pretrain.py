"""MAE training throughput: HandEye's MAE against transformers' ViTMAEForPreTraining, same run, same config.

    python benchmarks/bench_pretrain.py [--models tiny base] [--steps 3] [--threads N] [--compile]

Both models get the same weights (transformers' init copied into HandEye's layout, position embeddings
re-initialised to sin-cos first since transformers 5.23 leaves them zero, FIELD_NOTES), the same batch of
32 images and the same masking noise, so their first-step losses must agree. A timed step is the whole
training step: forward, loss, backward and the same AdamW step for every implementation. Prints training
images/s, achieved GFLOP/s (FLOPs of one step counted by torch's FlopCounterMode, attention included)
against a measured matmul peak, and the ratio to the reference, both in wall time and in process CPU time:
CPU time barely moves when other processes share the cores, wall time does. The reference runs fp32 with
transformers' defaults (SDPA attention); HandEye runs fp32 and, where the hardware has bf16 math
(precision=auto), bf16 autocast. ``--compile`` adds HandEye with its transformer blocks compiled by
torch.compile (inductor) and prints the compile time (its first step).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import handeye  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads)

# isort: split
import torch

from handeye.models.mae import DecoderArch, MaskedAutoencoder
from handeye.models.vit import ViTArch, hf_to_mae_keys, sincos_pos_embed
from handeye.pretrain import autocast_dtype

MODELS = {  # name: (encoder, decoder): ViT-Tiny at 112 px and ViT-B/16 at 224 px with MAE's decoder
    "tiny": (ViTArch(112, 16, 192, 12, 3), DecoderArch(128, 4, 4)),
    "base": (ViTArch(224, 16, 768, 12, 12), DecoderArch(512, 8, 16)),
}
BATCH = 32


def reference(arch: ViTArch, dec: DecoderArch):
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    cfg = ViTMAEConfig(hidden_size=arch.embed_dim, num_hidden_layers=arch.depth, num_attention_heads=arch.num_heads,
                       intermediate_size=int(arch.mlp_ratio * arch.embed_dim), image_size=arch.img_size,
                       patch_size=arch.patch_size, decoder_hidden_size=dec.embed_dim,
                       decoder_num_hidden_layers=dec.depth, decoder_num_attention_heads=dec.num_heads,
                       decoder_intermediate_size=int(dec.mlp_ratio * dec.embed_dim), mask_ratio=0.75,
                       norm_pix_loss=True, layer_norm_eps=1e-6)
    model = ViTMAEForPreTraining(cfg)
    grid = arch.img_size // arch.patch_size
    with torch.no_grad():  # transformers 5.23 builds these all zero (FIELD_NOTES)
        model.vit.embeddings.position_embeddings.copy_(sincos_pos_embed(arch.embed_dim, grid))
        model.decoder.decoder_pos_embed.copy_(sincos_pos_embed(dec.embed_dim, grid))
    return model


def handeye_twin(ref, arch: ViTArch, dec: DecoderArch) -> MaskedAutoencoder:
    model = MaskedAutoencoder(arch, dec)
    state = hf_to_mae_keys(ref.state_dict(), "reference")
    model.encoder.load_state_dict({k: v for k, v in state.items() if not k.startswith(("decoder_", "mask_token"))})
    model.decoder.load_state_dict({k: v for k, v in state.items() if k.startswith(("decoder_", "mask_token"))})
    return model


def step_fn(model, is_ref: bool, amp: torch.dtype | None):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, betas=(0.9, 0.95))

    def step(imgs, noise) -> float:
        with torch.autocast("cpu", dtype=amp or torch.bfloat16, enabled=amp is not None):
            loss = model(pixel_values=imgs, noise=noise).loss if is_ref else model(imgs, 0.75, noise)[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def count_flops(step, imgs, noise) -> float:
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    cpu_attention = {  # torch's FLOP table covers the GPU attention kernels only
        aten._scaled_dot_product_flash_attention_for_cpu:
            lambda q, k, v, *_, **__: fc.sdpa_flop_count(q, k, v),
        aten._scaled_dot_product_flash_attention_for_cpu_backward:
            lambda g, q, k, v, *_, **__: fc.sdpa_backward_flop_count(g, q, k, v),
    }
    with fc.FlopCounterMode(display=False, custom_mapping=cpu_attention) as counter:
        step(imgs, noise)
    return counter.get_total_flops()


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 8) -> float:
    """Best of ``reps`` single n x n matmuls, GFLOP/s: the best, because other processes only slow it down."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    best = float("inf")
    for _ in range(reps + 1):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def measure(steps: dict, imgs, noises) -> dict[str, tuple[float, float, float, float]]:
    """Steps of all implementations interleaved (a warmup step each first), so that load from other
    processes hits them alike. Returns {label: (median wall s/step, median CPU s/step, first-step loss,
    first-step wall seconds)}."""
    wall: dict[str, list[float]] = {k: [] for k in steps}
    cpu: dict[str, list[float]] = {k: [] for k in steps}
    first = {}
    for label, step in steps.items():
        t = time.perf_counter()
        first[label] = (step(imgs, noises[0]), time.perf_counter() - t)
    for noise in noises[1:]:
        for label, step in steps.items():
            t, c = time.perf_counter(), time.process_time()
            step(imgs, noise)
            wall[label].append(time.perf_counter() - t)
            cpu[label].append(time.process_time() - c)
    return {k: (statistics.median(wall[k]), statistics.median(cpu[k]), *first[k]) for k in steps}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--steps", type=int, default=3, help="timed steps per implementation (after one warmup)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--compile", action="store_true", help="add HandEye with compiled blocks")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    bf16 = autocast_dtype("auto", torch.device("cpu"))
    peak32 = matmul_peak(torch.float32)
    peak16 = matmul_peak(torch.bfloat16, n=1024 if bf16 is None else 2048, reps=1 if bf16 is None else 8)
    print(f"CPU {torch.backends.cpu.get_cpu_capability()}, {args.threads} threads, batch {BATCH}; "
          f"matmul peak fp32 {peak32:.1f} GFLOP/s, bf16 {peak16:.1f} GFLOP/s "
          f"({'native' if bf16 else 'emulated: HandEye stays fp32 (precision=auto)'})")
    for name in args.models:
        arch, dec = MODELS[name]
        torch.manual_seed(0)
        ref = reference(arch, dec)
        ours = handeye_twin(ref, arch, dec)
        imgs = torch.randn(BATCH, 3, arch.img_size, arch.img_size)
        noises = [torch.rand(BATCH, arch.num_patches) for _ in range(1 + args.steps)]
        runs = [("transformers ViTMAE fp32", ref, True, None), ("HandEye MAE fp32", ours, False, None)]
        if bf16 is not None:
            runs.append(("HandEye MAE bf16 autocast", handeye_twin(ref, arch, dec), False, bf16))
        if args.compile:
            compiled = handeye_twin(ref, arch, dec)
            for block in (*compiled.encoder.blocks, *compiled.decoder.decoder_blocks):
                block.compile()  # regional: blocks of one shape share a graph, so it compiles in ~1 min, not 4
            runs.append(("HandEye MAE fp32 compiled", compiled, False, None))
        flops = count_flops(step_fn(handeye_twin(ref, arch, dec), False, None), imgs, noises[0])
        print(f"\n{name}: ViT {arch.embed_dim}-d x{arch.depth} @ {arch.img_size}px/{arch.patch_size}, decoder "
              f"{dec.embed_dim}-d x{dec.depth}; {flops / BATCH / 1e9:.1f} GFLOP per image per training step")
        steps = {label: step_fn(model, is_ref, amp) for label, model, is_ref, amp in runs}
        results = measure(steps, imgs, noises)
        ref_wall, ref_cpu, ref_loss, _ = results[runs[0][0]]
        for label, _, _, amp in runs:
            sec, cpu, loss, first_sec = results[label]
            gflops = flops / sec / 1e9
            note = f"  (first step incl. compile {first_sec:.0f} s)" if "compiled" in label else ""
            print(f"  {label:27s} {BATCH / sec:7.2f} img/s  {sec:6.2f} s/step  {gflops:6.1f} GFLOP/s "
                  f"({gflops / (peak16 if amp else peak32):4.0%} of matmul peak)  x{ref_wall / sec:.2f} wall; "
                  f"{cpu:6.2f} CPU s/step  x{ref_cpu / cpu:.2f} CPU;  first loss {loss:.6f} "
                  f"(|diff| to reference {abs(loss - ref_loss):.1e}){note}")


if __name__ == "__main__":
    main()
