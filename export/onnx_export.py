"""torch -> ONNX: two named float32 inputs, dynamic batch, outputs in contract order, contract in metadata.

Exporter choice: torch >= 2.9 defaults to the torch.export-based ("dynamo") exporter, which needs
``onnxscript``; it is not a dependency of this package (and not installed here: ``torch.onnx.export(...,
dynamo=True)`` raises ``ModuleNotFoundError: onnxscript``). The TorchScript ("legacy") exporter, still
shipped in torch 2.13, gives a clean opset-17 graph for this model (Conv/BatchNorm folded, Gemm heads,
ReduceL2 normalisation), honours ``dynamic_axes`` and the I/O names, and its output is what
onnxruntime.quantization and TensorRT consume well.
So ``exporter="legacy"`` is the default; ``"dynamo"`` is accepted when onnxscript is installed.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from mosaic_edge.contract import METADATA_KEY, Contract
from mosaic_edge.errors import UserError
from mosaic_edge.optional import require

# Opset 17 is the lowest with every op we emit in its current form (LayerNorm-free model, but 17 is what
# TensorRT 8.6+ / 10.x and ORT >= 1.14 all accept) and the highest JetPack 5 (TensorRT 8.5) parses.
DEFAULT_OPSET = 17
MIN_OPSET = 17
BATCH_DIM = "N"
EXPORTERS = ("legacy", "dynamo")


def _ordered_module(model: Any, output_names: tuple[str, ...]) -> Any:
    """Wrap ``model`` so forward returns a tuple in ``output_names`` order (ONNX outputs are positional)."""
    torch = require("torch")
    module: Any = torch.nn.Module

    class _Ordered(module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, sar: Any, optical: Any) -> tuple[Any, ...]:
            out = self.inner(sar, optical)
            return tuple(out[name] for name in output_names)

    return _Ordered().eval()


def inline_identities(proto: Any) -> int:
    """Remove ``Identity`` nodes in place (not those producing a graph output); return how many went.

    The TorchScript exporter de-duplicates equal initializers (e.g. the folded BatchNorm biases of the two
    encoders) and reconnects the copies through Identity nodes. A Conv whose bias comes from a node instead of
    an initializer is left unquantized by onnxruntime.quantization (a float Conv between DequantizeLinear and
    QuantizeLinear that ORT cannot fuse into QLinearConv, so the INT8 model runs slower than fp32). An
    Identity of an initializer becomes a copy of that initializer under the Identity's output name; any other
    Identity is bypassed.
    """
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    rename: dict[str, str] = {}
    kept, removed = [], 0
    for node in graph.node:
        if node.op_type != "Identity" or node.output[0] in outputs:
            kept.append(node)
            continue
        src = rename.get(node.input[0], node.input[0])
        if src in inits:
            copy = graph.initializer.add()
            copy.CopyFrom(inits[src])
            copy.name = node.output[0]
            inits[copy.name] = copy
        else:
            rename[node.output[0]] = src
        removed += 1
    for node in kept:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    del graph.node[:]
    graph.node.extend(kept)
    return removed


def set_contract_metadata(proto: Any, contract: Contract) -> None:
    """Write ``contract`` into ``metadata_props`` (:meth:`Contract.to_metadata`), replacing an older entry."""
    entries = contract.to_metadata()
    kept = [p for p in proto.metadata_props if p.key not in entries]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in entries.items():
        proto.metadata_props.add(key=key, value=value)


def read_contract(model: str | Path | Any) -> Contract:
    """The contract stored in an ONNX file's (or ``ModelProto``'s) metadata.

    Raises:
        UserError: when the model carries no contract.
    """
    onnx = require("onnx")
    proto = onnx.load(str(model), load_external_data=False) if isinstance(model, (str, Path)) else model
    what = str(model) if isinstance(model, (str, Path)) else "model"
    contract = Contract.from_metadata({p.key: p.value for p in proto.metadata_props}, what)
    if contract is None:
        raise UserError(f"{what}: no {METADATA_KEY} metadata (not exported by mosaic-edge?)")
    return contract


def _dims(value_info: Any) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def io_signature(model: str | Path | Any) -> dict[str, Any]:
    """``{"opset", "inputs": {name: dims}, "outputs": [names]}`` of an ONNX file or ``ModelProto``."""
    onnx = require("onnx")
    proto = onnx.load(str(model), load_external_data=False) if isinstance(model, (str, Path)) else model
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    inits = {i.name for i in proto.graph.initializer}
    return {"opset": opset, "inputs": {i.name: _dims(i) for i in proto.graph.input if i.name not in inits},
            "outputs": [o.name for o in proto.graph.output]}


def export_onnx(model: Any, contract: Contract, path: str | Path, opset: int = DEFAULT_OPSET,
                exporter: str = "legacy") -> Path:
    """Export a ``MosaicModel`` (or any module with ``forward(sar, optical) -> dict``) to ONNX.

    Args:
        model: The torch model; exported in eval mode on CPU.
        contract: Gives input shapes, output order and the metadata written into the file.
        path: Destination ``.onnx``.
        opset: Default-domain opset (>= :data:`MIN_OPSET`).
        exporter: "legacy" (TorchScript, default, see module docstring) or "dynamo" (needs onnxscript).

    Returns:
        ``path``; the file passed ``onnx.checker.check_model``.
    """
    torch = require("torch")
    onnx = require("onnx")
    if opset < MIN_OPSET:
        raise UserError(f"opset {opset} < {MIN_OPSET}: TensorRT needs opset >= {MIN_OPSET} for this graph")
    if exporter not in EXPORTERS:
        raise UserError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    if exporter == "dynamo":
        require("onnxscript", extra="export")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    wrapped = _ordered_module(model, tuple(contract.output_names))
    shapes = contract.input_shapes(batch=2)  # batch 2, not 1: the exporter must not specialise size-1 dims
    gen = torch.Generator().manual_seed(0)
    args = tuple(torch.randn(*shapes[name], generator=gen) for name in contract.input_names)
    dynamic = {name: {0: BATCH_DIM} for name in (*contract.input_names, *contract.output_names)}
    tmp = path.with_name(path.name + ".tmp")
    with warnings.catch_warnings(), torch.no_grad():
        # The legacy exporter warns that it is deprecated on every call; the choice is deliberate (see above).
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        kwargs: dict[str, Any] = {"dynamo": exporter == "dynamo"}
        if exporter == "dynamo":
            kwargs["dynamic_shapes"] = {n: {0: torch.export.Dim(BATCH_DIM)} for n in contract.input_names}
        else:
            kwargs["dynamic_axes"] = dynamic
        torch.onnx.export(wrapped, args, str(tmp), input_names=list(contract.input_names),
                          output_names=list(contract.output_names), opset_version=opset,
                          do_constant_folding=True, **kwargs)
    proto = onnx.load(str(tmp))
    tmp.unlink()
    inline_identities(proto)
    proto.producer_name = "mosaic-edge"
    proto.producer_version = contract.version
    proto.doc_string = f"MoSAiC {contract.model_name} ({contract.dataset}); model_hash {contract.model_hash}"
    set_contract_metadata(proto, contract)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    return path
