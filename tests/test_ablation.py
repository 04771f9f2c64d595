"""The SynthFACS ablation script runs end to end on a tiny budget and writes its table, plots and command."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from benchmark_scripts import load_benchmark
from segexpr.models.landmarks import predict_landmarks
from segexpr.modules.joint import JointModule


def _record_training_batches(ablation, monkeypatch) -> dict[str, list[dict[str, torch.Tensor]]]:
    """Variant name -> the ``image``/``landmarks`` of every training batch its JointModules saw, in order."""
    recorded: dict[str, list[dict[str, torch.Tensor]]] = {}
    build = ablation.build_variant

    def recording_build(name, *args, **kwargs):
        module = build(name, *args, **kwargs)
        step = module.training_step

        def training_step(batch, *step_args, **step_kwargs):
            recorded.setdefault(name, []).append({k: batch[k].detach().clone() for k in ("image", "landmarks")})
            return step(batch, *step_args, **step_kwargs)

        module.training_step = training_step
        return module

    monkeypatch.setattr(ablation, "build_variant", recording_build)
    return recorded


def _record_segmenters(ablation, monkeypatch) -> dict[str, list[tuple[JointModule, dict[str, torch.Tensor]]]]:
    """Variant name -> (module, its segmenter's state_dict as built, before training) for every run (seed)."""
    built: dict[str, list] = {}
    build = ablation.build_variant

    def recording_build(name, *args, **kwargs):
        module = build(name, *args, **kwargs)
        if module.segmenter is not None:
            start = {k: v.detach().clone() for k, v in module.segmenter.state_dict().items()}
            built.setdefault(name, []).append((module, start))
        return module

    monkeypatch.setattr(ablation, "build_variant", recording_build)
    return built


def _same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ablation_tiny_end_to_end(tmp_path, monkeypatch):
    ablation = load_benchmark("synthfacs_ablation")
    recorded = _record_training_batches(ablation, monkeypatch)
    segmenters = _record_segmenters(ablation, monkeypatch)
    out = tmp_path / "docs" / "results.md"
    result = ablation.main(["--tiny", "--seeds", "0", "1", "--out", str(out), "--work-dir", str(tmp_path / "work")])

    assert set(result["rows"]) == set(ablation.VARIANTS)  # all eight variants trained and evaluated
    for name, row in result["rows"].items():
        assert row["batches"] == 2, name
        assert [run["seed"] for run in row["seeds"]] == [0, 1] and all(r["batches"] == 2 for r in row["seeds"])
        for key in ("edit_expression_accuracy", "edit_au_mae", "edit_psnr", "edit_ssim", "edit_unwanted_change",
                    "fid", "kid_mean", "transfer_au_mae", "transfer_psnr", "transfer_unwanted_change",
                    "leakage_accuracy"):
            assert math.isfinite(row["metrics"][key]), (name, key)
            # the row holds the mean over the seeds and the sample standard deviation
            per_seed = [run["metrics"][key] for run in row["seeds"]]
            assert row["metrics"][key] == pytest.approx(sum(per_seed) / 2), (name, key)
            assert row["metrics_std"][key] == pytest.approx(abs(per_seed[0] - per_seed[1]) / math.sqrt(2)), key
        has_segmenter = ablation.VARIANTS[name][1]["region_source"] == "segmenter"
        assert ("parsing_miou" in row["metrics"]) == has_segmenter, name
        assert "AUDiscriminatorModule" in row["judge"]
    # (3) and (4) start from the same pretrained segmenter; (3) keeps it frozen; (3o) parses exactly
    assert result["rows"]["masks_oracle"]["metrics"]["parsing_miou"] == pytest.approx(1.0)
    assert result["rows"]["frozen_seg"]["options"]["joint"] is False
    assert len(segmenters["frozen_seg"]) == len(segmenters["joint"]) == 2  # one run per seed
    for (frozen, frozen_start), (joint, joint_start) in zip(segmenters["frozen_seg"], segmenters["joint"]):
        assert _same_state(frozen_start, joint_start)  # the same pretrained weights and BatchNorm statistics
        assert _same_state(frozen.segmenter.state_dict(), frozen_start)  # (3): bit-identical after training
        assert not _same_state(joint.segmenter.state_dict(), joint_start)  # (4): joint training changed it

    # (2) trains on the regressor's landmarks, (2o) on the exact ones: same seed, same batches of images
    regressor = result["landmark_regressor"]["regressor"]
    assert len(recorded["landmarks_predicted"]) == len(recorded["landmarks"]) == 4  # 2 batches x 2 seeds
    for exact, predicted in zip(recorded["landmarks"], recorded["landmarks_predicted"]):
        assert torch.equal(exact["image"], predicted["image"])
        assert torch.allclose(predicted["landmarks"], predict_landmarks(regressor, predicted["image"]), atol=1e-4)
        assert (predicted["landmarks"] - exact["landmarks"]).abs().max() > 0.1
    assert result["rows"]["landmarks_predicted"]["landmarks"] == "predicted"
    assert result["rows"]["landmarks"]["landmarks"] == "exact"
    nme = result["landmark_regressor"]["nme_heldout"]
    assert 0 < nme < 1 and result["landmark_regressor"]["seconds"] > 0

    text = out.read_text()
    assert "python examples/benchmarks/synthfacs_ablation.py --tiny --seeds 0 1" in text
    assert "TINY smoke run" in text
    assert f"NME {nme:.4f}** on the 2 held-out benchmark images" in text
    assert "made once, with the first seed (0)" in text
    lines = [line for line in text.splitlines() if line.startswith("| (")]
    assert len(lines) == 8, lines
    assert all(" ± " in line for line in lines), lines  # every variant cell: mean ± std over the 2 seeds
    assert any(line.startswith("| (2) hierarchical, predicted landmark boxes |") for line in lines)
    assert any(line.startswith("| (2o) hierarchical, exact landmarks (oracle) |") for line in lines)
    # transfer rows show transfer AU error, identity leakage and unwanted change
    header = next(line for line in text.splitlines() if line.startswith("| variant |")).split(" | ")
    for line in (line for line in lines if line.startswith(("| (5)", "| (6)"))):
        cells = dict(zip(header, line.split(" | ")))
        for column in ("transfer AU err ↓", "leakage acc (→0.125)", "transfer unwanted ↓", "unwanted ↓"):
            assert " ± " in cells[column], (column, line)
    assert "| no edit (source returned) |" in text and "judge ceiling" in text
    # every target line carries the verdict its own numbers give (value >= goal <=> "reached")
    full = result["rows"][ablation.FULL_MODEL]["metrics"]
    for key, goal in ablation.TARGETS.items():
        line = next(t for t in result["targets"] if t.startswith(f"- {key} of (4)"))
        assert line.endswith(": reached" if full[key] >= goal else ": NOT reached"), line
    unwanted = next(t for t in result["targets"] if t.startswith("- unwanted change of (4)"))
    baseline = result["rows"][ablation.BASELINE]["metrics"]["edit_unwanted_change"]
    assert unwanted.endswith(": reached" if full["edit_unwanted_change"] < baseline else ": NOT reached"), unwanted
    # each baseline against the full model, told apart from the seed spread or "cannot tell"
    for name in ("global", "landmarks_predicted", "landmarks", "frozen_seg", "masks_oracle"):
        assert any(t.startswith(f"  - (4) vs {ablation.VARIANTS[name][0]}: expr. acc ") for t in result["targets"])
    assert any(t.startswith("  - (6) vs (5) transfer") and "leakage acc" in t for t in result["targets"])
    for png in (result["plot"], result["samples"]):
        assert png.is_file() and png.stat().st_size > 1000 and png.parent == out.parent
    assert f"]({result['plot'].name})" in text
    work = tmp_path / "work"
    assert (work / "joint_seed0.ckpt").is_file() and (work / "joint_seed1.ckpt").is_file()
    assert (work / "recognizer.ckpt").is_file()
    saved = json.loads((work / "results.json").read_text())
    assert saved["seeds"] == [0, 1] and saved["landmark_regressor"]["nme_heldout"] == pytest.approx(nme)
    joint = next(row for row in saved["rows"] if row["label"].startswith("(4)"))
    assert [run["seed"] for run in joint["seeds"]] == [0, 1]
    assert joint["seeds"][1]["metrics"]["edit_psnr"] == pytest.approx(
        result["rows"]["joint"]["seeds"][1]["metrics"]["edit_psnr"])


def _row(mean: float, std: float | None) -> dict:
    return {"metrics": {"edit_psnr": mean}, "metrics_std": {} if std is None else {"edit_psnr": std}}


def test_differences_count_only_beyond_the_seed_spread():
    ablation = load_benchmark("synthfacs_ablation")
    assert ablation.compare(_row(20.0, 0.5), _row(18.0, 1.0), "edit_psnr", "higher", "(4)").endswith(
        "(difference +2.00 > seed spread 1.00: (4) better)")
    assert ablation.compare(_row(20.0, 0.5), _row(18.0, 1.0), "edit_psnr", "lower", "(4)").endswith(": (4) worse)")
    assert ablation.compare(_row(20.0, 2.5), _row(18.0, 1.0), "edit_psnr", "higher", "(4)").endswith(
        "<= seed spread 2.50: cannot tell)")
    assert ablation.compare(_row(20.0, None), _row(18.0, None), "edit_psnr", "higher", "(4)").endswith(
        "one seed, no spread: cannot tell)")
    leak = {"metrics": {"leakage_accuracy": 0.15}, "metrics_std": {"leakage_accuracy": 0.01}}
    leakier = {"metrics": {"leakage_accuracy": 0.40}, "metrics_std": {"leakage_accuracy": 0.02}}
    assert ablation.compare(leak, leakier, "leakage_accuracy", "chance", "(6)").endswith(": (6) better)")
    assert ablation.mean_and_std([1.0]) == (1.0, None)
    assert ablation.mean_and_std([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))


def test_ablation_seeds_default_to_seed_and_must_be_distinct():
    ablation = load_benchmark("synthfacs_ablation")
    assert ablation.parse_args([]).seeds == [0]
    assert ablation.parse_args(["--seed", "3"]).seeds == [3]
    args = ablation.parse_args(["--seeds", "2", "5"])
    assert args.seeds == [2, 5] and args.seed == 2  # the shared pre-training uses the first seed
    for bad in (["--seeds", "1", "1"], ["--seeds", "-1"]):
        with pytest.raises(SystemExit):
            ablation.parse_args(bad)


def test_ablation_paired_option_feeds_ground_truth_to_every_variant(tmp_path):
    """--lambda-paired gives manipulate-only variants the paired view (edit targets) and the weight; --overwrite
    replaces an earlier table."""
    ablation = load_benchmark("synthfacs_ablation")
    out = tmp_path / "results.md"
    out.write_text("an earlier run's table")
    result = ablation.main(["--tiny", "--variants", "global", "joint", "--lambda-paired", "5", "--lambda-seg", "3",
                            "--adv-loss", "hinge", "--critic-warmup-steps", "1", "--out", str(out),
                            "--work-dir", str(tmp_path / "work"), "--overwrite"])
    assert set(result["rows"]) == {"global", "joint"}
    text = out.read_text()
    assert "`lambda_paired=5`" in text and "`adv_loss=hinge`" in text and "`lambda_seg=3`" in text
    assert "`critic_warmup_steps=1`" in text
    from segexpr.modules.joint import JointModule
    module = JointModule.load_from_checkpoint(tmp_path / "work" / "joint.ckpt")
    assert module.hparams.lambda_paired == 5 and module.hparams.lambda_seg == 3 and module.hparams.adv_loss == "hinge"
    assert module.hparams.critic_warmup_steps == 1


def test_ablation_batch_budget_trains_every_variant_equally_across_epochs(tmp_path):
    """--batches-per-variant stops each variant after exactly N JointModule batches, across epoch boundaries."""
    ablation = load_benchmark("synthfacs_ablation")
    out = tmp_path / "results.md"
    # --tiny caches 16 pairs at batch 4 (drop_last): 4 batches per epoch, so 6 batches cross one boundary.
    result = ablation.main(["--tiny", "--variants", "global", "landmarks", "--batches-per-variant", "6",
                            "--out", str(out), "--work-dir", str(tmp_path / "work")])
    assert {name: row["batches"] for name, row in result["rows"].items()} == {"global": 6, "landmarks": 6}
    text = out.read_text()
    assert "Setup: 32 px, batch 4, 6 training batches per variant" in text  # (--tiny keeps its own banner)


def test_ablation_never_replaces_existing_outputs_without_overwrite(tmp_path, capsys):
    """A hand-written page at --out, or an earlier run's checkpoint in --work-dir, stops the run before any work,
    naming the file; nothing is written."""
    ablation = load_benchmark("synthfacs_ablation")
    page = tmp_path / "docs" / "results.md"
    page.parent.mkdir()
    page.write_text("250 hand-written lines")
    work = tmp_path / "work"
    with pytest.raises(SystemExit, match="results.md.*--overwrite"):
        ablation.main(["--tiny", "--variants", "global", "--out", str(page), "--work-dir", str(work)])
    assert page.read_text() == "250 hand-written lines" and not work.exists()
    assert sorted(p.name for p in page.parent.iterdir()) == ["results.md"]

    work.mkdir()
    (work / "global.ckpt").write_bytes(b"an earlier run")
    with pytest.raises(SystemExit, match="global.ckpt"):
        ablation.main(["--tiny", "--variants", "global", "--out", str(tmp_path / "new.md"), "--work-dir", str(work)])
    assert (work / "global.ckpt").read_bytes() == b"an earlier run" and not (tmp_path / "new.md").exists()


def test_ablation_default_output_is_its_own_file():
    ablation = load_benchmark("synthfacs_ablation")
    args = ablation.parse_args([])
    assert args.out == Path("docs/results/synthfacs_ablation.md") and not args.overwrite
    assert {p.name for p in ablation.planned_outputs(args)} >= {
        "synthfacs_ablation.md", "synthfacs_ablation_ablation.png", "synthfacs_ablation_ablation_samples.png",
        "results.json", "recognizer.ckpt", "joint.ckpt"}


def test_ablation_rejects_a_non_positive_batch_budget():
    ablation = load_benchmark("synthfacs_ablation")
    with pytest.raises(SystemExit):
        ablation.parse_args(["--batches-per-variant", "0"])
    with pytest.raises(SystemExit):
        ablation.parse_args(["--critic-warmup-steps", "-1"])


def test_parallel_runs_reproduce_in_process_runs_and_milestones(tmp_path):
    """--jobs N trains each (variant, seed) in its own process from the saved shared pre-work: the same numbers as
    one process; --milestones evaluates mid-run without changing the training, one table per milestone reached."""
    ablation = load_benchmark("synthfacs_ablation")
    common = ["--tiny", "--variants", "global", "landmarks_predicted", "--batches-per-variant", "3",
              "--milestones", "2", "9"]
    serial = ablation.main(common + ["--out", str(tmp_path / "a" / "r.md"), "--work-dir", str(tmp_path / "a")])
    parallel = ablation.main(common + ["--jobs", "2", "--out", str(tmp_path / "b" / "r.md"),
                                       "--work-dir", str(tmp_path / "b")])
    for name in ("global", "landmarks_predicted"):
        one, other = serial["rows"][name]["seeds"][0], parallel["rows"][name]["seeds"][0]
        assert one["batches"] == other["batches"] == 3
        assert set(one["milestones"]) == {"2"} and set(other["milestones"]) == {"2"}  # 9 was never reached
        for key in ("edit_psnr", "edit_au_mae", "transfer_psnr", "leakage_accuracy"):
            assert other["metrics"][key] == pytest.approx(one["metrics"][key], abs=1e-5), (name, key)
            assert other["milestones"]["2"]["metrics"][key] == pytest.approx(
                one["milestones"]["2"]["metrics"][key], abs=1e-5), (name, key)
        # the milestone is an earlier state of the same run
        assert one["milestones"]["2"]["metrics"]["edit_psnr"] != one["metrics"]["edit_psnr"]
        assert (tmp_path / "b" / "logs" / f"{name}_seed0.log").is_file()
    text = (tmp_path / "b" / "r.md").read_text()
    assert "### After 2 training batches (equal updates)" in text
    assert "### After 9 training batches\n\nNot reached by any run." in text
    assert "2 runs at a time" in text


class _SleepyModule(pl.LightningModule):
    """Counts ``_train_batches`` like JointModule; each batch takes about ``seconds``."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seconds, self._train_batches = seconds, 0

    def training_step(self, batch, batch_idx):
        time.sleep(self.seconds)
        self._train_batches += 1
        return (self.weight * batch[0]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_training_budget_stops_on_the_clock_without_counting_evaluations():
    ablation = load_benchmark("synthfacs_ablation")
    evaluated = []

    def evaluate(module, batches, seconds):
        evaluated.append((batches, seconds))
        time.sleep(1.0)  # longer than the whole training budget: must not count

    budget = ablation.TrainingBudget(batches=1000, seconds=0.6, milestones=(2,), evaluate=evaluate)
    module = _SleepyModule(0.05)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(64, 1)), batch_size=1)
    pl.Trainer(max_epochs=-1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, accelerator="cpu", callbacks=[budget]).fit(module, data)
    assert [b for b, _ in evaluated] == [2]
    assert module._train_batches > 4  # the 1 s evaluation at batch 2 did not end the 0.6 s budget
    assert 0.6 <= budget.training_seconds < 1.0
    with pytest.raises(ValueError, match="batches and/or seconds"):
        ablation.TrainingBudget()


def test_milestone_tables_keep_the_variants_that_reached_them():
    ablation = load_benchmark("synthfacs_ablation")

    def run(seed, milestones):
        return {"seed": seed, "metrics": {"edit_psnr": 30.0, "edit_unwanted_change": 0.1}, "batches": max(milestones), "train_seconds": 1.0,
                "eval_seconds": 1.0, "features": "f", "judge": "j",
                "milestones": {str(m): {"metrics": {"edit_psnr": float(m + seed), "edit_unwanted_change": 0.1},
                                        "train_seconds": 0.5,
                                        "eval_seconds": 1.0} for m in milestones}}

    rows = {"global": ablation.aggregate_seeds("(1) global only", {}, [run(0, [10, 20]), run(1, [10, 20])]),
            "joint": ablation.aggregate_seeds("(4) joint", {}, [run(0, [10, 20]), run(1, [10])])}
    at_10, at_20 = ablation.milestone_rows(rows, 10), ablation.milestone_rows(rows, 20)
    assert set(at_10) == {"global", "joint"} and set(at_20) == {"global"}  # one joint seed stopped before 20
    assert at_20["global"]["metrics"]["edit_psnr"] == pytest.approx(20.5) and at_20["global"]["batches"] == 20
    sections = ablation.milestone_sections(rows, [], {"edit_psnr": 25.0}, [10, 20, 30])
    assert sections[0].startswith("### After 10 training batches (equal updates)")
    assert "Not reached by every seed of: (4) hierarchical, joint end-to-end (paper)." in sections[1]
    assert "| (1) global only | 20 ± 0 |" in sections[1] and "| (4) joint |" not in sections[1]
    assert "did not reach 20 batches: no target checks" in sections[1]
    assert sections[2] == "### After 30 training batches\n\nNot reached by any run.\n"


def test_ground_truth_parser_returns_the_exact_masks_of_the_images_it_knows():
    ablation = load_benchmark("synthfacs_ablation")
    from segexpr.data.labels import NUM_CLASSES, REGION_GROUPS
    from segexpr.ops.regions import soft_regions

    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8, generator=generator)
    masks = torch.randint(0, NUM_CLASSES, (5, 16, 16), generator=generator)
    parser = ablation.GroundTruthParser(images, masks)
    floats = images.float() / 127.5 - 1.0  # what the DataLoader gives a model
    order = torch.tensor([3, 0, 3])
    logits = parser(floats[order])
    assert logits.shape == (3, NUM_CLASSES, 16, 16)
    assert torch.equal(logits.argmax(1), masks[order])
    regions = soft_regions(logits, REGION_GROUPS)  # what the generator's boxes come from: the exact parts
    brows = torch.isin(masks[order], torch.tensor(REGION_GROUPS["brows"])).float()
    assert (regions[:, list(REGION_GROUPS).index("brows")] - brows).abs().max() < 1e-6
    with pytest.raises(KeyError, match="1 of 2 images have no ground-truth mask"):
        parser(torch.cat([floats[:1], torch.zeros(1, 3, 16, 16)]))
    with pytest.raises(ValueError, match="uint8 images"):
        ablation.GroundTruthParser(images.float(), masks)


def test_ablation_rejects_bad_parallel_and_budget_options(tmp_path):
    ablation = load_benchmark("synthfacs_ablation")
    for bad in (["--jobs", "0"], ["--milestones", "0"], ["--pretrain-steps", "0"], ["--minutes-per-variant", "0"],
                ["--judge", str(tmp_path / "missing.ckpt")]):
        with pytest.raises(SystemExit):
            ablation.parse_args(bad)
    args = ablation.parse_args(["--milestones", "20", "10", "20"])
    assert args.milestones == [10, 20] and args.minutes_per_variant == 10.0 and args.batches_per_variant is None
    assert ablation.parse_args(["--tiny"]).batches_per_variant == 2
