"""The package's import graph has no cycle: every ``import`` in ``segexpr/`` (module level *and* inside
functions, since a lazy import is still a dependency) is an edge, found by walking the source with ``ast``."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "segexpr"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """segexpr module -> the segexpr modules it imports (``from pkg import submodule`` resolves to the submodule)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_import_graph_has_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_sees_lazy_imports():
    graph = import_graph()
    assert "segexpr.io.checkpoints" in graph["segexpr.modules.segmenter"]  # imported inside a method


def test_the_core_does_not_import_the_edge():
    """data, ops, models, losses, metrics, gan never import io, cli, faces, demo or evaluation."""
    graph = import_graph()
    core = ("segexpr.data", "segexpr.ops", "segexpr.models", "segexpr.losses", "segexpr.metrics", "segexpr.gan")
    edge = ("segexpr.io", "segexpr.cli", "segexpr.faces", "segexpr.demo", "segexpr.evaluation")
    for name, targets in graph.items():
        if name.startswith(core):
            bad = sorted(t for t in targets if t.startswith(edge))
            assert not bad, f"{name} imports {bad}"


# ------------------------------------------------------------------------------------------------ the floors
#: The floors, bottom to top. A module may import modules of its own floor and the floors below, never above.
#: ``inference`` sits under ``modules``: it never imports them, and JointModule's ``edit``/``transfer``/``regions``
#: (and the training sample grids) are an ExpressionEditor over the module's networks. The front door
#: (``segexpr/__init__.py``) statically imports nothing: its names are resolved lazily (see the tests below), so it
#: stands on the ground floor where ``segexpr.__version__`` is read.
FLOORS: tuple[tuple[str, ...], ...] = (
    ("segexpr", "segexpr.labels", "segexpr.files"),
    ("segexpr.ops", "segexpr.io", "segexpr.visualize"),
    ("segexpr.data", "segexpr.models", "segexpr.faces"),
    ("segexpr.gan", "segexpr.losses", "segexpr.metrics"),
    ("segexpr.inference", "segexpr.editor", "segexpr.export"),  # editor, export: the old paths, re-exports
    ("segexpr.modules",),
    ("segexpr.evaluation", "segexpr.callbacks", "segexpr.loggers"),
    ("segexpr.cli", "segexpr.demo", "segexpr.__main__"),
)


def floor_of(module: str) -> int:
    """The floor of a segexpr module: its longest listed prefix (the root ``segexpr`` only by name)."""
    best, floor = "", -1
    for level, names in enumerate(FLOORS):
        for name in names:
            matches = module == name or (name != "segexpr" and module.startswith(name + "."))
            if matches and len(name) > len(best):
                best, floor = name, level
    return floor


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{name} (floor {floor_of(name)}) imports {target} (floor {floor_of(target)})"
                  for name, targets in graph.items() for target in targets if floor_of(target) > floor_of(name))


def test_every_module_has_a_floor():
    lost = sorted(name for name in import_graph() if floor_of(name) < 0)
    assert not lost, f"give these modules a floor in FLOORS: {lost}"


def test_no_upward_import():
    bad = upward_imports(import_graph())
    assert not bad, "imports that run up the floors:\n" + "\n".join(bad)


def test_the_floor_check_sees_an_upward_import():
    assert floor_of("segexpr.labels") == 0 and floor_of("segexpr.data.labels") == 2
    assert floor_of("segexpr.inference.photo") < floor_of("segexpr.modules.joint") < floor_of("segexpr.cli.edit")
    assert upward_imports({"segexpr.ops.regions": {"segexpr.data.labels"}, "segexpr.data.labels": set()}) == [
        "segexpr.ops.regions (floor 1) imports segexpr.data.labels (floor 2)"]
    assert upward_imports({"segexpr.inference.editor": {"segexpr.modules.joint_setup"}})


def test_inference_never_imports_the_training_modules():
    graph = import_graph()
    bad = sorted(f"{name} -> {t}" for name, targets in graph.items() if name.startswith("segexpr.inference")
                 for t in targets if t.startswith("segexpr.modules"))
    assert not bad, bad


def test_labels_live_on_the_ground_floor():
    graph = import_graph()
    assert graph["segexpr.labels"] == set()
    assert graph["segexpr.data.labels"] == {"segexpr.labels"}  # the old path: a re-export
    users = sorted(name for name, targets in graph.items() if "segexpr.data.labels" in targets)
    assert not users, users  # every module imports the vocabulary from its own floor


# ------------------------------------------------------------------------------------------------ the front door
def front_door_exports() -> dict[str, str]:
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "_EXPORTS":
            import segexpr

            return dict(segexpr._EXPORTS)
    raise AssertionError("segexpr/__init__.py has no _EXPORTS table")


def test_the_front_door_is_lazy():
    """``import segexpr`` imports no torch (``segexpr --help`` stays fast); every listed name then resolves."""
    import subprocess
    import sys

    code = "import segexpr, sys; assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PACKAGE.parent)
    assert import_graph()["segexpr"] == set()  # no static import: nothing loads before a name is asked for


