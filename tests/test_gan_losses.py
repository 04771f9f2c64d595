"""Each GAN-side loss on tiny inputs whose value can be checked by hand."""
import math

import pytest
import torch
import torch.nn.functional as F

from segexpr import losses
from segexpr.losses import gan


def test_exports_listed_in_all():
    for name in gan.__all__:
        assert hasattr(losses, name), name


def test_wgan_losses_by_hand():
    real = torch.tensor([1.0, 3.0])
    fake = torch.tensor([0.0, -2.0])
    assert gan.wgan_gp_d_loss(real, fake).item() == pytest.approx(-1.0 - 2.0)  # mean(fake) - mean(real)
    assert gan.wgan_g_loss(fake).item() == pytest.approx(1.0)


def test_hinge_losses_by_hand():
    real = torch.tensor([2.0, 0.5])   # relu(1 - r) = [0, 0.5]
    fake = torch.tensor([-2.0, 0.0])  # relu(1 + f) = [0, 1]
    assert gan.hinge_d_loss(real, fake).item() == pytest.approx(0.25 + 0.5)
    assert gan.hinge_g_loss(fake).item() == pytest.approx(1.0)


def test_nonsaturating_losses_by_hand():
    real = torch.tensor([0.0])
    fake = torch.tensor([0.0])
    assert gan.nonsaturating_d_loss(real, fake).item() == pytest.approx(2 * math.log(2))
    assert gan.nonsaturating_g_loss(torch.tensor([math.log(3.0)])).item() == pytest.approx(-math.log(0.75))
    # equals BCE with logits
    r, f = torch.randn(5), torch.randn(5)
    expected = F.binary_cross_entropy_with_logits(r, torch.ones(5)) + F.binary_cross_entropy_with_logits(f, torch.zeros(5))
    assert gan.nonsaturating_d_loss(r, f).item() == pytest.approx(expected.item(), rel=1e-5)


def test_dispatchers_and_unknown_kind():
    real, fake = torch.randn(4, 1, 3, 3), torch.randn(4, 1, 3, 3)
    assert gan.adversarial_d_loss("hinge", real, fake) == gan.hinge_d_loss(real, fake)
    assert gan.adversarial_d_loss("wgan-gp", real, fake) == gan.wgan_gp_d_loss(real, fake)
    assert gan.adversarial_d_loss("nonsaturating", real, fake) == gan.nonsaturating_d_loss(real, fake)
    assert gan.adversarial_g_loss("nonsaturating", fake) == gan.nonsaturating_g_loss(fake)
    with pytest.raises(ValueError, match="unknown adversarial loss 'lsgan'"):
        gan.adversarial_d_loss("lsgan", real, fake)
    with pytest.raises(ValueError, match="unknown adversarial loss"):
        gan.adversarial_g_loss("wgan", fake)


@pytest.mark.parametrize("norm", [0.5, 1.0, 3.0])
def test_gradient_penalty_is_analytic_on_linear_critic(norm):
    w = torch.randn(2 * 3 * 3)
    w = w / w.norm() * norm
    critic = lambda x: x.flatten(1) @ w  # D(x) = <w, x>, so grad_x D = w everywhere
    real, fake = torch.randn(4, 2, 3, 3), torch.randn(4, 2, 3, 3)
    penalty = gan.gradient_penalty(critic, real, fake, weight=10.0)
    assert penalty.item() == pytest.approx(10.0 * (norm - 1.0) ** 2, rel=1e-5, abs=1e-6)


def test_gradient_penalty_backpropagates_into_critic_and_accepts_dict():
    critic = torch.nn.Linear(6, 1)
    with torch.no_grad():
        critic.weight.fill_(1.0)  # ||w|| = sqrt(6) != 1, so the penalty has a gradient
    fn = lambda x: {"adv": critic(x)}
    penalty = gan.gradient_penalty(fn, torch.randn(3, 6), torch.randn(3, 6), weight=1.0)
    assert penalty.item() == pytest.approx((math.sqrt(6) - 1) ** 2, rel=1e-5)
    penalty.backward()
    # d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w||
    expected = 2 * (math.sqrt(6) - 1) / math.sqrt(6)
    assert torch.allclose(critic.weight.grad, torch.full((1, 6), expected), atol=1e-5)


def test_gradient_penalty_under_autocast():
    critic = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.LeakyReLU(0.2), torch.nn.Conv2d(4, 1, 3))
    real, fake = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        penalty = gan.gradient_penalty(critic, real, fake)
    assert penalty.dtype == torch.float32 and torch.isfinite(penalty)
    penalty.backward()
    assert critic[0].weight.grad is not None and critic[0].weight.grad.abs().sum() > 0


def test_gradient_penalty_shape_mismatch():
    with pytest.raises(ValueError, match="one shape"):
        gan.gradient_penalty(lambda x: x.sum(1), torch.zeros(2, 3), torch.zeros(3, 3))


