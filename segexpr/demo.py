"""``segexpr demo``: a local browser demo (gradio) of expression editing, AU editing and expression transfer.

Upload a photo (or render a SynthFACS face), then click one of the 8 expressions, set action-unit sliders, or
give a reference photo whose expression is copied. The page shows the result beside the original, the
detected faces drawn as boxes and the parsing regions the generator used, coloured over the face.

Photos are edited exactly as ``segexpr edit`` edits them, through the one photo path
(:func:`segexpr.inference.photo.edit_photo_faces`): with ``photo_editing=True`` and face detection available (it
needs the optional dlib packages), a "detect faces" checkbox (on by default) detects, aligns, edits and pastes
back every face of the photo through the segmenter's face mask; otherwise the whole upload is treated as one
aligned face (resized to the model's input and edited). Either way only the model's change is added to the
uploaded photo, at the photo's own resolution. A missing face or missing dlib shows a message on the page
instead of failing. The parsing overlay shows the soft region masks the generator used (``editor.regions``).

The editor is any object with the :class:`segexpr.inference.editor.ExpressionEditor` interface: ``image_size``,
``region_names``, ``edit(images, expression=None, aus=None)``, ``transfer(images, references)`` and
``regions(images)`` (float ``[B, 3, H, W]`` images in ``[-1, 1]``), and -- for the face-mask paste -- ``segmenter``,
``device`` and ``face_mask(images)``. The callbacks below are plain functions of
``(editor, inputs...)`` returning :class:`DemoOutput`, so they are testable without a browser; gradio is
imported only by :func:`build_demo`. The server binds to 127.0.0.1 by default and never creates a share link;
gradio analytics are switched off before gradio is imported.
"""
from __future__ import annotations

import argparse
import os
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from segexpr.inference.photo import crop_edit, edit_photo_faces
from segexpr.io.images import images_to_uint8
from segexpr.labels import (AU_DESCRIPTIONS, AU_NAMES, EXPRESSIONS, NUM_AUS, ALL_REGION_GROUPS,
                                 expression_prototype)

# Before any ``import gradio``: no usage analytics / version check requests from this process.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

__all__ = [
    "DemoOutput", "build_demo", "draw_faces", "edit_with_aus", "edit_with_expression", "main", "region_legend",
    "region_overlay", "synthfacs_face", "synthfacs_reference", "transfer_from_reference",
]

#: Order-A parsing class whose palette colour paints each expression region in the overlay.
_REGION_COLOUR_CLASS = {name: classes[0] for name, classes in ALL_REGION_GROUPS.items()}
#: Fallback classes (distinct palette colours) for region names outside ``ALL_REGION_GROUPS``.
_SPARE_CLASSES = (16, 14, 9, 6, 17, 12, 7, 15)
_COLOUR_NAMES = {"brows": "purple", "eyes": "blue", "nose": "red", "mouth": "dark red"}
_NO_IMAGE = "Upload a photo or press **Use a SynthFACS face** first."
_NO_REFERENCE = "Give a reference photo (or press **SynthFACS reference**) to copy its expression."
_NO_FACE = ("**No face found** in the photo. Try a larger, frontal face, or untick **detect faces** to edit "
            "the whole image as one aligned face.")
_NO_REFERENCE_FACE = ("**No face found in the reference photo.** Try another reference, or untick **detect "
                      "faces** to use the whole reference as one aligned face.")
_NO_DLIB = ("Face detection is unavailable (it needs the optional dlib packages: `pip install 'segexpr[photo]'`), "
            "so the whole image was edited as one aligned face.")


class DemoOutput(NamedTuple):
    """What every edit callback shows: result, detected faces, parsing overlay (PIL or None) and a message."""

    result: Image.Image | None
    faces: Image.Image | None
    parsing: Image.Image | None
    message: str


# ------------------------------------------------------------------------------------------ image conversions
def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """Float ``[3, H, W]`` or ``[1, 3, H, W]`` in ``[-1, 1]`` -> RGB PIL image."""
    if image.dim() == 4:
        image = image[0]
    return Image.fromarray(images_to_uint8(image.cpu()).permute(1, 2, 0).numpy(), "RGB")


def _as_pil(image: Any) -> Image.Image | None:
    if image is None or isinstance(image, Image.Image):
        return image
    return Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")


# ------------------------------------------------------------------------------------------------ pictures
def synthfacs_face(identity: int = 0, size: int = 256, expression: str = "neutral") -> Image.Image:
    """Render SynthFACS identity ``identity`` with an expression prototype as an RGB PIL image."""
    from segexpr.data.synthetic import render

    identity = int(identity) % (2**31 - 1)
    return Image.fromarray(render(identity, expression_prototype(expression), size)["image"], "RGB")


