"""Peak resident memory of ``kmc run`` per halide site. Prints a table and writes JSON; asserts nothing.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_memory.py [--sites 1e6 1e7 1e8]

Each size runs the embedded default configuration (a nanodomain with 64 defects) scaled to the given
number of sites, for a fixed event budget, in a fresh process (``kmc run``), and reads that process's
peak RSS. Target (issue): <= 40 B/site at 1e7 sites; a 1e8-site run must fit on a 24 GB machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench_kmc import cpu_model, git_revision  # noqa: E402

CHILD = r"""
import json, resource, sys, time
from kmc.config import load_config
from kmc.runner import run_all
n, out, events = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
cfg = load_config(None).with_overrides({"lattice.shape": [n, n, n], "configuration.domain_size": max(1, n // 3),
                                        "run.time_s": None, "run.max_events": events, "run.replicas": 1,
                                        "run.workers": 1, "output.directory": out, "output.plots": False})
t0 = time.perf_counter()
run_all(cfg, progress=False)
print(json.dumps({"wall_s": time.perf_counter() - t0,
                  "maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sites", nargs="+", type=float, default=[1e6, 1e7])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--out", default=str(REPO / "bench_results" / "bench_memory.json"))
    args = ap.parse_args()
    from common.atomic import write_json_atomic

    rows = []
    print(f"{'sites':>12} {'cells/edge':>10} {'peak RSS (MB)':>14} {'B/site':>8} {'wall (s)':>9}")
    for target in args.sites:
        n = max(3, round((target / 3) ** (1 / 3)))
        tmp = tempfile.mkdtemp(prefix="bench_mem_")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, "-c", CHILD, str(n), tmp, str(args.events)], capture_output=True,
                             text=True, env=env, cwd=REPO)
        if res.returncode:
            print(res.stderr[-2000:])
            return 1
        rec = json.loads(res.stdout.strip().splitlines()[-1])
        sites = 3 * n ** 3
        row = {"sites": sites, "cells_per_edge": n, "peak_rss_bytes": rec["maxrss_bytes"],
               "bytes_per_site": rec["maxrss_bytes"] / sites, "wall_s": rec["wall_s"],
               "process_wall_s": time.perf_counter() - t0}
        rows.append(row)
        print(f"{sites:12.3g} {n:10d} {row['peak_rss_bytes'] / 1e6:14.1f} {row['bytes_per_site']:8.1f} "
              f"{row['wall_s']:9.1f}")
    write_json_atomic(args.out, {"rows": rows, "events": args.events, "target_bytes_per_site_at_1e7": 40,
                                 "environment": {"cpu": cpu_model(), "git_revision": git_revision(),
                                                 "python": sys.version.split()[0]}})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
