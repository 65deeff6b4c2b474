"""Labelled datasets of defective CsPbX3 cells for machine-learned potentials.

A dataset is an extxyz file of frames with energies (eV), forces (eV/A) and
stresses (eV/A^3, ASE sign: ``-virial / V``) plus a JSON sidecar
(``PATH.json``: schema, SHA-256 of the extxyz, statistics, provenance).
Building one has four steps, each a function:

1. **Plan** (:func:`plan_tasks`): the sampling tasks of a
   :class:`DatasetSettings`, each seeded from ``SeedSequence(seed,
   spawn_key=(purpose, task))`` so that training (purpose 0) and validation
   (purpose 1, :mod:`md_reference.ml.validation`) never share a random stream:

   ``"md"``
       Thermal NVT frames (Nose-Hoover) of a small cell with one vacancy or
       split interstitial, at each temperature of ``temperatures_K``. Cells are
       :class:`CellRecipe` objects over :func:`md_reference.md.structures.build_cell`:
       pure CsPbI3/CsPbBr3, random mixes at several x, heterojunction interfaces
       and nanodomains. Each run's lattice constant is Vegard's law times a
       factor drawn from ``[1 - lattice_jitter, 1 + lattice_jitter]`` (thermal
       expansion), so stress labels vary.
   ``"strain"``
       The same in strained cells: ``strains[i]`` (diagonal strain, e.g.
       +-2 % isotropic, +-3 % uniaxial) is applied to cell recipe
       ``cells[i % len(cells)]`` at ``strain_temperature_K``.
   ``"path"``
       Images along single defect hops: the initial and final structures of
       :func:`md_reference.neb.hop_endpoints` (random slot and mover), joined by
       an IDPP interpolation (minimum image) and rattled by ``path_rattle_A``.
       They cover the saddle-point region that thermal MD visits rarely.
       They are not relaxed with the reference, which keeps the cost at one
       single point per kept image (vacancy images pass close to a Pb and
       carry forces of several eV/A).
   ``"neb"``
       Images of a climbing-image NEB of one random hop run with the sampler
       potential (:func:`md_reference.neb.run_neb`, loose settings
       ``neb_settings``), rattled like the path images: the minimum-energy
       path itself. Only for the cells of ``neb_cells`` (3x3x3 mixed cells in
       the presets, so that the four pure-compound reference hops of the
       validation are not trained on).

2. **Sample** (:func:`generate_candidates`): run the tasks with a *sampler*
   potential (LAMMPS; the reference ReaxFF by default); ``candidates_per_run``
   frames per task.
3. **Select** (:func:`select_frames`): farthest-point sampling on a cheap
   structural fingerprint (:func:`rdf_fingerprint`: per-species-pair radial
   distribution histograms, neighbours per atom per bin) keeps
   ``keep_fraction`` of each task's candidates, dropping near-duplicate,
   time-correlated frames before any (expensive) labelling. The choice
   (candidates, kept indices in pick order, covering radius) is recorded.
4. **Label** (:func:`label_frames`) with the reference: a package potential
   through LAMMPS (:func:`label_frames_with_lammps`) or any ASE calculator
   (e.g. DFT). Frames whose largest force exceeds ``max_force_eV_A`` are
   dropped and counted. :func:`write_dataset` writes the extxyz and sidecar.

:func:`build_training_set` does all four. :func:`sample_md_frames` /
:func:`build_dataset` are the older quick sampler (one temperature, pure or
mixed 2x2x2 cells) used by ``scripts/make_test_model.py`` and the MD benchmark.

Units: eV, A, K, fs; stress eV/A^3 with ASE's sign convention.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from common.atomic import write_text_atomic
from common.provenance import to_jsonable, versions
from md_reference.md.potentials import Potential, file_sha256, load_potential

log = logging.getLogger(__name__)

DATASET_SCHEMA = "halide-kmc/md-dataset/1"
SPECIES = ("Cs", "Pb", "I", "Br")
SOURCES = ("md", "strain", "path", "neb")
PURPOSE_TRAINING = 0
PURPOSE_VALIDATION = 1


# ----------------------------------------------------------------------------
# the quick sampler (test model, MD benchmark), LAMMPS labelling, extxyz output
# ----------------------------------------------------------------------------
@dataclass
class CellSpec:
    """One small cell to sample MD frames from.

    Attributes
    ----------
    shape : (3,) int
        Unit cells along x, y, z.
    composition : str
        ``"I"``, ``"Br"`` (pure) or ``"mixed"`` (random I/Br with ``x_I``).
    defect : {"vacancy", "interstitial", "none"}
    x_I : float
        Iodide fraction of a mixed cell.
    """

    shape: tuple[int, int, int] = (2, 2, 2)
    composition: str = "I"
    defect: str = "interstitial"
    x_I: float = 0.5

    def build(self, lattice_constant_A: float | str, seed: int):
        """(atoms, config, defects) of this cell (see :func:`md_reference.md.structures.build_cell`)."""
        from md_reference.md.structures import build_cell  # noqa: PLC0415

        if self.composition in ("I", "Br"):
            return build_cell("pure", self.shape, species=self.composition, defect=self.defect,
                              where="random", lattice_constant=lattice_constant_A, seed=seed)
        if self.composition == "mixed":
            return build_cell("random", self.shape, x_I=self.x_I, defect=self.defect, where="random",
                              lattice_constant=lattice_constant_A, seed=seed)
        raise ValueError(f"unknown composition {self.composition!r}; valid compositions are ['Br', 'I', 'mixed']")


DEFAULT_CELLS = tuple(
    CellSpec((2, 2, 2), comp, defect)
    for comp in ("I", "Br", "mixed")
    for defect in ("interstitial", "vacancy")
)


@dataclass
class SamplingSettings:
    """MD sampling of training frames.

    Attributes
    ----------
    temperature_K : float
    timestep_fs : float
    equilibration_steps : int
        Steps before the first frame.
    sample_every : int
        Steps between frames.
    frames_per_cell : int
    strain : float
        Each trajectory runs at a lattice constant scaled by a factor drawn
        uniformly from ``[1 - strain, 1 + strain]`` around Vegard's law, so
        that the stress labels vary.
    seed : int
    """

    temperature_K: float = 600.0
    timestep_fs: float = 2.0
    equilibration_steps: int = 200
    sample_every: int = 20
    frames_per_cell: int = 12
    strain: float = 0.02
    seed: int = 1
    cells: tuple[CellSpec, ...] = field(default_factory=lambda: DEFAULT_CELLS)

    def validate(self) -> "SamplingSettings":
        if not self.temperature_K > 0:
            raise ValueError(f"temperature_K must be > 0, got {self.temperature_K}")
        for name in ("equilibration_steps", "sample_every", "frames_per_cell"):
            v = getattr(self, name)
            if int(v) != v or v < (0 if name == "equilibration_steps" else 1):
                raise ValueError(f"{name} must be a positive integer, got {v}")
        if not 0.0 <= self.strain < 0.2:
            raise ValueError(f"strain must lie in [0, 0.2), got {self.strain}")
        if not self.cells:
            raise ValueError("cells must hold at least one CellSpec")
        return self


def _md_snapshots(atoms, potential, md, n_frames: int):
    """Yield ``(k, md_step, frame)`` for ``n_frames`` frames of an NVT run of ``atoms``.

    Runs ``md.equilibration_steps`` first, then takes a frame (a copy of
    ``atoms`` at the current wrapped positions) every ``md.dump_every`` steps.
    """
    from md_reference.md.lammps_driver import LammpsSession  # noqa: PLC0415

    with LammpsSession(atoms, potential) as sess:
        sess.setup_md(md)
        step = 0
        if md.equilibration_steps:
            sess.run(md.equilibration_steps)
            step += md.equilibration_steps
        for k in range(n_frames):
            sess.run(md.dump_every)
            step += md.dump_every
            frame = atoms.copy()
            frame.set_positions(sess.positions(unwrapped=False))
            yield k, step, frame


def sample_md_frames(potential: Potential | str | dict, settings: SamplingSettings | None = None) -> list:
    """Frames (unlabelled ``ase.Atoms``) from short NVT runs of small defective cells.

    One Nose-Hoover NVT trajectory per cell of ``settings.cells``, seeded from
    ``settings.seed``; after ``equilibration_steps`` a frame is taken every
    ``sample_every`` steps. Each frame's ``info`` records its cell, defect,
    lattice constant, temperature and MD step.

    Parameters
    ----------
    potential : Potential or spec
        E.g. ``"reaxff:/path/IBrPbCs.ff"``.
    settings : SamplingSettings
    """
    from md_reference.md.lammps_driver import MDSettings  # noqa: PLC0415
    from md_reference.md.structures import vegard_lattice_constant  # noqa: PLC0415

    settings = (settings or SamplingSettings()).validate()
    pot = load_potential(potential)
    rng = np.random.default_rng(settings.seed)
    frames = []
    for icell, spec in enumerate(settings.cells):
        cell_seed = int(rng.integers(1, 2**31 - 1))
        x_I = {"I": 1.0, "Br": 0.0}.get(spec.composition, spec.x_I)
        a = vegard_lattice_constant(x_I) * float(rng.uniform(1 - settings.strain, 1 + settings.strain))
        atoms, _, _ = spec.build(a, seed=cell_seed % 100_000)
        md = MDSettings(temperature_K=settings.temperature_K, timestep_fs=settings.timestep_fs,
                        n_steps=settings.frames_per_cell * settings.sample_every,
                        equilibration_steps=settings.equilibration_steps, dump_every=settings.sample_every,
                        seed=cell_seed % 800_000_000 + 1)
        info = {
            "cell_index": icell,
            "shape": "x".join(str(int(v)) for v in spec.shape),
            "composition": spec.composition,
            "defect": spec.defect,
            "lattice_constant_A": float(a),
            "temperature_K": float(settings.temperature_K),
            "md_seed": int(md.seed),
        }
        for _, step, frame in _md_snapshots(atoms, pot, md, settings.frames_per_cell):
            frame.info = {**info, "md_step": int(step)}
            frames.append(frame)
        log.info("cell %d (%s %s %s): %d frames", icell, spec.shape, spec.composition, spec.defect,
                 settings.frames_per_cell)
    return frames


def label_frames_with_lammps(frames, potential: Potential | str | dict, *, stress: bool = True) -> list:
    """Label frames with a potential's energy, forces and (optionally) stress through LAMMPS.

    Parameters
    ----------
    frames : list of ase.Atoms
        Orthogonal periodic cells.
    potential : Potential or spec
    stress : bool
        Also compute the stress from the virial (``compute pressure NULL
        virial``). An :class:`~md_reference.md.potentials.ExternalPotential` whose
        compute returns no virial gives a zero stress: pass ``stress=False``.

    Returns
    -------
    list of ase.Atoms
        Copies with a ``SinglePointCalculator`` holding ``energy`` (eV),
        ``forces`` (eV/A) and ``stress`` (Voigt xx yy zz yz xz xy, eV/A^3).
        ``info["label_potential_sha256"]`` names the potential's file hash when it has one.
    """
    from ase import units  # noqa: PLC0415
    from ase.calculators.singlepoint import SinglePointCalculator  # noqa: PLC0415

    from md_reference.md.lammps_driver import LammpsSession  # noqa: PLC0415
    from md_reference.md.lammps_lib import lammps_module  # noqa: PLC0415
    from md_reference.md.potentials import UNIT_PRESSURE_TO_BAR  # noqa: PLC0415

    pot = load_potential(potential)
    lmp_mod = lammps_module()
    sha = pot.describe().get("sha256")
    out = []
    sess, key = None, None
    try:
        for atoms in frames:
            k = (tuple(atoms.get_chemical_symbols()), tuple(np.round(atoms.cell.lengths(), 10)))
            if k != key:
                if sess is not None:
                    sess.close()
                sess = LammpsSession(atoms, pot)
                sess.lmp.command("compute lbl_press all pressure NULL virial")
                key = k
            else:
                sess.set_positions(atoms.get_positions())
            energy, forces = sess.energy_forces()
            labelled = atoms.copy()
            results = {"energy": energy, "forces": forces}
            if stress:
                p = np.array(sess.lmp.numpy.extract_compute("lbl_press", lmp_mod.LMP_STYLE_GLOBAL,
                                                            lmp_mod.LMP_TYPE_VECTOR), dtype=np.float64)
                p_eV_A3 = p * UNIT_PRESSURE_TO_BAR[sess.units] * units.bar  # xx yy zz xy xz yz
                results["stress"] = -p_eV_A3[[0, 1, 2, 5, 4, 3]]
            labelled.calc = SinglePointCalculator(labelled, **results)
            labelled.info["label_potential"] = pot.kind
            if sha:
                labelled.info["label_potential_sha256"] = sha
            out.append(labelled)
    finally:
        if sess is not None:
            sess.close()
    return out


def write_dataset(frames, path: str | Path, provenance: dict | None = None) -> dict:
    """Write labelled frames to extxyz plus a JSON provenance sidecar (``PATH.json``).

    Returns the sidecar dict (schema, number of frames and atoms, the extxyz
    SHA-256, energy/force statistics and ``provenance``).
    """
    from ase.io import write  # noqa: PLC0415

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = []
    for atoms in frames:
        a = atoms.copy()
        a.calc = atoms.calc
        a.info = {k: v for k, v in atoms.info.items() if isinstance(v, (str, int, float, np.integer, np.floating))}
        a.arrays = {k: v for k, v in atoms.arrays.items() if k in ("numbers", "positions", "halide_site")}
        clean.append(a)
    write(path, clean, format="extxyz")
    forces = np.concatenate([a.get_forces() for a in frames]) if frames else np.zeros((0, 3))
    e_per_atom = np.array([a.get_potential_energy() / len(a) for a in frames])
    meta = {
        "schema": DATASET_SCHEMA,
        "file": path.name,
        "sha256": file_sha256(path),
        "n_frames": len(frames),
        "n_atoms": sorted({len(a) for a in frames}),
        "species": sorted({s for a in frames for s in a.get_chemical_symbols()}),
        "units": {"energy": "eV", "forces": "eV/A", "stress": "eV/A^3 (ASE sign: -virial/V)"},
        "forces_rms_eV_A": float(np.sqrt(np.mean(forces**2))) if forces.size else None,
        "energy_per_atom_std_eV": float(e_per_atom.std()) if e_per_atom.size else None,
        "provenance": provenance or {},
    }
    write_text_atomic(Path(str(path) + ".json"), json.dumps(meta, indent=2, default=str))
    return meta


def build_dataset(potential: Potential | str | dict, path: str | Path,
                  settings: SamplingSettings | None = None) -> dict:
    """Sample, label and write a dataset in one call; returns the sidecar dict."""
    settings = (settings or SamplingSettings()).validate()
    pot = load_potential(potential)
    frames = label_frames_with_lammps(sample_md_frames(pot, settings), pot)
    prov = {"potential": pot.describe(), "sampling": to_jsonable(asdict(settings)), "versions": versions()}
    return write_dataset(frames, path, prov)



# ----------------------------------------------------------------------------
# labelling with any reference
# ----------------------------------------------------------------------------
def label_frames(frames, reference, *, stress: bool = True) -> list:
    """Label frames with a reference: a package potential (through LAMMPS) or an ASE calculator.

    Parameters
    ----------
    frames : list of ase.Atoms
    reference : Potential, spec (``"reaxff:PATH"``, ``"allegro:PATH"``, dict) or ase Calculator
        An ASE calculator (anything with ``get_potential_energy``/``calculate``,
        e.g. a DFT code's) is called on a copy of each frame.
    stress : bool
        Also store the stress (eV/A^3, Voigt xx yy zz yz xz xy).

    Returns
    -------
    list of ase.Atoms
        Copies with a ``SinglePointCalculator`` holding the labels and
        ``info["label_potential"]`` naming the reference.
    """
    if isinstance(reference, (Potential, str, dict)):
        return label_frames_with_lammps(frames, reference, stress=stress)
    from ase.calculators.singlepoint import SinglePointCalculator  # noqa: PLC0415

    if not hasattr(reference, "get_potential_energy"):
        raise TypeError(f"reference must be a potential spec, a Potential or an ASE calculator, got {reference!r}")
    name = type(reference).__name__
    out = []
    for atoms in frames:
        a = atoms.copy()
        a.calc = reference
        results = {"energy": float(a.get_potential_energy()), "forces": np.array(a.get_forces())}
        if stress:
            results["stress"] = np.array(a.get_stress(voigt=True))
        labelled = atoms.copy()
        labelled.calc = SinglePointCalculator(labelled, **results)
        labelled.info["label_potential"] = f"ase:{name}"
        out.append(labelled)
    return out


# ----------------------------------------------------------------------------
# what to sample
# ----------------------------------------------------------------------------
STRUCTURE_KINDS = ("pure", "random", "heterojunction", "nanodomain")
DEFECTS = ("vacancy", "interstitial", "none")


@dataclass
class CellRecipe:
    """A small cell with one defect, built by :func:`md_reference.md.structures.build_cell`.

    Attributes
    ----------
    kind : {"pure", "random", "heterojunction", "nanodomain"}
    shape : (3,) int
        Unit cells along x, y, z.
    defect : {"vacancy", "interstitial", "none"}
    params : dict
        Arguments of the configuration builder: ``species`` (pure), ``x_I``
        (random), ``thickness_I``/``thickness_Br``/``interface``/``axis``
        (heterojunction), ``domain_species``/``domain_size`` (nanodomain).
    where : str or int
        Defect placement rule (:data:`lattice.defects.PLACEMENTS`) or a site.
    added_species : {"same", "I", "Br"}
        Halide added for an interstitial.
    """

    kind: str = "random"
    shape: tuple[int, int, int] = (2, 2, 2)
    defect: str = "interstitial"
    params: dict = field(default_factory=lambda: {"x_I": 0.5})
    where: str | int = "random"
    added_species: str = "same"

    def validate(self) -> "CellRecipe":
        if self.kind not in STRUCTURE_KINDS:
            raise ValueError(f"unknown structure kind {self.kind!r}; valid kinds are {list(STRUCTURE_KINDS)}")
        if self.defect not in DEFECTS:
            raise ValueError(f"unknown defect {self.defect!r}; valid defects are {list(DEFECTS)}")
        if len(self.shape) != 3 or any(int(n) != n or n < 1 for n in self.shape):
            raise ValueError(f"shape must be three positive integers, got {self.shape!r}")
        return self

    def build(self, seed: int, lattice_constant_A: float | None = None, *, a_I_A: float = 6.30,
              a_Br_A: float = 5.90, scale: float = 1.0):
        """(atoms, config, defects, a): the cell at ``lattice_constant_A`` or at Vegard's law times ``scale``."""
        from md_reference.md.structures import (  # noqa: PLC0415
            build_atoms,
            build_cell,
            vegard_lattice_constant,
        )

        self.validate()
        _, config, defects = build_cell(self.kind, tuple(int(n) for n in self.shape), defect=self.defect,
                                        where=self.where, added_species=self.added_species,
                                        lattice_constant=6.0, seed=int(seed), **self.params)
        a = (float(lattice_constant_A) if lattice_constant_A is not None
             else vegard_lattice_constant(config.x_I, a_I_A, a_Br_A) * float(scale))
        return build_atoms(config, defects, a), config, defects, a

    def label(self) -> str:
        """Short text label, e.g. ``"random(x_I=0.5) 2x2x2 interstitial"``."""
        par = ",".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"{self.kind}({par}) {'x'.join(str(int(n)) for n in self.shape)} {self.defect}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = [int(n) for n in self.shape]
        return d


def composition_name(kind: str, params: dict) -> str:
    """``"CsPbI3"``, ``"CsPbBr3"``, ``"CsPb(I0.5Br0.5)3"`` or the structure kind for layered/domain cells."""
    if kind == "pure":
        return f"CsPb{params['species']}3"
    if kind == "random":
        x = float(params["x_I"])
        if x in (0.0, 1.0):
            return "CsPbI3" if x == 1.0 else "CsPbBr3"
        return f"CsPb(I{x:g}Br{1 - x:g})3"
    return kind


@dataclass
class FingerprintSettings:
    """Per-species-pair radial histograms (:func:`rdf_fingerprint`); lengths in A."""

    r_min_A: float = 2.0
    r_max_A: float = 6.0
    n_bins: int = 16
    species: tuple[str, ...] = SPECIES

    def validate(self) -> "FingerprintSettings":
        if not 0.0 <= self.r_min_A < self.r_max_A:
            raise ValueError(f"need 0 <= r_min_A < r_max_A, got {self.r_min_A}, {self.r_max_A}")
        if int(self.n_bins) != self.n_bins or self.n_bins < 1:
            raise ValueError(f"n_bins must be a positive integer, got {self.n_bins}")
        return self


def _default_strains() -> tuple[tuple[float, float, float], ...]:
    return ((0.02, 0.02, 0.02), (-0.02, -0.02, -0.02), (0.03, 0.0, 0.0), (-0.03, 0.0, 0.0),
            (0.0, 0.03, 0.0), (0.0, 0.0, -0.03))


@dataclass
class DatasetSettings:
    """What :func:`build_training_set` samples (see the module docstring).

    Attributes
    ----------
    cells : tuple of CellRecipe
    temperatures_K : tuple of float
        One ``"md"`` run per (cell, temperature).
    candidates_per_run : int
        Frames taken from each MD run (before selection).
    strains : tuple of (3,) float
        Diagonal strains of the ``"strain"`` runs (one run each).
    strain_temperature_K : float
    hops_per_cell : int
        ``"path"`` tasks per cell with a defect.
    images_per_hop : int
        Images per path, endpoints included (>= 2).
    path_rattle_A : float
        Gaussian rattle of the path and NEB images (A).
    neb_cells : tuple of CellRecipe
        One ``"neb"`` task per entry.
    neb_images : int
        Images per NEB band, endpoints included (>= 3).
    neb_settings : dict
        :class:`md_reference.neb.NEBSettings` fields of those NEBs.
    timestep_fs, equilibration_steps, sample_every : MD settings (steps)
    a_I_A, a_Br_A : float
        Vegard end points (A).
    lattice_jitter : float
        Relative spread of each run's lattice constant around Vegard's law.
    keep_fraction : float
        Fraction of each task's candidates kept by farthest-point sampling
        (at least one frame per task).
    max_force_eV_A : float
        Labelled frames with a larger force component are dropped.
    fingerprint : FingerprintSettings
    seed : int
    """

    cells: tuple[CellRecipe, ...] = ()
    temperatures_K: tuple[float, ...] = (300.0, 600.0)
    candidates_per_run: int = 10
    strains: tuple[tuple[float, float, float], ...] = field(default_factory=_default_strains)
    strain_temperature_K: float = 600.0
    hops_per_cell: int = 1
    images_per_hop: int = 7
    path_rattle_A: float = 0.05
    neb_cells: tuple[CellRecipe, ...] = ()
    neb_images: int = 7
    neb_settings: dict = field(default_factory=lambda: {"fmax_eV_A": 0.1, "max_steps": 150,
                                                        "endpoint_fmax_eV_A": 0.05, "endpoint_max_steps": 500,
                                                        "endpoint_refinements": 0})
    timestep_fs: float = 2.0
    equilibration_steps: int = 250
    sample_every: int = 25
    a_I_A: float = 6.30
    a_Br_A: float = 5.90
    lattice_jitter: float = 0.015
    keep_fraction: float = 0.5
    max_force_eV_A: float = 20.0
    fingerprint: FingerprintSettings = field(default_factory=FingerprintSettings)
    seed: int = 1

    def validate(self) -> "DatasetSettings":
        if not self.cells:
            raise ValueError("cells must hold at least one CellRecipe")
        for c in (*self.cells, *self.neb_cells):
            c.validate()
            if c in self.neb_cells and c.defect == "none":
                raise ValueError(f"a NEB cell needs a defect: {c.label()}")
        if int(self.neb_images) != self.neb_images or self.neb_images < 3:
            raise ValueError(f"neb_images must be an integer >= 3, got {self.neb_images}")
        if any(not t > 0 for t in self.temperatures_K) or not self.strain_temperature_K > 0:
            raise ValueError(f"temperatures must be > 0 K, got {self.temperatures_K}, {self.strain_temperature_K}")
        for name, lo in (("candidates_per_run", 1), ("hops_per_cell", 0), ("images_per_hop", 2),
                         ("equilibration_steps", 0), ("sample_every", 1)):
            v = getattr(self, name)
            if int(v) != v or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v}")
        for s in self.strains:
            if len(s) != 3 or any(abs(e) >= 0.2 for e in s):
                raise ValueError(f"each strain must be three components with |e| < 0.2, got {s!r}")
        if not 0.0 < self.keep_fraction <= 1.0:
            raise ValueError(f"keep_fraction must lie in (0, 1], got {self.keep_fraction}")
        if not 0.0 <= self.lattice_jitter < 0.1:
            raise ValueError(f"lattice_jitter must lie in [0, 0.1), got {self.lattice_jitter}")
        if self.path_rattle_A < 0 or not self.max_force_eV_A > 0:
            raise ValueError("path_rattle_A must be >= 0 and max_force_eV_A > 0")
        self.fingerprint.validate()
        return self

    def to_dict(self) -> dict:
        d = to_jsonable(asdict(self))
        d["cells"] = [c.to_dict() for c in self.cells]
        d["neb_cells"] = [c.to_dict() for c in self.neb_cells]
        return d


