"""Scenes: tiled GeoTIFF pairs too large to hold, read region by region, streamed through the daemon in pieces
with a streamed SHA-256; the same answers as a tile read whole, exactly once, bounded memory."""

from __future__ import annotations

import json
import weakref

import numpy as np
import pytest

from mosaic_edge.data.tiff import GeoInfo, write_tiff
from mosaic_edge.edge_runtime import pipeline
from mosaic_edge.scene import Raster, StreamingHash
from mosaic_edge.tile_format import TileLimits, fingerprint, tile_files
from tests.support.runtime import raw_tile, read_results, read_summaries, serve_once

GEO = GeoInfo((10.0, 0.0, 300000.0, 0.0, -10.0, 6600000.0), "EPSG:32633")
SMALL = TileLimits(chunk_bytes=256 << 10)  # scenes of a few hundred pixels stream in tests


def _scene(folder, h=200, w=296, seed=1, tile1=64, tile2=32, masks=True):
    sar, opt = raw_tile(h, w, seed)
    sar[:, 50:60, 70:90] = np.nan
    opt[:, 150:170, 10:40] = 0
    write_tiff(folder / "s1.tif", sar, GEO, tile=tile1)
    write_tiff(folder / "s2.tif", opt, GEO, tile=tile2, nodata=0)
    if masks:
        scl = np.full((h, w), 4, np.uint8)
        scl[:40] = 9
        write_tiff(folder / "scl.tif", scl, GEO, tile=16)
    return sar, opt


@pytest.mark.parametrize(("tile1", "tile2"), [(64, 32), (None, 48)])  # tiled, and strips + tiles
def test_region_reads_equal_the_decoded_image(tmp_path, tile1, tile2):
    sar, opt = _scene(tmp_path, tile1=tile1, tile2=tile2, masks=False)
    for name, want in (("s1.tif", sar), ("s2.tif", opt)):
        r = Raster(str(tmp_path / name), name)
        try:
            assert r.shape == want.shape and r.geo == GEO
            for r0, c0, h, w in ((0, 0, 200, 296), (17, 33, 50, 91), (199, 295, 1, 1), (64, 0, 64, 64)):
                np.testing.assert_array_equal(r.read(r0, c0, h, w), want[:, r0:r0 + h, c0:c0 + w])
        finally:
            r.close()


def test_streaming_hash_is_the_fingerprint(tmp_path):
    _scene(tmp_path)
    (tmp_path / "notes").write_bytes(b"")  # an empty file hashes too
    h = StreamingHash(tile_files(tmp_path, TileLimits()), "t")
    for f in (0.1, 0.1, 0.5, 0.99):
        h.advance(f)
        assert h.done >= int(h.total * f)
    assert h.hexdigest() == fingerprint(tmp_path)
    h.close()


def test_scene_pieces_give_the_records_of_the_tile_read_whole(tmp_path, tiny_export):
    from mosaic_edge.edge_runtime.runner import open_runner

    _scene(tmp_path / "t")
    with open_runner(tiny_export, kind="ort", threads=1) as r:
        job, units = pipeline.open_job(tmp_path / "t", "t", r.contract, SMALL)
        units = list(units)
        assert len(units) > 4 and all(isinstance(u, pipeline.Piece) for u in units)
        assert sorted(np.concatenate([u.index for u in units]).tolist()) == list(range(job.n))
        for u in units:
            pipeline.infer_job(r, u, 8)
        streamed = pipeline.job_records(job, r)
        whole_job, whole_units = pipeline.open_job(tmp_path / "t", "t", r.contract, TileLimits())
        assert list(whole_units) == [whole_job]  # under the chunk size: read whole
        pipeline.infer_job(r, whole_job, 8)
        whole = pipeline.job_records(whole_job, r)
    strip = [{k: v for k, v in rec.items() if k != "timings_ms"} for rec in streamed]
    assert strip == [{k: v for k, v in rec.items() if k != "timings_ms"} for rec in whole]
    assert streamed[0]["input_sha256"] == fingerprint(tmp_path / "t")
    assert streamed[0]["heads"]["sar"] > 0 and streamed[0]["heads"]["fused"] > 0  # SCL clouds + S2 nodata


