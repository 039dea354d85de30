"""The ViT encoder every MAE strategy trains and exports, and HandEye's encoder export format.

The encoder is timm's ``VisionTransformer`` with a CLS token and fixed 2-D sin-cos position embeddings, the
layout of the official MAE encoder: its ``mae_pretrain_vit_base.pth`` loads strictly into it (FIELD_NOTES).
An export is a plain dict (loadable with ``torch.load(weights_only=True)``) that carries the architecture,
the preprocessing and the provenance beside the weights, so that a checkpoint alone is enough to embed.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from handeye.errors import HandEyeError

EXPORT_FORMAT = "handeye.encoder/1"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ViTArch:
    img_size: int = 224
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2


# Named architectures; the demo's is small enough that every strategy trains in minutes on 2 cores.
ARCHS: dict[str, ViTArch] = {
    "vit_base_patch16_224": ViTArch(224, 16, 768, 12, 12),
    "vit_large_patch16_224": ViTArch(224, 16, 1024, 24, 16),
    "vit_tiny_patch16_224": ViTArch(224, 16, 192, 12, 3),
    "vit_tiny_patch8_64": ViTArch(64, 8, 192, 12, 3),
    "vit_demo_patch8_64": ViTArch(64, 8, 96, 6, 3),
    "vit_test_patch8_32": ViTArch(32, 8, 32, 2, 2),  # for unit tests: milliseconds per step
}


@dataclass(frozen=True)
class Preprocess:
    """What an encoder expects: images resized (short side) and centre-cropped to ``input_size``, scaled to
    [0, 1], then normalised with ``mean``/``std``. Travels with the weights, as in timm's pretrained cfgs."""

    input_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    patch_size: int = 16
    license: str = "unspecified"


def arch_by_name(name: str) -> ViTArch:
    if name not in ARCHS:
        raise HandEyeError(f"unknown ViT architecture '{name}'; known: {', '.join(ARCHS)}")
    return ARCHS[name]