def _pure(species, defect, shape=(2, 2, 2)):
    return CellRecipe("pure", shape, defect, {"species": species})


def _mix(x, defect, shape=(2, 2, 2)):
    return CellRecipe("random", shape, defect, {"x_I": x})


def _dataset_presets() -> dict:
    both = ("interstitial", "vacancy")
    small_cells = (
        *(_pure(s, d) for s in ("I", "Br") for d in both),
        *(_mix(x, d) for x in (0.5, 0.25, 0.75) for d in both),
        *(CellRecipe("heterojunction", (4, 2, 2), d,
                     {"thickness_I": 2, "thickness_Br": 2, "interface": itf, "axis": "x"}, where="interface")
          for d, itf in (("interstitial", "I-rich"), ("vacancy", "Br-rich"))),
        CellRecipe("nanodomain", (3, 3, 3), "interstitial", {"domain_species": "I", "domain_size": 2},
                   where="domain"),
    )
    small_neb = (_mix(0.5, "interstitial", (3, 3, 3)), _mix(0.5, "vacancy", (3, 3, 3)),
                 _mix(0.25, "interstitial", (3, 3, 3)), _mix(0.75, "vacancy", (3, 3, 3)))
    return {
        # a few frames in seconds: tests and plumbing
        "tiny": DatasetSettings(cells=(_pure("I", "interstitial"), _mix(0.5, "vacancy")), temperatures_K=(600.0,),
                                candidates_per_run=4, strains=((0.02, 0.02, 0.02),), hops_per_cell=1,
                                images_per_hop=3, equilibration_steps=40, sample_every=10),
        # the committed model's dataset (a few minutes of ReaxFF on one core)
        "small": DatasetSettings(cells=small_cells, neb_cells=small_neb),
        # more of everything, 3x3x3 mixed cells too (for a production-size model)
        "large": DatasetSettings(cells=small_cells + (_mix(0.5, "interstitial", (3, 3, 3)),
                                                      _mix(0.5, "vacancy", (3, 3, 3))),
                                 temperatures_K=(300.0, 450.0, 600.0, 750.0), candidates_per_run=20,
                                 hops_per_cell=3, neb_cells=small_neb * 2),
    }


