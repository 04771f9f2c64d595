"""Expression codes, the global generator and the hierarchical generator."""
import pytest
import torch

from segexpr.data.labels import NUM_AUS, NUM_CLASSES, REGION_LANDMARKS, REGION_NAMES, expression_prototype
from segexpr.models.generators import (
    ExpressionCoder,
    GeneratorOutput,
    GlobalGenerator,
    HierarchicalGenerator,
    LocalGenerator,
    create_generator,
)
from segexpr.ops.regions import soft_regions

CODE_DIM = 16
HEIGHT, WIDTH = 40, 56  # odd multiples on purpose: neither is a multiple of 16


def tiny_generator(region_source="segmenter", **kw):
    args = dict(region_source=region_source, base_channels=8, n_down=2, n_res=2, code_dim=CODE_DIM,
                local_channels=8, local_n_res=1, crop_size=16, feather_dilate=1, feather_blur=1)
    args.update(kw)
    return HierarchicalGenerator(**args)


def face_landmarks(batch=2, height=HEIGHT, width=WIDTH):
    """Landmarks with each region's points scattered around a plausible position."""
    centres = {"brows": (0.5, 0.3), "eyes": (0.5, 0.4), "nose": (0.5, 0.55), "mouth": (0.5, 0.75)}
    landmarks = torch.rand(batch, 68, 2) * 4 + torch.tensor([width / 2, height / 2])
    for region, (fx, fy) in centres.items():
        idx = list(REGION_LANDMARKS[region])
        jitter = (torch.rand(batch, len(idx), 2) - 0.5) * torch.tensor([width * 0.4, height * 0.1])
        landmarks[:, idx] = torch.tensor([fx * width, fy * height]) + jitter
    return landmarks


def region_logits(batch=2, height=HEIGHT, width=WIDTH):
    """Parsing logits with a blob per region, so every soft region mask has mass."""
    logits = torch.randn(batch, NUM_CLASSES, height, width) * 0.1
    from segexpr.data.labels import REGION_GROUPS
    rows = {"brows": (8, 12), "eyes": (14, 18), "nose": (19, 26), "mouth": (28, 33)}
    for region, (r0, r1) in rows.items():
        logits[:, REGION_GROUPS[region][0], r0:r1, 16:40] += 6
    return logits


# ---------------------------------------------------------------------------------------------- codes


def test_expression_coder_shapes_and_heads():
    coder = ExpressionCoder(code_dim=CODE_DIM, base_channels=8, n_down=3)
    from_label = coder(expression=torch.tensor([0, 1, 7]))
    from_aus = coder(aus=torch.rand(3, NUM_AUS))
    from_image = coder(reference=torch.rand(3, 3, 37, 23) * 2 - 1)
    assert from_label.shape == from_aus.shape == from_image.shape == (3, CODE_DIM)
    aus = coder.to_aus(from_image)
    assert aus.shape == (3, NUM_AUS) and aus.min() >= 0 and aus.max() <= 1
    assert coder.to_expression_logits(from_label).shape == (3, 8)
    assert coder.from_image(torch.rand(1, 3, 1, 1)).shape == (1, CODE_DIM)  # any size, even 1x1


def test_label_codes_start_at_their_prototype_aus():
    coder = ExpressionCoder(code_dim=CODE_DIM, base_channels=8)
    labels = torch.tensor([1, 3])
    prototypes = torch.stack([torch.from_numpy(expression_prototype(i)) for i in (1, 3)])
    torch.testing.assert_close(coder.from_label(labels), coder.from_aus(prototypes))
    assert not torch.allclose(coder.from_label(torch.tensor([1])), coder.from_label(torch.tensor([3])))


def test_expression_coder_rejects_bad_input():
    coder = ExpressionCoder(code_dim=CODE_DIM, base_channels=8)
    with pytest.raises(ValueError, match="exactly one"):
        coder()
    with pytest.raises(ValueError, match="exactly one"):
        coder(expression=torch.tensor([1]), aus=torch.rand(1, NUM_AUS))
    with pytest.raises(ValueError, match=r"aus \[B, 17\]"):
        coder(aus=torch.rand(2, 5))
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        coder(expression=torch.tensor([8]))
    with pytest.raises(ValueError, match="int64"):
        coder(expression=torch.tensor([1.0]))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        coder(reference=torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match="code"):
        coder.to_aus(torch.rand(2, CODE_DIM + 1))


# ---------------------------------------------------------------------------------------- global generator


