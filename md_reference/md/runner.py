"""Independent MD runs of one structure at several temperatures, in parallel processes.

An :class:`MDJob` says what to simulate (structure, defect, potential, MD
settings, temperatures, number of runs, master seed). :func:`run_md` runs one
(temperature, run) pair into ``<out>/T<T>_r<r>.h5`` with a resumable
checkpoint; :func:`run_all` runs them all in a pool of worker processes (one
thread each) and writes ``<out>/job.json``.

Seeds: run ``r`` at temperature index ``t`` draws its LAMMPS velocity seed
from ``SeedSequence(seed, spawn_key=(t, r))``. The structure (random mix and
defect site) comes from the structure seed and is the same for every run
unless ``vary_structure`` is set.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from common.atomic import write_text_atomic
from md_reference.md.lammps_driver import (
    LammpsSession,
    MDSettings,
    measure_lattice_constant,
)
from md_reference.md.potentials import load_potential
from md_reference.md.structures import build_cell, vegard_lattice_constant
from md_reference.md.trajectory import TrajectoryWriter, is_complete

log = logging.getLogger(__name__)


@dataclass
class StructureSpec:
    """What cell to build (see :func:`md_reference.md.structures.build_cell`).

    ``lattice_constant``: a number (A), ``"vegard"``, or ``"npt"`` (measured by
    an NPT run of the same potential at each temperature, cached in the job folder).
    """

    kind: str = "pure"
    shape: tuple[int, int, int] = (4, 4, 4)
    defect: str = "interstitial"
    where: str | int = "random"
    added_species: str = "same"
    lattice_constant: float | str = "vegard"
    seed: int = 0
    params: dict = field(default_factory=lambda: {"species": "I"})

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


@dataclass
class MDJob:
    structure: StructureSpec
    potential: str | dict
    settings: MDSettings
    temperatures_K: tuple[float, ...] = (600.0,)
    n_runs: int = 1
    seed: int = 1
    out_dir: str = "md_runs"
    checkpoint_every_frames: int = 50
    vary_structure: bool = False
    a_I_A: float = 6.30
    a_Br_A: float = 5.90

    def to_dict(self) -> dict:
        return {
            "structure": self.structure.to_dict(),
            "potential": self.potential if isinstance(self.potential, (str, dict)) else self.potential.describe(),
            "settings": self.settings.to_dict(),
            "temperatures_K": list(self.temperatures_K),
            "n_runs": self.n_runs,
            "seed": self.seed,
            "out_dir": self.out_dir,
            "checkpoint_every_frames": self.checkpoint_every_frames,
            "vary_structure": self.vary_structure,
            "a_I_A": self.a_I_A,
            "a_Br_A": self.a_Br_A,
        }


def md_provenance() -> dict:
    """Versions of everything that touches an MD result."""
    from common.provenance import provenance  # noqa: PLC0415

    out = provenance()
    for mod in ("ase", "lammps", "torch", "nequip", "allegro"):
        m = sys.modules.get(mod)
        if m is not None:
            out[mod] = getattr(m, "__version__", None) or str(getattr(m, "version", ""))
    try:
        from md_reference.md.lammps_lib import lammps_module  # noqa: PLC0415

        out["lammps_version"] = lammps_module().__version__
    except Exception:  # noqa: BLE001 - provenance must not fail the run
        pass
    return out


def run_file(out_dir, temperature_K: float, run_index: int) -> Path:
    return Path(out_dir) / f"T{temperature_K:g}_r{run_index}.h5"


def _lattice_constant(job: MDJob, t_index: int, temperature_K: float, config_x_I: float) -> tuple[float, dict]:
    lc = job.structure.lattice_constant
    if lc == "vegard":
        return vegard_lattice_constant(config_x_I, job.a_I_A, job.a_Br_A), {"method": "vegard",
                                                                              "a_I_A": job.a_I_A,
                                                                              "a_Br_A": job.a_Br_A}
    if lc == "npt":
        cache = Path(job.out_dir) / f"lattice_constant_T{temperature_K:g}.json"
        if cache.is_file():
            rec = json.loads(cache.read_text())
            return rec["lattice_constant_A"], {"method": "npt", **rec}
        s = job.structure
        atoms, _, _ = build_cell(s.kind, s.shape, defect=s.defect, where=s.where, added_species=s.added_species,
                                 lattice_constant=vegard_lattice_constant(config_x_I, job.a_I_A, job.a_Br_A),
                                 seed=s.seed, **s.params)
        seed = int(np.random.SeedSequence(job.seed, spawn_key=(t_index, 10_000)).generate_state(1)[0] % 899_999_999) + 1
        rec = measure_lattice_constant(atoms, load_potential(job.potential), temperature_K,
                                       timestep_fs=job.settings.timestep_fs, seed=seed)
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(cache, json.dumps(rec, indent=2))
        return rec["lattice_constant_A"], {"method": "npt", **rec}
    return float(lc), {"method": "given"}


def velocity_seed(job: MDJob, t_index: int, run_index: int) -> int:
    ss = np.random.SeedSequence(job.seed, spawn_key=(t_index, run_index))
    return int(ss.generate_state(1, dtype=np.uint32)[0] % 899_999_999) + 1


def run_md(job: MDJob, t_index: int, run_index: int, resume: bool = True, progress: bool = False,
           max_wall_s: float | None = None) -> dict:
    """One MD run; returns a small summary.

    Resumes a checkpointed file when ``resume``. With ``max_wall_s`` the run
    stops after that much wall time, at a checkpoint (status "interrupted"),
    and a later call continues it.
    """
    import h5py  # noqa: PLC0415,F401 - fail early when missing

    T = float(job.temperatures_K[t_index])
    path = run_file(job.out_dir, T, run_index)
    if is_complete(path):
        log.info("%s is complete; skipping", path)
        return {"path": str(path), "status": "complete (kept)"}
    s = job.structure
    struct_seed = s.seed + (1000 * run_index if job.vary_structure else 0)
    atoms0, config, defects = build_cell(s.kind, s.shape, defect=s.defect, where=s.where,
                                         added_species=s.added_species, lattice_constant=6.0,
                                         seed=struct_seed, **s.params)
    a, a_info = _lattice_constant(job, t_index, T, config.x_I)
    atoms, config, defects = build_cell(s.kind, s.shape, defect=s.defect, where=s.where,
                                        added_species=s.added_species, lattice_constant=a,
                                        seed=struct_seed, **s.params)
    potential = load_potential(job.potential)
    settings = MDSettings(**{**job.settings.to_dict(), "temperature_K": T,
                             "seed": velocity_seed(job, t_index, run_index)}).validate()
    prov = {
        "structure": {**s.to_dict(), "seed": struct_seed, "lattice_constant_A": a, "lattice_constant": a_info,
                      "atoms_info": atoms.info},
        "potential": potential.describe(),
        "md_settings": settings.to_dict(),
        "run": {"temperature_K": T, "t_index": t_index, "run_index": run_index, "master_seed": job.seed},
        "versions": md_provenance(),
        "job": job.to_dict(),
    }
    ckpt = None
    writer = None
    if resume and path.is_file():
        try:
            writer = TrajectoryWriter(path, provenance=prov, resume=True)
            ckpt = writer.load_checkpoint()
        except Exception as exc:  # noqa: BLE001
            if writer is not None:
                writer.close()
            raise RuntimeError(f"cannot resume {path}: {exc}") from exc
        if ckpt is None:
            writer.close()
            writer = None
    if writer is None:
        writer = TrajectoryWriter(path, atoms, config, prov)
    sess = LammpsSession(atoms, potential)
    t_start = time.time()
    try:
        sess.setup_md(settings)
        n_frames_total = settings.n_steps // settings.dump_every
        step = 0
        if ckpt is not None:
            sess.set_positions(ckpt["positions_A"])
            _set_velocities(sess, ckpt["velocities"])
            step = ckpt["step"]
            frame = ckpt["n_frames"] - 1  # frames after the t = 0 frame
            log.info("%s: resuming at frame %d", path.name, frame)
            sess.run(0)
        else:
            sess.run(settings.equilibration_steps)  # also 0: energies are tallied for frame 0
            frame = 0
            _record(writer, sess, 0.0)
        # Unwrapped positions are continuous across the equilibration and stored in the
        # structure's own frame, where the ideal sites are lattice.positions_A(a).
        last_report = time.time()
        t_loop = time.time()
        frames_done = 0
        from tqdm import tqdm  # noqa: PLC0415

        bar = tqdm(total=n_frames_total, initial=frame, unit="frame", desc=f"T{T:g} r{run_index}", leave=False,
                   disable=not (progress and sys.stderr.isatty()))
        while frame < n_frames_total:
            sess.run(settings.dump_every)
            step += settings.dump_every
            frame += 1
            frames_done += 1
            _record(writer, sess, step * settings.timestep_fs / 1000.0)
            out_of_time = max_wall_s is not None and time.time() - t_start > max_wall_s
            if frame % job.checkpoint_every_frames == 0 or frame == n_frames_total or out_of_time:
                writer.save_checkpoint(step, sess.positions(), _get_velocities(sess), sess.cell_lengths())
            if out_of_time and frame < n_frames_total:
                log.warning("%s: stopped at frame %d of %d (wall-time limit); resume to continue",
                            path.name, frame, n_frames_total)
                return {"path": str(path), "status": "interrupted", "n_frames": writer.n_frames}
            now = time.time()
            bar.update(1)
            if progress and now - last_report > 10.0:
                ms = 1000.0 * (now - t_loop) / (frames_done * settings.dump_every)
                eta = (n_frames_total - frame) * settings.dump_every * ms / 1000.0
                bar.set_postfix_str(f"{step * settings.timestep_fs / 1000:.1f} ps, {ms:.1f} ms/step", refresh=False)
                log.info("T=%g K run %d: %5.1f%% (%.1f of %.1f ps), %.1f ms/step, ETA %.0f s",
                            T, run_index, 100.0 * frame / n_frames_total,
                            step * settings.timestep_fs / 1000, settings.n_steps * settings.timestep_fs / 1000,
                            ms, eta)
                last_report = now
        bar.close()
        wall = time.time() - t_start
        summary = {
            "wall_s": wall,
            "ms_per_step": 1000.0 * (time.time() - t_loop) / max(1, frames_done * settings.dump_every),
            "n_frames": writer.n_frames,
            "mean_temperature_K": float(np.mean(writer.h5["temperature_K"][1:])) if writer.n_frames > 1 else None,
        }
        writer.finish(summary)
    finally:
        sess.close()
        writer.close()
    return {"path": str(path), "status": "done", **summary}


def _record(writer: TrajectoryWriter, sess: LammpsSession, time_ps: float) -> None:
    writer.append(sess.positions(unwrapped=True), time_ps, sess.cell_lengths(), sess.energy_eV(),
                  sess.temperature_K())


def _get_velocities(sess: LammpsSession) -> np.ndarray:
    return sess._by_id("v")


def _set_velocities(sess: LammpsSession, v: np.ndarray) -> None:
    nlocal = sess.lmp.extract_global("nlocal")
    ids = sess.lmp.numpy.extract_atom("id")[:nlocal]
    vv = sess.lmp.numpy.extract_atom("v")
    vv[:nlocal] = np.asarray(v)[ids - 1]


def _worker(args):
    job_dict, t_index, run_index, resume, progress, max_wall_s = args
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    logging.basicConfig(level=logging.INFO if progress else logging.WARNING,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    job = job_from_dict(job_dict)
    return run_md(job, t_index, run_index, resume=resume, progress=progress, max_wall_s=max_wall_s)


def job_from_dict(d: dict) -> MDJob:
    s = dict(d["structure"])
    s["shape"] = tuple(s["shape"])
    return MDJob(
        structure=StructureSpec(**s),
        potential=d["potential"],
        settings=MDSettings(**d["settings"]),
        temperatures_K=tuple(d["temperatures_K"]),
        n_runs=int(d["n_runs"]),
        seed=int(d["seed"]),
        out_dir=d["out_dir"],
        checkpoint_every_frames=int(d.get("checkpoint_every_frames", 50)),
        vary_structure=bool(d.get("vary_structure", False)),
        a_I_A=float(d.get("a_I_A", 6.30)),
        a_Br_A=float(d.get("a_Br_A", 5.90)),
    )


def run_all(job: MDJob, workers: int = 1, resume: bool = True, progress: bool = True,
            max_wall_s: float | None = None) -> list[dict]:
    """Run every (temperature, run) pair; returns their summaries.

    Writes ``job.json`` (the job and versions) into the output folder first.
    A file already complete is kept; a checkpointed one is resumed.
    """
    out = Path(job.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic((out / "job.json"), json.dumps({"job": job.to_dict(), "versions": md_provenance()}, indent=2))
    # The NPT lattice constants are measured once per temperature, before the runs.
    if job.structure.lattice_constant == "npt":
        s = job.structure
        _, config, _ = build_cell(s.kind, s.shape, defect=s.defect, where=s.where, lattice_constant=6.0,
                                  seed=s.seed, **s.params)
        for ti, T in enumerate(job.temperatures_K):
            _lattice_constant(job, ti, T, config.x_I)
    tasks = [(job.to_dict(), ti, r, resume, progress, max_wall_s)
             for ti in range(len(job.temperatures_K)) for r in range(job.n_runs)]
    results = []
    if workers <= 1:
        for t in tasks:
            results.append(_worker(t))
            if progress:
                log.info("finished %s", results[-1]["path"])
        return results
    env_threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as ex:
            futs = [ex.submit(_worker, t) for t in tasks]
            for i, f in enumerate(as_completed(futs), 1):
                results.append(f.result())
                if progress:
                    log.info("finished %d/%d: %s", i, len(tasks), results[-1]["path"])
    finally:
        if env_threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = env_threads
    return results
