"""Fixtures of the runtime tests: a tiny ONNX model with the contract's I/O, written with onnx.helper.

The model is real arithmetic (global average pool -> linear heads, fused = mean of the two heads, L2-normalised
embeddings), so outputs depend on the inputs and runner/daemon results can be compared with a direct run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mosaic_edge.contract import Contract, sha256_file

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
    helper.set_model_props(model, {"mosaic_edge.contract": contract.to_json()})
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def write_tiny_export(out: Path, contract: Contract) -> Path:
    """An export directory like `mosaic-edge export` writes: fp32, TRT Q/DQ int8 and CPU int8 + manifest.

    The three files get different weights (seeds) so a test can tell which one a runner picked.
    """
    files = {"model.onnx": ("fp32", "any", 0), "model.int8.onnx": ("int8", "tensorrt", 1),
             "model.int8-cpu.onnx": ("int8", "cpu", 2)}
    arts = {}
    for name, (prec, target, seed) in files.items():
        path = write_tiny_onnx(out / name, contract, seed)
        arts[name] = {"sha256": sha256_file(path), "precision": prec, "target": target, "opset": 17,
                      "inputs": list(contract.input_names), "outputs": list(contract.output_names)}
    manifest = {"schema": 1, "mosaic_edge_version": contract.version, "created": "fixture",
                "contract": contract.to_dict(), "artefacts": arts}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


@pytest.fixture(scope="session")
def contract() -> Contract:
    return tiny_contract()


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory: pytest.TempPathFactory, contract: Contract) -> Path:
    return write_tiny_export(tmp_path_factory.mktemp("tiny_export"), contract)


@pytest.fixture(scope="session")
def tiny_onnx(tiny_export: Path) -> Path:
    return tiny_export / "model.onnx"
