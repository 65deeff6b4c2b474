"""MD side of the validation matrix: runs as units of work, compact records that survive the trajectories.

Each (case, temperature) is a *lane*: runs ``r = 0, 1, ...`` of ``md.run_ps``
each are added until the lane has ``min_hops`` hops or ``md.max_runs`` runs.
A finished run is analysed at once into a compact JSON record,
``<out>/md/<case>/T<T>_r<r>.json`` (hop events with atom indices, exposure per
class, Eq. 1 MSDs per species, kinisi's fit, layer occupancy, mixing counts,
framework MSD, provenance and the case's physics hash). Records are what the
report reads and what is committed; trajectories stay under ``<out>/md_raw/``
(not committed) and may be deleted. A run cut by ``--max-wall-s`` stops at a
checkpoint and is resumed by the next call.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from common.atomic import write_json_atomic
from common.provenance import file_sha256, provenance
from workflows.matrix_spec import Case, MatrixSpec, SpecError

log = logging.getLogger(__name__)

RECORD_SCHEMA = "halide-kmc/md-run-record"
RECORD_SCHEMA_VERSION = 1


def raw_dir(out, case: Case) -> Path:
    return Path(out) / "md_raw" / case.id


def record_dir(out, case: Case) -> Path:
    return Path(out) / "md" / case.id


def record_path(out, case: Case, temperature_K: float, run_index: int) -> Path:
    return record_dir(out, case) / f"T{temperature_K:g}_r{run_index}.json"


def case_job(spec: MatrixSpec, case: Case, out):
    """The :class:`md_reference.md.runner.MDJob` of a case (all temperatures, ``max_runs`` runs each)."""
    from md_reference.md.lammps_driver import MDSettings  # noqa: PLC0415
    from md_reference.md.runner import MDJob, StructureSpec  # noqa: PLC0415

    md = case.md
    settings = MDSettings(temperature_K=case.temperatures_K[0], timestep_fs=md.dt_fs,
                          n_steps=round(md.run_ps * 1000.0 / md.dt_fs),
                          equilibration_steps=round(md.equil_ps * 1000.0 / md.dt_fs),
                          dump_every=round(md.dump_fs / md.dt_fs), thermostat=md.thermostat, seed=1).validate()
    return MDJob(structure=StructureSpec(kind=case.structure, shape=case.shape, defect=case.defect, where=case.where,
                                         added_species="same", lattice_constant=md.lattice_constant, seed=0,
                                         params=dict(case.params)),
                 potential=spec.potential, settings=settings, temperatures_K=case.temperatures_K,
                 n_runs=md.max_runs, seed=spec.seed, out_dir=str(raw_dir(out, case)))


def _potential_sha(spec: MatrixSpec) -> str:
    return file_sha256(spec.potential_path)


def load_records(spec: MatrixSpec, case: Case, out, potential_sha: str | None = None) -> dict[float, list[dict]]:
    """Compact records of a case per temperature (sorted by run), checked against the case's physics hash."""
    want = case.physics_hash(potential_sha or _potential_sha(spec), spec.seed)
    out_d: dict[float, list[dict]] = {float(T): [] for T in case.temperatures_K}
    d = record_dir(out, case)
    if not d.is_dir():
        return out_d
    for p in sorted(d.glob("T*_r*.json")):
        try:
            rec = json.loads(p.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SpecError(f"MD record {p} cannot be read ({exc}); delete it to redo that run") from None
        if not isinstance(rec, dict) or rec.get("schema") != RECORD_SCHEMA:
            raise SpecError(f"{p} is not an MD run record of this package")
        if rec.get("physics_hash") != want:
            raise SpecError(f"MD record {p} was made with another potential, structure or MD settings "
                            f"(hash {rec.get('physics_hash')} != {want}); move it away or restore the spec")
        T = float(rec["temperature_K"])
        if T in out_d:
            out_d[T].append(rec)
    for T in out_d:
        out_d[T].sort(key=lambda r: r["run_index"])
    return out_d


def lane_status(spec: MatrixSpec, records: list[dict], case: Case, temperature_K: float) -> dict:
    """Hops, runs and whether the lane of this temperature needs another run."""
    hops = int(sum(r["tracking"]["n_hops"] for r in records))
    n = len(records)
    want = case.hops_wanted(temperature_K, spec.min_hops)
    return {"n_runs": n, "n_hops": hops, "needs_run": hops < want and n < case.md.max_runs, "next_run": n,
            "min_hops": want}


# --------------------------------------------------------------------------
# compact record of one run
# --------------------------------------------------------------------------
def _lattice_hops(events: list[dict], lattice, a_A: float) -> dict:
    """Site-to-site displacement (A) of the moving atom of every hop with a known mover."""
    ev = [e for e in events if e["mover_atom"] >= 0]
    if not ev:
        return {"time_ps": [], "atom": [], "step_A": []}
    d = lattice.displacement([e["from_site"] for e in ev], [e["to_site"] for e in ev])
    sign = np.array([1 if e["kind"] == 1 else -1 for e in ev])  # vacancy: the atom moves to -> from
    return {"time_ps": [e["time_ps"] for e in ev], "atom": [e["mover_atom"] for e in ev],
            "step_A": (d * sign[:, None] * 0.5 * a_A).tolist()}


def compact_record(traj_path, case: Case, physics_hash: str, kinisi: bool = True) -> dict:
    """Analyse one trajectory into the JSON record the matrix keeps."""
    from common.diffusion import kinisi_eq1  # noqa: PLC0415
    from md_reference.analysis.analyze import analyze_trajectory  # noqa: PLC0415
    from md_reference.analysis.observables import msd_eq1  # noqa: PLC0415
    from md_reference.md.trajectory import read_trajectory  # noqa: PLC0415
    from md_reference.analysis.tracker import remove_framework_drift, track_defects  # noqa: PLC0415

    t0 = time.time()
    traj = read_trajectory(traj_path)
    rec = analyze_trajectory(traj)
    sym = traj.symbols
    hal = np.isin(sym, ("I", "Br"))
    fw = np.isin(sym, ("Pb", "Cs"))
    pos = remove_framework_drift(traj.positions_A, traj.positions_A[:, fw])
    msd = {}
    for sp in ("I", "Br", "X"):
        m = traj.mask(sp)
        if m.any():
            lags, y = msd_eq1(pos[:, m], traj.time_ps)
            msd[sp] = {"lag_ps": lags, "msd_A2": y, "n_atoms": int(m.sum())}
    # Framework (Pb, Cs) mean MSD per atom at half the run: bounded (~1 A^2) while the cell is a crystal.
    half = traj.n_frames // 2
    dfw = pos[half:, fw] - pos[: traj.n_frames - half, fw]
    fw_msd = float(np.mean(np.sum(dfw * dfw, axis=2)))
    species = np.where(sym[hal] == "I", 0, 1).astype(np.int8)
    track = track_defects(traj.positions_A[:, hal], traj.time_ps, species, traj.lattice, traj.lattice_constant_A,
                          framework_positions_A=traj.positions_A[:, fw])
    events = rec["tracking"]["events"]
    kin = {}
    if kinisi:
        for sp in ("I", "Br", "X"):
            if sp in msd and (sp == "X" or 0 < msd[sp]["n_atoms"] < int(hal.sum())):
                try:
                    kin[sp] = kinisi_eq1(traj.positions_A, sym, sp, traj.cell_A.mean(axis=0),
                                         float(traj.time_ps[1] - traj.time_ps[0]), start_fraction=0.1)
                except Exception as exc:  # noqa: BLE001 - an estimator failing must not lose the run
                    kin[sp] = {"error": f"{type(exc).__name__}: {exc}"}
    rec.pop("msd_X", None)
    rec.update({
        "schema": RECORD_SCHEMA,
        "schema_version": RECORD_SCHEMA_VERSION,
        "case": case.id,
        "physics_hash": physics_hash,
        "trajectory_sha256": file_sha256(traj_path),
        "file": Path(traj_path).name,
        "n_halides": int(hal.sum()),
        "halide_species": species,
        "initial_sites": track.site_assignment[0],
        "lattice_hops": _lattice_hops(events, traj.lattice, traj.lattice_constant_A),
        "msd": msd,
        "framework_msd_half_run_A2": fw_msd,
        "kinisi": kin,
        "units": {"time": "ps", "length": "A", "D": "cm^2/s", "msd": "A^2 (summed over atoms)"},
        "analysis_wall_s": time.time() - t0,
        "provenance": provenance(),
    })
    if "mixing" in rec:  # keep the count series compact: every 4th frame
        for k in ("domain_out", "matrix_in", "n_mixed", "events", "time_ps"):
            rec["mixing"][k] = np.asarray(rec["mixing"][k])[::4]
    return rec


# --------------------------------------------------------------------------
# running lanes
# --------------------------------------------------------------------------
def run_lane(spec: MatrixSpec, case: Case, temperature_K: float, out, deadline: float | None,
             kinisi: bool = True, max_new_runs: int | None = None) -> dict:
    """Run (or resume) the runs a lane needs until it has enough hops, the run cap, or the deadline.

    With ``max_new_runs`` it returns (status ``"partial"``) after that many
    finished runs, so that lanes can take turns.
    """
    from md_reference.md.runner import run_file, run_md  # noqa: PLC0415

    pot_sha = _potential_sha(spec)
    h = case.physics_hash(pot_sha, spec.seed)
    job = case_job(spec, case, out)
    ti = list(case.temperatures_K).index(temperature_K)
    n_new = 0
    while True:
        recs = load_records(spec, case, out, pot_sha)[float(temperature_K)]
        st = lane_status(spec, recs, case, temperature_K)
        if not st["needs_run"]:
            return {"case": case.id, "temperature_K": temperature_K, "status": "done", **st}
        left = None if deadline is None else deadline - time.time()
        if left is not None and left < 30.0:
            return {"case": case.id, "temperature_K": temperature_K, "status": "out of time", **st}
        if max_new_runs is not None and n_new >= max_new_runs:
            return {"case": case.id, "temperature_K": temperature_K, "status": "partial", **st}
        r = st["next_run"]
        try:
            res = run_md(job, ti, r, resume=True, progress=False, max_wall_s=left)
        except (OSError, RuntimeError) as exc:
            # A trajectory damaged by a kill during a write: it is not a record yet, so keep it aside
            # (never delete) and run that run again from its start.
            path = run_file(job.out_dir, temperature_K, r)
            if not path.is_file():
                raise
            bad = path.with_suffix(f".corrupt-{int(time.time())}.h5")
            path.rename(bad)
            log.warning("%s: cannot continue (%s); moved to %s, restarting the run", path, exc, bad.name)
            res = run_md(job, ti, r, resume=False, progress=False, max_wall_s=left)
        if res["status"] == "interrupted":
            return {"case": case.id, "temperature_K": temperature_K, "status": "interrupted", **st}
        path = run_file(job.out_dir, temperature_K, r)
        rec = compact_record(path, case, h, kinisi=kinisi)
        rec["md_wall_s"] = res.get("wall_s")
        rec["ms_per_step"] = res.get("ms_per_step")
        write_json_atomic(record_path(out, case, temperature_K, r), rec)
        n_new += 1
        log.info("%s T=%g K run %d: %d hops", case.id, temperature_K, r, rec["tracking"]["n_hops"])


def _lane_worker(args, max_new_runs: int | None = None):
    spec_path, case_id, T, out, deadline, kinisi = args
    os.environ["OMP_NUM_THREADS"] = "1"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    from workflows.matrix_spec import load_spec  # noqa: PLC0415

    spec = load_spec(spec_path)
    return run_lane(spec, spec.case(case_id), T, out, deadline, kinisi=kinisi, max_new_runs=max_new_runs)


def run_missing_md(spec: MatrixSpec, out, *, workers: int = 1, max_wall_s: float | None = None,
                   cases: list[str] | None = None, kinisi: bool = True) -> list[dict]:
    """Run every lane that still needs runs, ``workers`` lanes at a time; returns the lane statuses.

    The lanes take turns, one run each (with several workers, as many lanes at
    once), so that a wall-time limit leaves every lane nearer its target rather
    than the first ones done and the last ones untouched.
    """
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait  # noqa: PLC0415
    from multiprocessing import get_context  # noqa: PLC0415

    deadline = None if max_wall_s is None else time.time() + float(max_wall_s)
    pot_sha = _potential_sha(spec)
    lanes = []
    for case in spec.cases:
        if cases and case.id not in cases:
            continue
        recs = load_records(spec, case, out, pot_sha)
        for T in case.temperatures_K:
            if lane_status(spec, recs[float(T)], case, T)["needs_run"]:
                lanes.append((spec.path, case.id, float(T), str(out), deadline, kinisi))
    if not lanes:
        return []
    if workers <= 1:
        final: dict[tuple, dict] = {}
        active = list(lanes)
        while active:
            still = []
            for a in active:
                st = _lane_worker(a, max_new_runs=1)
                final[a[1:3]] = st
                if st["status"] == "partial":
                    still.append(a)
                elif st["status"] in ("out of time", "interrupted"):
                    return list(final.values())  # the deadline has passed for every lane
            active = still
        return [final[x[1:3]] for x in lanes]
    # several workers: the lanes take turns as well (one run per turn, a lane that needs more goes to the
    # back of the queue), so the last lanes of the matrix are not left for a later sitting
    final = {}
    queue = list(lanes)
    with ProcessPoolExecutor(max_workers=int(workers), mp_context=get_context("spawn")) as ex:
        running = {}
        while queue or running:
            while queue and len(running) < int(workers):
                a = queue.pop(0)
                running[ex.submit(_lane_worker, a, 1)] = a
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for f in done:
                a = running.pop(f)
                st = f.result()
                final[a[1:3]] = st
                if st["status"] == "partial":
                    queue.append(a)
                elif st["status"] in ("out of time", "interrupted"):
                    queue.clear()  # the deadline has passed; the running lanes stop at their checkpoints
    return [final[x[1:3]] for x in lanes]


def lane_table(spec: MatrixSpec, out) -> list[dict]:
    """Hops and runs of every lane (no MD)."""
    rows = []
    pot_sha = _potential_sha(spec)
    for case in spec.cases:
        recs = load_records(spec, case, out, pot_sha)
        for T in case.temperatures_K:
            st = lane_status(spec, recs[float(T)], case, T)
            ps = sum(r["duration_ps"] for r in recs[float(T)])
            rows.append({"case": case.id, "temperature_K": float(T), "md_ps": ps, **st})
    return rows


__all__ = ["case_job", "compact_record", "lane_status", "lane_table", "load_records", "record_path",
           "run_lane", "run_missing_md"]