DATASET_PRESETS: dict[str, DatasetSettings] = _dataset_presets()


def dataset_preset(name: str) -> DatasetSettings:
    """A copy of a named :class:`DatasetSettings` (``"tiny"``, ``"small"``, ``"large"``)."""
    if name not in DATASET_PRESETS:
        raise ValueError(f"unknown dataset preset {name!r}; valid presets are {sorted(DATASET_PRESETS)}")
    return replace(DATASET_PRESETS[name])


@dataclass
class SampleTask:
    """One sampling task: an MD run (``"md"``/``"strain"``) or a hop path (``"path"``)."""

    source: str
    index: int
    cell: CellRecipe
    n_frames: int
    temperature_K: float | None = None
    strain: tuple[float, float, float] = (0.0, 0.0, 0.0)
    purpose: int = PURPOSE_TRAINING

    def rng(self, seed: int) -> np.random.Generator:
        """The task's own stream: ``SeedSequence(seed, spawn_key=(purpose, index))``."""
        return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(int(self.purpose), int(self.index))))

    def to_dict(self) -> dict:
        return {"source": self.source, "index": self.index, "cell": self.cell.label(),
                "n_frames": self.n_frames, "temperature_K": self.temperature_K, "strain": list(self.strain),
                "purpose": self.purpose}


