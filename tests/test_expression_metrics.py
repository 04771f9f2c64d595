"""Edit judging (expression accuracy / AU error), judge independence, identity leakage, identity preservation."""
import copy

import pytest
import torch
from torch import nn

from segexpr.metrics import (
    ExpressionEditMetrics,
    IdentityLeakage,
    IdentityPreservation,
    assert_independent,
    linear_probe_accuracy,
)

LEVELS = torch.linspace(-0.875, 0.875, 8)


class BrightnessRecognizer(nn.Module):
    """A real, deterministic recogniser for tests: the expression is read from the image's mean brightness
    (class ``c`` <-> brightness ``LEVELS[c]``); every AU intensity is the brightness mapped to [0, 1]."""

    def __init__(self, as_dict: bool = False):
        super().__init__()
        self.as_dict = as_dict
        self.register_buffer("levels", LEVELS.clone())
        self.embed = nn.Conv2d(3, 16, 3, padding=1)
        self.dropout = nn.Dropout(0.5)

    def features(self, images):
        return self.dropout(self.embed(images).relu().mean((2, 3)))

    def forward(self, images):
        mean = images.mean((1, 2, 3))
        logits = -100 * (mean[:, None] - self.levels) ** 2
        aus = ((mean + 1) / 2)[:, None].expand(-1, 17)
        return {"expression_logits": logits, "aus": aus} if self.as_dict else (logits, aus)


class Discriminator(nn.Module):
    def __init__(self, trunk=None):
        super().__init__()
        self.trunk = trunk if trunk is not None else nn.Conv2d(3, 16, 3, padding=1)
        self.head = nn.Linear(16, 1)


def _faces(expressions):
    """Images whose brightness encodes ``expressions`` (plus zero-mean texture)."""
    expressions = torch.as_tensor(expressions)
    texture = torch.rand(len(expressions), 3, 32, 32) * 0.1 - 0.05
    texture -= texture.mean((1, 2, 3), keepdim=True)
    return LEVELS[expressions].view(-1, 1, 1, 1) + texture


def test_expression_accuracy_and_au_error_are_exact():
    shown = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    edited = _faces(shown)
    metric = ExpressionEditMetrics(BrightnessRecognizer())
    target = shown.clone()
    target[:4] = (target[:4] + 1) % 8  # half the edits show the wrong expression
    target_aus = torch.full((8, 17), 0.5)
    metric.update(edited, target, target_aus)
    out = metric.compute()
    assert out["expression_accuracy"].item() == pytest.approx(0.5)
    expected_mae = ((LEVELS[shown] + 1) / 2 - 0.5).abs().mean()
    assert out["au_mae"].item() == pytest.approx(expected_mae.item(), abs=1e-5)


def test_batches_accumulate_forward_returns_batch_values_and_reset_clears():
    metric = ExpressionEditMetrics(BrightnessRecognizer(as_dict=True))
    batch = metric(_faces([1, 2]), torch.tensor([1, 2]))  # all right
    assert batch == {"expression_accuracy": pytest.approx(1.0)}
    batch = metric(_faces([3, 4]), torch.tensor([0, 0]))  # all wrong
    assert batch["expression_accuracy"].item() == 0.0
    out = metric.compute()
    assert out["expression_accuracy"].item() == pytest.approx(0.5)
    assert "au_mae" not in out  # no target AUs were given
    metric.reset()
    metric.update(_faces([5]), torch.tensor([5]))
    assert metric.compute()["expression_accuracy"].item() == 1.0


def test_judge_is_unregistered_eval_mode_and_keeps_its_training_flag():
    recognizer = BrightnessRecognizer().train()
    metric = ExpressionEditMetrics(recognizer)
    assert list(metric.parameters()) == []
    assert not any("embed" in key for key in metric.state_dict())
    metric.update(_faces([1]), torch.tensor([1]))
    assert recognizer.training


