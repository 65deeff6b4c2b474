"""Running a resolved config: jobs (temperature x replica), run files, checkpoints, summary.

Files written under ``output.directory``::

    config.resolved.json       the resolved config and provenance
    runs/T<T>_r<r>.h5          one HDF5 run file per job (see RUN_FILE_LAYOUT)
    runs/T<T>_r<r>.ckpt.h5     checkpoint while a job runs (removed when it completes)
    summary.json               diffusion coefficients, profiles, mixing counts, Arrhenius fits
    *.png                      plots

A killed run restarted with ``--resume`` continues every job from its last
checkpoint and gives the same result as an uninterrupted run; a checkpoint
whose config or catalog differs is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import h5py
import numpy as np

from common.atomic import jsonable, write_text_atomic
from common.provenance import provenance as _provenance
from kmc import analysis
from kmc.config import RunConfig, builder_kwargs, physics_fingerprint, resolve
from kmc.errors import Interrupted
from kmc.simulation import Simulation
from lattice import HalideSublattice, build_configuration, place_defects
from lattice.species import BRIDGE_NAMES, HALIDES
from rates.catalog import RateCatalog, load_catalog

log = logging.getLogger(__name__)

RUN_FORMAT = "halide-kmc-run"
RUN_SCHEMA_VERSION = 1
RUN_FILE_LAYOUT = """
attrs: format, schema_version, config_json, fingerprint_json, provenance_json, catalog_json,
       catalog_sha256, temperature_K, replica, seed_entropy, seed_spawn_key, lattice_constant_A,
       units_json, complete, stopped_by, n_defects_json, n_resumes (times the job continued from a checkpoint),
       content_sha256 (digest of attributes and datasets)