def plan_tasks(settings: DatasetSettings, purpose: int = PURPOSE_TRAINING) -> list[SampleTask]:
    """The sampling tasks of ``settings`` in a fixed order (md, strain, path, neb)."""
    settings.validate()
    tasks: list[SampleTask] = []

    def add(**kw):
        tasks.append(SampleTask(index=len(tasks), purpose=purpose, **kw))

    for cell in settings.cells:
        for T in settings.temperatures_K:
            add(source="md", cell=cell, n_frames=settings.candidates_per_run, temperature_K=float(T))
    for i, strain in enumerate(settings.strains):
        add(source="strain", cell=settings.cells[i % len(settings.cells)], n_frames=settings.candidates_per_run,
            temperature_K=float(settings.strain_temperature_K), strain=tuple(float(e) for e in strain))
    for cell in settings.cells:
        if cell.defect == "none":
            continue
        for _ in range(settings.hops_per_cell):
            add(source="path", cell=cell, n_frames=settings.images_per_hop)
    for cell in settings.neb_cells:
        add(source="neb", cell=cell, n_frames=settings.neb_images)
    return tasks


# ----------------------------------------------------------------------------
# sampling
# ----------------------------------------------------------------------------
def _task_seeds(task: SampleTask, settings: DatasetSettings) -> dict:
    rng = task.rng(settings.seed)
    return {"structure_seed": int(rng.integers(0, 100_000)), "md_seed": int(rng.integers(1, 800_000_000)),
            "scale": float(rng.uniform(1 - settings.lattice_jitter, 1 + settings.lattice_jitter)),
            "rng": rng}


