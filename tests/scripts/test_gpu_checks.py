"""The GPU checks (scripts/gpu_checks, run by scripts/gpu_check.py): outside the library, one row format, skips
without hardware, and -- on the strict TensorRT / CUDA stand-ins -- the TensorRT and adapter checks' plumbing."""

from __future__ import annotations

import ast
import shutil
import sys
from pathlib import Path

import pytest

from scripts import gpu_check
from scripts.gpu_checks import STATUSES, cuda_adapters
from scripts.gpu_checks import profile as profile_check
from scripts.gpu_checks import tensorrt as trt_check
from scripts.gpu_checks import train as train_check
from tests.support import fake_cuda, fake_trt
from tests.support.runtime import tiny_contract, write_trt_int8_export

REPO = Path(__file__).resolve().parents[2]
LIBRARY = ("mosaic_edge", "train", "export", "calibration", "edge_runtime")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def test_no_gpu_check_in_the_library_and_export_never_imports_the_runtime() -> None:
    files = [p for d in LIBRARY for p in (REPO / d).rglob("*.py")]
    assert not [p.name for p in files if "gpu_check" in p.name]
    assert not [p for p in files if any(m.startswith("scripts") for m in _imports(p))]
    export = [p.name for p in (REPO / "export").glob("*.py")
              if any(m.startswith("mosaic_edge.edge_runtime") for m in _imports(p))]
    assert export == []


def _one_format(rows: list[dict]) -> None:
    assert rows
    for r in rows:
        assert isinstance(r["check"], str) and r["status"] in STATUSES, r
        if r["status"] == "skip":
            assert r["reason"]


def test_training_and_profile_checks_skip_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert train_check.run() == [{"check": "train_amp", "status": "skip", "reason": "no CUDA device"}]
    assert profile_check.run() == [{"check": "gpu_profile", "status": "skip", "reason": "no CUDA device"}]


def test_adapter_and_tensorrt_checks_skip_without_bindings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("tensorrt", "cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart", "pycuda",
                 "pycuda.driver"):
        monkeypatch.setitem(sys.modules, name, None)
    rows = cuda_adapters.run()
    _one_format(rows)
    assert [(r["check"], r["status"]) for r in rows] == [("cuda/cuda-python", "skip"), ("cuda/pycuda", "skip")]
    assert trt_check.run() == [{"check": "trt", "status": "skip", "reason": "tensorrt is not importable"}]


def test_adapter_check_on_the_stand_ins(monkeypatch: pytest.MonkeyPatch) -> None:
    driver = fake_cuda.Driver()
    fake_cuda.install(monkeypatch, driver)
    monkeypatch.setattr(cuda_adapters, "NBYTES", 1 << 16)
    rows = {r["check"]: r for r in cuda_adapters.run()}
    _one_format(list(rows.values()))
    for backend in ("cuda-python", "pycuda"):
        for check in ("device", "alloc", "h2d_d2h_round_trip", "second_thread", "close"):
            assert rows[f"cuda/{backend}/{check}"]["status"] == "ok", rows[f"cuda/{backend}/{check}"]
        assert rows[f"cuda/{backend}/device"]["sm_count"] == 16
    assert rows["cuda/cuda-python/cuda_graph_replay"]["status"] == "ok"
    assert rows["cuda/pycuda/cuda_graph_replay"]["status"] == "skip"
    assert driver.check_clean() == []