def sincos_pos_embed(embed_dim: int, grid_size: int, cls_token: bool = True) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding of MAE: ``(1, grid_size**2 + cls_token, embed_dim)``."""
    if embed_dim % 4:
        raise HandEyeError(f"embed_dim {embed_dim} must be divisible by 4 for 2-D sin-cos embeddings")
    omega = 1.0 / 10000 ** (np.arange(embed_dim // 4, dtype=np.float64) / (embed_dim / 4.0))
    gh, gw = np.meshgrid(np.arange(grid_size, dtype=np.float64), np.arange(grid_size, dtype=np.float64))
    # MAE puts the width coordinate first (meshgrid(w, h)); keep its order so official weights line up.
    parts = []
    for coord in (gh.reshape(-1), gw.reshape(-1)):
        out = np.einsum("m,d->md", coord, omega)
        parts += [np.sin(out), np.cos(out)]
    emb = np.concatenate(parts, axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros((1, embed_dim)), emb], axis=0)
    return torch.from_numpy(emb).float().unsqueeze(0)


def build_vit(arch: ViTArch) -> torch.nn.Module:
    """timm ViT with CLS pooling, no head, and frozen sin-cos position embeddings (MAE's encoder)."""
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(
        img_size=arch.img_size, patch_size=arch.patch_size, embed_dim=arch.embed_dim, depth=arch.depth,
        num_heads=arch.num_heads, mlp_ratio=arch.mlp_ratio, qkv_bias=True, num_classes=0,
        global_pool="token",
    )
    model.pos_embed.data.copy_(sincos_pos_embed(arch.embed_dim, arch.img_size // arch.patch_size))
    model.pos_embed.requires_grad_(False)
    return model


def save_export(path: str | Path, arch: ViTArch, state_dict: dict[str, torch.Tensor], preprocess: Preprocess,
                provenance: dict[str, Any]) -> None:
    """Write an encoder export atomically. ``provenance``: strategy, init, data, epochs, commit, ..."""
    from handeye.repro import atomic_torch_save

    atomic_torch_save({
        "format": EXPORT_FORMAT,
        "arch": dataclasses.asdict(arch),
        "preprocess": dataclasses.asdict(preprocess),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in state_dict.items()},
        "provenance": provenance,
    }, path)


def load_state(path: str | Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)``: a pickled object that is not plain tensors and containers is
    refused with a one-line error instead of being executed."""
    path = Path(path)
    if not path.is_file():
        raise HandEyeError(f"checkpoint {path} not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HandEyeError(f"{path} is not a plain state dict that can be loaded safely ({first[:200]})") from None
    if not isinstance(obj, dict):
        raise HandEyeError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return obj


def load_export(path: str | Path) -> tuple[ViTArch, dict[str, torch.Tensor], Preprocess, dict[str, Any]]:
    """Read a HandEye encoder export: (arch, encoder state dict, preprocessing, provenance)."""
    obj = load_state(path)
    if obj.get("format") != EXPORT_FORMAT:
        raise HandEyeError(f"{path} is not a HandEye encoder export (format {obj.get('format')!r})")
    pre = obj["preprocess"]
    pre = Preprocess(**{**pre, "mean": tuple(pre["mean"]), "std": tuple(pre["std"])})
    return ViTArch(**obj["arch"]), obj["state_dict"], pre, obj.get("provenance", {})


def load_strict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` whose failure is one line listing missing and unexpected keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = sorted(k for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
    if missing or unexpected or shapes:
        def brief(keys: list[str]) -> str:
            return ", ".join(keys[:6]) + (f" (+{len(keys) - 6} more)" if len(keys) > 6 else "") or "none"
        raise HandEyeError(f"{source} does not fit this architecture: missing keys: {brief(missing)}; "
                           f"unexpected keys: {brief(unexpected)}; shape mismatches: {brief(shapes)}")
    model.load_state_dict(state_dict, strict=True)


# ------------------------------------------------------------------------- pretrained MAE weights, any format
MAE_LICENSE = "CC-BY-NC-4.0 (facebookresearch/mae weights)"
CHECKPOINT_FORMAT = "handeye.models.mae-checkpoint/1"  # pretrain.py's training checkpoint
DECODER_KEYS = ("mask_token", "decoder_")  # official MAE: decoder keys start with these


@dataclass(frozen=True)
class PretrainedMAE:
    """Weights read from any supported file, in timm (encoder) and official MAE (decoder) key layout.
    ``decoder``/``decoder_arch`` are None when the file holds only an encoder; ``decoder_arch`` is a dict
    (embed_dim, depth, num_heads, mlp_ratio) when the file states it, else None."""

    arch: ViTArch
    encoder: dict[str, torch.Tensor]
    decoder: dict[str, torch.Tensor] | None
    decoder_arch: dict[str, Any] | None
    preprocess: Preprocess
    provenance: dict[str, Any]


def load_pretrained_encoder(path: str | Path) -> tuple[ViTArch, dict[str, torch.Tensor], Preprocess, dict]:
    """(arch, encoder state dict in timm keys, preprocessing, provenance) from any supported format:
    a HandEye export or training checkpoint, the official ``mae_pretrain_vit_*.pth`` ({'model': encoder})
    or ``*_full.pth`` (with decoder), a bare state dict, or a Hugging Face ViTMAE folder."""
    w = load_pretrained(path)
    return w.arch, w.encoder, w.preprocess, w.provenance


def load_pretrained(path: str | Path) -> PretrainedMAE:
    """Like ``load_pretrained_encoder``, keeping the decoder weights when the file has them."""
    path = Path(path)
    if path.is_dir():
        return _load_hf_vitmae(path)
    obj = load_state(path)
    if obj.get("format") == EXPORT_FORMAT:
        arch, state, pre, prov = load_export(path)
        return PretrainedMAE(arch, state, None, None, pre, {**prov, "source": str(path), "format": EXPORT_FORMAT})
    if obj.get("format") == CHECKPOINT_FORMAT:
        model = obj["model"]
        enc = {k[len("encoder."):]: v for k, v in model.items() if k.startswith("encoder.")}
        dec = {k[len("decoder."):]: v for k, v in model.items() if k.startswith("decoder.")}
        arch = ViTArch(**obj["arch"])
        pre = Preprocess(arch.img_size, patch_size=arch.patch_size, license=obj["config"].get("license", "unspecified"))
        return PretrainedMAE(arch, enc, dec, dict(obj["decoder_arch"]), pre,
                             {"source": str(path), "format": CHECKPOINT_FORMAT, "epoch": obj["epoch"]})
    state = obj["model"] if isinstance(obj.get("model"), dict) else obj
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise HandEyeError(f"{path} is not a recognised MAE checkpoint: expected a HandEye export or checkpoint, "
                           f"an official MAE file {{'model': state dict}} or a bare state dict of tensors")
    enc = {k: v for k, v in state.items() if not k.startswith(DECODER_KEYS)}
    dec = {k: v for k, v in state.items() if k.startswith(DECODER_KEYS)} or None
    arch = infer_arch(enc, str(path))
    pre = Preprocess(arch.img_size, patch_size=arch.patch_size, license=MAE_LICENSE)
    return PretrainedMAE(arch, enc, dec, None, pre,
                         {"source": str(path), "format": "mae-official" if dec is None else "mae-official-full"})


def infer_arch(state: dict[str, torch.Tensor], source: str) -> ViTArch:
    """Architecture from the shapes of a timm/official encoder state dict. The head count is not in the
    weights: it comes from the named architecture with these shapes, else the usual 64 channels per head."""
    need = ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.mlp.fc1.weight")
    missing = [k for k in need if k not in state]
    if missing:
        raise HandEyeError(f"{source} is not a ViT encoder state dict: missing keys {', '.join(missing)}")
    dim, patch = state["cls_token"].shape[-1], state["patch_embed.proj.weight"].shape[-1]
    grid = round((state["pos_embed"].shape[1] - 1) ** 0.5)
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    mlp_ratio = state["blocks.0.mlp.fc1.weight"].shape[0] / dim
    shape = (grid * patch, patch, dim, depth, mlp_ratio)
    named = [a for a in ARCHS.values() if (a.img_size, a.patch_size, a.embed_dim, a.depth, a.mlp_ratio) == shape]
    return named[0] if named else ViTArch(grid * patch, patch, dim, depth, max(1, dim // 64), mlp_ratio)


# Hugging Face ViTMAE -> timm/official names. Files on disk use the Hub layout (vit.encoder.layer.N.attention
# .attention.query, also what transformers 5.x save_pretrained writes); 5.x in-memory names are accepted too.
_HF_BLOCK = re.compile(r"^(?:vit\.)?(?:encoder\.layer|layers)\.(\d+)\.(.+)$")
_HF_DECODER_BLOCK = re.compile(r"^decoder\.(?:decoder_layers|decoder_encoder\.layer)\.(\d+)\.(.+)$")
_HF_IN_BLOCK = {
    "attention.attention.query": "q", "attention.q_proj": "q",
    "attention.attention.key": "k", "attention.k_proj": "k",
    "attention.attention.value": "v", "attention.v_proj": "v",
    "attention.output.dense": "attn.proj", "attention.o_proj": "attn.proj",
    "layernorm_before": "norm1", "layernorm_after": "norm2",
    "intermediate.dense": "mlp.fc1", "mlp.fc1": "mlp.fc1", "output.dense": "mlp.fc2", "mlp.fc2": "mlp.fc2",
}
_HF_TOP = {
    "embeddings.cls_token": "cls_token", "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias",
}


def hf_to_mae_keys(hf: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """A ViTMAE state dict (transformers) -> official MAE keys (timm encoder + ``decoder_*``), with the
    separate query/key/value projections fused into timm's ``qkv``."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    unknown = []
    for key, value in hf.items():
        bare = key.removeprefix("vit.")
        if bare in _HF_TOP:
            out[_HF_TOP[bare]] = value
        elif key.startswith("decoder.") and not _HF_DECODER_BLOCK.match(key):
            out[key[len("decoder."):]] = value  # decoder_embed, mask_token, decoder_pos_embed, norm, pred
        elif m := (_HF_BLOCK.match(key) or _HF_DECODER_BLOCK.match(key)):
            prefix = ("decoder_blocks" if key.startswith("decoder.") else "blocks") + f".{m[1]}."
            name, _, kind = m[2].rpartition(".")
            if name not in _HF_IN_BLOCK:
                unknown.append(key)
            elif _HF_IN_BLOCK[name] in ("q", "k", "v"):
                qkv.setdefault((prefix, kind), {})[_HF_IN_BLOCK[name]] = value
            else:
                out[f"{prefix}{_HF_IN_BLOCK[name]}.{kind}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise HandEyeError(f"{source}: unexpected ViTMAE keys {', '.join(sorted(unknown)[:6])}")
    for (prefix, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise HandEyeError(f"{source}: {prefix} lacks some of query/key/value")
        out[f"{prefix}attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def _load_hf_vitmae(folder: Path) -> PretrainedMAE:
    import json

    config_path = folder / "config.json"
    if not config_path.is_file():
        raise HandEyeError(f"{folder} is not a Hugging Face model folder (no config.json)")
    cfg = json.loads(config_path.read_text())
    if cfg.get("model_type") != "vit_mae":
        raise HandEyeError(f"{folder} holds a '{cfg.get('model_type')}' model, not ViTMAE (vit_mae)")
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        hf = load_file(folder / "model.safetensors")
    elif (folder / "pytorch_model.bin").is_file():
        hf = load_state(folder / "pytorch_model.bin")
    else:
        raise HandEyeError(f"{folder} has no model.safetensors or pytorch_model.bin")
    state = hf_to_mae_keys(hf, str(folder))
    size, patch, dim = int(cfg["image_size"]), int(cfg["patch_size"]), int(cfg["hidden_size"])
    arch = ViTArch(size, patch, dim, int(cfg["num_hidden_layers"]), int(cfg["num_attention_heads"]),
                   int(cfg["intermediate_size"]) / dim)
    provenance = {"source": str(folder), "format": "hf-vitmae", "norm_pix_loss": cfg.get("norm_pix_loss"),
                  "layer_norm_eps": cfg.get("layer_norm_eps")}
    # transformers 5.23 saves a freshly built ViTMAE with all-zero position embeddings (FIELD_NOTES). MAE's
    # position embeddings are fixed sin-cos and never trained, so restoring them loses nothing.
    for key, d in (("pos_embed", dim), ("decoder_pos_embed", cfg.get("decoder_hidden_size"))):
        if key in state and not state[key][:, 1:].any():
            state[key] = sincos_pos_embed(int(d), size // patch)
            provenance.setdefault("reinitialised", []).append(key)
            print(f"{folder}: {key} was all zero (transformers ViTMAE init); set to fixed sin-cos")
    enc = {k: v for k, v in state.items() if not k.startswith(DECODER_KEYS)}
    dec = {k: v for k, v in state.items() if k.startswith(DECODER_KEYS)} or None
    dec_arch = None if dec is None else {
        "embed_dim": int(cfg["decoder_hidden_size"]), "depth": int(cfg["decoder_num_hidden_layers"]),
        "num_heads": int(cfg["decoder_num_attention_heads"]),
        "mlp_ratio": int(cfg["decoder_intermediate_size"]) / int(cfg["decoder_hidden_size"])}
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if (folder / "preprocessor_config.json").is_file():
        pp = json.loads((folder / "preprocessor_config.json").read_text())
        mean, std = tuple(pp.get("image_mean", mean)), tuple(pp.get("image_std", std))
    pre = Preprocess(size, mean=mean, std=std, patch_size=patch, license=MAE_LICENSE)
    return PretrainedMAE(arch, enc, dec, dec_arch, pre, provenance)