def _frame_info(task: SampleTask, seeds: dict, a: float, config) -> dict:
    return {
        "source": task.source,
        "task": int(task.index),
        "purpose": int(task.purpose),
        "cell": task.cell.label(),
        "structure": task.cell.kind,
        "composition": composition_name(task.cell.kind, task.cell.params),
        "shape": "x".join(str(int(n)) for n in task.cell.shape),
        "defect": task.cell.defect,
        "x_I": float(config.x_I),
        "lattice_constant_A": float(a),
        "strain_xx": float(task.strain[0]),
        "strain_yy": float(task.strain[1]),
        "strain_zz": float(task.strain[2]),
        "structure_seed": seeds["structure_seed"],
    }


def run_md_task(task: SampleTask, sampler: Potential, settings: DatasetSettings) -> list:
    """Unlabelled frames of one ``"md"``/``"strain"`` task (Nose-Hoover NVT)."""
    from md_reference.md.lammps_driver import MDSettings  # noqa: PLC0415

    seeds = _task_seeds(task, settings)
    atoms, config, _, a = task.cell.build(seeds["structure_seed"], a_I_A=settings.a_I_A, a_Br_A=settings.a_Br_A,
                                          scale=seeds["scale"])
    if any(task.strain):
        atoms.set_cell(np.diag(np.diag(atoms.cell.array) * (1.0 + np.asarray(task.strain))), scale_atoms=True)
    md = MDSettings(temperature_K=float(task.temperature_K), timestep_fs=settings.timestep_fs,
                    n_steps=task.n_frames * settings.sample_every, equilibration_steps=settings.equilibration_steps,
                    dump_every=settings.sample_every, seed=seeds["md_seed"])
    base = _frame_info(task, seeds, a, config)
    base.update({"temperature_K": float(task.temperature_K), "md_seed": seeds["md_seed"]})
    frames = []
    for k, step, frame in _md_snapshots(atoms, sampler, md, task.n_frames):
        frame.info = {**base, "md_step": int(step), "frame_id": f"{task.source}{task.index}:{k}"}
        frames.append(frame)
    return frames


