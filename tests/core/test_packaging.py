"""The distribution: wheel contents, core-only CLI, optional-dependency errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from mosaic_edge.errors import OptionalDependencyError
from mosaic_edge.optional import require

REPO = Path(__file__).resolve().parents[2]
SUBPACKAGES = ["mosaic_edge", "mosaic_edge/data", "mosaic_edge/commands", "mosaic_edge/train",
               "mosaic_edge/export", "mosaic_edge/calibration", "mosaic_edge/edge_runtime"]
HEAVY = ["torch", "onnx", "onnxruntime", "tensorrt", "pycuda", "cuda", "pyarrow", "matplotlib", "scipy"]

# Runs the code under test with the heavy optional packages made unimportable, as on a core-only install.
_BLOCKER = textwrap.dedent(
    """
    import sys, importlib.abc
    class _Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {heavy!r}:
                raise ImportError("blocked for the core-only test: " + name)
    sys.meta_path.insert(0, _Block())
    """
)


def _run_core_only(code: str) -> subprocess.CompletedProcess[str]:
    script = _BLOCKER.format(heavy=set(HEAVY)) + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(REPO)],
        check=True, capture_output=True, timeout=300,
    )
    return next(out.glob("mosaic_edge-*.whl"))


def test_wheel_contains_every_subpackage_and_no_top_level_stage(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    for pkg in SUBPACKAGES:
        assert f"{pkg}/__init__.py" in names, f"{pkg} missing from the wheel"
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"mosaic_edge"}, tops


def test_installed_wheel_imports_stages_but_not_bare_train(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    code = (
        "import sys; sys.path = [p for p in sys.path if 'mosaic' not in p and p not in ('', '.')]; "
        f"sys.path.insert(0, {str(target)!r}); "
        "import mosaic_edge.calibration, mosaic_edge.edge_runtime, mosaic_edge.export, mosaic_edge.train; "
        f"assert mosaic_edge.__file__.startswith({str(target)!r}), mosaic_edge.__file__\n"
        "try:\n    import train\nexcept ImportError:\n    print('ok')\nelse:\n    print('train importable')"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert res.stdout.strip() == "ok", res.stdout + res.stderr


def test_help_works_with_only_the_core_installed() -> None:
    res = _run_core_only("from mosaic_edge.cli import main\nmain(['--help'])")
    assert res.returncode == 0, res.stderr
    for cmd in ("train", "export", "serve", "profile", "doctor"):
        assert cmd in res.stdout
    res = _run_core_only("from mosaic_edge.cli import main\nmain(['doctor', '--json'])")
    assert res.returncode == 0, res.stderr
    assert '"torch": {\n    "installed": false' in res.stdout


def test_missing_optional_dependency_names_package_and_extra() -> None:
    with pytest.raises(OptionalDependencyError) as err:
        require("surely_not_a_module_xyz", extra="trt")
    assert "mosaic-edge[trt]" in str(err.value)
    res = _run_core_only(
        "from mosaic_edge.optional import require\n"
        "try:\n    require('tensorrt')\nexcept ImportError as e:\n    print(e)"
    )
    assert "mosaic-edge[trt]" in res.stdout and "JetPack" in res.stdout


def test_min_version_is_compared_semantically() -> None:
    numpy = require("numpy", min_version="1.9")  # "1.9" < "1.24" as versions, not as strings
    assert numpy.__name__ == "numpy"
    with pytest.raises(OptionalDependencyError, match="too old"):
        require("numpy", min_version="999.0")


def test_user_errors_print_one_line_and_exit_2(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "mosaic_edge", "evaluate", str(tmp_path / "missing.pt")],
        capture_output=True, text=True, timeout=120,
    )
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
