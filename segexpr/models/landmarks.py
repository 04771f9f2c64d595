"""A small 68-point landmark regressor: the *predicted*-keypoint baseline of the hierarchical model.

The papers replace landmark boxes by segmentation because keypoints from a detector are inaccurate; SynthFACS
gives exact landmarks, which makes the keypoint baseline an oracle. :class:`LandmarkRegressor` is the detector
for a fair baseline: a few strided ``Conv -> BatchNorm -> ReLU`` blocks, a pooled small grid and a linear head
(cheap on a CPU at 64 px). :func:`train_landmark_regressor` trains it on any dataset whose items carry ``image``
and ``landmarks``; :func:`normalized_mean_error` is the standard NME (inter-ocular normalisation).

Coordinates follow the batch contract of :func:`segexpr.ops.regions.boxes_from_landmarks`: float ``(x, y)`` in
continuous pixel coordinates (pixel ``(i, j)`` centred at ``(j + 0.5, i + 0.5)``, the image spans
``[0, W] x [0, H]``), iBUG 68 order.
"""
from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

__all__ = ["LandmarkRegressor", "normalized_mean_error", "predict_landmarks", "train_landmark_regressor"]

#: iBUG-68 indices of the outer eye corners (image-left eye's outer corner, image-right eye's outer corner): the
#: inter-ocular distance that normalises the NME (300-W convention).
OUTER_EYE_CORNERS: tuple[int, int] = (36, 45)
#: Points of the iBUG-68 scheme.
NUM_IBUG_POINTS = 68


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