def test_global_generator_odd_sizes_and_composition():
    generator = GlobalGenerator(base_channels=8, n_down=2, n_res=1, code_dim=CODE_DIM)
    image = torch.rand(2, 3, 37, 53) * 2 - 1
    out = generator(image, torch.randn(2, CODE_DIM))
    assert out.image.shape == out.color.shape == (2, 3, 37, 53)
    assert out.attention.shape == (2, 1, 37, 53)
    assert out.au_free.shape == (2, 32, 10, 14)  # ceil(37 / 4), ceil(53 / 4)
    assert out.color.abs().max() <= 1 and out.attention.min() >= 0 and out.attention.max() <= 1
    torch.testing.assert_close(out.image, out.attention * image + (1 - out.attention) * out.color)
    assert generator.au_free_channels == 32


def test_global_generator_transfer_by_decoding_another_au_free():
    generator = GlobalGenerator(base_channels=8, n_down=2, n_res=1, code_dim=CODE_DIM)
    au_free = generator.encode(torch.rand(1, 3, 24, 24))
    color, attention = generator.decode(au_free, torch.randn(1, CODE_DIM), (24, 24))
    assert color.shape == (1, 3, 24, 24) and attention.shape == (1, 1, 24, 24)
    with pytest.raises(ValueError, match="out_size"):
        generator.decode(au_free, torch.randn(1, CODE_DIM), (40, 24))
    with pytest.raises(ValueError, match="code"):
        generator.decode(au_free, torch.randn(2, CODE_DIM), (24, 24))


def test_global_generator_rejects_bad_input():
    generator = GlobalGenerator(base_channels=8, n_down=2, n_res=1, code_dim=CODE_DIM)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        generator.encode(torch.rand(1, 4, 16, 16))
    with pytest.raises(ValueError, match="too small"):
        generator.encode(torch.rand(1, 3, 4, 4))


def test_local_generator_shapes():
    color, attention = LocalGenerator(base_channels=8, n_res=1, code_dim=CODE_DIM)(
        torch.rand(5, 3, 16, 16) * 2 - 1, torch.randn(5, CODE_DIM))
    assert color.shape == (5, 3, 16, 16) and attention.shape == (5, 1, 16, 16)


# ---------------------------------------------------------------------------------- hierarchical generator


def _run(generator, batch=2, code=None):
    image = torch.rand(batch, 3, HEIGHT, WIDTH) * 2 - 1
    code = torch.randn(batch, CODE_DIM) if code is None else code
    masks = soft_regions(region_logits(batch))
    return image, generator(image, code, region_masks=masks, landmarks=face_landmarks(batch))


@pytest.mark.parametrize("region_source", ["segmenter", "landmarks", "none"])
def test_hierarchical_shapes_and_ranges(region_source):
    generator = tiny_generator(region_source)
    _, out = _run(generator)
    assert isinstance(out, GeneratorOutput)
    regions = 0 if region_source == "none" else len(REGION_NAMES)
    assert out.image.shape == out.global_image.shape == (2, 3, HEIGHT, WIDTH)
    assert out.attention.shape == (2, 1, HEIGHT, WIDTH)
    assert out.local_images.shape == (2, regions, 3, HEIGHT, WIDTH)
    assert out.local_attention.shape == out.fusion_masks.shape == (2, regions, 1, HEIGHT, WIDTH)
    assert out.local_crops.shape == (2, regions, 3, 16, 16)
    assert out.au_free.shape == (2, generator.au_free_channels, 10, 14)
    assert out.image.min() >= -1 and out.image.max() <= 1
    assert out.local_images.numel() == 0 or (out.local_images.abs().max() <= 1)
    for attention in (out.attention, out.local_attention):
        assert attention.numel() == 0 or (attention.min() >= 0 and attention.max() <= 1)
    if region_source == "none":
        assert out.boxes is None
        torch.testing.assert_close(out.image, out.global_image)
    else:
        assert out.boxes.shape == (2, len(REGION_NAMES), 4)
        assert out.fusion_masks.sum() > 0


@pytest.mark.parametrize("region_source", ["segmenter", "landmarks"])
def test_fusion_is_a_convex_combination(region_source):
    generator = tiny_generator(region_source, feather_dilate=4, feather_blur=2)  # large overlaps on purpose
    _, out = _run(generator)
    weights = out.fusion_masks
    assert weights.min() >= 0
    assert weights.sum(dim=1).max() <= 1 + 1e-5
    expected = (1 - weights.sum(1)) * out.global_image + (weights * out.local_images).sum(1)
    torch.testing.assert_close(out.image, expected)
    far = weights.sum(dim=(1, 2)) == 0  # pixels no region touches keep the global result
    assert far.any()
    assert torch.equal(out.image.permute(1, 0, 2, 3)[:, far], out.global_image.permute(1, 0, 2, 3)[:, far])


