"""segexpr.evaluation: the SynthFACS benchmark, the independent judge, the callback and the ``segexpr evaluate`` CLI."""
from __future__ import annotations

import json
import math

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from segexpr.cli import main as cli_main
from segexpr.data.synthetic import SPLIT_IDENTITY_OFFSET, SyntheticFaces, changeable_area
from segexpr.evaluation import (
    RECOGNIZER_KEYS,
    EditMetricsCallback,
    SynthFACSEditBenchmark,
    load_recognizer,
    markdown_table,
    train_recognizer,
)
from segexpr.modules.discriminator import AUDiscriminatorModule
from segexpr.modules.joint import JointModule
from tiny import tiny_joint_module

SIZE = 32
EDIT_KEYS = {"edit_psnr", "edit_ssim", "edit_l1", "edit_unwanted_change", "transfer_psnr", "transfer_ssim",
             "transfer_l1", "transfer_unwanted_change", "leakage_accuracy", "leakage_chance", "leakage_majority",
             "leakage", "parsing_miou"}
JUDGED_KEYS = {"edit_expression_accuracy", "edit_au_mae", "transfer_expression_accuracy", "transfer_au_mae",
               "identity_cosine", "impostor_cosine", "identity_gap", "judge_accuracy_gt", "judge_au_mae_gt",
               "judge_accuracy_source", "fid", "kid_mean", "kid_std"}


def tiny_joint(task: str = "both", region_source: str = "segmenter") -> JointModule:
    return tiny_joint_module(SIZE, segmenter=region_source == "segmenter", task=task, region_source=region_source)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def benchmark() -> SynthFACSEditBenchmark:
    return SynthFACSEditBenchmark(size=SIZE, count=4, seed=0, batch_size=16)


@pytest.fixture(scope="module")
def recognizer() -> AUDiscriminatorModule:
    torch.manual_seed(0)
    return train_recognizer(size=SIZE, max_steps=4, batch_size=8, train_length=32,
                            discriminator_kwargs={"base_channels": 8, "n_layers": 3})


@pytest.fixture(scope="module")
def joint() -> JointModule:
    torch.manual_seed(1)
    return tiny_joint()


def test_benchmark_set_is_held_out_and_exact(benchmark):
    assert benchmark.targets.shape == (4, 8, 3, SIZE, SIZE)
    assert all(int(i) >= SPLIT_IDENTITY_OFFSET["test"] for i in benchmark.identity)  # never a training identity
    # ground truth keeps the source identity: byte-identical to the source outside the changeable area
    outside = ~benchmark.changeable[0]
    assert torch.equal(benchmark.targets[0, 3][:, outside], benchmark.images[0][:, outside])
    exact = changeable_area(int(benchmark.identity[1]), SIZE).copy()
    assert torch.equal(benchmark.changeable[1], torch.from_numpy(exact))
    again = SynthFACSEditBenchmark(size=SIZE, count=4, seed=0)
    assert torch.equal(again.images, benchmark.images) and torch.equal(again.references, benchmark.references)


def test_benchmark_on_untrained_module_gives_finite_metrics(benchmark, joint, recognizer):
    result = benchmark.evaluate(joint, recognizer, fid_features="recognizer")
    assert EDIT_KEYS | JUDGED_KEYS <= set(result.metrics), sorted(result.metrics)
    assert all(math.isfinite(v) for v in result.metrics.values()), result.metrics
    for key in ("edit_expression_accuracy", "transfer_expression_accuracy", "parsing_miou", "leakage_accuracy"):
        assert 0 <= result.metrics[key] <= 1
    assert result.features.startswith("recogniser features: AUDiscriminatorModule")
    assert "AUDiscriminatorModule" in result.judge
    table = markdown_table(result.metrics)
    assert table.splitlines()[0] == "| metric | value | meaning |" and "| edit_psnr |" in table


