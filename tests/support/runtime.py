"""Runtime test helpers: a tiny ONNX model with the contract's I/O (onnx.helper), export directories, tiles.

The model is real arithmetic (global average pool -> linear heads, fused = mean of the two heads,
L2-normalised embeddings), so outputs depend on the inputs and runner/daemon results can be compared with a
direct run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mosaic_edge.contract import Contract
from mosaic_edge.tile_format import write_tile

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_PATCH = 16
EMBED = 8


def tiny_contract(patch: int = TINY_PATCH) -> Contract:
    return Contract(patch_size=patch, model_name="tiny-onnx-fixture",
                    thresholds=tuple(0.3 + 0.02 * i for i in range(19)))


def write_tiny_onnx(path: Path, contract: Contract, seed: int = 0) -> Path:
    """Write a small ONNX model with the contract's inputs/outputs and its JSON in metadata_props."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    c = contract.num_classes
    nodes, inits = [], []
    outputs = {}
    for name, chans in (("sar", len(contract.sar_bands)), ("optical", len(contract.optical_bands))):
        w_emb = rng.normal(size=(chans, EMBED)).astype(np.float32)
        w_cls = rng.normal(size=(EMBED, c)).astype(np.float32)
        b_cls = rng.normal(scale=0.5, size=(c,)).astype(np.float32)
        inits += [numpy_helper.from_array(w_emb, f"{name}_we"), numpy_helper.from_array(w_cls, f"{name}_wc"),
                  numpy_helper.from_array(b_cls, f"{name}_bc")]
        nodes += [
            helper.make_node("GlobalAveragePool", [name], [f"{name}_gap"]),
            helper.make_node("Flatten", [f"{name}_gap"], [f"{name}_flat"], axis=1),
            helper.make_node("MatMul", [f"{name}_flat", f"{name}_we"], [f"{name}_e"]),
            helper.make_node("Tanh", [f"{name}_e"], [f"{name}_t"]),
            helper.make_node("ReduceL2", [f"{name}_t"], [f"{name}_n"], axes=[1], keepdims=1),
            helper.make_node("Div", [f"{name}_t", f"{name}_n"], [f"emb_{name}"]),
            helper.make_node("Gemm", [f"{name}_t", f"{name}_wc", f"{name}_bc"], [f"logits_{name}"]),
        ]
        outputs[name] = chans
    inits.append(numpy_helper.from_array(np.array(0.5, np.float32), "half"))
    nodes += [helper.make_node("Add", ["logits_sar", "logits_optical"], ["lsum"]),
              helper.make_node("Mul", ["lsum", "half"], ["logits"])]
    p = contract.patch_size
    inputs = [helper.make_tensor_value_info("sar", TensorProto.FLOAT, ["N", len(contract.sar_bands), p, p]),
              helper.make_tensor_value_info("optical", TensorProto.FLOAT,
                                            ["N", len(contract.optical_bands), p, p])]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", c if n.startswith("logits") else EMBED])
            for n in contract.output_names]
    graph = helper.make_graph(nodes, "tiny", inputs, outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, contract.to_metadata())
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def write_tiny_export(out: Path, contract: Contract) -> Path:
    """An export directory like `mosaic-edge export` writes: fp32, TRT Q/DQ int8 and CPU int8 + manifest.

    The three files get different weights (seeds) so a test can tell which one a runner picked.
    """
    from mosaic_edge.manifest import Manifest

    files = {"model.onnx": ("fp32", "any", 0), "model.int8.onnx": ("int8", "tensorrt", 1),
             "model.int8-cpu.onnx": ("int8", "cpu", 2)}
    manifest = Manifest.create(contract, out)
    for name, (prec, target, seed) in files.items():
        write_tiny_onnx(out / name, contract, seed)
        manifest = manifest.with_artefact(name, prec, target, opset=17, inputs=dict(contract.input_shapes()),
                                          outputs=tuple(contract.output_names))
    manifest.save()
    return out


