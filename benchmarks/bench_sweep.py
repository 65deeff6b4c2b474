"""Overhead of ``kmc sweep`` (Dask LocalCluster, task hashing, tidy table) against the same tasks run one
after another with ``kmc.runner.run_all``. Prints a table and writes JSON; asserts nothing.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_sweep.py [--events N] [--out bench_results/bench_sweep.json]

Target (issue): overhead < 5 % of the sequential time. Two sequential baselines: ``run_all`` in one warm
process (kernels already loaded: the strict one) and one ``kmc run`` process per task (what a user does
without ``kmc sweep``). The overhead against the first is mostly the cluster's and the worker's start-up
(seconds), so it is reported for the task size given; with tasks of minutes it vanishes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench_kmc import cpu_model, git_revision  # noqa: E402


def _base_text(events: int, interface: str | None = None, temperature: float = 600.0, seed: int | None = None,
               directory: Path | None = None) -> str:
    """The base config of the benchmark sweep; with ``interface``/``seed``/``directory``, one task of it as a
    standalone ``kmc run`` config."""
    conf = "[configuration]\nkind = \"heterojunction\"\nthickness_I = 8\nthickness_Br = 8\n"
    if interface is not None:
        conf += f"interface = \"{interface}\"\n"
    run = f"[run]\ntemperatures_K = [{temperature}]\nmax_events = {events}\nn_observations = 50\n"
    if seed is not None:
        run += f"seed = {seed}\n"
    out = "[output]\nplots = false\n" + (f"directory = \"{directory}\"\n" if directory is not None else "")
    return ("[lattice]\nshape = [16, 6, 6]\n" + conf
            + "[defects]\nvacancies = 1\ninterstitials = 1\nplacement = \"interface\"\n" + run + out)


def _spec(tmp: Path, events: int) -> Path:
    base = tmp / f"base{events}.toml"
    base.write_text(_base_text(events))
    spec = tmp / f"s{events}.toml"
    spec.write_text(f'[sweep]\nbase = "{base.name}"\nreplicas = 1\nseed = 1\ndirectory = "{tmp / f"sweep{events}"}"\n'
                    '[axes]\n"configuration.interface" = ["I-rich", "Br-rich"]\n"run.temperatures_K" = [500.0, 600.0]\n')
    return spec


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, nargs="+", default=[2_000_000, 20_000_000],
                    help="KMC events per job (one measurement per value)")
    ap.add_argument("--out", default=str(REPO / "bench_results" / "bench_sweep.json"))
    args = ap.parse_args()
    from common.atomic import write_json_atomic
    from kmc.runner import run_all
    from kmc.sweep import load_sweep, run_sweep

    tmp = Path(tempfile.mkdtemp(prefix="bench_sweep_"))
    rows = []
    print(f"{'worker':>10} {'tasks':>5} {'events/task':>12} {'sequential (s)':>15} {'kmc run x N':>13} {'sweep (s)':>10} "
          f"{'cluster (s)':>11} {'table+plots (s)':>15} {'overhead':>9} {'w/o plots':>9} {'vs CLI':>8}")
    for events in args.events:
        spec = _spec(tmp, events)
        sw = load_sweep(spec)
        run_all(sw["tasks"][0]["config"].with_overrides({"output.directory": str(tmp / f"warm{events}")}), progress=False)
        t0 = time.perf_counter()
        for n, t in enumerate(sw["tasks"]):
            run_all(t["config"].with_overrides({"output.directory": str(tmp / f"seq{events}_{n}")}), progress=False)
        seq = time.perf_counter() - t0
        # what a user does without kmc sweep: one `kmc run` per point, each a new process
        cli_cfgs = []
        for n, t in enumerate(sw["tasks"]):
            c = t["config"]
            f = tmp / f"cli{events}_{n}.toml"
            f.write_text(_base_text(events, c.configuration.interface, c.run.temperatures_K[0], c.run.seed,
                                    tmp / f"cli{events}_{n}"))
            cli_cfgs.append(f)
        t0 = time.perf_counter()
        for f in cli_cfgs:
            subprocess.run([str(Path(sys.executable).parent / "kmc"), "run", str(f), "-q"], check=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL)
        cli = time.perf_counter() - t0
        for mode in ("process", "in-process"):
            shutil.rmtree(tmp / f"sweep{events}", ignore_errors=True)
            t0 = time.perf_counter()
            res = run_sweep(spec, workers=1, progress=False, in_process=mode == "in-process")
            swp = time.perf_counter() - t0
            tp = res["timing"]["table_and_plots_s"]
            rec = {"worker": mode, "tasks": len(sw["tasks"]), "events_per_task": events, "sequential_s": seq,
                   "sequential_cli_s": cli, "sweep_s": swp, "timing": res["timing"],
                   "overhead_percent": 100.0 * (swp - seq) / seq,
                   "overhead_without_plots_percent": 100.0 * (swp - tp - seq) / seq,
                   "overhead_vs_cli_percent": 100.0 * (swp - cli) / cli}
            rows.append(rec)
            print(f"{mode:>10} {rec['tasks']:5d} {events:12.3g} {seq:15.2f} {cli:13.2f} {swp:10.2f} "
                  f"{res['timing']['cluster_s']:11.2f} {tp:15.2f} {rec['overhead_percent']:8.1f}% "
                  f"{rec['overhead_without_plots_percent']:8.1f}% {rec['overhead_vs_cli_percent']:7.1f}%")
    out = {"rows": rows, "target_percent": 5.0, "workers": 1,
           "note": "process: the default one-process LocalCluster worker; in-process: kmc sweep --in-process "
                   "(a worker thread in this process); the table and plots are outputs the sequential runs do "
                   "not make; overhead: against run_all in one warm process (kernels loaded); vs CLI: against "
                   "one `kmc run` process per task, as without kmc sweep",
           "environment": {"cpu": cpu_model(), "git_revision": git_revision(), "python": sys.version.split()[0]}}
    write_json_atomic(args.out, out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
