"""One encoder interface for probing and RL: ``embed(images) -> (N, D)`` with its own preprocessing.

``load_encoder(spec)`` takes a registry name or a checkpoint path and returns an ``Encoder``:

- MAE strategies (``random``, ``imagenet``, ``ego_full``, ...): ``<models_root>/<name>/encoder.pt``, the
  HandEye export the pretraining stage writes.
- ``random:<arch>`` (e.g. ``random:vit_demo_patch8_64``): a seeded random-init ViT built in memory.
- DINOv3 (``dinov3-standin``, ``dinov3-vits16``, ...): a transformers ``DINOv3ViTModel`` from the folder
  ``<weights_root>/<name>`` or, for the real models when that folder is absent, from the gated Hub id with
  ``HF_TOKEN`` taken from the environment only.
- A path: a HandEye export ``.pt``, an official MAE ``.pth`` (encoder-only or ``_full``), or a Hugging Face
  folder of ViTMAE or DINOv3.

MAE features are the CLS token after the final norm, as the official MAE linear probe uses; DINOv3's are its
``pooler_output`` (= CLS after the final norm). ``pooling="mean"`` averages the patch tokens instead.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from handeye.config import project_path
from handeye.errors import HandEyeError
from handeye.models import vit
from handeye.models.vit import Preprocess

Pooling = Literal["cls", "mean"]
MODELS_ROOT = Path("out/models")
WEIGHTS_ROOT = Path("data/weights")
DINOV3_LICENSE = "DINOv3 License (https://ai.meta.com/resources/models-and-libraries/dinov3-license/)"
GATED_HINT = " (a gated model: accept its license on the Hub and set HF_TOKEN, or put the downloaded folder under " \
             "the weights root)"


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
    mean = torch.tensor(pre.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


# ----------------------------------------------------------------------------------------------- encoders


class _TorchEncoder:
    """Shared batching: ``embed`` runs ``_features`` on chunks of ``batch_size`` images in inference mode."""

    def __init__(self, name: str, model: torch.nn.Module, preprocess: Preprocess, embed_dim: int,
                 pooling: Pooling, device: str, batch_size: int, provenance: dict):
        if pooling not in ("cls", "mean"):
            raise HandEyeError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise HandEyeError(f"device '{device}' asked for, but torch sees no CUDA GPU (use device: cpu)")
        self.name, self.preprocess, self.embed_dim = name, preprocess, embed_dim
        self.pooling, self.device, self.batch_size = pooling, torch.device(device), batch_size
        self.provenance = provenance
        self.model = model.eval().requires_grad_(False).to(self.device)

    @torch.inference_mode()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """images: uint8 (N, 3, H, W) -> float32 (N, embed_dim) on the CPU."""
        out = []
        for chunk in images.split(self.batch_size):
            x = prepare_images(chunk.to(self.device), self.preprocess)  # uint8 travels: 4x fewer bytes
            out.append(self._features(x).float().cpu())
        return torch.cat(out) if out else torch.empty(0, self.embed_dim)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, dim={self.embed_dim}, pooling={self.pooling})"


class ViTEncoder(_TorchEncoder):
    """An MAE encoder (timm ViT): CLS token after the final norm, or the mean of the patch tokens."""

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.model.forward_features(x)  # (N, 1 + L, D), final norm applied
        if self.pooling == "cls":
            return tokens[:, 0]
        return tokens[:, self.model.num_prefix_tokens:].mean(dim=1)


class DINOv3Encoder(_TorchEncoder):
    """transformers ``DINOv3ViTModel``: ``pooler_output`` (CLS), or the mean of the patch tokens."""

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=x)
        if self.pooling == "cls":
            return out.pooler_output
        skip = 1 + self.model.config.num_register_tokens  # [CLS, registers, patches]
        return out.last_hidden_state[:, skip:].mean(dim=1)


# ----------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class RegistryEntry:
    kind: Literal["export", "dinov3"]
    about: str
    hub_id: str | None = None  # DINOv3 only: fetched from the Hub when <weights_root>/<name> is absent


MAE_STRATEGIES = ("random", "imagenet", "ego_full", "epic_continued", "ego_frozen", "epic_frozen")
_STRATEGY_ABOUT = {
    "random": "random init, no training (exported by the pretraining stage)",
    "imagenet": "ImageNet MAE (the demo's stand-in: MAE on data/generic photos)",
    "ego_full": "random init, full MAE training on Ego10K",
    "epic_continued": "ImageNet init, continued MAE pretraining on EPIC-KITCHENS, all layers trained",
    "ego_frozen": "ImageNet init, first blocks frozen, adapted on Ego10K",
    "epic_frozen": "ImageNet init, first blocks frozen, adapted on EPIC-KITCHENS",
}
REGISTRY: dict[str, RegistryEntry] = {
    **{name: RegistryEntry("export", about) for name, about in _STRATEGY_ABOUT.items()},
    "dinov3-standin": RegistryEntry("dinov3", "STAND-IN for DINOv3: tiny DINOv3ViTModel with random weights"),
    **{f"dinov3-{size}": RegistryEntry("dinov3", f"DINOv3 {about} (LVD-1689M, gated on the Hub)",
                                       f"facebook/dinov3-{size}-pretrain-lvd1689m")
       for size, about in (("vits16", "ViT-S/16"), ("vitb16", "ViT-B/16"), ("vitl16", "ViT-L/16"))},
}
RANDOM_PREFIX = "random:"
HUB_DINOV3 = re.compile(r"[\w.-]+/dinov3-[\w.-]+")  # e.g. facebook/dinov3-vitb16-pretrain-lvd1689m


def known_encoders() -> list[str]:
    return [*REGISTRY, f"{RANDOM_PREFIX}<arch>", "facebook/dinov3-<model>"]


def registry_path(name: str, models_root: Path = MODELS_ROOT, weights_root: Path = WEIGHTS_ROOT) -> Path:
    """The local file or folder a registry name reads (a DINOv3 Hub model may fall back to the Hub); relative
    roots fall back to the project root's when run from another folder (handeye.config.project_path)."""
    entry = REGISTRY[name]
    path = Path(models_root) / name / "encoder.pt" if entry.kind == "export" else Path(weights_root) / name
    return project_path(path)


