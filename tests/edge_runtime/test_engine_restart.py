"""Engine file corrupted between daemon restarts (issue 7): rebuilt on the next start, or a clear exit 2 —
never a crash loop. Uses the TRT helper's EngineCache with a fake builder/loader around an ORT runner."""

from __future__ import annotations

from pathlib import Path

from mosaic_edge.edge_runtime.daemon import Daemon, ServeConfig
from mosaic_edge.edge_runtime.engine_cache import EngineCache, EngineKey, EngineLoadError
from mosaic_edge.edge_runtime.runner import OnnxRuntimeRunner, Runner
from tests.support.runtime import read_results, write_npz_tile

MAGIC = b"FAKE-ENGINE\n"


class _FakeTRT:
    def __init__(self, healthy_builds: bool = True):
        self.builds = 0
        self.healthy_builds = healthy_builds

    def build(self, onnx: Path, out: Path, key: EngineKey) -> dict:
        self.builds += 1
        out.write_bytes((MAGIC if self.healthy_builds else b"junk") + onnx.read_bytes()[:64])
        return {"build_seconds": 0.0}

    def load(self, path: Path) -> bytes:
        data = path.read_bytes()
        if not data.startswith(MAGIC):
            raise EngineLoadError("bad magic (corrupt or foreign engine)")
        return data


class _CachedRunner(Runner):
    """Loads its 'engine' through the engine cache on activation; infers with ONNX Runtime."""

    kind = "fake-trt"

    def __init__(self, onnx: Path, cache: EngineCache):
        self.ort = OnnxRuntimeRunner(onnx, threads=1)
        super().__init__(self.ort.contract, "fp32", self.ort.model_hash)
        self.onnx, self.cache = onnx, cache
        self.key = EngineKey(self.ort.model_hash, "10.3.0", "Orin (fake)", "fp32", {"sar": [[1, 2, 16, 16]]},
                             compute_capability="8.7", sm_count=16, driver_version=12060, workspace_mb=1024,
                             builder_version="2")
        self.last = None

    def _activate(self) -> None:
        self.last = self.cache.load_or_build(self.onnx, self.key)
        self.ort.activate()

    def _deactivate(self) -> None:
        self.ort.deactivate()

    def _infer(self, batch):
        return self.ort._infer(batch)


def _start(onnx: Path, cache: EngineCache, spool: Path, name: str) -> tuple[int, _CachedRunner]:
    write_npz_tile(spool / "incoming" / f"{name}.npz", seed=len(name))
    runner = _CachedRunner(onnx, cache)
    code = Daemon(runner, spool, ServeConfig(settle_s=0, poll_s=0.05, max_wait_ms=5, once=True)).run()
    return code, runner


def test_corrupt_engine_is_rebuilt_then_clear_failure(tmp_path, tiny_onnx, caplog):
    fake = _FakeTRT()
    cache = EngineCache(tmp_path / "engines", fake.build, fake.load)
    spool = tmp_path / "spool"
    code, r = _start(tiny_onnx, cache, spool, "first")
    assert code == 0 and r.last.built and fake.builds == 1
    code, r = _start(tiny_onnx, cache, spool, "second")
    assert code == 0 and not r.last.built and r.last.reason == "hit"

    r.last.path.write_bytes(b"\0corrupted on disk")  # between restarts
    code, r = _start(tiny_onnx, cache, spool, "third")
    assert code == 0 and r.last.built and r.last.reason == "hash mismatch" and fake.builds == 2
    assert set(read_results(spool)) == {"first", "second", "third"}

    r.last.path.write_bytes(b"\0corrupted again")
    fake.healthy_builds = False  # and this time the rebuild is unusable too
    code, _ = _start(tiny_onnx, cache, spool, "fourth")
    assert code == 2  # a clear one-line failure (systemd: RestartPreventExitStatus=2), not a traceback loop
    (rec,) = [r for r in caplog.records if r.getMessage() == "cannot load the model"]
    assert "cannot load the engine it just built" in rec.fields["error"]
    assert (spool / "incoming" / "fourth.npz").is_file()  # untouched, served after the model is fixed
