"""``kmc sweep SWEEP.toml``: a base config times axes over any config key, run as tasks on Dask.

Sweep file::

    [sweep]
    base = "base.toml"          # a run config (relative to this file); or "default"
    mode = "grid"               # grid: every combination of [axes]; list: the [[points]] as given
    replicas = 2                # run.replicas of every task
    seed = 1                    # master seed; each task's run.seed comes from it and the task's hash
    directory = "sweep_out"     # relative to the current folder

    [axes]                      # grid mode: dotted config key -> list of values
    "configuration.interface" = ["I-rich", "Br-rich"]
    "run.temperatures_K" = [500.0, 600.0]     # a number here means a one-temperature task

    [[points]]                  # list mode: each point a table of dotted keys
    "configuration.x_I" = 0.25

Each task is the base config with the point's values, validated up front (a
bad key or value names it before anything runs). It is stored in
``<directory>/tasks/<hash>/`` where the hash is that of its physics
fingerprint (config without output or parallelism): a rerun reuses finished
tasks and resumes checkpointed ones, a changed point is a new task, and the
old results stay. The seed of a task is drawn from
``SeedSequence([seed, hash])``, so results do not depend on which worker ran
what, or when.

Tasks run on Dask distributed: a ``LocalCluster`` of ``--workers`` processes
with one thread each, or ``--scheduler ADDRESS`` (a running scheduler, e.g.
from dask-jobqueue's ``SLURMCluster``). A task that dies with its worker is
rerun by Dask and continues from its last checkpoint.

Results: ``results.csv`` / ``results.json``, one row per task and
temperature with the swept values as columns, and ``plots/`` (D against T per
value of each other axis).
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import logging
import math
import sys
import threading
import time
from pathlib import Path

import numpy as np

from common.atomic import read_text_file, write_json_atomic, write_text_atomic
from kmc.config import ConfigError, RunConfig, load_config, physics_fingerprint, resolve

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger(__name__)

SWEEP_KEYS = {"base", "mode", "replicas", "seed", "directory"}
SCHEMA = "halide-kmc/sweep"


class SweepError(ValueError):
    """An invalid sweep file; the message names the field."""


def task_hash(cfg: RunConfig) -> str:
    fp = physics_fingerprint(cfg)
    fp["run"] = {k: v for k, v in fp["run"].items() if k != "seed"}  # the seed follows from the hash
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]


def _task_seed(master: int, h: str) -> int:
    ss = np.random.SeedSequence([int(master), int(h, 16)])
    return int(ss.generate_state(1, dtype=np.uint64)[0] % (2 ** 63 - 1))


def load_sweep(path) -> dict:
    """Read, expand and validate a sweep: returns its settings and the resolved config of every task."""
    p = Path(path)
    try:
        raw = tomllib.loads(read_text_file(p, "sweep file"))
    except ValueError as exc:
        raise SweepError(str(exc)) from None
    for sec in raw:
        if sec not in ("sweep", "axes", "points"):
            raise SweepError(f"{p}: unknown section [{sec}]; valid sections are ['axes', 'points', 'sweep']")
    s = raw.get("sweep", {})
    for k in s:
        if k not in SWEEP_KEYS:
            raise SweepError(f"{p}: unknown key {k!r} in [sweep]; valid keys are {sorted(SWEEP_KEYS)}")
    mode = s.get("mode", "grid")
    if mode not in ("grid", "list"):
        raise SweepError(f"{p}: sweep.mode must be 'grid' or 'list', got {mode!r}")
    base = s.get("base", "default")
    if not isinstance(base, str):
        raise SweepError(f"{p}: sweep.base must be a config path or 'default'")
    try:
        base_cfg = load_config(None if base == "default" else (p.parent / base))
    except ConfigError as exc:
        raise SweepError(f"sweep.base: {exc}") from None
    replicas = s.get("replicas", base_cfg.run.replicas)
    seed = s.get("seed", 0)
    for name, v in (("replicas", replicas), ("seed", seed)):
        if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name == "replicas" else 0):
            raise SweepError(f"{p}: sweep.{name} must be a {'positive' if name == 'replicas' else 'non-negative'} "
                             f"integer, got {v!r}")
    directory = s.get("directory", str(p.with_suffix("")) + "_out")
    if mode == "grid":
        axes = raw.get("axes", {})
        if not isinstance(axes, dict) or not axes:
            raise SweepError(f"{p}: grid mode needs an [axes] table of 'section.key' = [values]")
        for k, vals in axes.items():
            if not isinstance(vals, list) or not vals:
                raise SweepError(f"{p}: axis {k!r} must be a non-empty list of values")
            keyed = [json.dumps(v, sort_keys=True) for v in vals]
            if len(set(keyed)) != len(keyed):
                raise SweepError(f"{p}: axis {k!r} has duplicate values")
        names = list(axes)
        points = [dict(zip(names, combo)) for combo in itertools.product(*(axes[n] for n in names))]
    else:
        points = raw.get("points", [])
        if not isinstance(points, list) or not points or not all(isinstance(x, dict) for x in points):
            raise SweepError(f"{p}: list mode needs [[points]] tables")
    tasks, seen = [], {}
    for n, point in enumerate(points):
        over = {}
        for k, v in point.items():
            if k == "run.temperatures_K" and not isinstance(v, list):
                v = [v]
            over[k] = v
        over.update({"run.replicas": replicas, "run.workers": 1, "output.plots": False})
        try:
            cfg = base_cfg.with_overrides(over)
        except ConfigError as exc:
            raise SweepError(f"point {n} {point}: {exc}") from None
        h = task_hash(cfg)
        if h in seen:
            raise SweepError(f"points {seen[h]} and {n} are the same task ({point})")
        seen[h] = n
        cfg = cfg.with_overrides({"run.seed": _task_seed(seed, h),
                                  "output.directory": str(Path(directory) / "tasks" / h)})
        tasks.append({"hash": h, "point": point, "config": cfg})
    spec_hash = hashlib.sha256(json.dumps({"base": base_cfg.to_dict(), "replicas": replicas, "seed": seed},
                                          sort_keys=True).encode()).hexdigest()[:16]
    return {"path": str(p), "mode": mode, "replicas": replicas, "seed": seed, "directory": directory,
            "base": base_cfg, "tasks": tasks, "spec_hash": spec_hash}


def _run_task(cfg_dict: dict) -> dict:
    """One task (in a Dask worker): ``run_all`` with resume; returns its summary."""
    import os  # noqa: PLC0415

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from kmc.runner import run_all  # noqa: PLC0415

    cfg = resolve(cfg_dict)
    out = Path(cfg.output.directory)
    s = out / "summary.json"
    if s.is_file() and (out / "config.resolved.json").is_file():
        return json.loads(s.read_text())
    return run_all(cfg, resume=True, progress=False)


def _import_plotting() -> None:
    try:
        import h5py  # noqa: F401, PLC0415
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot  # noqa: F401, PLC0415
    except Exception:  # noqa: BLE001 - plot_sweep reports a plotting problem itself
        pass


def _client(workers: int, scheduler: str | None, in_process: bool = False):
    try:
        from dask.distributed import Client, LocalCluster  # noqa: PLC0415
    except ImportError as exc:  # pragma: no cover
        raise RuntimeError(f"kmc sweep needs dask[distributed] ({exc})") from None
    logging.getLogger("distributed").setLevel(logging.WARNING)
    if scheduler:
        try:
            return Client(scheduler, timeout="5s"), None
        except (OSError, TimeoutError) as exc:
            raise RuntimeError(f"cannot reach the Dask scheduler at {scheduler!r} ({type(exc).__name__}: {exc})") from None
    # default: one single-threaded process per worker (the kernels hold the GIL; a killed worker's task
    # reruns from its checkpoint). in_process: one worker thread in this process, no process start and
    # the kernels' JIT already loaded, but a crash of a task takes the sweep with it.
    if in_process and int(workers) != 1:
        raise ValueError("--in-process runs exactly one worker; drop --workers or set it to 1")
    # Dask's statistical profiler samples the worker thread's stack every 10 ms and needs the GIL for it,
    # which the kernels hold: off, it costs a task several per cent of its time (bench_sweep.py). The
    # event-loop tick (20 ms), system monitor (0.5 s) and memory monitor (0.1 s) keep an idle one-worker
    # cluster at about 6 % of a core, taken from the tasks when every core is busy; at 1 s, 5 s and 1 s it
    # is under 1 %. Tasks run for seconds to hours, so nothing here needs a faster reaction.
    import dask  # noqa: PLC0415

    with dask.config.set({"distributed.worker.profile.enabled": False,
                          "distributed.admin.tick.interval": "1s",
                          "distributed.admin.system-monitor.interval": "5s",
                          "distributed.worker.memory.monitor-interval": "1s"}):
        cluster = LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=not in_process,
                               dashboard_address=None if in_process else ":0", silence_logs=logging.WARNING)
    return Client(cluster), cluster


def run_sweep(path, *, workers: int = 1, scheduler: str | None = None, force: bool = False,
              progress: bool = True, in_process: bool = False) -> dict:
    """Run every task of a sweep that is not finished; write the tidy table and plots."""
    sw = load_sweep(path)
    out = Path(sw["directory"])
    meta = out / "sweep.json"
    if meta.is_file():
        old = json.loads(meta.read_text())
        if old.get("spec_hash") != sw["spec_hash"] and not force:
            raise SweepError(f"{out} holds a sweep of another base config, replicas or seed; use --force to add "
                             "this one beside it, or another sweep.directory")
    write_json_atomic(meta, {"schema": SCHEMA, "spec_hash": sw["spec_hash"], "sweep_file": sw["path"],
                             "base": sw["base"].to_dict(), "replicas": sw["replicas"], "seed": sw["seed"],
                             "tasks": [{"hash": t["hash"], "point": t["point"]} for t in sw["tasks"]]})
    todo = [t for t in sw["tasks"] if not (Path(t["config"].output.directory) / "summary.json").is_file()]
    t0 = time.perf_counter()
    timing = {"cluster_s": 0.0, "tasks_s": 0.0, "table_and_plots_s": 0.0}
    summaries = {}
    if todo:
        client, cluster = _client(workers, scheduler, in_process)
        timing["cluster_s"] = time.perf_counter() - t0
        try:
            from dask.distributed import as_completed  # noqa: PLC0415
            from tqdm import tqdm  # noqa: PLC0415

            futs = {client.submit(_run_task, t["config"].to_dict(), key=f"kmc-task-{t['hash']}", retries=2,
                                  pure=False): t["hash"] for t in todo}
            # the plotting libraries load while the workers run, so the table and plots after the last task
            # cost their own time only
            threading.Thread(target=_import_plotting, daemon=True).start()
            bar = tqdm(total=len(sw["tasks"]), initial=len(sw["tasks"]) - len(todo), desc="sweep", unit="task",
                       disable=not progress or not sys.stderr.isatty())
            for f in as_completed(futs):
                summaries[futs[f]] = f.result()
                bar.update(1)
            bar.close()
            timing["tasks_s"] = time.perf_counter() - t0 - timing["cluster_s"]
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    t_table = time.perf_counter()
    for t in sw["tasks"]:
        if t["hash"] not in summaries:
            summaries[t["hash"]] = json.loads((Path(t["config"].output.directory) / "summary.json").read_text())
    rows = tidy_rows(sw, summaries)
    write_json_atomic(out / "results.json", {"schema": SCHEMA + "-results", "rows": rows,
                                             "units": {"D": "cm^2/s", "temperature": "K", "F": "eV"}})
    _write_csv(out / "results.csv", rows)
    try:
        plot_sweep(rows, list(sw["tasks"][0]["point"]), out / "plots")
        plot_profiles_and_mixing(sw, summaries, out / "plots")
    except Exception as exc:  # noqa: BLE001 - the table must survive a plotting problem
        log.warning("plots failed: %s", exc)
    timing["table_and_plots_s"] = time.perf_counter() - t_table
    return {"rows": rows, "n_tasks": len(sw["tasks"]), "n_run": len(todo), "wall_s": time.perf_counter() - t0,
            "directory": str(out), "timing": timing}


def _plane_free_energy(entry: dict, cfg: RunConfig) -> np.ndarray | None:
    """Defect free energy per site of each plane (eV, NaN where never visited) from the KMC residence times."""
    from common.units import K_B_EV  # noqa: PLC0415
    from lattice import HalideSublattice  # noqa: PLC0415

    occ = np.sum([np.asarray(v, dtype=float) for v in entry["occupancy_time_per_plane_s"].values()], axis=0)
    kind = cfg.configuration.kind
    axis = {"x": 0, "y": 1, "z": 2}[cfg.configuration.axis] if kind in ("heterojunction", "nanodomain") else 0
    spp = HalideSublattice(cfg.lattice.shape).sites_per_plane(axis)
    if occ.size != spp.size:
        return None
    p = occ / spp
    if not np.any(p > 0):
        return None
    with np.errstate(divide="ignore"):
        return np.where(p > 0, -K_B_EV * entry["temperature_K"] * np.log(p / p.max()), np.nan)


def _profile_barrier(entry: dict, cfg: RunConfig) -> float:
    """max - min of the defect free-energy profile over planes (eV); inf if a plane was never visited."""
    F = _plane_free_energy(entry, cfg)
    if F is None:
        return math.nan
    if np.any(np.isnan(F)):
        return math.inf
    return float(F.max() - F.min())


def tidy_rows(sw: dict, summaries: dict) -> list[dict]:
    rows = []
    for t in sw["tasks"]:
        summ = summaries[t["hash"]]
        for e in summ["per_temperature"]:
            row = {"task": t["hash"], **{k: json.dumps(v) if isinstance(v, list) else v for k, v in t["point"].items()},
                   "temperature_K": e["temperature_K"], "replicas": e["replicas"]}
            for sp, v in e["D_eq1_per_defect_cm2_s"].items():
                row[f"D_eq1_{sp}_cm2_s"] = v["mean"]
                row[f"D_eq1_{sp}_err_cm2_s"] = v["sem"]
            for kind, v in e["D_defect_cm2_s"].items():
                row[f"D_{kind}_cm2_s"] = v["mean"]
                row[f"D_{kind}_err_cm2_s"] = v["sem"]
            mix = e.get("mixing_final", [])
            row["mixing_final_mean"] = (float(np.mean([m["domain_halides_outside"] + m["matrix_halides_inside"]
                                                        for m in mix])) if mix else None)
            row["profile_barrier_eV"] = _profile_barrier(e, t["config"])
            rows.append(row)
    return rows


def _write_csv(path: Path, rows: list[dict]) -> None:
    cols = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    import io  # noqa: PLC0415

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})
    write_text_atomic(path, buf.getvalue())


def plot_sweep(rows: list[dict], axes: list[str], out: Path) -> list[Path]:
    """D (Eq. 1, all halides) against 1000/T, one line per value combination of the other axes."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    out.mkdir(parents=True, exist_ok=True)
    others = [a for a in axes if a != "run.temperatures_K"]
    groups: dict = {}
    for r in rows:
        groups.setdefault(tuple(r.get(a) for a in others), []).append(r)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for key, rs in sorted(groups.items(), key=lambda kv: str(kv[0])):
        rs = sorted(rs, key=lambda r: r["temperature_K"])
        x = [1000.0 / r["temperature_K"] for r in rs]
        y = [r.get("D_eq1_all_cm2_s") or np.nan for r in rs]
        e = [r.get("D_eq1_all_err_cm2_s") or 0.0 for r in rs]
        ax.errorbar(x, y, yerr=e, fmt="o-", capsize=2, label=", ".join(f"{a.split('.')[-1]}={v}" for a, v in
                                                                       zip(others, key)) or "all")
    ax.set_yscale("log")
    ax.set_xlabel("1000 / T (1/K)")
    ax.set_ylabel("D per defect, Eq. 1 (cm$^2$/s)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    p = out / "D_vs_T.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return [p]


def _label(point: dict, skip=()) -> str:
    return ", ".join(f"{k.split('.')[-1]}={v}" for k, v in point.items() if k not in skip) or "all"


def plot_profiles_and_mixing(sw: dict, summaries: dict, out: Path) -> list[Path]:
    """Defect free-energy profiles overlaid per task (heterojunctions), mixing counts against time (nanodomains)."""
    import h5py  # noqa: PLC0415
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415


    made = []
    het = [t for t in sw["tasks"] if t["config"].configuration.kind == "heterojunction"]
    if het:
        fig, ax = plt.subplots(figsize=(6, 4))
        for t in het:
            for e in summaries[t["hash"]]["per_temperature"]:
                F = _plane_free_energy(e, t["config"])
                if F is not None:
                    ax.plot(np.arange(F.size) / 2.0, F, marker=".", lw=1, label=f"{_label(t['point'])}")
        ax.set_xlabel("plane position (unit cells)")
        ax.set_ylabel("defect free energy F (eV)")
        ax.legend(fontsize=6)
        fig.tight_layout()
        made.append(out / "profiles.png")
        fig.savefig(made[-1], dpi=110)
        plt.close(fig)
    nano = [t for t in sw["tasks"] if t["config"].configuration.kind == "nanodomain"]
    if nano:
        fig, ax = plt.subplots(figsize=(6, 4))
        for t in nano:
            for f in sorted((Path(t["config"].output.directory) / "runs").glob("T*_r*.h5")):
                if ".ckpt" in f.name or ".corrupt" in f.name:
                    continue
                with h5py.File(f, "r") as h:
                    tt, mix = h["obs/time_s"][()], h["obs/mixing"][()].sum(axis=1)
                ax.plot(tt, mix - mix[0], lw=1, label=f"{_label(t['point'])} {f.stem}")
        ax.set_xlabel("time (s)")
        ax.set_ylabel("mixing events (halides out of / into the domain)")
        ax.legend(fontsize=6)
        fig.tight_layout()
        made.append(out / "mixing.png")
        fig.savefig(made[-1], dpi=110)
        plt.close(fig)
    return made


def add_sweep_parser(sub) -> None:
    p = sub.add_parser("sweep", help="run a sweep over config keys (Dask)",
                       description="Run the base config of SWEEP.toml at every point of its axes (grid) or points "
                                   "(list), as resumable tasks on Dask; write results.csv/json and plots.")
    p.add_argument("sweep", help="sweep file (TOML)")
    p.add_argument("--workers", type=int, default=1, help="LocalCluster worker processes (one thread each)")
    p.add_argument("--scheduler", help="address of a running Dask scheduler (e.g. from dask-jobqueue)")
    p.add_argument("--in-process", action="store_true",
                   help="one worker thread in this process: no worker start-up, but no isolation (a crash ends the sweep)")
    p.add_argument("--force", action="store_true", help="use a sweep directory made from another base config")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("--dry-run", action="store_true", help="list the tasks and exit")
    p.set_defaults(handler=cmd_sweep)


def cmd_sweep(args) -> int:
    if args.dry_run:
        sw = load_sweep(args.sweep)
        for t in sw["tasks"]:
            print(t["hash"], json.dumps(t["point"]))
        print(f"{len(sw['tasks'])} tasks in {sw['directory']}")
        return 0
    res = run_sweep(args.sweep, workers=args.workers, scheduler=args.scheduler, force=args.force,
                    progress=not args.quiet, in_process=args.in_process)
    print(f"{res['n_tasks']} tasks ({res['n_run']} run now, {res['wall_s']:.1f} s); "
          f"wrote {res['directory']}/results.csv, results.json and plots/")
    return 0
