"""segexpr.gan.passes: generator passes batched into one call are the separate passes (values and gradients)."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

import segexpr.gan.objectives as objectives_module
from segexpr.data.synthetic import SyntheticFaces
from segexpr.gan.passes import Pass, generator_passes, repeat_region_inputs
from tiny import tiny_joint_module

SIZE = 32


@pytest.fixture(scope="module")
def batch():
    return next(iter(DataLoader(SyntheticFaces(size=SIZE, length=4, seed=0, pairs=True, identities=4), batch_size=4)))


def one_by_one(generator, passes, region_kwargs):
    return [generator(p.image, p.code, **region_kwargs, au_free=p.au_free) for p in passes]


def assert_same_terms_and_grads(got, expected, reached):
    """``(terms, grads)`` of two runs agree far below float32 rounding (float64 runs); some gradient reaches the
    parameters named ``reached...``."""
    (terms, grads), (plain_terms, plain_grads) = got, expected
    assert list(terms) == list(plain_terms)
    for key in terms:
        torch.testing.assert_close(terms[key], plain_terms[key], rtol=1e-9, atol=1e-9, msg=key)
    assert grads.keys() == plain_grads.keys() and any(n.startswith(reached) for n in grads)
    for key in grads:
        torch.testing.assert_close(grads[key], plain_grads[key], rtol=1e-7, atol=1e-8, msg=key)


def _grads(loss, tensors):
    return torch.autograd.grad(loss, tensors, allow_unused=True, retain_graph=True)  # shared inputs: both runs


def test_batched_passes_are_the_separate_passes(batch):
    # float64: the same function, so equal to far below float32's rounding
    torch.manual_seed(0)
    module = tiny_joint_module(SIZE, task="both").double()
    generator, images = module.generator, batch["image"].double()
    region_kwargs, _ = module._region_inputs(images, None, with_grad=True)  # masks and layout carry gradients
    codes = [torch.randn(4, generator.code_dim, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    au_free = generator.encode(images)
    params = [p for p in generator.parameters()] + [p for p in module.segmenter.parameters()] + codes
    results = {}
    for name, run in (("batched", generator_passes), ("separate", one_by_one)):
        first = run(generator, [Pass(images, code, au_free) for code in codes], region_kwargs)
        back = run(generator, [Pass(first[0].image, codes[1]), Pass(first[2].image, codes[1])], region_kwargs)
        outputs = first + back
        # a loss reading every output field, so every path's gradient is compared
        loss = sum((o.image * 1.3).sum() + o.local_images.mean() + o.fusion_masks.sum() + o.au_free.square().mean()
                   + o.local_crop_attention.sum() for o in outputs)
        results[name] = (outputs, _grads(loss, params))
    for got, expected in zip(results["batched"][0], results["separate"][0]):
        for field in ("image", "global_image", "attention", "local_images", "local_attention", "fusion_masks",
                      "boxes", "au_free", "local_crops", "local_crop_attention"):
            torch.testing.assert_close(getattr(got, field), getattr(expected, field), rtol=1e-9, atol=1e-9)
    for got, expected in zip(*(results[name][1] for name in ("batched", "separate"))):
        assert (got is None) == (expected is None)
        if got is not None:
            torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-8)


def test_generator_loss_batched_is_the_tasks_one_pass_at_a_time(batch, monkeypatch):
    # The whole generator objective, both tasks: the same terms and the same gradients as with every pass alone
    # (float64, so the comparison is far below float32's rounding).
    module = tiny_joint_module(SIZE, task="both").double()
    batch = {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in batch.items()}
    images = batch["image"]
    targets = module._sample_manipulation_targets(batch)
    results = {}
    for name, run in (("batched", generator_passes), ("separate", one_by_one)):
        monkeypatch.setattr(objectives_module, "generator_passes", run)
        module.zero_grad(set_to_none=True)
        region_kwargs, _ = module._region_inputs(images, None, with_grad=True)
        code_source = module.coder.from_image(images)
        parts = module.objectives.generator_loss(batch, ["manipulate", "transfer"], targets, region_kwargs,
                                                 code_source)
        sum(part.total for part in parts).backward()
        results[name] = ({k: v.detach() for part in parts for k, v in part.terms.items()},
                         {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None})
    assert_same_terms_and_grads(results["batched"], results["separate"], reached="segmenter.")


def test_single_tasks_are_generator_loss_with_one_task(batch):
    module = tiny_joint_module(SIZE, task="both").eval()
    images = batch["image"]
    targets = module._sample_manipulation_targets(batch)
    with torch.no_grad():
        region_kwargs, _ = module._region_inputs(images, None, with_grad=False)
        code_source = module.coder.from_image(images)
        both = module.objectives.generator_loss(batch, ["manipulate", "transfer"], targets, region_kwargs, code_source)
        alone = [module.objectives.manipulation_loss(batch, targets, region_kwargs, code_source),
                 module.objectives.transfer_loss(batch, region_kwargs, code_source)]
    for together, single in zip(both, alone):
        assert together.terms.keys() == single.terms.keys()
        for key in together.terms:
            torch.testing.assert_close(together.terms[key], single.terms[key], rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="unknown tasks"):
        module.objectives.generator_loss(batch, ["swap"], None, region_kwargs, code_source)
    with pytest.raises(ValueError, match="needs targets"):
        module.objectives.generator_loss(batch, ["manipulate"], None, region_kwargs, code_source)


def test_generator_passes_refuse_what_cannot_be_one_call(batch):
    module = tiny_joint_module(SIZE, task="both").eval()
    generator, images = module.generator, batch["image"]
    region_kwargs, _ = module._region_inputs(images, None, with_grad=False)
    code = torch.zeros(4, generator.code_dim)
    with torch.no_grad():
        au_free = generator.encode(images)
        with pytest.raises(ValueError, match="au_free for every pass or for none"):
            generator_passes(generator, [Pass(images, code, au_free), Pass(images, code)], region_kwargs)
        with pytest.raises(ValueError, match="same batch size"):
            generator_passes(generator, [Pass(images, code), Pass(images[:2], code[:2])], region_kwargs)
        assert generator_passes(generator, [], region_kwargs) == []
        out = generator(images, code, **region_kwargs)
    with pytest.raises(ValueError, match="do not add up"):
        out.split([2, 1])
    with pytest.raises(TypeError, match="region input 'layout'"):
        repeat_region_inputs({"layout": [1, 2]}, 2)


def _double(batch):
    return {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in batch.items()}


@pytest.mark.parametrize("adv_loss, global_calls", [("hinge", (3, 6)), ("wgan-gp", (5, 8))])
def test_critics_judge_concatenated_sets_as_they_judge_each_set(batch, monkeypatch, adv_loss, global_calls):
    # The discriminator step (real + two sets of fakes) and the generator step (edits and swaps judged together):
    # the same terms and gradients as with one critic call per set (float64).
    module = tiny_joint_module(SIZE, task="both", adv_loss=adv_loss).double()
    batch = _double(batch)
    images = batch["image"]
    targets = module._sample_manipulation_targets(batch)
    one_call_each = lambda self, critic, inputs: [critic(x) for x in inputs]  # noqa: E731
    results = {}
    for name in ("batched", "separate"):
        if name == "separate":
            monkeypatch.setattr(objectives_module.GANObjectives, "_critic_calls", one_call_each)
        calls = []
        hook = module.discriminator.global_d.register_forward_hook(lambda *args: calls.append(1))
        module.zero_grad(set_to_none=True)
        region_kwargs, _ = module._region_inputs(images, None, with_grad=True)
        parts = module.objectives.generator_loss(batch, ["manipulate", "transfer"], targets, region_kwargs,
                                                 module.coder.from_image(images))
        fakes = [part.fake.detach() for part in parts]
        torch.manual_seed(0)  # the gradient penalty's interpolation weights
        d = module.objectives.discriminator_loss(batch, fakes, parts[-1].boxes.detach())
        (sum(part.total for part in parts) + d.total).backward()
        hook.remove()
        terms = {k: v.detach() for part in parts for k, v in part.terms.items()}
        terms.update({f"d_{k}": v.detach() for k, v in d.terms.items()})
        results[name] = (terms, {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None},
                         len(calls))
    # generator step: edits + swaps in one call, the self-reconstruction's no-grad call; critic step: one call
    # (wgan-gp: and its gradient penalty's call per set of fakes, as before)
    assert (results["batched"][2], results["separate"][2]) == global_calls
    assert_same_terms_and_grads(results["batched"][:2], results["separate"][:2], reached="discriminator.local_d")


def test_critics_with_spectral_norm_are_called_once_per_set(batch):
    # spectral norm steps its power iteration once per call: batching would change how often, so it is not done
    module = tiny_joint_module(SIZE, task="both", adv_loss="hinge", discriminator={"base_channels": 8, "n_layers": 3,
                                                                 "local_channels": 8, "local_n_layers": 2,
                                                                 "feature_hidden": 16, "spectral_norm": True})
    calls = []
    module.discriminator.global_d.register_forward_hook(lambda *args: calls.append(1))
    images = batch["image"]
    with torch.no_grad():
        fakes = [images.flip(-1), images.flip(-2)]
        module.objectives.discriminator_loss(batch, fakes, None)
    assert len(calls) == 3
    with pytest.raises(TypeError, match="cannot split"):
        objectives_module._split_outputs([images], [2, 2])
