"""One encoder interface for probing and RL: ``embed(images) -> (N, D)`` with its own preprocessing.

``load_encoder(spec)`` takes a registry name or a checkpoint path and returns an ``Encoder``.
The registry and the checkpoint formats are filled in by the probing work (issue 5); this module fixes the
interface every stage codes against.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from handeye.vit import Preprocess


@runtime_checkable
class Encoder(Protocol):
    name: str
    preprocess: Preprocess
    embed_dim: int

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """images: uint8 (N, 3, H, W) -> float32 features (N, embed_dim), in inference mode."""
        ...


def prepare_images(images: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float (N, 3, S, S): resize short side to S, centre crop, normalise."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected uint8 images (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    x = images.float().div_(255.0)
    size = pre.input_size
    h, w = x.shape[-2:]
    if (h, w) != (size, size):
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
        top, left = (nh - size) // 2, (nw - size) // 2
        x = x[..., top:top + size, left:left + size]
    mean = torch.tensor(pre.mean, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std
