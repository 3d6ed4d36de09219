"""Loader throughput: patches/s per loader worker from the raw layout vs the packed store.

Two datasets in the BigEarthNet v2 layout (120 px, 14 GeoTIFFs per pair): the 18 clean real pairs of
``tests/data/benv2-mini`` replicated (every copy its own folders and patch ids), and ``mosaic-edge synth`` output.
Each is packed with ``mosaic-edge pack``; then, in interleaved rounds, with one torch thread:

- ``raw``: what a DataLoader worker does per patch from the raw layout: read the 14 files and run the shared
  preprocessing (:class:`~mosaic_edge.data.base.PatchDataset`);
- ``store loader, W threads``: the training loader of a packed store (:class:`~mosaic_edge.train.store_loader.
  StoreLoader`: ``torch.index_select`` of random batches out of the memory maps into reused buffers by W threads),
  raw units as they go to the device; per thread = total / W;
- ``store loader, 1 threads + host standardisation``: the same plus the shared numpy standardisation of every
  patch on this CPU (:class:`~mosaic_edge.train.data.StoreSplit` on a CPU device), i.e. training on a CPU;
- ``store, DataLoader W processes``: for comparison, the same gathers in DataLoader worker processes (batches come
  back through shared memory), total and per worker;
- alternatives to the loader's choices, one core: numpy fancy indexing and ``torch.index_select`` instead of row
  copies, and the torch batch standardisation (:class:`~mosaic_edge.train.normalise.BatchNormaliser`) instead of the
  numpy one on a CPU.

Each configuration runs pinned to as many CPUs as it has workers (CPU affinity, so "per worker" is per core, also
for torch's own threads); configurations of one CPU budget alternate in rounds; medians of the rounds; page cache
warm (a first untimed pass reads every file once).

    python benchmarks/store_throughput.py --copies 30 --synthetic 540 --out benchmarks/results/store_throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from mosaic_edge.data.base import PatchDataset
from mosaic_edge.data.benv2 import METADATA, S1_DIR, S2_DIR, s1_product, s2_product
from mosaic_edge.data.pack import pack_dataset
from mosaic_edge.data.sources import DataSpec, contract_for, open_source
from mosaic_edge.data.synthetic import SyntheticConfig, write_benv2_layout
from mosaic_edge.optional import require

REPO = Path(__file__).resolve().parents[1]


def replicate_benv2(src_root: Path, out: Path, copies: int) -> Path:
    """The clean pairs of a BigEarthNet v2 root, ``copies`` times, each copy under new patch ids and folders."""
    pq = require("pyarrow.parquet", extra="data")
    pa = require("pyarrow", extra="data")
    rows = pq.read_table(src_root / METADATA).to_pylist()
    new_rows = []
    for c in range(copies):
        for r in rows:
            pid, s1 = r["patch_id"], r["s1_name"]
            p_head, (row, col) = pid.rsplit("_", 2)[0], pid.rsplit("_", 2)[1:]
            s_head = s1.rsplit("_", 2)[0]
            npid, ns1 = f"{p_head}_{int(row) + 1000 * (c + 1)}_{col}", f"{s_head}_{int(row) + 1000 * (c + 1)}_{col}"
            for kind, old, new, prod in ((S2_DIR, pid, npid, s2_product), (S1_DIR, s1, ns1, s1_product)):
                src_dir = src_root / kind / prod(old) / old
                dst_dir = out / kind / prod(new) / new
                dst_dir.mkdir(parents=True, exist_ok=True)
                for f in src_dir.iterdir():
                    shutil.copyfile(f, dst_dir / f.name.replace(old, new))
            new_rows.append({**r, "patch_id": npid, "s1_name": ns1, "split": "train"})
    pq.write_table(pa.Table.from_pylist(new_rows), out / METADATA)
    return out


def _rate(fn: Any, n: int) -> float:
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


class _GatherDataset:
    """Batches gathered in DataLoader worker processes (the comparison the store loader's threads replace)."""

    def __init__(self, source: Any):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, idx: np.ndarray) -> dict[str, Any]:
        import torch

        g = self.source.gather(idx)
        return {"sar": torch.from_numpy(g["sar"]), "optical": torch.from_numpy(g["optical"].view(np.int16))}


