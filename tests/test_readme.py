"""The README's two commands are the project's contract with a new user; CI must run the test one."""
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    head = text.split("\n## ", 1)[0]
    return [line.strip() for line in head.splitlines() if line.strip().startswith("python3 -m venv")]


def test_readme_has_main_job_and_test_commands():
    commands = _readme_commands()
    assert len(commands) == 2, commands
    main_job, tests = commands
    assert "segexpr fit --config examples/configs/synthetic.yaml" in main_job
    assert "pytest" in tests
    assert (ROOT / "examples/configs/synthetic.yaml").is_file()


def test_ci_runs_the_readme_test_command():
    tests = _readme_commands()[1]
    ci_lines = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()]
    assert tests in ci_lines, f"`.ci/run` must run the README's test command verbatim: {tests}"


def test_readme_python_example_runs(tmp_path):
    """The README's Python block runs as written, against a (tiny, briefly trained) joint checkpoint."""
    import re

    import pytorch_lightning as pl
    import torch

    from tiny import tiny_joint_module

    from segexpr.data import SyntheticFacesDataModule

    module = tiny_joint_module(64, adv_loss="hinge")
    data = SyntheticFacesDataModule(size=64, train_length=40, val_length=20, test_length=20, pairs=True,
                                    augment=False, batch_size=4)
    trainer = pl.Trainer(max_steps=3, logger=False, enable_checkpointing=False, limit_val_batches=0,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, datamodule=data)
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)

    code = re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    namespace: dict = {}
    exec(code.replace("outputs/synthetic/latest/checkpoints/last.ckpt", str(ckpt)), namespace)
    for name in ("happy", "smile", "copied"):
        assert namespace[name].shape == (2, 3, 64, 64) and namespace[name].abs().max() <= 1
    assert namespace["regions"].shape == (2, 4, 64, 64)
    assert namespace["masks"].shape == (2, 4, 128, 128)
    assert not torch.equal(namespace["happy"], namespace["faces"])
