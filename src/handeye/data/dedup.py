"""Near-duplicate removal by embedding similarity, as in the study: L2-normalised CLS embeddings from an
encoder (DINOv3 in the paper profile), cosine similarity against what was already kept.

Two filters, applied in that order: within a video, a frame is dropped when it is too similar to the *last
kept* frame of the same video (a static camera produces long runs of the same view); across the corpus
(optional), a frame is dropped when it is too similar to *any* frame kept before it, checked with one batched
matmul per video against everything kept so far.
"""

from __future__ import annotations

import numpy as np
import torch

from handeye.errors import HandEyeError
from handeye.models.encoders import Encoder


def load_dedup_encoder(spec: str) -> Encoder:
    """The encoder named by ``spec`` (registry name, local folder or Hub id), via handeye.models.encoders."""
    try:
        from handeye.models.encoders import load_encoder
    except ImportError:
        raise HandEyeError("handeye.models.encoders.load_encoder is not available in this checkout; "
                           "set frames.dedup: false") from None
    return load_encoder(spec)


@torch.inference_mode()
def embed_frames(encoder: Encoder, frames: np.ndarray, batch_size: int = 64) -> torch.Tensor:
    """frames: uint8 (N, H, W, 3) -> float32 (N, D), each row of unit L2 norm."""
    out = []
    for start in range(0, len(frames), batch_size):
        images = torch.from_numpy(np.ascontiguousarray(frames[start:start + batch_size])).permute(0, 3, 1, 2)
        out.append(encoder.embed(images.contiguous()).float())
    emb = torch.cat(out) if out else torch.zeros(0, encoder.embed_dim)
    return torch.nn.functional.normalize(emb, dim=1)


def keep_within_video(emb: torch.Tensor, threshold: float) -> np.ndarray:
    """emb: (N, D) unit rows in video order -> bool (N,): False where cos(frame, last kept) > threshold."""
    keep = np.zeros(len(emb), dtype=bool)
    last = None
    for i, e in enumerate(emb):
        if last is None or float(e @ last) <= threshold:
            keep[i] = True
            last = e
    return keep


class CorpusIndex:
    """The embeddings kept so far across the corpus; ``keep_new`` filters a video's frames against them."""

    def __init__(self, threshold: float, block: int = 65536):
        self.threshold = threshold
        self.block = block  # kept rows per matmul: bounds the (N, block) similarity matrix
        self.kept: list[torch.Tensor] = []

    def __len__(self) -> int:
        return sum(len(k) for k in self.kept)

    def keep_new(self, emb: torch.Tensor) -> np.ndarray:
        """emb: (N, D) unit rows -> bool (N,): True where no earlier kept frame is near; adds those."""
        if len(emb) == 0:
            return np.zeros(0, dtype=bool)
        near = torch.zeros(len(emb), dtype=torch.bool)
        if self.kept:
            kept = torch.cat(self.kept)
            for start in range(0, len(kept), self.block):
                sims = emb @ kept[start:start + self.block].T
                near |= sims.max(dim=1).values > self.threshold
        # Within the batch, greedily in order: a frame near an earlier kept frame of the batch is dropped too.
        sims = emb @ emb.T
        keep = np.zeros(len(emb), dtype=bool)
        for i in range(len(emb)):
            if near[i]:
                continue
            earlier = np.flatnonzero(keep[:i])
            if len(earlier) == 0 or float(sims[i, earlier].max()) <= self.threshold:
                keep[i] = True
        if keep.any():
            self.kept.append(emb[torch.from_numpy(keep)])
        return keep