def _mic_interpolation(initial, final, n_images: int) -> list:
    """IDPP path between two structures (endpoints included, minimum image)."""
    from ase.mep import NEB  # noqa: PLC0415

    images = [initial.copy() for _ in range(n_images - 1)] + [final.copy()]
    if n_images > 2:
        NEB(images, method="improvedtangent").interpolate(method="idpp", mic=True)
    return images


def run_path_task(task: SampleTask, settings: DatasetSettings) -> list:
    """Unlabelled, rattled IDPP images of one random hop of the task's defect (``"path"``)."""
    from md_reference.neb.band import hop_endpoints  # noqa: PLC0415

    seeds = _task_seeds(task, settings)
    rng = seeds["rng"]
    _, config, defects, a = task.cell.build(seeds["structure_seed"], a_I_A=settings.a_I_A, a_Br_A=settings.a_Br_A,
                                            scale=seeds["scale"])
    site_a = int(defects.sites[0])
    slot = int(rng.integers(0, 8))
    mover_index = int(rng.integers(0, 2))
    initial, final, info = hop_endpoints(config, task.cell.defect, site_a, slot, a, mover_index=mover_index)
    images = _mic_interpolation(initial, final, task.n_frames)
    base = _frame_info(task, seeds, a, config)
    base.update({"hop_site_a": int(info["site_a"]), "hop_site_b": int(info["site_b"]), "hop_slot": slot,
                 "hop_mover": ("I", "Br")[int(info["mover"])], "hop_env_class": int(info["env_class"])})
    out = []
    for k, img in enumerate(images):
        frame = initial.copy()
        pos = img.get_positions()
        if settings.path_rattle_A > 0:
            pos = pos + rng.normal(0.0, settings.path_rattle_A, pos.shape)
        frame.set_positions(pos)
        frame.wrap()
        frame.info = {**base, "path_fraction": k / (len(images) - 1), "frame_id": f"path{task.index}:{k}"}
        out.append(frame)
    return out


