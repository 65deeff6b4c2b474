"""Validation of a machine-learned potential against its reference, as in the paper's SI.

The paper validated its Allegro model on DFT forces of frames from MD at
600 K (R^2 = 0.95, MAE <= 51 meV/A on all atoms, R^2 >= 0.94 and
MAE <= 56 meV/A on atoms in the defect environment), on CI-NEB barriers
(within 0.08 eV of DFT) and on the pure compounds (transfer). Here the same
checks compare a model (any package potential, in practice an
:class:`~md_reference.ml.allegro.AllegroPotential`) with its *reference* (the
potential or calculator that labelled its training set):

Held-out frames
    NVT runs of the reference (:func:`md_reference.ml.dataset.run_md_task`) at
    ``temperature_K`` in ``shape`` cells (3x3x3 by default, larger than the
    2x2x2 training cells) of CsPb(I0.5Br0.5)3, CsPbI3 and CsPbBr3, each with a
    split interstitial and with a vacancy. Their seeds come from the
    validation stream ``SeedSequence(seed, spawn_key=(1, task))``, which no
    training set (stream ``(0, task)``) uses; the report also checks the MD
    velocity seeds against the model record's training seeds.
Force parity
    Over Cartesian force components (eV/A): ``R^2 = 1 - sum (F_model -
    F_ref)^2 / sum (F_ref - mean F_ref)^2``, MAE, RMSE and the largest error,
    for all atoms and for the atoms of the *defect environment*, per
    composition (the pure compounds are the transfer check) and over all.
Defect environment
    The atoms within ``defect_radius_A`` (default 5.0 A, minimum image) of a
    defect site. Defect sites come from a nearest-site assignment of the
    frame's halides to the ideal halide sublattice
    (:func:`md_reference.analysis.tracker.assign_sites`, no averaging): sites holding 0
    halides (vacancy) or 2 (split interstitial). 5.0 A includes, around a halide
    site of CsPbX3 (a = 5.9-6.4 A), the 2 Pb of its bond (a/2), the 4 Cs and the 8
    halide neighbours (a/sqrt 2) and the defect's own atoms.
Energies and stress
    Per-atom energy errors (MAE, RMSE, mean = bias) and stress-component MAE (GPa).
Barriers
    Climbing-image NEB (:mod:`md_reference.neb.band`) of the four reference hops in
    pure 3x3x3 CsPbI3 / CsPbBr3 (iodide and bromide vacancy and kick-out
    interstitial, :data:`md_reference.neb.REFERENCE_HOPS`) with the model and
    with the reference; with ``dft_paths_dir`` also the energies of the DFT
    path images (:func:`md_reference.neb.validate_reference_paths`).
Speed
    ms per MD step of the model (NVT, 1 thread) on a 6x6x6 cell with one
    interstitial (1081 atoms).

:func:`validate_potential` runs everything and returns the report (JSON-ready,
schema :data:`VALIDATION_SCHEMA`); :func:`write_plots` draws the parity plots
and the barrier comparison; ``kmc md validate`` is the command line.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from common.atomic import write_text_atomic
from common.provenance import git_revision, to_jsonable, utc_now, versions
from md_reference.md.potentials import Potential, load_potential
from md_reference.ml.dataset import (
    PURPOSE_VALIDATION,
    CellRecipe,
    DatasetSettings,
    label_frames,
    plan_tasks,
    run_md_task,
)

log = logging.getLogger(__name__)

VALIDATION_SCHEMA = "halide-kmc/potential-validation/1"
DEFECT_RADIUS_A = 5.0
EV_A3_TO_GPA = 160.21766208
#: The paper's numbers for its DFT-trained Allegro model (forces in eV/A, barriers in eV).
PAPER_TARGETS = {"force_r2_all": 0.95, "force_mae_all_eV_A": 0.051, "force_r2_defect_env": 0.94,
                 "force_mae_defect_env_eV_A": 0.056, "barrier_abs_diff_eV": 0.08}


@dataclass
class ValidationSettings:
    """What :func:`validate_potential` computes.

    Attributes
    ----------
    temperature_K : float
        MD temperature of the held-out frames.
    shape : (3,) int
        Cells of the held-out frames.
    x_I_mixed : float
        Iodide fraction of the mixed cells.
    compositions : tuple of {"mixed", "I", "Br"}
    defects : tuple of {"interstitial", "vacancy"}
    frames_per_run, equilibration_steps, sample_every : int
        One NVT run per (composition, defect); frames every ``sample_every`` 2 fs steps.
    a_I_A, a_Br_A : float
        Vegard end points of the held-out cells (A); default the 0 K cubic values
        times 1.01 (thermal expansion of the reference near 600 K).
    seed : int
    defect_radius_A : float
    neb : bool
        Run the NEB barriers of the four reference hops.
    neb_settings : dict
        :class:`md_reference.neb.NEBSettings` fields (looser than its defaults, for speed).
    dft_paths_dir : str, optional
        Folder of the DFT path images (``udmb_*.xyz``): adds DFT energies.
    timing_steps : int
        Timed MD steps on the 1081-atom cell (0: no timing).
    """

    temperature_K: float = 600.0
    shape: tuple[int, int, int] = (3, 3, 3)
    x_I_mixed: float = 0.5
    compositions: tuple[str, ...] = ("mixed", "I", "Br")
    defects: tuple[str, ...] = ("interstitial", "vacancy")
    frames_per_run: int = 8
    equilibration_steps: int = 1000
    sample_every: int = 100
    a_I_A: float = 6.30 * 1.01
    a_Br_A: float = 5.90 * 1.01
    seed: int = 2027
    defect_radius_A: float = DEFECT_RADIUS_A
    neb: bool = True
    neb_settings: dict = field(default_factory=lambda: {"n_images": 5, "fmax_eV_A": 0.05, "max_steps": 300,
                                                        "endpoint_fmax_eV_A": 0.02, "endpoint_max_steps": 1000,
                                                        "endpoint_refinements": 1})
    dft_paths_dir: str | None = None
    timing_steps: int = 10

    def validate(self) -> "ValidationSettings":
        bad = [c for c in self.compositions if c not in ("mixed", "I", "Br")]
        if bad or not self.compositions:
            raise ValueError(f"unknown compositions {bad}; valid compositions are ['Br', 'I', 'mixed']")
        bad = [d for d in self.defects if d not in ("interstitial", "vacancy")]
        if bad or not self.defects:
            raise ValueError(f"unknown defects {bad}; valid defects are ['interstitial', 'vacancy']")
        if not self.defect_radius_A > 0:
            raise ValueError(f"defect_radius_A must be > 0, got {self.defect_radius_A}")
        if int(self.timing_steps) != self.timing_steps or self.timing_steps < 0:
            raise ValueError(f"timing_steps must be an integer >= 0, got {self.timing_steps}")
        return self

    def cells(self) -> tuple[CellRecipe, ...]:
        out = []
        for comp in self.compositions:
            params = {"x_I": self.x_I_mixed} if comp == "mixed" else {"species": comp}
            for d in self.defects:
                out.append(CellRecipe("random" if comp == "mixed" else "pure", tuple(self.shape), d, dict(params)))
        return tuple(out)

    def dataset_settings(self) -> DatasetSettings:
        """The :class:`DatasetSettings` of the held-out MD (no strain, no paths, no jitter)."""
        return DatasetSettings(cells=self.cells(), temperatures_K=(float(self.temperature_K),),
                               candidates_per_run=self.frames_per_run, strains=(), hops_per_cell=0,
                               equilibration_steps=self.equilibration_steps, sample_every=self.sample_every,
                               a_I_A=self.a_I_A, a_Br_A=self.a_Br_A, lattice_jitter=0.0, keep_fraction=1.0,
                               seed=self.seed)


# ----------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------
def parity_metrics(reference: np.ndarray, predicted: np.ndarray) -> dict:
    """R^2, MAE, RMSE, largest error and bias of ``predicted`` against ``reference`` (same units).

    All entries are pooled (e.g. every Cartesian force component):
    ``R^2 = 1 - sum (p - r)^2 / sum (r - mean r)^2``.
    """
    r = np.asarray(reference, dtype=np.float64).ravel()
    p = np.asarray(predicted, dtype=np.float64).ravel()
    if r.shape != p.shape:
        raise ValueError(f"reference and predicted differ in size: {r.size} vs {p.size}")
    if r.size == 0:
        return {"n": 0, "r2": None, "mae": None, "rmse": None, "max_abs": None, "mean_error": None}
    d = p - r
    ss_tot = float(np.sum((r - r.mean()) ** 2))
    return {
        "n": int(r.size),
        "r2": (1.0 - float(np.sum(d * d)) / ss_tot) if ss_tot > 0 else None,
        "mae": float(np.mean(np.abs(d))),
        "rmse": float(np.sqrt(np.mean(d * d))),
        "max_abs": float(np.max(np.abs(d))),
        "mean_error": float(np.mean(d)),
    }


def _lattice_of(atoms, shape=None):
    from lattice import HalideSublattice  # noqa: PLC0415

    if shape is None:
        s = atoms.info.get("shape") or atoms.info.get("lattice_shape")
        if s is None:
            raise ValueError("the frame's lattice shape is unknown (info['shape']); pass shape")
        shape = tuple(int(v) for v in s.split("x")) if isinstance(s, str) else tuple(int(v) for v in s)
    lengths = atoms.cell.lengths()
    a = lengths / np.asarray(shape, dtype=np.float64)
    if not np.allclose(atoms.cell.array, np.diag(lengths), atol=1e-8) or np.ptp(a) > 1e-6 * a.mean():
        raise ValueError("defect sites need a cubic, unstrained orthogonal cell")
    return HalideSublattice(tuple(shape)), float(a.mean())


def defect_sites(atoms, shape=None) -> tuple[np.ndarray, np.ndarray]:
    """Halide sites holding 0 (vacancy) or 2+ (split interstitial) halides in one frame.

    Nearest-site assignment of the frame's halides to the ideal sublattice
    (:func:`md_reference.analysis.tracker.assign_sites`, no time averaging).

    Returns
    -------
    (sites, counts) : (n_defects,) int64 site indices and their halide counts.
    """
    from md_reference.analysis.tracker import assign_sites  # noqa: PLC0415

    lat, a = _lattice_of(atoms, shape)
    sym = np.asarray(atoms.get_chemical_symbols())
    hal = np.flatnonzero((sym == "I") | (sym == "Br"))
    assign = assign_sites(atoms.positions[hal][None], lat, a, window_frames=1, hysteresis_A=0.0)[0]
    counts = np.bincount(assign, minlength=lat.n_sites)
    sites = np.flatnonzero(counts != 1)
    return sites.astype(np.int64), counts[sites]


def defect_environment_mask(atoms, radius_A: float = DEFECT_RADIUS_A, shape=None) -> np.ndarray:
    """(n_atoms,) bool: atoms within ``radius_A`` (minimum image) of a defect site (:func:`defect_sites`)."""
    lat, a = _lattice_of(atoms, shape)
    sites, _ = defect_sites(atoms, shape)
    if sites.size == 0:
        return np.zeros(len(atoms), dtype=bool)
    L = atoms.cell.lengths()
    centres = lat.positions_A(a)[sites]
    d = atoms.positions[:, None, :] - centres[None, :, :]
    d -= L * np.round(d / L)
    return np.any(np.linalg.norm(d, axis=2) <= radius_A, axis=1)


def _group_of(atoms) -> str:
    if "composition" in atoms.info:
        return str(atoms.info["composition"])
    return atoms.get_chemical_formula()


def compare_frames(reference_frames, model_frames, masks=None, groups=None) -> dict:
    """Parity metrics of labelled frames against labelled frames (same atoms, same order).

    Parameters
    ----------
    reference_frames, model_frames : list of ase.Atoms with energies and forces (and stress)
    masks : list of (n_atoms,) bool, optional
        Defect-environment atoms of each frame.
    groups : list of str, optional
        Set of each frame (default its ``info["composition"]``); metrics are given
        per set and over ``"all"``.

    Returns
    -------
    dict
        ``{set: {"n_frames", "forces": {"all_atoms": m, "defect_environment": m},
        "energy_per_atom_eV": m, "stress_GPa": m}}`` with ``m`` from
        :func:`parity_metrics` (forces in eV/A).
    """
    if len(reference_frames) != len(model_frames):
        raise ValueError("reference_frames and model_frames differ in length")
    groups = groups or [_group_of(a) for a in reference_frames]
    out = {}
    for g in [*dict.fromkeys(groups), "all"]:
        idx = [k for k, gg in enumerate(groups) if g in ("all", gg)]
        fr = np.concatenate([reference_frames[k].get_forces() for k in idx])
        fm = np.concatenate([model_frames[k].get_forces() for k in idx])
        entry = {"n_frames": len(idx), "n_atoms": int(fr.shape[0]),
                 "forces": {"all_atoms": parity_metrics(fr, fm)}}
        if masks is not None:
            m = np.concatenate([np.asarray(masks[k], dtype=bool) for k in idx])
            entry["forces"]["defect_environment"] = parity_metrics(fr[m], fm[m])
            entry["forces"]["defect_environment"]["n_atoms"] = int(m.sum())
        er = np.array([reference_frames[k].get_potential_energy() / len(reference_frames[k]) for k in idx])
        em = np.array([model_frames[k].get_potential_energy() / len(model_frames[k]) for k in idx])
        entry["energy_per_atom_eV"] = parity_metrics(er, em)
        try:
            sr = np.concatenate([reference_frames[k].get_stress(voigt=True) for k in idx]) * EV_A3_TO_GPA
            sm = np.concatenate([model_frames[k].get_stress(voigt=True) for k in idx]) * EV_A3_TO_GPA
            entry["stress_GPa"] = parity_metrics(sr, sm)
        except Exception:  # noqa: BLE001 - frames without stress
            entry["stress_GPa"] = None
        out[g] = entry
    return out


# ----------------------------------------------------------------------------
# held-out frames, barriers, speed
# ----------------------------------------------------------------------------
def heldout_frames(reference, settings: ValidationSettings, sampler=None) -> tuple[list, dict]:
    """Labelled held-out MD frames (validation seed stream) and their provenance."""
    ds = settings.dataset_settings()
    sampler = load_potential(sampler if sampler is not None else reference)
    tasks = plan_tasks(ds, purpose=PURPOSE_VALIDATION)
    frames = []
    for task in tasks:
        frames.extend(run_md_task(task, sampler, ds))
    labelled = label_frames(frames, reference)
    prov = {
        "seed": settings.seed,
        "seed_streams": "SeedSequence(seed, spawn_key=(1, task)); training sets use (0, task)",
        "tasks": [t.to_dict() for t in tasks],
        "md_seeds": sorted({int(a.info["md_seed"]) for a in frames}),
        "n_frames": len(frames),
        "n_atoms": sorted({len(a) for a in frames}),
        "sampler": sampler.describe(),
    }
    return labelled, prov


def _neb_settings(settings: ValidationSettings):
    from md_reference.neb.band import NEBSettings  # noqa: PLC0415

    return NEBSettings(**settings.neb_settings).validate()


def reference_hop_barriers(potential, settings: ValidationSettings) -> list[dict]:
    """NEB barriers of the four reference hops with one potential (errors recorded per hop).

    With ``settings.dft_paths_dir``: :func:`md_reference.neb.validate_reference_paths`
    (adds the potential's and DFT's energies of the DFT images); otherwise
    :func:`md_reference.neb.run_neb` on the same hops in pure 3x3x3 cells at
    a = 6.30 A (CsPbI3) and 5.90 A (CsPbBr3), the DFT cells' lattice constants.
    """
    from lattice import HalideSublattice, build_pure  # noqa: PLC0415
    from md_reference.neb import band as N  # noqa: PLC0415

    s = _neb_settings(settings)
    out = []
    for key, spec in N.REFERENCE_HOPS.items():
        t0 = time.perf_counter()
        try:
            if settings.dft_paths_dir:
                row = N.validate_reference_paths(potential, settings.dft_paths_dir, s, hops=(key,))[0]
                rec = {"hop": key, "barrier_eV": row["neb_barrier_eV"],
                       "barrier_backward_eV": row["neb_barrier_backward_eV"], "span_eV": row["neb_span_eV"],
                       "converged": row["neb_converged"], "image_energies_eV": row["neb"]["image_energies_eV"],
                       "image_path_A": row["neb"]["image_path_A"],
                       "dft_path": {"dft_image_eV": row["dft_image_eV"], "pot_image_eV": row["pot_image_eV"],
                                    "pot_image_max_eV": row["pot_image_max_eV"],
                                    "dft_barrier_eV": row["dft_barrier_eV"]}}
            else:
                a = 6.30 if spec["species"] == "I" else 5.90
                lat = HalideSublattice((3, 3, 3))
                slot = int(np.flatnonzero(lat.neighbours(spec["site_a"]) == spec["site_b"])[0])
                res = N.run_neb(build_pure(lat, spec["species"]), spec["defect"], spec["site_a"], slot, potential,
                                a, s, mover_index=1)
                rec = {"hop": key, "barrier_eV": res.barrier_forward_eV,
                       "barrier_backward_eV": res.barrier_backward_eV,
                       "span_eV": float(np.ptp(res.image_energies_eV)), "converged": res.converged,
                       "image_energies_eV": list(res.image_energies_eV), "image_path_A": list(res.image_path_A)}
        except Exception as exc:  # noqa: BLE001 - one failed NEB must not lose the report
            log.warning("NEB of %s failed: %s", key, exc)
            rec = {"hop": key, "error": f"{type(exc).__name__}: {exc}"}
        rec["wall_s"] = round(time.perf_counter() - t0, 1)
        out.append(rec)
    return out


def time_md_steps(potential, steps: int = 10, warmup: int = 2, shape=(6, 6, 6), seed: int = 1) -> dict:
    """ms per NVT step (600 K, 2 fs) of a CsPbI3 cell with one split interstitial (1081 atoms for 6x6x6)."""
    from md_reference.md.lammps_driver import LammpsSession, MDSettings  # noqa: PLC0415
    from md_reference.md.structures import build_cell  # noqa: PLC0415

    atoms, _, _ = build_cell("pure", shape, species="I", defect="interstitial", where="random",
                             lattice_constant=6.30, seed=seed)
    with LammpsSession(atoms, potential) as sess:
        sess.setup_md(MDSettings(temperature_K=600.0, timestep_fs=2.0, seed=seed))
        sess.run(max(1, warmup))
        t0 = time.perf_counter()
        sess.run(int(steps))
        elapsed = time.perf_counter() - t0
    threads = None
    try:
        import torch  # noqa: PLC0415

        threads = torch.get_num_threads()
    except ImportError:
        pass
    return {"n_atoms": len(atoms), "steps": int(steps), "ms_per_step": 1e3 * elapsed / steps,
            "torch_threads": threads, "ensemble": "NVT 600 K, 2 fs"}


# ----------------------------------------------------------------------------
# the whole validation
# ----------------------------------------------------------------------------
def _model_record(model: Potential) -> dict | None:
    from md_reference.ml.training import model_record_path  # noqa: PLC0415

    path = getattr(model, "path", None)
    if path is None:
        return None
    rec = model_record_path(path)
    return json.loads(rec.read_text()) if rec.is_file() else None


def _summary(report: dict) -> dict:
    sets = report["forces_and_energies"]
    mixed = next((k for k in sets if k.startswith("CsPb(")), "all")
    head = sets.get(mixed, sets["all"])
    env = head["forces"].get("defect_environment", {})
    diffs = [h["barrier_difference_eV"] for h in report.get("barriers", []) if h.get("barrier_difference_eV") is not None]
    return {
        "headline_set": mixed,
        "force_r2_all": head["forces"]["all_atoms"]["r2"],
        "force_mae_all_eV_A": head["forces"]["all_atoms"]["mae"],
        "force_r2_defect_env": env.get("r2"),
        "force_mae_defect_env_eV_A": env.get("mae"),
        "energy_mae_eV_atom": head["energy_per_atom_eV"]["mae"],
        "max_abs_barrier_difference_eV": max((abs(d) for d in diffs), default=None),
        "paper_targets": PAPER_TARGETS,
    }


def validate_potential(model, reference, settings: ValidationSettings | None = None, *,
                       out_dir: str | Path | None = None, plots: bool = True, model_spec: str | None = None,
                       reference_spec: str | None = None) -> dict:
    """Validate ``model`` against ``reference``; returns the report (and writes it with plots to ``out_dir``).

    Parameters
    ----------
    model : Potential or spec
        The potential under test (LAMMPS; an Allegro model runs through ``fix external``).
    reference : Potential or spec
        Labels the held-out frames and gives the reference barriers.
    settings : ValidationSettings
    out_dir : path, optional
        Writes ``validation.json`` and, with ``plots``, ``forces_parity.png``,
        ``energy_parity.png`` and ``barriers.png``.
    model_spec, reference_spec : str, optional
        The specs as given (recorded).
    """
    s = (settings or ValidationSettings()).validate()
    t0 = time.perf_counter()
    pot = load_potential(model)
    ref = load_potential(reference)
    record = _model_record(pot)
    frames_ref, frames_prov = heldout_frames(ref, s)
    t_frames = time.perf_counter() - t0
    frames_model = label_frames(frames_ref, pot)
    masks = [defect_environment_mask(a, s.defect_radius_A) for a in frames_ref]
    metrics = compare_frames(frames_ref, frames_model, masks)
    training_seeds = (record or {}).get("dataset", {}).get("md_seeds")
    frames_prov["md_seeds_shared_with_training"] = (sorted(set(training_seeds) & set(frames_prov["md_seeds"]))
                                                    if training_seeds is not None else None)
    t_parity = time.perf_counter() - t0 - t_frames
    barriers = []
    if s.neb:
        log.info("NEB of the reference hops with the model and the reference")
        rows_m = reference_hop_barriers(pot, s)
        rows_r = reference_hop_barriers(ref, s)
        for rm, rr in zip(rows_m, rows_r):
            row = {"hop": rm["hop"], "model": rm, "reference": rr}
            if "barrier_eV" in rm and "barrier_eV" in rr:
                row["barrier_difference_eV"] = rm["barrier_eV"] - rr["barrier_eV"]
            if "dft_path" in rm and "dft_path" in rr:
                row["dft_path_max"] = {"dft_eV": rm["dft_path"]["dft_barrier_eV"],
                                       "model_eV": rm["dft_path"]["pot_image_max_eV"],
                                       "reference_eV": rr["dft_path"]["pot_image_max_eV"]}
            barriers.append(row)
    speed = time_md_steps(pot, s.timing_steps) if s.timing_steps else None
    report = {
        "schema": VALIDATION_SCHEMA,
        "created_utc": utc_now(),
        "model": {"spec": model_spec, "describe": pot.describe(),
                  "training_compositions": (record or {}).get("dataset", {}).get("compositions")},
        "reference": {"spec": reference_spec, "describe": ref.describe()},
        "settings": to_jsonable(asdict(s)),
        "definitions": {
            "force_metrics": "over Cartesian force components (eV/A): R2 = 1 - sum (F_model - F_ref)^2 / "
                             "sum (F_ref - mean F_ref)^2; MAE, RMSE, max_abs, mean_error (bias)",
            "defect_environment": f"atoms within {s.defect_radius_A} A (minimum image) of a halide site holding "
                                  "0 (vacancy) or 2 (split interstitial) halides by nearest-site assignment",
            "energy": "per-atom energy (eV/atom), model minus reference",
            "stress": "Voigt components in GPa",
            "barrier_difference_eV": "forward CI-NEB barrier of the model minus that of the reference, same hop "
                                     "and set-up (3x3x3 pure cells, frozen far field)",
            "transfer": "the CsPbI3 and CsPbBr3 sets; compare training_compositions",
        },
        "heldout_frames": frames_prov,
        "forces_and_energies": metrics,
        "barriers": barriers,
        "speed": speed,
        "versions": versions(),
        "git_revision": git_revision(),
        "wall_time_s": {"frames": round(t_frames, 1), "parity": round(t_parity, 1),
                        "total": round(time.perf_counter() - t0, 1)},
    }
    report["summary"] = _summary(report)
    report = to_jsonable(report)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic((out / "validation.json"), json.dumps(report, indent=1) + "\n")
        if plots:
            write_plots(report, frames_ref, frames_model, masks, out)
    return report


# ----------------------------------------------------------------------------
# plots and text
# ----------------------------------------------------------------------------
def write_plots(report: dict, frames_ref, frames_model, masks, out_dir: str | Path) -> list[Path]:
    """Force parity (per set), per-atom energy parity and barrier plots (PNG); returns the paths."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    out_dir = Path(out_dir)
    groups = [_group_of(a) for a in frames_ref]
    sets = list(dict.fromkeys(groups))
    paths = []
    fig, axes = plt.subplots(1, len(sets), figsize=(3.6 * len(sets), 3.6), squeeze=False)
    for ax, g in zip(axes[0], sets):
        idx = [k for k, gg in enumerate(groups) if gg == g]
        fr = np.concatenate([frames_ref[k].get_forces() for k in idx])
        fm = np.concatenate([frames_model[k].get_forces() for k in idx])
        m = np.repeat(np.concatenate([masks[k] for k in idx])[:, None], 3, axis=1)
        ax.scatter(fr[~m], fm[~m], s=2, c="0.6", lw=0, rasterized=True, label="other atoms")
        ax.scatter(fr[m], fm[m], s=2, c="tab:red", lw=0, rasterized=True, label="defect environment")
        lim = float(np.abs(np.concatenate([fr.ravel(), fm.ravel()])).max()) * 1.05
        ax.plot([-lim, lim], [-lim, lim], "k-", lw=0.6)
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), xlabel="reference force (eV/A)", title=g)
        met = report["forces_and_energies"][g]["forces"]
        env = met.get("defect_environment", {})
        ax.text(0.03, 0.97, f"all: R2 {met['all_atoms']['r2']:.3f}, MAE {1e3 * met['all_atoms']['mae']:.0f} meV/A\n"
                f"defect env: R2 {env.get('r2') or float('nan'):.3f}, MAE {1e3 * (env.get('mae') or math.nan):.0f}"
                " meV/A", transform=ax.transAxes, va="top", fontsize=7)
        ax.set_aspect("equal")
    axes[0][0].set_ylabel("model force (eV/A)")
    axes[0][0].legend(loc="lower right", fontsize=7, markerscale=4)
    fig.suptitle(f"held-out MD frames at {report['settings']['temperature_K']:g} K", fontsize=9)
    fig.tight_layout()
    paths.append(out_dir / "forces_parity.png")
    fig.savefig(paths[-1], dpi=90)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(3.8, 3.6))
    for g in sets:
        idx = [k for k, gg in enumerate(groups) if gg == g]
        er = [frames_ref[k].get_potential_energy() / len(frames_ref[k]) for k in idx]
        em = [frames_model[k].get_potential_energy() / len(frames_model[k]) for k in idx]
        mae = report["forces_and_energies"][g]["energy_per_atom_eV"]["mae"]
        ax.scatter(er, em, s=10, label=f"{g} (MAE {1e3 * mae:.1f} meV/atom)")
    lo, hi = ax.get_xlim()
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.6)
    ax.set(xlabel="reference energy (eV/atom)", ylabel="model energy (eV/atom)")
    ax.legend(fontsize=6)
    fig.tight_layout()
    paths.append(out_dir / "energy_parity.png")
    fig.savefig(paths[-1], dpi=90)
    plt.close(fig)

    rows = [r for r in report.get("barriers", []) if "barrier_eV" in r["model"] and "barrier_eV" in r["reference"]]
    if rows:
        fig, axes = plt.subplots(1, len(rows), figsize=(3.0 * len(rows), 3.0), squeeze=False)
        for ax, r in zip(axes[0], rows):
            for who, style in (("reference", "k-o"), ("model", "C1-s")):
                e = np.asarray(r[who]["image_energies_eV"])
                x = np.asarray(r[who]["image_path_A"])
                ax.plot(x / max(x[-1], 1e-12), e - e.min(), style, ms=3, lw=1,
                        label=f"{who} NEB ({r[who]['barrier_eV']:.3f} eV)")
            if "dft_path" in r["model"]:
                xd = np.linspace(0, 1, len(r["model"]["dft_path"]["dft_image_eV"]))
                ax.plot(xd, r["model"]["dft_path"]["dft_image_eV"], "b:^", ms=3, lw=1, label="DFT path (DFT)")
                ax.plot(xd, r["model"]["dft_path"]["pot_image_eV"], "C1:^", ms=3, lw=1, label="DFT path (model)")
                ax.plot(xd, r["reference"]["dft_path"]["pot_image_eV"], "k:^", ms=3, lw=1,
                        label="DFT path (reference)")
            ax.set(title=f"{r['hop']}: dE = {r.get('barrier_difference_eV', math.nan):+.3f} eV",
                   xlabel="reaction coordinate")
            ax.legend(fontsize=5)
        axes[0][0].set_ylabel("energy (eV)")
        fig.tight_layout()
        paths.append(out_dir / "barriers.png")
        fig.savefig(paths[-1], dpi=90)
        plt.close(fig)
    return paths


