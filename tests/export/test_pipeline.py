"""`mosaic-edge export` end to end: artefacts, manifest, Q/DQ zero points, calib cache, report, INT8 gate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from mosaic_edge.calibration import load_calibration_set, save_calibration_set  # noqa: E402
from mosaic_edge.calibration.quantize import qdq_params  # noqa: E402
from mosaic_edge.cli import main  # noqa: E402
from mosaic_edge.contract import Contract  # noqa: E402
from mosaic_edge.errors import UserError  # noqa: E402
from mosaic_edge.export.onnx_export import read_contract  # noqa: E402
from mosaic_edge.export.parity import INT8_TOLERANCE, Samples, check_parity, run_torch  # noqa: E402
from mosaic_edge.export.pipeline import ExportConfig, run_export  # noqa: E402
from mosaic_edge.manifest import Manifest  # noqa: E402
from mosaic_edge.train.checkpoint import load_checkpoint  # noqa: E402
from mosaic_edge.trt_calib_cache import read_calib_cache  # noqa: E402

ALL = ("model.onnx", "model.fp16.onnx", "model.int8.onnx", "model.int8-cpu.onnx", "calib.npz", "calib.cache",
       "manifest.json", "report.json", "report.md", "fallback.png")


def test_cli_writes_every_artefact_and_a_verifiable_manifest(exported: Path) -> None:
    assert sorted(p.name for p in exported.iterdir()) == sorted(ALL)
    m = Manifest.load(exported)
    assert len(m.verify()) == 7  # 4 models + calib.npz + calib.cache + report.json
    targets = {n: (a.precision, a.target) for n, a in m.artefacts.items()}
    assert targets == {"model.onnx": ("fp32", "any"), "model.fp16.onnx": ("fp16", "any"),
                       "model.int8.onnx": ("int8", "tensorrt"), "model.int8-cpu.onnx": ("int8", "cpu")}
    assert m.artefact_for("tensorrt", "int8").name == "model.int8.onnx"
    assert m.artefact_for("cpu", "int8").name == "model.int8-cpu.onnx"
    for name, art in m.artefacts.items():
        assert art.opset >= 17 and art.inputs["sar"][0] == "N", name
        assert read_contract(exported / name).diff(m.contract) == []


def test_tensorrt_artefact_is_symmetric_int8_and_cpu_one_uint8(exported: Path) -> None:
    trt = [r for r in qdq_params(exported / "model.int8.onnx") if r["zero_point"] is not None]
    assert trt and all(np.all(np.asarray(r["zero_point"]) == 0) for r in trt)
    assert {r["dtype"] for r in trt} == {"int8"}
    cpu = qdq_params(exported / "model.int8-cpu.onnx")
    assert "uint8" in {r["dtype"] for r in cpu}


@pytest.mark.parametrize("name", ["model.int8.onnx", "model.int8-cpu.onnx"])
def test_every_conv_reads_quantized_weights_and_activations(exported: Path, name: str) -> None:
    graph = onnx.load(str(exported / name)).graph
    producer = {o: n.op_type for n in graph.node for o in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert convs
    for conv in convs:  # a float input here leaves ORT a float Conv (slow) and TensorRT an unfusable one
        assert [producer.get(i) for i in conv.input[:2]] == ["DequantizeLinear"] * 2, conv.name


@pytest.mark.parametrize("name", ["model.int8.onnx", "model.int8-cpu.onnx"])
def test_int8_graph_outputs_stay_float(exported: Path, name: str) -> None:
    # logits and the L2-normalised embeddings are never rounded to 8 bits: no graph output comes out of a DQ
    graph = onnx.load(str(exported / name)).graph
    producer = {o: n.op_type for n in graph.node for o in n.output}
    assert {o.name: producer[o.name] for o in graph.output if producer[o.name] in ("DequantizeLinear",
                                                                                  "QuantizeLinear")} == {}


def test_tensorrt_artefact_quantizes_weighted_op_inputs_only(exported: Path) -> None:
    graph = onnx.load(str(exported / "model.int8.onnx")).graph
    producer = {o: n.op_type for n in graph.node for o in n.output}
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] in producer:
            # an activation Q reads the output of a non-weighted op (ReLU, pooling, ...), never a Conv/Gemm
            assert producer[node.input[0]] not in ("Conv", "Gemm", "MatMul"), node.name
    # every activation Q (weights are stored quantized, with a DQ only) has its tensor in calib.cache at the
    # same scale: the legacy implicit path and the Q/DQ model come from one calibration run
    cache = read_calib_cache(exported / "calib.cache")
    acts = [r for r in qdq_params(exported / "model.int8.onnx") if r["op"] == "QuantizeLinear"]
    assert acts
    for r in acts:
        scale = float(np.asarray(r["scale"]).ravel()[0])
        # the artefact's scales are fp16 (11 significant bits); a graph input's Q reads its fp16 Cast
        assert scale == pytest.approx(cache.scales[r["source"]], rel=2**-11), r["source"]


def test_calibration_cache_and_set_parse_back(exported: Path, contract: Contract) -> None:
    cache = read_calib_cache(exported / "calib.cache")
    assert cache.scales and all(s > 0 for s in cache.scales.values())
    # the inputs' scales belong to the standardised tensors inside the raw-input graphs
    assert "sar_standardised" in cache.scales and "optical_standardised" in cache.scales
    assert "sar" not in cache.scales and "optical" not in cache.scales
    calib = load_calibration_set(exported / "calib.npz", contract)
    assert calib["sar"].shape[1:] == (2, contract.patch_size, contract.patch_size)


def test_report_has_every_artefact_on_both_sets(exported: Path) -> None:
    report = json.loads((exported / "report.json").read_text())
    assert report["gate"]["passed"] and set(report["datasets"]) == {"synthetic-validation+test", "benv2-mini"}
    assert report["datasets"]["benv2-mini"]["n"] == 24  # every real pair, snowy/cloudy ones included
    for ds in report["datasets"].values():
        for name in ("model.onnx", "model.fp16.onnx", "model.int8.onnx", "model.int8-cpu.onnx"):
            row = ds["artefacts"][name]
            assert {"macro_map", "micro_map", "agreement", "max_prob_diff", "per_class_ap_delta"} <= set(row)
            assert 0.0 <= row["agreement"] <= 1.0
        assert ds["artefacts"]["model.onnx"]["agreement"] == 1.0
    # 64 patches cannot show INT8 within 5 pts: the gate passes the export but says it could not judge
    assert report["gate"]["verdict"] == "inconclusive" and not report["gate"]["judgeable"]
    assert "INCONCLUSIVE" in (exported / "report.md").read_text()
    assert any("too small to judge" in w for w in report["warnings"])
    lint = report["export"]["trt_lint"]  # calibration/trt_lint.py, run by export on model.int8.onnx
    assert lint["artefact"] == "model.int8.onnx" and lint["passed"] and lint["checked"]["dq_inputs"] > 0
    assert "TensorRT placement lint of `model.int8.onnx`: **PASSED**" in (exported / "report.md").read_text()


def _physical_units(samples: Samples, contract: Contract) -> Samples:
    """Standardised samples back in the units a raw-input artefact takes (``x * std + mean``; pixels that were
    invalid become the band mean, which the artefact's prologue maps to 0 as the host did)."""
    stats = {"sar": (contract.sar_mean, contract.sar_std), "optical": (contract.optical_mean, contract.optical_std)}
    raw = {k: (v * np.asarray(stats[k][1], np.float32)[:, None, None]
               + np.asarray(stats[k][0], np.float32)[:, None, None]).astype(np.float32)
           for k, v in samples.inputs.items()}
    return Samples(samples.name, raw, samples.labels, samples.ids)


@pytest.mark.parametrize("name", ["model.int8.onnx", "model.int8-cpu.onnx"])
def test_int8_parity_within_tolerance(exported: Path, tiny_checkpoint: Path, contract: Contract, name: str,
                                      test_samples, benv2_samples) -> None:
    model, _ = load_checkpoint(tiny_checkpoint)
    assert read_contract(exported / name).input_form == "raw"  # the default export standardises in the graph
    for samples in (test_samples, benv2_samples):
        raw = _physical_units(samples, contract)
        res = check_parity(run_torch(model, samples.inputs), exported / name, raw, contract, "int8")
        assert res.tolerance == INT8_TOLERANCE
        assert res.passed, res.describe()
        assert res.n == len(samples)


def test_gate_fires_on_broken_calibration(tmp_path: Path, exported: Path, tiny_checkpoint: Path,
                                          contract: Contract, capsys: pytest.CaptureFixture[str]) -> None:
    calib = load_calibration_set(exported / "calib.npz", contract)
    scaled = {k: v * 1000.0 for k, v in calib.items()}  # ranges 1000x too wide: every activation rounds to 0
    broken = save_calibration_set(tmp_path / "broken.npz", scaled, contract)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(["export", str(tiny_checkpoint), "--out", str(out), "--int8", "--calib-method", "minmax",
              "--calib-file", str(broken), "--eval-limit", "64"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "INT8 accuracy gate failed" in err and "model.int8.onnx" in err
    assert not (out / "manifest.json").exists()  # nothing deployable left behind
    report = json.loads((out / "report.json").read_text())
    assert not report["gate"]["passed"]
    verdicts = report["gate"]["artefacts"]
    assert {v["verdict"] for v in verdicts.values()} == {"failed"}
    # the same broken set passes when the bound is loosened past the interval: the gate is the bound
    top = max(v["ci95_pts"][1] for v in verdicts.values())
    run_export(tiny_checkpoint, tmp_path / "loose", ExportConfig(int8=True, calib_method="minmax",
               calib_file=str(broken), eval_limit=64, max_map_drop_pts=top + 0.01))
    assert (tmp_path / "loose" / "manifest.json").is_file()


def test_export_checks_against_the_data_the_checkpoint_records(exported: Path, tiny_checkpoint: Path,
                                                              tmp_path: Path) -> None:
    from mosaic_edge.export.pipeline import export_data
    from mosaic_edge.train.checkpoint import read_checkpoint, save_checkpoint

    report = json.loads((exported / "report.json").read_text())
    assert report["export"]["data"]["options"]["patch_size"] == 24  # the recorded benchmark, not the 120 px default
    contract = Contract(patch_size=24)
    assert export_data({}, contract, "synthetic").options == {"patch_size": 24}  # --data overrides
    with pytest.raises(UserError, match="records no data source"):
        export_data({}, contract, None)
    model, ckpt_contract = load_checkpoint(tiny_checkpoint)
    bare = save_checkpoint(tmp_path / "bare.pt", model, ckpt_contract)
    assert bare and "data_spec" not in read_checkpoint(tmp_path / "bare.pt")["extra"]
    with pytest.raises(UserError, match="pass --data"):
        run_export(tmp_path / "bare.pt", tmp_path / "out", ExportConfig(eval_limit=8, parity_limit=4))
