"""The package's layers: every import in src/radixpert (top-level or inside a function) points
down, never up. The ground floor imports only itself; nothing below evaluate/ imports it.

The table is ARCHITECTURE.md's picture: ground floor, then the user's path (data, instruct,
models, train, infer), with evaluate/ beside it scoring text from the ground floor alone, and
demo/ and the command line on top. Two edges are declared: instruct/ grades answers with the
report metrics, and train/ generates held-out reports with infer/'s batch generation.
"""

from __future__ import annotations

import ast
from pathlib import Path

import radixpert

PACKAGE = Path(radixpert.__file__).parent
GROUND = {"vocab", "errors", "io", "paths", "_optional", "weights", "llm", "__init__"}
ALLOWED: dict[str, set[str]] = {
    "ground": set(),
    "evaluate": set(),
    "data": set(),
    "instruct": {"data", "evaluate"},
    "models": {"data"},
    "infer": {"data", "instruct", "models"},
    "train": {"data", "instruct", "models", "infer", "evaluate"},
    "demo": {"data", "instruct", "models", "train", "infer", "evaluate"},
    "serve": {"data", "instruct", "models", "infer"},
    "leaderboard": {"data", "instruct", "models", "train", "infer", "evaluate", "serve"},
    "cli": {
        "data",
        "instruct",
        "models",
        "train",
        "infer",
        "evaluate",
        "demo",
        "serve",
        "leaderboard",
    },
    "__main__": {"cli"},
}


def _layer(parts: tuple[str, ...]) -> str:
    return "ground" if parts[0] in GROUND else parts[0]


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, first component under radixpert) of every radixpert import in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from radixpert import vocab` names the module in the alias
            names = (
                [f"radixpert.{a.name}" for a in node.names]
                if node.module == "radixpert"
                else [node.module]
            )
        else:
            assert not isinstance(node, ast.ImportFrom), f"{path}: relative import"
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "radixpert" and len(parts) > 1:
                target = parts[1]
                if (PACKAGE / target).is_dir() or (PACKAGE / f"{target}.py").is_file():
                    found.append((node.lineno, target))
    return found


def test_every_import_points_down() -> None:
    wrong = []
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 50
    for path in modules:
        rel = path.relative_to(PACKAGE).with_suffix("").parts
        layer = _layer(rel)
        assert layer in ALLOWED, f"{path}: a new top-level module needs a place in ALLOWED"
        for line, target in _imports(path):
            to = _layer((target,))
            if to not in ("ground", layer) and to not in ALLOWED[layer]:
                wrong.append(f"{path.relative_to(PACKAGE)}:{line} ({layer}) imports {target}")
    assert not wrong, "imports that point up:\n" + "\n".join(wrong)


def test_nothing_below_evaluate_imports_it() -> None:
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("").parts
        if _layer(rel) in ("ground", "data", "models"):
            assert "evaluate" not in {t for _, t in _imports(path)}, path


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "m.py"
    bad.write_text("def f():\n    from radixpert.evaluate.base import MetricResult\n")
    assert _imports(bad) == [(2, "evaluate")]
