"""The standard judge: torchvision families other than the critic's, an ensemble, shipped, used by default."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from segexpr.labels import NUM_AUS, NUM_EXPRESSIONS
from segexpr.data.synthetic import SyntheticFaces, nearest_expression, render
from segexpr.evaluation import SynthFACSEditBenchmark, standard_judge
from segexpr.evaluation.judge import (
    STANDARD_JUDGE_DIR,
    AugmentedRenders,
    STANDARD_RECIPE,
    JudgeEnsemble,
    load_judge_ensemble,
    render_training_set,
    save_judge_ensemble,
    train_judge,
)
from segexpr.metrics import assert_independent
from segexpr.models.discriminators import AUDiscriminator
from segexpr.models.judges import create_judge, list_judges
from segexpr.modules.judge import JudgeModule
from tiny import tiny_joint_module


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def renders():
    return render_training_set(size=32, length=48, seed=0)


@pytest.mark.parametrize("family", ["resnet18_3stage", "vgg_bn_small", "densenet_small"])
def test_judge_follows_the_recogniser_contract(family):
    torch.manual_seed(0)
    judge = create_judge(family, image_size=32).eval()
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    logits, aus = judge(images)
    assert logits.shape == (3, NUM_EXPRESSIONS) and aus.shape == (3, NUM_AUS)
    assert float(aus.min()) >= 0 and float(aus.max()) <= 1
    assert judge.features(images).shape == (3, judge.num_features)
    assert not any(isinstance(m, AUDiscriminator) for m in judge.modules())  # not the critic's family


def test_bad_judge_arguments_are_named():
    with pytest.raises(ValueError, match="unknown judge family 'vgg'"):
        create_judge("vgg")
    with pytest.raises(ValueError, match="image_size must be an integer >= 32"):
        create_judge("vgg_bn_small", image_size=16)
    with pytest.raises(ValueError, match=r"images \[B, 3, H, W\]"):
        create_judge("resnet18_3stage", image_size=32).features(torch.zeros(1, 1, 32, 32))
    assert set(STANDARD_RECIPE["families"]) <= set(list_judges())


def test_a_judge_reads_faces_at_its_input_size():
    """input_size: the body sees the image downsampled (antialiased) to it, whatever size it is given."""
    torch.manual_seed(0)
    judge = create_judge("vgg_bn_small", image_size=64, input_size=32).eval()
    assert (judge.image_size, judge.input_size) == (64, 32)
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    small = torch.nn.functional.interpolate(images, size=(32, 32), mode="bilinear", antialias=True,
                                            align_corners=False)
    with torch.no_grad():
        assert torch.equal(judge.features(images), judge.body(small))
        assert torch.equal(judge(images)[0], judge(small)[0])  # already at its input size: read as it is
        # a 64-px reader of the same weights sees the fine detail the 32-px one averages away
        sharp = create_judge("vgg_bn_small", image_size=64)
        sharp.load_state_dict(judge.state_dict())
        assert not torch.allclose(sharp.eval().features(images), judge.features(images))
    assert create_judge("vgg_bn_small", image_size=64).input_size == 64
    for bad in (16, 65, 32.0):
        with pytest.raises(ValueError, match="input_size must be an integer in \\[32, image_size=64\\]"):
            create_judge("vgg_bn_small", image_size=64, input_size=bad)


def test_training_is_deterministic_and_learns(renders):
    first = train_judge("vgg_bn_small", 3, renders, steps=3, batch_size=8)
    again = train_judge("vgg_bn_small", 3, renders, steps=3, batch_size=8)
    other = train_judge("vgg_bn_small", 4, renders, steps=3, batch_size=8)
    fresh = create_judge("vgg_bn_small", image_size=32)
    same = [torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values())]
    assert all(same)
    assert not all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), other.state_dict().values()))
    assert not torch.equal(first.head.weight, fresh.head.weight)


def test_blended_renders_are_labelled_with_the_nearest_prototype():
    """Partial expressions: re-rendering an item's AUs gives its image, and its label is the nearest prototype."""
    plain = render_training_set(size=32, length=40, seed=0)
    blended = render_training_set(size=32, length=40, seed=0, blend_fraction=0.5)
    again = render_training_set(size=32, length=40, seed=0, blend_fraction=0.5)
    assert all(torch.equal(torch.from_numpy(blended[k]), torch.from_numpy(again[k])) for k in blended)
    changed = [i for i in range(40) if not (plain["image"][i] == blended["image"][i]).all()]
    assert 10 <= len(changed) <= 30  # about half the items
    dataset = SyntheticFaces(size=32, length=40, seed=0, split="train")
    for i in range(40):
        assert blended["identity"][i] == dataset.identity_of(i)
        assert blended["expression"][i] == nearest_expression(blended["aus"][i])
        assert (render(int(blended["identity"][i]), blended["aus"][i], 32)["image"] == blended["image"][i]).all()
    with pytest.raises(ValueError, match="blend_fraction must be in"):
        render_training_set(size=32, length=4, blend_fraction=1.5)