@pytest.mark.parametrize("region_source", ["segmenter", "landmarks", "none"])
def test_code_changes_output(region_source):
    generator = tiny_generator(region_source)
    image = torch.rand(1, 3, HEIGHT, WIDTH) * 2 - 1
    masks, landmarks = soft_regions(region_logits(1)), face_landmarks(1)
    first = generator(image, torch.randn(1, CODE_DIM), masks, landmarks)
    second = generator(image, torch.randn(1, CODE_DIM), masks, landmarks)
    assert (first.image - second.image).abs().max() > 1e-4
    torch.testing.assert_close(first.au_free, second.au_free)  # the AU-free feature ignores the target
    if region_source != "none":
        assert (first.local_crops - second.local_crops).abs().max() > 1e-4


def test_segmenter_mode_gradient_reaches_logits_through_boxes_and_fusion():
    generator = tiny_generator("segmenter")
    logits = region_logits(1).requires_grad_(True)
    out = generator(torch.rand(1, 3, HEIGHT, WIDTH) * 2 - 1, torch.randn(1, CODE_DIM), soft_regions(logits))
    out.image.mean().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0 and torch.isfinite(logits.grad).all()
    # The crop geometry alone also carries gradient (boxes come from mask moments).
    logits.grad = None
    out = generator(torch.rand(1, 3, HEIGHT, WIDTH) * 2 - 1, torch.randn(1, CODE_DIM), soft_regions(logits))
    out.boxes.sum().backward()
    assert logits.grad.abs().sum() > 0


def test_segmenter_mode_empty_region_stays_finite():
    generator = tiny_generator("segmenter")
    masks = soft_regions(region_logits(1))
    masks[:, REGION_NAMES.index("nose")] = 0  # region absent from the parse
    masks.requires_grad_(True)
    out = generator(torch.rand(1, 3, HEIGHT, WIDTH) * 2 - 1, torch.randn(1, CODE_DIM), masks)
    assert torch.isfinite(out.image).all() and torch.isfinite(out.boxes).all()
    out.image.sum().backward()
    assert torch.isfinite(masks.grad).all()


def test_landmarks_mode_boxes_follow_landmarks():
    generator = tiny_generator("landmarks")
    image, code = torch.rand(1, 3, HEIGHT, WIDTH) * 2 - 1, torch.randn(1, CODE_DIM)
    landmarks = face_landmarks(1)
    moved = landmarks.clone()
    mouth = list(REGION_LANDMARKS["mouth"])
    moved[:, mouth, 1] += 3.0  # mouth 3 px down
    before, after = generator(image, code, landmarks=landmarks), generator(image, code, landmarks=moved)
    shift = after.boxes - before.boxes
    mouth_index = REGION_NAMES.index("mouth")
    torch.testing.assert_close(shift[0, mouth_index], torch.tensor([0.0, 6.0 / HEIGHT, 0.0, 0.0]))
    others = [i for i in range(len(REGION_NAMES)) if i != mouth_index]
    assert shift[0, others].abs().max() == 0
    assert not torch.allclose(after.image, before.image)


def test_missing_or_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="region_source"):
        tiny_generator("keypoints")
    image, code = torch.rand(1, 3, 32, 32), torch.randn(1, CODE_DIM)
    with pytest.raises(ValueError, match="region_masks"):
        tiny_generator("segmenter")(image, code)
    with pytest.raises(ValueError, match="landmarks"):
        tiny_generator("landmarks")(image, code)
    with pytest.raises(ValueError, match="region_masks must be"):
        tiny_generator("segmenter")(image, code, region_masks=torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="code"):
        tiny_generator("none")(image, torch.randn(1, CODE_DIM + 2))
    with pytest.raises(ValueError, match="landmarks must be"):
        tiny_generator("landmarks")(image, code, landmarks=torch.rand(1, 5, 2))


def test_encode_and_factory():
    generator = create_generator("hierarchical", base_channels=8, n_res=1, code_dim=CODE_DIM, local_channels=8,
                                 local_n_res=1, crop_size=16)
    assert isinstance(generator, HierarchicalGenerator) and set(generator.local_generators) == set(REGION_NAMES)
    au_free = generator.encode(torch.rand(2, 3, 33, 35))
    assert au_free.shape == (2, generator.au_free_channels, 9, 9)
    global_only = create_generator("global", base_channels=8, n_res=1, code_dim=CODE_DIM)
    assert global_only.region_source == "none" and len(global_only.local_generators) == 0
    with pytest.raises(ValueError, match="unknown generator"):
        create_generator("stargan")


