"""``mosaic-edge doctor``: the CUDA runtime the bindings need beside the driver's version, a warning on a mismatch."""

from __future__ import annotations

import json

import pytest

from mosaic_edge import doctor
from tests.support import fake_cuda


@pytest.mark.parametrize(("release", "driver", "warned"), [("12.2", 12020, False), ("12.6", 12020, True),
                                                           ("12.6", 12060, False), ("13.0", 12020, True)])
def test_cuda_runtime_of_the_bindings_against_the_driver(monkeypatch: pytest.MonkeyPatch, release: str, driver: int,
                                                         warned: bool) -> None:
    fake_cuda.install(monkeypatch, fake_cuda.Driver(driver_version=driver), backends=("cuda-python",),
                      cuda_python=release)
    info = doctor.collect()
    cuda = info["cuda"]
    assert cuda["driver"] == f"{driver // 1000}.{driver % 1000 // 10}"
    assert cuda["bindings"]["cuda-python"]["runtime"] == release
    assert bool(cuda["warnings"]) == warned
    text = doctor.render(info)
    assert f"driver {cuda['driver']}; cuda-python {release} needs runtime {release}" in text
    if warned:
        assert f"needs CUDA runtime {release} but the driver supports {cuda['driver']}" in text
        assert "cuda-python>=12.2,<13" in text and "WARNING" in text
    json.loads(doctor.render(info, as_json=True))


def test_pycuda_build_against_the_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cuda.install(monkeypatch, fake_cuda.Driver(driver_version=12020), backends=("pycuda",))
    cuda = doctor.collect()["cuda"]
    assert cuda["driver"] == "12.2" and cuda["bindings"]["pycuda"]["runtime"] == "12.2" and not cuda["warnings"]


def test_no_bindings_no_driver_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart", "pycuda", "pycuda.driver"):
        monkeypatch.setitem(__import__("sys").modules, name, None)
    monkeypatch.setattr(doctor, "_libcuda_driver_version", lambda: None)
    cuda = doctor.collect()["cuda"]
    assert cuda == {"driver": None, "bindings": {}, "warnings": []}
    assert "cuda: driver missing" in doctor.render(doctor.collect())
