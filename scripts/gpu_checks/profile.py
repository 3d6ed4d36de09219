"""GPU check of the profile: the device-time reference of ``mosaic-edge profile`` on a CUDA GPU.

Without ONNX Runtime's CUDA build or TensorRT the device numbers come from a torch CUDA-graph replay of the
exported model: ``build_model`` -> ``save_checkpoint``/``load_checkpoint`` (train/) -> ``export_onnx`` + manifest
(export/). Per precision (fp32; fp16 with fp32 I/O, like ``model.fp16.onnx``) and batch: host->device copy, graph
replay and device->host copy timed with CUDA events (synchronous per call, through the profile's
:class:`~mosaic_edge.edge_runtime.profiling.StageClock`), then pipelined replays for throughput. The fp32 graph's
logits are compared with ONNX Runtime (CPU) on the same batch, so the replay is known to be the exported model. The
profile command itself also runs on the export (ORT on CPU). Without torch or CUDA: one ``skip`` row.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from . import fail, row, skip

ARCH = "resnet18"
BATCHES = (1, 4, 16)
ITERATIONS = 50
WARMUP = 10
PIPELINED_REPLAYS = 100
# fp32 graph vs ORT CPU on the same weights: kernels differ (cuDNN vs MLAS; TF32 off), so only float noise.
MAX_LOGIT_DIFF = 1e-2


def _export(tmp: Path) -> tuple[Any, Any, Path]:
    """(model on CPU, contract, export dir) through the train checkpoint and the export stage."""
    import torch

    from mosaic_edge.contract import Contract
    from mosaic_edge.export.onnx_export import export_onnx
    from mosaic_edge.manifest import Manifest
    from mosaic_edge.train.checkpoint import load_checkpoint, save_checkpoint
    from mosaic_edge.train.models import build_model

    torch.manual_seed(0)
    ckpt = tmp / "model.pt"
    save_checkpoint(ckpt, build_model(ARCH).eval(), Contract(model_name=ARCH))
    model, contract = load_checkpoint(ckpt)
    out = tmp / "export"
    export_onnx(model, contract, out / "model.onnx")
    Manifest.create(contract, out).with_artefact("model.onnx", "fp32", "any").save()
    return model, contract, out


def _graph_profile(model: Any, contract: Any, precision: str, batch: int) -> dict[str, Any]:
    """CUDA-graph replay of one (precision, batch): per-stage device ms and pipelined tiles/s."""
    import torch

    from mosaic_edge.edge_runtime.profiling import StageClock

    dev = torch.device("cuda")
    dtype = torch.float16 if precision == "fp16" else torch.float32
    # fp32 means fp32: TF32 tensor-core math would differ from the fp32 ONNX artefact by more than noise.
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision != "fp32"
    net = model.to(dev, dtype=dtype).eval()
    shapes = contract.input_shapes(batch)
    gen = torch.Generator().manual_seed(batch)
    host_in = {k: torch.randn(*shapes[k], generator=gen).pin_memory() for k in contract.input_names}
    static_in = {k: v.to(dev) for k, v in host_in.items()}

    def forward() -> dict[str, Any]:
        out = net(static_in["sar"].to(dtype), static_in["optical"].to(dtype))  # fp32 I/O like the fp16 ONNX
        return {k: out[k].float() for k in contract.output_names}

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.no_grad(), torch.cuda.stream(side):
        for _ in range(3):
            forward()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        static_out = forward()
    host_out = {k: torch.empty(v.shape, dtype=v.dtype, pin_memory=True) for k, v in static_out.items()}

    events = [torch.cuda.Event(enable_timing=True) for _ in range(4)]

    def once() -> None:
        events[0].record()
        for k in static_in:
            static_in[k].copy_(host_in[k], non_blocking=True)
        events[1].record()
        graph.replay()
        events[2].record()
        for k in static_out:
            host_out[k].copy_(static_out[k], non_blocking=True)
        events[3].record()

    for _ in range(WARMUP):
        once()
    torch.cuda.synchronize()
    clock = StageClock(("h2d", "inference", "d2h"))
    for _ in range(ITERATIONS):
        with clock.iteration():
            once()
            events[3].synchronize()
            for stage, (a, b) in zip(("h2d", "inference", "d2h"), ((0, 1), (1, 2), (2, 3)), strict=True):
                clock.add(stage, events[a].elapsed_time(events[b]))
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(PIPELINED_REPLAYS):
        once()
    end.record()
    end.synchronize()
    summary = clock.summary()
    return {"stages": summary["stages"], "end_to_end_host": summary["end_to_end"],
            "throughput_tiles_s": PIPELINED_REPLAYS * batch / (start.elapsed_time(end) / 1e3),
            "logits": host_out["logits"].numpy().copy(), "inputs": {k: v.numpy() for k, v in host_in.items()}}


def _ort_logits(export: Path, inputs: dict[str, Any]) -> Any:
    from mosaic_edge.edge_runtime.runner import open_runner

    with open_runner(export, kind="ort", device="cpu") as runner:
        return runner.infer(inputs)["logits"]


def run() -> list[dict[str, Any]]:
    """Profile the exported model on the GPU; one row per configuration."""
    try:
        import torch
    except ImportError:
        return [skip("gpu_profile", "torch is not installed")]
    if not torch.cuda.is_available():
        return [skip("gpu_profile", "no CUDA device")]
    import numpy as np

    from mosaic_edge.edge_runtime.profile_run import ProfileConfig, profile_to_dir

    results: list[dict[str, Any]] = []
    gpu = torch.cuda.get_device_name(0)
    with tempfile.TemporaryDirectory(prefix="mosaic-gpu-profile-") as tmp:
        model, contract, export = _export(Path(tmp))
        for precision in ("fp32", "fp16"):
            for batch in BATCHES:
                name = f"gpu_profile/cuda_graph/{precision}/b{batch}"
                try:
                    t0 = time.perf_counter()
                    res = _graph_profile(model, contract, precision, batch)
                    st = res["stages"]
                    numbers: dict[str, Any] = {
                        "gpu": gpu, "arch": ARCH, "precision": precision, "batch": batch,
                        "h2d_p50_ms": st["h2d"]["p50_ms"], "replay_p50_ms": st["inference"]["p50_ms"],
                        "replay_p99_ms": st["inference"]["p99_ms"], "d2h_p50_ms": st["d2h"]["p50_ms"],
                        "e2e_host_p50_ms": res["end_to_end_host"]["p50_ms"],
                        "throughput_tiles_s": round(res["throughput_tiles_s"], 1),
                        "seconds": round(time.perf_counter() - t0, 2)}
                    status = "ok"
                    if precision == "fp32":
                        diff = float(np.max(np.abs(res["logits"] - _ort_logits(export, res["inputs"]))))
                        numbers["max_logit_diff_vs_ort_cpu"] = diff
                        status = "ok" if diff <= MAX_LOGIT_DIFF else "fail"
                    results.append(row(name, status, **numbers))
                except Exception as exc:  # noqa: BLE001 - one failed configuration must not hide the others
                    results.append(fail(name, exc))
        try:
            config = ProfileConfig(model=export, runner="ort", batches=BATCHES, iterations=20, warmup=3)
            doc, _ = profile_to_dir(config, Path(tmp) / "profile")
            results.append(row("gpu_profile/ort_cpu_profile", "ok", configurations=len(doc["configurations"])))
        except Exception as exc:  # noqa: BLE001
            results.append(fail("gpu_profile/ort_cpu_profile", exc))
    return results
