"""face-parsing.PyTorch's BiSeNet: parity with the reference fixture, strict checkpoint loader, factory, ONNX."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from segexpr.models.segmenters import (BiSeNet, FaceParsingBiSeNet, SegmenterOutput, create_segmenter,
                                       load_face_parsing_checkpoint)

_CANDIDATES = [Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "face_parsing_pytorch",
               Path("/work/shared/fixtures/face_parsing_pytorch")]
FIXTURE = next((p for p in _CANDIDATES if p.is_dir()), _CANDIDATES[0])
IMAGENET_MEAN = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def reference_state() -> dict[str, torch.Tensor]:
    """The reference's state_dict (random weights, exact keys); a missing fixture fails, never skips."""
    path = FIXTURE / "state_dict.pth"
    assert path.is_file(), f"face-parsing.PyTorch fixture missing: looked in {[str(p) for p in _CANDIDATES]}"
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def reference_model(reference_state) -> FaceParsingBiSeNet:
    return load_face_parsing_checkpoint(FIXTURE / "state_dict.pth")


def test_fixture_outputs_are_reproduced(reference_state, reference_model):
    assert list(FaceParsingBiSeNet().state_dict()) == list(reference_state)  # exact keys, same order
    io = torch.load(FIXTURE / "io.pt", map_location="cpu", weights_only=True)
    x = (io["input"] * IMAGENET_STD + IMAGENET_MEAN) * 2 - 1  # ImageNet-normalised -> [-1, 1]
    assert not reference_model.training
    with torch.no_grad():
        out = reference_model(x, return_aux=True)
    assert isinstance(out, SegmenterOutput) and out.logits.shape == (2, 19, 96, 128)
    for got, key in zip((out.logits, *out.aux), ("output", "aux16", "aux32")):
        assert got.shape == io[key].shape
        diff = (got - io[key]).abs().max().item()
        assert diff < 1e-4, f"{key}: max abs diff {diff:.3g}"
        assert io[key].abs().max() > 0.1  # not a trivially-zero comparison


def test_loader_accepts_wrapped_and_dataparallel_checkpoints(reference_state, reference_model, tmp_path):
    path = tmp_path / "ddp.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference_state.items()}, "epoch": 3}, path)
    model = FaceParsingBiSeNet().train()
    assert load_face_parsing_checkpoint(path, model=model) is model and model.training  # mode left unchanged
    for k, v in reference_model.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0)


def test_loader_errors(reference_state, tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_face_parsing_checkpoint(missing)

    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes((FIXTURE / "state_dict.pth").read_bytes()[:5000])
    for bad in (corrupt, truncated):
        with pytest.raises(ValueError, match=rf"{bad.name}.*corrupt or truncated") as err:
            load_face_parsing_checkpoint(bad)
        assert "weights_only" not in str(err.value)

    objects = tmp_path / "objects.pth"
    torch.save({"state_dict": {"a": torch.zeros(1)}, "opt": _Opaque()}, objects)
    with pytest.raises(ValueError, match=r"objects\.pth.*Python objects.*_Opaque") as err:
        load_face_parsing_checkpoint(objects)
    assert "weights_only" not in str(err.value) and "False" not in str(err.value)

    dropped = tmp_path / "dropped.pth"
    torch.save({k: v for k, v in reference_state.items() if k != "cp.arm16.conv_atten.weight"}, dropped)
    with pytest.raises(ValueError, match=r"dropped\.pth.*missing keys \[cp\.arm16\.conv_atten\.weight\]"):
        load_face_parsing_checkpoint(dropped)

    reshaped = tmp_path / "reshaped.pth"
    torch.save({**reference_state, "ffm.conv1.weight": torch.zeros(32, 256, 1, 1)}, reshaped)
    with pytest.raises(ValueError, match=r"reshaped\.pth.*ffm\.conv1\.weight \(file \(32, 256, 1, 1\)"):
        load_face_parsing_checkpoint(reshaped)

    extra = tmp_path / "extra.pth"
    torch.save({**reference_state, "sp.conv1.conv.weight": torch.zeros(1)}, extra)
    with pytest.raises(ValueError, match=r"unexpected keys \[sp\.conv1\.conv\.weight\]"):
        load_face_parsing_checkpoint(extra)

    with pytest.raises(ValueError, match=r"num_classes=5.*conv_out\.conv_out\.weight"):  # 19-class file
        load_face_parsing_checkpoint(FIXTURE / "state_dict.pth", model=FaceParsingBiSeNet(num_classes=5))


class _Opaque:
    """A Python object a tensor-only (weights_only) load refuses."""


def test_factory_variants_and_odd_sizes():
    net = create_segmenter("bisenet", num_classes=19, variant="face_parsing").eval()
    assert isinstance(net, FaceParsingBiSeNet)
    assert type(create_segmenter("bisenet", backbone_width=8, context_channels=16, fusion_channels=16)) is BiSeNet
    assert type(create_segmenter("bisenet", variant="segexpr", backbone_width=8)) is BiSeNet
    x = torch.rand(1, 3, 37, 53) * 2 - 1
    with torch.no_grad():
        out = net(x, return_aux=True)
    assert out.logits.shape == (1, 19, 37, 53) and [a.shape for a in out.aux] == [(1, 19, 37, 53)] * 2
    assert torch.isfinite(out.logits).all()
    small = create_segmenter("bisenet", num_classes=5, variant="face_parsing").eval()
    with torch.no_grad():
        assert small(torch.rand(2, 3, 9, 70) * 2 - 1).shape == (2, 5, 9, 70)  # only the heads change
    with pytest.raises(ValueError, match="face_parsing.*segexpr"):
        create_segmenter("bisenet", variant="zll")
    with pytest.raises(ValueError, match="unknown variant"):
        create_segmenter("unet", variant="face_parsing")


def test_onnx_matches_pytorch(reference_model, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from segexpr.export import to_onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = to_onnx(reference_model, tmp_path / "face_parsing.onnx", image_size=64)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        ref = reference_model(x).numpy()
    out = sess.run(None, {"image": x.numpy()})[0]
    assert out.shape == (2, 19, 64, 64)
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)