def run_neb_task(task: SampleTask, sampler: Potential, settings: DatasetSettings) -> list:
    """Unlabelled, rattled images of a CI-NEB band of one random hop, run with the sampler (``"neb"``)."""
    from md_reference.neb.band import NEBSettings, run_neb  # noqa: PLC0415

    seeds = _task_seeds(task, settings)
    rng = seeds["rng"]
    _, config, defects, a = task.cell.build(seeds["structure_seed"], a_I_A=settings.a_I_A, a_Br_A=settings.a_Br_A,
                                            scale=seeds["scale"])
    site_a = int(defects.sites[0])
    slot = int(rng.integers(0, 8))
    mover_index = int(rng.integers(0, 2))
    neb_settings = NEBSettings(**{**settings.neb_settings, "n_images": task.n_frames - 2})
    res, images = run_neb(config, task.cell.defect, site_a, slot, sampler, a, neb_settings,
                          mover_index=mover_index, added_species=task.cell.added_species, return_images=True)
    base = _frame_info(task, seeds, a, config)
    base.update({"hop_site_a": int(res.site_a), "hop_site_b": int(res.site_b), "hop_slot": slot,
                 "hop_mover": res.mover, "hop_env_class": int(res.env_class),
                 "neb_barrier_eV": float(res.barrier_forward_eV), "neb_converged": int(res.converged)})
    out = []
    for k, img in enumerate(images):
        frame = img.copy()
        frame.set_constraint()
        frame.calc = None
        if settings.path_rattle_A > 0:
            frame.set_positions(frame.positions + rng.normal(0.0, settings.path_rattle_A, frame.positions.shape))
        frame.wrap()
        frame.info = {**base, "path_fraction": k / (len(images) - 1), "frame_id": f"neb{task.index}:{k}"}
        out.append(frame)
    return out


def generate_candidates(tasks: list[SampleTask], sampler: Potential | str | dict,
                        settings: DatasetSettings) -> list:
    """Run every task; candidate frames (unlabelled ``ase.Atoms``) in task order."""
    pot = load_potential(sampler)
    frames = []
    for task in _progress(tasks, "sampling"):
        if task.source == "path":
            new = run_path_task(task, settings)
        elif task.source == "neb":
            new = run_neb_task(task, pot, settings)
        elif task.source in ("md", "strain"):
            new = run_md_task(task, pot, settings)
        else:
            raise ValueError(f"unknown task source {task.source!r}; valid sources are {list(SOURCES)}")
        log.debug("task %d (%s %s): %d frames", task.index, task.source, task.cell.label(), len(new))
        frames.extend(new)
    return frames


def _progress(items, desc: str):
    import sys  # noqa: PLC0415

    try:
        from tqdm import tqdm  # noqa: PLC0415
    except ImportError:  # pragma: no cover
        return items
    return tqdm(items, desc=desc, disable=not sys.stderr.isatty(), leave=False)


# ----------------------------------------------------------------------------
# selection
# ----------------------------------------------------------------------------
def rdf_fingerprint(atoms, settings: FingerprintSettings | None = None) -> np.ndarray:
    """Per-species-pair radial histogram of one frame: a cheap structural fingerprint.

    For each unordered species pair (a, b) of ``settings.species`` (10 pairs
    for Cs, Pb, I, Br) the minimum-image distances ``r_min_A <= r < r_max_A``
    between atoms of those species are binned into ``n_bins`` equal bins; each
    count is divided by the number of atoms of the frame (neighbours per atom
    per bin, so cells of different size compare directly).

    Returns
    -------
    (n_pairs * n_bins,) float64
    """
    from ase.neighborlist import neighbor_list  # noqa: PLC0415

    fs = (settings or FingerprintSettings()).validate()
    species = list(fs.species)
    n_sp = len(species)
    sym = np.asarray(atoms.get_chemical_symbols())
    code = np.full(len(atoms), -1, dtype=np.int64)
    for k, s in enumerate(species):
        code[sym == s] = k
    if np.any(code < 0):
        raise ValueError(f"frame holds species {sorted(set(sym) - set(species))} outside {species}")
    i, j, d = neighbor_list("ijd", atoms, fs.r_max_A)
    keep = (d >= fs.r_min_A) & (i < j)  # each pair once
    a, b = np.sort(np.stack([code[i[keep]], code[j[keep]]]), axis=0)
    pair = a * n_sp - a * (a - 1) // 2 + (b - a)  # index of (a <= b) in the upper triangle
    n_pairs = n_sp * (n_sp + 1) // 2
    width = (fs.r_max_A - fs.r_min_A) / fs.n_bins
    bins = np.minimum(((d[keep] - fs.r_min_A) / width).astype(np.int64), fs.n_bins - 1)
    hist = np.bincount(pair * fs.n_bins + bins, minlength=n_pairs * fs.n_bins).astype(np.float64)
    return hist / len(atoms)


def farthest_point_sampling(features: np.ndarray, n_select: int, start: int | None = None):
    """Greedy farthest-point (max-min) selection of ``n_select`` rows of ``features``.

    The first pick is ``start`` or, by default, the row farthest from the mean
    (Euclidean); each next pick is the row whose distance to the nearest
    already picked row is largest (the lowest index wins ties). Deterministic.

    Returns
    -------
    (indices, radii) : (n_select,) int64 rows in pick order, and (n_select,)
        float64 distance of each pick to the set before it (inf for the first);
        ``radii`` is non-increasing after the first entry.
    """
    X = np.asarray(features, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"features must be a 2-D array (n_frames, n_features), got shape {X.shape}")
    n = X.shape[0]
    if int(n_select) != n_select or not 1 <= n_select <= n:
        raise ValueError(f"n_select must be an integer in [1, {n}], got {n_select}")
    if start is None:
        start = int(np.argmax(np.linalg.norm(X - X.mean(axis=0), axis=1)))
    elif not 0 <= start < n:
        raise ValueError(f"start must lie in [0, {n}), got {start}")
    idx = [int(start)]
    radii = [math.inf]
    d_min = np.linalg.norm(X - X[start], axis=1)
    for _ in range(int(n_select) - 1):
        k = int(np.argmax(d_min))
        idx.append(k)
        radii.append(float(d_min[k]))
        d_min = np.minimum(d_min, np.linalg.norm(X - X[k], axis=1))
    return np.asarray(idx, dtype=np.int64), np.asarray(radii)