def region_overlay(editor: Any, crops: torch.Tensor, threshold: float = 0.5) -> Image.Image:
    """The editor's parsing regions coloured over its input crops, side by side (one tile per face).

    Each pixel takes the colour of its strongest region when that region's mask exceeds ``threshold``
    (colours from :data:`segexpr.visualize.PALETTE`, see :func:`region_legend`). Tiles smaller than 256 px
    are enlarged by an integer factor (nearest neighbour) for viewing.
    """
    from segexpr.visualize import overlay

    with torch.no_grad():
        masks = editor.regions(crops).detach().float().cpu()
    crops = crops.detach().float().cpu()
    if masks.shape[-2:] != crops.shape[-2:]:
        masks = F.interpolate(masks, size=crops.shape[-2:], mode="bilinear", align_corners=False)
    names = tuple(editor.region_names)
    if masks.shape[1] == 0 or not names:
        class_map = torch.zeros(crops.shape[0], *crops.shape[-2:], dtype=torch.int64)
    else:
        colours = torch.tensor([_REGION_COLOUR_CLASS.get(n, _SPARE_CLASSES[i % len(_SPARE_CLASSES)])
                                for i, n in enumerate(names[:masks.shape[1]])], dtype=torch.int64)
        strength, index = masks.max(dim=1)
        class_map = torch.where(strength > threshold, colours[index], torch.zeros_like(index))
    tiles = overlay(crops, class_map, alpha=0.6)
    picture = tensor_to_pil(torch.cat(list(tiles), dim=-1))
    scale = max(1, 256 // picture.height)        # enlarge small model inputs for viewing
    return picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST) if scale > 1 else picture


def region_legend(region_names: Sequence[str]) -> str:
    """Which overlay colour each region has, e.g. ``"brows purple, eyes blue, nose red, mouth dark red"``."""
    named = {n: c for n, c in _COLOUR_NAMES.items() if n in region_names}
    return ", ".join(f"{n} {c}" for n, c in named.items()) if len(named) == len(region_names) else ""


def synthfacs_reference(identity: int = 0, size: int = 256) -> Image.Image:
    """A reference face for transfer: identity ``identity + 1`` with one of the 7 non-neutral expressions."""
    identity = int(identity or 0)
    return synthfacs_face(identity + 1, size, expression=EXPRESSIONS[1 + identity % (len(EXPRESSIONS) - 1)])


def draw_faces(image: Image.Image, faces: Sequence[Any]) -> Image.Image:
    """A copy of ``image`` with each detected face's box, 5 landmarks and score drawn on it."""
    canvas = image.convert("RGB").copy()
    draw = ImageDraw.Draw(canvas)
    width = max(2, round(max(canvas.size) / 250))
    for i, face in enumerate(faces):
        x0, y0, x1, y1 = (float(v) for v in face.box)
        draw.rectangle((x0, y0, x1, y1), outline=(0, 255, 0), width=width)
        for x, y in np.asarray(getattr(face, "landmarks", np.zeros((0, 2))), dtype=np.float32).reshape(-1, 2):
            draw.ellipse((x - width, y - width, x + width, y + width), fill=(255, 0, 0))
        score = getattr(face, "score", None)
        label = f"{i + 1}" if score is None else f"{i + 1}: {float(score):.2f}"
        draw.text((x0 + width, max(0.0, y0 - 12 - width)), label, fill=(0, 255, 0))
    return canvas


# ------------------------------------------------------------------------------------------ face detection
def _load_pipeline() -> Any | None:
    """:mod:`segexpr.faces.pipeline` when it (and dlib) can be imported, else ``None``."""
    try:
        from segexpr.faces import pipeline
    except ImportError:
        return None
    return pipeline


class _NoFace(Exception):
    """Internal: face detection ran and found nothing."""


