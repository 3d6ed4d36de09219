"""GPU check of the TensorRT path: fp16 and INT8 engines from an export directory, timed, compared, both adapters.

For each CUDA adapter that imports (cuda-python, pycuda) and each precision (fp16 from ``model.fp16.onnx``, INT8
from the TensorRT Q/DQ artefact -- or, on TensorRT 8.6, from ``model.onnx`` + ``calib.cache``), through the
runtime's own :func:`~mosaic_edge.edge_runtime.trt_runner.open_trt_runner` (engine built on this GPU, then
cached):

- ``trt/<adapter>/<precision>/engine``: which artefact, build-or-load seconds;
- ``trt/<adapter>/<precision>/b1`` and ``/b8``: GPU execution per batch from the runner's CUDA events (p50/p90),
  host->device and device->host copies;
- ``trt/<adapter>/<precision>/agreement``: label decisions vs ONNX Runtime fp32 (CPU) on the export's calibration
  patches, at least :data:`MIN_AGREEMENT`;
- ``trt/<adapter>/int8_le_fp16_b8``: INT8 no slower than fp16 at batch 8 (what the INT8 artefact is for).

Without ``--export`` a throwaway export of a randomly initialised ``resnet10_micro`` is made (needs torch; its
INT8 gate is disabled, the decisions check still holds the engines to ONNX Runtime).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import fail, row, skip

BATCHES = (1, 8)
WARMUP, ITERATIONS = 10, 50
MIN_AGREEMENT = {"fp16": 0.99, "int8": 0.97}
PRECISIONS = ("fp16", "int8")


def _bindings(backends: tuple[str, ...]) -> list[str]:
    from mosaic_edge.optional import available

    have = {"cuda-python": available("cuda.bindings.runtime") or available("cuda.cudart"),
            "pycuda": available("pycuda.driver")}
    return [b for b in backends if have[b]]


def make_export(out: Path) -> Path:
    """A throwaway export (fp32, fp16, INT8) of a randomly initialised default model."""
    import torch

    from mosaic_edge.contract import Contract
    from mosaic_edge.export.pipeline import ExportConfig, run_export
    from mosaic_edge.train.checkpoint import save_checkpoint
    from mosaic_edge.train.models import build_model

    torch.manual_seed(0)
    ckpt = out / "model.pt"
    save_checkpoint(ckpt, build_model("resnet10_micro").eval(), Contract(model_name="resnet10_micro", patch_size=48))
    config = ExportConfig(fp16=True, int8=True, data="synthetic", calib_size=64, eval_limit=64, parity_limit=16,
                          max_map_drop_pts=100.0)
    run_export(ckpt, out / "export", config)
    return out / "export"


def _inputs(export: Path) -> tuple[Any, dict[str, np.ndarray]]:
    from mosaic_edge.calibration import load_calibration_set
    from mosaic_edge.manifest import Manifest

    contract = Manifest.load(export).contract
    return contract, load_calibration_set(export / "calib.npz", contract)


def _time(runner: Any, batch: dict[str, np.ndarray]) -> dict[str, float]:
    for _ in range(WARMUP):
        runner.infer(batch)
    samples: dict[str, list[float]] = {"device_ms": [], "h2d_ms": [], "d2h_ms": []}
    for _ in range(ITERATIONS):
        runner.infer(batch)
        for key, values in samples.items():
            values.append(float(runner.last_timings[key]))
    return {"device_p50_ms": round(float(np.median(samples["device_ms"])), 4),
            "device_p90_ms": round(float(np.percentile(samples["device_ms"], 90)), 4),
            "h2d_p50_ms": round(float(np.median(samples["h2d_ms"])), 4),
            "d2h_p50_ms": round(float(np.median(samples["d2h_ms"])), 4)}


def _one_adapter(backend: str, export: Path, engines: Path, contract: Any, calib: dict[str, np.ndarray],
                 reference: np.ndarray) -> list[dict[str, Any]]:
    from mosaic_edge.edge_runtime.runner import run_batched
    from mosaic_edge.edge_runtime.trt_runner import open_trt_runner

    rows: list[dict[str, Any]] = []
    b8: dict[str, float] = {}
    for precision in PRECISIONS:
        name = f"trt/{backend}/{precision}"
        try:
            t0 = time.perf_counter()
            runner = open_trt_runner(export, precision, engine_dir=engines, min_batch=1, opt_batch=8, max_batch=8,
                                     cuda_backend=backend)
            rows.append(row(f"{name}/engine", "ok", artefact=runner.model_path.name if runner.model_path else None,
                            seconds=round(time.perf_counter() - t0, 2)))
            with runner:
                for n in BATCHES:
                    numbers = _time(runner, {k: v[:n] for k, v in calib.items()})
                    rows.append(row(f"{name}/b{n}", "ok", **numbers))
                    if n == 8:
                        b8[precision] = numbers["device_p50_ms"]
                logits = run_batched(runner, calib["sar"], calib["optical"], batch=8)["logits"]
            agreement = float((contract.decide(logits) == reference).mean())
            rows.append(row(f"{name}/agreement", "ok" if agreement >= MIN_AGREEMENT[precision] else "fail",
                            agreement=round(agreement, 4), vs="onnxruntime fp32", n=len(logits)))
        except Exception as exc:  # noqa: BLE001 - the other precision / adapter still runs
            rows.append(fail(name, exc))
    if len(b8) == 2:
        ok = b8["int8"] <= b8["fp16"]
        rows.append(row(f"trt/{backend}/int8_le_fp16_b8", "ok" if ok else "fail", int8_ms=b8["int8"],
                        fp16_ms=b8["fp16"], speedup=round(b8["fp16"] / b8["int8"], 3) if b8["int8"] else None))
    return rows


def run(export: Path | None = None, backends: tuple[str, ...] = ("cuda-python", "pycuda")) -> list[dict[str, Any]]:
    """The TensorRT checks of the module docstring; ``export`` defaults to a throwaway one."""
    from mosaic_edge.optional import available

    if not available("tensorrt"):
        return [skip("trt", "tensorrt is not importable")]
    usable = _bindings(backends)
    if not usable:
        return [skip("trt", "neither cuda-python nor pycuda imports")]
    with tempfile.TemporaryDirectory(prefix="mosaic-trt-check-") as tmp:
        if export is None:
            if not available("torch"):
                return [skip("trt", "no --export given and no torch to make one")]
            export = make_export(Path(tmp))
        from mosaic_edge.edge_runtime.runner import open_runner, run_batched

        contract, calib = _inputs(Path(export))
        with open_runner(export, kind="ort", precision="fp32", device="cpu") as ort:
            reference = contract.decide(run_batched(ort, calib["sar"], calib["optical"], batch=8)["logits"])
        rows = []
        for backend in usable:
            rows += _one_adapter(backend, Path(export), Path(tmp) / "engines", contract, calib, reference)
    return rows
