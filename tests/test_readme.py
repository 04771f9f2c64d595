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
