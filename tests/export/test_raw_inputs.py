"""Raw-input artefacts: the graph's prologue standardises exactly as the host's shared preprocessing does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from mosaic_edge import patching  # noqa: E402
from mosaic_edge.contract import Contract  # noqa: E402
from mosaic_edge.data.preprocess import preprocess, stack_bands  # noqa: E402
from mosaic_edge.edge_runtime import pipeline  # noqa: E402
from mosaic_edge.edge_runtime.runner import OnnxRuntimeRunner  # noqa: E402
from mosaic_edge.edge_runtime.tiles import prepare_tile  # noqa: E402
from mosaic_edge.errors import ContractMismatchError, UserError  # noqa: E402
from mosaic_edge.export.fp16 import convert_fp16  # noqa: E402
from mosaic_edge.export.onnx_export import export_onnx, read_contract  # noqa: E402
from mosaic_edge.export.raw_inputs import PROLOGUE_PREFIX, add_raw_inputs  # noqa: E402
from mosaic_edge.tile_format import Tile, read_tile  # noqa: E402
from tests.support.runtime import copy_benv2_tile  # noqa: E402

PATCH = 24
CONTRACT = Contract(patch_size=PATCH, model_name="tiny")
TENSORRT_AND_ORT_OPS = {"Clip", "Sub", "Div", "Abs", "ReduceMax", "Equal", "Where"}


@pytest.fixture(scope="module", params=[17, 19])
def pair(request, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(standardised model, the same model with raw inputs), both fp32, at opset 17 and 19."""
    import torch

    from mosaic_edge.train.models import build_model

    root = tmp_path_factory.mktemp(f"raw{request.param}")
    torch.manual_seed(0)
    std = export_onnx(build_model("tiny").eval(), CONTRACT, root / "std.onnx", opset=request.param)
    proto = add_raw_inputs(onnx.load(str(std)), CONTRACT)
    onnx.save(proto, str(root / "raw.onnx"))
    return std, root / "raw.onnx"


def _real_tile_with_defects(benv2_root: Path, tmp_path: Path, index: int) -> tuple[np.ndarray, np.ndarray]:
    """A real BigEarthNet pair on its 10 m grid (float32, raw units) with NaN/inf, no-data and out-of-range
    pixels written in."""
    tile = read_tile(copy_benv2_tile(benv2_root, index, tmp_path / f"t{index}"))
    sar = stack_bands(tile.sar, CONTRACT.sar_bands, None, "sar")
    opt = stack_bands(tile.optical, CONTRACT.optical_bands, sar.shape[-2:], "optical")
    rng = np.random.default_rng(index)
    for arr, bad in ((sar, (np.nan, np.inf, -np.inf, 45.0, -120.0)), (opt, (np.nan, 30000.0, -50.0))):
        for value in bad:
            c, r, w = (rng.integers(0, arr.shape[i]) for i in range(3))
            arr[c, r:r + 3, w:w + 3] = value
    opt[:, 10:14, 30:40] = 0.0  # L2A no-data: every band 0
    opt[:5, 50, 50:60] = 0.0  # only some bands 0: not no-data
    opt[3, 60:62, 0:4] = np.nan
    opt[:, 60:62, 0:4] = np.where(np.isnan(opt[:, 60:62, 0:4]), np.nan, 0.0)  # NaN + zeros: not no-data
    return sar, opt


def test_prologue_uses_only_ops_tensorrt_and_ort_share(pair):
    _, raw = pair
    graph = onnx.load(str(raw)).graph
    ops = {n.op_type for n in graph.node if n.name.startswith(PROLOGUE_PREFIX)}
    assert ops == TENSORRT_AND_ORT_OPS
    assert read_contract(raw).input_form == "raw" and read_contract(pair[0]).input_form == "standardised"
    assert [i.name for i in graph.input] == ["sar", "optical"]
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for i in graph.input)


@pytest.mark.parametrize("index", [0, 3, 5])
def test_raw_artefact_on_raw_tiles_equals_standardised_artefact_on_preprocessed_tiles(pair, benv2_root, tmp_path,
                                                                                      index):
    std_path, raw_path = pair
    sar, opt = _real_tile_with_defects(benv2_root, tmp_path, index)
    wins = patching.windows(*sar.shape[-2:], PATCH)
    # standardised: the shared preprocessing on the host, as training saw the data
    pre = preprocess(sar, opt, CONTRACT)
    assert pre.sar_invalid_fraction > 0 and pre.optical_invalid_fraction > 0
    std_inputs = {"sar": patching.cut(pre.sar, wins), "optical": patching.cut(pre.optical, wins)}
    # raw: what the runtime hands a raw artefact (non-finite -> band mean on the host, the rest in the graph)
    raw_contract = CONTRACT.replace(input_form="raw")
    prepared = prepare_tile(Tile("t", sar, opt, None, False, "npz"), raw_contract)
    job = pipeline.cut(prepared, raw_contract, "t", "")
    with OnnxRuntimeRunner(raw_path, threads=1) as runner:
        raw_inputs = pipeline.fill(runner.input_buffers(job.n), [(job, 0, job.n)])
        assert np.nanmax(raw_inputs["optical"]) == 30000.0  # physical units, unclipped
        got = runner.infer(raw_inputs)
    with OnnxRuntimeRunner(std_path, threads=1) as runner:
        want = runner.infer(std_inputs)
    for name in CONTRACT.output_names:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5, err_msg=name)
    # and the host's invalid-pixel accounting is the shared preprocessing's
    assert prepared.sar_invalid_fraction == pytest.approx(pre.sar_invalid_fraction)


def test_fp16_artefact_keeps_the_prologue_in_float32(pair, benv2_root, tmp_path):
    std_path, _ = pair
    half = convert_fp16(std_path, tmp_path / "half.onnx")
    raw = tmp_path / "half_raw.onnx"
    onnx.save(add_raw_inputs(onnx.load(str(half)), CONTRACT), str(raw))
    sar, opt = _real_tile_with_defects(benv2_root, tmp_path, 2)
    pre = preprocess(sar, opt, CONTRACT)
    wins = patching.windows(*sar.shape[-2:], PATCH)[:4]
    raw_contract = CONTRACT.replace(input_form="raw")
    job = pipeline.cut(prepare_tile(Tile("t", sar, opt, None, False, "npz"), raw_contract), raw_contract, "t", "")
    with OnnxRuntimeRunner(raw, threads=1) as runner:
        got = runner.infer(pipeline.fill(runner.input_buffers(4), [(job, 0, 4)]))
    with OnnxRuntimeRunner(half, threads=1) as runner:
        want = runner.infer({"sar": patching.cut(pre.sar, wins), "optical": patching.cut(pre.optical, wins)})
    np.testing.assert_allclose(got["logits"], want["logits"], rtol=1e-3, atol=1e-3)


def test_a_raw_artefact_is_refused_where_standardised_inputs_are_expected(pair):
    _, raw = pair
    with pytest.raises(ContractMismatchError, match="input form: standardised inputs expected, the other takes raw"):
        OnnxRuntimeRunner(raw, contract=CONTRACT)
    with pytest.raises(UserError, match="already"):
        add_raw_inputs(onnx.load(str(raw)), read_contract(raw).replace(input_form="standardised"))
