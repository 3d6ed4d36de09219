"""The one GPU check script: every check that needs a CUDA GPU, one short table.

Run on a machine with a CUDA GPU (``python scripts/gpu_check.py``). Each stage's check is a ``run() -> list[dict]``
function living next to the code it checks; this script only calls them, times them and prints the rows:

- ``mosaic_edge.train.gpu_check``: a few hundred MoSAiC training steps on CUDA with AMP, samples/s.
- ``mosaic_edge.edge_runtime.gpu_check``: the cuda-python half of the CUDA adapter (alloc, H2D/D2H, stream, events).
- ``mosaic_edge.export.gpu_profile_check``: torch CUDA-graph replay of the model as the device-time reference.

Without a GPU every check reports ``skipped`` and the script exits 0; a check that raises makes it exit 1.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
import traceback

CHECKS = (
    "mosaic_edge.train.gpu_check",
    "mosaic_edge.edge_runtime.gpu_check",
    "mosaic_edge.export.gpu_profile_check",
)


def main() -> int:
    rows: list[dict] = []
    failed = False
    for name in CHECKS:
        t0 = time.perf_counter()
        try:
            result = importlib.import_module(name).run()
        except Exception as exc:  # noqa: BLE001 - report every check, then fail at the end
            traceback.print_exc()
            result = [{"check": name, "status": f"FAILED: {exc}"}]
            failed = True
        for row in result:
            rows.append({"module": name.rsplit(".", 2)[-2], **row, "wall_s": round(time.perf_counter() - t0, 1)})
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    widths = {k: max(len(k), *(len(str(r.get(k, ""))) for r in rows)) for k in keys}
    print(" | ".join(k.ljust(widths[k]) for k in keys))
    print("-+-".join("-" * widths[k] for k in keys))
    for row in rows:
        print(" | ".join(str(row.get(k, "")).ljust(widths[k]) for k in keys))
    print(json.dumps(rows), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
