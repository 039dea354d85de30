"""The masked autoencoder of He et al. (2022): a timm ViT encoder that sees only the visible patches, and a
light decoder of timm Blocks that reconstructs the normalised pixels of the masked ones.

Weights keep the official layout: ``encoder.*`` is the timm ``VisionTransformer`` of ``handeye.models.vit`` (the keys
of ``mae_pretrain_vit_base.pth``) and ``decoder.*`` holds ``mask_token``, ``decoder_embed``, ``decoder_blocks``,
... exactly as in ``mae_pretrain_vit_base_full.pth``, so official files load without renaming.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from timm.models.vision_transformer import Block
from torch import nn

from handeye.errors import HandEyeError
from handeye.models.vit import ViTArch, build_vit, sincos_pos_embed

LayerNorm = partial(nn.LayerNorm, eps=1e-6)  # MAE's and timm ViT's epsilon


@dataclass(frozen=True)
class DecoderArch:
    embed_dim: int = 512
    depth: int = 8
    num_heads: int = 16
    mlp_ratio: float = 4.0


class MAEDecoder(nn.Module):
    """Visible tokens + mask tokens -> per-patch pixel predictions. Keys match the official ``*_full.pth``."""

    def __init__(self, encoder_dim: int, num_patches: int, patch_size: int, arch: DecoderArch):
        super().__init__()
        self.decoder_embed = nn.Linear(encoder_dim, arch.embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, arch.embed_dim))
        grid = int(num_patches**0.5)
        self.decoder_pos_embed = nn.Parameter(sincos_pos_embed(arch.embed_dim, grid), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            Block(arch.embed_dim, arch.num_heads, arch.mlp_ratio, qkv_bias=True, norm_layer=LayerNorm)
            for _ in range(arch.depth))
        self.decoder_norm = LayerNorm(arch.embed_dim)
        self.decoder_pred = nn.Linear(arch.embed_dim, patch_size**2 * 3)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent: (N, 1 + K, D) encoder output, ids_restore: (N, L) -> pred: (N, L, p*p*3)."""
        x = self.decoder_embed(latent)
        n, L = ids_restore.shape
        masked = self.mask_token.to(x.dtype).expand(n, L + 1 - x.shape[1], -1)
        patches = torch.cat([x[:, 1:], masked], dim=1)
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]


class MaskedAutoencoder(nn.Module):
    def __init__(self, arch: ViTArch, decoder: DecoderArch = DecoderArch(), norm_pix_loss: bool = True):
        super().__init__()
        self.arch, self.decoder_arch, self.norm_pix_loss = arch, decoder, norm_pix_loss
        self.encoder = build_vit(arch)
        self.decoder = MAEDecoder(arch.embed_dim, arch.num_patches, arch.patch_size, decoder)
        self.initialize_weights()
        self.check_position_embeddings("a freshly built MAE")

    def initialize_weights(self) -> None:
        """The official MAE init (xavier linears, normal(0.02) tokens); position embeddings stay sin-cos."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.encoder.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # as a linear layer, like the official code
        nn.init.normal_(self.encoder.cls_token, std=0.02)
        nn.init.normal_(self.decoder.mask_token, std=0.02)

    def check_position_embeddings(self, source: str) -> None:
        """Refuse all-zero position embeddings: transformers 5.23 builds ViTMAE that way (FIELD_NOTES), and
        as they are frozen a model would never learn where its patches are."""
        for name, pe in (("encoder.pos_embed", self.encoder.pos_embed),
                         ("decoder.decoder_pos_embed", self.decoder.decoder_pos_embed)):
            if not pe[:, 1:].detach().any():
                raise HandEyeError(f"{source} has all-zero position embeddings ({name}); MAE needs fixed "
                                   "sin-cos ones (re-initialise them, e.g. with handeye.models.vit.sincos_pos_embed)")

    def freeze(self, blocks: int) -> None:
        """Freeze patch embedding, position embedding, CLS token and the first ``blocks`` encoder blocks."""
        depth = len(self.encoder.blocks)
        if not 0 <= blocks <= depth:
            raise HandEyeError(f"freeze_blocks must be between 0 and the encoder depth {depth}, got {blocks}")
        frozen = [self.encoder.patch_embed, *self.encoder.blocks[:blocks]]
        for p in (p for m in frozen for p in m.parameters()):
            p.requires_grad_(False)
        self.encoder.cls_token.requires_grad_(False)
        self.encoder.pos_embed.requires_grad_(False)

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs: (N, 3, H, W) -> (N, L, p*p*3), pixel order (p, q, c) as in the official code."""
        p = self.arch.patch_size
        n, c, h, w = imgs.shape
        x = imgs.reshape(n, c, h // p, p, w // p, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(n, (h // p) * (w // p), p * p * c)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, L, p*p*3) -> imgs: (N, 3, H, W)."""
        p = self.arch.patch_size
        g = int(x.shape[1] ** 0.5)
        x = x.reshape(x.shape[0], g, g, p, p, 3)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], 3, g * p, g * p)

    @staticmethod
    def random_masking(x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None):
        """x: (N, L, D) -> kept (N, K, D), mask (N, L) with 1 = removed, ids_restore (N, L).

        Per-sample shuffle by argsorting uniform noise; the first K of the shuffle are kept."""
        n, L, d = x.shape
        keep = int(L * (1 - mask_ratio))
        if noise is None:
            noise = torch.rand(n, L, device=x.device)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        kept = torch.gather(x, 1, ids_shuffle[:, :keep].unsqueeze(-1).expand(-1, -1, d))
        mask = torch.ones(n, L, device=x.device)
        mask[:, :keep] = 0
        return kept, torch.gather(mask, 1, ids_restore), ids_restore

    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None):
        """imgs: (N, 3, H, W) -> latent (N, 1 + K, D), mask (N, L), ids_restore (N, L).
        Only the K visible patches go through the blocks: that is where MAE's speed comes from."""
        enc = self.encoder
        x = enc.patch_embed(imgs) + enc.pos_embed[:, 1:]
        x, mask, ids_restore = self.random_masking(x, mask_ratio, noise)
        cls = (enc.cls_token + enc.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = enc.norm_pre(torch.cat([cls, x], dim=1))
        return enc.norm(enc.blocks(x)), mask, ids_restore

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """imgs: (N, 3, H, W), pred: (N, L, p*p*3), mask: (N, L) -> mean squared error on removed patches,
        in float32 whatever the autocast dtype of ``pred``."""
        target = self.patchify(imgs.float())
        if self.norm_pix_loss:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        per_patch = ((pred.float() - target) ** 2).mean(dim=-1)
        return (per_patch * mask).sum() / mask.sum()

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.75, noise: torch.Tensor | None = None):
        """imgs: (N, 3, H, W) normalised -> (loss, pred (N, L, p*p*3), mask (N, L))."""
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
        pred = self.decoder(latent, ids_restore)
        return self.forward_loss(imgs, pred, mask), pred, mask

    def reconstruct(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Predictions back in image space, visible patches pasted from ``imgs``: (N, 3, H, W). With the
        normalised-pixel loss each predicted patch is rescaled by its true mean/std, as in the MAE demo."""
        target = self.patchify(imgs.float())
        pred = pred.float()
        if self.norm_pix_loss:
            pred = pred * (target.var(dim=-1, keepdim=True) + 1e-6) ** 0.5 + target.mean(dim=-1, keepdim=True)
        m = mask.unsqueeze(-1)
        return self.unpatchify(pred * m + target * (1 - m))
