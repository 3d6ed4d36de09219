"""TensorRT runner against strict stand-ins of TensorRT 8.6 / 10.3 / 11.1 and of both CUDA bindings.

The real :class:`~mosaic_edge.edge_runtime.cuda_adapter.CudaAdapter` classes run on fake ``pycuda.driver`` and
cuda-python modules over one driver model (tests/support/fake_cuda.py): every handle must be used in the context it
was made in, pycuda's context stack must be empty at the end, and nothing (stream, event, graph, memory, engine,
execution context, retained context) may be left behind. The test with real TensorRT is marked ``trt``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from onnx import TensorProto

from mosaic_edge.contract import Contract
from mosaic_edge.edge_runtime import cuda_adapter, trt_runner
from mosaic_edge.errors import ContractMismatchError, OptionalDependencyError, UserError
from mosaic_edge.manifest import Manifest
from tests.support import fake_cuda, fake_trt
from tests.support.runtime import (
    TINY_PATCH,
    read_results,
    tiny_contract,
    write_npz_tile,
    write_tiny_onnx,
    write_trt_int8_export,
)

BACKENDS = ("cuda-python", "pycuda")


@pytest.fixture(params=[(v, b) for v in fake_trt.VERSIONS for b in BACKENDS], ids=lambda p: f"trt{p[0]}-{p[1]}")
def gpu(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    version, backend = request.param
    driver = fake_cuda.Driver()
    fake_cuda.install(monkeypatch, driver, backends=(backend,))
    trt = fake_trt.make_trt(version, driver)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    yield SimpleNamespace(trt=trt, driver=driver, backend=backend, version=version)
    # no gc.collect(): what the runner releases must go by reference counting, at once, in its context
    assert driver.check_clean() == []


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_onnx(tmp_path_factory.mktemp("onnx") / "model.onnx", tiny_contract())


@pytest.fixture(scope="module")
def trt_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An export directory as ``export --int8`` writes it: fp32, the TensorRT Q/DQ artefact (fp16 base, opset 19),
    the CPU one, and calib.cache (header of TensorRT 10.3)."""
    return write_trt_int8_export(tmp_path_factory.mktemp("x") / "export", tiny_contract())


def _on_threads(*steps) -> list:
    """Run each step on its own new thread, one after the other; re-raise the first error."""
    results: list = []
    for step in steps:
        box: dict = {}

        def run(step=step, box=box) -> None:
            try:
                box["value"] = step()
            except BaseException as exc:  # noqa: BLE001 - re-raised on the test's thread
                box["error"] = exc

        t = threading.Thread(target=run)
        t.start()
        t.join()
        if "error" in box:
            raise box["error"]
        results.append(box.get("value"))
    return results


def _engine(gpu, onnx: Path) -> bytes:
    return fake_trt.serialize_engine(gpu.trt, onnx)


def _runner(gpu, engine_bytes: bytes, tmp_path: Path, **kw) -> trt_runner.TensorRTRunner:
    path = tmp_path / "model.engine"
    path.write_bytes(engine_bytes)
    return trt_runner.TensorRTRunner(path, tiny_contract(), cuda_backend=gpu.backend, **kw)


def _batch(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"sar": rng.normal(size=(n, 2, TINY_PATCH, TINY_PATCH)).astype(np.float32),
            "optical": rng.normal(size=(n, 12, TINY_PATCH, TINY_PATCH)).astype(np.float32)}


def _expected(batch: dict[str, np.ndarray]) -> np.ndarray:
    return batch["sar"].reshape(len(batch["sar"]), -1).astype(np.float64).mean(axis=1, keepdims=True) + 1.0


