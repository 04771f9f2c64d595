"""``segexpr demo``: the gradio callbacks (no browser) and the page driven by Selenium in headless Chromium.

The browser test needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them), the face tests
the photo extra (dlib). Without them they are skipped locally but fail when ``CI`` is set, so CI cannot silently
lose them. The whole-image browser test drives the real :class:`~segexpr.editor.ExpressionEditor` from a
checkpoint of a JointModule trained a few batches. ``docs/demo_screenshot.png`` is the page for the README
quickstart's real model editing the astronaut photo, written by ``examples/demo_screenshot.py``.
"""
from __future__ import annotations

import os
import socket
import sys
import time
import types
import urllib.request
from io import BytesIO
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import torch
from PIL import Image

from segexpr import demo as demo_module
from segexpr.data.labels import AU_NAMES, EXPRESSIONS, NUM_AUS

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
TIMEOUT = 60  # seconds, for every browser wait


class FakeEditor:
    """The ExpressionEditor interface with visible, checkable effects.

    ``edit`` shifts the red channel by ``expression index / 8`` (or by the mean AU intensity), ``transfer``
    returns the reference, ``regions`` returns one fixed horizontal band per region.
    """

    image_size = 64
    region_names = ("brows", "eyes", "nose", "mouth")

    def __init__(self):
        self.calls: list[tuple] = []

    def edit(self, images, expression=None, aus=None):
        assert images.dim() == 4 and images.shape[1] == 3 and images.abs().max() <= 1
        assert (expression is None) != (aus is None)
        self.calls.append(("edit", tuple(images.shape), expression, None if aus is None else torch.as_tensor(aus)))
        shift = EXPRESSIONS.index(expression) / 8 if expression is not None else float(torch.as_tensor(aus).mean())
        out = images.clone()
        out[:, 0] = (out[:, 0] + shift).clamp(-1, 1)
        return out

    def transfer(self, images, references):
        assert images.shape == references.shape
        self.calls.append(("transfer", tuple(images.shape)))
        return references.clone()

    def regions(self, images):
        b, _, h, w = images.shape
        masks = torch.zeros(b, len(self.region_names), h, w)
        for i in range(len(self.region_names)):
            top = h * (i + 1) // 6
            masks[:, i, top:top + h // 8, w // 4:3 * w // 4] = 1.0
        return masks


def _photo(size=(96, 80), colour=(120, 60, 200)) -> Image.Image:
    return Image.new("RGB", size, colour)


def _red(image: Image.Image) -> float:
    return float(np.asarray(image.convert("RGB"), dtype=np.float32)[..., 0].mean())


# ------------------------------------------------------------------------------------- callbacks, no browser
def test_expression_edit_whole_image():
    editor, photo = FakeEditor(), _photo()
    out = demo_module.edit_with_expression(editor, photo, "surprise", detect_faces=False)
    assert out.result.size == photo.size and out.result.mode == "RGB"
    # surprise is index 3: red + 3/8 in [-1, 1] = +47.8 in uint8 (120 -> ~168)
    assert _red(out.result) == pytest.approx(120 + 3 / 8 * 127.5, abs=2)
    assert np.array_equal(np.asarray(out.result)[..., 1:], np.asarray(photo)[..., 1:])
    assert editor.calls[0][:3] == ("edit", (1, 3, 64, 64), "surprise")
    assert "surprise" in out.message and out.faces.size == photo.size
    assert out.parsing.size == (256, 256)  # one 64 px tile, enlarged x4 for viewing


def test_au_edit():
    editor, photo = FakeEditor(), _photo()
    aus = np.zeros(NUM_AUS, np.float32)
    aus[AU_NAMES.index("AU12")] = 1.0
    aus[AU_NAMES.index("AU25")] = 0.7
    out = demo_module.edit_with_aus(editor, photo, aus.tolist(), detect_faces=False)
    sent = editor.calls[0][3]
    assert sent.shape == (NUM_AUS,) and torch.allclose(sent, torch.from_numpy(aus))
    assert _red(out.result) == pytest.approx(120 + aus.mean() * 127.5, abs=2)
    assert "AU12 1.00" in out.message and "AU25 0.70" in out.message
    with pytest.raises(ValueError, match="17 AU"):
        demo_module.edit_with_aus(editor, photo, [0.5] * 3, detect_faces=False)


def test_transfer_copies_reference():
    editor = FakeEditor()
    photo, reference = _photo(), _photo((50, 50), (10, 220, 30))
    out = demo_module.transfer_from_reference(editor, photo, reference, detect_faces=False)
    assert ("transfer", (1, 3, 64, 64)) in editor.calls
    assert out.result.size == photo.size
    assert np.abs(np.asarray(out.result, np.float32) - np.array([10, 220, 30])).max() <= 2
    missing = demo_module.transfer_from_reference(editor, photo, None, detect_faces=False)
    assert missing.result is None and "reference" in missing.message


def test_missing_image_and_unknown_expression():
    editor = FakeEditor()
    out = demo_module.edit_with_expression(editor, None, "happy")
    assert out.result is None and "Upload a photo" in out.message and not editor.calls
    with pytest.raises(ValueError, match="unknown expression"):
        demo_module.edit_with_expression(editor, _photo(), "smug")


class _NoFaceFound(ValueError):
    pass


def _fake_pipeline(faces: int):
    """A stand-in for segexpr.faces.pipeline: ``faces`` boxes, or NoFaceFound when 0."""
    def edit_photo(image, edit_fn, *, size, face_mask_fn=None, align=True, max_faces=8, min_face_size=32):
        if faces == 0:
            raise _NoFaceFound("no face found")
        crops = torch.zeros(faces, 3, size, size)
        edited = edit_fn(crops)
        found = [types.SimpleNamespace(box=(10 + 30 * i, 10, 35 + 30 * i, 40),
                                       landmarks=np.full((5, 2), 20.0), score=0.9) for i in range(faces)]
        return types.SimpleNamespace(image=image.copy(), faces=found, crops=crops, edited_crops=edited)
    return types.SimpleNamespace(edit_photo=edit_photo, NoFaceFound=_NoFaceFound)


def test_no_face_message(monkeypatch):
    monkeypatch.setattr(demo_module, "_load_pipeline", lambda: _fake_pipeline(0))
    editor, photo = FakeEditor(), _photo()
    out = demo_module.edit_with_expression(editor, photo, "happy", detect_faces=True)
    assert out.result is None and "No face found" in out.message and not editor.calls
    ref = demo_module.transfer_from_reference(editor, photo, photo, detect_faces=True)
    assert ref.result is None and "reference" in ref.message


def test_detected_faces_are_boxed(monkeypatch):
    monkeypatch.setattr(demo_module, "_load_pipeline", lambda: _fake_pipeline(2))
    editor, photo = FakeEditor(), _photo((120, 60), (0, 0, 0))
    out = demo_module.edit_with_expression(editor, photo, "sad", detect_faces=True)
    assert editor.calls[0][:3] == ("edit", (2, 3, 64, 64), "sad")
    assert "2 faces" in out.message
    boxes = np.asarray(out.faces)
    assert (boxes[10, 10:36] == [0, 255, 0]).all()  # top edge of the first box drawn in green
    assert out.parsing.size == (512, 256)  # two tiles side by side


def test_missing_dlib_falls_back_to_whole_image(monkeypatch):
    monkeypatch.setattr(demo_module, "_load_pipeline", lambda: None)
    out = demo_module.edit_with_expression(FakeEditor(), _photo(), "happy", detect_faces=True)
    assert out.result is not None and "dlib" in out.message


def test_region_overlay_colours():
    from segexpr.visualize import PALETTE
    from segexpr.data.labels import REGION_GROUPS

    crops = torch.zeros(1, 3, 64, 64)
    picture = np.asarray(demo_module.region_overlay(FakeEditor(), crops))[::4, ::4]  # undo the x4 enlargement
    eyes = PALETTE[REGION_GROUPS["eyes"][0]].float().numpy()
    expected = 0.4 * 127.5 + 0.6 * eyes  # alpha 0.6 over a mid-grey (0 in [-1, 1]) crop
    assert np.abs(picture[21 + 2, 32] - expected).max() <= 1
    assert (picture[2, 2] == 128).all()  # outside every region: the crop itself


def test_synthfacs_face():
    face = demo_module.synthfacs_face(7, 96, expression="happy")
    assert face.size == (96, 96) and face.mode == "RGB"
    assert np.asarray(face).std() > 10
    reference = demo_module.synthfacs_reference(7, 96)
    assert reference.size == (96, 96) and not np.array_equal(np.asarray(reference), np.asarray(face))
    assert demo_module.region_legend(FakeEditor.region_names) == "brows purple, eyes blue, nose red, mouth dark red"
    assert demo_module.region_legend(("brows", "cheeks")) == ""


def test_main_loads_editor_and_launches(monkeypatch):
    calls = {}

    class Editor(FakeEditor):
        pass

    def load_photo_editor(path, device="cpu"):  # the loader segexpr edit uses
        calls["ckpt"] = (path, device)
        return Editor()

    class Launched:
        def launch(self, **kwargs):
            calls["launch"] = kwargs

    def build_demo(editor, *, photo_editing=True):
        assert isinstance(editor, Editor)
        calls["photo_editing"] = photo_editing
        return Launched()

    monkeypatch.setattr("segexpr.inference.photo.load_photo_editor", load_photo_editor)
    monkeypatch.setattr(demo_module, "build_demo", build_demo)
    assert demo_module.main(["--ckpt", "m.ckpt", "--port", "7999", "--no-detect"]) == 0
    assert calls["ckpt"] == ("m.ckpt", "cpu") and calls["photo_editing"] is False
    assert calls["launch"] == {"server_name": "127.0.0.1", "server_port": 7999, "share": False}
    with pytest.raises(SystemExit):
        demo_module.main([])  # --ckpt is required


def _require_face_pipeline() -> None:
    """segexpr.faces (the photo extra: dlib and its model files), or skip (outside CI) / fail (in CI)."""
    try:
        from segexpr.faces import pipeline  # noqa: F401
    except ImportError as err:
        message = f"segexpr.faces is not importable ({err}); pip install 'segexpr[photo]'"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def test_a_missing_photo_extra_fails_in_ci_and_skips_elsewhere(monkeypatch):
    monkeypatch.setitem(sys.modules, "segexpr.faces", None)  # importing it now raises ImportError
    outcomes = {}
    for ci in ("true", None):
        if ci is None:
            monkeypatch.delenv("CI", raising=False)
        else:
            monkeypatch.setenv("CI", ci)
        with pytest.raises(BaseException, match="segexpr.faces is not importable") as outcome:  # skip or fail
            _require_face_pipeline()
        outcomes[ci] = outcome.type
    assert outcomes == {"true": pytest.fail.Exception, None: pytest.skip.Exception}


def test_real_face_pipeline_on_astronaut():
    """With dlib and segexpr.faces installed, the astronaut's face is found, boxed and edited."""
    _require_face_pipeline()
    from skimage.data import astronaut

    photo = Image.fromarray(astronaut())
    editor = FakeEditor()
    out = demo_module.edit_with_expression(editor, photo, "happy", detect_faces=True)
    assert out.result is not None, out.message
    assert out.result.size == photo.size and "1 face detected" in out.message
    assert editor.calls[0][1] == (1, 3, 64, 64)


# ------------------------------------------------------------------------------------------------ browser
def _require_browser():
    """Selenium + Debian's chromium/chromedriver, or skip (outside CI) / fail (in CI)."""
    problems = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        problems.append("the selenium package")
    if problems:
        message = f"browser test needs {', '.join(problems)} (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _chrome(tmp_path: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000",
                "--disable-gpu", "--no-first-run", "--disable-extensions", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-default-apps",
                f"--user-data-dir={tmp_path / 'chrome-profile'}",
                # offline: any host other than the demo's fails to resolve
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    service = Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(TIMEOUT)
    driver.set_script_timeout(TIMEOUT)
    return driver


def _requested_urls(driver) -> list[str]:
    import json

    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


@pytest.fixture(scope="module")
def trained_editor(tmp_path_factory):
    """The real ExpressionEditor, from the checkpoint of a tiny 64-px JointModule trained 4 batches."""
    import pytorch_lightning as pl

    from segexpr.callbacks import BatchBudget
    from segexpr.data import SyntheticFacesDataModule
    from segexpr.editor import ExpressionEditor
    from tiny import tiny_joint_module

    pl.seed_everything(0, verbose=False)
    module = tiny_joint_module(64, adv_loss="hinge")
    data = SyntheticFacesDataModule(size=64, train_length=40, val_length=8, test_length=8, pairs=True,
                                    augment=False, batch_size=4)
    trainer = pl.Trainer(max_epochs=-1, callbacks=[BatchBudget(4)], logger=False, enable_checkpointing=False,
                         limit_val_batches=0, enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu")
    trainer.fit(module, datamodule=data)
    assert module._train_batches == 4
    checkpoint = tmp_path_factory.mktemp("demo") / "tiny.ckpt"
    trainer.save_checkpoint(checkpoint)
    return ExpressionEditor.from_checkpoint(checkpoint)


@pytest.mark.timeout(300)
@pytest.mark.filterwarnings("ignore:::gradio.queueing")  # gradio's own pandas deprecation warnings
@pytest.mark.parametrize("photo_editing", [False, True], ids=["whole-image", "face-detection"])
def test_browser_upload_and_edit(tmp_path, monkeypatch, request, photo_editing):
    """Load the page, upload a PNG, click "happy", wait for the result image and screenshot the page.

    ``whole-image`` (no dlib needed) uploads a SynthFACS face to the real ExpressionEditor of a briefly trained
    checkpoint, checks the page shows that model's edit and writes the docs screenshot; ``face-detection`` runs
    skimage's astronaut photo through segexpr.faces (dlib) with the FakeEditor, whose visible red shift shows
    that only the face was edited and pasted back.
    """
    _require_browser()
    if photo_editing:
        _require_face_pipeline()
    editor = FakeEditor() if photo_editing else request.getfixturevalue("trained_editor")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    started = time.monotonic()
    photo_path = tmp_path / "face.png"
    if photo_editing:
        Image.fromarray(pytest.importorskip("skimage.data").astronaut()).save(photo_path)
    else:
        demo_module.synthfacs_face(5, 160).save(photo_path)
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))  # uploads and outputs stay in tmp_path
    app = demo_module.build_demo(editor, photo_editing=photo_editing)
    port = _free_port()
    driver = None
    try:
        app.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True)
        driver = _chrome(tmp_path)
        wait = WebDriverWait(driver, TIMEOUT)
        driver.get(f"http://127.0.0.1:{port}/")

        upload = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#source input[type=file]")))
        upload.send_keys(str(photo_path))
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#source img[src]")))
        wait.until(EC.element_to_be_clickable((By.ID, "expr-happy"))).click()

        result = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#result img[src]")))
        wait.until(EC.text_to_be_present_in_element((By.ID, "message"), "happy"))
        if photo_editing:
            wait.until(EC.text_to_be_present_in_element((By.ID, "message"), "1 face detected"))
            wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#faces img[src]")))
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#parsing img[src]")))
        src = result.get_attribute("src")
        assert urlparse(src).hostname == "127.0.0.1", src
        with urllib.request.urlopen(src, timeout=TIMEOUT) as response:
            shown = Image.open(BytesIO(response.read())).convert("RGB")
        original = Image.open(photo_path).convert("RGB")
        assert shown.size == original.size
        if photo_editing:
            red_shift = (np.asarray(shown, np.float32) - np.asarray(original, np.float32))[..., 0]
            # "happy" (index 1) pushed the red channel up by ~1/8 of the range inside the face (a few % of the
            # astronaut photo)
            assert (red_shift > 5).mean() > 0.01, red_shift.mean()
        else:
            # the page shows the real model's edit: what the same editor gives in-process (up to gradio's lossy
            # WebP encoding), which differs from the upload
            expected = demo_module.edit_with_expression(editor, original, "happy", detect_faces=False).result
            shown_a, expected_a = np.asarray(shown, np.float32), np.asarray(expected, np.float32)
            change = np.abs(expected_a - np.asarray(original, np.float32)).mean()
            assert change > 2.0, change
            # (measured: 3.8 levels of WebP error on a 34-level change)
            assert np.abs(shown_a - expected_a).mean() < change / 4, (np.abs(shown_a - expected_a).mean(), change)

        # the page works offline: every network request went to the demo server (chrome:// pages aside)
        network = [u for u in _requested_urls(driver) if urlparse(u).scheme in ("http", "https", "ws", "wss")]
        assert any(u.startswith(f"http://127.0.0.1:{port}/") for u in network), network
        foreign = [u for u in network if urlparse(u).hostname != "127.0.0.1"]
        assert not foreign, foreign
        severe = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not severe, severe

        time.sleep(0.5)  # let the images finish painting
        screenshot = tmp_path / "demo_screenshot.png"
        assert driver.save_screenshot(str(screenshot))
        assert Image.open(screenshot).size[0] >= 1000
        print(f"browser test took {time.monotonic() - started:.1f} s")
    finally:
        if driver is not None:
            driver.quit()
        app.close()


def test_screenshot_script_refuses_an_existing_picture_before_any_work(tmp_path):
    """examples/demo_screenshot.py (docs/demo_screenshot.png from a real checkpoint) refuses to replace a picture
    without --overwrite, before it reads the checkpoint (which does not exist here)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("demo_screenshot", ROOT / "examples" / "demo_screenshot.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "shot.png"
    out.write_bytes(b"keep")
    with pytest.raises(SystemExit, match="exist"):
        script.main(["--ckpt", str(tmp_path / "missing.ckpt"), "--out", str(out)])
    assert out.read_bytes() == b"keep"