def _run(editor: Any, image: Image.Image, edit_fn: Callable[[torch.Tensor], torch.Tensor],
         detect_faces: bool) -> tuple[Image.Image, torch.Tensor, Image.Image, str]:
    """Edit ``image`` with ``edit_fn`` (aligned crops ``[N, 3, S, S]`` -> edited crops) through the one photo path
    that ``segexpr edit`` uses (:func:`segexpr.inference.photo.edit_photo_faces`).

    Detects, aligns and pastes back every face through the segmenter's face mask when ``detect_faces`` and face
    detection is available, otherwise edits the whole image as one aligned face; either way only the change is
    added to the photo at its own resolution. Returns the edited image (size of ``image``), the crops the editor
    saw, ``image`` with the detected faces drawn, and a note for the message line. Raises :class:`_NoFace` when
    detection finds nothing.
    """
    pipeline = _load_pipeline() if detect_faces else None
    note = _NO_DLIB if detect_faces and pipeline is None else ""
    if pipeline is not None:
        try:
            found = edit_photo_faces(editor, image, edit_fn, align=True, pipeline=pipeline)
        except pipeline.NoFaceFound as error:
            raise _NoFace(str(error)) from error
        except ImportError:               # the pipeline imports dlib when it detects
            note = _NO_DLIB
        else:
            count = len(found.faces)
            return (found.image, found.crops, draw_faces(image, found.faces),
                    f"{count} face{'s' * (count != 1)} detected and edited.")
    found = edit_photo_faces(editor, image, edit_fn, align=False)
    return found.image, found.crops, image.convert("RGB"), note or "Edited the whole image as one aligned face."


def _edit(editor: Any, image: Any, edit_fn: Callable[[torch.Tensor], torch.Tensor], detect_faces: bool,
          what: str) -> DemoOutput:
    image = _as_pil(image)
    if image is None:
        return DemoOutput(None, None, None, _NO_IMAGE)
    try:
        with torch.no_grad():
            result, crops, faces, note = _run(editor, image, edit_fn, detect_faces)
    except _NoFace:
        return DemoOutput(None, image.convert("RGB"), None, _NO_FACE)
    return DemoOutput(result, faces, region_overlay(editor, crops), f"{what}. {note}")


# ------------------------------------------------------------------------------------------------ callbacks
def edit_with_expression(editor: Any, image: Any, expression: str, detect_faces: bool = True) -> DemoOutput:
    """Give every face of ``image`` one of the 8 :data:`~segexpr.labels.EXPRESSIONS`."""
    if expression not in EXPRESSIONS:
        raise ValueError(f"unknown expression {expression!r}; expected one of {EXPRESSIONS}")
    return _edit(editor, image, crop_edit(editor, expression=expression), detect_faces, f"Expression: **{expression}**")


def edit_with_aus(editor: Any, image: Any, aus: Sequence[float], detect_faces: bool = True) -> DemoOutput:
    """Set the 17 action-unit intensities (``AU_NAMES`` order, each in ``[0, 1]``) on every face of ``image``."""
    vector = torch.as_tensor(np.asarray(aus, dtype=np.float32)).clamp(0, 1)
    if vector.shape != (NUM_AUS,):
        raise ValueError(f"expected {NUM_AUS} AU intensities, got shape {tuple(vector.shape)}")
    active = ", ".join(f"{n} {float(v):.2f}" for n, v in zip(AU_NAMES, vector) if v > 0) or "none"
    return _edit(editor, image, crop_edit(editor, aus=vector), detect_faces, f"Action units: {active}")


def transfer_from_reference(editor: Any, image: Any, reference: Any, detect_faces: bool = True) -> DemoOutput:
    """Copy the expression of ``reference`` (its first detected face, or all of it) onto every face of ``image``."""
    reference = _as_pil(reference)
    if _as_pil(image) is None:
        return DemoOutput(None, None, None, _NO_IMAGE)
    if reference is None:
        return DemoOutput(None, None, None, _NO_REFERENCE)
    try:
        with torch.no_grad():
            ref_crop = _run(editor, reference, lambda crops: crops, detect_faces)[1][:1]
    except _NoFace:
        return DemoOutput(None, None, None, _NO_REFERENCE_FACE)
    return _edit(editor, image, crop_edit(editor, reference=ref_crop), detect_faces, "Copied the reference's expression")


