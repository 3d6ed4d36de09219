"""TensorRT runner: name-based I/O, pinned buffers for the max batch, CUDA graphs, engine cache integration.

Runs against call-recording stand-ins of tensorrt and the CUDA adapter (tests/support/fake_trt.py), so the
buffer/shape logic is tested here; the test with real TensorRT is marked ``trt``, the cuda-python adapter
tests ``gpu``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mosaic_edge.contract import Contract
from mosaic_edge.edge_runtime import trt_runner
from mosaic_edge.errors import ContractMismatchError, OptionalDependencyError
from tests.support import fake_trt

P = 8


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch):
    trt = fake_trt.make_trt("10.3.0")
    cuda = fake_trt.FakeCuda(trt)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(trt_runner, "open_cuda_adapter", lambda backend="auto": cuda)
    return trt, cuda


def _batch(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "sar": rng.normal(size=(n, 2, P, P)).astype(np.float32),
        "optical": rng.normal(size=(n, 12, P, P)).astype(np.float32),
    }


def _expected(batch: dict[str, np.ndarray]) -> np.ndarray:
    return batch["sar"].reshape(len(batch["sar"]), -1).mean(axis=1, keepdims=True) + 1.0


def test_runner_infers_variable_batches_with_fixed_buffers(fakes) -> None:
    trt, cuda = fakes
    engine = trt.Runtime(None).deserialize_cuda_engine(b"ENGINE:x")
    runner = trt_runner.TensorRTRunner(engine, Contract(patch_size=P), precision="int8", model_hash="h")
    assert runner.max_batch == 16 and runner.inputs == ["sar", "optical"]
    assert runner.last_timings is None and runner.model_path is None  # built from an engine object
    with runner as r:
        addresses = dict(r._context.addr)
        host_ids = {k: id(v) for k, v in r._host.items()}
        for k, n in enumerate((1, 5, 16, 3)):
            b = _batch(n, seed=n)
            out = r.infer(b)
            assert out["logits"].shape == (n, 19) and out["emb_sar"].shape == (n, 4)
            np.testing.assert_allclose(out["logits"][:, :1], _expected(b), rtol=1e-6)
            # CUDA-event split of this call, as profiling.py reads it: copies in, execution, copies out.
            assert set(r.last_timings) == {"h2d_ms", "device_ms", "d2h_ms"}
            assert all(isinstance(v, float) and v >= 0 for v in r.last_timings.values())
            assert cuda.records == 4 * (k + 1)
        assert r._context.addr == addresses  # addresses set once
        assert {k: id(v) for k, v in r._host.items()} == host_ids  # pinned buffers allocated once
        assert r._host["sar"].shape == (16, 2, P, P)  # sized for the profile's max batch
        with pytest.raises(ContractMismatchError, match="max batch"):
            r.infer(_batch(17))
    assert cuda.freed == 2 * 7  # 7 pinned + 7 device buffers released


def test_profile_reads_trt_event_times(fakes) -> None:
    """The runner's ``last_timings`` keys are the ones the profiler moves into h2d/d2h and device time."""
    from mosaic_edge.edge_runtime import profiling

    trt, _ = fakes
    engine = trt.Runtime(None).deserialize_cuda_engine(b"ENGINE:x")
    clock = profiling.StageClock()
    with trt_runner.TensorRTRunner(engine, Contract(patch_size=P)) as r, clock.iteration():
        profiling._infer_timed(r, _batch(4), clock)
    assert set(r.last_timings) >= {*profiling.RUNNER_SPLIT_KEYS.values(), profiling.DEVICE_KEY}
    assert clock.extra["inference_device"] == [r.last_timings["device_ms"]]
    assert clock.samples["h2d"] == [r.last_timings["h2d_ms"]]


def test_cuda_graph_captured_once_per_batch_size(fakes) -> None:
    trt, cuda = fakes
    engine = trt.Runtime(None).deserialize_cuda_engine(b"ENGINE:x")
    with trt_runner.TensorRTRunner(engine, Contract(patch_size=P), cuda_graphs=True) as r:
        cuda.replay = lambda: r._context.execute_async_v3(7)
        for n in (4, 4, 4, 2, 4):
            b = _batch(n, seed=10 + n)
            np.testing.assert_allclose(r.infer(b)["logits"][:, :1], _expected(b), rtol=1e-6)
        assert cuda.captures == 2 and sorted(r._graphs) == [2, 4]
        assert cuda.launches == 3  # 3 replays of batch 4; first sight of each size runs and captures