def measure(raw_root: Path, store: Path, rounds: int, batch: int, workers: list[int]) -> dict[str, Any]:
    """Interleaved rounds per CPU budget: the one-core configurations pinned to CPU 0, then each W-worker one
    pinned to W CPUs (threads and processes inherit the affinity they are created under)."""
    import torch

    from mosaic_edge.data.base import labelled_mask
    from mosaic_edge.train.data import StoreSplit
    from mosaic_edge.train.store_loader import StoreLoader

    torch.set_num_threads(1)
    cpus = sorted(os.sched_getaffinity(0))
    contract = contract_for(raw_root)
    raw = PatchDataset(open_source(raw_root, "train"), contract)
    src = open_source(store, "train")
    n = len(src)
    rng = np.random.default_rng(0)
    raw_idx = rng.permutation(len(raw))[:64]
    for i in range(len(raw)):  # warm the page cache with every raw file
        raw.source.read(i)
    src.gather(np.arange(n))  # and every page of the store

    def batches() -> list[torch.Tensor]:
        return [torch.from_numpy(rng.choice(n, batch, replace=False)) for _ in range(max(8, 4096 // batch))]

    def raw_pass() -> float:
        t0 = time.perf_counter()
        for i in raw_idx:
            raw[int(i)]
        return len(raw_idx) / (time.perf_counter() - t0)

    def loader_pass(loader: StoreLoader) -> float:
        bs = batches()
        t0 = time.perf_counter()
        for _ in loader.batches(bs):
            pass
        return batch * len(bs) / (time.perf_counter() - t0)

    def host_pass(split: StoreSplit) -> float:
        bs = batches()[:4]
        t0 = time.perf_counter()
        for _ in split.iter_batches(bs):
            pass
        return batch * len(bs) / (time.perf_counter() - t0)

    def dataloader_pass(dl: Any) -> float:
        loader, plan = dl
        plan[:] = [b.numpy() for b in batches()]
        t0 = time.perf_counter()
        got = sum(len(b["sar"]) for b in loader)
        return got / (time.perf_counter() - t0)

    arrays = src.arrays()
    bufs = (np.empty((batch, *arrays["sar"].shape[1:]), np.float32),
            np.empty((batch, *arrays["optical"].shape[1:]), np.uint16))

    def fancy_pass(_: Any) -> float:  # numpy advanced indexing: one vectorised gather per array, new arrays
        bs = batches()
        t0 = time.perf_counter()
        for b in bs:
            rows = np.sort(b.numpy())
            arrays["sar"][rows], arrays["optical"][rows]  # noqa: B018 - the gather is what is timed
        return batch * len(bs) / (time.perf_counter() - t0)

    def index_select_pass(_: Any) -> float:  # torch.index_select into reused buffers (one torch thread)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            ts, to = torch.from_numpy(arrays["sar"]), torch.from_numpy(arrays["optical"].view(np.int16))
        bs_, bo = torch.from_numpy(bufs[0]), torch.from_numpy(bufs[1].view(np.int16))
        bs = batches()
        t0 = time.perf_counter()
        for b in bs:
            torch.index_select(ts, 0, b, out=bs_)
            torch.index_select(to, 0, b, out=bo)
        return batch * len(bs) / (time.perf_counter() - t0)

    def torch_standardise_pass(_: Any) -> float:  # the device-side BatchNormaliser, run on this CPU
        from mosaic_edge.train.normalise import BatchNormaliser, uint16_to_float

        norm = BatchNormaliser(contract)
        bs = batches()[:4]
        t0 = time.perf_counter()
        for b in bs:
            g = src.gather(b.numpy())
            norm.sar(torch.from_numpy(g["sar"]))
            norm.optical(uint16_to_float(torch.from_numpy(g["optical"].view(np.int16))))
        return batch * len(bs) / (time.perf_counter() - t0)

    def dataloader(w: int) -> Any:
        plan: list[np.ndarray] = []
        return torch.utils.data.DataLoader(_GatherDataset(src), sampler=plan,  # type: ignore[arg-type]
                                           batch_size=None, num_workers=w, persistent_workers=True), plan

    res: dict[str, list[float]] = {}
    for w in workers:
        os.sched_setaffinity(0, cpus[:w])
        configs: dict[str, Any] = {
            f"store loader, {w} threads": (loader_pass, StoreLoader(src, w)),
            f"store, DataLoader {w} processes": (dataloader_pass, dataloader(w)),
        }
        if w == 1:
            configs = {"raw": (lambda _: raw_pass(), None), **configs,
                       "store loader, 1 threads + host standardisation": (
                           host_pass, StoreSplit(src, contract, labelled_mask(n, 1.0, 0), 1)),
                       "gather alternative: numpy fancy indexing": (fancy_pass, None),
                       "gather alternative: torch.index_select": (index_select_pass, None),
                       "host standardisation alternative: torch batch ops (BatchNormaliser on the CPU)": (
                           torch_standardise_pass, None)}
        for fn, obj in configs.values():  # start threads and processes, size the buffers
            fn(obj)
        for _ in range(rounds):  # interleaved
            for name, (fn, obj) in configs.items():
                res.setdefault(name, []).append(fn(obj))
    os.sched_setaffinity(0, cpus)
    out: dict[str, Any] = {}
    for k, v in res.items():
        words = k.replace(",", " ").split()
        w = int(words[words.index("threads") - 1]) if "threads" in words else \
            int(words[words.index("processes") - 1]) if "processes" in words else 1
        out[k] = {"median": round(statistics.median(v), 1), "per_worker": round(statistics.median(v) / w, 1),
                  "cpus": w, "rounds": [round(x, 1) for x in v]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=30, help="copies of the 18 clean benv2-mini pairs")
    ap.add_argument("--synthetic", type=int, default=540, help="synthetic train patches (mosaic-edge synth)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--workers", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--tmp", type=Path, default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    tmp = Path(args.tmp or tempfile.mkdtemp(prefix="store-bench-"))
    out: dict[str, Any] = {"load_average_before": os.getloadavg(), "cpus": os.cpu_count()}
    datasets = {
        f"benv2-mini x{args.copies}": lambda p: replicate_benv2(REPO / "tests/data/benv2-mini", p, args.copies),
        f"synth {args.synthetic}": lambda p: write_benv2_layout(
            SyntheticConfig(n_train=args.synthetic, n_val=0, n_test=0), p, splits=("train",)),
    }
    for name, make in datasets.items():
        root = tmp / name.replace(" ", "_")
        if not (root / METADATA).is_file():
            make(root)
        store = tmp / (root.name + ".store")
        t0 = time.perf_counter()
        summary = pack_dataset(DataSpec(str(root)), store, workers=2, splits=("train",))
        pack_s = time.perf_counter() - t0
        res = measure(root, store, args.rounds, args.batch, args.workers)
        res["pack"] = {"patches": summary.counts["train"], "seconds": round(pack_s, 1),
                       "patches_per_s": round(summary.counts["train"] / pack_s, 1), "workers": 2,
                       "store_mb": round(sum(f.stat().st_size for f in (store / "train").glob("*.npy")) / 1e6, 1)}
        out[name] = res
        print(name, json.dumps(res), flush=True)
    out["load_average_after"] = os.getloadavg()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1) + "\n")
    if args.tmp is None:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
