"""Runner lifecycle, contract checks, artefact selection, and the no-torch rule of edge_runtime."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mosaic_edge.edge_runtime.runner import OnnxRuntimeRunner, open_runner, run_batched
from mosaic_edge.errors import ContractMismatchError, UserError
from mosaic_edge.manifest import Manifest


def _batch(contract, n=3, seed=0):
    rng = np.random.default_rng(seed)
    p = contract.patch_size
    return {"sar": rng.normal(size=(n, 2, p, p)).astype(np.float32),
            "optical": rng.normal(size=(n, 12, p, p)).astype(np.float32)}


def test_ort_runner_outputs_match_contract(tiny_onnx, contract):
    with OnnxRuntimeRunner(tiny_onnx, threads=1) as r:
        out = r.infer(_batch(contract))
    assert list(out) == list(contract.output_names)
    assert out["logits"].shape == (3, 19)
    np.testing.assert_allclose(np.linalg.norm(out["emb_sar"], axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(out["logits"], 0.5 * (out["logits_sar"] + out["logits_optical"]), rtol=1e-5,
                               atol=1e-6)
    assert r.contract == contract
    assert len(r.model_hash) == 64


def test_runner_needs_context_and_validates(tiny_onnx, contract):
    r = OnnxRuntimeRunner(tiny_onnx)
    with pytest.raises(RuntimeError, match="not active"):
        r.infer(_batch(contract))
    with r:
        bad = _batch(contract)
        bad["sar"] = bad["sar"].astype(np.float64)
        with pytest.raises(ContractMismatchError, match="float32"):
            r.infer(bad)
        bad = _batch(contract)
        del bad["optical"]
        with pytest.raises(ContractMismatchError, match="missing"):
            r.infer(bad)
    assert not r.is_active


def test_open_runner_picks_cpu_int8_never_trt_qdq(tiny_export):
    r = open_runner(tiny_export, kind="ort", precision="int8", device="cpu")
    assert r.model_path.name == "model.int8-cpu.onnx"
    assert open_runner(tiny_export, kind="ort", device="cpu").model_path.name == "model.onnx"
    manifest = Manifest.load(tiny_export)
    assert manifest.artefact_for("tensorrt", "int8").name == "model.int8.onnx"
    only_trt = {"model.int8.onnx": manifest.artefacts["model.int8.onnx"]}
    with pytest.raises(UserError, match="no int8 artefact"):
        dataclasses.replace(manifest, artefacts=only_trt).artefact_for("cpu", "int8")


def test_open_runner_refuses_tampered_artefact(tiny_export, tmp_path):
    import shutil

    d = tmp_path / "m"
    shutil.copytree(tiny_export, d)
    with open(d / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(UserError, match="sha256"):
        open_runner(d, kind="ort", device="cpu")


def test_contract_mismatch_is_refused(tiny_onnx, contract):
    with pytest.raises(ContractMismatchError, match="patch_size"):
        OnnxRuntimeRunner(tiny_onnx, contract=contract.replace(patch_size=32))


def test_run_batched_equals_one_batch(tiny_onnx, contract):
    b = _batch(contract, n=7, seed=1)
    with OnnxRuntimeRunner(tiny_onnx) as r:
        whole = r.infer(b)
        parts = run_batched(r, b["sar"], b["optical"], batch=3)
    for k in whole:
        np.testing.assert_allclose(parts[k], whole[k], rtol=1e-5, atol=1e-6)


def test_ort_sessions_do_not_spin_and_use_the_usable_cores(tiny_onnx):
    from mosaic_edge.environment import usable_cores

    with OnnxRuntimeRunner(tiny_onnx) as r:
        so = r._session.get_session_options()
        assert so.intra_op_num_threads == usable_cores() == r.describe()["threads"]
        assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        assert so.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    with OnnxRuntimeRunner(tiny_onnx, threads=1, spin=True) as r:
        so = r._session.get_session_options()
        assert so.intra_op_num_threads == 1
        assert so.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    with pytest.raises(UserError, match="threads"):
        OnnxRuntimeRunner(tiny_onnx, threads=0)


def test_input_buffers_are_reused_and_fed_straight_to_infer(tiny_onnx, contract):
    with OnnxRuntimeRunner(tiny_onnx, threads=1) as r:
        bufs = r.input_buffers(4)
        assert {k: (v.shape, str(v.dtype)) for k, v in bufs.items()} == {
            "sar": ((4, 2, 16, 16), "float32"), "optical": ((4, 12, 16, 16), "float32")}
        assert r.input_buffers(3) is bufs and r.input_buffers(4)["sar"] is bufs["sar"]  # no new allocation
        assert len(r.input_buffers(9)["sar"]) == 9  # grows when asked for more rows
        b = _batch(contract, n=3)
        bufs = r.input_buffers(3)
        for k in b:
            bufs[k][:3] = b[k]
        via_buffers = r.infer({k: v[:3] for k, v in bufs.items()})
        np.testing.assert_array_equal(via_buffers["logits"], r.infer(b)["logits"])