def load_encoder(spec: str, *, models_root: str | Path = MODELS_ROOT, weights_root: str | Path = WEIGHTS_ROOT,
                 pooling: Pooling = "cls", device: str = "cpu", batch_size: int = 64,
                 seed: int = 0) -> Encoder:
    """A registry name, ``random:<arch>``, or a checkpoint path -> an ``Encoder`` ready to embed.

    seed: only for ``random:<arch>``; pooling: "cls" (the MAE/DINOv3 probe default) or "mean" of patches.
    """
    kw = {"pooling": pooling, "device": device, "batch_size": batch_size}
    if spec in REGISTRY:
        entry, path = REGISTRY[spec], registry_path(spec, Path(models_root), Path(weights_root))
        if entry.kind == "export":
            if not path.is_file():
                raise HandEyeError(f"encoder '{spec}' needs {path}; run the pretraining stage first "
                                   f"(`dvc repro` or `handeye pretrain`), or pass a checkpoint path")
            return _load_vit_checkpoint(path, spec, **kw)
        if path.is_dir():
            return _load_dinov3(path, spec, **kw)
        if entry.hub_id is None:
            raise HandEyeError(f"encoder '{spec}' needs the folder {path}; write it with "
                               f"`handeye demo-data --out data`")
        return _load_dinov3(entry.hub_id, spec, **kw)
    if spec.startswith(RANDOM_PREFIX):
        return random_encoder(spec[len(RANDOM_PREFIX):], seed=seed, **kw)
    path = project_path(spec)  # e.g. frames.dedup_encoder data/weights/dinov3-standin run from another folder
    if not path.exists() and HUB_DINOV3.fullmatch(spec):
        return _load_dinov3(spec, spec.split("/")[-1], **kw)
    if path.is_dir():
        if _hf_model_type(path) == "dinov3_vit":
            return _load_dinov3(path, path.name, **kw)
        return _load_vit_checkpoint(path, path.name, **kw)
    if path.is_file():
        return _load_vit_checkpoint(path, path.stem, **kw)
    raise HandEyeError(f"unknown encoder '{spec}': not a file or folder, and not one of: "
                       f"{', '.join(known_encoders())}")


