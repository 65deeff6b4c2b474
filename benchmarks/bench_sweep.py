"""Overhead of ``kmc sweep`` (Dask LocalCluster, task hashing, tidy table) against the same tasks run one
after another with ``kmc.runner.run_all``. Prints a table and writes JSON; asserts nothing.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_sweep.py [--events N] [--out bench_results/bench_sweep.json]

Target (issue): overhead < 5 % of the sequential time. The overhead is mostly the cluster's start-up
(seconds), so it is reported for the task size given; with tasks of minutes it vanishes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench_kmc import cpu_model, git_revision  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=2_000_000, help="KMC events per job")
    ap.add_argument("--out", default=str(REPO / "bench_results" / "bench_sweep.json"))
    args = ap.parse_args()
    from common.atomic import write_json_atomic
    from kmc.runner import run_all
    from kmc.sweep import load_sweep, run_sweep

    tmp = Path(tempfile.mkdtemp(prefix="bench_sweep_"))
    (tmp / "base.toml").write_text(
        "[lattice]\nshape = [16, 6, 6]\n[configuration]\nkind = \"heterojunction\"\nthickness_I = 8\nthickness_Br = 8\n"
        "[defects]\nvacancies = 1\ninterstitials = 1\nplacement = \"interface\"\n"
        f"[run]\ntemperatures_K = [600.0]\nmax_events = {args.events}\nn_observations = 50\n[output]\nplots = false\n")
    spec = tmp / "s.toml"
    spec.write_text(f'[sweep]\nbase = "base.toml"\nreplicas = 1\nseed = 1\ndirectory = "{tmp / "sweep"}"\n'
                    '[axes]\n"configuration.interface" = ["I-rich", "Br-rich"]\n"run.temperatures_K" = [500.0, 600.0]\n')
    sw = load_sweep(spec)
    run_all(sw["tasks"][0]["config"].with_overrides({"output.directory": str(tmp / "warm")}), progress=False)  # JIT
    t0 = time.perf_counter()
    for n, t in enumerate(sw["tasks"]):
        run_all(t["config"].with_overrides({"output.directory": str(tmp / f"seq{n}")}), progress=False)
    seq = time.perf_counter() - t0
    t0 = time.perf_counter()
    run_sweep(spec, workers=1, progress=False)
    swp = time.perf_counter() - t0
    rec = {"tasks": len(sw["tasks"]), "events_per_task": args.events, "sequential_s": seq, "sweep_s": swp,
           "overhead_percent": 100.0 * (swp - seq) / seq, "target_percent": 5.0,
           "environment": {"cpu": cpu_model(), "git_revision": git_revision(), "python": sys.version.split()[0]}}
    print(f"{'tasks':>5} {'events/task':>12} {'sequential (s)':>15} {'sweep (s)':>10} {'overhead':>9}")
    print(f"{rec['tasks']:5d} {args.events:12.3g} {seq:15.2f} {swp:10.2f} {rec['overhead_percent']:8.1f}%")
    write_json_atomic(args.out, rec)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
