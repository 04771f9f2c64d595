"""ONNX export: onnxruntime output matches PyTorch, including a different batch size."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from segexpr.export import to_onnx  # noqa: E402
from segexpr.models.segmenters import create_segmenter  # noqa: E402
from segexpr.modules.segmenter import SegmenterModule  # noqa: E402

SMALL = {
    "bisenet": dict(backbone_width=8, context_channels=16, fusion_channels=16),
    "unet": dict(base_channels=8, depth=3),
}


def _with_running_stats(net: torch.nn.Module) -> torch.nn.Module:
    net.train()
    with torch.no_grad():
        for _ in range(2):
            net(torch.rand(4, 3, 40, 40) * 2 - 1)
    return net.eval()


@pytest.mark.parametrize("arch", ["bisenet", "unet"])
def test_onnx_parity_dynamic_batch(arch, tmp_path):
    net = _with_running_stats(create_segmenter(arch, **SMALL[arch]))
    net.train()  # to_onnx must export eval mode and leave the caller's module untouched
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = to_onnx(net, tmp_path / f"{arch}.onnx", image_size=(45, 38), dynamic_batch=True)
    assert net.training
    net.eval()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["image"]
    assert [o.name for o in sess.get_outputs()] == ["logits"]
    for batch in (1, 3):
        x = torch.rand(batch, 3, 45, 38) * 2 - 1
        with torch.no_grad():
            ref = net(x).numpy()
        out = sess.run(None, {"image": x.numpy()})[0]
        assert out.shape == (batch, 19, 45, 38)
        np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)


def test_onnx_from_module_static_batch(tmp_path):
    module = SegmenterModule(arch="unet", num_classes=5, segmenter_kwargs=SMALL["unet"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = to_onnx(module, tmp_path / "sub" / "m.onnx", image_size=32, dynamic_batch=False, batch_size=2)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape == [2, 3, 32, 32]
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    np.testing.assert_allclose(sess.run(None, {"image": x.numpy()})[0], module.segmenter.eval()(x).detach().numpy(),
                               atol=1e-4, rtol=0)


def test_onnx_bad_arguments(tmp_path):
    net = create_segmenter("unet", **SMALL["unet"])
    with pytest.raises(TypeError, match="Segmenter"):
        to_onnx(torch.nn.Conv2d(3, 3, 1), tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="image_size"):
        to_onnx(net, tmp_path / "x.onnx", image_size=0)
    with pytest.raises(ValueError, match="opset"):
        to_onnx(net, tmp_path / "x.onnx", opset=7)
