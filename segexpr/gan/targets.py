"""Random edit targets for a batch, drawn per sample from keys (no RNG state): labels, AU vectors, donors.

Every draw is :func:`keyed_uniform` of the sample's key (the dataset's ``sample_seed``), the training-batch
counter and a purpose id, so a DDP run draws exactly what a single process draws over the same global batch,
and a resumed run what an uninterrupted one draws (``tests/test_ddp.py``, ``tests/test_resume.py``).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from segexpr.labels import NUM_EXPRESSIONS, expression_prototype
from segexpr.ops.checks import check_on_device

__all__ = ["AU_DONORS", "batch_keys", "DRAW_DONOR", "DRAW_GP", "DRAW_LABEL", "DRAW_USE_LABEL", "expression_prototypes",
           "keyed_uniform", "sample_manipulation_targets", "target_codes"]

#: Accepted values of ``au_donor``.
AU_DONORS: tuple[str, ...] = ("auto", "reference", "batch")
#: Purpose ids of the keyed random draws (any distinct small ints; GP interpolation weights use DRAW_GP + k).
DRAW_LABEL, DRAW_USE_LABEL, DRAW_DONOR, DRAW_GP = 1, 2, 3, 100

_M32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``(x * c) mod 2**32`` for int64 ``x`` in ``[0, 2**32)`` without int64 overflow (16-bit halves)."""
    return ((x & 0xFFFF) * c + ((((x >> 16) * c) & 0xFFFF) << 16)) & _M32


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixer ("lowbias32", C. Wellons) on int64 tensors holding values in ``[0, 2**32)``."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def keyed_uniform(keys: torch.Tensor, *counters: int) -> torch.Tensor:
    """Uniform ``[0, 1)`` float32 numbers, one per key, that are a pure function of ``(key, *counters)``.

    A counter-based generator: each sample's number depends only on its own key (e.g. the dataset's
    ``sample_seed``) and the counters (e.g. training batch index and a purpose id), never on global RNG state,
    on the rank the sample landed on or on its position in the batch. That is what makes a DDP run draw the same
    random targets as a single-process run over the same global batch, and a resumed run the same as an
    uninterrupted one, without saving RNG states. Runs on the keys' device (integer ops only).

    Args:
        keys: int64 tensor (any shape; negative keys are fine, all 64 bits are used).
        counters: non-negative Python ints mixed in one after another.
    """
    keys = keys.to(torch.int64)
    h = _hash32(keys & _M32)
    h = _hash32(h ^ ((keys >> 32) & _M32))
    for index, counter in enumerate(counters):
        # the additive constant keeps 0 from being a fixed point and separates counter positions
        h = _hash32(((h + 0x9E3779B9 * (index + 1)) & _M32) ^ (int(counter) & _M32))
    return (h >> 8).to(torch.float32) * (1.0 / (1 << 24))


def batch_keys(batch: Mapping[str, Any], fallback: torch.Generator, rank: int = 0) -> torch.Tensor:
    """int64 ``[B]`` per-sample keys of the random draws: ``batch["sample_seed"]`` when the data has it.

    segexpr datasets put a per-item ``sample_seed`` in every item, so draws do not depend on the rank or batch
    position of a sample (DDP == single process) nor on RNG state (resume == uninterrupted). Other data falls
    back to keys drawn from ``fallback`` (a generator the caller saves in its checkpoints), mixed with the
    global ``rank`` so that ranks draw different numbers.
    """
    images = batch["image"]
    keys = batch.get("sample_seed")
    if isinstance(keys, torch.Tensor) and keys.numel() == images.shape[0]:
        return keys.to(device=images.device, dtype=torch.int64).reshape(-1)
    keys = torch.randint(0, 2 ** 31, (images.shape[0],), generator=fallback, dtype=torch.int64)
    return (keys + (int(rank) << 32)).to(images.device)


def expression_prototypes() -> torch.Tensor:
    """float ``[8, 17]``: the FACS prototype AU vector of each expression (AffectNet order)."""
    return torch.stack([torch.from_numpy(expression_prototype(i)) for i in range(NUM_EXPRESSIONS)])


def _donor(batch: Mapping[str, Any], au_donor: str, keys: torch.Tensor, step: int
           ) -> tuple[str, torch.Tensor, torch.Tensor | None]:
    """(resolved mode, donor AUs ``[B, 17]``, donor expression ``[B]`` or ``None``) for batches with ``aus``."""
    mode = au_donor
    if mode == "auto":
        mode = "reference" if batch.get("reference_aus") is not None else "batch"
    if mode == "reference":
        if batch.get("reference_aus") is None:
            raise KeyError("au_donor='reference' needs 'reference_aus' in the batch (paired data, e.g. "
                           "SyntheticFacesDataModule(pairs=True)); use au_donor='batch' or 'auto'")
        expression = batch.get("reference_expression")
        return mode, batch["reference_aus"].float(), expression.long() if expression is not None else None
    # A permutation of the local batch (argsort of keyed numbers: reproducible without RNG state).
    perm = torch.argsort(keyed_uniform(keys, step, DRAW_DONOR))
    expression = batch["expression"].long()[perm] if batch.get("expression") is not None else None
    return mode, batch["aus"].float()[perm], expression


