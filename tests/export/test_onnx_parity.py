"""ONNX export: I/O names, shapes, dynamic batch, contract metadata, and parity per precision (fp32, fp16)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from mosaic_edge.contract import METADATA_KEY, Contract  # noqa: E402
from mosaic_edge.errors import UserError  # noqa: E402
from mosaic_edge.export.fp16 import convert_fp16  # noqa: E402
from mosaic_edge.export.onnx_export import export_onnx, io_signature, read_contract  # noqa: E402
from mosaic_edge.export.parity import (  # noqa: E402
    FP16_TOLERANCE,
    FP32_TOLERANCE,
    INT8_TOLERANCE,
    check_parity,
    compare,
    ort_session,
    run_onnx,
    run_torch,
)
from mosaic_edge.train.checkpoint import load_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def onnx_pair(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> tuple[object, Path, Path]:
    model, contract = load_checkpoint(tiny_checkpoint)
    out = tmp_path_factory.mktemp("onnx")
    fp32 = export_onnx(model, contract, out / "model.onnx")
    return model, fp32, convert_fp16(fp32, out / "model.fp16.onnx")


def test_io_names_shapes_and_dynamic_batch(onnx_pair: tuple[object, Path, Path], contract: Contract) -> None:
    _, fp32, _ = onnx_pair
    sig = io_signature(fp32)
    p = contract.patch_size
    assert sig["opset"] >= 17
    assert sig["inputs"] == {"sar": ["N", 2, p, p], "optical": ["N", 12, p, p]}
    assert sig["outputs"] == list(contract.output_names)
    # de-duplicated initializers come back as initializers, not Identity nodes (they block INT8 Conv fusion)
    assert "Identity" not in {n.op_type for n in onnx.load(str(fp32)).graph.node}
    sess = ort_session(fp32)
    assert [i.type for i in sess.get_inputs()] == ["tensor(float)"] * 2
    for n in (1, 3):
        rng = np.random.default_rng(n)
        feed = {k: rng.normal(size=(n, *s[1:])).astype(np.float32)
                for k, s in contract.input_shapes().items()}
        out = dict(zip(sig["outputs"], sess.run(None, feed), strict=True))
        assert out["logits"].shape == (n, contract.num_classes)
        assert out["emb_sar"].shape[0] == n
        np.testing.assert_allclose(np.linalg.norm(out["emb_optical"], axis=1), 1.0, atol=1e-5)


def test_contract_in_metadata_props(onnx_pair: tuple[object, Path, Path], contract: Contract) -> None:
    _, fp32, fp16 = onnx_pair
    for path in (fp32, fp16):
        contract = read_contract(path)
        assert contract.diff(contract) == []
        assert contract.model_hash and contract.model_hash == read_contract(fp32).model_hash
        meta = ort_session(path).get_modelmeta().custom_metadata_map
        assert METADATA_KEY in meta  # readable by the runtime through ORT alone


def test_opset_below_17_refused(tmp_path: Path, tiny_checkpoint: Path) -> None:
    model, contract = load_checkpoint(tiny_checkpoint)
    with pytest.raises(UserError, match="opset"):
        export_onnx(model, contract, tmp_path / "m.onnx", opset=13)


def test_fp16_is_fp16_inside_with_fp32_io(onnx_pair: tuple[object, Path, Path]) -> None:
    _, _, fp16 = onnx_pair
    proto = onnx.load(str(fp16))
    f32, f16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert {i.type.tensor_type.elem_type for i in proto.graph.input} == {f32}
    assert {o.type.tensor_type.elem_type for o in proto.graph.output} == {f32}
    conv_weights = {n.input[1] for n in proto.graph.node if n.op_type == "Conv"}
    assert {t.data_type for t in proto.graph.initializer if t.name in conv_weights} == {f16}


@pytest.mark.parametrize("which", ["synthetic", "benv2"])
def test_parity_fp32_and_fp16_against_torch(onnx_pair: tuple[object, Path, Path], which: str,
                                            contract: Contract, test_samples, benv2_samples) -> None:
    model, fp32, fp16 = onnx_pair
    samples = test_samples if which == "synthetic" else benv2_samples
    ref = run_torch(model, samples.inputs)
    r32 = check_parity(ref, fp32, samples, contract, "fp32")
    r16 = check_parity(ref, fp16, samples, contract, "fp16")
    assert r32.passed, r32.describe()
    assert r16.passed, r16.describe()
    assert r32.tolerance == FP32_TOLERANCE and r16.tolerance == FP16_TOLERANCE
    assert r32.max_abs_logit_diff <= r16.max_abs_logit_diff  # fp16 is the coarser of the two


def test_tolerances_are_ordered_and_can_fail(onnx_pair: tuple[object, Path, Path], contract: Contract,
                                            test_samples) -> None:
    for field in ("logit_atol", "logit_rtol", "max_prob_diff", "max_flip_fraction"):
        assert getattr(FP32_TOLERANCE, field) < getattr(FP16_TOLERANCE, field) < getattr(INT8_TOLERANCE, field)
    model, fp32, _ = onnx_pair
    ref = run_torch(model, test_samples.inputs)
    out = run_onnx(fp32, test_samples.inputs)
    shifted = {**out, "logits": out["logits"] + 1.0}  # far beyond fp32's tolerance on every logit
    assert not compare(ref, shifted, contract, "fp32").passed
    flipped = {**out, "logits": -out["logits"]}  # every decision flips
    res = compare(ref, flipped, contract, "int8")
    assert res.flip_fraction == 1.0 and not res.passed


def _outputs(logits: np.ndarray) -> dict[str, np.ndarray]:
    emb = np.ones((len(logits), 4), np.float32)
    return {"logits": logits, "logits_sar": logits, "logits_optical": logits, "emb_sar": emb, "emb_optical": emb}


def test_fp16_with_large_logits_passes_when_no_decision_changes(contract: Contract) -> None:
    # logits in the hundreds (a model trained briefly on few real patches) moved by 0.3 %: hundreds of times
    # the old absolute bound of 0.05, yet no decision and no probability changes
    rng = np.random.default_rng(0)
    ref = rng.choice([-1.0, 1.0], size=(16, contract.num_classes)) * rng.uniform(50, 600, (16, contract.num_classes))
    cand = ref * (1.0 + 3e-3 * rng.uniform(-1, 1, ref.shape))
    res = compare(_outputs(ref), _outputs(cand), contract, "fp16")
    assert res.max_abs_logit_diff > 0.5 and res.flip_fraction == 0.0
    assert res.passed, res.describe()
    # the same relative error on a model with small logits is just as fine; a 5 % error on large ones is not
    assert compare(_outputs(ref / 100), _outputs(cand / 100), contract, "fp16").passed
    assert not compare(_outputs(ref), _outputs(ref * 1.05), contract, "fp16").passed


def test_failure_names_the_worst_patch_and_class(contract: Contract) -> None:
    rng = np.random.default_rng(1)
    ref = rng.normal(0, 3, (8, contract.num_classes))
    cand = ref.copy()
    cand[5, 3] += 2.0  # one logit of one patch, far out of fp16 tolerance
    ids = [f"patch-{i}" for i in range(8)]
    res = compare(_outputs(ref), _outputs(cand), contract, "fp16", "model.fp16.onnx", samples="benv2", ids=ids)
    assert not res.passed
    assert (res.worst_logit.patch, res.worst_logit.cls) == ("patch-5", contract.classes[3])
    text = res.describe()
    assert "patch-5" in text and contract.classes[3] in text and "model.fp16.onnx" in text
