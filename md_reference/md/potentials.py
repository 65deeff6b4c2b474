"""Interatomic potentials that drive LAMMPS.

A :class:`Potential` knows the LAMMPS unit system and atom style it needs, the
commands that define it for a given element order, and how to describe
itself for provenance (kind, files and their SHA-256). Three families:

* :class:`ReaxFF` -- ``pair_style reaxff`` + ``fix qeq/reaxff`` from a force-field
  file (the 2024 I/Br/Pb/Cs set of Pols et al., J. Phys. Chem. C 128, 4111
  (2024), doi:10.1021/acs.jpcc.4c00563, is the reference; users obtain it from
  the public repository ``mikepols/reaxff-force-fields``, file
  ``ffields/2024_IBrPbCs/IBrPbCs.ff``; this package never ships it).
* :class:`LammpsPairPotential` -- any pair style LAMMPS has built in, given as
  ``pair_style`` / ``pair_coeff`` templates: adding one is a few lines.
* :class:`ExternalPotential` -- energies and forces computed in Python by an ASE
  calculator and handed to LAMMPS through ``fix external`` (``pf/callback``).
  The Allegro/NequIP models of :mod:`md_reference.ml.allegro` use it.

Potentials are built from a spec with :func:`load_potential`:
``"reaxff:PATH"``, ``"allegro:PATH"`` or a dict ``{"kind": ..., ...}``.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable

import numpy as np

from common.provenance import file_sha256  # noqa: F401 - re-exported (used across md_reference)

log = logging.getLogger(__name__)

# 1 kcal/mol in eV (CODATA 2018 via 4.184 J/cal).
KCAL_MOL_TO_EV = 0.0433641043
# LAMMPS unit systems: energy -> eV, time unit -> fs.
UNIT_ENERGY_TO_EV = {"metal": 1.0, "real": KCAL_MOL_TO_EV}
UNIT_TIME_TO_FS = {"metal": 1000.0, "real": 1.0}
# LAMMPS pressure units -> bar.
UNIT_PRESSURE_TO_BAR = {"metal": 1.0, "real": 1.01325}  # real: atm

ELEMENTS = ("Cs", "Pb", "I", "Br")
MASSES_AMU = {"Cs": 132.90545196, "Pb": 207.2, "I": 126.90447, "Br": 79.904}


class PotentialError(ValueError):
    """A potential cannot be built from what was given."""


class Potential(ABC):
    """A LAMMPS-driven interatomic potential.

    Attributes
    ----------
    kind : str
        Registry name (see :data:`POTENTIALS`).
    units : str
        LAMMPS unit system the commands assume ("real" or "metal").
    atom_style : str
        LAMMPS atom style ("atomic" or "charge").
    elements : tuple of str
        Elements the potential can treat.
    """

    kind: str = ""
    units: str = "metal"
    atom_style: str = "atomic"
    elements: tuple[str, ...] = ELEMENTS

    @abstractmethod
    def commands(self, type_elements: list[str]) -> list[str]:
        """LAMMPS commands defining the interaction for atom types ``type_elements`` (type 1 first)."""

    def attach(self, session) -> None:  # noqa: B027 - optional hook
        """Hook called after :meth:`commands` (e.g. to register a callback)."""

    def detach(self, session) -> None:  # noqa: B027 - optional hook
        """Hook called when the session closes."""

    @abstractmethod
    def describe(self) -> dict:
        """JSON-ready provenance: kind, files with SHA-256, parameters."""

    @property
    def energy_to_eV(self) -> float:
        return UNIT_ENERGY_TO_EV[self.units]

    def check_elements(self, elements) -> None:
        unknown = sorted(set(elements) - set(self.elements))
        if unknown:
            raise PotentialError(
                f"potential {self.kind!r} does not treat element(s) {unknown}; it knows {list(self.elements)}"
            )


class ReaxFF(Potential):
    """ReaxFF with charge equilibration (``pair_style reaxff`` + ``fix qeq/reaxff``).

    Parameters
    ----------
    path : str or Path
        Force-field parameter file (e.g. the 2024 ``IBrPbCs.ff``).
    qeq_tolerance : float
        Convergence tolerance of the charge equilibration.
    qeq_cutoff_A : float
        Cutoff of the QEq interaction (angstrom).
    safezone, mincap : float, int
        Memory head-room of ``pair_style reaxff`` (LAMMPS defaults 1.2 and 50).
        Small cells (2x2x2, box shorter than twice the 10 A cutoff) hold many
        ghost images, and LAMMPS' default estimate stops a hot run with "Too
        many ghost atoms"; 2.0 / 100 only allocates more (no effect on results).

    Notes
    -----
    QEq keeps every cell neutral: defects are *neutral* vacancies and
    interstitials, not the charged V_X+ / X_i- of the paper.
    """

    kind = "reaxff"
    units = "real"
    atom_style = "charge"

    def __init__(self, path: str | Path, qeq_tolerance: float = 1e-6, qeq_cutoff_A: float = 10.0,
                 safezone: float = 2.0, mincap: int = 100):
        self.path = Path(path).expanduser().resolve()
        if not self.path.is_file():
            raise PotentialError(
                f"ReaxFF parameter file {str(path)!r} not found; the reference I/Br/Pb/Cs set is "
                "ffields/2024_IBrPbCs/IBrPbCs.ff of the public repository mikepols/reaxff-force-fields "
                "(Pols et al., J. Phys. Chem. C 128, 4111 (2024))"
            )
        self.sha256 = file_sha256(self.path)
        self.elements = self._elements_in_file()
        self.qeq_tolerance = float(qeq_tolerance)
        self.qeq_cutoff_A = float(qeq_cutoff_A)
        self.safezone = float(safezone)
        self.mincap = int(mincap)

    def _elements_in_file(self) -> tuple[str, ...]:
        """Element symbols of the atom block of a ReaxFF file."""
        lines = self.path.read_text(errors="replace").splitlines()
        try:
            n_gen = int(lines[1].split()[0])
            start = 2 + n_gen
            n_atoms = int(lines[start].split()[0])
        except (IndexError, ValueError):
            raise PotentialError(f"{self.path} is not a ReaxFF parameter file (cannot read its header)") from None
        out = []
        row = start + 4
        for _ in range(n_atoms):
            out.append(lines[row].split()[0])
            row += 4
        return tuple(out)

    def commands(self, type_elements: list[str]) -> list[str]:
        self.check_elements(type_elements)
        return [
            f"pair_style reaxff NULL checkqeq yes safezone {self.safezone:g} mincap {self.mincap}",
            f"pair_coeff * * {self.path} {' '.join(type_elements)}",
            f"fix qeq all qeq/reaxff 1 0.0 {self.qeq_cutoff_A} {self.qeq_tolerance} reaxff",
        ]

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "path": str(self.path),
            "sha256": self.sha256,
            "units": self.units,
            "elements": list(self.elements),
            "qeq_tolerance": self.qeq_tolerance,
            "qeq_cutoff_A": self.qeq_cutoff_A,
            "defect_charge_state": "neutral (QEq keeps the cell neutral)",
        }


class LammpsPairPotential(Potential):
    """Any built-in LAMMPS pair style.

    Parameters
    ----------
    pair_style : str
        E.g. ``"eam/alloy"`` or ``"lj/cut 8.0"``.
    pair_coeff : list of str
        ``pair_coeff`` argument lines; ``{elements}`` is replaced by the element
        list in type order, ``{file}`` by ``files[0]``.
    units, atom_style : str
    files : list of paths hashed for provenance.
    elements : tuple of str
    """

    kind = "lammps"

    def __init__(self, pair_style: str, pair_coeff: list[str], units: str = "metal",
                 atom_style: str = "atomic", files: list[str | Path] = (), elements=ELEMENTS,
                 extra_commands: list[str] = ()):
        if units not in UNIT_ENERGY_TO_EV:
            raise PotentialError(f"unknown LAMMPS units {units!r}; valid units are {sorted(UNIT_ENERGY_TO_EV)}")
        self.pair_style = pair_style
        self.pair_coeff = list(pair_coeff)
        self.units = units
        self.atom_style = atom_style
        self.files = [Path(f).resolve() for f in files]
        for f in self.files:
            if not f.is_file():
                raise PotentialError(f"potential file {str(f)!r} not found")
        self.elements = tuple(elements)
        self.extra_commands = list(extra_commands)

    def commands(self, type_elements: list[str]) -> list[str]:
        self.check_elements(type_elements)
        fmt = {"elements": " ".join(type_elements), "file": str(self.files[0]) if self.files else ""}
        return [f"pair_style {self.pair_style}"] + [
            "pair_coeff " + c.format(**fmt) for c in self.pair_coeff
        ] + self.extra_commands

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "pair_style": self.pair_style,
            "pair_coeff": self.pair_coeff,
            "units": self.units,
            "files": [{"path": str(f), "sha256": file_sha256(f)} for f in self.files],
        }


class ExternalPotential(Potential):
    """Energies and forces from a Python callable, fed to LAMMPS by ``fix external``.

    LAMMPS keeps integrating (thermostats, barostats, NEB) and calls back every
    step; the callable gets the positions of all atoms and returns the energy
    (eV), forces (eV/A) and optionally the virial (eV, Voigt order
    xx, yy, zz, xy, xz, yz). Runs on one MPI rank per LAMMPS instance (the
    callback sees only local atoms on more ranks).

    Parameters
    ----------
    compute : callable ``(positions_A (n,3), cell_A (3,3), numbers (n,)) -> (energy_eV, forces (n,3), virial (6,) or None)``
    cutoff_A : float
        Cutoff handed to LAMMPS' neighbour machinery (``pair_style zero``); only
        its skin matters, forces are entirely external.
    description : dict
        Provenance of the model.
    """

    kind = "external"
    units = "metal"
    atom_style = "atomic"

    def __init__(self, compute: Callable, cutoff_A: float = 6.0, description: dict | None = None,
                 elements=ELEMENTS):
        self.compute = compute
        self.cutoff_A = float(cutoff_A)
        self.description = dict(description or {})
        self.elements = tuple(elements)
        self.n_calls = 0

    def commands(self, type_elements: list[str]) -> list[str]:
        self.check_elements(type_elements)
        return [
            f"pair_style zero {self.cutoff_A}",
            "pair_coeff * *",
            "fix ext all external pf/callback 1 1",
            "fix_modify ext energy yes virial yes",
        ]

    def attach(self, session) -> None:
        from ase.data import atomic_numbers  # noqa: PLC0415

        lmp = session.lmp
        numbers_by_type = np.array([0] + [atomic_numbers[e] for e in session.type_elements])

        def callback(caller, step, nlocal, tag, x, f):
            types = session.lmp.numpy.extract_atom("type")[:nlocal]
            order = np.argsort(tag[:nlocal])
            pos = np.asarray(x[:nlocal])[order]
            energy, forces, virial = self.compute(pos, session.cell_matrix(), numbers_by_type[types[order]])
            out = np.empty((nlocal, 3))
            out[order] = forces
            f[:nlocal] = out
            self.n_calls += 1
            lmp.fix_external_set_energy_global("ext", float(energy))
            if virial is not None:
                lmp.fix_external_set_virial_global("ext", [float(v) for v in virial])

        lmp.set_fix_external_callback("ext", callback)
        self._callback = callback  # keep a reference alive

    def describe(self) -> dict:
        return {"kind": self.kind, "units": self.units, "cutoff_A": self.cutoff_A, **self.description}


def ase_calculator_compute(calc) -> Callable:
    """Wrap an ASE calculator as the ``compute`` of :class:`ExternalPotential`.

    The virial handed to LAMMPS is ``-stress * volume`` when the calculator
    gives a stress, else None.
    """
    from ase import Atoms  # noqa: PLC0415

    state = {"atoms": None}

    def compute(positions, cell, numbers):
        atoms = state["atoms"]
        if atoms is None or len(atoms) != len(numbers) or np.any(atoms.numbers != numbers):
            atoms = Atoms(numbers=numbers, positions=positions, cell=cell, pbc=True)
            atoms.calc = calc
            state["atoms"] = atoms
        else:
            atoms.set_cell(cell)
            atoms.set_positions(positions)
        energy = atoms.get_potential_energy()
        forces = atoms.get_forces()
        virial = None
        if "stress" in getattr(calc, "implemented_properties", ()):
            try:
                s = atoms.get_stress(voigt=True)  # xx yy zz yz xz xy, eV/A^3
                vol = atoms.get_volume()
                virial = -vol * np.array([s[0], s[1], s[2], s[5], s[4], s[3]])
            except Exception:  # noqa: BLE001 - a calculator without stress support
                virial = None
        return energy, forces, virial

    return compute


def _build_reaxff(spec: dict) -> Potential:
    return ReaxFF(spec["path"], **{k: v for k, v in spec.items() if k not in ("kind", "path")})


def _plugin(target: str) -> Callable[[dict], Potential]:
    """Builder of a potential class named ``"module:Class"``, imported when first used.

    The ML potentials live in :mod:`md_reference.ml`, which builds on this
    module; naming them by string keeps the import graph one-directional
    (``md`` never imports ``ml``) while ``load_potential("allegro:...")`` works.
    """
    def build(spec: dict) -> Potential:
        import importlib  # noqa: PLC0415

        mod, _, cls = target.partition(":")
        return getattr(importlib.import_module(mod), cls)(
            spec["path"], **{k: v for k, v in spec.items() if k not in ("kind", "path")})

    return build


def _build_lammps(spec: dict) -> Potential:
    return LammpsPairPotential(**{k: v for k, v in spec.items() if k != "kind"})


POTENTIALS: dict[str, Callable[[dict], Potential]] = {
    "reaxff": _build_reaxff,
    "allegro": _plugin("md_reference.ml.allegro:AllegroPotential"),
    "lammps": _build_lammps,
}


def load_potential(spec: str | dict | Potential) -> Potential:
    """Build a potential from ``"KIND:PATH"`` or ``{"kind": KIND, "path": PATH, ...}``.

    Raises
    ------
    PotentialError
        For an unknown kind (the message lists the valid ones) or a bad spec.
    """
    if isinstance(spec, Potential):
        return spec
    if isinstance(spec, str):
        if ":" not in spec:
            raise PotentialError(
                f"potential spec {spec!r} must look like KIND:PATH with KIND in {sorted(POTENTIALS)}"
            )
        kind, path = spec.split(":", 1)
        spec = {"kind": kind, "path": path}
    if not isinstance(spec, dict) or "kind" not in spec:
        raise PotentialError(f"potential spec must be 'KIND:PATH' or a dict with 'kind', got {spec!r}")
    kind = spec["kind"]
    if kind not in POTENTIALS:
        raise PotentialError(f"unknown potential kind {kind!r}; valid kinds are {sorted(POTENTIALS)}")
    try:
        return POTENTIALS[kind](spec)
    except (KeyError, TypeError) as exc:
        raise PotentialError(f"bad spec for potential {kind!r}: {exc}") from None
