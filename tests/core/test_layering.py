"""Imports run one way (DESIGN.md "Layout"): one table of package -> what it must never import, checked on the
import graph read from the source (every ``import``, also those inside functions, followed transitively through
the project's own modules), plus one run-time check that importing the runtime and calibration stages loads no
torch. Only the CLI (``mosaic_edge.cli``, ``mosaic_edge.commands``) reaches up into the stages, lazily."""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Root folder -> import name (pyproject.toml package-dir).
ROOTS = {"mosaic_edge": "mosaic_edge", "train": "mosaic_edge.train", "export": "mosaic_edge.export",
         "calibration": "mosaic_edge.calibration", "edge_runtime": "mosaic_edge.edge_runtime"}
STAGES = ("mosaic_edge.train", "mosaic_edge.export", "mosaic_edge.calibration", "mosaic_edge.edge_runtime")
CLI = ("mosaic_edge.cli", "mosaic_edge.commands", "mosaic_edge.__main__")
HEAVY = ("torch", "onnx", "onnxruntime", "tensorrt", "pycuda", "cuda", "matplotlib", "pyarrow")

# (which modules, modules exempt from the rule, module prefixes they must never reach, why)
RULES: list[tuple[str, tuple[str, ...], tuple[str, ...], str]] = [
    ("core", ("mosaic_edge.doctor",), STAGES + HEAVY,
     "the core is numpy only and knows no stage (doctor only probes what is installed)"),
    ("mosaic_edge.train", (), ("mosaic_edge.export", "mosaic_edge.calibration", "mosaic_edge.edge_runtime"),
     "training feeds export, never the reverse"),
    ("mosaic_edge.calibration", (), ("mosaic_edge.train", "mosaic_edge.export", "mosaic_edge.edge_runtime", "torch"),
     "calibration samples from the core's readers and runs in ONNX Runtime: no torch"),
    ("mosaic_edge.export", (), ("mosaic_edge.edge_runtime",),
     "the runtime builds engines with export's builder; export must not loop back into the runtime"),
    ("mosaic_edge.edge_runtime", (), ("torch", "mosaic_edge.train", "mosaic_edge.calibration"),
     "the Jetson runtime installs without torch and without the training/calibration stages"),
    ("mosaic_edge.edge_runtime", ("mosaic_edge.edge_runtime.trt_runner",), ("mosaic_edge.export",),
     "only the on-device engine build (trt_runner) uses export"),
]


def _module_files() -> dict[str, Path]:
    """Import name -> file of every module the package ships."""
    out = {}
    for folder, name in ROOTS.items():
        for path in (REPO / folder).rglob("*.py"):
            parts = [p for p in path.relative_to(REPO / folder).with_suffix("").parts if p != "__init__"]
            out[".".join([name, *parts])] = path
    return out


MODULES = _module_files()


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base[: len(base) - node.level + (1 if MODULES.get(module, Path()).name == "__init__.py" else 0)]
    return ".".join(base + ([node.module] if node.module else []))


@cache
def direct_imports(module: str) -> frozenset[str]:
    """Every module named by an import statement of ``module`` (anywhere in the file)."""
    tree = ast.parse(MODULES[module].read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node)
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES)
    return frozenset(names)


def reachable(module: str, boundary: tuple[str, ...] = ()) -> dict[str, str]:
    """Imported name -> the project module whose import statement names it, following project modules (not the
    CLI, not the ``boundary`` modules: a rule's exempt modules are the sanctioned path, not followed)."""
    seen, stack, found = {module}, [module], {}
    while stack:
        current = stack.pop()
        for name in direct_imports(current):
            found.setdefault(name, current)
            if name in MODULES and name not in seen and not _in(name, CLI + boundary):
                seen.add(name)
                stack.append(name)
    return found


def _in(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _selected(which: str) -> list[str]:
    if which == "core":
        return [m for m in MODULES if not _in(m, STAGES + CLI)]
    return [m for m in MODULES if _in(m, (which,))]


def test_the_table_covers_every_module() -> None:
    assert "mosaic_edge.contract" in MODULES and "mosaic_edge.edge_runtime.daemon" in MODULES
    covered = {m for which, *_ in RULES for m in _selected(which)}
    assert covered | {m for m in MODULES if _in(m, CLI)} == set(MODULES)


@pytest.mark.parametrize("which, exempt, forbidden, why", RULES, ids=[f"{r[0]}-{i}" for i, r in enumerate(RULES)])
def test_imports_run_one_way(which: str, exempt: tuple[str, ...], forbidden: tuple[str, ...], why: str) -> None:
    problems = []
    for module in _selected(which):
        if module in exempt:
            continue
        for name, via in sorted(reachable(module, exempt).items()):
            if _in(name, forbidden) and not _in(name, (module,)):
                problems.append(f"{module} reaches {name} (imported by {via})")
    assert not problems, f"{why}:\n  " + "\n  ".join(problems[:20])


def test_importing_the_runtime_and_calibration_loads_no_torch() -> None:
    """The static table above, confirmed at run time for what ships to the Jetson."""
    mods = [m for m in MODULES if _in(m, ("mosaic_edge.edge_runtime", "mosaic_edge.calibration"))
            or m == "mosaic_edge.commands.runtime"]
    code = ("import importlib, sys\n"
            f"for m in {sorted(mods)!r}:\n"
            "    importlib.import_module(m)\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'torch')\n"
            "assert not bad, bad[:5]\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
