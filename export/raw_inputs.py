"""Raw-input artefacts: the standardisation moves from the host into the exported graph.

The last export step (after calibration, quantization, parity checks and the accuracy gate, which all keep
working on standardised inputs) rewrites every artefact so that its inputs are physical units:

* ``sar`` float32 [N, 2, P, P], backscatter in dB;
* ``optical`` float32 [N, 12, P, P], L2A reflectance x 1e4 (float32, not uint16: TensorRT has no uint16 input
  type; the host's uint16 -> float32 cast is ~12 us per tile where uint16 -> float16 costs ~0.5 ms).

A prologue in front of the original graph does exactly what :mod:`mosaic_edge.data.preprocess` does on the
host: clip to the contract's ranges, standardise with the contract's statistics ``(x - mean) / std`` (Sub then
Div, so a band-mean pixel maps to exactly 0), and set L2A no-data pixels (all 12 optical bands == 0, computed as
``ReduceMax(Abs(x)) == 0`` on the unclipped input) to 0. Non-finite pixels are replaced by the band mean on the
host (which counts invalid SAR pixels anyway for the tile's validity rule), so the graph needs no IsNaN. Only
Clip, Sub, Div, Abs, ReduceMax, Equal and Where are used: ops TensorRT 8.6-11 and ONNX Runtime both support.

The contract in every artefact's metadata (and in the manifest) says ``input_form: "raw"``; the runtime hands
such artefacts raw batches and standardised batches to older ones. The standardised tensors keep their
calibration: the TensorRT calibration cache's entries of the inputs are renamed to the tensors the prologue
feeds (``sar_standardised``, ``optical_standardised``), the names the Q/DQ models quantize.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from mosaic_edge.contract import INPUT_FORMS, Contract
from mosaic_edge.errors import UserError
from mosaic_edge.manifest import Manifest
from mosaic_edge.optional import require

PROLOGUE_PREFIX = "raw_inputs/"
CALIB_CACHE_KIND = "tensorrt-calib-cache"  # the manifest's kind of calib.cache (mosaic_edge.export.pipeline)


def _const(name: str, value: np.ndarray) -> Any:
    numpy_helper = require("onnx").numpy_helper
    return numpy_helper.from_array(np.ascontiguousarray(value), PROLOGUE_PREFIX + name)


def _opset(proto: Any) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def _prologue(contract: Contract, opset: int, inner: dict[str, str]) -> tuple[list[Any], list[Any]]:
    """Nodes and initializers turning raw ``sar``/``optical`` into the standardised tensors ``inner[name]``."""
    helper = require("onnx").helper
    p = PROLOGUE_PREFIX
    nodes: list[Any] = []
    inits: list[Any] = []
    spec = {"sar": (contract.sar_mean, contract.sar_std, contract.sar_db_range, False),
            "optical": (contract.optical_mean, contract.optical_std, contract.optical_range, True)}
    for name, (mean, std, (lo, hi), nodata) in spec.items():
        shape = (1, len(mean), 1, 1)
        inits += [_const(f"{name}_lo", np.array(lo, np.float32)), _const(f"{name}_hi", np.array(hi, np.float32)),
                  _const(f"{name}_mean", np.asarray(mean, np.float32).reshape(shape)),
                  _const(f"{name}_std", np.asarray(std, np.float32).reshape(shape))]
        standardised = inner[name] if not nodata else f"{p}{name}_unmasked"
        nodes += [
            helper.make_node("Clip", [name, f"{p}{name}_lo", f"{p}{name}_hi"], [f"{p}{name}_clipped"],
                             name=f"{p}{name}_clip"),
            helper.make_node("Sub", [f"{p}{name}_clipped", f"{p}{name}_mean"], [f"{p}{name}_centred"],
                             name=f"{p}{name}_sub"),
            helper.make_node("Div", [f"{p}{name}_centred", f"{p}{name}_std"], [standardised],
                             name=f"{p}{name}_div"),
        ]
        if nodata:
            # L2A no-data: every band of the pixel is 0 (tested on the unclipped input, as the host does).
            inits += [_const(f"{name}_zero", np.array(0.0, np.float32))]
            reduce_kwargs: dict[str, Any] = {"keepdims": 1}
            reduce_inputs = [f"{p}{name}_abs"]
            if opset >= 18:  # ReduceMax takes its axes as an input from opset 18 on
                inits.append(_const(f"{name}_axes", np.array([1], np.int64)))
                reduce_inputs.append(f"{p}{name}_axes")
            else:
                reduce_kwargs["axes"] = [1]
            nodes += [
                helper.make_node("Abs", [name], [f"{p}{name}_abs"], name=f"{p}{name}_absolute"),
                helper.make_node("ReduceMax", reduce_inputs, [f"{p}{name}_peak"], name=f"{p}{name}_peak",
                                 **reduce_kwargs),
                helper.make_node("Equal", [f"{p}{name}_peak", f"{p}{name}_zero"], [f"{p}{name}_nodata"],
                                 name=f"{p}{name}_is_nodata"),
                helper.make_node("Where", [f"{p}{name}_nodata", f"{p}{name}_zero", standardised], [inner[name]],
                                 name=f"{p}{name}_mask"),
            ]
    return nodes, inits


def standardised_names(contract: Contract) -> dict[str, str]:
    """Input name -> the name of its standardised tensor inside a raw-input graph (what the original graph
    reads, and what the TensorRT calibration cache's entry of that input is renamed to)."""
    return {name: f"{name}_standardised" for name in contract.input_names}


def add_raw_inputs(proto: Any, contract: Contract) -> Any:
    """Give an ONNX model (``ModelProto``, changed in place and returned) raw inputs and a raw contract.

    Raises:
        UserError: the model is already a raw-input model, or its inputs are not the contract's float32 ones.
    """
    onnx = require("onnx")
    from mosaic_edge.export.onnx_export import set_contract_metadata

    if contract.input_form != "standardised":
        raise UserError(f"the model already takes {contract.input_form} inputs")
    graph = proto.graph
    if any(n.name.startswith(PROLOGUE_PREFIX) for n in graph.node):
        raise UserError("the model already has a raw-input prologue")
    inputs = {i.name: i for i in graph.input}
    for name in contract.input_names:
        if name not in inputs or inputs[name].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise UserError(f"the model has no float32 input {name!r} to put a raw-input prologue in front of")
    inner = standardised_names(contract)
    for node in graph.node:  # the original graph now reads the prologue's outputs
        for i, name in enumerate(node.input):
            if name in inner:
                node.input[i] = inner[name]
    for out in graph.output:
        if out.name in inner:
            raise UserError(f"input {out.name!r} is also a graph output; cannot add a prologue")
    nodes, inits = _prologue(contract, _opset(proto), inner)
    original = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + original)
    graph.initializer.extend(inits)
    set_contract_metadata(proto, contract.replace(input_form="raw"))
    onnx.checker.check_model(proto)
    return proto