def test_no_edit_baseline_has_zero_unwanted_change(benchmark):
    """The identity "edit" is hand-checkable: no unwanted change, PSNR against the truth is finite."""
    result = benchmark.evaluate_functions(lambda images, labels, landmarks: images,
                                          lambda images, references, landmarks: images, fid_features="none")
    assert result.metrics["edit_unwanted_change"] == 0.0 and result.metrics["transfer_unwanted_change"] == 0.0
    assert math.isfinite(result.metrics["edit_psnr"]) and result.metrics["edit_psnr"] > 10
    assert not set(RECOGNIZER_KEYS) & set(result.metrics)
    assert any("no recogniser" in note for note in result.notes)


def test_a_perfect_editor_scores_perfectly(benchmark):
    """An oracle that returns the ground truth gets infinite PSNR, SSIM 1 and only changeable-area changes."""
    def oracle(images, labels, landmarks):
        rows = [int((benchmark.images == im).flatten(1).all(1).nonzero()[0]) for im in images]
        return torch.stack([benchmark.targets[r, int(l)] for r, l in zip(rows, labels)])
    result = benchmark.evaluate_functions(oracle, fid_features="none")
    assert result.metrics["edit_psnr"] == math.inf and result.metrics["edit_ssim"] == pytest.approx(1.0)
    assert result.metrics["edit_unwanted_change"] == 0.0


def test_the_gan_discriminator_cannot_judge(benchmark, joint):
    with pytest.raises(ValueError, match="independent"):
        benchmark.evaluate(joint, joint.discriminator)
    # a copy of the discriminator's weights in a separate recogniser is refused too
    config = dict(joint.hparams["discriminator"])  # the network config JointModule recorded
    copy = AUDiscriminatorModule(image_size=config.pop("image_size"), discriminator_kwargs=config)
    copy.discriminator.load_state_dict(joint.discriminator.state_dict())
    with pytest.raises(ValueError, match="identical"):
        benchmark.evaluate(joint, copy)


def test_callback_logs_metrics_in_validate(joint, recognizer, tmp_path):
    data = DataLoader(SyntheticFaces(size=SIZE, length=4, seed=0, split="val", identities=2, pairs=True), batch_size=4)
    common = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False,
              "default_root_dir": tmp_path}
    callback = EditMetricsCallback(recognizer=recognizer, count=2)
    metrics = pl.Trainer(callbacks=[callback], **common).validate(joint, data, verbose=False)[0]
    assert {"val/synthfacs/edit_expression_accuracy", "val/synthfacs/edit_psnr", "val/synthfacs/fid",
            "val/synthfacs/edit_unwanted_change", "val/recon_l1"} <= set(metrics), sorted(metrics)
    assert math.isfinite(metrics["val/synthfacs/edit_psnr"])

    bare = EditMetricsCallback(count=2)
    with pytest.warns(UserWarning, match="no recogniser"):
        metrics = pl.Trainer(callbacks=[bare], **common).validate(joint, data, verbose=False)[0]
    assert "val/synthfacs/edit_psnr" in metrics and "val/synthfacs/edit_unwanted_change" in metrics
    assert not any(k.endswith(("expression_accuracy", "/fid")) for k in metrics), sorted(metrics)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, recognizer):
    """A tiny JointModule trained one batch (saved by its Trainer) and a saved recogniser checkpoint."""
    root = tmp_path_factory.mktemp("ckpts")
    torch.manual_seed(2)
    module = tiny_joint(task="both", region_source="none")
    batches = list(DataLoader(SyntheticFaces(size=SIZE, length=4, seed=0, pairs=True, identities=4), batch_size=4))
    trainer = pl.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, default_root_dir=root)
    trainer.fit(module, DataLoader(batches, batch_size=None))
    joint_path = root / "joint.ckpt"
    trainer.save_checkpoint(joint_path)
    recog_path = root / "recognizer.ckpt"
    train_recognizer(size=SIZE, max_steps=1, batch_size=4, train_length=4,
                     discriminator_kwargs={"base_channels": 8, "n_layers": 3}, out=recog_path)
    return module, joint_path, recog_path