def random_encoder(arch_name: str, seed: int = 0, pooling: Pooling = "cls", device: str = "cpu",
                   batch_size: int = 64) -> ViTEncoder:
    """A timm MAE-layout ViT with seeded random weights and ImageNet normalisation."""
    arch = vit.arch_by_name(arch_name)
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG stream untouched
        torch.manual_seed(seed)
        model = vit.build_vit(arch)
    pre = Preprocess(input_size=arch.img_size, patch_size=arch.patch_size, license="n/a (random weights)")
    return ViTEncoder(f"{RANDOM_PREFIX}{arch_name}", model, pre, arch.embed_dim, pooling, device, batch_size,
                      {"init": "random", "seed": seed, "arch": arch_name})


def _load_vit_checkpoint(path: Path, name: str, **kw) -> ViTEncoder:
    arch, state, pre, provenance = _read_vit_checkpoint(path)
    model = vit.build_vit(arch)
    vit.load_strict(model, state, str(path))
    return ViTEncoder(name, model, pre, arch.embed_dim, provenance=provenance, **kw)


def _read_vit_checkpoint(path: Path):
    """Every MAE format through the pretraining module's reader; HandEye exports even without it."""
    reader = getattr(vit, "load_pretrained_encoder", None)
    if reader is not None:
        return reader(path)
    if path.is_file() and vit.load_state(path).get("format") == vit.EXPORT_FORMAT:
        return vit.load_export(path)
    raise HandEyeError(f"{path} is not a HandEye encoder export, and this build has no reader for other "
                       f"MAE formats (handeye.models.vit.load_pretrained_encoder)")


def _hf_model_type(folder: Path) -> str | None:
    config = folder / "config.json"
    if not config.is_file():
        return None
    try:
        return json.loads(config.read_text()).get("model_type")
    except (OSError, json.JSONDecodeError) as e:
        raise HandEyeError(f"{config} is not valid JSON ({e})") from None


def _load_dinov3(source: str | Path, name: str, **kw) -> DINOv3Encoder:
    """``source``: a local folder, or a Hub id (gated: the token comes from $HF_TOKEN and nowhere else)."""
    from transformers import DINOv3ViTModel

    local = not isinstance(source, str)
    hint = "" if local else GATED_HINT
    token = None if local else os.environ.get("HF_TOKEN")
    if not local and not token and not _in_hub_cache(source):
        # Without a token a gated download cannot succeed: say so now, not after the Hub client's retries (~26 s).
        raise HandEyeError(f"cannot load DINOv3 '{source}'{hint}: HF_TOKEN is not set and the model is not in "
                           f"the Hugging Face cache")
    try:
        model = DINOv3ViTModel.from_pretrained(str(source), token=token)
    except (OSError, ValueError) as e:
        raise HandEyeError(f"cannot load DINOv3 '{source}'{hint}: {str(e).splitlines()[0][:200]}") from None
    cfg = model.config
    mean, std = _hf_normalisation(Path(source)) if local else (vit.IMAGENET_MEAN, vit.IMAGENET_STD)
    standin = "standin" in name or "stand-in" in str(getattr(cfg, "name_or_path", ""))
    pre = Preprocess(input_size=int(cfg.image_size), mean=mean, std=std, patch_size=int(cfg.patch_size),
                     license="n/a (stand-in, random weights)" if standin else DINOV3_LICENSE)
    return DINOv3Encoder(name, model, pre, int(cfg.hidden_size), provenance={"source": str(source)}, **kw)


def _in_hub_cache(hub_id: str) -> bool:
    """The Hub model was downloaded before (a cached gated model loads without a token)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(hub_id, "config.json"), str)


def _hf_normalisation(folder: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """mean/std from a preprocessor_config.json when the folder has one, else ImageNet's (DINOv3's own)."""
    path = folder / "preprocessor_config.json"
    if path.is_file():
        cfg = json.loads(path.read_text())
        if "image_mean" in cfg and "image_std" in cfg:
            return tuple(cfg["image_mean"]), tuple(cfg["image_std"])
    return vit.IMAGENET_MEAN, vit.IMAGENET_STD