def input_dtypes(proto: Any) -> dict[str, str]:
    """Graph input name -> numpy dtype name (``"float32"``) of an ONNX model."""
    helper = require("onnx").helper
    inits = {i.name for i in proto.graph.initializer}
    return {i.name: str(np.dtype(helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)))
            for i in proto.graph.input if i.name not in inits}


def finish_inputs(manifest: Manifest, input_form: str) -> Manifest:
    """The last export step: give every artefact ``input_form`` inputs, record them, save the manifest.

    With ``"raw"`` each ONNX artefact of ``manifest`` is rewritten with the prologue (atomically: temp file +
    rename), the calibration cache's and the calibrated ranges' entries of the inputs move to the standardised
    tensors, and the contract says ``input_form: "raw"``; the manifest written before is removed first, so an
    interrupted rewrite never leaves one that vouches for the files. With ``"standardised"`` the files stay as
    they are. Either way every artefact's entry records its ``input_dtypes`` and current SHA-256.

    Raises:
        UserError: an unknown form, or an artefact that cannot take a prologue.
    """
    from mosaic_edge.contract import sha256_file
    from mosaic_edge.manifest import MANIFEST_NAME

    onnx = require("onnx")
    if input_form not in INPUT_FORMS:
        raise UserError(f"--input-form must be one of {list(INPUT_FORMS)}, got {input_form!r}")
    contract = manifest.contract
    root = manifest.root
    if root is None:
        raise UserError("finish_inputs needs a manifest with its directory")
    rewrite = input_form == "raw" and contract.input_form != "raw"
    renamed = standardised_names(contract) if rewrite else {}
    if rewrite:
        (root / MANIFEST_NAME).unlink(missing_ok=True)
    artefacts = {}
    for name, art in sorted(manifest.artefacts.items()):
        path = root / name
        proto = onnx.load(str(path))
        if rewrite:
            add_raw_inputs(proto, contract)
            tmp = path.with_name(f".{path.name}.raw.tmp")
            onnx.save(proto, str(tmp))
            tmp.replace(path)
        artefacts[name] = replace(art, sha256=sha256_file(path), input_dtypes=input_dtypes(proto),
                                  calibrated_ranges={renamed.get(k, k): v for k, v in art.calibrated_ranges.items()})
    manifest = replace(manifest, artefacts=artefacts, contract=contract.replace(input_form=input_form))
    for name, entry in sorted(manifest.files.items()):
        if rewrite and entry.get("kind") == CALIB_CACHE_KIND:
            _rename_cache_entries(root / name, renamed)
            manifest = manifest.with_file(name, CALIB_CACHE_KIND)
    manifest.save()
    return manifest


def _rename_cache_entries(path: Path, names: dict[str, str]) -> None:
    """Give the scales of the (standardised) inputs in a TensorRT calibration cache the names those tensors
    have inside the raw-input graph; the raw inputs themselves get none (TensorRT keeps the prologue in float)."""
    from mosaic_edge.trt_calib_cache import parse_calib_cache

    text = path.read_text()
    parse_calib_cache(text, str(path))  # refuse to rewrite what is not a cache
    lines = []
    for line in text.splitlines():
        tensor, sep, value = line.rpartition(": ")
        lines.append(f"{names[tensor]}{sep}{value}" if sep and tensor in names else line)
    tmp = path.with_name(f".{path.name}.raw.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