def test_cli_round_trip(checkpoints, tmp_path, capsys):
    module, joint_path, recog_path = checkpoints
    out = tmp_path / "results.json"
    assert cli_main(["evaluate", "--ckpt", str(joint_path), "--recognizer", str(recog_path), "--count", "2",
                     "--fid-features", "recognizer", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| metric | value | meaning |" in printed and "| edit_expression_accuracy |" in printed
    payload = json.loads(out.read_text())
    assert payload["command"].startswith("segexpr evaluate --ckpt")
    assert payload["size"] == SIZE and payload["edits"] == 16
    assert payload["fid_features"].startswith("recogniser features")
    assert {"edit_psnr", "edit_expression_accuracy", "fid", "transfer_au_mae", "leakage"} <= set(payload["metrics"])
    assert "parsing_miou" not in payload["metrics"]  # region_source="none": no segmenter
    assert isinstance(load_recognizer(recog_path), AUDiscriminatorModule)


def test_cli_real_data_config(checkpoints, tmp_path, capsys):
    """--data CONFIG.yaml takes any DataModule (here SynthFACS through its DataModule, as a real dataset would)."""
    _, joint_path, recog_path = checkpoints
    config = tmp_path / "data.yaml"
    config.write_text("data:\n  class_path: segexpr.data.synthetic.SyntheticFacesDataModule\n"
                      f"  init_args: {{size: {SIZE}, train_length: 4, val_length: 4, test_length: 4, batch_size: 4}}\n")
    out = tmp_path / "real.json"
    cli_main(["evaluate", "--ckpt", str(joint_path), "--recognizer", str(recog_path), "--data", str(config),
              "--count", "4", "--fid-features", "recognizer", "--out", str(out)])
    metrics = json.loads(out.read_text())["metrics"]
    assert {"edit_expression_accuracy", "edit_au_mae", "fid", "edit_unwanted_change"} <= set(metrics)
    assert "edit_psnr" not in metrics  # no ground truth on real data


def test_cli_bad_input(checkpoints, tmp_path):
    module, joint_path, recog_path = checkpoints
    out = ["--out", str(tmp_path / "x.json"), "--count", "2"]
    with pytest.raises(SystemExit, match="checkpoint not found"):
        cli_main(["evaluate", "--ckpt", str(tmp_path / "missing.ckpt"), *out])
    with pytest.raises(SystemExit, match="does not hold a JointModule"):
        cli_main(["evaluate", "--ckpt", str(recog_path), *out])
    with pytest.raises(SystemExit, match="holds a JointModule"):
        cli_main(["evaluate", "--ckpt", str(joint_path), "--recognizer", str(joint_path), *out])
    with pytest.raises(SystemExit, match="unknown --data 'celeba'"):
        cli_main(["evaluate", "--ckpt", str(joint_path), "--data", "celeba", *out])
    # the GAN's own discriminator, saved as a recogniser checkpoint, is refused
    config = dict(module.hparams["discriminator"])  # the network config JointModule recorded
    judge = AUDiscriminatorModule(image_size=config.pop("image_size"), discriminator_kwargs=config)
    judge.discriminator.load_state_dict(module.discriminator.state_dict())
    stolen = tmp_path / "stolen.ckpt"
    torch.save({"state_dict": judge.state_dict(), "hyper_parameters": dict(judge.hparams)}, stolen)
    with pytest.raises(SystemExit, match="not independent of the GAN"):
        cli_main(["evaluate", "--ckpt", str(joint_path), "--recognizer", str(stolen), *out])


def test_callback_logs_metrics_in_test(recognizer, tmp_path):
    """The callback runs after JointModule's own test_step: both its metrics and the benchmark's are returned."""
    torch.manual_seed(3)
    module = tiny_joint()
    data = DataLoader(SyntheticFaces(size=SIZE, length=2, seed=0, split="test", identities=2, pairs=True), batch_size=2)
    callback = EditMetricsCallback(recognizer=recognizer, count=2, fid_features="none")
    metrics = pl.Trainer(callbacks=[callback], logger=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path).test(module, data, verbose=False)[0]
    assert {"test/synthfacs/edit_psnr", "test/synthfacs/edit_expression_accuracy"} <= set(metrics)
    assert "test/recon_l1" in metrics and math.isfinite(metrics["test/recon_l1"])  # logged by JointModule.test_step
    assert not any(k.endswith("/fid") for k in metrics)
    with pytest.raises(ValueError, match="every_n_epochs"):
        EditMetricsCallback(every_n_epochs=0)
