"""Import a script of ``examples/benchmarks/`` as a module, so tests can call its functions in-process."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[1] / "examples" / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """``examples/benchmarks/<name>.py`` loaded fresh (module name ``name``)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