def test_runner_infers_variable_batches_with_fixed_buffers(gpu, tiny_onnx: Path, tmp_path: Path) -> None:
    runner = _runner(gpu, _engine(gpu, tiny_onnx), tmp_path, precision="int8", model_hash="h")
    assert runner.max_batch == 16 and runner.inputs == ["sar", "optical"] and runner.last_timings is None
    with runner as r:
        addresses = dict(r._contexts[0].addr)
        host_ids = {k: id(v) for k, v in r._host.items()}
        for n in (1, 5, 16, 3):
            b = _batch(n, seed=n)
            out = r.infer(b)
            assert out["logits"].shape == (n, 19) and out["emb_sar"].shape == (n, 8)
            assert out["logits"].dtype == np.float32
            np.testing.assert_allclose(out["logits"][:, :1], _expected(b), rtol=1e-5)
            assert set(r.last_timings) == {"h2d_ms", "device_ms", "d2h_ms"}
            assert all(isinstance(v, float) and v >= 0 for v in r.last_timings.values())
        assert r._contexts[0].addr == addresses  # addresses set once
        assert {k: id(v) for k, v in r._host.items()} == host_ids  # pinned buffers allocated once
        assert r._host["sar"].shape == (16, 2, TINY_PATCH, TINY_PATCH)  # sized for the profile's max batch
        with pytest.raises(ContractMismatchError, match="max batch"):
            r.infer(_batch(17))
    assert r._cuda.closed  # the fixture then checks that nothing CUDA or TensorRT is left behind


def test_one_primary_context_on_whatever_thread_calls(gpu, trt_export: Path, tmp_path: Path) -> None:
    """Build on one thread, activate on a second, infer on a third, deactivate on a fourth: one context."""
    holder: dict = {}
    b = _batch(4)

    def build() -> None:
        holder["r"] = trt_runner.open_trt_runner(trt_export, precision="int8", engine_dir=tmp_path / "e",
                                                 max_batch=16, cuda_backend=gpu.backend)

    _, _, out, _ = _on_threads(build, lambda: holder["r"].activate(), lambda: holder["r"].infer(b),
                               lambda: holder["r"].deactivate())
    np.testing.assert_allclose(out["logits"][:, :1], _expected(b), rtol=1e-5)
    # one context for everything: pycuda never makes one, the primary context is retained once and pushed per use
    assert gpu.driver.counts.get("make_context", 0) == 0
    assert gpu.driver.counts.get("retain_primary_context", 0) == (1 if gpu.backend == "pycuda" else 0)
    if gpu.backend == "cuda-python":  # cudaSetDevice on every thread that used the runner
        assert gpu.driver.counts["cudaSetDevice"] >= 4


def test_cuda_python_is_preferred_when_both_import(monkeypatch: pytest.MonkeyPatch) -> None:
    driver = fake_cuda.Driver()
    fake_cuda.install(monkeypatch, driver)
    cuda = cuda_adapter.open_cuda_adapter("auto")
    assert cuda.backend == "cuda-python"
    with cuda.current():
        info = cuda.device_info()
    cuda.close()
    assert (info.name, info.compute_capability, info.sm_count, info.driver_version) == ("Orin (fake)", "8.7", 16,
                                                                                        12020)


@pytest.mark.parametrize("release", ["12.2", "12.6"])
def test_cuda_python_12_layouts_work(monkeypatch: pytest.MonkeyPatch, release: str) -> None:
    fake_cuda.install(monkeypatch, fake_cuda.Driver(), backends=("cuda-python",), cuda_python=release)
    cuda = cuda_adapter.open_cuda_adapter("cuda-python")
    with cuda.current():
        assert cuda.device_info().runtime_version == int(release.split(".")[0]) * 1000 + int(release[-1]) * 10
    cuda.close()


