"""Global / local critics, the AU-free feature classifier and the AUDiscriminator container."""
import pytest
import torch
from torch import nn

from segexpr.data.labels import NUM_AUS, NUM_EXPRESSIONS, REGION_AUS, REGION_NAMES
from segexpr.models.discriminators import AUDiscriminator, FeatureClassifier, GlobalDiscriminator, LocalDiscriminator


def tiny_container(**kw):
    args = dict(image_size=32, au_free_channels=16, crop_size=16, base_channels=8, local_channels=8, n_layers=3,
                local_n_layers=2, feature_hidden=16)
    args.update(kw)
    return AUDiscriminator(**args)


def boxes(batch=2):
    return torch.tensor([[0.0, -0.4, 1.0, 0.4], [0.0, -0.1, 1.0, 0.4], [0.0, 0.2, 0.5, 0.5], [0.0, 0.5, 0.8, 0.4]]
                        ).expand(batch, 4, 4)


@pytest.mark.parametrize("size", [(32, 32), (40, 56)])
def test_global_discriminator_shapes(size):
    d = GlobalDiscriminator(image_size=32, base_channels=8, n_layers=3)
    out = d(torch.rand(2, 3, *size) * 2 - 1)
    assert out["adv"].shape == (2, 1, size[0] // 8, size[1] // 8)
    assert out["expression"].shape == (2, NUM_EXPRESSIONS)
    assert out["aus"].shape == (2, NUM_AUS) and out["aus"].min() >= 0 and out["aus"].max() <= 1
    assert d.features(torch.rand(2, 3, *size)).shape == (2, d.feature_channels) == (2, 32)


def test_local_discriminator_and_feature_classifier_shapes():
    out = LocalDiscriminator(num_aus=3, base_channels=8, n_layers=2)(torch.rand(6, 3, 16, 16))
    assert out["adv"].shape == (6, 1, 4, 4) and out["aus"].shape == (6, 3)
    features = FeatureClassifier(in_channels=16, hidden=16)(torch.randn(2, 16, 5, 7))
    assert features["expression"].shape == (2, NUM_EXPRESSIONS) and features["aus"].shape == (2, NUM_AUS)
    assert features["aus"].min() >= 0 and features["aus"].max() <= 1
    assert FeatureClassifier(in_channels=16, hidden=16)(torch.randn(1, 16, 1, 1))["aus"].shape == (1, NUM_AUS)


def test_au_discriminator_container():
    d = tiny_container()
    assert set(d.local_d) == set(REGION_NAMES)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    plain = d(images)
    assert plain["local"] == {} and plain["features"] is None and plain["global"]["adv"].shape == (2, 1, 4, 4)
    out = d(images, boxes(), au_free=torch.randn(2, 16, 8, 8))
    for region in REGION_NAMES:
        assert out["local"][region]["adv"].shape == (2, 1, 4, 4)
        assert out["local"][region]["aus"].shape == (2, len(REGION_AUS[region]))
    assert out["features"]["expression"].shape == (2, NUM_EXPRESSIONS)
    aus = torch.rand(2, NUM_AUS)
    targets = d.region_targets(aus)
    for region in REGION_NAMES:
        torch.testing.assert_close(targets[region], aus[:, list(REGION_AUS[region])])
    assert d.region_aus == {r: tuple(REGION_AUS[r]) for r in REGION_NAMES}


def test_local_critics_see_the_boxes():
    d = tiny_container()
    images = torch.rand(1, 3, 32, 32) * 2 - 1
    first = d(images, boxes(1))["local"]["mouth"]["adv"]
    moved = boxes(1).clone()
    moved[..., 3, 1] -= 0.5
    assert not torch.allclose(first, d(images, moved)["local"]["mouth"]["adv"])


@pytest.mark.parametrize("spectral_norm", [False, True])
def test_double_backward_for_gradient_penalty(spectral_norm):
    d = tiny_container(spectral_norm=spectral_norm)
    x = (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_(True)
    out = d(x, boxes())
    score = out["global"]["adv"].sum() + sum(o["adv"].sum() for o in out["local"].values())
    (grad,) = torch.autograd.grad(score, x, create_graph=True)
    penalty = ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
    penalty.backward()
    critics = list(d.global_d.trunk.parameters())
    critics += [p for local in d.local_d.values() for p in local.trunk.parameters()]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in critics)
    assert sum(p.grad.abs().sum() for p in critics) > 0


def test_no_batch_norm_anywhere():
    d = tiny_container()
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in d.modules())


def test_bad_inputs_raise_clear_errors():
    d = tiny_container()
    with pytest.raises(ValueError, match="too small"):
        d.global_d(torch.rand(1, 3, 4, 4))
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        d.global_d(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match="boxes"):
        d(torch.rand(1, 3, 32, 32), torch.zeros(1, 3, 4))
    with pytest.raises(ValueError, match="au_free"):
        d(torch.rand(1, 3, 32, 32), au_free=torch.randn(1, 8, 4, 4))
    with pytest.raises(ValueError, match="region_aus"):
        tiny_container(regions=("brows", "cheeks"))
    with pytest.raises(ValueError, match=r"region_aus\['brows'\]"):
        tiny_container(region_aus={**REGION_AUS, "brows": (99,)})
    with pytest.raises(ValueError, match="aus"):
        d.region_targets(torch.rand(2, 5))


def test_grid_heads_see_where_a_feature_fires_and_mean_pool_heads_do_not():
    """The same features in another place (same global mean) change a grid head's output, not a mean-pool's."""
    torch.manual_seed(0)
    for grid, moves in ((4, True), (1, False)):
        d = GlobalDiscriminator(image_size=32, base_channels=8, n_layers=3, head_grid=grid)
        features = torch.zeros(1, d.feature_channels, 4, 4)
        features[..., 0, 0] = 1.0  # a feature firing top-left ...
        moved = features.roll(shifts=(3, 3), dims=(2, 3))  # ... and the same feature bottom-right
        logits = [d.expression_head(d._pooled_grid(f)) for f in (features, moved)]
        assert (not torch.allclose(*logits, atol=1e-6)) == moves


def test_mean_pool_checkpoints_load_into_grid_heads_with_the_same_function():
    torch.manual_seed(0)
    old = GlobalDiscriminator(image_size=32, base_channels=8, n_layers=3, head_grid=1)
    new = GlobalDiscriminator(image_size=32, base_channels=8, n_layers=3, head_grid=4)
    assert new.expression_head.in_features == 16 * old.expression_head.in_features
    new.load_state_dict(old.state_dict())
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        a, b = old(x), new(x)
    for key in ("adv", "expression", "aus"):
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-5)
    # through the container, as a JointModule checkpoint holds it
    old_container, new_container = tiny_container(head_grid=1), tiny_container()
    new_container.load_state_dict(old_container.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(old_container.global_d(x)["expression"], new_container.global_d(x)["expression"],
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bad", [0, -2, 1.5, True])
def test_bad_head_grid_is_refused(bad):
    with pytest.raises(ValueError, match="head_grid"):
        GlobalDiscriminator(image_size=32, base_channels=8, n_layers=3, head_grid=bad)