def test_crossfaded_items_mix_two_expressions_of_one_face_with_soft_labels(renders):
    data = AugmentedRenders(renders, length=96, seed=0, augment=False, crossfade=0.5)
    faded = 0
    for k in range(96):
        item = data[k]
        probs = item["expression_probs"]
        assert float(probs.sum()) == pytest.approx(1.0) and int(item["expression"]) == int(probs.argmax())
        i = int(data.order[k])
        source = torch.from_numpy(renders["image"][i]).permute(2, 0, 1).float() / 127.5 - 1
        if float(probs.max()) < 1:
            faded += 1
            a = float(probs[int(renders["expression"][i])])
            candidates = [j for j in data.partners[i]
                          if float(probs[int(renders["expression"][j])]) == pytest.approx(1 - a)]
            assert all(renders["identity"][j] == renders["identity"][i] for j in candidates)

            def blend(j):
                partner = torch.from_numpy(renders["image"][j]).permute(2, 0, 1).float() / 127.5 - 1
                return a * source + (1 - a) * partner

            assert any(torch.allclose(item["image"], blend(j), atol=1.5 / 127.5) for j in candidates)
        else:
            assert torch.allclose(item["image"], source, atol=1e-6)
    assert 25 <= faded <= 71
    assert AugmentedRenders(renders, length=96, seed=0, augment=False, crossfade=0.0)[0]["expression_probs"].max() == 1
    with pytest.raises(KeyError, match="identity"):
        AugmentedRenders({k: v for k, v in renders.items() if k != "identity"}, 4, 0, crossfade=0.5)


def test_judge_module_uses_soft_labels_when_given():
    torch.manual_seed(0)
    module = JudgeModule("vgg_bn_small", image_size=32, max_steps=1)
    batch = {"image": torch.rand(4, 3, 32, 32) * 2 - 1, "expression": torch.tensor([0, 1, 2, 3]),
             "aus": torch.rand(4, NUM_AUS)}
    hard = module.training_step(batch, 0)
    soft = dict(batch, expression_probs=torch.nn.functional.one_hot(batch["expression"], NUM_EXPRESSIONS).float())
    assert torch.allclose(module.training_step(soft, 0), hard)
    soft["expression_probs"] = torch.full((4, NUM_EXPRESSIONS), 1 / NUM_EXPRESSIONS)
    assert not torch.allclose(module.training_step(soft, 0), hard)


def test_ensemble_averages_probabilities_and_aus():
    torch.manual_seed(0)
    members = [create_judge("resnet18_3stage", image_size=32).eval(),
               create_judge("vgg_bn_small", image_size=32).eval()]
    ensemble = JudgeEnsemble(members, ["a", "b"]).eval()
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        logits, aus = ensemble(images)
        outs = [m(images) for m in members]
    expected = torch.stack([o[0].softmax(1) for o in outs]).mean(0)
    assert torch.allclose(logits.exp(), expected, atol=1e-6)
    assert torch.allclose(aus, (outs[0][1] + outs[1][1]) / 2)
    assert ensemble.features(images).shape == (2, members[0].num_features + members[1].num_features)
    with pytest.raises(ValueError, match="different sizes"):
        JudgeEnsemble([members[0], create_judge("vgg_bn_small", image_size=64)])


