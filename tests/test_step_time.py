"""The step-time benchmark counts FLOPs with torch's formulas and runs end to end on a tiny setting.

Its timings are not asserted (they depend on the machine); its FLOP counts and its table are.
"""
from __future__ import annotations

import torch

from benchmark_scripts import BENCHMARKS, load_benchmark

ROOT = BENCHMARKS.parents[1]


def test_flop_count_matches_matmul_and_conv_formulas():
    step_time = load_benchmark("step_time")
    x = torch.randn(4, 8, requires_grad=True)
    weight = torch.randn(16, 8, requires_grad=True)
    with step_time.FlopCount() as counter:
        y = torch.nn.functional.linear(x, weight)
    assert counter.total == 2 * 4 * 8 * 16
    with step_time.FlopCount() as counter:
        y.sum().backward()  # grad wrt x and wrt weight: two matmuls of the same size
    assert counter.total == 2 * (2 * 4 * 8 * 16)

    image = torch.randn(2, 3, 10, 10)
    conv = torch.nn.Conv2d(3, 5, kernel_size=3, padding=1, bias=False)
    with torch.no_grad(), step_time.FlopCount() as counter:
        conv(image)
    assert counter.total == 2 * 2 * 5 * 10 * 10 * 3 * 3 * 3  # 2 * N * C_out * H * W * C_in * k * k


def test_step_time_tiny_run_reports_both_configs(capsys):
    torch.manual_seed(0)
    step_time = load_benchmark("step_time")
    results = step_time.main(["--scales", "default", "--configs", "global", "full", "--precisions", "fp32",
                              "--batch-size", "2", "--size", "32", "--iters", "1", "--warmup", "0", "--n-critic", "5"])
    out = capsys.readouterr().out
    assert set(results) == {("global", "fp32"), ("full", "fp32")}
    glob, full = results[("global", "fp32")], results[("full", "fp32")]
    for r in (glob, full):
        assert r["iter_ms"] > 0 and r["d_ms"] > 0 and r["gflops_per_s"] > 0
        # the generator step runs more than the discriminator step (G forward twice, critics on the fakes)
        assert r["gflop_g"] > r["gflop_d"] > 0
        assert abs(r["gflop_iter"] - (r["gflop_d"] + r["gflop_g"] / 5)) < 1e-6
        assert r["ops_g"] > r["ops_d"] > 0 and abs(r["ops_iter"] - (r["ops_d"] + r["ops_g"] / 5)) < 1e-6
        # the only host synchronisations left: the finiteness check before each optimiser step (D every batch,
        # G every 5th), as GradScaler's; EMA updates, OHEM and target sampling read nothing from the device
        assert abs(r["host_syncs_iter"] - (1 + 1 / 5)) < 1e-6, r["host_syncs_iter"]
    # the full model adds a segmenter, local generators and local critics to the same global networks
    assert full["params_m"] > glob["params_m"]
    assert full["gflop_d"] > glob["gflop_d"] and full["gflop_g"] > glob["gflop_g"]
    assert full["ops_iter"] > glob["ops_iter"]  # more networks dispatch more ops
    assert "vs global" in out and "1.00x" in out and "ops/it" in out


def test_step_time_main_job_scale_is_the_main_jobs_yaml():
    """The ``main`` scale is what examples/configs/synthetic.yaml trains: read here independently and compared
    whole, so a scale copied into the script (as it once was, timing n_critic 2 while the YAML trained 1) fails."""
    import yaml

    step_time = load_benchmark("step_time")
    config = yaml.safe_load((ROOT / "examples" / "configs" / "synthetic.yaml").read_text())
    model, data = config["model"]["init_args"], config["data"]["init_args"]
    expected = (model["image_size"], data["batch_size"], model["n_critic"], model["adv_loss"],
                {name: model[name] for name in ("segmenter", "generator", "coder", "discriminator")})
    assert step_time.SCALES["main"] == expected
    assert step_time.MAIN_JOB == expected[-1]
    assert step_time.MAIN_JOB_CONFIG == {"both": "full-both", "manipulate": "full"}[model["task"]]
    size, batch, n_critic, adv_loss, networks = step_time.SCALES["main"]
    module = step_time.build(step_time.MAIN_JOB_CONFIG, size, networks, adv_loss)
    assert module.hparams.task == model["task"] and module.hparams.adv_loss == model["adv_loss"]
    assert module.hparams.region_source == model["region_source"] and module.image_size == model["image_size"]
    for name in ("generator", "coder", "discriminator"):
        assert {k: module.hparams[name][k] for k in model[name]} == model[name], name
    assert {k: module.hparams.segmenter[k] for k in model["segmenter"]} == model["segmenter"]