def test_the_gan_discriminator_cannot_judge():
    discriminator = BrightnessRecognizer()
    joint = nn.ModuleDict({"discriminator": discriminator, "generator": nn.Conv2d(3, 3, 1)})
    with pytest.raises(ValueError, match="trained independently"):
        ExpressionEditMetrics(discriminator, forbid=[discriminator])
    with pytest.raises(ValueError, match="trained independently"):
        ExpressionEditMetrics(discriminator, forbid=[joint])
    with pytest.raises(ValueError, match="identical"):
        ExpressionEditMetrics(copy.deepcopy(discriminator), forbid=[discriminator])
    shared = Discriminator(trunk=discriminator.embed)  # borrowed layer: same storage
    with pytest.raises(ValueError, match="shares parameters"):
        assert_independent(discriminator, shared)
    # an independently initialised network passes, and None entries are skipped
    ExpressionEditMetrics(BrightnessRecognizer(), forbid=[discriminator, None, Discriminator()])


def test_bad_recogniser_outputs_and_targets_are_named():
    metric = ExpressionEditMetrics(BrightnessRecognizer())
    x = _faces([1, 2])
    with pytest.raises(ValueError, match="target_expression"):
        metric.update(x, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"in \[0, 8\)"):
        metric.update(x, torch.tensor([1, 9]))
    with pytest.raises(ValueError, match="target_aus"):
        metric.update(x, torch.tensor([1, 2]), torch.zeros(2, 5))

    class LogitAUs(BrightnessRecognizer):
        def forward(self, images):
            logits, aus = super().forward(images)
            return logits, aus * 10 - 5  # AU logits, not intensities

    with pytest.raises(ValueError, match="sigmoid"):
        ExpressionEditMetrics(LogitAUs()).update(x, torch.tensor([1, 2]))

    class SevenWay(BrightnessRecognizer):
        def forward(self, images):
            logits, aus = super().forward(images)
            return logits[:, :7], aus

    with pytest.raises(ValueError, match=r"\[B, 8\]"):
        ExpressionEditMetrics(SevenWay()).update(x, torch.tensor([1, 2]))