def test_save_and_load_round_trip_refuses_overwrite_and_checks_weights(tmp_path):
    torch.manual_seed(0)
    judge = create_judge("vgg_bn_small", image_size=32).eval()
    folder = save_judge_ensemble([("vgg_bn_small", 0, judge)], tmp_path / "judge").parent
    loaded = load_judge_ensemble(folder)
    assert loaded.version == hashlib.sha256((folder / "manifest.json").read_bytes()).hexdigest()[:12]
    assert JudgeEnsemble([judge]).version is None  # built in memory: no manifest names its weights
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(loaded(images)[0].exp(), judge(images)[0].softmax(1), atol=2e-3)  # stored in fp16
    before = (folder / "manifest.json").read_bytes()
    with pytest.raises(FileExistsError, match="manifest.json"):
        save_judge_ensemble([("vgg_bn_small", 0, judge)], folder)
    assert (folder / "manifest.json").read_bytes() == before
    weights = folder / "vgg_bn_small_seed0.pt"
    # the side a member reads at is kept; a manifest from before input_size existed reads at image_size
    reader = create_judge("vgg_bn_small", image_size=64, input_size=32).eval()
    reader_folder = save_judge_ensemble([("vgg_bn_small", 1, reader)], tmp_path / "reader").parent
    assert load_judge_ensemble(reader_folder).members[0].input_size == 32
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["members"][0]["input_size"] == 32
    del manifest["members"][0]["input_size"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert load_judge_ensemble(folder).members[0].input_size == 32 == judge.image_size
    manifest["members"][0]["input_size"] = 16  # a bad side names the member and the manifest
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"member vgg_bn_small_seed0.pt in .*manifest.json: input_size must be"):
        load_judge_ensemble(folder)
    del manifest["members"][0]["input_size"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    weights.write_bytes(weights.read_bytes()[:-8] + b"corrupt!")
    with pytest.raises(ValueError, match="do not match the checksum"):
        load_judge_ensemble(folder)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="judge weights missing"):
        load_judge_ensemble(folder)
    with pytest.raises(FileNotFoundError, match="no judge manifest"):
        load_judge_ensemble(tmp_path / "nowhere")


@pytest.fixture(scope="module")
def shipped():
    return standard_judge()


def test_the_shipped_judge_is_strong_on_held_out_ground_truth(shipped):
    """>= 0.98 on the 8 prototypes of held-out identities (the benchmark's ground truth), every member too."""
    benchmark = SynthFACSEditBenchmark(size=shipped.image_size, count=12, seed=1)
    renders = benchmark.targets.flatten(0, 1)
    labels = torch.arange(NUM_EXPRESSIONS).repeat(benchmark.count)
    with torch.no_grad():
        assert float((shipped(renders)[0].argmax(1) == labels).float().mean()) >= 0.98
        for member in shipped.members:
            assert float((member(renders)[0].argmax(1) == labels).float().mean()) >= 0.95
    families = {m.family for m in shipped.members}
    assert families == set(STANDARD_RECIPE["families"]) and len(shipped.members) == 6
    assert {m.input_size for m in shipped.members} == {STANDARD_RECIPE["input_size"]}


def test_the_shipped_judge_is_independent_of_a_gan(shipped):
    joint = tiny_joint_module(32, segmenter=False, region_source="none")
    assert_independent(shipped, joint.discriminator)
    manifest = json.loads((STANDARD_JUDGE_DIR / "manifest.json").read_text())
    assert manifest["recipe"]["steps"] == STANDARD_RECIPE["steps"]