def write_trt_int8_export(out: Path, contract: Contract, fp16: bool = False, calib_npz: bool = False) -> Path:
    """:func:`write_tiny_export` with a real TensorRT Q/DQ artefact as ``export --int8`` writes it (minmax
    calibration on 16 random patches, opset 19) and its calib.cache (TensorRT 10.3 header); ``fp16`` adds
    model.fp16.onnx, ``calib_npz`` the calibration set."""
    from mosaic_edge.calibration import save_calibration_set
    from mosaic_edge.calibration.quantize import quantize_qdq
    from mosaic_edge.manifest import Manifest
    from mosaic_edge.trt_calib_cache import write_calib_cache

    write_tiny_export(out, contract)
    rng = np.random.default_rng(0)
    p = contract.patch_size
    calib = {"sar": rng.normal(size=(16, 2, p, p)).astype(np.float32),
             "optical": rng.normal(size=(16, 12, p, p)).astype(np.float32)}
    q = quantize_qdq(out / "model.onnx", out / "model.int8.onnx", calib, "minmax", "tensorrt")
    write_calib_cache(out / "calib.cache", q.amax)
    m = Manifest.load(out).with_artefact("model.int8.onnx", "int8", "tensorrt", opset=19)
    if fp16:
        from mosaic_edge.export.fp16 import convert_fp16

        convert_fp16(out / "model.onnx", out / "model.fp16.onnx")
        m = m.with_artefact("model.fp16.onnx", "fp16", "any", opset=17)
    if calib_npz:
        save_calibration_set(out / "calib.npz", calib, contract)
        m = m.with_file("calib.npz", "calibration-set")
    m.with_file("calib.cache", "tensorrt-calib-cache").save()
    return out


