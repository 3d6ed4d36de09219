"""manifest.json: hashes, artefact choice per target, verification failing on a tampered or missing file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mosaic_edge.contract import Contract
from mosaic_edge.envelope import Envelope
from mosaic_edge.fallback import FallbackPolicy
from mosaic_edge.manifest import MANIFEST_NAME, Manifest, ManifestError


@pytest.fixture()
def export_dir(tmp_path: Path) -> Path:
    for name in ("model.onnx", "model.fp16.onnx", "model.int8.onnx", "model.int8-cpu.onnx", "calib.npz"):
        (tmp_path / name).write_bytes(name.encode() * 10)
    m = Manifest.create(Contract(model_name="tiny"), tmp_path)
    m = m.with_artefact("model.onnx", "fp32", "any", opset=17, inputs={"sar": ["N", 2, 120, 120]},
                        outputs=("logits",))
    m = m.with_artefact("model.fp16.onnx", "fp16", "any")
    m = m.with_artefact("model.int8.onnx", "int8", "tensorrt")
    m = m.with_artefact("model.int8-cpu.onnx", "int8", "cpu")
    m.with_file("calib.npz", "calibration-set").save()
    return tmp_path


def test_roundtrip_and_schema(export_dir: Path) -> None:
    data = json.loads((export_dir / MANIFEST_NAME).read_text())
    assert data["schema"] == 2 and data["contract"]["model_name"] == "tiny"
    assert data["artefacts"]["model.int8.onnx"]["target"] == "tensorrt"
    assert len(data["artefacts"]["model.onnx"]["sha256"]) == 64
    m = Manifest.load(export_dir)
    assert m.contract == Contract(model_name="tiny")
    assert m.artefacts["model.onnx"].inputs == {"sar": ["N", 2, 120, 120]}
    assert m.files["calib.npz"]["kind"] == "calibration-set"


def test_artefact_for_prefers_the_target_specific_model(export_dir: Path) -> None:
    m = Manifest.load(export_dir)
    assert m.artefact_for("tensorrt", "int8").name == "model.int8.onnx"
    assert m.artefact_for("cpu", "int8").name == "model.int8-cpu.onnx"
    assert m.artefact_for("cuda", "int8").name == "model.int8-cpu.onnx"  # never the TensorRT Q/DQ one
    assert m.artefact_for("tensorrt", "fp16").name == "model.fp16.onnx"
    assert m.artefact_for("cpu", "fp32").name == "model.onnx"
    with pytest.raises(ManifestError, match="offers"):
        m.artefact_for("any", "int8")
    with pytest.raises(ManifestError, match="precision"):
        m.artefact_for("cpu", "int4")


def test_verify_passes_then_fails_on_tampered_and_missing(export_dir: Path) -> None:
    m = Manifest.load(export_dir)
    assert len(m.verify()) == 5
    (export_dir / "model.int8.onnx").write_bytes(b"tampered")
    with pytest.raises(ManifestError, match="model.int8.onnx: sha256"):
        m.verify()
    m.verify("model.onnx")  # the untouched one still verifies on its own
    (export_dir / "calib.npz").unlink()
    with pytest.raises(ManifestError, match="missing"):
        m.verify("calib.npz")
    with pytest.raises(ManifestError, match="not listed"):
        m.verify("other.onnx")


def test_load_refuses_non_manifests(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no manifest.json"):
        Manifest.load(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ManifestError, match="unreadable"):
        Manifest.load(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"schema": 9, "artefacts": {}}))
    with pytest.raises(ManifestError, match="newer"):
        Manifest.load(tmp_path)


def _envelope() -> Envelope:
    bands = ("VV", "VH", *(f"B{i}" for i in range(12)))
    levels = (0.0, 0.005, 0.5, 0.995, 1.0)
    return Envelope(bands, levels, tuple((-30.0 + b, -20.0 + b, 0.0, 10.0 + b, 20.0 + b) for b in range(14)),
                    threshold=0.07, n_windows=12)


def test_int8_safety_net_roundtrips(export_dir: Path) -> None:
    m = Manifest.load(export_dir)
    policy = FallbackPolicy(1.25, rerun_drifted=True, target_agreement=0.995)
    m = m.with_artefact("model.int8.onnx", "int8", "tensorrt", calibrated_ranges={"sar": (-4.0, 3.9)},
                        fallback=policy)
    m = m.with_calibration(_envelope(), {"n": 12, "sources": [{"source": "tiles", "available": 40, "drawn": 12}]})
    m.save()
    back = Manifest.load(export_dir)
    assert back.envelope == _envelope() and back.envelope.threshold == 0.07
    assert back.calibration["sources"][0]["drawn"] == 12
    assert back.fallback_policy("model.int8.onnx") == policy
    assert back.fallback_policy(export_dir / "model.int8-cpu.onnx") is None
    assert back.artefacts["model.int8.onnx"].calibrated_ranges == {"sar": (-4.0, 3.9)}
    assert back.fallback_for("tensorrt").name == "model.fp16.onnx"  # TensorRT re-runs in fp16
    assert back.fallback_for("cpu").name == "model.onnx"  # ONNX Runtime in fp32
    with pytest.raises(ManifestError, match="not listed"):
        back.fallback_policy("other.onnx")


def test_schema_1_manifest_still_loads(export_dir: Path) -> None:
    data = json.loads((export_dir / MANIFEST_NAME).read_text())
    data["schema"] = 1
    del data["calibration"]  # what a schema 1 writer produced: no calibration entry, no safety net
    (export_dir / MANIFEST_NAME).write_text(json.dumps(data))
    m = Manifest.load(export_dir)
    assert m.envelope is None and m.calibration == {}
    assert m.fallback_policy("model.int8.onnx") is None and m.artefacts["model.int8.onnx"].calibrated_ranges == {}
    assert len(m.verify()) == 5
