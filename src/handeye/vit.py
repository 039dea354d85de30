"""The ViT encoder every MAE strategy trains and exports, and HandEye's encoder export format.

The encoder is timm's ``VisionTransformer`` with a CLS token and fixed 2-D sin-cos position embeddings, the
layout of the official MAE encoder: its ``mae_pretrain_vit_base.pth`` loads strictly into it (FIELD_NOTES).
An export is a plain dict (loadable with ``torch.load(weights_only=True)``) that carries the architecture,
the preprocessing and the provenance beside the weights, so that a checkpoint alone is enough to embed.
"""

from __future__ import annotations

import dataclasses
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
    except Exception as e:  # torch raises UnpicklingError, RuntimeError or zipfile errors here
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
