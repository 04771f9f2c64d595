"""Every benchmark script's default output is a file the script owns (never a hand-written page), and a script that
writes files has --overwrite (its existing outputs are refused without it; see test_ablation / test_rehearsal)."""
from __future__ import annotations

import argparse
import re
import subprocess
from pathlib import Path

import pytest

from benchmark_scripts import BENCHMARKS, load_benchmark

SCRIPTS = sorted(p.stem for p in BENCHMARKS.glob("*.py"))
#: Calls that write a file: a script that makes one must say where (--out) and guard it (--overwrite).
WRITES = re.compile(r"\.write_text\(|\.write_bytes\(|savefig\(|torch\.save\(|save_checkpoint\(|open\([^)]*['\"]w")


def _tracked(path: Path) -> bool:
    root = BENCHMARKS.parents[1]
    listed = subprocess.run(["git", "ls-files", "--error-unmatch", str(path)], cwd=root, capture_output=True)
    return listed.returncode == 0


def test_the_benchmarks_are_found():
    assert {"synthfacs_ablation", "real_layout_rehearsal", "step_time"} <= set(SCRIPTS)


class _Defaults(Exception):
    """Raised in place of parsing: carries the parser's defaults (and stops the script before any work)."""

    def __init__(self, values: dict) -> None:
        super().__init__("defaults")
        self.values = values


def script_defaults(name: str, monkeypatch) -> dict:
    """``dest -> default`` of the script's command-line options, read from the parser its entry point builds."""
    module = load_benchmark(name)

    def capture(parser, *args, **kwargs):
        raise _Defaults({action.dest: action.default for action in parser._actions})

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", capture)
    with pytest.raises(_Defaults) as caught:
        (getattr(module, "parse_args", None) or module.main)([])
    return caught.value.values


@pytest.mark.parametrize("name", SCRIPTS)
def test_default_output_is_a_file_the_script_owns(name, monkeypatch):
    source = (BENCHMARKS / f"{name}.py").read_text()
    options = {"--out", "--out-dir"} & set(re.findall(r"add_argument\(\s*\"(--out(?:-dir)?)\"", source))
    if not WRITES.search(source) and not options:
        return  # prints only
    assert options, f"{name}.py writes files without an --out / --out-dir option"
    assert '"--overwrite"' in source, f"{name}.py writes files without an --overwrite option"
    defaults = script_defaults(name, monkeypatch)
    if "--out" in options:
        out = Path(defaults["out"])  # its own page in docs/results/ (relative, or the checkout's)
        assert out.parts[-3:] == ("docs", "results", f"{name}.md"), out
        assert not _tracked(out), f"{out} is tracked: a page someone may have written by hand"
    if "--out-dir" in options:
        assert Path(defaults["out_dir"]).parts[-2:] == ("docs", "results"), defaults["out_dir"]  # files named
        # after the script there


def test_loop_overhead_refuses_an_existing_table_before_any_work(tmp_path):
    """The loop-overhead benchmark never replaces its --out without --overwrite, and says so before building
    or training anything."""
    page = tmp_path / "loop_overhead.md"
    page.write_text("an earlier run's table")
    with pytest.raises(SystemExit, match=r"loop_overhead\.md.*--overwrite"):
        load_benchmark("loop_overhead").main(["--out", str(page)])
    assert page.read_text() == "an earlier run's table"


def test_step_rewrites_switches_each_rewrite_off_and_back(tmp_path):
    import torch

    import segexpr.gan.objectives as objectives
    import segexpr.gan.stepping as stepping
    import segexpr.models.generators.batched as batched
    import segexpr.models.generators.global_generator as global_generator
    from segexpr.modules.joint import JointModule
    from tiny import tiny_joint_module

    script = load_benchmark("step_rewrites")
    page = tmp_path / "step_rewrites.md"
    page.write_text("kept\n")
    with pytest.raises(SystemExit, match=r"step_rewrites\.md.*--overwrite"):
        script.main(["--out", str(page)])
    assert page.read_text() == "kept\n"
    with pytest.raises(ValueError, match="unknown rewrites"):
        with script.rewrites_off({"decoder", "bogus"}):
            pass
    module = tiny_joint_module(32, task="both")
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    on = module._region_inputs(images, None, with_grad=False)[0]
    fast, heads = global_generator.upsample_conv3x3, global_generator.conv2d_channels_last
    lookup, passes, critics = batched._stacked_tensors, objectives.generator_passes, objectives.GANObjectives._critic_calls
    with script.rewrites_off(set(script.REWRITES)):
        assert objectives.generator_passes is script.one_pass_per_call
        assert objectives.GANObjectives._critic_calls is script.one_critic_call_each
        assert global_generator.upsample_conv3x3 is script.plain_upsample_conv3x3
        assert global_generator.conv2d_channels_last is script.plain_conv2d
        assert batched._stacked_tensors is script.per_name_lookup
        assert "layout" not in module._region_inputs(images, None, with_grad=False)[0]
        assert not stepping.adam([torch.zeros(2, requires_grad=True)], lr=0.1).defaults["fused"]
    assert global_generator.upsample_conv3x3 is fast and "layout" in on
    assert global_generator.conv2d_channels_last is heads and batched._stacked_tensors is lookup
    assert objectives.generator_passes is passes and objectives.GANObjectives._critic_calls is critics
    # the plain lookup gathers the same stacks
    networks = [module.generator.local_generators[name] for name in module.generator.regions]
    for kind in ("named_parameters", "named_buffers"):
        fast_stacks, plain_stacks = lookup(networks, kind), script.per_name_lookup(networks, kind)
        assert list(fast_stacks) == list(plain_stacks)
        assert all(torch.equal(fast_stacks[k], plain_stacks[k]) for k in fast_stacks)
    assert "layout" in module._region_inputs(images, None, with_grad=False)[0]
    assert stepping.adam([torch.zeros(2, requires_grad=True)], lr=0.1).defaults["fused"]
    assert JointModule._region_inputs.__name__ == "_region_inputs"
    assert list(script.variants(["heads off", "all on"])) == ["all on", "heads off"]
    with pytest.raises(ValueError, match="unknown variants"):
        script.variants(["all on", "heads of"])
    with pytest.raises(SystemExit):  # every figure is read against "all on"
        script.main(["--out", str(tmp_path / "new.md"), "--variants", "heads off"])
    assert not (tmp_path / "new.md").exists()
