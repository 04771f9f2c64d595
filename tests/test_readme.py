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


#: How `.ci/run` names its own environment where the README says `.venv` (the only difference allowed).
CI_VENV = '"$ci_venv"'


def test_ci_runs_the_readme_test_command():
    """The same command, word for word, once CI's environment folder is read as the README's `.venv`."""
    tests = _readme_commands()[1]
    script = (ROOT / ".ci/run").read_text()
    ci_lines = [line.strip() for line in script.splitlines()]
    assert [line.replace(CI_VENV, ".venv") for line in ci_lines if CI_VENV in line] == [tests], (
        f"`.ci/run` must run the README's test command with only the venv's location changed: {tests}")
    assert not [line for line in ci_lines if ".venv" in line and not line.startswith("#")]  # never the clone's own
    assert 'ci_venv="$ci_home/venv"' in ci_lines and any("mktemp -d" in line and "ci_home=" in line for line in ci_lines)


def _fake_tools(bin_dir: Path, log: Path) -> None:
    """`python3`, `apt-get` that record their calls; `python3 -m venv DIR` makes DIR/bin/{pip,python} that do too."""
    recorder = f'#!/bin/sh\necho "$0 $*" >> {log}\n'
    fake_python = recorder + ('if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then mkdir -p "$3/bin"; '
                              f'for tool in pip python; do printf \'%s\' \'{recorder}\' > "$3/bin/$tool"; '
                              'chmod +x "$3/bin/$tool"; done; fi\n')
    bin_dir.mkdir()
    for name, text in (("python3", fake_python), ("apt-get", recorder)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)


def test_ci_leaves_a_contributors_environment_alone(tmp_path):
    """Run in a contributor's checkout, `.ci/run` builds and removes an environment of its own; their `.venv`
    stays. (python3 and apt-get are stand-ins that record their calls: no install, no test run.)"""
    import os
    import shutil
    import subprocess

    clone = tmp_path / "clone"
    (clone / ".ci").mkdir(parents=True)
    shutil.copy(ROOT / ".ci/run", clone / ".ci/run")
    (clone / ".venv" / "bin").mkdir(parents=True)
    (clone / ".venv" / "bin" / "python").write_text("the contributor's interpreter")
    log, scratch = tmp_path / "calls.log", tmp_path / "scratch"
    scratch.mkdir()
    _fake_tools(tmp_path / "bin", log)
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "TMPDIR": str(scratch)}
    result = subprocess.run(["bash", str(clone / ".ci/run")], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (clone / ".venv" / "bin" / "python").read_text() == "the contributor's interpreter"
    calls = log.read_text().splitlines()
    venv = next(line.split()[-1] for line in calls if " -m venv " in line)
    assert Path(venv).parent.parent == scratch  # a folder of CI's own under TMPDIR
    assert any(line.startswith(f"{venv}/bin/python -m pytest") for line in calls), calls
    assert list(scratch.iterdir()) == []  # and removed when done


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
    assert namespace["masks"].shape == (2, len(namespace["editor"].region_names), 64, 64)
    assert not torch.equal(namespace["happy"], namespace["images"])
    assert namespace["seg"](namespace["images"]).shape == (2, 19, 64, 64)
