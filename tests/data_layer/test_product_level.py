"""The S2 processing level in the contract: BigEarthNet v2 is Level-2A, SEN12MS Level-1C, and they never mix."""

from __future__ import annotations

import json

import pytest

from mosaic_edge.contract import Contract
from mosaic_edge.data.sources import contract_for
from mosaic_edge.errors import ContractMismatchError


def test_product_level_is_an_interface_field(benv2_root) -> None:
    l2a = contract_for(benv2_root)
    assert l2a.optical_product == "L2A" == contract_for("synthetic", n_train=4, stats_samples=2).optical_product
    l1c = l2a.replace(optical_product="L1C")
    assert l1c.diff(l2a) == ["optical_product: 'L1C' vs 'L2A'"]
    with pytest.raises(ContractMismatchError, match="optical_product"):
        l2a.check_compatible(l1c, what="model.onnx")
    assert l1c.fingerprint() != l2a.fingerprint()  # engine caches keyed by the contract tell them apart
    assert Contract.from_metadata(l1c.to_metadata()) == l1c
    with pytest.raises(ValueError, match="optical_product"):
        Contract(optical_product="L2B")


def test_contracts_written_before_the_field_read_as_l2a() -> None:
    old = json.loads(Contract().to_json())
    del old["optical_product"]
    assert Contract.from_dict(old).optical_product == "L2A"


def test_data_declaring_another_level_is_refused() -> None:
    contract = Contract()
    contract.check_optical_product("L2A")
    contract.check_optical_product(None)  # undeclared: the caller's decision
    with pytest.raises(ContractMismatchError, match="tile x.npz: optical data is Sentinel-2 L1C, the model takes L2A"):
        contract.check_optical_product("L1C", what="tile x.npz")