def test_main_job_scale_follows_its_yaml_and_names_what_is_missing(tmp_path):
    import pytest
    import yaml

    step_time = load_benchmark("step_time")
    config = yaml.safe_load(step_time.MAIN_JOB_YAML.read_text())
    config["model"]["init_args"].update(n_critic=3, task="manipulate", image_size=32)
    config["model"]["init_args"]["generator"]["crop_size"] = 8
    config["data"]["init_args"].update(batch_size=2, size=32)
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(config))
    (size, batch, n_critic, _, networks), name = step_time.main_job_scale(changed)
    assert (size, batch, n_critic, name, networks["generator"]["crop_size"]) == (32, 2, 3, "full", 8)
    del config["model"]["init_args"]["coder"]
    changed.write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match="'coder'"):
        step_time.main_job_scale(changed)


def test_host_synchronisations_are_counted():
    step_time = load_benchmark("step_time")
    x = torch.randn(6)
    with step_time.FlopCount() as counter:
        x.sum().item()       # a scalar read
        x[x > 0]             # a data-dependent shape
        torch.nonzero(x)
        x * 2                # no synchronisation
    assert counter.host_syncs == 3


def test_network_overrides_reach_the_built_model_and_bad_ones_are_named(capsys):
    import pytest

    step_time = load_benchmark("step_time")
    overrides = step_time.parse_overrides(["generator.crop_size=24",
                                           "generator.regions=[brows,eyes,nose,mouth]"])
    assert overrides == {"generator": {"crop_size": 24, "regions": ["brows", "eyes", "nose", "mouth"]}}
    size, _, _, adv_loss, networks = step_time.SCALES["main"]
    merged = step_time.with_overrides(networks, overrides)
    assert networks["generator"]["crop_size"] == 16  # the scale's own configs are not modified
    module = step_time.build("full", size, merged, adv_loss)
    assert module.generator.crop_size == 24 and module.generator.num_regions == 4
    assert module.hparams.generator["base_channels"] == 16  # the rest of the main job's widths stay
    assert step_time.with_overrides(None, {}) is None
    assert step_time.with_overrides(None, {"segmenter": {"backbone_width": 8}})["segmenter"] == {
        "name": "bisenet", "backbone_width": 8}
    for bad in ("crop_size=16", "generator.crop_size", "critic.n_layers=2", "generator.=3"):
        with pytest.raises(SystemExit):
            step_time.main(["--set", bad])
        assert "--set expects NET.KEY=VALUE" in capsys.readouterr().err


def test_kernel_count_reads_gpu_work_and_launch_calls_from_profiler_events():
    from types import SimpleNamespace

    step_time = load_benchmark("step_time")
    cpu, cuda = torch.autograd.DeviceType.CPU, torch.autograd.DeviceType.CUDA
    events = [SimpleNamespace(name="aten::convolution", device_type=cpu),
              SimpleNamespace(name="cudaLaunchKernel", device_type=cpu),
              SimpleNamespace(name="triton_poi_fused_relu_0", device_type=cuda),
              SimpleNamespace(name="cudaGraphLaunch", device_type=cpu),
              SimpleNamespace(name="Memcpy DtoD (Device -> Device)", device_type=cuda),
              SimpleNamespace(name="sm90_xmma_fprop_implicit_gemm", device_type=cuda)]
    assert step_time.count_kernels(events) == (3, 2)
    # on a CPU the profiler sees no device work
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        torch.randn(8, 8).relu()
    assert step_time.count_kernels(profiler.events()) == (0, 0)


def test_compile_options_reach_the_built_model(capsys):
    import pytest

    step_time = load_benchmark("step_time")
    module = step_time.build("global", 32, None, "hinge", "aot_eager", "max-autotune-no-cudagraphs")
    assert module.hparams.compile == "aot_eager"
    assert module.hparams.compile_mode == "max-autotune-no-cudagraphs"
    with pytest.raises(SystemExit):
        step_time.main(["--compile-mode", "reduce-overhead"])
    assert "--compile-mode needs --compile" in capsys.readouterr().err