def test_classification_and_regression_by_hand():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    labels = torch.tensor([1, 0])
    # -log(1/2) and -log(3/4)
    assert gan.expression_classification_loss(logits, labels).item() == pytest.approx((math.log(2) - math.log(0.75)) / 2)
    pred, target = torch.tensor([[0.5, 1.0]]), torch.tensor([[0.0, 0.0]])
    assert gan.au_regression_loss(pred, target).item() == pytest.approx((0.25 + 1.0) / 2)
    assert gan.au_regression_loss(pred, target, kind="l1").item() == pytest.approx(0.75)
    with pytest.raises(ValueError, match="unknown AU regression loss"):
        gan.au_regression_loss(pred, target, kind="huber")
    with pytest.raises(ValueError, match="differ in shape"):
        gan.au_regression_loss(pred, torch.zeros(1, 3))


def test_reconstruction_losses_by_hand():
    x = torch.zeros(1, 3, 2, 2)
    y = torch.zeros(1, 3, 2, 2)
    y[0, :, 0, 0] = 1.0  # 3 of 12 values off by 1
    assert gan.cycle_loss(y, x).item() == pytest.approx(0.25)
    assert gan.self_reconstruction_loss(y, x).item() == pytest.approx(0.25)
    weight = torch.zeros(1, 1, 2, 2)
    weight[0, 0, 0, 0] = 1.0  # only the wrong pixel counts
    assert gan.self_reconstruction_loss(y, x, weight).item() == pytest.approx(1.0)


def test_statistics_matching_by_hand_and_detach():
    swapped = torch.tensor([[1.0], [3.0]], requires_grad=True)  # mean 2, std 1
    anchor = torch.tensor([[0.0], [0.0]], requires_grad=True)  # mean 0, std 0
    loss = gan.statistics_matching_loss(swapped, anchor)
    assert loss.item() == pytest.approx(2.0 + 1.0)
    loss.backward()
    assert swapped.grad is not None and anchor.grad is None  # the self-reconstruction side is the fixed target
    # identical distributions in a different order -> zero
    a = torch.randn(6, 4)
    assert gan.statistics_matching_loss({"x": a[torch.randperm(6)]}, {"x": a}).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="structure"):
        gan.statistics_matching_loss([a, a], [a])


def test_swap_consistency_combines_matching_and_swap_back_cycle():
    original = torch.zeros(2, 3, 2, 2)
    swap_back = torch.full((2, 3, 2, 2), 0.5)
    outputs = {"adv": torch.randn(2, 1, 2, 2), "aus": torch.rand(2, 17)}
    # identical outputs -> only the cycle term remains
    loss = gan.swap_consistency_loss(outputs, outputs, swap_back, original, cycle_weight=2.0)
    assert loss.item() == pytest.approx(2.0 * 0.5)
    shifted = {k: v + 1.0 for k, v in outputs.items()}  # means differ by 1, stds equal
    loss = gan.swap_consistency_loss(shifted, outputs, original, original)
    assert loss.item() == pytest.approx(1.0, rel=1e-5)


def test_attention_regularization_by_hand():
    attention = torch.zeros(2, 1, 2, 2)
    attention[0, 0, 0, 0] = 1.0  # mean = 1/8; TV of sample 0 = 2 (one step down, one right), sample 1 = 0
    assert gan.total_variation(attention).item() == pytest.approx(1.0)
    value = gan.attention_regularization(attention, mean_weight=0.1, tv_weight=1e-5)
    assert value.item() == pytest.approx(0.1 / 8 + 1e-5 * 1.0)
    assert gan.attention_regularization(torch.zeros(1, 1, 4, 4)).item() == 0.0


def test_multiclass_adversarial_losses():
    pred = {"expression": torch.zeros(2, 8), "aus": torch.full((2, 17), 0.5)}
    labels, aus = torch.tensor([0, 3]), torch.zeros(2, 17)
    value = gan.multiclass_adversarial_classifier_loss(pred, labels, aus)
    assert value.item() == pytest.approx(math.log(8) + 0.25)
    assert gan.multiclass_adversarial_classifier_loss(pred, expression=labels).item() == pytest.approx(math.log(8))
    with pytest.raises(ValueError, match="needs expression labels"):
        gan.multiclass_adversarial_classifier_loss(pred)
    # uniform logits and constant AUs are already uninformative -> encoder loss 0
    assert gan.multiclass_adversarial_encoder_loss(pred).item() == pytest.approx(0.0, abs=1e-6)
    assert gan.multiclass_adversarial_encoder_loss(pred, au_target=0.5).item() == pytest.approx(0.0, abs=1e-6)
    # a confident prediction costs KL(U || p) > 0; varying AUs cost their variance about the batch mean
    confident = {"expression": torch.tensor([[10.0, 0.0]]), "aus": torch.tensor([[0.0], [1.0]])}
    p = torch.softmax(torch.tensor([10.0, 0.0]), 0)
    kl = (0.5 * (torch.log(torch.tensor(0.5)) - p.log())).sum().item()
    assert gan.multiclass_adversarial_encoder_loss(confident).item() == pytest.approx(kl + 0.25, rel=1e-5)
    with pytest.raises(ValueError, match="au_target"):
        gan.multiclass_adversarial_encoder_loss(pred, au_target="median")
