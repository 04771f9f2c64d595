"""FID / KID with pluggable features; the Inception path must fail fast offline and never download."""
import socket
import sys

import pytest
import torch
from torch import nn

from segexpr.metrics import (
    INCEPTION_WEIGHTS_ENV,
    InceptionFeatures,
    InceptionWeightsUnavailable,
    ModuleFeatures,
    RecognizerFeatures,
    build_fid,
    build_kid,
    find_inception_weights,
)
from segexpr.metrics.distribution import INCEPTION_WEIGHTS_FILENAME

pytestmark = pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance` will save")


class TinyRecognizer(nn.Module):
    """A real (untrained) recogniser: conv trunk, pooled features, expression and AU heads."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                   nn.Dropout(0.5))
        self.expression_head = nn.Linear(width, 8)
        self.au_head = nn.Linear(width, 17)

    def features(self, images):
        return self.trunk(images).mean((2, 3))

    def forward(self, images):
        f = self.features(images)
        return self.expression_head(f), torch.sigmoid(self.au_head(f))


def _images(n, size=32, shift=0.0, scale=1.0):
    return ((torch.rand(n, 3, size, size) * 2 - 1) * scale + shift).clamp(-1, 1)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """Empty torch hub cache, no env override, and any download or socket connection fails loudly."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv(INCEPTION_WEIGHTS_ENV, raising=False)

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    try:
        import torch_fidelity.feature_extractor_inceptionv3 as tf_inception
        monkeypatch.setattr(tf_inception, "load_state_dict_from_url", no_download)
    except ImportError:
        pass
    monkeypatch.setattr(socket.socket, "connect", no_download)
    return tmp_path


def test_identical_sets_have_zero_fid_and_kid_different_sets_do_not():
    recognizer = TinyRecognizer()
    real, fake = _images(48), _images(48, shift=0.4, scale=0.5)

    fid, description = build_fid("recognizer", recognizer)
    assert description == "FID (recogniser features: TinyRecognizer, 8-d)"
    fid.update(real, real=True)
    fid.update(real, real=False)
    same = fid.compute().item()
    fid.reset()
    fid.update(real, real=True)
    fid.update(fake, real=False)
    different = fid.compute().item()
    assert abs(same) < 1e-3
    assert different > 1e-2 and different > 100 * abs(same)

    kid, description = build_kid("recognizer", recognizer, subsets=20, subset_size=24)
    assert description.startswith("KID (recogniser features")
    kid.update(real, real=True)
    kid.update(real, real=False)
    same_mean, _ = kid.compute()
    kid.reset()
    kid.update(real, real=True)
    kid.update(fake, real=False)
    different_mean, _ = kid.compute()
    assert abs(same_mean.item()) < 1e-3
    assert different_mean.item() > 10 * abs(same_mean.item()) and different_mean.item() > 1e-3


def test_fid_accumulates_over_batches_like_one_batch():
    recognizer = TinyRecognizer()
    real, fake = _images(24), _images(24, shift=0.3)
    one, _ = build_fid("recognizer", recognizer)
    one.update(real, real=True)
    one.update(fake, real=False)
    many, _ = build_fid("recognizer", recognizer)
    for chunk in real.split(5):
        many.update(chunk, real=True)
    for chunk in fake.split(7):
        many.update(chunk, real=False)
    assert many.compute().item() == pytest.approx(one.compute().item(), rel=1e-4)


def test_recognizer_is_not_registered_runs_in_eval_and_keeps_its_mode():
    recognizer = TinyRecognizer().train()
    fid, _ = build_fid("recognizer", recognizer)
    assert list(fid.parameters()) == []  # never reaches an optimiser, a checkpoint or DDP's bookkeeping
    assert not any("trunk" in key for key in fid.state_dict())
    x = _images(4)
    extractor = fid.inception
    # dropout and batch statistics would make repeated calls differ in train mode
    assert torch.equal(extractor(x), extractor(x))
    assert recognizer.training and recognizer.trunk[1].training


def test_plain_module_and_custom_extractors():
    flat = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten())  # [-1, 1] images -> [B, 12]
    fid, description = build_fid(flat)
    assert description == "FID (custom features: Sequential, 12-d)"
    x = _images(16)
    fid.update(x, real=True)
    fid.update(x, real=False)
    assert abs(fid.compute().item()) < 1e-3

    extractor = ModuleFeatures(flat)
    _, description = build_kid(extractor, subset_size=4)
    assert "12-d" in description

    spatial = ModuleFeatures(nn.Conv2d(3, 4, 1), num_features=4)
    with pytest.raises(ValueError, match="pool spatial feature maps"):
        spatial(x)


def test_feature_extractor_checks_its_input():
    extractor = RecognizerFeatures(TinyRecognizer())
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        extractor(torch.rand(2, 3, 32, 32) * 255)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        extractor(torch.rand(2, 1, 32, 32))
    with pytest.raises(TypeError, match="features"):
        RecognizerFeatures(nn.Conv2d(3, 3, 1))


def test_kid_subset_size_must_fit_the_set():
    kid, _ = build_kid("recognizer", TinyRecognizer(), subsets=5, subset_size=10)
    kid.update(_images(6), real=True)
    kid.update(_images(6), real=False)
    with pytest.raises(ValueError, match="subset_size"):
        kid.compute()


def test_inception_offline_raises_a_clear_error_without_downloading(offline):
    with pytest.raises(InceptionWeightsUnavailable, match="never downloads"):
        build_fid("inception")
    with pytest.raises(InceptionWeightsUnavailable):
        build_kid("inception")
    with pytest.raises(InceptionWeightsUnavailable, match="no recognizer"):
        build_fid("auto")
    # auto falls back to the recogniser, and says so
    _, description = build_fid("auto", TinyRecognizer())
    assert "recogniser features" in description


def test_inception_without_torch_fidelity_names_the_package(offline, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)
    weights = offline / "inception.pth"
    weights.write_bytes(b"x")  # weights present: only the package is missing
    with pytest.raises(InceptionWeightsUnavailable, match="torch-fidelity package is not installed") as error:
        InceptionFeatures(weights_path=weights)
    assert "not on disk" not in str(error.value)
    with pytest.raises(InceptionWeightsUnavailable, match="torch-fidelity.*; the Inception-v3 FID weights"):
        InceptionFeatures()  # both problems are reported at once


def test_find_inception_weights_looks_only_at_local_paths(offline, monkeypatch):
    assert find_inception_weights() is None
    cached = offline / "torch_home" / "hub" / "checkpoints" / INCEPTION_WEIGHTS_FILENAME
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    assert find_inception_weights() == cached
    elsewhere = offline / "inception.pth"
    elsewhere.write_bytes(b"x")
    monkeypatch.setenv(INCEPTION_WEIGHTS_ENV, str(elsewhere))
    assert find_inception_weights() == elsewhere
    assert find_inception_weights(offline / "missing.pth") is None  # an explicit path is the only candidate


def test_inception_features_load_local_weights(offline, monkeypatch):
    """The full Inception path with a locally saved (random) weights file: loads it, never downloads."""
    tf_inception = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    with monkeypatch.context() as patch:  # build a weights file of the right layout without any download
        patch.setattr(tf_inception, "load_state_dict_from_url", lambda *a, **k: {})
        patch.setattr(tf_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, *a, **k: None)
        network = tf_inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    weights = offline / "inception.pth"
    torch.save(network.state_dict(), weights)
    del network

    # the 64-d layer keeps FID's eigen-decomposition cheap on CPU; the loading path is the same as for 2048
    fid, description = build_fid("inception", inception_weights=weights, inception_feature=64)
    assert description == "FID (Inception-v3 features (64-d, torch-fidelity FID weights))"
    assert fid.inception.weights_path == weights
    x = _images(3)
    features = fid.inception(x)
    assert features.shape == (3, 64) and torch.isfinite(features).all()
    fid.update(x, real=True)
    fid.update(x, real=False)
    assert abs(fid.compute().item()) < 1e-2