# ---- tile writers ------------------------------------------------------------------------------------------
def raw_tile(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Plausible raw S1 (dB, float32) and S2 (reflectance x 1e4, uint16) arrays of one tile."""
    rng = np.random.default_rng(seed)
    sar = rng.normal(-15.0, 4.0, (2, h, w)).astype(np.float32)
    optical = rng.uniform(100, 4000, (12, h, w)).astype(np.uint16)
    return sar, optical


def write_npz_tile(path: Path, h: int = TINY_PATCH, w: int = TINY_PATCH, seed: int = 0, optical: bool = True,
                   **extra: Any) -> Path:
    """A plausible ``.npz`` tile (``extra``: ``cloudy``, ``transform``, ``crs`` of :func:`write_tile`)."""
    sar, opt = raw_tile(h, w, seed)
    return write_tile(path, sar, opt if optical else None, **extra)


def write_geotiff_tile(folder: Path, h: int = 40, w: int = 40, seed: int = 0, geo: bool = True,
                       crs2: str | None = None) -> Path:
    from mosaic_edge.data.tiff import GeoInfo, write_tiff

    sar, opt = raw_tile(h, w, seed)
    g1 = GeoInfo((10.0, 0.0, 500000.0, 0.0, -10.0, 5800000.0), "EPSG:32633") if geo else None
    g2 = GeoInfo(g1.transform, crs2 or g1.crs) if g1 else None
    write_tiff(folder / "s1.tif", sar, g1)
    write_tiff(folder / "s2.tif", opt, g2)
    return folder


def copy_benv2_tile(root: Path, index: int, dest: Path) -> Path:
    """Copy the S1 and S2 per-band folders of benv2-mini pair ``index`` into tile folder ``dest``."""
    import shutil

    from mosaic_edge.data.benv2 import BigEarthNetV2

    src = BigEarthNetV2(root, "train")
    s1, s2 = src.folders(index)
    shutil.copytree(s1, dest / s1.name)
    shutil.copytree(s2, dest / s2.name)
    return dest


def read_results(spool: Path) -> dict[str, list[dict]]:
    """results/<tile>.jsonl -> its parsed window records (the tile summary of the first line checked and left
    out: :func:`read_summaries`)."""
    out = {}
    for p in sorted((spool / "results").glob("*.jsonl")):
        summary, *records = [json.loads(line) for line in p.read_text().splitlines()]
        assert summary["type"] == "tile" and summary["tile"] == p.stem and summary["windows"] == len(records)
        assert all("type" not in r and r["input_sha256"] == summary["input_sha256"] for r in records)
        out[p.stem] = records
    return out


def read_summaries(spool: Path) -> dict[str, dict]:
    """results/<tile>.jsonl -> its tile summary (the first line)."""
    return {p.stem: json.loads(p.read_text().split("\n", 1)[0]) for p in sorted((spool / "results").glob("*.jsonl"))}


def serve_once(model: Path, spool: Path, **config) -> object:
    """Run the daemon in-process over ``spool`` until incoming/ is drained; return the daemon."""
    from mosaic_edge.edge_runtime.daemon import Daemon, ServeConfig
    from mosaic_edge.edge_runtime.runner import open_runner

    cfg = {"settle_s": 0.0, "poll_s": 0.05, "max_wait_ms": 5.0, "once": True, **config}
    daemon = Daemon(open_runner(model, kind="ort", device="cpu", threads=1), spool, ServeConfig(**cfg))
    assert daemon.run() == 0
    return daemon


# ---- an export with the INT8 safety net --------------------------------------------------------------------
def perturb_logits(src: Path, dest: Path, delta: np.ndarray) -> Path:
    """A copy of a tiny ONNX model whose ``logits`` and ``logits_sar`` are shifted by ``delta`` [C] (per class):
    an "INT8" artefact whose answers differ from the fp32 ones on purpose, by a known amount."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    for name in ("logits", "logits_sar"):
        raw = f"{name}_unperturbed"
        for node in graph.node:
            node.input[:] = [raw if i == name else i for i in node.input]
            node.output[:] = [raw if o == name else o for o in node.output]
        graph.initializer.append(numpy_helper.from_array(np.asarray(delta, np.float32), f"{name}_delta"))
        graph.node.append(helper.make_node("Add", [raw, f"{name}_delta"], [name]))
    onnx.checker.check_model(model)
    onnx.save(model, str(dest))
    return dest


def envelope_windows(contract: Contract, n: int = 96, seed: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Raw calibration windows [n, 2, P, P] / [n, 12, P, P] like :func:`raw_tile`'s tiles."""
    p = contract.patch_size
    pairs = [raw_tile(p, p, seed + i) for i in range(n)]
    return (np.stack([s for s, _ in pairs]).astype(np.float32),
            np.stack([o for _, o in pairs]).astype(np.float32))


def write_safety_export(out: Path, contract: Contract, margin: float | None = 0.31, shift: float = 0.3,
                        envelope: bool = True) -> Path:
    """An export directory with the INT8 safety net: fp32 ``model.onnx``, the two INT8 artefacts = the fp32 model
    with every logit shifted by +-``shift`` (alternating per class), each with a fallback policy of ``margin``
    (None: none), and the calibration envelope of :func:`envelope_windows` (``envelope``)."""
    from mosaic_edge.envelope import build_envelope
    from mosaic_edge.fallback import FallbackPolicy
    from mosaic_edge.manifest import Manifest

    out.mkdir(parents=True, exist_ok=True)
    write_tiny_onnx(out / "model.onnx", contract, 0)
    delta = np.where(np.arange(contract.num_classes) % 2 == 0, shift, -shift)
    manifest = Manifest.create(contract, out).with_artefact("model.onnx", "fp32", "any")
    policy = FallbackPolicy(margin) if margin is not None else None
    for name, target in (("model.int8.onnx", "tensorrt"), ("model.int8-cpu.onnx", "cpu")):
        perturb_logits(out / "model.onnx", out / name, delta)
        manifest = manifest.with_artefact(name, "int8", target, fallback=policy)
    if envelope:
        manifest = manifest.with_calibration(build_envelope(*envelope_windows(contract), contract),
                                             {"n": 96, "method": "test"})
    manifest.save()
    return out