@pytest.fixture(scope="module")
def check_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fp32, fp16, the TensorRT INT8 artefact and calib.npz, as `export --fp16 --int8` writes them."""
    return write_trt_int8_export(tmp_path_factory.mktemp("x") / "export", tiny_contract(), fp16=True,
                                 calib_npz=True)


@pytest.mark.parametrize("version", fake_trt.VERSIONS)
def test_tensorrt_check_plumbing_on_the_stand_ins(check_export: Path, tmp_path: Path, version: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    driver = fake_cuda.Driver()
    fake_cuda.install(monkeypatch, driver)
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt.make_trt(version, driver))
    monkeypatch.setattr(trt_check, "WARMUP", 1)
    monkeypatch.setattr(trt_check, "ITERATIONS", 3)
    export = Path(shutil.copytree(check_export, tmp_path / "export"))
    rows = {r["check"]: r for r in trt_check.run(export)}
    _one_format(list(rows.values()))
    for backend in ("cuda-python", "pycuda"):  # both adapters, both precisions, both batch sizes
        legacy = version.startswith("8.")  # 8.6: INT8 from model.onnx + calib.cache (the artefact is opset 19)
        for precision, artefact in (("fp16", "model.fp16.onnx"), ("int8", "model.onnx" if legacy else
                                                                  "model.int8.onnx")):
            assert rows[f"trt/{backend}/{precision}/engine"] == {**rows[f"trt/{backend}/{precision}/engine"],
                                                                  "status": "ok", "artefact": artefact}
            for n in (1, 8):
                r = rows[f"trt/{backend}/{precision}/b{n}"]
                assert r["status"] == "ok" and r["device_p50_ms"] >= 0 and r["h2d_p50_ms"] >= 0
            # the stand-in engine computes a mean, not the model: decisions are compared, not expected to agree
            agreement = rows[f"trt/{backend}/{precision}/agreement"]
            assert 0 <= agreement["agreement"] <= 1 and agreement["n"] == 16
        verdict = rows[f"trt/{backend}/int8_le_fp16_b8"]
        assert verdict["status"] == ("ok" if verdict["int8_ms"] <= verdict["fp16_ms"] else "fail")
    assert driver.check_clean() == []


@pytest.mark.slow
def test_tensorrt_check_makes_its_own_export_without_one(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    driver = fake_cuda.Driver()
    fake_cuda.install(monkeypatch, driver, backends=("cuda-python",))
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt.make_trt("10.3.0", driver))
    monkeypatch.setattr(trt_check, "WARMUP", 1)
    monkeypatch.setattr(trt_check, "ITERATIONS", 2)
    rows = {r["check"]: r for r in trt_check.run()}
    assert rows["trt/cuda-python/int8/engine"]["artefact"] == "model.int8.onnx"
    assert rows["trt/cuda-python/fp16/b8"]["status"] == "ok" and rows["trt/cuda-python/int8/agreement"]["n"] == 64
    assert driver.check_clean() == []


def test_script_runs_checks_prints_one_table_and_fails_on_a_failed_row(monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture) -> None:
    driver = fake_cuda.Driver()
    fake_cuda.install(monkeypatch, driver)
    monkeypatch.setattr(cuda_adapters, "NBYTES", 1 << 16)
    assert gpu_check.main(["--only", "cuda_adapters"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("check") and "cuda/pycuda/second_thread" in out
    monkeypatch.setattr(cuda_adapters, "run", lambda: 1 / 0)
    assert gpu_check.main(["--only", "cuda_adapters"]) == 1
    assert "cuda_adapters | fail   | error=ZeroDivisionError" in capsys.readouterr().out


@pytest.mark.gpu
def test_training_check_on_gpu() -> None:
    rows = train_check.run(cases=(("tiny", 24, 16, 5),))
    assert rows[0]["status"] == "ok" and rows[0]["finite"] and rows[0]["samples_per_s"] > 0


@pytest.mark.gpu
@pytest.mark.slow
def test_cuda_graph_profile_on_gpu() -> None:
    rows = profile_check.run()
    assert not [r for r in rows if r["status"] != "ok"], rows
    graph = [r for r in rows if r["check"].startswith("gpu_profile/cuda_graph/fp")]
    assert len(graph) == 2 * len(profile_check.BATCHES)
    for r in graph:
        assert 0 < r["replay_p50_ms"] <= r["replay_p99_ms"] and r["throughput_tiles_s"] > 0


@pytest.mark.gpu
def test_cuda_python_adapter_on_gpu() -> None:
    rows = {r["check"]: r for r in cuda_adapters.run(("cuda-python",))}
    if rows.get("cuda/cuda-python", {}).get("status") == "skip":
        pytest.skip("cuda-python is not installed")
    assert rows["cuda/cuda-python/h2d_d2h_round_trip"]["bit_exact"]
    assert rows["cuda/cuda-python/cuda_graph_replay"]["status"] == "ok"