def _probe_data(n, informative, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 8
    features = torch.randn(n, dim, generator=g)
    if informative:
        features[:, :8] += 4 * nn.functional.one_hot(labels, 8).float()
    return features, labels


def test_identity_leakage_detects_expression_in_features_and_is_chance_without():
    leaky = IdentityLeakage(steps=150, lr=0.1)
    x, y = _probe_data(400, informative=True)
    leaky.update(x[:200], y[:200], train=True)
    leaky.update(x[200:], y[200:], train=False)
    out = leaky.compute()
    assert out["accuracy"].item() > 0.9 and out["leakage"].item() > 0.6
    assert out["chance"].item() == pytest.approx(1 / 8)

    clean = IdentityLeakage(steps=150, lr=0.1)
    x, y = _probe_data(800, informative=False, seed=1)
    clean.update(x[:400], y[:400], train=True)
    clean.update(x[400:], y[400:], train=False)
    out = clean.compute()
    assert abs(out["accuracy"].item() - 1 / 8) < 0.07
    assert out["leakage"].item() < 0.07


def test_identity_leakage_pools_feature_maps_merges_states_and_runs_in_inference_mode():
    x, y = _probe_data(160, informative=True)
    maps = x[:, :, None, None].expand(-1, -1, 2, 2).contiguous()  # avg pooling recovers x
    a, b, full = (IdentityLeakage(steps=100, lr=0.1) for _ in range(3))
    a.update(maps[:80], y[:80], train=True)
    b.update(maps[80:], y[80:], train=False)
    a.merge_state(b)  # the same reduction DDP applies (concatenation)
    full.update(x[:80], y[:80], train=True)
    full.update(x[80:], y[80:], train=False)
    with torch.inference_mode():  # as inside a Lightning validation loop
        merged = a.compute()
    assert merged["accuracy"].item() == pytest.approx(full.compute()["accuracy"].item())
    assert merged["accuracy"].item() > 0.9


def test_identity_leakage_rejects_bad_input():
    metric = IdentityLeakage()
    with pytest.raises(TypeError, match="train must be a bool"):
        metric.update(torch.zeros(2, 4), torch.tensor([0, 1]), train=1)
    with pytest.raises(ValueError, match=r"in \[0, 8\)"):
        metric.update(torch.zeros(2, 4), torch.tensor([0, 8]), train=True)
    metric.update(torch.zeros(2, 4), torch.tensor([0, 1]), train=True)
    with pytest.raises(ValueError, match="feature dimension changed"):
        metric.update(torch.zeros(2, 5), torch.tensor([0, 1]), train=False)
    with pytest.raises(RuntimeError, match="held-out"):
        metric.compute()


def test_linear_probe_is_deterministic():
    x, y = _probe_data(64, informative=True)
    runs = [linear_probe_accuracy(x[:32], y[:32], x[32:], y[32:], steps=50) for _ in range(2)]
    assert runs[0] == runs[1] and runs[0] > 0.5


class PatchEmbedding(nn.Module):
    """Identity embedding for tests: the top-left 8x8 patch (where the identity lives), flattened."""

    def forward(self, images):
        return images[:, :, :8, :8].flatten(1)


def test_identity_preservation_cosine_and_impostor_baseline():
    source = torch.rand(4, 3, 32, 32) * 2 - 1
    identity = torch.tensor([0, 1, 2, 3])
    edited = source.clone()
    edited[:, :, 16:] = 0.3  # the expression edit leaves the identity patch alone
    metric = IdentityPreservation(PatchEmbedding())
    assert "custom features" in metric.description
    metric.update(source, edited, identity)
    out = metric.compute()
    assert out["identity_cosine"].item() == pytest.approx(1.0, abs=1e-6)
    assert abs(out["impostor_cosine"].item()) < 0.3  # random patches are nearly orthogonal
    assert out["identity_gap"].item() > 0.7

    metric.reset()
    metric.update(source, -source)  # identity patch inverted
    out = metric.compute()
    assert out["identity_cosine"].item() == pytest.approx(-1.0, abs=1e-6)
    assert "impostor_cosine" not in out


def test_identity_preservation_uses_recogniser_features_and_merges_states():
    recognizer = BrightnessRecognizer()
    source, edited = torch.rand(4, 3, 32, 32) * 2 - 1, torch.rand(4, 3, 32, 32) * 2 - 1
    full, a, b = (IdentityPreservation(recognizer) for _ in range(3))
    assert "recogniser features" in full.description and list(full.parameters()) == []
    full.update(source, edited, torch.tensor([0, 0, 1, 1]))
    a.update(source[:2], edited[:2], torch.tensor([0, 0]))
    b.update(source[2:], edited[2:], torch.tensor([1, 1]))
    a.merge_state(b)
    merged, whole = a.compute(), full.compute()
    assert merged["identity_cosine"].item() == pytest.approx(whole["identity_cosine"].item(), abs=1e-6)
    assert "impostor_cosine" not in merged  # no batch held two identities
    assert "impostor_cosine" in whole
    with pytest.raises(ValueError, match="same shape"):
        full.update(source, edited[:, :, :16])
    with pytest.raises(ValueError, match="identity"):
        full.update(source, edited, torch.zeros(3, dtype=torch.long))


def test_expanded_targets_are_accepted():
    from torch import nn

    from segexpr.metrics.expression import ExpressionEditMetrics

    class ConstantJudge(nn.Module):  # a real (parameter-free) module: says neutral, AUs 0.5
        def forward(self, images):
            return torch.zeros(images.shape[0], 8), torch.full((images.shape[0], 17), 0.5)

    metric = ExpressionEditMetrics(ConstantJudge())
    images = torch.zeros(4, 3, 16, 16)
    values = metric(images, torch.zeros(4, dtype=torch.long)[::1], torch.full((17,), 0.25).expand(4, -1))
    assert float(values["expression_accuracy"]) == 1.0 and abs(float(values["au_mae"]) - 0.25) < 1e-6
