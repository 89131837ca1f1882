"""The package's layers: every import of an mlic module points down (ast, nothing is imported).

A module may import modules of its own layer and of the layers below, never above. The order is
the architecture README's "Layout" describes: a head knows nothing of datasets, a dataset nothing
of models, the run folder nothing of training, the loop nothing of the commands around it.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mlic"

# Bottom first; a module belongs to the longest prefix that names it, and a module named nowhere
# is a command (the layer of evaluation, export, tune).
LAYERS = [
    ("mlic.errors", "mlic.atomic", "mlic.version"),
    ("mlic.chunks", "mlic.preprocessing", "mlic.metrics", "mlic.decisions", "mlic.label_alignment",
     "mlic.spreadsheet"),
    ("mlic.data",),
    ("mlic.models", "mlic.losses"),
    ("mlic.coupling",),
    ("mlic.config",),
    ("mlic.data_paths", "mlic.run_folder", "mlic.predictions", "mlic.tracking"),
    ("mlic.figures",),
    ("mlic.report", "mlic.cooccurrence", "mlic.gallery", "mlic.label_curves"),
    ("mlic.engine",),
    ("mlic.export", "mlic.inference", "mlic.evaluation", "mlic.thresholds", "mlic.flops",
     "mlic.tune", "mlic.demo"),
    ("mlic.cli", "mlic.__main__", "mlic"),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


COMMANDS = next(i for i, names in enumerate(LAYERS) if "mlic.evaluation" in names)


def layer(module: str) -> int:
    matches = [(len(name), i) for i, names in enumerate(LAYERS) for name in names
               if module == name or (name != "mlic" and module.startswith(name + "."))]
    return max(matches)[1] if matches else COMMANDS


def mlic_imports(path: Path):
    """(line, imported module) of every import of an mlic module, at any depth."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "mlic")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and (
                node.module.split(".")[0] == "mlic"):
            yield node.lineno, node.module


def test_imports_point_down():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = module_name(path)
        for line, target in mlic_imports(path):
            if layer(target) > layer(here):
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {here} -> {target}")
    assert not upward, "imports that point up:\n" + "\n".join(upward)


def test_data_and_models_know_nothing_of_each_other():
    def package(module: str) -> str:
        return ".".join(module.split(".")[:2])

    crossing = [f"{module_name(p)} -> {target}" for p in PACKAGE.rglob("*.py")
                for _, target in mlic_imports(p)
                if {package(module_name(p)), package(target)} == {"mlic.data", "mlic.models"}]
    assert not crossing
