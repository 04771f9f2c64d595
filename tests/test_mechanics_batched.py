"""The regions' local generators and critics run as one batched call, equal to the loop over regions."""
from __future__ import annotations

import torch

from segexpr.gan.objectives import GANObjectives, LossWeights
from segexpr.gan.targets import DRAW_GP
from segexpr.losses.gan import adversarial_d_loss, gradient_penalty
from segexpr.models.discriminators import AUDiscriminator
from segexpr.models.generators import HierarchicalGenerator
from segexpr.models.generators.batched import can_stack

SIZE = 32


def _generator(**kwargs):
    return HierarchicalGenerator(base_channels=8, n_res=1, local_channels=8, local_n_res=1, crop_size=16, code_dim=16,
                                 **kwargs)


def test_batched_local_generators_equal_the_loop():
    torch.manual_seed(0)
    generator = _generator()
    image = torch.rand(3, 3, SIZE, SIZE) * 2 - 1
    code = torch.randn(3, 16)
    masks = torch.rand(3, 4, SIZE, SIZE).requires_grad_(True)
    results = []
    for batched in (True, False):
        generator.batch_regions = batched
        generator.zero_grad()
        masks.grad = None
        out = generator(image, code, region_masks=masks)
        (out.image * torch.linspace(-1, 1, SIZE)).sum().backward()
        grads = [p.grad.clone() for p in generator.local_generators.parameters()]
        results.append((out.local_crops.detach(), out.image.detach(), grads, masks.grad.clone()))
    (crops_b, image_b, grads_b, mask_grad_b), (crops_l, image_l, grads_l, mask_grad_l) = results
    torch.testing.assert_close(crops_b, crops_l, atol=1e-5, rtol=0)
    torch.testing.assert_close(image_b, image_l, atol=1e-5, rtol=0)
    for a, b in zip(grads_b, grads_l):  # each region's own parameters get their own gradients
        torch.testing.assert_close(a, b, atol=1e-5 * float(b.abs().max().clamp_min(1)) * 10, rtol=1e-3)
    torch.testing.assert_close(mask_grad_b, mask_grad_l, atol=1e-5, rtol=1e-4)
    # the state-dict keys are those of the loop (per-region modules), so checkpoints load either way
    assert any(k.startswith("local_generators.mouth.") for k in generator.state_dict())


def test_batched_local_critics_equal_each_critic():
    torch.manual_seed(0)
    d = AUDiscriminator(image_size=SIZE, crop_size=16, base_channels=8, n_layers=3, local_channels=8,
                        local_n_layers=2, au_free_channels=32, feature_hidden=16)
    crops = torch.randn(2, 4, 3, 16, 16)
    batched = d.forward_local(crops)
    for index, region in enumerate(d.regions):
        own = d.local_d[region](crops[:, index])
        torch.testing.assert_close(batched[region]["adv"], own["adv"], atol=1e-5, rtol=0)
        torch.testing.assert_close(batched[region]["aus"], own["aus"], atol=1e-5, rtol=0)
    assert not can_stack([AUDiscriminator(spectral_norm=True, crop_size=16, n_layers=3).local_d[r].trunk
                          for r in d.regions])  # spectral norm falls back to the loop


def test_batched_discriminator_loss_equals_the_per_region_loss():
    torch.manual_seed(0)
    generator = _generator(region_source="landmarks")
    d = AUDiscriminator(image_size=SIZE, crop_size=16, base_channels=8, n_layers=3, local_channels=8,
                        local_n_layers=2, au_free_channels=generator.au_free_channels, feature_hidden=16)
    objectives = GANObjectives(generator, None, d, d.regions, LossWeights(), "wgan-gp", "mse")
    images, fake = torch.rand(2, 2, 3, SIZE, SIZE) * 2 - 1
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]]).expand(2, 4, 4) + 0.1 * torch.rand(2, 4, 4)
    alpha = lambda purpose: torch.rand(2, generator=torch.Generator().manual_seed(purpose))  # noqa: E731
    batch = {"image": images, "aus": torch.rand(2, 17)}
    terms = objectives.discriminator_loss(batch, [fake], boxes, alpha).terms
    # The per-region formula the batched call replaces.
    real_crops, fake_crops = objectives.local_crops(images, boxes), objectives.local_crops(fake, boxes)
    adv = gp = 0
    for index, region in enumerate(d.regions):
        critic = d.local_d[region]
        adv = adv + adversarial_d_loss("wgan-gp", critic(real_crops[:, index])["adv"], critic(fake_crops[:, index])["adv"]) / 4
        gp = gp + gradient_penalty(critic, real_crops[:, index], fake_crops[:, index], 1.0,
                                   alpha(DRAW_GP + 10 * (index + 1))) / 4
    torch.testing.assert_close(terms["local_adv"], adv, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(terms["local_gp"], gp, atol=1e-5, rtol=1e-5)