obs/time_s (n,) float64                simulated time of each observation, s
obs/n_events (n,) int64                events executed
obs/msd_species (n, 2) int64           sum over all I / Br atoms of |r(t) - r(0)|^2, (a/2)^2
obs/msd_defect (n, 2) int64            sum over vacancies / interstitials of their |R(t) - R(0)|^2, (a/2)^2
obs/mixing (n, 2) int64                domain halides outside / matrix halides inside the nanodomain
obs/plane_count (n, 2, P) int64        I / Br atoms per halide plane along the profile axis
obs/occ_time (n, 4, P) float64         cumulative defect residence per plane (V, II, IBr, BrBr), s
obs/wall_s (n,) float64                wall-clock seconds since the job started
final/hop_count (104,) int64           hops per environment class
final/occ (n_sites,) int8              final site states
final/def_disp (n_def, 3) int64        defect displacements, (a/2)
final/def_kind (n_def,) int8
events/*                               optional hop log: time_s, defect, from_site, to_site, hop_class,
                                       slot (bridge atom that moved: 0/1)
"""
OBS_KEYS = ("time_s", "n_events", "msd_species", "msd_defect", "def_disp", "mixing", "plane_count", "occ_time",
            "wall_s")


# ----------------------------------------------------------------------------
# provenance
# ----------------------------------------------------------------------------
def provenance() -> dict:
    """Versions, git revision, host and time (recorded in every artifact): :func:`common.provenance.provenance`."""
    return _provenance()


UNITS = {"time": "s", "temperature": "K", "length": "angstrom", "msd_raw": "(a/2)^2",
         "D": "cm^2/s", "energy": "eV"}


# ----------------------------------------------------------------------------
# jobs
# ----------------------------------------------------------------------------
def job_name(temperature_K: float, replica: int) -> str:
    return f"T{temperature_K:g}_r{replica}"


def build_inputs(cfg: RunConfig, t_index: int, replica: int):
    """Configuration, defects and seeds of job (t_index, replica); deterministic in ``run.seed``."""
    seed = int(cfg.run.seed)
    ss_cfg = np.random.SeedSequence(seed, spawn_key=(t_index, replica, 0))
    ss_kmc = np.random.SeedSequence(seed, spawn_key=(t_index, replica, 1))
    lat = HalideSublattice(tuple(cfg.lattice.shape))
    kind = cfg.configuration.kind
    kwargs = builder_kwargs(cfg)
    rng_cfg = np.random.default_rng(ss_cfg)
    if kind == "random":
        kwargs["seed"] = rng_cfg
    config = build_configuration(lat, kind, **kwargs)
    d = cfg.defects
    where = list(d.placement) if isinstance(d.placement, tuple) else d.placement
    defects = place_defects(config, d.vacancies, d.interstitials, where=where, added_species=d.added_species,
                            seed=rng_cfg)
    return config, defects, ss_kmc


def lattice_constant(cfg: RunConfig, catalog: RateCatalog, x_I: float) -> float:
    a = cfg.lattice.lattice_constant_A
    return catalog.lattice_constant(x_I) if a == "vegard" else float(a)


class CorruptFileError(ValueError):
    """A run file or checkpoint that cannot be read or fails its integrity check."""


def _digest(attrs: dict, groups: dict) -> str:
    """SHA-256 over the attributes (but the digest) and every dataset's name, dtype, shape and bytes."""
    h = hashlib.sha256()
    for k in sorted(attrs):
        if k != "content_sha256":
            h.update(f"{k}={attrs[k]!s}\n".encode())
    for g in sorted(groups):
        for k in sorted(groups[g]):
            v = np.ascontiguousarray(np.asarray(groups[g][k]))
            h.update(f"{g}/{k}:{v.dtype.str}:{v.shape}\n".encode())
            h.update(v.tobytes())
    return h.hexdigest()


def _write_h5_atomic(path: Path, attrs: dict, groups: dict) -> None:
    """Write through a temporary file and a rename, with a content digest; the old file survives any failure."""
    tmp = path.with_name(path.name + ".tmp")
    attrs = {**attrs, "content_sha256": _digest(attrs, groups)}
    try:
        with h5py.File(tmp, "w") as f:
            for k, v in attrs.items():
                f.attrs[k] = v
            for gname, arrays in groups.items():
                g = f.require_group(gname)
                for k, v in arrays.items():
                    v = np.asarray(v)
                    kw = {"compression": "gzip", "compression_opts": 1} if v.size > 4096 else {}
                    g.create_dataset(k, data=v, **kw)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(exc, OSError):
            import errno  # noqa: PLC0415

            if exc.errno == errno.ENOSPC or "No space" in str(exc) or "disk" in str(exc).lower():
                raise OSError(errno.ENOSPC, f"no space left on device while writing {path} "
                                            "(the previous file is intact)") from None
            raise OSError(exc.errno, f"cannot write {path}: {exc.strerror or exc}") from None
        raise


def _read_verified(path: Path, what: str) -> tuple[dict, dict]:
    """Attributes and groups of a run file or checkpoint, after checking its content digest."""
    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
            groups = {g: {k: f[g][k][()] for k in f[g]} for g in f if isinstance(f[g], h5py.Group)}
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise CorruptFileError(f"{what} {path} cannot be read ({type(exc).__name__}: {exc})") from None
    want = attrs.get("content_sha256")
    if want is None:
        if attrs.get("format") != RUN_FORMAT:
            raise CorruptFileError(f"{what} {path} is not a {RUN_FORMAT} file")
        log.warning("%s %s has no content digest (written by an older version); not verified", what, path)
    elif _digest(attrs, groups) != want:
        raise CorruptFileError(f"{what} {path} fails its integrity check (content changed after it was written)")
    return attrs, groups


def _read_group(f: h5py.File, name: str) -> dict:
    return {k: f[name][k][()] for k in f[name]} if name in f else {}


class _ObsBuffer:
    def __init__(self):
        self.rows: dict[str, list] = {k: [] for k in OBS_KEYS}

    def add(self, **row):
        for k in OBS_KEYS:
            self.rows[k].append(np.asarray(row[k]))

    def arrays(self) -> dict:
        return {k: np.stack(v) if v else np.zeros(0) for k, v in self.rows.items()}

    @classmethod
    def from_arrays(cls, arrays: dict) -> "_ObsBuffer":
        ob = cls()
        n = len(arrays.get("time_s", []))
        missing = [k for k in OBS_KEYS if k not in arrays]
        if n and missing:
            raise ValueError(f"checkpoint observations lack {missing} (written by an older version); "
                             "restart that job without --resume in a new output directory")
        for k in OBS_KEYS:
            ob.rows[k] = [arrays[k][i] for i in range(n)]
        return ob

    def __len__(self):
        return len(self.rows["time_s"])


def _install_stop_handlers(flag: dict) -> dict:
    """Make SIGINT/SIGTERM set ``flag["signal"]`` instead of raising anywhere (main thread only)."""
    import signal  # noqa: PLC0415
    import threading  # noqa: PLC0415

    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum, frame):  # noqa: ARG001
        flag["signal"] = signum

    return {sg: signal.signal(sg, handler) for sg in (signal.SIGINT, signal.SIGTERM)}


def _restore_handlers(old: dict) -> None:
    import signal  # noqa: PLC0415

    for sg, h in old.items():
        signal.signal(sg, h)


RESTART_HINT = "rerun with --resume --restart-corrupt to set it aside and run that job again from its start"


def _set_aside(path: Path) -> Path:
    bad = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
    os.replace(path, bad)
    log.warning("%s is damaged; kept as %s, the job restarts from its start", path, bad.name)
    return bad


def run_job(cfg: RunConfig, t_index: int, replica: int, resume: bool = False, progress: bool = False,
            restart_corrupt: bool = False) -> dict:
    """Run (or resume, or reuse) one job and return its summary row.

    A run file or checkpoint that cannot be read or fails its content digest
    stops the job with a clear message; with ``restart_corrupt`` it is set
    aside (renamed ``*.corrupt-<time>``, never deleted) and the job runs again.
    """
    out_dir = Path(cfg.output.directory) / "runs"
    out_dir.mkdir(parents=True, exist_ok=True)
    T = cfg.run.temperatures_K[t_index]
    name = job_name(T, replica)
    final_path = out_dir / f"{name}.h5"
    ckpt_path = out_dir / f"{name}.ckpt.h5"
    catalog = load_catalog(cfg.run.catalog)
    fingerprint = json.dumps(physics_fingerprint(cfg), sort_keys=True)
    cat_hash = catalog.sha256()

    def _check(attrs: dict, path: Path, what: str) -> None:
        if attrs.get("fingerprint_json") != fingerprint:
            raise ValueError(f"refusing to resume from {what} {path}: it was made with a different config")
        if attrs.get("catalog_sha256") != cat_hash:
            raise ValueError(f"refusing to resume from {what} {path}: it was made with a different catalog")

    def _load(path: Path, what: str):
        try:
            attrs, groups = _read_verified(path, what)
            if what == "run file" and not attrs.get("complete"):
                raise CorruptFileError(f"run file {path} is not marked complete")
        except CorruptFileError as exc:
            if not restart_corrupt:
                raise CorruptFileError(f"{exc}; {RESTART_HINT}") from None
            _set_aside(path)
            return None
        _check(attrs, path, what)
        return attrs, groups

    if final_path.exists():
        if not resume:
            raise FileExistsError(f"{final_path} exists: use --resume to reuse finished jobs, or another output directory")
        if _load(final_path, "run file") is not None:
            log.info("%s: already complete, reusing %s", name, final_path)
            return summarize_run_file(final_path)

    config, defects, ss_kmc = build_inputs(cfg, t_index, replica)
    warnings = catalog.check_temperature(T)
    if catalog.cluster_expansion is not None:
        warnings += catalog.cluster_expansion.check_composition(float(config.x_I))
    for w in warnings:
        log.warning("%s: %s", name, w)
    sim = Simulation(config, defects, catalog, T, ss_kmc, event_log=cfg.run.event_log)
    a_A = lattice_constant(cfg, catalog, config.x_I)
    obs = _ObsBuffer()
    wall0 = time.perf_counter()
    wall_before = 0.0
    stopped_by = None
    n_resumes = 0

    if ckpt_path.exists():
        if not resume:
            raise FileExistsError(f"{ckpt_path} exists from an interrupted run: use --resume to continue it")
        loaded = _load(ckpt_path, "checkpoint")
        if loaded is not None:
            attrs_c, groups_c = loaded
            try:
                arrays = groups_c["state"]
                scalars = json.loads(attrs_c["scalars_json"])
                obs = _ObsBuffer.from_arrays(groups_c["obs"])
                wall_before = float(attrs_c["wall_s"])
                sim.set_checkpoint({"arrays": arrays, "scalars": scalars})
            except (KeyError, ValueError, TypeError) as exc:
                msg = f"checkpoint {ckpt_path} is incomplete ({type(exc).__name__}: {exc})"
                if not restart_corrupt:
                    raise CorruptFileError(f"{msg}; {RESTART_HINT}") from None
                _set_aside(ckpt_path)
                sim = Simulation(config, defects, catalog, T, ss_kmc, event_log=cfg.run.event_log)
                obs, wall_before = _ObsBuffer(), 0.0
            else:
                n_resumes = int(attrs_c.get("n_resumes", 0)) + 1
                log.info("%s: resumed at t = %.4g s after %d observations", name, sim.time_s, len(obs))

    n_obs = int(cfg.run.n_observations)
    time_s = cfg.run.time_s
    max_events = cfg.run.max_events
    chunk_events = None if max_events is None else max(1, int(math.ceil(max_events / n_obs)))

    attrs = {
        "format": RUN_FORMAT,
        "schema_version": RUN_SCHEMA_VERSION,
        "config_json": json.dumps(cfg.to_dict(), sort_keys=True),
        "fingerprint_json": fingerprint,
        "provenance_json": json.dumps(provenance(), sort_keys=True),
        "catalog_json": json.dumps(catalog.to_dict(), sort_keys=True),
        "catalog_sha256": cat_hash,
        "temperature_K": T,
        "replica": replica,
        "seed_entropy": int(cfg.run.seed),
        "seed_spawn_key": json.dumps([t_index, replica, 1]),
        "lattice_constant_A": a_A,
        "units_json": json.dumps(UNITS),
        "n_defects_json": json.dumps({"vacancy": defects.n_vacancies, "interstitial": defects.n_interstitials}),
        "configuration_json": json.dumps(config.describe(), sort_keys=True),
        "warnings_json": json.dumps(warnings),
        "n_resumes": n_resumes,
    }

    def observe():
        sim.flush_occupancy()
        st = sim.state
        obs.add(time_s=sim.time_s, n_events=sim.n_events, msd_species=st.msd.copy(),
                msd_defect=sim.defect_msd(), def_disp=st.def_disp.copy(), mixing=sim.mixing_counts(), plane_count=st.plane_count.copy(),
                occ_time=st.occ_time.copy(), wall_s=wall_before + time.perf_counter() - wall0)

    def checkpoint():
        ck = sim.get_checkpoint()
        a = dict(attrs)
        a["scalars_json"] = json.dumps(ck["scalars"])
        a["wall_s"] = wall_before + time.perf_counter() - wall0
        _write_h5_atomic(ckpt_path, a, {"state": ck["arrays"], "obs": obs.arrays()})

    if len(obs) == 0:
        observe()  # t = 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_obs, initial=len(obs) - 1, desc=name, unit="obs", leave=False,
                   disable=not sys.stderr.isatty())
    last_ckpt = time.perf_counter()
    ev_start = sim.n_events
    every = float(cfg.run.checkpoint_every_wall_s)
    stop = {"signal": None}
    old_handlers = _install_stop_handlers(stop)
    try:
        while len(obs) <= n_obs:
            k = len(obs)
            t_stop = math.inf if time_s is None else time_s * k / n_obs
            budget = None
            if max_events is not None:
                left = max_events - sim.n_events
                budget = left if time_s is not None else min(chunk_events, left)
                if budget <= 0:
                    stopped_by = "events"
                    break
            sim.advance(t_stop, budget)
            observe()
            if bar is not None:
                el = max(time.perf_counter() - wall0, 1e-9)
                bar.set_postfix_str(f"{sim.n_events:.3g} events, t = {sim.time_s:.3g} s, "
                                    f"{(sim.n_events - ev_start) / el:.3g} ev/s", refresh=False)
                bar.update(1)
            if time.perf_counter() - last_ckpt > every and len(obs) <= n_obs:
                checkpoint()
                last_ckpt = time.perf_counter()
            if stop["signal"] is not None:
                checkpoint()
                raise Interrupted(f"{name}: stopped by signal {stop['signal']} at t = {sim.time_s:.4g} s after "
                                  f"{len(obs) - 1} observations; checkpoint written")
    finally:
        _restore_handlers(old_handlers)
    if bar is not None:
        bar.close()
    stopped_by = stopped_by or ("time" if time_s is not None and sim.time_s >= time_s else "events")

    st = sim.state
    final = {"hop_count": st.hop_count, "occ": st.occ, "def_disp": st.def_disp, "def_kind": st.def_kind,
             "def_site": st.def_site}
    groups = {"obs": obs.arrays(), "final": final}
    if cfg.run.event_log:
        groups["events"] = sim.event_log()
    attrs["complete"] = True
    attrs["stopped_by"] = stopped_by
    attrs["wall_s"] = wall_before + time.perf_counter() - wall0
    _write_h5_atomic(final_path, attrs, groups)
    if ckpt_path.exists():
        ckpt_path.unlink()
    log.info("%s: %d events, t = %.4g s, %.1f s wall", name, sim.n_events, sim.time_s, attrs["wall_s"])
    return summarize_run_file(final_path)


# ----------------------------------------------------------------------------
# per-job and overall summaries
# ----------------------------------------------------------------------------
def summarize_run_file(path: str | Path) -> dict:
    """Diffusion coefficients and counts of one run file (JSON-ready)."""
    with h5py.File(path, "r") as f:
        if f.attrs.get("format") != RUN_FORMAT:
            raise ValueError(f"{path} is not a {RUN_FORMAT} file")
        T = float(f.attrs["temperature_K"])
        a_A = float(f.attrs["lattice_constant_A"])
        ndef = json.loads(f.attrs["n_defects_json"])
        obs = _read_group(f, "obs")
        final = _read_group(f, "final")
        row = {"file": str(path), "temperature_K": T, "replica": int(f.attrs["replica"]),
               "lattice_constant_A": a_A, "n_defects": ndef, "stopped_by": str(f.attrs["stopped_by"]),
               "wall_s": float(f.attrs["wall_s"])}
    fac = analysis.half_lattice_sq_to_cm2(a_A)
    t = obs["time_s"]
    n_tot = ndef["vacancy"] + ndef["interstitial"]
    row["time_s"] = float(t[-1])
    row["n_events"] = int(obs["n_events"][-1])
    # Eq. 1 per defect: msd(t_end) / (6 t_end), the whole trajectory, never negative; the block
    # increments of the same trace give the error of a single run.
    D = {}
    D_blocks = {}
    for s, sp in enumerate(HALIDES):
        y = obs["msd_species"][:, s] * fac / n_tot
        D[sp] = analysis.endpoint_D(t, y)
        D_blocks[sp] = analysis.block_D(t, y)
    y_all = obs["msd_species"].sum(axis=1) * fac / n_tot
    D["all"] = analysis.endpoint_D(t, y_all)
    D_blocks["all"] = analysis.block_D(t, y_all)
    row["D_eq1_per_defect_cm2_s"] = D
    row["D_eq1_blocks_cm2_s"] = {k: {"mean": v[0], "sem": v[1]} for k, v in D_blocks.items()}
    row["D_estimators"] = {"eq1": "msd(t_end) / (6 t_end) per defect",
                           "defect": "block ratio over the observation intervals of the defect positions"
                           if "def_disp" in obs else "msd(t_end) / (6 t_end) (run file without obs/def_disp)"}
    Dd, Dd_err = {}, {}
    for k, kind in enumerate(("vacancy", "interstitial")):
        if ndef[kind]:
            if "def_disp" in obs:
                sel = final["def_kind"] == k
                Dd[kind], Dd_err[kind], _ = analysis.block_ratio_D(t, obs["def_disp"][:, sel].astype(np.float64),
                                                                          n_blocks=t.size - 1)
                Dd[kind] *= fac
                Dd_err[kind] *= fac
            else:
                Dd[kind] = analysis.endpoint_D(t, obs["msd_defect"][:, k] * fac / ndef[kind])
                Dd_err[kind] = math.nan
    row["D_defect_cm2_s"] = Dd
    row["D_defect_err_cm2_s"] = Dd_err
    row["hops_per_class"] = {int(c): int(n) for c, n in enumerate(final["hop_count"]) if n}
    row["mixing_final"] = {"domain_halides_outside": int(obs["mixing"][-1, 0]),
                           "matrix_halides_inside": int(obs["mixing"][-1, 1])}
    row["occ_time_per_plane_s"] = obs["occ_time"][-1].tolist()
    row["plane_count_final"] = obs["plane_count"][-1].tolist()
    return row


def aggregate(cfg: RunConfig, rows: list[dict]) -> dict:
    """Mean +- standard error over replicas per temperature, and Arrhenius fits."""
    temps = cfg.run.temperatures_K
    per_T = []
    for T in temps:
        rs = [r for r in rows if r["temperature_K"] == T]
        entry = {"temperature_K": T, "replicas": len(rs), "time_s": [r["time_s"] for r in rs],
                 "n_events": [r["n_events"] for r in rs]}
        for key in ("D_eq1_per_defect_cm2_s", "D_defect_cm2_s"):
            out = {}
            for sub in sorted({k for r in rs for k in r[key]}):
                vals = [r[key].get(sub) for r in rs]
                m, e, n = analysis.mean_sem(vals)
                if n == 1 and key == "D_eq1_per_defect_cm2_s":
                    e = rs[0]["D_eq1_blocks_cm2_s"][sub]["sem"]  # single run: block error
                elif n == 1:
                    e = rs[0].get("D_defect_err_cm2_s", {}).get(sub, math.nan)
                out[sub] = {"mean": m, "sem": e, "n": n, "values": vals}
            entry[key] = out
        occ = np.sum([np.asarray(r["occ_time_per_plane_s"]) for r in rs], axis=0)
        entry["occupancy_time_per_plane_s"] = {name: occ[i].tolist() for i, name in
                                              enumerate(("vacancy",) + tuple(f"bridge_{b}" for b in BRIDGE_NAMES))}
        entry["mixing_final"] = [r["mixing_final"] for r in rs]
        hop = {}
        for r in rs:
            for c, n in r["hops_per_class"].items():
                hop[int(c)] = hop.get(int(c), 0) + n
        entry["hops_per_class"] = hop
        per_T.append(entry)
    summary = {"per_temperature": per_T, "runs": rows}
    if len(temps) >= 2:
        fits = {}
        for key in ("D_eq1_per_defect_cm2_s", "D_defect_cm2_s"):
            for sub in per_T[0][key]:
                Ds = [e[key].get(sub, {}).get("mean", math.nan) for e in per_T]
                errs = [e[key].get(sub, {}).get("sem", math.nan) for e in per_T]
                try:
                    fits[f"{key}:{sub}"] = analysis.fit_arrhenius(temps, Ds, errs)
                except ValueError as exc:
                    fits[f"{key}:{sub}"] = {"error": str(exc)}
        summary["arrhenius"] = fits
    return summary


def _die_with_parent() -> None:
    """In a pool worker: exit as soon as the parent process is gone (no orphans computing on)."""
    import threading  # noqa: PLC0415

    parent = os.getppid()

    def watch():
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


_WATCHING = False


def _job_entry(args):
    global _WATCHING
    if not _WATCHING:
        _die_with_parent()
        _WATCHING = True
    cfg, ti, r, resume, progress, restart_corrupt = args
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run_job(cfg, ti, r, resume=resume, progress=progress, restart_corrupt=restart_corrupt)


def _precheck(cfg: RunConfig, catalog: RateCatalog, resume: bool, restart_corrupt: bool = False) -> None:
    """Every existing run file and checkpoint of the jobs must be intact and belong to this config and catalog."""
    out = Path(cfg.output.directory)
    for parent in (out, *out.parents):
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"output.directory {out}: {parent} is a file, not a directory")
            break
    for fname in ("config.resolved.json", "summary.json", "runs"):
        q = out / fname
        if q.exists() and (q.is_dir() != (fname == "runs")):
            raise ValueError(f"{q} is in the way: it is a {'file' if fname == 'runs' else 'directory'}")
    need = estimated_memory_bytes(cfg)
    have = _physical_memory_bytes()
    if have and need > 0.8 * have:
        raise ValueError(f"this run needs about {need / 2**30:.1f} GiB of memory ({cfg.run.workers} worker(s) x "
                         f"{int(np.prod(cfg.lattice.shape)) * 3:.3g} sites), more than 80 % of the machine's "
                         f"{have / 2**30:.1f} GiB: use a smaller lattice.shape or fewer run.workers")
    runs = out / "runs"
    fingerprint = json.dumps(physics_fingerprint(cfg), sort_keys=True)
    cat_hash = catalog.sha256()
    resolved = out / "config.resolved.json"
    if resolved.is_file():
        if not resume:
            raise FileExistsError(f"{out} already holds a run ({resolved.name}): use --resume with the same config "
                                  "to continue it, or another output directory")
        try:
            old = json.loads(resolved.read_text())
            old_fp = json.dumps(physics_fingerprint(resolve(old["config"])), sort_keys=True)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CorruptFileError(f"{resolved} cannot be read ({exc}); move it away") from None
        if old_fp != fingerprint:
            raise ValueError(f"refusing to resume in {out}: it holds a run of a different config "
                             f"({resolved.name}); use another output directory")
    for T in cfg.run.temperatures_K:
        for r in range(cfg.run.replicas):
            for path, what in ((runs / f"{job_name(T, r)}.h5", "run file"),
                               (runs / f"{job_name(T, r)}.ckpt.h5", "checkpoint")):
                if not path.exists():
                    continue
                if not resume:
                    raise FileExistsError(f"{path} exists: use --resume to reuse finished jobs and continue "
                                          "interrupted ones, or another output directory")
                if path.is_dir():
                    raise CorruptFileError(f"{what} {path} is a directory; move it away")
                try:
                    attrs, _ = _read_verified(path, what)
                except CorruptFileError as exc:
                    if restart_corrupt:
                        continue  # run_job sets it aside and reruns the job
                    raise CorruptFileError(f"{exc}; {RESTART_HINT}") from None
                if attrs.get("fingerprint_json") != fingerprint:
                    raise ValueError(f"refusing to resume from {what} {path}: it was made with a different config")
                if attrs.get("catalog_sha256") != cat_hash:
                    raise ValueError(f"refusing to resume from {what} {path}: it was made with a different catalog")


BYTES_PER_SITE_ESTIMATE = 160
"""Peak resident bytes per halide site of one job (engine state, configuration building, run file), measured."""


def estimated_memory_bytes(cfg: RunConfig) -> float:
    """Peak memory of the jobs that run at once (an upper estimate, checked before anything is allocated)."""
    n_sites = 3 * int(np.prod(cfg.lattice.shape))
    n_def = cfg.defects.vacancies + cfg.defects.interstitials
    per_job = BYTES_PER_SITE_ESTIMATE * n_sites + 2_000 * n_def + 300e6  # + interpreter, numba, h5py
    return per_job * min(cfg.run.workers, len(cfg.run.temperatures_K) * cfg.run.replicas)


def _physical_memory_bytes() -> float | None:
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


class DirectoryLock:
    """Exclusive lock on an output directory: ``<dir>/.lock`` holding the owner's PID.

    A lock whose process no longer exists is stale and taken over; a live one
    refuses with the PID. Released (the file removed) on exit.
    """

    def __init__(self, directory: Path):
        self.path = Path(directory) / ".lock"
        self.held = False

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    pid = int(self.path.read_text().strip() or "0")
                except (OSError, ValueError):
                    pid = 0
                if pid > 0 and _pid_alive(pid):
                    raise ValueError(f"output directory {self.path.parent} is in use by PID {pid} "
                                     f"(remove {self.path} if that process is not a kmc run)") from None
                try:
                    self.path.unlink()  # stale lock
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(str(os.getpid()))
            self.held = True
            return self
        raise ValueError(f"cannot lock output directory {self.path.parent}")

    def __exit__(self, *exc):
        if self.held:
            try:
                self.path.unlink()
            except OSError:
                pass
            self.held = False
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_all(cfg: RunConfig, resume: bool = False, progress: bool = True, restart_corrupt: bool = False) -> dict:
    """Run every job of ``cfg``, write summary.json (+ plots) and return the summary."""
    out = Path(cfg.output.directory)
    catalog = load_catalog(cfg.run.catalog)
    _precheck(cfg, catalog, resume, restart_corrupt)  # refuse before anything in the output folder is written
    with DirectoryLock(out):
        _precheck(cfg, catalog, resume, restart_corrupt)  # again, now that no other run can change the folder
        return _run_all_locked(cfg, catalog, out, resume, progress, restart_corrupt)


def _run_all_locked(cfg: RunConfig, catalog: RateCatalog, out: Path, resume: bool, progress: bool,
                    restart_corrupt: bool) -> dict:
    write_text_atomic(out / "config.resolved.json", json.dumps(
        {"config": cfg.to_dict(), "provenance": provenance(), "catalog_sha256": catalog.sha256(),
         "catalog_name": catalog.name}, indent=1, sort_keys=True) + "\n")
    jobs = [(cfg, ti, r, resume, progress) for ti in range(len(cfg.run.temperatures_K))
            for r in range(cfg.run.replicas)]
    workers = min(int(cfg.run.workers), len(jobs))
    t0 = time.perf_counter()
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as ex:
            rows = list(ex.map(_job_entry, [(c, ti, r, res, False, restart_corrupt) for (c, ti, r, res, _p) in jobs]))
    else:
        rows = [run_job(c, ti, r, resume=res, progress=p, restart_corrupt=restart_corrupt) for (c, ti, r, res, p) in jobs]
    summary = aggregate(cfg, rows)
    summary["provenance"] = provenance()
    summary["catalog"] = {"name": catalog.name, "sha256": catalog.sha256(), "source": cfg.run.catalog}
    summary["config"] = cfg.to_dict()
    summary["units"] = UNITS
    summary["wall_s"] = time.perf_counter() - t0
    write_text_atomic(out / "summary.json", json.dumps(_clean(summary), indent=1) + "\n")
    if cfg.output.plots:
        from kmc import plots

        plots.make_all(out, cfg, summary)
    return summary


_clean = jsonable  # JSON-ready copy: NumPy to Python, NaN/inf to None (strict JSON)
