"""A LAMMPS instance holding one ASE structure and one :class:`Potential`.

:class:`LammpsSession` creates the box and atoms from an ASE ``Atoms`` object
(orthogonal cells, atom IDs in ASE order), defines the potential, and offers
single-point energies and forces, minimisation and molecular dynamics
(NVT with a Nose-Hoover or Langevin thermostat, NPT with a Nose-Hoover
barostat). Everything it returns is in eV, A, fs and K whatever unit system
the potential needs.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import numpy as np

from md_reference.md.lammps_lib import new_lammps
from md_reference.md.potentials import (
    MASSES_AMU,
    UNIT_PRESSURE_TO_BAR,
    UNIT_TIME_TO_FS,
    Potential,
    load_potential,
)

log = logging.getLogger(__name__)

THERMOSTATS = ("nose-hoover", "langevin")


@dataclass
class MDSettings:
    """Molecular-dynamics parameters.

    Attributes
    ----------
    temperature_K : float
    timestep_fs : float
    n_steps : int
        Production steps (recorded).
    equilibration_steps : int
        Steps run before recording starts.
    dump_every : int
        Steps between recorded frames.
    thermostat : {"nose-hoover", "langevin"}
    thermostat_damping_fs : float
    ensemble : {"nvt", "npt"}
    pressure_bar : float
        NPT target pressure (isotropic).
    barostat_damping_fs : float
    seed : int
        Seeds the initial velocities (and the Langevin noise).
    """

    temperature_K: float = 600.0
    timestep_fs: float = 2.0
    n_steps: int = 5000
    equilibration_steps: int = 1000
    dump_every: int = 50
    thermostat: str = "nose-hoover"
    thermostat_damping_fs: float = 100.0
    ensemble: str = "nvt"
    pressure_bar: float = 0.0
    barostat_damping_fs: float = 1000.0
    seed: int = 1

    def validate(self) -> "MDSettings":
        if not (math.isfinite(self.temperature_K) and self.temperature_K > 0):
            raise ValueError(f"temperature_K must be finite and > 0, got {self.temperature_K}")
        if not 0 < self.timestep_fs <= 10:
            raise ValueError(f"timestep_fs must lie in (0, 10], got {self.timestep_fs}")
        for name in ("n_steps", "equilibration_steps", "dump_every"):
            v = getattr(self, name)
            if int(v) != v or v < (1 if name != "equilibration_steps" else 0):
                raise ValueError(f"{name} must be a positive integer, got {v}")
        if self.thermostat not in THERMOSTATS:
            raise ValueError(f"unknown thermostat {self.thermostat}; valid thermostats are {list(THERMOSTATS)}")
        if self.ensemble not in ("nvt", "npt"):
            raise ValueError(f"unknown ensemble {self.ensemble}; valid ensembles are ['npt', 'nvt']")
        if self.ensemble == "npt" and self.thermostat != "nose-hoover":
            raise ValueError("NPT runs use the Nose-Hoover thermostat and barostat")
        if not 0 < int(self.seed) < 900_000_000:
            raise ValueError(f"seed must lie in [1, 9e8) for LAMMPS, got {self.seed}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


class LammpsSession:
    """One serial LAMMPS instance with a structure and a potential.

    Parameters
    ----------
    atoms : ase.Atoms
        Orthogonal periodic cell. Atom order is kept: IDs are ``1..n`` in ASE order.
    potential : Potential or spec
    log_file : str, optional
        LAMMPS log file.
    """

    def __init__(self, atoms, potential: Potential | str | dict, log_file: str | None = None):
        self.potential = load_potential(potential)
        cell = np.asarray(atoms.cell[:])
        if np.any(np.abs(cell - np.diag(np.diag(cell))) > 1e-8):
            raise ValueError("LammpsSession supports orthogonal cells only")
        symbols = atoms.get_chemical_symbols()
        self.type_elements = [e for e in ("Cs", "Pb", "I", "Br") if e in symbols]
        self.type_elements += sorted(set(symbols) - set(self.type_elements))
        self.potential.check_elements(self.type_elements)
        self.n_atoms = len(atoms)
        self.symbols = symbols
        self.units = self.potential.units
        self.lmp = new_lammps(log_file=log_file)
        L = [repr(float(v)) for v in np.diag(cell)]
        cmds = [
            f"units {self.units}",
            f"atom_style {self.potential.atom_style}",
            "atom_modify map array sort 0 0.0",
            "boundary p p p",
            f"region box block 0 {L[0]} 0 {L[1]} 0 {L[2]} units box",
            f"create_box {len(self.type_elements)} box",
        ]
        self.lmp.commands_list(cmds)
        types = np.array([self.type_elements.index(s) + 1 for s in symbols], dtype=np.int32)
        pos = atoms.get_positions(wrap=True)
        n = self.lmp.create_atoms(self.n_atoms, list(range(1, self.n_atoms + 1)), types.tolist(),
                                  pos.ravel().tolist())
        if n != self.n_atoms:
            raise RuntimeError(f"LAMMPS created {n} of {self.n_atoms} atoms")
        for t, e in enumerate(self.type_elements, start=1):
            self.lmp.command(f"mass {t} {MASSES_AMU.get(e, 1.0)}")
        if self.potential.atom_style == "charge":
            self.lmp.command("set group all charge 0.0")
        self.lmp.commands_list(self.potential.commands(self.type_elements))
        self.lmp.commands_list([
            "neighbor 2.0 bin",
            "neigh_modify every 1 delay 0 check yes",
            "thermo_style custom step temp pe ke etotal press vol",
            "thermo 0",
        ])
        self.potential.attach(self)
        self._fixes: list[str] = []
        self._step_fs = None

    # -- basic access --------------------------------------------------------------
    def close(self) -> None:
        if self.lmp is not None:
            self.potential.detach(self)
            self.lmp.close()
            self.lmp = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def cell_lengths(self) -> np.ndarray:
        boxlo, boxhi, *_ = self.lmp.extract_box()
        return np.asarray(boxhi) - np.asarray(boxlo)

    def cell_matrix(self) -> np.ndarray:
        return np.diag(self.cell_lengths())

    def _by_id(self, name: str) -> np.ndarray:
        nlocal = self.lmp.extract_global("nlocal")
        ids = self.lmp.numpy.extract_atom("id")[:nlocal]
        arr = np.array(self.lmp.numpy.extract_atom(name)[:nlocal])
        out = np.empty_like(arr)
        out[ids - 1] = arr
        return out

    def positions(self, unwrapped: bool = True) -> np.ndarray:
        """(n, 3) positions in A in ASE order; unwrapped with the image flags."""
        boxlo, boxhi, *_ = self.lmp.extract_box()
        x = self._by_id("x")
        if not unwrapped:
            return x
        img = self._by_id("image").astype(np.int64)
        # LAMMPS packs image flags in 10-bit fields (IMGBITS=10, IMGMAX=512).
        ix = (img & 1023) - 512
        iy = ((img >> 10) & 1023) - 512
        iz = (img >> 20) - 512
        L = np.asarray(boxhi) - np.asarray(boxlo)
        return x + np.stack([ix, iy, iz], axis=1) * L

    def charges(self) -> np.ndarray | None:
        if self.potential.atom_style != "charge":
            return None
        return self._by_id("q")

    def energy_eV(self) -> float:
        return float(self.lmp.get_thermo("pe")) * self.potential.energy_to_eV

    def temperature_K(self) -> float:
        return float(self.lmp.get_thermo("temp"))

    def pressure_bar(self) -> float:
        return float(self.lmp.get_thermo("press")) * UNIT_PRESSURE_TO_BAR[self.units]

    def energy_forces(self) -> tuple[float, np.ndarray]:
        """Potential energy (eV) and forces (eV/A, ASE order) at the current positions."""
        self.lmp.command("run 0 post no")
        e = self.energy_eV()
        f = self._by_id("f") * self.potential.energy_to_eV
        return e, f

    def set_positions(self, positions_A: np.ndarray) -> None:
        """Move atoms (ASE order) to new positions."""
        pos = np.asarray(positions_A, dtype=np.float64)
        if pos.shape != (self.n_atoms, 3):
            raise ValueError(f"positions must have shape ({self.n_atoms}, 3), got {pos.shape}")
        L = self.cell_lengths()
        boxlo = np.asarray(self.lmp.extract_box()[0])
        wrapped = boxlo + np.mod(pos - boxlo, L)
        nlocal = self.lmp.extract_global("nlocal")
        ids = self.lmp.numpy.extract_atom("id")[:nlocal]
        x = self.lmp.numpy.extract_atom("x")
        x[:nlocal] = wrapped[ids - 1]
        img = self.lmp.numpy.extract_atom("image")
        img[:nlocal] = (512 << 20) | (512 << 10) | 512

    # -- dynamics ------------------------------------------------------------------
    def minimize(self, etol: float = 0.0, ftol_eV_A: float = 1e-3, max_iter: int = 1000) -> float:
        """Relax positions at fixed cell (conjugate gradient); returns the energy in eV."""
        ftol = ftol_eV_A / self.potential.energy_to_eV
        self.lmp.command(f"minimize {etol} {ftol} {max_iter} {10 * max_iter}")
        return self.energy_eV()

    def setup_md(self, settings: MDSettings) -> None:
        """Timestep, initial velocities and integrator fixes for ``settings``."""
        settings.validate()
        for fx in self._fixes:
            self.lmp.command(f"unfix {fx}")
        self._fixes = []
        fs_per_unit = UNIT_TIME_TO_FS[self.units]
        dt = float(settings.timestep_fs) / fs_per_unit
        damp_t = float(settings.thermostat_damping_fs) / fs_per_unit
        T = float(settings.temperature_K)
        self.lmp.command(f"timestep {dt}")
        self.lmp.command(f"velocity all create {T} {int(settings.seed)} mom yes rot no dist gaussian")
        if settings.ensemble == "npt":
            p = float(settings.pressure_bar) / UNIT_PRESSURE_TO_BAR[self.units]
            damp_p = float(settings.barostat_damping_fs) / fs_per_unit
            self.lmp.command(f"fix integ all npt temp {T} {T} {damp_t} iso {p} {p} {damp_p}")
            self._fixes = ["integ"]
        elif settings.thermostat == "nose-hoover":
            self.lmp.command(f"fix integ all nvt temp {T} {T} {damp_t}")
            self._fixes = ["integ"]
        else:
            self.lmp.command("fix integ all nve")
            self.lmp.command(
                f"fix thermo all langevin {T} {T} {damp_t} {int(settings.seed) + 1} zero yes"
            )
            self._fixes = ["integ", "thermo"]
        self.lmp.command("fix com all momentum 100 linear 1 1 1")
        self._fixes.append("com")
        self._step_fs = settings.timestep_fs
        self._first_run = True

    def run(self, n_steps: int) -> None:
        """Advance ``n_steps`` MD steps (after :meth:`setup_md`)."""
        if self._step_fs is None:
            raise RuntimeError("call setup_md before run")
        if self._first_run:
            self.lmp.command(f"run {int(n_steps)} post no")
            self._first_run = False
        else:
            self.lmp.command(f"run {int(n_steps)} pre no post no")


def measure_lattice_constant(atoms, potential, temperature_K: float, *, n_steps: int = 5000,
                             equilibration_steps: int = 2000, sample_every: int = 20,
                             timestep_fs: float = 2.0, seed: int = 1, pressure_bar: float = 0.0) -> dict:
    """Average cubic lattice constant from an isotropic NPT run of the potential.

    Returns
    -------
    dict with ``lattice_constant_A`` (mean box length / cells), its standard
    error (from 10 blocks), the settings and the number of samples.
    """
    shape = np.asarray(atoms.info.get("lattice_shape"), dtype=np.float64)
    if shape.size != 3:
        raise ValueError("atoms.info['lattice_shape'] is needed to turn box lengths into a lattice constant")
    settings = MDSettings(temperature_K=temperature_K, timestep_fs=timestep_fs, n_steps=n_steps,
                          equilibration_steps=equilibration_steps, dump_every=sample_every,
                          ensemble="npt", pressure_bar=pressure_bar, seed=seed).validate()
    with LammpsSession(atoms, potential) as sess:
        sess.setup_md(settings)
        if equilibration_steps:
            sess.run(equilibration_steps)
        samples = []
        for _ in range(n_steps // sample_every):
            sess.run(sample_every)
            samples.append(np.mean(sess.cell_lengths() / shape))
    a = np.asarray(samples)
    blocks = np.array_split(a, 10)
    bm = np.array([b.mean() for b in blocks if b.size])
    err = float(bm.std(ddof=1) / math.sqrt(bm.size)) if bm.size > 1 else math.nan
    return {
        "lattice_constant_A": float(a.mean()),
        "lattice_constant_err_A": err,
        "n_samples": int(a.size),
        "settings": settings.to_dict(),
    }