def _segexpr() -> str:
    return str(Path(sys.executable).with_name("segexpr"))


@pytest.fixture(scope="module")
def joint_checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("judge_ckpt")
    torch.manual_seed(2)
    module = tiny_joint_module(32, segmenter=False, task="both", region_source="none")
    batches = list(DataLoader(SyntheticFaces(size=32, length=4, seed=0, pairs=True, identities=4), batch_size=4))
    trainer = pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, default_root_dir=root)
    trainer.fit(module, DataLoader(batches, batch_size=None))
    path = root / "joint.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_evaluate_uses_the_standard_judge_by_default(joint_checkpoint, tmp_path):
    """The installed command, from a folder of the user's: no judge file, a confusion table, a plot, the spread;
    an existing --out is refused (and kept) unless --overwrite."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [_segexpr(), "evaluate", "--ckpt", str(joint_checkpoint), "--count", "2", "--fid-features", "none",
               "--plot", "confusion.png", "--threads", "1"]
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "judge: standard judge (JudgeEnsemble" in run.stdout
    # which weights read the figures: the side they read at and the manifest's checksum
    version = hashlib.sha256((STANDARD_JUDGE_DIR / "manifest.json").read_bytes()).hexdigest()[:12]
    assert f"read at {STANDARD_RECIPE['input_size']} px, manifest {version})" in run.stdout
    assert "judge accuracy on ground-truth renders:" in run.stdout
    assert "judge ensemble: 6 members read the edits at" in run.stdout
    assert "| target \\ judged | neutral |" in run.stdout
    payload = json.loads((tmp_path / "results.json").read_text())
    assert payload["judge"] == "standard judge" and len(payload["member_accuracy"]) == 6
    confusion = torch.tensor(payload["confusion"])
    assert confusion.shape == (8, 8) and int(confusion.sum()) == 2 * 8 and confusion.sum(1).tolist() == [2] * 8
    assert {f"edit_accuracy_{e}" for e in ("neutral", "contempt")} <= set(payload["metrics"])
    assert (tmp_path / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    before = (tmp_path / "results.json").read_bytes()
    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode != 0 and "results.json" in again.stderr and "--overwrite" in again.stderr
    assert (tmp_path / "results.json").read_bytes() == before


def test_standard_judge_script_checks_its_overrides_and_work_dir(tmp_path, capsys):
    from benchmark_scripts import load_benchmark

    script = load_benchmark("standard_judge")
    with pytest.raises(SystemExit):
        script.parse_args(["--crossfade", "1.5", "--out-dir", str(tmp_path)])
    assert "--crossfade must be in [0, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.parse_args(["--blend-fraction", "0.5", "--write-judge", "--overwrite", "--out-dir", str(tmp_path)])
    assert "--write-judge stores the recipe's judge" in capsys.readouterr().err
    recipe = dict(STANDARD_RECIPE, image_size=32, training_renders=16, steps=1, batch_size=4, seeds=(0,),
                  families=("vgg_bn_small",))
    members, seconds = script.build_members(recipe, tmp_path / "work")
    assert [(f, s) for f, s, _ in members] == [("vgg_bn_small", 0)] and set(seconds) == {"vgg_bn_small seed 0"}
    again, seconds = script.build_members(recipe, tmp_path / "work")  # cached: loaded, not retrained
    assert seconds == {} and torch.equal(again[0][2].head.weight, members[0][2].head.weight)
    with pytest.raises(SystemExit, match="judges of another recipe"):
        script.build_members(dict(recipe, crossfade=0.5), tmp_path / "work")
    # the side the judges read at is part of the recipe, and the members are built to read at it
    assert {j.input_size for _, _, j in members} == {32}
    wide = dict(recipe, image_size=64, input_size=48)
    members, _ = script.build_members(wide, tmp_path / "wide")
    assert (members[0][2].image_size, members[0][2].input_size) == (64, 48)
    with pytest.raises(SystemExit, match="judges of another recipe"):
        script.build_members(dict(wide, input_size=32), tmp_path / "wide")
    with pytest.raises(SystemExit):
        script.parse_args(["--input-size", "16", "--out-dir", str(tmp_path)])
    assert "--input-size must be in [32, 64]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.parse_args(["--families", "alexnet", "--out-dir", str(tmp_path)])
    assert "invalid choice: 'alexnet'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.parse_args(["--seed-groups", "2", "--out-dir", str(tmp_path)])
    assert "--seed-groups 2 must divide the 3 judge seeds" in capsys.readouterr().err
    for override in (["--input-size", "48"], ["--families", "densenet_small"]):
        with pytest.raises(SystemExit):
            script.parse_args([*override, "--write-judge", "--overwrite", "--out-dir", str(tmp_path)])
        assert "--write-judge stores the recipe's judge" in capsys.readouterr().err


def test_seed_judges_are_the_recipe_once_per_seed_and_average_to_the_standard_judge():
    from benchmark_scripts import load_benchmark

    script = load_benchmark("standard_judge")
    torch.manual_seed(0)
    members = [(f, s, create_judge(f, image_size=32).eval()) for f in ("resnet18_3stage", "vgg_bn_small")
               for s in (0, 1, 2)]
    by_seed = script.seed_judges(members)
    assert by_seed.names == ["seed 0", "seed 1", "seed 2"]
    assert [group.names for group in by_seed.members][1] == ["resnet18_3stage seed 1", "vgg_bn_small seed 1"]
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        full = JudgeEnsemble([j for _, _, j in members])(images)
        nested = by_seed(images)
    torch.testing.assert_close(nested[0].exp(), full[0].exp())
    torch.testing.assert_close(nested[1], full[1])
    # whole judges: runs of seeds, every family's members of those seeds in each
    members += [(f, s, create_judge(f, image_size=32).eval()) for f in ("resnet18_3stage", "vgg_bn_small")
                for s in (3, 4, 5)]
    whole = script.seed_judges(members, group=3)
    assert whole.names == ["seeds 0, 1, 2", "seeds 3, 4, 5"]
    assert whole.members[1].names == [f"{f} seed {s}" for f in ("resnet18_3stage", "vgg_bn_small") for s in (3, 4, 5)]
    with torch.no_grad():
        shipped_like = JudgeEnsemble([j for _, s, j in members if s < 3])(images)
        torch.testing.assert_close(whole.members[0](images)[0], shipped_like[0])
    with pytest.raises(ValueError, match="6 seeds do not cut into groups of 4"):
        script.seed_judges(members, group=4)


def test_judge_disagreement_probes_every_member(joint_checkpoint, capsys):
    from benchmark_scripts import load_benchmark

    rows = load_benchmark("judge_disagreement").main(["--ckpt", str(joint_checkpoint), "--count", "2", "--faces", "3",
                                                      "--threads", "1"])
    assert len(rows) == 6 and all(0.0 <= v <= 1.0 for row in rows.values() for v in row.values())
    # the two halves show different expressions, so no face is read as both
    assert all(row["half faces read as lower half"] + row["half faces read as upper half"] <= 1 for row in rows.values())
    printed = capsys.readouterr().out
    assert "changing edits read as source" in printed and printed.count("| vgg_bn_small seed") == 3


def test_judge_disagreement_probes_another_judge_from_its_folder(joint_checkpoint, tmp_path):
    from benchmark_scripts import load_benchmark

    torch.manual_seed(0)
    folder = save_judge_ensemble([("densenet_small", 5, create_judge("densenet_small", image_size=32).eval())],
                                 tmp_path / "judge").parent
    rows = load_benchmark("judge_disagreement").main(["--ckpt", str(joint_checkpoint), "--count", "2", "--faces", "2",
                                                      "--threads", "1", "--judge-dir", str(folder)])
    assert list(rows) == ["densenet_small seed 5"]