def format_report(report: dict) -> str:
    """Text summary of a validation report."""
    lines = []
    md = report["model"]["describe"]
    lines.append(f"model: {md.get('path', md.get('kind'))} ({md.get('kind')}, backend {md.get('backend', '-')}, "
                 f"{md.get('n_parameters', '?')} parameters)")
    rd = report["reference"]["describe"]
    lines.append(f"reference: {rd.get('kind')} {rd.get('path', '')}")
    fp = report["heldout_frames"]
    lines.append(f"held-out frames: {fp['n_frames']} from MD at {report['settings']['temperature_K']:g} K "
                 f"(seed {fp['seed']}, cells of {fp['n_atoms']} atoms); MD seeds shared with training: "
                 f"{fp.get('md_seeds_shared_with_training')}")
    head = (f"{'set':<20}{'frames':>7}{'F R2':>8}{'F MAE':>8}{'F RMSE':>8}{'env R2':>8}{'env MAE':>8}"
            f"{'E MAE':>9}{'S MAE':>8}")
    lines += ["", "forces in meV/A, energies in meV/atom, stress in GPa", head, "-" * len(head)]
    for g, e in report["forces_and_energies"].items():
        fa = e["forces"]["all_atoms"]
        fe = e["forces"].get("defect_environment") or {}
        st = e.get("stress_GPa") or {}

        def f(v, scale=1.0, fmt="8.3f"):
            return format(v * scale, fmt) if v is not None else f"{'-':>8}"

        lines.append(f"{g:<20}{e['n_frames']:>7}{f(fa['r2'])}{f(fa['mae'], 1e3, '8.1f')}{f(fa['rmse'], 1e3, '8.1f')}"
                     f"{f(fe.get('r2'))}{f(fe.get('mae'), 1e3, '8.1f')}"
                     f"{f(e['energy_per_atom_eV']['mae'], 1e3, '9.2f')}{f(st.get('mae'), 1.0, '8.3f')}")
    if report.get("barriers"):
        lines += ["", f"{'hop':<6}{'model':>9}{'ref':>9}{'diff':>9}  (CI-NEB forward barriers, eV)"]
        for r in report["barriers"]:
            bm = r["model"].get("barrier_eV")
            br = r["reference"].get("barrier_eV")
            d = r.get("barrier_difference_eV")
            err = r["model"].get("error") or r["reference"].get("error")
            lines.append(f"{r['hop']:<6}{'' if bm is None else f'{bm:9.3f}':>9}{'' if br is None else f'{br:9.3f}':>9}"
                         f"{'' if d is None else f'{d:+9.3f}':>9}" + (f"  error: {err[:60]}" if err else ""))
            if "dft_path_max" in r:
                dp = r["dft_path_max"]
                lines.append(f"{'':<6}  on the DFT images: DFT {dp['dft_eV']:.3f}, model {dp['model_eV']:.3f}, "
                             f"reference {dp['reference_eV']:.3f}")
    if report.get("speed"):
        sp = report["speed"]
        lines.append(f"\nMD speed: {sp['ms_per_step']:.1f} ms/step for {sp['n_atoms']} atoms "
                     f"({sp['torch_threads']} torch thread(s), backend {md.get('backend', '-')})")
    sm = report["summary"]
    lines.append(f"\npaper (DFT-trained Allegro vs DFT): force R2 {PAPER_TARGETS['force_r2_all']}, MAE <= "
                 f"{1e3 * PAPER_TARGETS['force_mae_all_eV_A']:.0f} meV/A; defect env R2 >= "
                 f"{PAPER_TARGETS['force_r2_defect_env']}, MAE <= {1e3 * PAPER_TARGETS['force_mae_defect_env_eV_A']:.0f}"
                 f" meV/A; barriers within {PAPER_TARGETS['barrier_abs_diff_eV']} eV")
    if sm.get("max_abs_barrier_difference_eV") is not None:
        lines.append(f"this model ({sm['headline_set']}): force R2 {sm['force_r2_all']:.3f}, MAE "
                     f"{1e3 * sm['force_mae_all_eV_A']:.0f} meV/A; max |barrier diff| "
                     f"{sm['max_abs_barrier_difference_eV']:.3f} eV")
    return "\n".join(lines)