@pytest.mark.parametrize("region_source", ["segmenter", "landmarks"])
def test_residual_paste_leaves_unchanged_crops_exact(region_source):
    """Local generators that keep their whole crop (attention 1) leave the global image exactly as it was with
    paste="residual"; paste="resample" blurs the regions by the crop's down- and up-sampling."""
    torch.manual_seed(0)
    errors = {}
    for mode in ("residual", "resample"):
        generator = tiny_generator(region_source, paste=mode)
        with torch.no_grad():
            for local in generator.local_generators.values():
                local.net.attention_head.weight.zero_()
                local.net.attention_head.bias.fill_(100.0)  # sigmoid -> 1: keep the crop
        torch.manual_seed(1)
        _, out = _run(generator)
        errors[mode] = float((out.image - out.global_image).abs().max())
    assert errors["residual"] == 0.0
    assert errors["resample"] > 1e-3, errors


def test_unknown_paste_mode_is_rejected():
    with pytest.raises(ValueError, match="paste must be one of"):
        tiny_generator(paste="overwrite")


# ----------------------------------------------------------------------------------------------- fast paths
def plain_decode(g: GlobalGenerator, au_free, code, out_size):
    """``GlobalGenerator.decode`` as its modules read (nearest upsample, then the 3x3 conv block; two heads)."""
    h = au_free
    for block in g.bottleneck:
        h = block(h, code)
    h = g.decoder(h)
    height, width = out_size
    return (torch.tanh(g.color_head(h)[..., :height, :width]),
            torch.sigmoid(g.attention_head(h)[..., :height, :width]))


def test_decode_is_its_modules_run_plainly():
    torch.manual_seed(0)
    g = GlobalGenerator(3, 8, 2, 2, CODE_DIM).double()
    for p in g.parameters():  # away from the identity-ish initialisation, so every weight matters
        p.data.add_(torch.randn_like(p) * 0.1)
    image = torch.rand(2, 3, HEIGHT, WIDTH, dtype=torch.float64) * 2 - 1
    code = torch.randn(2, CODE_DIM, dtype=torch.float64)
    au_free = g.encode(image).detach()
    got, expected = g.decode(au_free, code, (HEIGHT, WIDTH)), plain_decode(g, au_free, code, (HEIGHT, WIDTH))
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    params = [p for name, p in g.named_parameters() if not name.startswith("encoder.")]  # what decode uses
    grads = [torch.autograd.grad(sum((t * w).sum() for t, w in zip(out, (1.0, -2.0))), params)
             for out in (got, expected)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("region_source", ["segmenter", "landmarks"])
def test_a_shared_region_layout_gives_the_same_passes_and_gradients(region_source):
    torch.manual_seed(0)
    g = tiny_generator(region_source).double()
    image = torch.rand(2, 3, HEIGHT, WIDTH, dtype=torch.float64) * 2 - 1
    codes = [torch.randn(2, CODE_DIM, dtype=torch.float64) for _ in range(3)]
    logits = region_logits().double().requires_grad_()
    landmarks = face_landmarks().double()

    def passes(shared: bool):
        if region_source == "segmenter":
            kwargs = {"region_masks": soft_regions(logits)}
            leaf = logits
        else:
            kwargs = {"landmarks": landmarks}
            leaf = image.requires_grad_()
        if shared:
            kwargs["layout"] = g.region_layout((HEIGHT, WIDTH), **kwargs)
        images = [g(image, code, **kwargs).image for code in codes]
        return images, torch.autograd.grad(sum((i * (k + 1)).sum() for k, i in enumerate(images)), leaf)[0]

    (separate, grad_separate), (shared, grad_shared) = passes(False), passes(True)
    for a, b in zip(separate, shared):
        assert torch.equal(a, b)  # the same arithmetic, once
    torch.testing.assert_close(grad_shared, grad_separate, rtol=0, atol=1e-10)


def test_region_layout_errors_name_the_mismatch():
    g = tiny_generator()
    image = torch.rand(2, 3, HEIGHT, WIDTH) * 2 - 1
    masks = soft_regions(region_logits())
    layout = g.region_layout((HEIGHT, WIDTH), region_masks=masks)
    with pytest.raises(ValueError, match="layout does not fit"):
        g(image[:1], torch.zeros(1, CODE_DIM), region_masks=masks[:1], layout=layout)
    assert tiny_generator("none").region_layout((HEIGHT, WIDTH)) is None
    with pytest.raises(ValueError, match="region_source='none'"):
        tiny_generator("none")(image, torch.zeros(2, CODE_DIM), layout=layout)
