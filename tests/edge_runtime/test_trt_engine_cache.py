"""Engine cache: key -> file, load or build, key mismatch rebuilds, corrupt engine rebuilt (never a crash)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mosaic_edge.edge_runtime.engine_cache import EngineCache, EngineKey, EngineLoadError
from mosaic_edge.errors import UserError

PROFILE = {
    "sar": [[1, 2, 8, 8], [8, 2, 8, 8], [32, 2, 8, 8]],
    "optical": [[1, 12, 8, 8], [8, 12, 8, 8], [32, 12, 8, 8]],
}


def key(**changes: object) -> EngineKey:
    fields = {
        "model_sha256": "ab" * 32,
        "trt_version": "10.3.0",
        "gpu_name": "Orin",
        "precision": "int8",
        "profile": PROFILE,
        "compute_capability": "8.7",
        "sm_count": 16,
        "driver_version": 12060,
        "workspace_mb": 1024,
        "builder_version": "2",
    } | changes
    return EngineKey(**fields)  # type: ignore[arg-type]


class FakeBuilder:
    def __init__(self) -> None:
        self.builds: list[EngineKey] = []

    def __call__(self, onnx: Path, out: Path, k: EngineKey) -> dict:
        self.builds.append(k)
        out.write_bytes(b"ENGINE:" + k.digest().encode())
        return {"build_seconds": 0.1}


def loader(path: Path) -> bytes:
    data = path.read_bytes()
    if not data.startswith(b"ENGINE:"):
        raise EngineLoadError(f"{path.name}: not an engine")
    return data


@pytest.fixture
def cache(tmp_path: Path) -> tuple[EngineCache, FakeBuilder, Path]:
    b = FakeBuilder()
    onnx = tmp_path / "model.int8.onnx"
    onnx.write_bytes(b"onnx")
    return EngineCache(tmp_path / "engines", b, loader), b, onnx


def test_first_start_builds_second_loads(cache) -> None:
    c, b, onnx = cache
    r1 = c.load_or_build(onnx, key())
    r2 = c.load_or_build(onnx, key())
    assert (r1.built, r1.reason) == (True, "missing")
    assert (r2.built, r2.reason) == (False, "hit")
    assert len(b.builds) == 1 and r1.path == r2.path and r2.engine.startswith(b"ENGINE:")
    manifest = json.loads(r1.path.with_name(r1.path.name + ".json").read_text())
    assert (
        manifest["gpu_name"] == "Orin" and manifest["profile"] == PROFILE and manifest["build_seconds"] == 0.1
    )


@pytest.mark.parametrize(
    "change",
    [
        {"model_sha256": "cd" * 32},
        {"trt_version": "10.4.0"},
        {"gpu_name": "NVIDIA H100"},
        {"precision": "fp16"},
        {"profile": {**PROFILE, "sar": [[1, 2, 8, 8], [8, 2, 8, 8], [64, 2, 8, 8]]}},
        # every Orin module reports the same GPU name: the device facts tell them apart
        {"compute_capability": "8.6"},
        {"sm_count": 8},
        {"driver_version": 12020},
        {"workspace_mb": 512},
        {"builder_version": "3"},
        {"calib_sha256": "ef" * 32},
    ],
)
def test_every_key_field_matters(cache, change: dict) -> None:
    c, b, onnx = cache
    c.load_or_build(onnx, key())
    other = key(**change)
    assert other.digest() != key().digest()
    r = c.load_or_build(onnx, other)
    assert r.built and len(b.builds) == 2 and r.path != c.paths(key())[0]


def test_manifest_with_other_key_at_the_path_rebuilds(cache) -> None:
    c, b, onnx = cache
    r = c.load_or_build(onnx, key())
    manifest = r.path.with_name(r.path.name + ".json")
    data = json.loads(manifest.read_text()) | {"gpu_name": "Xavier"}
    manifest.write_text(json.dumps(data))
    r2 = c.load_or_build(onnx, key())
    assert r2.built and r2.reason == "key mismatch"
    assert json.loads(manifest.read_text())["gpu_name"] == "Orin"


@pytest.mark.parametrize("damage", ["truncate", "garbage_same_hash", "manifest", "no_manifest"])
def test_corrupt_cache_is_rebuilt_not_a_crash(cache, damage: str) -> None:
    c, b, onnx = cache
    r = c.load_or_build(onnx, key())
    manifest = r.path.with_name(r.path.name + ".json")
    if damage == "truncate":
        r.path.write_bytes(r.path.read_bytes()[:5])
        want = "hash mismatch"
    elif damage == "garbage_same_hash":
        # bytes that match the manifest's hash but TensorRT refuses (e.g. built by another TensorRT)
        from mosaic_edge.contract import sha256_file

        r.path.write_bytes(b"\x00garbage")
        manifest.write_text(
            json.dumps(json.loads(manifest.read_text()) | {"engine_sha256": sha256_file(r.path)})
        )
        want = "load failed"
    elif damage == "manifest":
        manifest.write_text("{not json")
        want = "unreadable manifest"
    else:
        manifest.unlink()
        want = "missing"
    r2 = c.load_or_build(onnx, key())
    assert r2.built and r2.reason.startswith(want)
    assert r2.engine.startswith(b"ENGINE:") and len(b.builds) == 2
    assert c.check(key()) == "hit"


def test_unloadable_fresh_build_is_a_user_error(tmp_path: Path) -> None:
    def bad_builder(onnx: Path, out: Path, k: EngineKey) -> dict:
        out.write_bytes(b"junk")
        return {}

    c = EngineCache(tmp_path / "e", bad_builder, loader)
    with pytest.raises(UserError, match="cannot load the engine it just built"):
        c.load_or_build(tmp_path / "m.onnx", key())


def test_entries_lists_manifests(cache) -> None:
    c, _, onnx = cache
    c.load_or_build(onnx, key())
    c.load_or_build(onnx, key(precision="fp16"))
    assert sorted(e["precision"] for e in c.entries()) == ["fp16", "int8"]
