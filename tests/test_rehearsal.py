"""The real-layout rehearsal runs end to end on a tiny budget: export, train through the config's own
DataModule, reload the checkpoint, judge on held-out identities, write the table."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from benchmark_scripts import load_benchmark


def test_rehearsal_tiny_end_to_end(tmp_path):
    rehearsal = load_benchmark("real_layout_rehearsal")
    out = tmp_path / "rehearsal.md"
    result = rehearsal.main(["--tiny", "--batches", "2", "--configs", "affectnet_celebamask_hq", "celebamask_hq",
                             "--work-dir", str(tmp_path / "work"), "--out", str(out)])
    assert set(result["rows"]) == {"affectnet_celebamask_hq", "celebamask_hq"}
    for name, row in result["rows"].items():
        assert row["batches"] == 2 and row["finite"] and row["task"] == "both", name
        for key in ("edit_expression_accuracy", "edit_au_mae", "edit_unwanted_change", "transfer_au_mae",
                    "parsing_miou"):
            assert math.isfinite(row["metrics"][key]), (name, key)
        assert (tmp_path / "work" / f"{name}.ckpt").is_file()
    text = out.read_text()
    assert "python examples/benchmarks/real_layout_rehearsal.py --tiny" in text
    assert "| affectnet_celebamask_hq | both | 2 |" in text and "| no edit (source returned) |" in text
    assert "(the targets are for affectnet_celebamask_hq: 3000, celebamask_hq: 1500 batches; this run trained 2)" in text
    assert "affectnet_celebamask_hq: judged expression accuracy" in text and "target 90% of the main job's" in text
    assert "celebamask_hq: transfer AU error" in text
    records = json.loads(out.with_suffix(".json").read_text())["configs"]
    assert [r["config"] for r in records] == ["affectnet_celebamask_hq", "celebamask_hq"]
    fields = {"config", "batches", "expression_accuracy", "main_job_expression_accuracy", "au_error",
              "transfer_au_error", "no_edit_expression_accuracy", "no_edit_au_error", "no_edit_transfer_au_error",
              "parsing_miou_start", "parsing_miou_end", "seconds"}
    assert all(set(r) == fields for r in records)
    assert records[0]["expression_accuracy"] == result["rows"]["affectnet_celebamask_hq"]["metrics"][
        "edit_expression_accuracy"]


def test_rehearsal_widths_are_the_main_jobs_and_the_recipe_the_configs():
    rehearsal = load_benchmark("real_layout_rehearsal")
    main = yaml.safe_load(rehearsal.MAIN_JOB.read_text())["model"]["init_args"]
    for config in rehearsal.RECIPES:
        own = yaml.safe_load((rehearsal.CONFIGS / f"{config}.yaml").read_text())["model"]["init_args"]
        widths = rehearsal.main_job_widths(rehearsal.CONFIGS / f"{config}.yaml")
        assert widths["generator"]["base_channels"] == main["generator"]["base_channels"]
        assert widths["generator"]["crop_size"] == main["generator"]["crop_size"]
        assert widths["discriminator"]["base_channels"] == main["discriminator"]["base_channels"]
        for key in ("regions", "box_scale"):
            if key in own["generator"]:
                assert widths["generator"][key] == own["generator"][key], (config, key)


def test_rehearsal_never_replaces_existing_outputs_without_overwrite(tmp_path):
    rehearsal = load_benchmark("real_layout_rehearsal")
    assert rehearsal.parse_args([]).out == Path("docs/results/real_layout_rehearsal.md")
    page = tmp_path / "results_rehearsal.md"
    page.write_text("hand-written reading")
    work = tmp_path / "work"
    with pytest.raises(SystemExit, match="results_rehearsal.md.*--overwrite"):
        rehearsal.main(["--tiny", "--batches", "2", "--configs", "celebamask_hq", "--work-dir", str(work),
                        "--out", str(page)])
    assert page.read_text() == "hand-written reading" and not work.exists()  # refused before any work


def test_rehearsal_set_changes_a_config_value_and_is_checked(tmp_path):
    """``--set KEY=VALUE`` reaches the config (here the GAN data's augmentation, which the config sets to flips
    only); a malformed one is refused before any work."""
    rehearsal = load_benchmark("real_layout_rehearsal")
    roots = {"affectnet": tmp_path / "affectnet", "celebamask-hq": tmp_path / "celebamask-hq"}
    _, data = rehearsal.build("affectnet_celebamask_hq", roots, rehearsal.parse_args(["--size", "32"]))
    assert data.expression.augment == "flip" and data.parsing.augment is True
    args = rehearsal.parse_args(["--size", "32", "--set", "data.init_args.expression.init_args.augment=false"])
    _, data = rehearsal.build("affectnet_celebamask_hq", roots, args)
    assert data.expression.augment is False and data.parsing.augment is True
    for bad in ("data.init_args.expression.init_args.augment", "--trainer.devices=2"):
        with pytest.raises(SystemExit):
            rehearsal.parse_args(["--set", bad])


def test_rehearsal_count_sets_the_export_size_and_refuses_a_stale_export(tmp_path):
    """``--count LAYOUT=N`` changes how many images a layout's export holds; a work dir whose earlier export
    holds another number is refused (it would silently change what the run trains on), before training."""
    rehearsal = load_benchmark("real_layout_rehearsal")
    args = rehearsal.parse_args(["--count", "celebamask-hq=7"])
    assert args.counts["celebamask-hq"] == 7 and args.counts["affectnet"] == rehearsal.COUNTS["affectnet"]
    for bad in ("celebamask-hq", "celebamask=7", "celebamask-hq=0", "rafd=x"):
        with pytest.raises(SystemExit):
            rehearsal.parse_args(["--count", bad])
    from segexpr.data.export import export_synthetic

    root = tmp_path / "celebamask-hq"
    export_synthetic("celebamask-hq", root, 3, 32, seed=0)
    rehearsal.check_export_count(root, "celebamask-hq", 3)
    with pytest.raises(SystemExit, match=r"holds an export of 3 celebamask-hq images.*asks for 7"):
        rehearsal.check_export_count(root, "celebamask-hq", 7)
