"""The pretraining stage on tiny frame shards: init formats, freezing, exact resume, bad input."""

import csv
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from handeye import cli
from handeye.config import load_config
from handeye.errors import HandEyeError
from handeye.models import vit
from handeye.pretrain import PretrainConfig, build_model, initialise, lr_factor, run_pretrain

TINY = {"arch": "vit_test_patch8_32", "decoder_embed_dim": 16, "decoder_depth": 1, "decoder_num_heads": 2,
        "batch_size": 8, "epochs": 2, "warmup_epochs": 1, "preview_images": 2, "precision": "fp32",
        "threads": 1, "checkpoint_every_s": 0}


def write_frames(root: Path, n: int = 24, size: int = 40, seed: int = 0) -> Path:
    """A frame-shard folder in the contract's format: blocky random images in two shards."""
    rng = np.random.default_rng(seed)
    imgs = np.kron(rng.integers(0, 256, (n, 5, 5, 3), dtype=np.uint8), np.ones((1, size // 5, size // 5, 1), np.uint8))
    (root / "shards").mkdir(parents=True)
    half = n // 2
    np.save(root / "shards" / "000000.npy", np.ascontiguousarray(imgs[:half]))
    np.save(root / "shards" / "000001.npy", np.ascontiguousarray(imgs[half:]))
    with open(root / "frames.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["shard", "offset", "video", "frame_index", "timestamp", "sha1"])
        for i in range(n):
            sha1 = hashlib.sha1(imgs[i].tobytes()).hexdigest()
            w.writerow([f"{i // half:06d}", i % half, "clip.mp4", i, i / 2, sha1])
    return root


def write_params(path: Path, **overrides) -> Path:
    path.write_text(yaml.safe_dump({"pretrain": {**TINY, **overrides}}))
    return path


@pytest.fixture
def frames(tmp_path):
    return write_frames(tmp_path / "frames")


def cfg(**overrides) -> PretrainConfig:
    return load_config(PretrainConfig, "pretrain", {"pretrain": {**TINY, **overrides}})


def handeye(*args: str) -> int:
    """``handeye pretrain ARGS`` in-process; the caller reads stderr through capsys."""
    return cli.main(["pretrain", *args])


# ------------------------------------------------------------------------------------- training runs
def test_run_writes_every_output_and_rerun_resumes(tmp_path, frames, capsys):
    out = tmp_path / "run"
    result = run_pretrain(cfg(), frames, out)
    assert result.epochs_run == 2 and np.isfinite(result.final_loss)
    for name in ("checkpoint.pt", "encoder.pt", "preview.png", "timings.json", "run_manifest.json",
                 "live/metrics.json", "live/plots/metrics/train/loss.tsv"):
        assert (out / name).is_file(), name
    assert len((out / "live/plots/metrics/train/loss.tsv").read_text().splitlines()) == 1 + 2
    arch, _, pre, prov = vit.load_export(out / "encoder.pt")
    assert arch == vit.ARCHS["vit_test_patch8_32"] and pre.input_size == 32 and pre.patch_size == 8
    assert prov["init"]["init"] == "random" and prov["epochs"] == 2
    before = (out / "checkpoint.pt").read_bytes()
    again = run_pretrain(cfg(), frames, out)  # same command, same folder: nothing left to train
    assert again.epochs_run == 0 and "resuming" in capsys.readouterr().out
    assert (out / "checkpoint.pt").read_bytes() == before


def test_short_epochs_are_checkpointed_together_and_the_last_always(tmp_path, frames, monkeypatch):
    from handeye import pretrain

    saved, save = [], pretrain.repro.atomic_torch_save

    def recording_save(obj, path):
        if Path(path).name == "checkpoint.pt":
            saved.append(obj["epoch"])
        save(obj, path)

    monkeypatch.setattr(pretrain.repro, "atomic_torch_save", recording_save)
    run_pretrain(cfg(epochs=3, checkpoint_every_s=3600), frames, tmp_path / "run")
    assert saved == [0, 3]  # the start (a kill before the first epoch resumes there) and the end
    assert len((tmp_path / "run/live/plots/metrics/train/loss.tsv").read_text().splitlines()) == 1 + 3
    saved.clear()
    run_pretrain(cfg(epochs=3), frames, tmp_path / "every")  # interval 0: after every epoch
    assert saved == [0, 1, 2, 3]


def test_same_params_give_identical_checkpoints(tmp_path, frames):
    run_pretrain(cfg(), frames, tmp_path / "a")
    run_pretrain(cfg(), frames, tmp_path / "b")
    assert (tmp_path / "a/checkpoint.pt").read_bytes() == (tmp_path / "b/checkpoint.pt").read_bytes()


def test_resume_refuses_a_checkpoint_with_other_settings(tmp_path, frames):
    run_pretrain(cfg(epochs=1), frames, tmp_path / "run")
    with pytest.raises(HandEyeError, match=r"other settings \(epochs: 1 -> 2\)"):
        run_pretrain(cfg(epochs=2), frames, tmp_path / "run")


def test_resume_refuses_a_checkpoint_of_other_frames_unless_told_to_restart(tmp_path):
    first, second = write_frames(tmp_path / "a", seed=0), write_frames(tmp_path / "b", seed=1)
    run_pretrain(cfg(epochs=1), first, tmp_path / "run")
    shutil.rmtree(first)
    second.rename(first)  # same folder name, other frames: what a re-extraction does under `dvc repro`
    with pytest.raises(HandEyeError, match=r"other settings \(frames_md5: "):
        run_pretrain(cfg(epochs=1), first, tmp_path / "run")
    restarted = run_pretrain(cfg(epochs=1), first, tmp_path / "run", restart_if_changed=True)
    assert restarted.epochs_run == 1
    run_pretrain(cfg(epochs=1), first, tmp_path / "fresh")
    assert (tmp_path / "run/checkpoint.pt").read_bytes() == (tmp_path / "fresh/checkpoint.pt").read_bytes()


def test_resume_refuses_a_checkpoint_continued_from_other_init_weights(tmp_path, frames):
    """ego_frozen's checkpoint must not survive a retrained imagenet init at the same path."""
    run_pretrain(cfg(epochs=1), frames, tmp_path / "base")
    continued = cfg(epochs=1, init=str(tmp_path / "base/checkpoint.pt"))
    run_pretrain(continued, frames, tmp_path / "run")
    run_pretrain(cfg(epochs=2), frames, tmp_path / "base", restart_if_changed=True)  # the init changes
    with pytest.raises(HandEyeError, match=r"other settings \(init_md5: "):
        run_pretrain(continued, frames, tmp_path / "run")


def test_epochs_zero_exports_the_init(tmp_path, frames):
    run_pretrain(cfg(epochs=0), frames, tmp_path / "random")
    _, state, _, prov = vit.load_export(tmp_path / "random/encoder.pt")
    torch.manual_seed(0)
    fresh = build_model(cfg())
    assert prov["epochs"] == 0 and prov["final_loss"] is None
    assert all(torch.equal(state[k], v) for k, v in fresh.encoder.state_dict().items())


def test_lr_schedule_warms_up_then_decays_to_min():
    assert lr_factor(0, 10, 100, 0.1) == 0 and lr_factor(5, 10, 100, 0.1) == 0.5
    assert lr_factor(10, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(100, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_factor(55, 10, 100, 0.0) == pytest.approx(0.5)


def test_freezing_leaves_frozen_weights_untouched(tmp_path, frames, capsys):
    run_pretrain(cfg(epochs=0), frames, tmp_path / "base")
    out = tmp_path / "frozen"
    run_pretrain(cfg(init=str(tmp_path / "base/checkpoint.pt"), freeze_blocks=1), frames, out)
    assert "trainable (freeze_blocks=1)" in capsys.readouterr().out
    base = vit.load_export(tmp_path / "base/encoder.pt")[1]
    new = vit.load_export(out / "encoder.pt")[1]
    for k in ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.mlp.fc1.weight"):
        assert torch.equal(base[k], new[k]), k
    for k in ("blocks.1.mlp.fc1.weight", "norm.weight"):
        assert not torch.equal(base[k], new[k]), k


# --------------------------------------------------------------------------------------- init formats
@pytest.fixture
def trained(tmp_path):
    torch.manual_seed(3)
    return build_model(cfg())


def _assert_loaded(model, source, decoder: bool):
    for k, v in source.encoder.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[k], v), k
    same_decoder = all(torch.equal(model.decoder.state_dict()[k], v) for k, v in source.decoder.state_dict().items())
    assert same_decoder == decoder


def test_init_official_encoder_only_logs_a_fresh_decoder(tmp_path, trained, capsys):
    path = tmp_path / "mae_pretrain_vit_test.pth"
    torch.save({"model": trained.encoder.state_dict()}, path)
    model = build_model(cfg())
    prov = initialise(model, cfg(init=str(path)))
    _assert_loaded(model, trained, decoder=False)
    assert prov["decoder"] == "fresh" and prov["format"] == "mae-official"
    assert "has no decoder; the decoder starts from a fresh MAE init" in capsys.readouterr().out


def test_init_official_full_loads_the_decoder(tmp_path, trained):
    path = tmp_path / "mae_pretrain_vit_test_full.pth"
    torch.save({"model": {**trained.encoder.state_dict(), **trained.decoder.state_dict()}}, path)
    model = build_model(cfg())
    prov = initialise(model, cfg(init=str(path)))
    _assert_loaded(model, trained, decoder=True)
    assert prov["format"] == "mae-official-full" and prov["decoder"] == "loaded"
    arch, state, pre, _ = vit.load_pretrained_encoder(path)
    assert arch == vit.ARCHS["vit_test_patch8_32"] and "mask_token" not in state and "CC-BY-NC" in pre.license


def test_init_hf_folder_and_imagenet_alias(tmp_path, trained):
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    a = trained.arch
    hf = ViTMAEForPreTraining(ViTMAEConfig(
        hidden_size=a.embed_dim, num_hidden_layers=a.depth, num_attention_heads=a.num_heads,
        intermediate_size=4 * a.embed_dim, image_size=a.img_size, patch_size=a.patch_size, decoder_hidden_size=16,
        decoder_num_hidden_layers=1, decoder_num_attention_heads=2, decoder_intermediate_size=64))
    hf.save_pretrained(tmp_path / "vit-mae-test")
    model = build_model(cfg())
    prov = initialise(model, cfg(init="imagenet", imagenet_init=str(tmp_path / "vit-mae-test")))
    assert prov["format"] == "hf-vitmae" and prov["decoder"] == "loaded"
    att = hf.vit.layers[0].attention  # transformers 5.x module names
    qkv = torch.cat([att.q_proj.weight, att.k_proj.weight, att.v_proj.weight]).detach()
    assert torch.equal(model.encoder.blocks[0].attn.qkv.weight, qkv)
    model.check_position_embeddings("loaded")  # zero ones in the folder were restored to sin-cos


def test_init_from_handeye_export_and_checkpoint(tmp_path, frames):
    run_pretrain(cfg(epochs=1), frames, tmp_path / "src")
    for name, decoder in (("encoder.pt", "fresh"), ("checkpoint.pt", "loaded")):
        model = build_model(cfg())
        assert initialise(model, cfg(init=str(tmp_path / "src" / name)))["decoder"] == decoder


# ------------------------------------------------------------------------------------------ bad input
def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("handeye: error: "), err
    return err


def test_bad_inputs_are_one_line_errors(tmp_path, frames, capsys):
    params = str(write_params(tmp_path / "params.yaml"))
    out = str(tmp_path / "out")
    (tmp_path / "empty").mkdir()
    small = write_frames(tmp_path / "small", size=20)
    cases = {
        "not found": ["--data-dir", str(tmp_path / "missing")],
        "not a frame-shard folder": ["--data-dir", str(tmp_path / "empty")],
        "smaller than the encoder's 32x32": ["--data-dir", str(small)],
        "freeze_blocks must be between 0 and the encoder depth 2, got 3": ["--data-dir", str(frames),
                                                                           "--freeze-blocks", "3"],
        "got -1": ["--data-dir", str(frames), "--freeze-blocks", "-1"],
        "init weights": ["--data-dir", str(frames), "--init", str(tmp_path / "nope.pth")],
    }
    for expected, args in cases.items():
        assert handeye(*args, "--output-dir", out, "--params", params) == 2, expected
        assert expected in _one_line_error(capsys)


def test_checkpoint_of_another_architecture_lists_keys(tmp_path, frames, capsys):
    torch.manual_seed(0)
    other = build_model(cfg(arch="vit_demo_patch8_64"))
    torch.save({"model": other.encoder.state_dict()}, tmp_path / "other.pth")
    params = str(write_params(tmp_path / "params.yaml"))
    code = handeye("--data-dir", str(frames), "--output-dir", str(tmp_path / "o"), "--params", params,
                   "--init", str(tmp_path / "other.pth"))
    err = _one_line_error(capsys)
    assert code == 2 and "missing keys: none" in err and "unexpected keys: blocks.2." in err
    assert "shape mismatches: blocks.0" in err


class Payload:  # any pickled object that is not plain tensors and containers
    pass


def test_pickled_object_is_refused(tmp_path, frames, capsys):
    torch.save({"model": Payload()}, tmp_path / "evil.pth")
    params = str(write_params(tmp_path / "params.yaml"))
    code = handeye("--data-dir", str(frames), "--output-dir", str(tmp_path / "o"), "--params", params,
                   "--init", str(tmp_path / "evil.pth"))
    assert code == 2 and "not a plain state dict" in _one_line_error(capsys)
    torch.save(Payload(), tmp_path / "o2.pt")  # a planted checkpoint is refused too
    (tmp_path / "o2").mkdir()
    os.replace(tmp_path / "o2.pt", tmp_path / "o2/checkpoint.pt")
    code = handeye("--data-dir", str(frames), "--output-dir", str(tmp_path / "o2"), "--params", params)
    assert code == 2 and "not a plain state dict" in _one_line_error(capsys)


# ---------------------------------------------------------------------------------------- kill -9 run
def _pretrain_process(frames: Path, out: Path, params: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "handeye", "pretrain", "--data-dir", str(frames),
                             "--output-dir", str(out), "--params", str(params)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_sigkill_then_rerun_is_byte_identical_to_an_uninterrupted_run(tmp_path):
    frames = write_frames(tmp_path / "frames", n=48)
    params = write_params(tmp_path / "params.yaml", epochs=5)
    ref = _pretrain_process(frames, tmp_path / "ref", params)
    killed = _pretrain_process(frames, tmp_path / "killed", params)
    ckpt = tmp_path / "killed/checkpoint.pt"
    deadline = time.time() + 120
    while time.time() < deadline and killed.poll() is None:  # kill right after the first epoch's checkpoint
        if ckpt.is_file() and vit.load_state(ckpt)["epoch"] >= 1:
            killed.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    assert killed.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert 1 <= vit.load_state(ckpt)["epoch"] < 5 and not (tmp_path / "killed/encoder.pt").exists()
    resumed = _pretrain_process(frames, tmp_path / "killed", params)
    assert resumed.wait() == 0, resumed.stderr.read()
    assert ref.wait() == 0, ref.stderr.read()
    assert ckpt.read_bytes() == (tmp_path / "ref/checkpoint.pt").read_bytes()
    a, b = vit.load_export(tmp_path / "ref/encoder.pt")[1], vit.load_export(tmp_path / "killed/encoder.pt")[1]
    assert all(torch.equal(a[k], b[k]) for k in a)