def test_cuda_python_13_on_a_cuda_12_driver_names_the_pin(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cuda.install(monkeypatch, fake_cuda.Driver(driver_version=12020), backends=("cuda-python",),
                      cuda_python="13.0")
    with pytest.raises(cuda_adapter.CudaError, match=r"cuda-python>=12\.2,<13"):
        cuda_adapter.open_cuda_adapter("cuda-python")


def test_pycuda_adapter_balances_its_context_stack_and_detaches(monkeypatch: pytest.MonkeyPatch) -> None:
    driver = fake_cuda.Driver()
    fake_cuda.install(monkeypatch, driver, backends=("pycuda",))
    cuda = cuda_adapter.open_cuda_adapter("auto")
    assert cuda.backend == "pycuda"
    with cuda.current():
        stream = cuda.stream()
        with pytest.raises(fake_cuda.FakeCudaError):  # outside its context a handle is refused
            driver.get(int(stream.handle), "stream", "test", ctx=fake_cuda.Ctx("other", primary=False))
        del stream
    assert driver.pycuda_stacks[threading.get_ident()] == []
    cuda.close()
    assert driver.check_clean() == []
    with pytest.raises(cuda_adapter.CudaError, match="closed"), cuda.current():
        pass


def test_cuda_graphs_one_execution_context_per_batch_size(gpu, tiny_onnx: Path, tmp_path: Path) -> None:
    if gpu.backend != "cuda-python":
        with pytest.raises(UserError, match="cuda-python"):
            _runner(gpu, _engine(gpu, tiny_onnx), tmp_path, cuda_graphs=True)
        return
    with _runner(gpu, _engine(gpu, tiny_onnx), tmp_path, cuda_graphs=True) as r:
        sizes = (4, 4, 2, 4, 2, 2)
        for n in sizes:  # replaying 4's graph after 2 was set up reads stale state if they share a context
            b = _batch(n, seed=10 + n)
            np.testing.assert_allclose(r.infer(b)["logits"][:, :1], _expected(b), rtol=1e-5)
        assert sorted(r._graphs) == [2, 4] and sorted(r._contexts) == [2, 4]
        assert gpu.driver.timeline.count("begin_capture") == 2 and gpu.driver.timeline.count("launch") == 4


def test_timings_split_copies_execution_and_capture(gpu, tiny_onnx: Path, tmp_path: Path) -> None:
    graphs = gpu.backend == "cuda-python"
    with _runner(gpu, _engine(gpu, tiny_onnx), tmp_path, cuda_graphs=graphs) as r:
        staged: list[np.ndarray] = []
        gpu.driver.on_record.append(lambda ev: staged.append(np.array(r._host["sar"][:3])))
        for call in range(3):
            b = _batch(3, seed=call)
            gpu.driver.timeline.clear()
            staged.clear()
            r.infer(b)
            # the h2d start event is recorded after the input is cast and copied into pinned memory
            np.testing.assert_array_equal(staged[0], b["sar"])
            records = [i for i, e in enumerate(gpu.driver.timeline) if e.startswith("record")]
            span = gpu.driver.timeline[records[1] + 1: records[2]]  # between "after h2d" and "after execution"
            assert span == (["launch"] if graphs and call else ["execute"]), span  # GPU execution only
            if graphs and call == 0:
                assert r.last_timings["graph_capture_ms"] > 0  # capture + instantiate reported apart
                assert gpu.driver.timeline[records[3] + 1:][0] == "begin_capture"
            else:
                assert "graph_capture_ms" not in r.last_timings


def test_profile_labels_and_keys_of_the_trt_timings(gpu, tiny_onnx: Path, tmp_path: Path) -> None:
    """``profile`` moves the copies to h2d/d2h, keeps GPU execution apart and the graph capture out of both."""
    from mosaic_edge.edge_runtime import profile_report, profiling

    graphs = gpu.backend == "cuda-python"
    clock = profiling.StageClock()
    with _runner(gpu, _engine(gpu, tiny_onnx), tmp_path, cuda_graphs=graphs) as r:
        for _ in range(2):
            with clock.iteration():
                profiling._infer_timed(r, _batch(4), clock)
    assert set(r.last_timings) >= {*profiling.RUNNER_SPLIT_KEYS.values(), profiling.DEVICE_KEY}
    assert len(clock.extra["inference_device"]) == 2 and clock.samples["h2d"][-1] == r.last_timings["h2d_ms"]
    assert len(clock.extra.get("graph_capture", [])) == (1 if graphs else 0)  # first call of the size only
    head = profile_report.render_table({
        "stages": list(profiling.STAGES), "environment": {}, "notes": [],
        "configurations": [{"runner": "trt", "precision": "int8", "batch": 4, "artefact": "m", "artefact_sha256": "h",
                            "stages": {s: {"p50_ms": 0.1} for s in profiling.STAGES},
                            "device": {"p50_ms": 0.05}, "end_to_end": {"p50_ms": 1, "p90_ms": 1, "p99_ms": 1},
                            "throughput_tiles_s": 1.0, "energy_per_tile_mj": None}]}).splitlines()[1]
    assert {"h2d copy", "infer host", "d2h copy", "gpu exec"} <= {c.strip() for c in head.split("  ") if c.strip()}


@pytest.mark.parametrize("reject", ["shape", "address"])
def test_shape_and_address_failures_name_the_tensor(gpu, tiny_onnx: Path, tmp_path: Path, reject: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    engine = _engine(gpu, tiny_onnx)
    refusing = fake_trt.make_trt(gpu.version, gpu.driver, reject=reject)
    monkeypatch.setitem(sys.modules, "tensorrt", refusing)
    r = _runner(gpu, engine, tmp_path)
    what = "input shape" if reject == "shape" else "device address"
    with pytest.raises(RuntimeError, match=f"rejected .*{what}.*'sar'|rejected the {what} of tensor 'sar'"):
        r.activate()
    assert not r.is_active and not r._host and not r._dev  # what activate got before the failure is released
    r.close()


def test_fp16_io_engine_is_staged_in_fp16_and_returns_float32(gpu, tmp_path: Path) -> None:
    """Raw-input / fp16 artefacts: the engine's I/O dtypes decide the pinned buffers, outputs come back float32."""
    f16, f32 = TensorProto.FLOAT16, TensorProto.FLOAT
    onnx = fake_trt.write_onnx(tmp_path / "fp16io.onnx", patch=TINY_PATCH,
                               inputs={"sar": ((2, TINY_PATCH, TINY_PATCH), f16),
                                       "optical": ((12, TINY_PATCH, TINY_PATCH), f16)},
                               outputs={"logits": ((19,), f16), "logits_sar": ((19,), f32),
                                        "logits_optical": ((19,), f16), "emb_sar": ((8,), f16),
                                        "emb_optical": ((8,), f16)})
    with _runner(gpu, _engine(gpu, onnx), tmp_path) as r:
        assert r._host["optical"].dtype == np.float16 and r._host["logits"].dtype == np.float16
        assert r.describe()["io_dtypes"]["logits_sar"] == "float32"
        b = _batch(3)
        out = r.infer(b)
        assert all(v.dtype == np.float32 for v in out.values())
        ref = b["sar"].astype(np.float16).reshape(3, -1).astype(np.float64).mean(axis=1, keepdims=True) + 1
        np.testing.assert_allclose(out["logits"][:, :1], ref, rtol=2e-3)


def test_a_batch_assembled_in_the_input_buffers_lands_in_pinned_memory(gpu, tiny_onnx: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """While active, ``input_buffers`` are the pinned staging buffers: no host copy before the device copy."""
    runner = _runner(gpu, _engine(gpu, tiny_onnx), tmp_path, precision="int8", model_hash="h")
    inactive = runner.input_buffers(4)
    assert all(v is not runner._host.get(k) for k, v in inactive.items())  # plain arrays before activation
    copies: list[int] = []
    real = np.copyto

    def counting(dst, src, **kw):
        copies.append(1)
        return real(dst, src, **kw)

    with runner as r:
        bufs = r.input_buffers(5)
        assert all(bufs[k] is r._host[k] for k in r.inputs)
        b = _batch(5, seed=7)
        for k in r.inputs:
            bufs[k][:5] = b[k]
        monkeypatch.setattr(trt_runner.np, "copyto", counting)
        out = r.infer({k: bufs[k][:5] for k in r.inputs})
        assert copies == []  # already staged
        np.testing.assert_allclose(out["logits"][:, :1], _expected(b), rtol=1e-5)
        out = r.infer(_batch(3, seed=8))  # a batch from elsewhere is still staged by a copy
        assert len(copies) == len(r.inputs)
        np.testing.assert_allclose(out["logits"][:, :1], _expected(_batch(3, seed=8)), rtol=1e-5)
        assert r.input_buffers(17)["sar"].shape[0] == 17  # beyond the profile: host arrays (infer refuses them)


def test_engine_missing_contract_tensors_is_refused(gpu, tmp_path: Path) -> None:
    onnx = fake_trt.write_onnx(tmp_path / "m.onnx", patch=TINY_PATCH, outputs={"logits": ((19,), TensorProto.FLOAT)})
    with pytest.raises(ContractMismatchError, match="logits_sar"):
        _runner(gpu, _engine(gpu, onnx), tmp_path)


def test_cuda_graphs_without_cuda_python_are_refused_before_any_engine_is_built(gpu, trt_export: Path,
                                                                                 tmp_path: Path) -> None:
    if gpu.backend != "pycuda":
        pytest.skip("cuda-python captures graphs")
    with pytest.raises(UserError, match="CUDA graphs need the cuda-python adapter"):
        trt_runner.open_trt_runner(trt_export, engine_dir=tmp_path / "engines", cuda_backend="pycuda",
                                   cuda_graphs=True)
    assert not [c for c in gpu.trt.calls if c[0] == "build_serialized_network"]
    assert not (tmp_path / "engines").exists() or not any((tmp_path / "engines").glob("*.engine"))


def test_open_trt_runner_builds_then_loads_from_cache(gpu, trt_export: Path, tmp_path: Path) -> None:
    export = trt_export
    kw = {"engine_dir": tmp_path / "engines", "max_batch": 16, "cuda_backend": gpu.backend}
    with trt_runner.open_trt_runner(export, **kw) as r:  # no precision: the manifest's best (int8)
        assert r.precision == "int8"
        assert r.model_path.name == ("model.onnx" if gpu.version.startswith("8.") else "model.int8.onnx")
    assert [c for c in gpu.trt.calls if c[0] == "build_serialized_network"]
    gpu.trt.calls.clear()
    with trt_runner.open_trt_runner(export, **kw) as r:  # second start: loads, no build
        assert r.infer(_batch(2))["logits"].shape == (2, 19)
    assert gpu.trt.calls == []
    engine = next((tmp_path / "engines").glob("*.engine"))
    meta = json.loads(engine.with_name(engine.name + ".json").read_text())
    legacy = gpu.version.startswith("8.")  # 8.6 cannot read the opset-19 artefact: model.onnx + calib.cache
    assert {k: meta[k] for k in ("gpu_name", "compute_capability", "sm_count", "driver_version", "workspace_mb",
                                 "precision", "onnx_precision")} == {
        "gpu_name": "Orin (fake)", "compute_capability": "8.7", "sm_count": 16, "driver_version": 12020,
        "workspace_mb": 1024, "precision": "int8", "onnx_precision": "fp32" if legacy else "int8"}
    assert bool(meta["calib_sha256"]) == legacy
    engine.write_bytes(b"corrupt")  # e.g. a half-written file after power loss
    trt_runner.open_trt_runner(export, **kw).deactivate()
    assert [c for c in gpu.trt.calls if c[0] == "build_serialized_network"]
    assert (tmp_path / "engines" / "timing.cache").is_file()


def test_another_orin_module_rebuilds(trt_export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same GPU name, another SM count (Orin NX vs AGX): another engine."""
    export = trt_export
    built = []
    for sms in (16, 8, 16):
        driver = fake_cuda.Driver(sm_count=sms)
        fake_cuda.install(monkeypatch, driver, backends=("cuda-python",))
        trt = fake_trt.make_trt("10.3.0", driver)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        trt_runner.open_trt_runner(export, engine_dir=tmp_path / "e", max_batch=16).deactivate()
        built.append(any(c[0] == "build_serialized_network" for c in trt.calls))
    assert built == [True, True, False] and len(list((tmp_path / "e").glob("*.engine"))) == 2


@pytest.mark.parametrize(("artefact", "want"), [("model.onnx", "fp32"), ("model.fp16.onnx", "fp16"),
                                                ("model.int8.onnx", "int8")])
def test_precision_label_comes_from_the_manifest(gpu, trt_export: Path, tmp_path: Path, artefact: str,
                                                 want: str) -> None:
    import shutil

    export = Path(shutil.copytree(trt_export, tmp_path / "export"))
    from mosaic_edge.export.fp16 import convert_fp16

    convert_fp16(export / "model.onnx", export / "model.fp16.onnx")
    Manifest.load(export).with_artefact("model.fp16.onnx", "fp16", "any", opset=17).save()
    open_it = lambda: trt_runner.open_trt_runner(export / artefact, engine_dir=tmp_path / "e",  # noqa: E731
                                                 max_batch=16, cuda_backend=gpu.backend)
    if gpu.version.startswith("8.") and artefact == "model.int8.onnx":
        with pytest.raises(UserError, match="node .*scale"):  # 8.6 reads Q/DQ scales as float32
            open_it()
        return
    with open_it() as r:
        assert r.precision == want and r.describe()["precision"] == want
        from mosaic_edge.edge_runtime.pipeline import predict_paths

        tile = write_npz_tile(tmp_path / "t.npz")
        ((_, records, error),) = list(predict_paths(r, [tile], batch=4))
        assert error is None and records and {rec["precision"] for rec in records} == {want}
    meta = next((tmp_path / "e").glob("*.engine.json")).read_text()
    assert json.loads(meta)["precision"] == want


def test_a_bare_onnx_needs_a_precision(gpu, tiny_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="give --precision"):
        trt_runner.open_trt_runner(tiny_onnx, contract=tiny_contract(), engine_dir=tmp_path, cuda_backend=gpu.backend)
    with trt_runner.open_trt_runner(tiny_onnx, "fp32", contract=tiny_contract(), engine_dir=tmp_path,
                                    cuda_backend=gpu.backend, max_batch=16) as r:
        assert r.precision == "fp32"


def test_serve_trt_exits_0_after_sigterm(gpu, trt_export: Path, tmp_path: Path, capsys: pytest.CaptureFixture
                                        ) -> None:
    from mosaic_edge.cli import main

    export = trt_export
    spool = tmp_path / "spool"
    (spool / "incoming").mkdir(parents=True)
    for i in range(3):
        write_npz_tile(spool / "incoming" / f"t{i}.npz", seed=i)
        (spool / "incoming" / f"t{i}.ready").touch()

    returned = threading.Event()

    def stop_when_done() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(list((spool / "results").glob("*.jsonl"))) < 3:
            if returned.wait(0.05):
                return  # serve ended by itself (a failure): never signal the test process
        os.kill(os.getpid(), signal.SIGTERM)

    killer = threading.Thread(target=stop_when_done)
    killer.start()
    try:
        with pytest.raises(SystemExit) as info:
            main(["serve", "--model", str(export), "--spool", str(spool), "--runner", "trt", "--engine-dir",
                  str(tmp_path / "e"), "--settle-s", "0", "--poll-s", "0.05", "--max-wait-ms", "5"])
    finally:
        returned.set()
        killer.join()
    assert info.value.code == 0, capsys.readouterr().err
    assert len(list((spool / "results").glob("*.jsonl"))) == 3
    records = [json.loads(line) for p in (spool / "results").glob("*.jsonl") for line in p.read_text().splitlines()]
    assert {r["runner"] for r in records} == {"trt"} and {r["precision"] for r in records} == {"int8"}
    # the fixture checks: pycuda stack empty on every thread, runner lifecycle balanced, nothing left behind


def test_without_tensorrt_the_error_names_the_install_route(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(OptionalDependencyError, match=r"mosaic-edge\[trt\]"):
        trt_runner.TensorRTRunner(b"x", Contract(patch_size=TINY_PATCH))


@pytest.mark.trt
@pytest.mark.gpu
def test_real_tensorrt_builds_and_runs_a_qdq_model(tmp_path: Path) -> None:
    """With TensorRT and a GPU: quantize the runtime fixture model, build int8, compare with ORT."""
    pytest.importorskip("onnxruntime")
    from mosaic_edge.calibration.quantize import quantize_qdq
    from mosaic_edge.edge_runtime.runner import OnnxRuntimeRunner

    contract = tiny_contract()
    fp32 = write_tiny_onnx(tmp_path / "model.onnx", contract)
    rng = np.random.default_rng(0)
    p = contract.patch_size
    calib = {"sar": rng.normal(size=(32, 2, p, p)).astype(np.float32),
             "optical": rng.normal(size=(32, 12, p, p)).astype(np.float32)}
    q = quantize_qdq(fp32, tmp_path / "model.int8.onnx", calib, "minmax", "tensorrt")
    batch = {k: v[:4] for k, v in calib.items()}
    with OnnxRuntimeRunner(q.path, contract, precision="int8") as ort_r:
        ref = ort_r.infer(batch)
    with trt_runner.open_trt_runner(q.path, "int8", contract=contract, engine_dir=tmp_path / "e", max_batch=8,
                                    opt_batch=4) as r:
        out = r.infer(batch)
    assert np.abs(out["logits"] - ref["logits"]).max() < 0.1 * np.abs(ref["logits"]).max() + 1e-3


def test_int8_engine_with_its_fp16_fallback_engine_in_one_process(gpu, trt_export: Path, tmp_path: Path) -> None:
    """serve --runner trt --precision int8: the fp16 artefact is built as a second engine, re-runs the borderline
    windows, and both runners release everything in the one primary context."""
    import shutil

    from mosaic_edge.cli import main
    from mosaic_edge.envelope import build_envelope
    from mosaic_edge.export.fp16 import convert_fp16
    from mosaic_edge.fallback import FallbackPolicy
    from tests.support.runtime import envelope_windows

    export = tmp_path / "export"
    shutil.copytree(trt_export, export)
    convert_fp16(export / "model.onnx", export / "model.fp16.onnx")
    m = Manifest.load(export).with_artefact("model.fp16.onnx", "fp16", "any")
    art = m.artefacts["model.int8.onnx"]
    m = m.with_artefact("model.int8.onnx", "int8", "tensorrt", opset=art.opset, fallback=FallbackPolicy(100.0))
    contract = tiny_contract()
    m.with_calibration(build_envelope(*envelope_windows(contract), contract), {"n": 96}).save()
    spool = tmp_path / "spool"
    for i in range(3):
        write_npz_tile(spool / "incoming" / f"t{i}.npz", 32, 32, seed=i)
    with pytest.raises(SystemExit) as info:
        main(["serve", "--model", str(export), "--spool", str(spool), "--runner", "trt", "--precision", "int8",
              "--engine-dir", str(tmp_path / "e"), "--settle-s", "0", "--poll-s", "0.05", "--max-wait-ms", "5",
              "--once", "--batch", "8"])
    assert info.value.code == 0
    records = [r for rs in read_results(spool).values() for r in rs]  # the window records
    assert len(records) == 12 and {r["precision"] for r in records} == {"int8"}
    # a margin of 100 logits: every window is borderline, so the fp16 engine answers all of them
    assert {r["answered_by"] for r in records} == {"fp16"} and {r["rerun"] for r in records} <= {
        "borderline", "borderline+drifted"}
    engines = sorted(p.name for p in (tmp_path / "e").rglob("*.engine"))
    assert len(engines) == 2, engines  # the INT8 and the fp16 engine, each cached under its own key
    # the fixture checks: both runners left nothing behind, pycuda's stacks are empty on every thread