def test_every_front_door_name_resolves():
    import importlib

    import segexpr

    exports = front_door_exports()
    for name in ("JointModule", "ExpressionEditor", "create_segmenter", "create_generator", "SyntheticFacesDataModule",
                 "CelebAMaskHQDataModule", "AffectNetDataModule", "RaFDDataModule", "SegmenterModule",
                 "standard_judge", "SynthFACSEditBenchmark", "soft_regions", "expression_prototype", "render",
                 "to_batch_tensors", "edit_photo_faces", "to_onnx", "load_joint"):
        assert name in exports and name in segexpr.__all__ and name in dir(segexpr), name
    for name, module in exports.items():
        assert getattr(segexpr, name) is getattr(importlib.import_module(module), name), name
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'JointModul'"):
        segexpr.JointModul  # noqa: B018


def test_nothing_inside_segexpr_comes_in_by_the_front_door():
    """Code in segexpr imports each name from its own module (the front door would hide upward imports)."""
    exports = set(front_door_exports())
    bad = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module == "segexpr" and not node.level:
                bad += [f"{path.name}: from segexpr import {a.name}" for a in node.names if a.name in exports]
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "segexpr"
                    and node.attr in exports):
                bad.append(f"{path.relative_to(PACKAGE)}: segexpr.{node.attr}")
    assert not bad, bad


# ------------------------------------------------------------------------------------------------ one loader
#: Modules whose code looks inside a checkpoint (the strings "state_dict" / "hyper_parameters") or reads a
#: weights file (torch.load, read_checkpoint, load_weights_file), and why. A second JointModule loader would add
#: a module here; it should use segexpr.inference.checkpoints instead.
CHECKPOINT_READERS = {
    "segexpr.io.checkpoints": "the safe reader (weights_only) of any segexpr checkpoint, load_module, upgrades",
    "segexpr.inference.checkpoints": "THE JointModule loader: hyperparameters -> networks, weights, EMA keys",
    "segexpr.evaluation.recognizer": "AUDiscriminatorModule judge checkpoints (JointModule: load_joint -> the loader)",
    "segexpr.evaluation.judge": "the standard judge's own weight files (plain state dicts)",
    "segexpr.modules.hparams": "writes: moves weight-file paths out of hyper_parameters when a module is saved",
    "segexpr.models.segmenters.bisenet": "third-party pretrained backbone files",
    "segexpr.models.segmenters.face_parsing": "face-parsing.PyTorch's 79999_iter.pth",
}
#: Who may know the key names JointModule saves (its EMA copies) and its segexpr 0.1 hyperparameters.
JOINT_CHECKPOINT_KNOWLEDGE = {"segexpr.io.checkpoints", "segexpr.inference.checkpoints"}


def _code_strings(tree: ast.AST) -> list[str]:
    """String constants of the code (docstrings left out), f-string parts included."""
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def reads_checkpoints(tree: ast.AST) -> set[str]:
    """What a module's code does that reads checkpoints: looks up "state_dict" / "hyper_parameters", calls
    torch.load, read_checkpoint or load_weights_file."""
    why = {s for s in _code_strings(tree) if s in ("state_dict", "hyper_parameters")}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("read_checkpoint", "load_weights_file") or (
                    name == "load" and isinstance(func, ast.Attribute) and getattr(func.value, "id", "") == "torch"):
                why.add(f"{name}()")
    return why


def knows_joint_checkpoints(tree: ast.AST) -> set[str]:
    """The JointModule checkpoint details a module's code uses: EMA key names, the 0.1 hyperparameter upgrade."""
    why = {s for s in _code_strings(tree) if "ema.averaged" in s}
    names = ("is_legacy_joint_hparams", "upgrade_joint_hparams")
    why |= {node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and node.id in names}
    why |= {a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for a in node.names if a.name in names}
    return why


def scan(check) -> dict[str, set[str]]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        why = check(ast.parse(path.read_text(), str(path)))
        if why:
            found[module_name(path)] = why
    return found


def test_no_second_checkpoint_loader():
    readers = scan(reads_checkpoints)
    extra = {name: sorted(why) for name, why in readers.items() if name not in CHECKPOINT_READERS}
    assert not extra, f"checkpoints read outside the loaders (use segexpr.inference.checkpoints): {extra}"
    knowing = scan(knows_joint_checkpoints)
    extra = {name: sorted(why) for name, why in knowing.items() if name not in JOINT_CHECKPOINT_KNOWLEDGE}
    assert not extra, f"JointModule checkpoint details parsed outside segexpr.inference.checkpoints: {extra}"
    assert "segexpr.inference.checkpoints" in knowing and "segexpr.inference.checkpoints" in readers


def test_the_loader_check_sees_a_second_loader():
    """The pre-#29 editor, in miniature: it read the file, its hyperparameters and the EMA keys itself."""
    tree = ast.parse('"""state_dict"""\nimport torch\nfrom segexpr.io.checkpoints import upgrade_joint_hparams\n'
                     'def f(p):\n    """hyper_parameters"""\n    ckpt = torch.load(p)\n'
                     '    return ckpt["state_dict"], f"ema.averaged.module.{p}."')
    assert reads_checkpoints(tree) == {"state_dict", "load()"}  # docstrings do not count
    assert knows_joint_checkpoints(tree) == {"ema.averaged.module.", "upgrade_joint_hparams"}
    assert reads_checkpoints(ast.parse("x = 1")) == knows_joint_checkpoints(ast.parse("x = 1")) == set()
