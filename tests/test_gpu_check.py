"""benchmarks/gpu_check.py: the prepared GPU check runs end to end (tiny, on the CPU), refuses a missing GPU in
one line, and its analytical FLOP count agrees with torch's FlopCounterMode on the paper's ViT-B/16 MAE."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
LINES = ("(a) bf16 matmul peak", "(b) HandEye MAE", "(c) reference transformers", "(d) features embed",
         "(e) RL embed")
FIGURES = {"matmul_bf16_tflops", "handeye_mae_img_s", "handeye_mae_mfu", "reference_mae_img_s",
           "reference_mae_mfu", "handeye_over_reference", "features_img_s", "rl_embed_img_s"}


def load_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def run_script(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    # PYTHONPATH=src, as docs/gpu_check.md runs it on the lent machine (no install there)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def check_output(proc: subprocess.CompletedProcess, out: Path) -> dict:
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    for head in LINES:
        assert sum(head in line for line in lines) == 1, f"{head!r} not printed exactly once:\n{proc.stdout}"
    result = json.loads(out.read_text())
    assert set(result["figures"]) == FIGURES
    for name, value in result["figures"].items():
        assert math.isfinite(value) and value > 0, (name, value)
    return result


def test_tiny_cpu_run_prints_every_figure(tmp_path):
    out = tmp_path / "check.json"
    result = check_output(run_script("--device", "cpu", "--tiny", "--steps", "1", "--json", str(out)), out)
    assert result["config"]["arch"] == "vit_test_patch8_32" and result["steps"] == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_missing_cuda_is_one_line():
    proc = run_script("--device", "cuda", "--tiny", "--steps", "1", timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "no CUDA GPU" in proc.stderr


def test_bad_steps_is_one_line():
    proc = run_script("--device", "cpu", "--tiny", "--steps", "0", timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "--steps" in proc.stderr


def counted_flops(fn) -> float:
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    cpu_attention = {  # torch's FLOP table maps the GPU attention kernels only
        aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *_, **__: fc.sdpa_flop_count(q, k, v),
        aten._scaled_dot_product_flash_attention_for_cpu_backward:
            lambda g, q, k, v, *_, **__: fc.sdpa_backward_flop_count(g, q, k, v),
    }
    with fc.FlopCounterMode(display=False, custom_mapping=cpu_attention) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("tiny", [True, False], ids=["tiny", "paper"])
def test_analytical_flops_match_flop_counter(tiny):
    check = load_check()
    cfg = check.TINY if tiny else check.PAPER
    model, _ = check.build_handeye_mae(cfg)
    batch, size = 2, model.arch.img_size
    imgs = torch.randn(batch, 3, size, size)
    noise = torch.rand(batch, model.arch.num_patches)
    with torch.no_grad():
        forward = counted_flops(lambda: model(imgs, check.MASK_RATIO, noise))
    assert forward == pytest.approx(batch * check.mae_forward_flops(model, check.MASK_RATIO), rel=0.01)

    def train_step():
        model(imgs, check.MASK_RATIO, noise)[0].backward()

    # backward = 2 x forward, except the patch embedding: the images need no gradient, so its backward is 1 x
    arch = model.arch
    patch_embed = batch * 2 * arch.num_patches * arch.patch_size**2 * 3 * arch.embed_dim
    assert counted_flops(train_step) == pytest.approx(check.train_flops(model, batch) - patch_embed, rel=0.01)


def test_reference_matches_the_handeye_architecture():
    check = load_check()
    model, _ = check.build_handeye_mae(check.PAPER)
    ref = check.build_reference_mae(model)
    ours = sum(p.numel() for p in model.parameters())
    theirs = sum(p.numel() for p in ref.parameters())
    assert theirs == ours  # same layers, same widths: the comparison is like for like
    assert ref.config.norm_pix_loss and ref.config.mask_ratio == check.MASK_RATIO
    assert ref.vit.embeddings.position_embeddings[:, 1:].abs().sum() > 0


@pytest.mark.gpu
def test_paper_check_on_cuda(tmp_path):
    out = tmp_path / "check.json"
    result = check_output(run_script("--steps", "5", "--json", str(out), timeout=480), out)
    assert result["config"]["arch"] == "vit_base_patch16_224" and result["config"]["batch"] == 256
    assert result["figures"]["handeye_mae_mfu"] < 1 and result["figures"]["reference_mae_mfu"] < 1
