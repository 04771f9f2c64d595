"""Every benchmark script's default output is a file the script owns (never a hand-written page), and a script that
writes files has --overwrite (its existing outputs are refused without it; see test_ablation / test_rehearsal)."""
from __future__ import annotations

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


@pytest.mark.parametrize("name", SCRIPTS)
def test_default_output_is_a_file_the_script_owns(name):
    source = (BENCHMARKS / f"{name}.py").read_text()
    options = {"--out", "--out-dir"} & set(re.findall(r"add_argument\(\s*\"(--out(?:-dir)?)\"", source))
    if not WRITES.search(source) and not options:
        return  # prints only
    assert options, f"{name}.py writes files without an --out / --out-dir option"
    assert '"--overwrite"' in source, f"{name}.py writes files without an --overwrite option"
    args = load_benchmark(name).parse_args([])
    if "--out" in options:
        # its own page in docs/results/ (relative, or the checkout's)
        assert Path(args.out).parts[-3:] == ("docs", "results", f"{name}.md"), args.out
        assert not _tracked(args.out), f"{args.out} is tracked: a page someone may have written by hand"
    if "--out-dir" in options:
        assert Path(args.out_dir).parts[-2:] == ("docs", "results"), args.out_dir  # files named after the script
