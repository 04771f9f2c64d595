"""FID and KID with a pluggable feature extractor.

torchmetrics' :class:`~torchmetrics.image.FrechetInceptionDistance` and
:class:`~torchmetrics.image.KernelInceptionDistance` do the statistics; segexpr only chooses the features.
Every extractor here is a :class:`FeatureExtractor`: an ``nn.Module`` that takes segexpr images (float
``[B, 3, H, W]`` in ``[-1, 1]``) and returns float ``[B, D]`` features, doing whatever conversion its network
needs. The metrics are built with that module as ``feature=``, so their ``update(images, real=...)`` takes
segexpr images directly.

* :class:`InceptionFeatures` -- the standard Inception-v3 pool3 features (torch-fidelity's port of the
  TF-FID network). Needs the optional ``torch-fidelity`` package *and* its weights on disk; it never
  downloads them: it raises :class:`InceptionWeightsUnavailable` instead. Only these give FID/KID numbers
  comparable with the literature.
* :class:`RecognizerFeatures` -- penultimate features of a trained segexpr expression recogniser
  (``recognizer.features(images) -> [B, D]``). The offline default; numbers are comparable only between
  runs that use the same recogniser checkpoint.
* :class:`ModuleFeatures` -- any user ``nn.Module`` mapping ``[-1, 1]`` images to ``[B, D]``.

:func:`build_fid` / :func:`build_kid` return the metric together with a description of the features
(``"FID (recogniser features: AUDiscriminatorModule, 256-d)"``), to be printed next to the number.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor, nn
# torchmetrics.image only re-exports these when torch-fidelity is installed; the modules themselves do not need it
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from segexpr.metrics.image import check_images

__all__ = [
    "FeatureExtractor", "InceptionFeatures", "RecognizerFeatures", "ModuleFeatures", "InceptionWeightsUnavailable",
    "find_inception_weights", "inception_available", "build_feature_extractor", "build_fid", "build_kid", "INCEPTION_WEIGHTS_ENV",
]

#: Environment variable that may point at torch-fidelity's Inception-v3 weights file.
INCEPTION_WEIGHTS_ENV = "SEGEXPR_INCEPTION_WEIGHTS"
#: File name torch-fidelity downloads into ``torch.hub.get_dir()/checkpoints`` (from its ``URL_INCEPTION_V3``).
INCEPTION_WEIGHTS_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
_INCEPTION_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_WEIGHTS_FILENAME)


class InceptionWeightsUnavailable(FileNotFoundError):
    """The Inception-v3 FID weights (or torch-fidelity) are not available locally; nothing was downloaded."""


# --------------------------------------------------------------------------------------------------- helpers
def _module_device(module: nn.Module) -> torch.device | None:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return None


@contextlib.contextmanager
def frozen_eval(module: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """Run ``module`` in eval mode without gradients on ``device``; restore its train/eval flags afterwards.

    The module is moved to ``device`` if it lives elsewhere (it then stays there): judges follow the data.
    """
    if _module_device(module) not in (None, device):
        with torch.inference_mode(False):  # never turn the module's weights into inference tensors
            module.to(device)
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            yield module
    finally:
        for m, mode in modes:
            m.training = mode


def _check_features(features: Any, batch: int, source: str) -> Tensor:
    if not isinstance(features, Tensor):
        raise TypeError(f"{source} must return a tensor [B, D], got {type(features).__name__}")
    if features.dim() != 2 or features.shape[0] != batch:
        raise ValueError(f"{source} must return pooled features [B, D] with B={batch}, got shape "
                         f"{tuple(features.shape)}" + (" (pool spatial feature maps first)" if features.dim() == 4 else ""))
    if not features.dtype.is_floating_point:
        raise ValueError(f"{source} must return float features, got dtype {features.dtype}")
    return features.float()


class FeatureExtractor(nn.Module):
    """Base class: segexpr images (float ``[B, 3, H, W]`` in ``[-1, 1]``) -> float ``[B, num_features]``.

    Subclasses implement :meth:`extract`; :meth:`forward` validates the input and the output. Attributes
    ``num_features`` (int, read by torchmetrics to size its states) and ``description`` (str, what the
    features are, for result tables) must be set by the subclass.

    A wrapped model that the extractor does not own (a recogniser) is *not* registered as a submodule:
    the metric holding the extractor then has no parameters of its own, so it never reaches an optimiser,
    a checkpoint, or DDP's gradient bookkeeping. The model is run in eval mode without gradients and moved
    to the device of the images it receives.
    """

    num_features: int
    description: str

    def extract(self, images: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, images: Tensor) -> Tensor:
        check_images(images, "images given to the FID/KID feature extractor")
        return _check_features(self.extract(images), images.shape[0], type(self).__name__)

    def extra_repr(self) -> str:
        return f"num_features={getattr(self, 'num_features', '?')}, description={getattr(self, 'description', '?')!r}"


class _CallableFeatures(FeatureExtractor):
    """Features from a model this extractor does not own (held unregistered, see :class:`FeatureExtractor`)."""

    def __init__(self, model: nn.Module, num_features: int | None, probe_size: int, kind: str) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"expected an nn.Module, got {type(model).__name__}")
        self._model_ref = (model,)  # a tuple hides it from nn.Module's registration
        if num_features is None:
            num_features = getattr(model, "num_features", None) or getattr(model, "feature_dim", None)
        if num_features is None:
            device = _module_device(model) or torch.device("cpu")
            probe = torch.zeros(2, 3, probe_size, probe_size, device=device)
            with frozen_eval(model, device):
                num_features = _check_features(self._run(model, probe), 2, kind).shape[1]
        self.num_features = int(num_features)
        self.description = f"{kind}: {type(model).__name__}, {self.num_features}-d"

    @property
    def model(self) -> nn.Module:
        return self._model_ref[0]

    def _run(self, model: nn.Module, images: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def extract(self, images: Tensor) -> Tensor:
        with frozen_eval(self.model, images.device) as model:
            return self._run(model, images)


class RecognizerFeatures(_CallableFeatures):
    """Penultimate pooled features of a trained expression recogniser: ``recognizer.features(images)``.

    Args:
        recognizer: any ``nn.Module`` with ``features(images [B,3,H,W] in [-1,1]) -> [B, D]``, e.g. a trained
            :class:`segexpr.modules.AUDiscriminatorModule`. Use a recogniser trained *independently* of the
            generator being evaluated (not the GAN's own discriminator, which the generator learnt to fool).
        num_features: ``D``; read from ``recognizer.num_features`` / ``feature_dim`` or probed with a forward
            pass on zeros ``[2, 3, probe_size, probe_size]`` when omitted.
        probe_size: image side used for that probe.
    """

    def __init__(self, recognizer: nn.Module, num_features: int | None = None, probe_size: int = 64) -> None:
        if not callable(getattr(recognizer, "features", None)):
            raise TypeError(f"{type(recognizer).__name__} has no features(images) -> [B, D] method; "
                            "wrap a plain feature network with ModuleFeatures instead")
        super().__init__(recognizer, num_features, probe_size, "recogniser features")

    def _run(self, model: nn.Module, images: Tensor) -> Tensor:
        return model.features(images)


class ModuleFeatures(_CallableFeatures):
    """Features from any user module: ``module(images [B,3,H,W] in [-1,1]) -> [B, D]``.

    The module must accept segexpr's ``[-1, 1]`` images itself (wrap it if it expects another range).
    ``num_features``/``probe_size`` as in :class:`RecognizerFeatures`.
    """

    def __init__(self, module: nn.Module, num_features: int | None = None, probe_size: int = 64) -> None:
        super().__init__(module, num_features, probe_size, "custom features")

    def _run(self, model: nn.Module, images: Tensor) -> Tensor:
        return model(images)


# ------------------------------------------------------------------------------------------------- Inception
def _torch_fidelity_available() -> bool:
    try:
        return importlib.util.find_spec("torch_fidelity") is not None
    except (ImportError, ValueError):
        return False


def _inception_candidates(weights_path: str | os.PathLike | None) -> list[Path]:
    if weights_path is not None:
        return [Path(weights_path).expanduser()]
    candidates = []
    if os.environ.get(INCEPTION_WEIGHTS_ENV):
        candidates.append(Path(os.environ[INCEPTION_WEIGHTS_ENV]).expanduser())
    candidates.append(Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILENAME)
    return candidates


def find_inception_weights(weights_path: str | os.PathLike | None = None) -> Path | None:
    """Locate torch-fidelity's Inception-v3 FID weights on disk, without any network access.

    Looks at ``weights_path`` if given (only there), else ``$SEGEXPR_INCEPTION_WEIGHTS``, then torch-fidelity's
    own download cache ``torch.hub.get_dir()/checkpoints/weights-inception-2015-12-05-6726825d.pth``
    (``$TORCH_HOME/hub/checkpoints/...``). Returns the first existing file, or None.
    """
    for path in _inception_candidates(weights_path):
        if path.is_file():
            return path
    return None


def inception_available(weights_path: str | os.PathLike | None = None) -> bool:
    """True when both torch-fidelity is installed and the Inception weights are on disk (no network)."""
    return _torch_fidelity_available() and find_inception_weights(weights_path) is not None


class InceptionFeatures(FeatureExtractor):
    """Standard FID Inception-v3 features (torchmetrics' ``NoTrainInceptionV3`` / torch-fidelity weights).

    The weights are loaded from a local file only (see :func:`find_inception_weights`); when torch-fidelity
    or the file is missing this raises :class:`InceptionWeightsUnavailable` *before* anything could try to
    download. To enable it on an offline machine, copy ``weights-inception-2015-12-05-6726825d.pth`` (from
    torch-fidelity's release page) into ``$TORCH_HOME/hub/checkpoints/`` or point
    ``$SEGEXPR_INCEPTION_WEIGHTS`` at it, and ``pip install segexpr[fid]``.

    Input conversion: ``[-1, 1]`` floats -> ``[0, 1]`` -> ``uint8`` by ``(x * 255).byte()``, exactly what
    torchmetrics does for ``normalize=True``, then torch-fidelity resizes to 299 px (TF1-compatible bilinear).

    Args:
        feature: Inception layer size, one of 64, 192, 768, 2048 (pool3, the standard FID features).
        weights_path: explicit weights file (otherwise the locations above are searched).
    """

    def __init__(self, feature: int = 2048, weights_path: str | os.PathLike | None = None) -> None:
        super().__init__()
        if feature not in (64, 192, 768, 2048):
            raise ValueError(f"Inception feature size must be one of 64, 192, 768, 2048, got {feature}")
        problems = []
        if not _torch_fidelity_available():
            problems.append("the optional torch-fidelity package is not installed (pip install 'segexpr[fid]')")
        path = find_inception_weights(weights_path)
        if path is None:
            searched = ", ".join(str(p) for p in _inception_candidates(weights_path))
            problems.append(
                f"the Inception-v3 FID weights are not on disk (searched: {searched}); segexpr never downloads "
                f"them: fetch {_INCEPTION_URL} on a machine with network access and place it at one of those "
                f"paths (or set ${INCEPTION_WEIGHTS_ENV})")
        if problems:
            raise InceptionWeightsUnavailable(
                "Inception FID features are unavailable: " + "; ".join(problems)
                + ". Use feature_extractor='recognizer' with a trained segexpr recogniser instead")
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.inception = NoTrainInceptionV3(name="inception-v3-compat", features_list=[str(feature)],
                                            feature_extractor_weights_path=str(path))
        self.inception.requires_grad_(False)
        self.num_features = feature
        self.weights_path = path
        self.description = f"Inception-v3 features ({feature}-d, torch-fidelity FID weights)"

    def extract(self, images: Tensor) -> Tensor:
        uint8 = ((images.float().clamp(-1, 1) + 1) / 2 * 255).byte()
        with torch.no_grad():
            return self.inception(uint8)


# ---------------------------------------------------------------------------------------------------- builders
def build_feature_extractor(
    feature_extractor: str | nn.Module = "auto",
    recognizer: nn.Module | None = None,
    *,
    inception_feature: int = 2048,
    inception_weights: str | os.PathLike | None = None,
    probe_size: int = 64,
) -> FeatureExtractor:
    """Resolve a feature-extractor choice into a :class:`FeatureExtractor`.

    Args:
        feature_extractor: ``"auto"`` (Inception when :func:`inception_available`, else the recogniser),
            ``"inception"``, ``"recognizer"``, a :class:`FeatureExtractor` (used as is) or any other
            ``nn.Module`` (wrapped in :class:`ModuleFeatures`).
        recognizer: the trained recogniser for ``"recognizer"`` (and the ``"auto"`` fallback).
        inception_feature, inception_weights: passed to :class:`InceptionFeatures`.
        probe_size: passed to :class:`RecognizerFeatures` / :class:`ModuleFeatures`.

    ``"auto"`` makes the choice per machine: always report the returned extractor's ``description``.
    """
    if isinstance(feature_extractor, FeatureExtractor):
        return feature_extractor
    if isinstance(feature_extractor, nn.Module):
        return ModuleFeatures(feature_extractor, probe_size=probe_size)
    if feature_extractor == "auto":
        if inception_available(inception_weights):
            return InceptionFeatures(inception_feature, inception_weights)
        if recognizer is None:
            raise InceptionWeightsUnavailable(
                "feature_extractor='auto': Inception weights/torch-fidelity are not available locally and no "
                "recognizer was given; pass recognizer=<trained segexpr recogniser> or a feature module")
        return RecognizerFeatures(recognizer, probe_size=probe_size)
    if feature_extractor == "inception":
        return InceptionFeatures(inception_feature, inception_weights)
    if feature_extractor in ("recognizer", "recogniser"):
        if recognizer is None:
            raise ValueError("feature_extractor='recognizer' needs recognizer=<trained segexpr recogniser>")
        return RecognizerFeatures(recognizer, probe_size=probe_size)
    raise ValueError(f"feature_extractor must be 'auto', 'inception', 'recognizer' or an nn.Module, "
                     f"got {feature_extractor!r}")


def build_fid(
    feature_extractor: str | nn.Module = "auto",
    recognizer: nn.Module | None = None,
    *,
    reset_real_features: bool = True,
    inception_feature: int = 2048,
    inception_weights: str | os.PathLike | None = None,
    probe_size: int = 64,
    **metric_kwargs: Any,
) -> tuple[FrechetInceptionDistance, str]:
    """Build torchmetrics' FID on the chosen features.

    Returns ``(fid, description)``. ``fid.update(images, real=True/False)`` takes segexpr images (float
    ``[B, 3, H, W]`` in ``[-1, 1]``); ``fid.compute()`` is a scalar, 0 for identical feature statistics,
    lower is better. ``description`` reads e.g. ``"FID (recogniser features: AUDiscriminatorModule, 256-d)"``.
    FID is biased upward for small sets and needs more images than feature dimensions for a full-rank
    covariance; compare numbers only at equal set sizes and equal features. States are sums, synced under
    DDP. Other arguments: see :func:`build_feature_extractor`; ``metric_kwargs`` go to the torchmetrics class.
    """
    extractor = build_feature_extractor(feature_extractor, recognizer, inception_feature=inception_feature,
                                        inception_weights=inception_weights, probe_size=probe_size)
    fid = FrechetInceptionDistance(feature=extractor, reset_real_features=reset_real_features, normalize=False,
                                   **metric_kwargs)
    return fid, f"FID ({extractor.description})"


def build_kid(
    feature_extractor: str | nn.Module = "auto",
    recognizer: nn.Module | None = None,
    *,
    subsets: int = 100,
    subset_size: int = 1000,
    reset_real_features: bool = True,
    inception_feature: int = 2048,
    inception_weights: str | os.PathLike | None = None,
    probe_size: int = 64,
    **metric_kwargs: Any,
) -> tuple[KernelInceptionDistance, str]:
    """Build torchmetrics' KID (cubic polynomial-kernel MMD², unbiased) on the chosen features.

    Returns ``(kid, description)``; ``kid.compute()`` is ``(mean, std)`` over ``subsets`` random subsets of
    ``subset_size`` images from each set. Every set must hold at least ``subset_size`` images: lower it for
    small evaluation sets (torchmetrics' default 1000 suits 10k-image sets). KID is unbiased, so it can be
    slightly negative; ~0 means indistinguishable. Features are stored per image (memory ``N x D``).
    """
    extractor = build_feature_extractor(feature_extractor, recognizer, inception_feature=inception_feature,
                                        inception_weights=inception_weights, probe_size=probe_size)
    kid = KernelInceptionDistance(feature=extractor, subsets=subsets, subset_size=subset_size,
                                  reset_real_features=reset_real_features, normalize=False, **metric_kwargs)
    return kid, f"KID ({extractor.description})"