def sample_manipulation_targets(batch: Mapping[str, Any], keys: torch.Tensor, step: int, prototypes: torch.Tensor,
                                au_donor: str = "auto", label_target_probability: float = 0.5
                                ) -> dict[str, torch.Tensor]:
    """Random targets per sample: an expression label (AU target = its prototype) or a donor's real AUs.

    Args:
        batch: needs ``image``; ``aus`` enables donor targets, ``edit_expression`` fixes the labels (the dataset
            rendered their answers as ``edit_target``), ``reference_aus``/``reference_expression`` are the
            ``"reference"`` donor.
        keys: int64 ``[B]`` per-sample keys; ``step``: the training-batch counter.
        prototypes: float ``[8, 17]`` (:func:`expression_prototypes`) on the batch's device.
        au_donor: ``"reference"``, ``"batch"`` (a keyed permutation of the batch's own ``aus``) or ``"auto"``.
        label_target_probability: share of label targets when donors exist.

    Returns:
        ``labels`` int64 [B], ``use_label`` bool [B], ``aus`` float [B, 17] (the AU target, read back from the
        target code by the coder), ``donor_aus`` float [B, 17], ``expression`` int64 [B] and ``expression_valid``
        bool [B] (the expression target: the label, or the donor's real expression when known), ``critic_aus``
        (the AU target the critic's AU heads judge, or ``None``); plus ``truth`` [B, 3, H, W] / ``truth_valid``
        bool [B] where the data knows the edit's answer (a label's ``edit_target``; a reference donor's
        ``transfer_target``).

    Only what the critic learned steers the generator. The critic's expression head trains on the batch's
    ``expression`` labels and its AU heads on the batch's ``aus``, so: without ``expression`` labels no target
    is a label (every target is a donor's AUs) and ``expression_valid`` is false unless the donor's expression
    is known; without ``aus`` the targets are labels, whose prototype AUs still train the coder's readout
    (``aus``) but ``critic_aus`` is ``None`` (the AU heads never saw an AU label, so they judge nothing).
    """
    images = batch["image"]
    size, device = images.shape[0], images.device
    if batch.get("edit_expression") is not None:
        labels = batch["edit_expression"].to(device=device, dtype=torch.long).reshape(-1)
        message = f"batch['edit_expression'] must hold {size} labels in [0, {NUM_EXPRESSIONS})"
        if labels.numel() != size:
            raise ValueError(f"{message}, got {labels.numel()}")
        check_on_device(((labels >= 0) & (labels < NUM_EXPRESSIONS)).all(), message,
                        lambda: f", got {batch['edit_expression'].tolist()}")
    else:
        labels = (keyed_uniform(keys, step, DRAW_LABEL) * NUM_EXPRESSIONS).long().clamp_(max=NUM_EXPRESSIONS - 1)
    prototype_aus = prototypes[labels]
    mode, donor_expression = None, None
    has_expression = batch.get("expression") is not None or batch.get("edit_expression") is not None
    if batch.get("aus") is None:
        donor_aus = prototype_aus
        use_label = torch.ones(size, dtype=torch.bool, device=device)
    else:
        mode, donor_aus, donor_expression = _donor(batch, au_donor, keys, step)
        if has_expression:
            use_label = keyed_uniform(keys, step, DRAW_USE_LABEL) < label_target_probability
        else:  # the expression head never saw a label: no label targets
            use_label = torch.zeros(size, dtype=torch.bool, device=device)
    aus = torch.where(use_label[:, None], prototype_aus, donor_aus)
    if donor_expression is not None:
        expression, valid = torch.where(use_label, labels, donor_expression), torch.ones_like(use_label)
    else:
        expression, valid = labels, use_label & has_expression
    targets = {"labels": labels, "use_label": use_label, "aus": aus, "donor_aus": donor_aus,
               "expression": expression, "expression_valid": valid,
               "critic_aus": aus if batch.get("aus") is not None else None}
    # Ground truth of each edit where the data knows it: the label's render, or (reference donor) the
    # source identity rendered with the reference's AUs.
    answers = ((use_label, batch.get("edit_target") if batch.get("edit_expression") is not None else None),
               (~use_label, batch.get("transfer_target") if mode == "reference" else None))
    answers = [(chosen, answer) for chosen, answer in answers if answer is not None]
    if answers:
        truth, truth_valid = answers[0][1], answers[0][0].clone()
        for chosen, answer in answers[1:]:
            truth = torch.where(chosen[:, None, None, None], answer, truth)
            truth_valid |= chosen
        targets["truth"], targets["truth_valid"] = truth, truth_valid
    return targets


def target_codes(coder: nn.Module, targets: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Expression codes ``[B, code_dim]`` of the targets: the label's code or the donor AUs' code per sample."""
    label_codes = coder.from_label(targets["labels"])
    au_codes = coder.from_aus(targets["donor_aus"])
    return torch.where(targets["use_label"][:, None], label_codes, au_codes)
