"""JointModule's construction and batch checks: option validation, building the networks, batch structure."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import pytorch_lightning as pl
from torch import nn

from segexpr.models.factory import build_generator_and_coder, build_part, build_region_segmenter

#: ``torch.compile`` modes JointModule accepts (``"reduce-overhead"`` replays CUDA graphs)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")

__all__ = ["NETWORKS", "build_joint_networks", "check_batch", "check_options", "check_parsing_anchor",
           "split_combined", "tasks_for"]

#: JointModule's network arguments, in construction order of their configs.
NETWORKS: tuple[str, ...] = ("segmenter", "generator", "coder", "discriminator")


def _is_int(value: Any, minimum: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value >= minimum


def check_options(args: Mapping[str, Any], tasks: Sequence[str], region_sources: Sequence[str],
                  adversarial_losses: Sequence[str], au_donors: Sequence[str]) -> None:
    """Refuse bad JointModule options with a ``ValueError`` naming the argument and the accepted values."""
    for name, accepted in (("task", tasks), ("region_source", region_sources), ("adv_loss", adversarial_losses),
                           ("au_loss", ("mse", "l1")), ("au_donor", au_donors)):
        if args[name] not in accepted:
            raise ValueError(f"unknown {name} {args[name]!r}; expected one of {tuple(accepted)}")
    if not _is_int(args["n_critic"], 1):
        raise ValueError(f"n_critic must be an integer >= 1, got {args['n_critic']!r}")
    if not _is_int(args["image_size"], 8):
        raise ValueError(f"image_size must be an integer >= 8, got {args['image_size']!r}")
    for name in ("lr", "segmenter_lr", "feature_classifier_lr"):
        if args[name] is not None and not args[name] > 0:
            raise ValueError(f"{name} must be > 0, got {args[name]}")
    if args["ema_decay"] is not None and not 0 <= args["ema_decay"] < 1:
        raise ValueError(f"ema_decay must be in [0, 1) or None, got {args['ema_decay']}")
    if not isinstance(args["compile"], (bool, str)) or args["compile"] == "":
        raise ValueError(f"compile must be a bool or a torch.compile backend name, got {args['compile']!r}")
    if args["compile_mode"] is not None:
        if args["compile_mode"] not in COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of {COMPILE_MODES} or None, got {args['compile_mode']!r}")
        if not args["compile"]:
            raise ValueError(f"compile_mode={args['compile_mode']!r} needs compile (True or a backend name)")
    if not 0 <= args["label_target_probability"] <= 1:
        raise ValueError(f"label_target_probability must be in [0, 1], got {args['label_target_probability']}")
    if not 0 < args["seg_ohem_thresh"] <= 1:
        raise ValueError(f"seg_ohem_thresh must be in (0, 1], got {args['seg_ohem_thresh']}")
    for key in ("segmenter_warmup_steps", "critic_warmup_steps"):
        if not _is_int(args[key], 0):
            raise ValueError(f"{key} must be an integer >= 0, got {args[key]!r}")
    if args["sample_every_n_steps"] < 0 or args["num_samples"] < 1:
        raise ValueError(f"sample_every_n_steps must be >= 0 and num_samples >= 1, got "
                         f"{args['sample_every_n_steps']}, {args['num_samples']}")
    for name, value in args.items():
        if name.startswith("lambda_") and value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")


def build_joint_networks(args: Mapping[str, Any]) -> dict[str, nn.Module | None]:
    """The four networks from configs (or as given), with the settings that must agree filled in.

    The editing networks come from the builders inference shares (:mod:`segexpr.models.factory`: the coder and
    generator, then -- after the discriminator, fitted to the generator here, as the random initialisation has
    always been ordered -- the segmenter).
    """
    for kind in NETWORKS:
        if isinstance(args[kind], pl.LightningModule):
            raise TypeError(f"{kind}: pass the network ({type(args[kind]).__name__}.{kind}) or its config dict, "
                            f"not the LightningModule (its training options would have no effect here)")
    nets = build_generator_and_coder(args["generator"], args["coder"], args["region_source"])
    generator = nets["generator"]
    discriminator = build_part("discriminator", args["discriminator"], {
        "image_size": args["image_size"], "regions": tuple(generator.regions),
        "au_free_channels": generator.au_free_channels, "crop_size": generator.crop_size})
    if discriminator.feature_classifier.in_channels != generator.au_free_channels:
        raise ValueError(f"the discriminator's feature classifier expects {discriminator.feature_classifier.in_channels} "
                         f"AU-free channels but the generator produces {generator.au_free_channels}; drop "
                         f"au_free_channels from the discriminator config (it then fits the generator)")
    if args["region_source"] != "none" and tuple(discriminator.regions) != tuple(generator.regions):
        raise ValueError(f"discriminator regions {tuple(discriminator.regions)} differ from generator regions "
                         f"{tuple(generator.regions)}")
    segmenter = build_region_segmenter(args["segmenter"], generator, args["region_source"])
    if args["segmenter_weights"] is not None and segmenter is None:
        raise ValueError("segmenter_weights is set but the model has no segmenter")
    return {"segmenter": segmenter, **nets, "discriminator": discriminator}


def split_combined(batch: Mapping[str, Any]) -> tuple[Mapping[str, Any], Mapping[str, Any] | None]:
    """``(gan_batch, parsing_batch)``: a ``CombinedDataModule`` batch is ``{"gan": ..., "parsing": ...}``."""
    if "gan" in batch and "parsing" in batch:
        parsing = batch["parsing"]
        if parsing is not None and parsing.get("mask") is None:
            raise KeyError(f"the 'parsing' half of a combined batch needs 'mask', got keys {sorted(parsing)}")
        return batch["gan"], parsing
    return batch, None


def check_batch(batch: Mapping[str, Any], task: str | None, image_size: int, paired: bool = False) -> None:
    """Refuse a batch the task cannot train on, or whose images are not ``image_size`` square (named).

    ``paired``: the model weighs L1s against the edits' answers (``lambda_paired > 0``), so the batch must carry
    one (``edit_target`` or ``transfer_target``), or that loss would silently be zero.
    """
    if "image" not in batch:
        raise KeyError(f"JointModule batches need an 'image' key, got {sorted(batch)}")
    size = tuple(batch["image"].shape[-2:])
    if size != (image_size, image_size):
        raise ValueError(f"JointModule was built for image_size={image_size} but the batch's images are "
                         f"{size[0]}x{size[1]}; set image_size={size[0]} (model) or the data's image size to "
                         f"{image_size}")
    if task in ("transfer", "both") and batch.get("reference_image") is None:
        raise KeyError(f"task={task!r}: the transfer losses (swap, swap consistency, multi-class adversarial) need "
                       f"'reference_image' in the batch, which has {sorted(batch)}; give the DataModule "
                       f"references=True (unpaired references from the dataset) or use task='manipulate'")
    if task in ("manipulate", "both") and batch.get("expression") is None and batch.get("aus") is None:
        raise KeyError(f"task={task!r}: the manipulation losses (label/AU targets judged by the critic's heads) need "
                       f"'expression' and/or 'aus' labels in the batch, which has {sorted(batch)}; add an AU source "
                       f"(aus=...) or use task='transfer'")
    if paired and batch.get("edit_target") is None and batch.get("transfer_target") is None:
        raise KeyError(f"lambda_paired > 0 weighs L1s against the edits' answers, but the batch has neither "
                       f"'edit_target' nor 'transfer_target' (keys: {sorted(batch)}); set lambda_paired: 0 (unpaired), "
                       f"or give the data its answers (SyntheticFacesDataModule pairs: true, train_answers: true)")


def tasks_for(batch: Mapping[str, Any], manipulate: bool, transfer: bool, task: str) -> list[str]:
    """The tasks this batch can train: manipulate needs labels, transfer a ``reference_image``."""
    tasks = []
    if manipulate and (batch.get("expression") is not None or batch.get("aus") is not None):
        tasks.append("manipulate")
    if transfer and batch.get("reference_image") is not None:
        tasks.append("transfer")
    if not tasks:
        raise KeyError(f"task={task!r}: this batch has neither labels ('expression'/'aus') nor 'reference_image'; "
                       f"keys: {sorted(batch)}")
    return tasks


def check_parsing_anchor(batch: Mapping[str, Any], trainable: bool, initialized: bool, lambda_seg: float,
                         resumed: bool, warmup_steps: int = 0) -> None:
    """Refuse joint training of a segmenter that nothing keeps a parser (checked on the first training batch).

    GAN gradients alone erase a parser (measured on this project): a jointly trained segmenter needs parsing
    supervision in the data (``mask`` in the batch, or the parsing half of a ``CombinedDataModule``) with
    ``lambda_seg > 0``, or a pretrained start (``segmenter_weights``), or a resumed checkpoint.
    """
    if not trainable or initialized or resumed:
        return
    gan, parsing = split_combined(batch)
    has_masks = (parsing is not None) or gan.get("mask") is not None
    if warmup_steps > 0 and not has_masks:
        raise KeyError("segmenter_warmup_steps > 0 needs batches with 'mask' (or a CombinedDataModule parsing "
                       f"batch); keys: {sorted(gan)}")
    if has_masks and lambda_seg > 0:
        return
    reason = "lambda_seg is 0" if has_masks else "the data has no parsing masks"
    raise ValueError(f"joint=True trains the segmenter with GAN gradients, but nothing anchors it as a parser "
                     f"({reason}; batch keys {sorted(batch)}). Start it from a parser (segmenter_weights=PATH), "
                     f"add parsing supervision (CombinedDataModule(expression=..., parsing=CelebAMaskHQDataModule(...))"
                     f" with lambda_seg > 0), or freeze a pretrained one (joint=False)")