def test_engine_missing_contract_tensors_is_refused(fakes, monkeypatch: pytest.MonkeyPatch) -> None:
    trt = fake_trt.make_trt("10.3.0", outputs={"logits": 19})
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    engine = trt.Runtime(None).deserialize_cuda_engine(b"ENGINE:x")
    with pytest.raises(ContractMismatchError, match="logits_sar"):
        trt_runner.TensorRTRunner(engine, Contract(patch_size=P))


def test_open_trt_runner_builds_then_loads_from_cache(fakes, tmp_path: Path) -> None:
    trt, cuda = fakes
    onnx = tmp_path / "model.int8.onnx"
    onnx.write_bytes(b"onnx")
    kw = {"contract": Contract(patch_size=P), "engine_dir": tmp_path / "engines", "max_batch": 16}
    trt_runner.open_trt_runner(onnx, **kw)
    assert [c for c in trt.calls if c[0] == "build_serialized_network"]
    trt.calls.clear()
    with trt_runner.open_trt_runner(onnx, **kw) as r:  # second start: loads, no build
        assert r.infer(_batch(2))["logits"].shape == (2, 19)
        assert r.model_path == onnx  # the artefact profiles name (and look up in the export report)
    assert trt.calls == []
    engine = next((tmp_path / "engines").glob("*.engine"))
    assert "Fake Orin" in engine.with_name(engine.name + ".json").read_text()
    engine.write_bytes(b"corrupt")  # e.g. a half-written file after power loss
    trt_runner.open_trt_runner(onnx, **kw)
    assert [c for c in trt.calls if c[0] == "build_serialized_network"]
    assert (tmp_path / "engines" / "timing.cache").is_file()


def test_without_tensorrt_the_error_names_the_install_route(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(OptionalDependencyError, match=r"mosaic-edge\[trt\]"):
        trt_runner.TensorRTRunner(b"x", Contract(patch_size=P))


def test_trt_modules_never_import_torch() -> None:
    code = (
        "import sys; import mosaic_edge.edge_runtime.trt_runner, mosaic_edge.edge_runtime.engine_cache, "
        "mosaic_edge.edge_runtime.cuda_adapter, mosaic_edge.edge_runtime.gpu_check, mosaic_edge.export.trt; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


def test_gpu_check_skips_cleanly_without_cuda() -> None:
    from mosaic_edge.edge_runtime import gpu_check
    from mosaic_edge.optional import available

    if available("cuda.bindings.runtime") or available("cuda.cudart"):
        pytest.skip("cuda-python is installed; the gpu-marked test covers it")
    rows = gpu_check.run()
    assert rows == [rows[0]] and rows[0]["status"] == "skipped" and "cuda-python" in rows[0]["reason"]


@pytest.mark.gpu
def test_cuda_python_adapter_round_trip_on_gpu() -> None:
    from mosaic_edge.edge_runtime import gpu_check

    rows = {r["check"]: r for r in gpu_check.run("cuda-python")}
    assert rows["device"]["status"] == "ok" and rows["device"]["name"]
    assert rows["h2d_d2h_round_trip"]["status"] == "ok" and rows["h2d_d2h_round_trip"]["bit_exact"]
    assert rows["cuda_graph_replay"]["status"] == "ok"


@pytest.mark.trt
@pytest.mark.gpu
def test_real_tensorrt_builds_and_runs_a_qdq_model(tmp_path: Path) -> None:
    """With TensorRT and a GPU: quantize the runtime fixture model, build int8, compare with ORT."""
    pytest.importorskip("onnxruntime")
    from mosaic_edge.calibration.quantize import quantize_qdq
    from mosaic_edge.edge_runtime.runner import OnnxRuntimeRunner
    from tests.support.runtime import tiny_contract, write_tiny_onnx

    contract = tiny_contract()
    fp32 = write_tiny_onnx(tmp_path / "model.onnx", contract)
    rng = np.random.default_rng(0)
    p = contract.patch_size
    calib = {
        "sar": rng.normal(size=(32, 2, p, p)).astype(np.float32),
        "optical": rng.normal(size=(32, 12, p, p)).astype(np.float32),
    }
    q = quantize_qdq(fp32, tmp_path / "model.int8.onnx", calib, "minmax", "tensorrt")
    batch = {k: v[:4] for k, v in calib.items()}
    with OnnxRuntimeRunner(q.path, contract, precision="int8") as ort_r:
        ref = ort_r.infer(batch)
    with trt_runner.open_trt_runner(
        q.path, precision="int8", contract=contract, engine_dir=tmp_path / "e", max_batch=8, opt_batch=4
    ) as r:
        out = r.infer(batch)
    assert np.abs(out["logits"] - ref["logits"]).max() < 0.1 * np.abs(ref["logits"]).max() + 1e-3