class LandmarkRegressor(nn.Module):
    """Direct landmark regression from an image.

    ``stem`` (3x3 conv) then ``depth`` blocks of ``(3x3 conv stride 2 -> BN -> ReLU -> 3x3 conv -> BN -> ReLU)``
    with ``width * 2 ** i`` channels (capped at ``max_channels``), adaptive average pooling to a
    ``pool_size x pool_size`` grid (a small grid rather than global pooling keeps where features are, which is
    what landmark positions are), and a linear ``head`` to ``num_points * 2`` normalised coordinates. The
    head starts at zero bias and near-zero weights: an untrained regressor puts every point near the image
    centre (:func:`train_landmark_regressor` then sets the bias to the training set's mean shape).

    Args:
        num_points: landmarks per face (68 for iBUG; :func:`normalized_mean_error` needs 68).
        width: channels of the stem and the first block.
        depth: number of stride-2 blocks (>= 1).
        max_channels: channel cap of the deep blocks.
        pool_size: side of the pooled grid fed to the head.
        in_channels: input image channels.

    Shapes:
        input float ``[B, in_channels, H, W]`` in ``[-1, 1]``, any ``H, W >= 1`` (trained at one size);
        output float ``[B, num_points, 2]`` ``(x, y)`` in continuous pixel coordinates of that image
        (normalised prediction ``u`` in about ``[-1, 1]`` mapped to ``(u + 1) / 2 * (W, H)``).
        :meth:`normalized` returns the normalised coordinates themselves.
    """

    def __init__(self, num_points: int = NUM_IBUG_POINTS, width: int = 16, depth: int = 3, max_channels: int = 256,
                 pool_size: int = 4, in_channels: int = 3) -> None:
        super().__init__()
        for name, value in (("num_points", num_points), ("width", width), ("depth", depth),
                            ("max_channels", max_channels), ("pool_size", pool_size), ("in_channels", in_channels)):
            _positive_int(name, value)
        self.num_points, self.in_channels = num_points, in_channels
        channels = [min(width * 2 ** i, max_channels) for i in range(depth + 1)]
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels[0], 3, padding=1, bias=False),
                                   nn.BatchNorm2d(channels[0]), nn.ReLU(inplace=True)]
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out),
                       nn.ReLU(inplace=True),
                       nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(pool_size)
        self.head = nn.Linear(channels[-1] * pool_size ** 2, num_points * 2)
        with torch.no_grad():
            self.head.weight.mul_(0.01)
            self.head.bias.zero_()

    def _check(self, images: torch.Tensor) -> None:
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != self.in_channels:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"LandmarkRegressor expects images [B, {self.in_channels}, H, W], got shape {shape}")
        if not images.is_floating_point():
            raise ValueError(f"LandmarkRegressor expects float images in [-1, 1], got dtype {images.dtype}")
        if images.shape[0] == 0 or images.shape[2] == 0 or images.shape[3] == 0:
            raise ValueError(f"LandmarkRegressor expects non-empty images, got shape {tuple(images.shape)}")

    def normalized(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised coordinates ``[B, num_points, 2]``: ``-1`` / ``+1`` are the left/top and right/bottom edges."""
        self._check(images)
        pooled = self.pool(self.features(images)).flatten(1)
        return self.head(pooled).view(images.shape[0], self.num_points, 2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self._check(images)
        height, width = images.shape[-2:]
        return (self.normalized(images) + 1) / 2 * images.new_tensor([width, height])


def normalized_mean_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The standard NME: mean point-to-point distance over the inter-ocular distance, averaged over images.

    Args:
        pred: float ``[B, 68, 2]`` predicted ``(x, y)``.
        target: float ``[B, 68, 2]`` ground-truth ``(x, y)`` in the same coordinates; its outer eye corners
            (iBUG 36 and 45, :data:`OUTER_EYE_CORNERS`) give each image's normaliser.

    Returns:
        0-d float tensor ``>= 0`` (0 for exact landmarks; ``d / IOD`` for every point moved by distance ``d``).
    """
    for name, points in (("pred", pred), ("target", target)):
        if not isinstance(points, torch.Tensor) or points.dim() != 3 or points.shape[1:] != (NUM_IBUG_POINTS, 2):
            shape = tuple(points.shape) if isinstance(points, torch.Tensor) else type(points).__name__
            raise ValueError(f"normalized_mean_error expects {name} [B, {NUM_IBUG_POINTS}, 2], got shape {shape}")
    if pred.shape != target.shape or pred.shape[0] == 0:
        raise ValueError(f"normalized_mean_error needs pred and target of one non-empty shape, got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")
    pred, target = pred.float(), target.float()
    left, right = OUTER_EYE_CORNERS
    inter_ocular = (target[:, left] - target[:, right]).norm(dim=-1)  # [B]
    if bool((inter_ocular <= 0).any()):
        raise ValueError("normalized_mean_error: target has a zero inter-ocular distance (points 36 and 45 "
                         f"coincide) in images {torch.nonzero(inter_ocular <= 0).flatten().tolist()}")
    per_image = (pred - target).norm(dim=-1).mean(dim=1) / inter_ocular
    return per_image.mean()


@torch.no_grad()
def predict_landmarks(regressor: LandmarkRegressor, images: torch.Tensor, *, batch_size: int = 64) -> torch.Tensor:
    """``regressor`` in eval mode on ``images`` float ``[N, 3, H, W]`` in ``[-1, 1]``, ``batch_size`` at a time.

    Returns float ``[N, num_points, 2]`` pixel coordinates on the images' device; the regressor's train/eval
    mode is restored.
    """
    _positive_int("batch_size", batch_size)
    was_training = regressor.training
    regressor.eval()
    try:
        parts = [regressor(images[i:i + batch_size]) for i in range(0, images.shape[0], batch_size)]
    finally:
        regressor.train(was_training)
    if not parts:
        raise ValueError(f"predict_landmarks needs at least one image, got shape {tuple(images.shape)}")
    return torch.cat(parts)


def _images_and_landmarks(items: Sequence[Mapping[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Collate only what the regressor uses (the items may carry many other keys)."""
    missing = [key for key in ("image", "landmarks") if key not in items[0]]
    if missing:
        raise KeyError(f"train_landmark_regressor needs items with 'image' and 'landmarks', missing {missing}; "
                       f"keys: {sorted(items[0])}")
    return (torch.stack([torch.as_tensor(item["image"]).float() for item in items]),
            torch.stack([torch.as_tensor(item["landmarks"]).float() for item in items]))


def _mean_normalized_shape(dataset: Dataset, count: int) -> torch.Tensor:
    """Mean landmarks ``[68, 2]`` of the first ``count`` items, in normalised coordinates."""
    shapes = []
    for index in range(min(count, len(dataset))):
        images, landmarks = _images_and_landmarks([dataset[index]])
        size = torch.tensor([images.shape[-1], images.shape[-2]], dtype=landmarks.dtype)
        shapes.append(landmarks[0] / size * 2 - 1)
    return torch.stack(shapes).mean(0)


def train_landmark_regressor(dataset: Dataset, *, steps: int | None, batch_size: int = 16, lr: float = 1e-3,
                             seed: int = 0, width: int = 16, depth: int = 3, max_seconds: float | None = None,
                             num_workers: int = 0, mean_shape_items: int = 256) -> tuple[LandmarkRegressor, float]:
    """Train a :class:`LandmarkRegressor` with Adam and an L1 loss on normalised coordinates, starting from the
    mean shape of the first ``mean_shape_items`` items (the head's bias).

    Uses only the items' ``image`` (float ``[3, H, W]`` in ``[-1, 1]``) and ``landmarks`` (float ``[68, 2]``
    pixel coordinates) keys. Deterministic for a given ``seed`` (initialisation and shuffling draw from it,
    the global random state is left as it was). Writes no files.

    Args:
        dataset: map-style dataset of such items (e.g. ``SyntheticFaces``).
        steps: optimiser steps (over as many epochs as they take), or ``None`` to stop on ``max_seconds`` only.
        batch_size: images per step (the last, smaller batch of an epoch is dropped when the dataset is larger).
        lr: Adam learning rate.
        seed: seed of the initialisation and the shuffling.
        width, depth: :class:`LandmarkRegressor` size.
        max_seconds: wall-clock budget of the training loop (stops at whichever of ``steps``/``max_seconds``
            comes first; at least one step is made).
        num_workers: DataLoader workers.
        mean_shape_items: the head's bias starts at the mean landmarks of the first this many items.

    Returns:
        ``(regressor in eval mode, training seconds)``.
    """
    if steps is None and max_seconds is None:
        raise ValueError("train_landmark_regressor needs steps or max_seconds (got neither)")
    if steps is not None:
        _positive_int("steps", steps)
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"max_seconds must be > 0, got {max_seconds!r}")
    _positive_int("batch_size", batch_size)
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    _positive_int("mean_shape_items", mean_shape_items)
    if len(dataset) < 1:
        raise ValueError("train_landmark_regressor needs a non-empty dataset")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=len(dataset) > batch_size,
                        num_workers=num_workers, collate_fn=_images_and_landmarks,
                        generator=torch.Generator().manual_seed(seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        start = time.perf_counter()  # the mean shape below is part of the training time
        regressor = LandmarkRegressor(width=width, depth=depth)
        # Start from the mean shape (the head's bias; its weights are small), so the steps learn the deviations
        # from it: on aligned faces the mean shape alone is already a fair guess, and a short budget keeps it.
        with torch.no_grad():
            regressor.head.bias.copy_(_mean_normalized_shape(dataset, mean_shape_items).flatten())
        optimizer = torch.optim.Adam(regressor.parameters(), lr=lr)
        regressor.train()
        done = 0
        while True:
            for images, landmarks in loader:
                size = torch.tensor([images.shape[-1], images.shape[-2]], dtype=images.dtype)
                target = landmarks / size * 2 - 1  # pixel -> normalised, the head's scale
                loss = F.l1_loss(regressor.normalized(images), target)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                done += 1
                out_of_steps = steps is not None and done >= steps
                out_of_time = max_seconds is not None and time.perf_counter() - start >= max_seconds
                if out_of_steps or out_of_time:
                    return regressor.eval(), time.perf_counter() - start
