"""``handeye pretrain`` under torch.distributed (gloo on the CPU): the epoch sampler, layout-independent
samples, world size 2 against world size 1, resume after a killed rank, and bad launches."""

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from test_pretrain import cfg, write_frames, write_params
from torch.utils.data import DataLoader

from handeye.data.frames import FrameDataset
from handeye.errors import HandEyeError
from handeye.models import vit
from handeye.pretrain import EpochSampler, MaskedSamples, crop_box, micro_batch, run_pretrain

# World size 2 cannot be bitwise equal to world size 1: each rank's gradient is the mean of its half-batch and
# DDP averages the two, so the float additions of the global mean happen in another order (the same holds for
# accumulation over micro-steps). The differences stay in the last digits for a few steps.
LOSS_RTOL, WEIGHT_ATOL = 1e-5, 1e-5


# ---------------------------------------------------------------------------------------------- sampler
@pytest.mark.parametrize(("world_size", "accum"), [(1, 1), (2, 1), (4, 1), (1, 2), (2, 2)])
def test_every_used_frame_goes_to_one_rank_once_per_epoch(world_size, accum):
    n, batch = 53, 8
    shares = [list(EpochSampler(n, batch, world_size, r, accum, seed=3, epoch=1)) for r in range(world_size)]
    used = [i for share in shares for i in share]
    assert len(used) == len(set(used)) == (n // batch) * batch  # exactly once, the tail short of a batch dropped
    assert all(len(share) == len(used) // world_size for share in shares)


def global_batches(n, batch, world_size, accum, seed, epoch) -> list[set[int]]:
    """The optimiser steps' image sets, reassembled from every rank's micro-batches."""
    micro = micro_batch(batch, world_size, accum)
    shares = [list(EpochSampler(n, batch, world_size, r, accum, seed, epoch)) for r in range(world_size)]
    steps = []
    for s in range(n // batch):
        chunk = slice(s * accum * micro, (s + 1) * accum * micro)
        steps.append({i for share in shares for i in share[chunk]})
    return steps


def test_global_batches_depend_on_seed_and_epoch_not_on_the_layout():
    reference = global_batches(40, 8, 1, 1, seed=0, epoch=2)
    for world_size, accum in [(2, 1), (4, 1), (1, 2), (2, 2), (1, 8)]:
        assert global_batches(40, 8, world_size, accum, seed=0, epoch=2) == reference
    assert global_batches(40, 8, 1, 1, seed=0, epoch=3) != reference
    assert global_batches(40, 8, 1, 1, seed=1, epoch=2) != reference


def test_a_batch_that_the_layout_does_not_divide_is_refused():
    with pytest.raises(HandEyeError, match=r"batch_size 8 is not divisible by world size 3 x pretrain.accum_iter 1"):
        EpochSampler(40, 8, 3, 0, 1, seed=0, epoch=0)


# ------------------------------------------------------------------------------------- samples
def test_crop_boxes_lie_inside_the_frame_with_an_area_in_scale():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        top, left, h, w = crop_box(40, 60, (0.2, 1.0), g)
        assert 0 <= top and top + h <= 40 and 0 <= left and left + w <= 60
        assert 0.2 * 0.9 <= h * w / 2400 <= 1.0
    # An area no try can fit falls back to a centre crop clipped to the aspect-ratio range.
    assert crop_box(10, 100, (2.0, 3.0), g) == (0, 43, 10, 13)


def test_a_sample_is_the_same_whichever_worker_or_batch_loads_it(tmp_path):
    frames = FrameDataset(write_frames(tmp_path / "frames"))
    data = MaskedSamples(frames, 32, (0.2, 1.0), 16, seed=0, epoch=1)

    def load(batch_size: int, workers: int):
        loader = DataLoader(data, batch_size=batch_size, num_workers=workers)
        imgs, noise = zip(*loader, strict=True)
        return torch.cat(imgs), torch.cat(noise)

    imgs, noise = load(1, 0)
    assert imgs.shape == (24, 3, 32, 32) and imgs.dtype == torch.uint8 and noise.shape == (24, 16)
    for batch_size, workers in [(8, 0), (3, 2)]:
        other_imgs, other_noise = load(batch_size, workers)
        assert torch.equal(other_imgs, imgs) and torch.equal(other_noise, noise)
    later = MaskedSamples(frames, 32, (0.2, 1.0), 16, seed=0, epoch=2)[0]
    assert not torch.equal(later[1], noise[0])  # each epoch draws anew


def test_gradient_accumulation_trains_the_same_recipe(tmp_path, frames):
    one = run_pretrain(cfg(epochs=2), frames, tmp_path / "one")
    two = run_pretrain(cfg(epochs=2, accum_iter=2), frames, tmp_path / "two")
    assert two.final_loss == pytest.approx(one.final_loss, rel=LOSS_RTOL)
    assert_same_weights(tmp_path / "one", tmp_path / "two")
    manifest = json.loads((tmp_path / "two/run_manifest.json").read_text())
    assert manifest["launch"] == {"world_size": 1, "accum_iter": 2, "device": "cpu"}
    assert "accum_iter" not in manifest["config"]  # layout, not recipe: a run may resume on another one


@pytest.fixture
def frames(tmp_path):
    return write_frames(tmp_path / "frames")


def assert_same_weights(a: Path, b: Path, atol: float = WEIGHT_ATOL) -> None:
    wa, wb = vit.load_export(a / "encoder.pt")[1], vit.load_export(b / "encoder.pt")[1]
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=atol, rtol=0, msg=k)


def losses(run: Path) -> list[float]:
    return [row["loss"] for row in torch.load(run / "checkpoint.pt", weights_only=True)["history"]]


# ----------------------------------------------------------------------------------------- torchrun
@pytest.mark.slow
def test_two_ranks_train_what_one_rank_with_the_whole_batch_does(tmp_path, frames, torchrun):
    params = write_params(tmp_path / "params.yaml", epochs=3)
    single = tmp_path / "single"
    run_pretrain(cfg(epochs=3), frames, single)
    done = torchrun(2, "pretrain", "--data-dir", frames, "--output-dir", tmp_path / "ddp", "--params", params)
    assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_allclose(losses(tmp_path / "ddp"), losses(single), rtol=LOSS_RTOL)
    assert_same_weights(single, tmp_path / "ddp")
    timings = json.loads((tmp_path / "ddp/timings.json").read_text())
    assert timings["world_size"] == 2 and timings["epochs_run"] == 3
    assert done.stdout.count("pretrain: 3 epoch(s)") == 1  # rank 0 alone reports


def checkpoint_epoch(path: Path) -> int:
    try:
        return torch.load(path, weights_only=True)["epoch"]
    except (FileNotFoundError, RuntimeError, EOFError):
        return -1


@pytest.mark.slow
def test_a_killed_rank_resumes_to_the_bytes_of_an_uninterrupted_run(tmp_path, torchrun):
    import subprocess
    import sys

    frames = write_frames(tmp_path / "frames", n=64)
    epochs = 30
    params = write_params(tmp_path / "params.yaml", epochs=epochs, batch_size=16)
    args = ["pretrain", "--data-dir", frames, "--params", params]
    whole = torchrun(2, *args, "--output-dir", tmp_path / "whole/run")  # same folder name: it is the strategy
    assert whole.returncode == 0, whole.stderr[-2000:]

    out = tmp_path / "killed/run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max_restarts=0",
           "-m", "handeye", *map(str, args), "--output-dir", str(out)]
    launcher = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not 1 <= checkpoint_epoch(out / "checkpoint.pt") < epochs // 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    workers = psutil.Process(launcher.pid).children(recursive=True)
    assert len(workers) >= 2, "torchrun's workers not found"
    os.kill(workers[-1].pid, signal.SIGKILL)  # the last worker started: rank 1
    assert launcher.wait(timeout=60) != 0
    killed_at = checkpoint_epoch(out / "checkpoint.pt")
    assert 1 <= killed_at < epochs, killed_at

    again = torchrun(2, *args, "--output-dir", out)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resuming {out / 'checkpoint.pt'} after epoch" in again.stdout
    for name in ("checkpoint.pt", "encoder.pt", "live/plots/metrics/train/loss.tsv"):
        assert (out / name).read_bytes() == (tmp_path / "whole/run" / name).read_bytes(), name


# ------------------------------------------------------------------------------------------ bad launches
def error_lines(done) -> list[str]:
    return [line for p in done for line in (p.stdout + p.stderr).splitlines() if line.startswith("handeye: error:")]


@pytest.mark.slow
def test_a_world_size_that_does_not_divide_the_batch_is_one_line(tmp_path, frames, torchrun):
    params = write_params(tmp_path / "params.yaml")  # test_pretrain.TINY: batch 8
    done = torchrun(3, "pretrain", "--data-dir", frames, "--output-dir", tmp_path / "run", "--params", params)
    lines = error_lines([done])
    assert done.returncode != 0 and len(lines) == 1, done.stderr[-2000:]
    assert "batch_size 8 is not divisible by world size 3" in lines[0]
    assert not (tmp_path / "run/checkpoint.pt").exists()


@pytest.mark.slow
def test_a_rank_without_data_stops_every_rank_with_one_line(tmp_path, frames, ranks):
    params = write_params(tmp_path / "params.yaml")
    common = ["pretrain", "--output-dir", tmp_path / "run", "--params", params]
    done = ranks([[*common, "--data-dir", frames], [*common, "--data-dir", tmp_path / "missing"]])
    lines = error_lines(done)
    assert all(p.returncode != 0 for p in done) and len(lines) == 1, [p.stderr[-1000:] for p in done]
    assert lines[0].startswith(f"handeye: error: rank 1 of 2: data folder {tmp_path / 'missing'} not found")


@pytest.mark.slow
def test_params_that_differ_between_ranks_stop_every_rank_with_one_line(tmp_path, frames, ranks):
    params = write_params(tmp_path / "params.yaml", epochs=2)
    common = ["pretrain", "--data-dir", frames, "--output-dir", tmp_path / "run", "--params", params]
    done = ranks([common, [*common, "--epochs", "3"]])
    lines = error_lines(done)
    assert all(p.returncode != 0 for p in done) and len(lines) == 1, [p.stderr[-1000:] for p in done]
    assert "pretrain parameters differ between ranks (epochs: 2 on rank 0, 3 on rank 1)" in lines[0]