def select_frames(frames, keep_fraction: float, fingerprint: FingerprintSettings | None = None,
                  group_key: str = "task"):
    """Keep ``keep_fraction`` of each group of frames by farthest-point sampling on fingerprints.

    Groups are the values of ``frame.info[group_key]`` (by default the sampling
    task, so every MD run and path keeps its share: at least one frame).

    Returns
    -------
    (selected, record) : the kept frames in their original order, and a JSON-ready
        record of the choice (method, fingerprint, and per group: candidates,
        kept candidate indices in pick order, pick radii, covering radius =
        largest distance of a dropped candidate to the kept set).
    """
    if not 0.0 < keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must lie in (0, 1], got {keep_fraction}")
    fs = (fingerprint or FingerprintSettings()).validate()
    feats = np.stack([rdf_fingerprint(a, fs) for a in frames]) if frames else np.zeros((0, 1))
    groups: dict = {}
    for n, a in enumerate(frames):
        groups.setdefault(a.info.get(group_key, 0), []).append(n)
    keep: list[int] = []
    per_group = []
    for g, members in groups.items():
        members = np.asarray(members)
        n_keep = max(1, int(round(keep_fraction * len(members))))
        picks, radii = farthest_point_sampling(feats[members], n_keep)
        chosen = members[picks]
        d = np.min(np.linalg.norm(feats[members][:, None, :] - feats[chosen][None, :, :], axis=2), axis=1)
        keep.extend(int(c) for c in chosen)
        per_group.append({"group": g, "n_candidates": int(len(members)), "kept": [int(c) for c in chosen],
                          "pick_radius": [None if not np.isfinite(r) else round(float(r), 6) for r in radii],
                          "covering_radius": round(float(d.max()), 6)})
    keep_sorted = sorted(keep)
    record = {
        "method": "farthest-point sampling per group on per-species-pair radial histograms",
        "group_key": group_key,
        "keep_fraction": float(keep_fraction),
        "fingerprint": to_jsonable(asdict(fs)),
        "distance": "Euclidean between fingerprints (neighbours per atom per bin)",
        "first_pick": "the candidate farthest from the group's mean fingerprint",
        "n_candidates": len(frames),
        "n_selected": len(keep_sorted),
        "selected_candidates": keep_sorted,
        "groups": per_group,
    }
    return [frames[k] for k in keep_sorted], record


# ----------------------------------------------------------------------------
# the whole pipeline
# ----------------------------------------------------------------------------
def build_training_set(reference, path: str | Path, settings: DatasetSettings | str = "small", *,
                       sampler: Potential | str | dict | None = None, purpose: int = PURPOSE_TRAINING,
                       stress: bool = True) -> dict:
    """Plan, sample, select, label and write a dataset (extxyz + JSON sidecar).

    Parameters
    ----------
    reference : Potential, spec or ASE calculator
        Gives the labels.
    path : path
        Output extxyz; the sidecar is ``PATH.json``.
    settings : DatasetSettings or preset name
    sampler : Potential or spec, optional
        Runs the MD (LAMMPS); the reference by default (then it must be a package potential).
    purpose : int
        Seed-stream purpose (0 training, 1 validation).

    Returns
    -------
    dict
        The sidecar.
    """
    import time  # noqa: PLC0415

    settings = (dataset_preset(settings) if isinstance(settings, str) else settings).validate()
    if sampler is None:
        if not isinstance(reference, (Potential, str, dict)):
            raise ValueError("an ASE-calculator reference needs a sampler potential (LAMMPS) for the MD")
        sampler = reference
    samp = load_potential(sampler)
    ref = load_potential(reference) if isinstance(reference, (Potential, str, dict)) else reference
    t0 = time.perf_counter()
    tasks = plan_tasks(settings, purpose)
    candidates = generate_candidates(tasks, samp, settings)
    t_sample = time.perf_counter() - t0
    selected, selection = select_frames(candidates, settings.keep_fraction, settings.fingerprint)
    for a, k in zip(selected, selection["selected_candidates"]):
        a.info["candidate_index"] = int(k)
    t1 = time.perf_counter()
    labelled = label_frames(selected, ref, stress=stress)
    t_label = time.perf_counter() - t1
    fmax = np.array([np.abs(a.get_forces()).max() for a in labelled])
    dropped = [a.info.get("frame_id") for a, f in zip(labelled, fmax) if f > settings.max_force_eV_A]
    labelled = [a for a, f in zip(labelled, fmax) if f <= settings.max_force_eV_A]
    if not labelled:
        raise RuntimeError(f"every frame exceeds max_force_eV_A = {settings.max_force_eV_A}")
    counts = {s: sum(a.info["source"] == s for a in labelled) for s in SOURCES}
    prov = {
        "reference": ref.describe() if isinstance(ref, Potential) else {"kind": f"ase:{type(ref).__name__}"},
        "sampler": samp.describe(),
        "settings": settings.to_dict(),
        "purpose": {PURPOSE_TRAINING: "training", PURPOSE_VALIDATION: "validation"}.get(purpose, str(purpose)),
        "seed_streams": "SeedSequence(seed, spawn_key=(purpose, task index))",
        "tasks": [t.to_dict() for t in tasks],
        "md_seeds": sorted({int(a.info["md_seed"]) for a in candidates if "md_seed" in a.info}),
        "selection": selection,
        "dropped_max_force": {"limit_eV_A": settings.max_force_eV_A, "frame_ids": dropped},
        "frames_by_source": counts,
        "compositions": sorted({a.info["composition"] for a in labelled}),
        "wall_time_s": {"sampling": round(t_sample, 1), "labelling": round(t_label, 1)},
        "versions": versions(),
    }
    log.info("dataset: %d candidates -> %d selected -> %d labelled frames (%s); %d dropped (max force)",
             len(candidates), len(selected), len(labelled), counts, len(dropped))
    return write_dataset(labelled, path, prov)


def read_dataset(path: str | Path) -> tuple[list, dict]:
    """(frames, sidecar) of a dataset written by :func:`write_dataset`; checks the SHA-256."""
    from ase.io import read  # noqa: PLC0415

    path = Path(path)
    side = Path(str(path) + ".json")
    meta = json.loads(side.read_text()) if side.is_file() else {}
    if meta and meta.get("sha256") != file_sha256(path):
        raise ValueError(f"{path} does not match the SHA-256 of its sidecar {side.name}")
    return read(path, index=":", format="extxyz"), meta