# --------------------------------------------------------------------------------------------------- the UI
def build_demo(editor: Any, *, photo_editing: bool = True) -> "gradio.Blocks":  # noqa: F821
    """The gradio page around ``editor``; launch it with ``.launch(server_name="127.0.0.1")``.

    ``photo_editing=False`` hides the "detect faces" option: every upload is edited as one aligned face.
    """
    import gradio as gr

    def guarded(fn: Callable[..., DemoOutput]) -> Callable[..., tuple]:
        def run(*args):
            try:
                return tuple(fn(*args))
            except ValueError as error:   # bad input: a toast on the page instead of a traceback
                raise gr.Error(str(error)) from error
        return run

    def expression_handler(name: str) -> Callable[..., tuple]:
        return guarded(lambda image, detect: edit_with_expression(editor, image, name, bool(detect)))

    def prototype_sliders(name: str) -> Callable[[], list[float]]:
        return lambda: [float(v) for v in expression_prototype(name)]

    local_buttons = ["download", "fullscreen"]  # no "share": that posts to Hugging Face
    regions = ", ".join(editor.region_names) or "none"
    with gr.Blocks(title="segexpr demo", analytics_enabled=False) as demo:
        gr.Markdown("## segexpr: facial expression editing\n"
                    f"Model input {editor.image_size}x{editor.image_size} px; edited regions: {regions}. "
                    "Upload a photo, then click an expression, set action units or copy a reference.")
        with gr.Row():
            source = gr.Image(label="Photo", type="pil", image_mode="RGB", sources=["upload", "clipboard"],
                              buttons=local_buttons, elem_id="source")
            result = gr.Image(label="Result", type="pil", interactive=False, elem_id="result", buttons=local_buttons)
        message = gr.Markdown(_NO_IMAGE, elem_id="message")
        with gr.Row():
            identity = gr.Number(value=0, precision=0, minimum=0, label="SynthFACS identity", scale=1)
            synth = gr.Button("Use a SynthFACS face", elem_id="synthfacs", scale=1)
            detect = gr.Checkbox(value=photo_editing, label="detect faces", visible=photo_editing,
                                 interactive=photo_editing, elem_id="detect", scale=1)
        with gr.Row():
            buttons = {name: gr.Button(name, size="sm", elem_id=f"expr-{name}") for name in EXPRESSIONS}
        with gr.Accordion("Action units", open=False, elem_id="aus"):
            sliders = [gr.Slider(0.0, 1.0, value=0.0, step=0.05, label=f"{n} · {AU_DESCRIPTIONS[n]}")
                       for n in AU_NAMES]
            apply_aus = gr.Button("Apply action units", variant="primary", elem_id="apply-aus")
        with gr.Accordion("Expression transfer", open=False, elem_id="transfer"):
            with gr.Row():
                reference = gr.Image(label="Reference photo", type="pil", image_mode="RGB",
                                     sources=["upload", "clipboard"], buttons=local_buttons, elem_id="reference")
                with gr.Column():
                    synth_ref = gr.Button("SynthFACS reference", elem_id="synthfacs-reference")
                    transfer = gr.Button("Copy the reference's expression", variant="primary",
                                         elem_id="apply-transfer")
        with gr.Row():
            faces = gr.Image(label="Detected faces", type="pil", interactive=False, elem_id="faces",
                             buttons=local_buttons, visible=photo_editing)
            legend = region_legend(editor.region_names)
            parsing = gr.Image(label=f"Parsing regions ({legend})" if legend else "Parsing regions", type="pil",
                               interactive=False, elem_id="parsing", buttons=local_buttons)

        outputs = [result, faces, parsing, message]
        for name, button in buttons.items():
            button.click(expression_handler(name), inputs=[source, detect], outputs=outputs)
            button.click(prototype_sliders(name), inputs=None, outputs=sliders)
        apply_aus.click(guarded(lambda image, detect, *aus: edit_with_aus(editor, image, aus, bool(detect))),
                        inputs=[source, detect, *sliders], outputs=outputs)
        transfer.click(guarded(lambda image, ref, detect: transfer_from_reference(editor, image, ref, bool(detect))),
                       inputs=[source, reference, detect], outputs=outputs)
        synth.click(lambda seed: synthfacs_face(int(seed or 0)), inputs=identity, outputs=source)
        synth_ref.click(synthfacs_reference, inputs=identity, outputs=reference)
    return demo


def main(argv: list[str] | None = None) -> int:
    """``segexpr demo --ckpt PATH [--device cpu] [--host 127.0.0.1] [--port 7860] [--no-detect]``."""
    parser = argparse.ArgumentParser(prog="segexpr demo", description="Serve the expression-editing browser demo.")
    parser.add_argument("--ckpt", required=True, help="trained segexpr checkpoint (.ckpt)")
    parser.add_argument("--device", default="cpu", help="torch device for the editor (default: cpu)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, local only)")
    parser.add_argument("--port", type=int, default=7860, help="port to serve on (default: 7860)")
    parser.add_argument("--no-detect", action="store_true",
                        help="never detect faces: edit every upload as one aligned face")
    args = parser.parse_args(argv)

    from segexpr.inference.photo import load_photo_editor

    editor = load_photo_editor(args.ckpt, device=args.device)
    demo = build_demo(editor, photo_editing=not args.no_detect)
    demo.launch(server_name=args.host, server_port=args.port, share=False)
    return 0
