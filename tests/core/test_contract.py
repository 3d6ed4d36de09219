import json

import numpy as np
import pytest

from mosaic_edge.contract import (
    BENV2_CLASSES,
    BENV2_STATS,
    METADATA_KEY,
    S1_BANDS,
    S2_BANDS,
    Contract,
    decide,
    sha256_file,
    sigmoid,
)
from mosaic_edge.errors import ContractMismatchError


def test_defaults_follow_benv2_constants():
    c = Contract()
    assert c.classes == BENV2_CLASSES and len(c.classes) == 19
    assert c.optical_bands == S2_BANDS and len(S2_BANDS) == 12
    assert c.sar_bands == S1_BANDS == ("VV", "VH")
    assert c.optical_mean[0] == BENV2_STATS["B01"][0]
    assert c.sar_std == (BENV2_STATS["VV"][1], BENV2_STATS["VH"][1])
    assert c.input_shapes(4) == {"sar": (4, 2, 120, 120), "optical": (4, 12, 120, 120)}


def test_json_round_trip_is_exact(tmp_path):
    c = Contract(thresholds=tuple(np.linspace(0.1, 0.9, 19).tolist()), model_hash="abc", dataset="synthetic")
    again = Contract.from_json(c.to_json())
    assert again == c
    c.save(tmp_path / "c.json")
    assert Contract.load(tmp_path / "c.json") == c
    assert json.loads(c.to_json())["classes"][0] == "Urban fabric"


def test_mismatch_message_says_what_differs():
    a = Contract()
    b = a.replace(patch_size=64, optical_mean=(0.0,) + a.optical_mean[1:])
    problems = a.diff(b)
    assert any("patch_size: 120 vs 64" in p for p in problems)
    assert any(p.startswith("optical_mean differs at positions [0]") for p in problems)
    with pytest.raises(ContractMismatchError, match="patch_size"):
        a.check_compatible(b)
    # Thresholds and hash are not part of the interface: re-tuned thresholds stay compatible.
    a.check_compatible(a.replace(thresholds=(0.3,) * 19, model_hash="x"))


def test_validate_batch_names_each_problem():
    c = Contract(patch_size=8)
    good = {"sar": np.zeros((3, 2, 8, 8), np.float32), "optical": np.zeros((3, 12, 8, 8), np.float32)}
    assert c.validate_batch(good) == 3
    bad = {"sar": np.zeros((3, 2, 8, 8), np.float64), "optical": np.zeros((2, 12, 9, 8), np.float32)}
    with pytest.raises(ContractMismatchError) as err:
        c.validate_batch(bad)
    msg = str(err.value)
    assert "sar dtype float64" in msg and "optical shape (2, 12, 9, 8)" in msg
    with pytest.raises(ContractMismatchError, match="missing inputs"):
        c.validate_batch({"sar": good["sar"]})


@pytest.mark.parametrize(
    "kwargs, msg",
    [
        ({"thresholds": (0.5,) * 3}, "3 thresholds for 19 classes"),
        ({"thresholds": (1.0,) * 19}, "strictly between 0 and 1"),
        ({"sar_std": (1.0, 0.0)}, "std must be > 0"),
        ({"patch_size": 0}, "patch_size"),
    ],
)
def test_invalid_contracts_are_rejected(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        Contract(**kwargs)


def test_unknown_fields_and_newer_schema_are_refused():
    d = Contract().to_dict()
    with pytest.raises(ContractMismatchError, match="unknown fields"):
        Contract.from_dict({**d, "bogus": 1})
    with pytest.raises(ContractMismatchError, match="newer"):
        Contract.from_dict({**d, "schema": 99})
    with pytest.raises(ContractMismatchError, match="not valid JSON"):
        Contract.from_json("{")


def test_fingerprint_ignores_thresholds_but_not_stats(tmp_path):
    c = Contract()
    assert c.fingerprint() == c.replace(thresholds=(0.2,) * 19).fingerprint()
    assert c.fingerprint() != c.replace(sar_mean=(0.0, 0.0)).fingerprint()
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    assert sha256_file(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_metadata_round_trip_and_unusable_entry():
    c = Contract(patch_size=24, thresholds=(0.3,) * 19)
    meta = c.to_metadata()
    assert list(meta) == [METADATA_KEY] and "\n" not in meta[METADATA_KEY]  # compact JSON
    assert Contract.from_metadata(meta) == c
    assert Contract.from_metadata({"other": "x"}) is None
    with pytest.raises(ContractMismatchError, match="m.onnx: contract in ONNX metadata is unusable"):
        Contract.from_metadata({METADATA_KEY: "{"}, "m.onnx")


def test_decide_is_the_stable_sigmoid_threshold_rule():
    logits = np.array([[-1000.0, 0.0, 1000.0, np.log(0.3 / 0.7) - 1e-9, np.log(0.3 / 0.7) + 1e-9]])
    assert sigmoid(logits).tolist()[0][:3] == [0.0, 0.5, 1.0]  # no overflow warning, exact ends
    np.testing.assert_array_equal(decide(logits, [0.5, 0.5, 0.5, 0.3, 0.3]), [[False, True, True, False, True]])
    c = Contract(thresholds=(0.3,) * 19)
    x = np.random.default_rng(0).normal(0, 3, (4, 19))
    np.testing.assert_array_equal(c.decide(x), 1 / (1 + np.exp(-x)) >= 0.3)