def test_daemon_streams_a_scene_in_bounded_pieces_exactly_once(tmp_path, tiny_onnx, monkeypatch):
    spool = tmp_path / "spool"
    _scene(spool / "incoming" / "scene")
    (spool / "incoming" / "scene.ready").write_bytes(b"")
    made: list[weakref.ref] = []
    peak, largest = [0], [0]
    real = pipeline._scene_pieces

    def counting(*a, **kw):
        for piece in real(*a, **kw):
            made.append(weakref.ref(piece))  # a piece holds its windows' arrays until they are inferred
            held = sum(p.n for ref in made if (p := ref()) is not None and p.inputs is not None)
            peak[0] = max(peak[0], held)
            largest[0] = max(largest[0], piece.n)
            yield piece

    monkeypatch.setattr(pipeline, "_scene_pieces", counting)
    serve_once(tiny_onnx, spool, limits=SMALL, queue_tiles=2, readers=1, batch=8)
    records = read_results(spool)["scene"]
    summary = read_summaries(spool)["scene"]
    assert summary["windows"] == len(records) == 13 * 19 and summary["input_sha256"] == fingerprint(
        spool / "done" / "scene")
    assert [r["patch"] for r in records] == list(range(len(records)))  # row-major, as for any tile
    assert (spool / "results" / "scene.geojson").is_file()
    # Windows held at once (a piece counts whole until its last window is inferred): the queue's 2 pieces, the
    # one the reader is putting, and those of the batch being inferred -- the one it finishes, the one it starts
    # (both up to ``largest``) and any small ones wholly inside its 8 windows.
    assert largest[0] < len(records) // 4 and peak[0] <= (2 + 1 + 2) * largest[0] + 8
    # re-sent: a duplicate, recognised by the streamed digest
    _scene(spool / "incoming" / "scene")
    serve_once(tiny_onnx, spool, limits=SMALL)
    assert "already processed" in (spool / "failed" / "scene.reason").read_text()


def test_a_scene_corrupt_past_its_first_pieces_fails_and_the_daemon_serves_on(tmp_path, tiny_onnx):
    from tests.support.runtime import write_npz_tile

    spool = tmp_path / "spool"
    folder = spool / "incoming" / "bad"
    _scene(folder, masks=False)
    r = Raster(str(folder / "s2.tif"), "s2.tif")
    last = int(np.argmax(r.offsets))  # the segment stored last: read late, after pieces were queued
    off, count = int(r.offsets[last]), int(r.counts[last])
    r.close()
    data = bytearray((folder / "s2.tif").read_bytes())
    data[off:off + count] = b"\xff" * count
    (folder / "s2.tif").write_bytes(bytes(data))
    write_npz_tile(spool / "incoming" / "good.npz")
    daemon = serve_once(tiny_onnx, spool, limits=SMALL, queue_tiles=1)
    reason = (spool / "failed" / "bad.reason").read_text()
    assert reason.count("\n") == 1 and "s2.tif" in reason and "segment" in reason
    assert set(read_results(spool)) == {"good"} and not (spool / "results" / "bad.jsonl").exists()
    assert not daemon._ids and not daemon._names


def test_scene_limits(tmp_path, contract):
    from mosaic_edge.errors import DataError

    _scene(tmp_path / "t", masks=False)
    with pytest.raises(DataError, match="windows exceed"):
        pipeline.open_job(tmp_path / "t", "t", contract, TileLimits(chunk_bytes=256 << 10, max_windows=100))
    with pytest.raises(DataError, match="memory budget"):  # read whole, over the budget: refused from headers
        pipeline.open_job(tmp_path / "t", "t", contract, TileLimits(memory_bytes=48 * 100 * 100))
    _scene(tmp_path / "sar", masks=False)
    (tmp_path / "sar" / "s2.tif").unlink()
    job, units = pipeline.open_job(tmp_path / "sar", "sar", contract, SMALL, allow_sar_only=True)
    list(units)
    assert set(job.heads) == {"sar"}
    assert json.loads(json.dumps(job.optical_invalid.tolist())) == [1.0] * job.n
