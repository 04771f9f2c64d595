"""Identity preservation of edits.

:class:`IdentityPreservation` measures the mean cosine similarity between an embedding of each source image
and of its edit. What it measures depends entirely on the embedding network:

* a face-recognition embedding (ArcFace, FaceNet, ... supplied by the user as an ``nn.Module`` mapping
  ``[-1, 1]`` images to ``[B, D]``) is built to ignore expression, so a drop means identity loss;
* the default, a segexpr expression recogniser's ``features()``, is built to *see* expression: its cosine
  drops when the expression changes even if identity is perfect. With it, compare models against each
  other at the same targets, never against 1.

Passing ``identity`` labels adds an *impostor* baseline: the mean cosine between edits and sources of other
identities in the same batch. The gap between the two numbers is what the embedding says about identity;
a gap near 0 means the embedding does not separate identities and the metric is uninformative.

On SynthFACS identity can be checked exactly instead: render the source identity with the target AUs
(``segexpr.data.synthetic.render(identity, target_aus, size)``) and compare the edit to it with
:class:`segexpr.metrics.GroundTruthMetrics` (PSNR/SSIM/L1). That is the stronger test and needs no embedding.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric

from segexpr.metrics.distribution import FeatureExtractor, ModuleFeatures, RecognizerFeatures
from segexpr.metrics.image import check_image_pair

__all__ = ["IdentityPreservation"]


class IdentityPreservation(Metric):
    """Mean cosine similarity between embeddings of sources and their edits.

    Args:
        embedder: a :class:`~segexpr.metrics.distribution.FeatureExtractor`, a module with
            ``features(images) -> [B, D]`` (a trained recogniser: its features are used), or any module
            ``images -> [B, D]``. Images are float ``[B, 3, H, W]`` in ``[-1, 1]``. The network is held
            unregistered (not a parameter of the metric), run in eval mode without gradients.
        probe_size: image side of the one probe forward pass used to read the embedding size.

    ``update(source, edited, identity=None)``: ``source``, ``edited`` float ``[B, 3, H, W]`` in ``[-1, 1]``,
    same shape, ``edited[i]`` an edit of ``source[i]``; optional ``identity`` int64 ``[B]`` labels of the
    sources enable the impostor baseline (pairs ``(edited[i], source[j])`` with different identities).

    ``compute()`` returns ``{"identity_cosine"}`` (mean over images, in ``[-1, 1]``, higher is better) and,
    when identities were given and a batch held two different ones, ``"impostor_cosine"`` (mean over
    different-identity pairs) and ``"identity_gap"`` (their difference). States are sums, synced under DDP.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, embedder: nn.Module, probe_size: int = 64, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(embedder, FeatureExtractor):
            self.embedder = embedder
        elif callable(getattr(embedder, "features", None)):
            self.embedder = RecognizerFeatures(embedder, probe_size=probe_size)
        else:
            self.embedder = ModuleFeatures(embedder, probe_size=probe_size)
        for name in ("cos_sum", "impostor_sum"):
            self.add_state(name, torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        for name in ("count", "impostor_count"):
            self.add_state(name, torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    @property
    def description(self) -> str:
        """Which embedding was used, for result tables."""
        return f"identity cosine ({self.embedder.description})"

    def update(self, source: Tensor, edited: Tensor, identity: Tensor | None = None) -> None:
        check_image_pair(source, edited, "source", "edited")
        batch = source.shape[0]
        if identity is not None and (not isinstance(identity, Tensor) or identity.dtype.is_floating_point
                                     or tuple(identity.shape) != (batch,)):
            raise ValueError(f"identity must be an integer tensor [B] = [{batch}], got "
                             f"{getattr(identity, 'dtype', type(identity).__name__)} "
                             f"{tuple(getattr(identity, 'shape', ()))}")
        emb = F.normalize(self.embedder(torch.cat([source, edited])).double(), dim=1)
        src, edit = emb[:batch], emb[batch:]
        self.cos_sum += (src * edit).sum()
        self.count += batch
        if identity is not None:
            identity = identity.to(emb.device)
            different = identity[:, None] != identity[None, :]  # [edit i, source j]
            self.impostor_sum += ((edit @ src.t()) * different).sum()
            self.impostor_count += different.sum()

    def compute(self) -> dict[str, Tensor]:
        if int(self.count) == 0:
            raise RuntimeError("IdentityPreservation.compute() called before any update()")
        out = {"identity_cosine": (self.cos_sum / self.count).float()}
        if int(self.impostor_count) > 0:
            out["impostor_cosine"] = (self.impostor_sum / self.impostor_count).float()
            out["identity_gap"] = out["identity_cosine"] - out["impostor_cosine"]
        return out
