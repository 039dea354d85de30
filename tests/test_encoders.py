"""The encoder registry: every kind loads from small local files and embeds (N, 3, H, W) uint8 -> (N, D)."""

from __future__ import annotations

import pytest
import torch

from handeye.errors import HandEyeError
from handeye.models import encoders, vit
from handeye.models.encoders import load_encoder

TINY = vit.ViTArch(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


def write_export(path, seed=0):
    torch.manual_seed(seed)
    model = vit.build_vit(TINY)
    vit.save_export(path, TINY, model.state_dict(), vit.Preprocess(input_size=32, patch_size=8),
                    {"strategy": "test"})
    return model


def write_dinov3(folder, seed=0):
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    torch.manual_seed(seed)
    cfg = DINOv3ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                          num_register_tokens=4, image_size=32, patch_size=8)
    model = DINOv3ViTModel(cfg)
    model.save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """models_root with every MAE strategy's export and weights_root with every DINOv3 name as a folder."""
    base = tmp_path_factory.mktemp("weights")
    models, weights = base / "models", base / "weights"
    for name, entry in encoders.REGISTRY.items():
        if entry.kind == "export":
            write_export(models / name / "encoder.pt")
        else:
            write_dinov3(weights / name)
    return models, weights


def images(n=3, h=40, w=52, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=g)


SPECS = [*encoders.REGISTRY, "random:vit_demo_patch8_64", "path:export", "path:dinov3", "path:mae_pth",
         "path:vitmae_folder"]


@pytest.mark.parametrize("spec", SPECS)
def test_every_kind_embeds(spec, roots, tmp_path):
    models, weights = roots
    if spec == "path:export":
        spec = str(models / "ego_full" / "encoder.pt")
    elif spec == "path:dinov3":
        spec = str(weights / "dinov3-standin")
    elif spec.startswith("path:") and not hasattr(vit, "load_pretrained_encoder"):
        pytest.skip("handeye.models.vit.load_pretrained_encoder (other MAE formats) not in this checkout")
    elif spec == "path:mae_pth":  # the official encoder-only layout: {'model': timm encoder state}
        torch.save({"model": vit.build_vit(TINY).state_dict()}, tmp_path / "mae_pretrain_tiny.pth")
        spec = str(tmp_path / "mae_pretrain_tiny.pth")
    elif spec == "path:vitmae_folder":  # a Hugging Face ViTMAE folder (facebook/vit-mae-base layout)
        from transformers import ViTMAEConfig, ViTMAEModel

        cfg = ViTMAEConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                           image_size=32, patch_size=8)
        ViTMAEModel(cfg).save_pretrained(tmp_path / "vit-mae-tiny")
        spec = str(tmp_path / "vit-mae-tiny")
    enc = load_encoder(spec, models_root=models, weights_root=weights)
    assert isinstance(enc, encoders.Encoder)
    out = enc.embed(images())
    assert out.shape == (3, enc.embed_dim) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert out.std(0).mean() > 0  # different images, different features
    assert enc.preprocess.input_size > 0 and enc.preprocess.license


def test_mae_embedding_is_cls_after_final_norm(tmp_path):
    model = write_export(tmp_path / "e.pt").eval()
    enc = load_encoder(str(tmp_path / "e.pt"))
    imgs = images(4, 32, 32)
    x = encoders.prepare_images(imgs, enc.preprocess)
    with torch.no_grad():
        expected = model.forward_head(model.forward_features(x), pre_logits=True)  # timm's CLS path
    torch.testing.assert_close(enc.embed(imgs), expected)
    mean = load_encoder(str(tmp_path / "e.pt"), pooling="mean").embed(imgs)
    with torch.no_grad():
        torch.testing.assert_close(mean, model.forward_features(x)[:, 1:].mean(1))


def test_dinov3_embedding_is_pooler_output(tmp_path):
    model = write_dinov3(tmp_path / "d").eval()
    enc = load_encoder(str(tmp_path / "d"))
    imgs = images(2, 32, 32)
    with torch.no_grad():
        out = model(pixel_values=encoders.prepare_images(imgs, enc.preprocess))
    torch.testing.assert_close(enc.embed(imgs), out.pooler_output)
    mean = load_encoder(str(tmp_path / "d"), pooling="mean").embed(imgs)
    torch.testing.assert_close(mean, out.last_hidden_state[:, 5:].mean(1))  # skip CLS + 4 registers


def test_batching_does_not_change_features(tmp_path):
    write_export(tmp_path / "e.pt")
    imgs = images(5)
    a = load_encoder(str(tmp_path / "e.pt"), batch_size=2).embed(imgs)
    b = load_encoder(str(tmp_path / "e.pt"), batch_size=5).embed(imgs)
    torch.testing.assert_close(a, b)


def test_unknown_name_lists_known_ones():
    with pytest.raises(HandEyeError, match=r"unknown encoder 'ego_fulll'.*ego_full.*dinov3-vitb16"):
        load_encoder("ego_fulll")


def test_missing_strategy_export_says_which_file(tmp_path):
    with pytest.raises(HandEyeError, match=r"needs .*imagenet/encoder\.pt"):
        load_encoder("imagenet", models_root=tmp_path)


def test_hub_dinov3_reads_token_from_environment_only(tmp_path, monkeypatch):
    from transformers import DINOv3ViTModel

    seen = {}

    def fake(source, **kw):
        seen.update(source=source, **kw)
        raise OSError("offline")

    monkeypatch.setattr(DINOv3ViTModel, "from_pretrained", fake)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    with pytest.raises(HandEyeError, match=r"gated.*HF_TOKEN"):
        load_encoder("dinov3-vitb16", weights_root=tmp_path)  # no local folder -> the Hub id
    assert seen == {"source": "facebook/dinov3-vitb16-pretrain-lvd1689m", "token": "hf_test_token"}


def test_other_formats_need_the_pretraining_reader(tmp_path, monkeypatch):
    monkeypatch.delattr(vit, "load_pretrained_encoder", raising=False)
    torch.save({"model": {}}, tmp_path / "x.pth")
    with pytest.raises(HandEyeError, match="not a HandEye encoder export"):
        load_encoder(str(tmp_path / "x.pth"))


def test_random_init_is_seeded():
    a = load_encoder("random:vit_demo_patch8_64", seed=1).embed(images())
    b = load_encoder("random:vit_demo_patch8_64", seed=1).embed(images())
    c = load_encoder("random:vit_demo_patch8_64", seed=2).embed(images())
    assert torch.equal(a, b) and not torch.equal(a, c)
