"""Atomistic CsPbX3 supercells that share the lattice model's site numbering.

:func:`build_atoms` turns a :class:`lattice.Configuration` plus a
:class:`lattice.DefectSet` into an ASE ``Atoms`` object:

* Pb at the cube corners (doubled coordinates ``(2i, 2j, 2k)``), Cs at the cube
  centres ``(2i+1, 2j+1, 2k+1)``, halides on the X sites at
  ``lattice.positions_A(a)``, exactly as :mod:`lattice.sublattice` defines them;
* a vacancy removes the halide of its site;
* a split interstitial puts two halides on its site (the site's own atom first,
  then the added one), displaced by ``+-split_fraction * a`` perpendicular to
  the Pb-X-Pb bond, as in the relaxed dumbbells of the DFT migration paths
  (about +-1.55 A in CsPbI3).

Atom order is Pb (by cell), Cs (by cell), then halides by site. The per-atom
array ``halide_site`` (``atoms.arrays["halide_site"]``) holds the starting
site of each halide (-1 for Pb and Cs), which is what maps an MD frame back
onto KMC sites.

Lattice constants: a number, ``"vegard"`` (linear in the iodide fraction
between ``a_I`` and ``a_Br``) or a value measured by an NPT run of the same
potential (:func:`md_reference.md.lammps_driver.measure_lattice_constant`).
"""

from __future__ import annotations

import numpy as np

from lattice import Configuration, DefectSet, HalideSublattice, build_configuration, place_defects
from lattice.species import BR, I, KIND_INTERSTITIAL, KIND_VACANCY

# Cubic lattice constants (A) used by "vegard" unless given: the 0 K cubic
# values of the DFT reference paths (PBE+D3, 3x3x3 cells) of CsPbI3 / CsPbBr3.
DEFAULT_A_I = 6.30
DEFAULT_A_BR = 5.90
SPLIT_FRACTION = 0.25
HALIDE_SYMBOLS = ("I", "Br")


def vegard_lattice_constant(x_I: float, a_I: float = DEFAULT_A_I, a_Br: float = DEFAULT_A_BR) -> float:
    """Lattice constant (A) of CsPb(I_x Br_1-x)3 by Vegard's law."""
    if not 0.0 <= x_I <= 1.0:
        raise ValueError(f"iodide fraction x_I must lie in [0, 1], got {x_I}")
    return float(x_I * a_I + (1.0 - x_I) * a_Br)


def resolve_lattice_constant(config: Configuration, lattice_constant: float | str | None,
                             a_I: float = DEFAULT_A_I, a_Br: float = DEFAULT_A_BR) -> float:
    """A number stays; None or ``"vegard"`` gives Vegard's law at the configuration's x_I."""
    if lattice_constant is None or lattice_constant == "vegard":
        return vegard_lattice_constant(config.x_I, a_I, a_Br)
    try:
        a = float(lattice_constant)
    except (TypeError, ValueError):
        raise ValueError(
            f"lattice_constant must be a number (A) or 'vegard', got {lattice_constant!r}"
        ) from None
    if not 3.0 < a < 10.0:
        raise ValueError(f"lattice constant {a} A is not a plausible cubic CsPbX3 value (3-10 A)")
    return a


def build_atoms(config: Configuration, defects: DefectSet | None = None,
                lattice_constant: float | str | None = "vegard", *,
                split_fraction: float = SPLIT_FRACTION, split_axis: int | None = None,
                rattle_A: float = 0.0, seed: int = 0):
    """ASE ``Atoms`` of the configuration with its defects.

    Parameters
    ----------
    config : Configuration
        I/Br occupation of the halide sites.
    defects : DefectSet, optional
        Vacancies and split interstitials to place.
    lattice_constant : float, "vegard" or None
        Cubic lattice constant in A.
    split_fraction : float
        Half the dumbbell length of a split interstitial, in units of a.
    split_axis : int, optional
        Axis of the dumbbell; by default the axis ``(type + 1) % 3``
        perpendicular to the site's bond.
    rattle_A : float
        Standard deviation (A) of random displacements (seeded) to break symmetry.
    seed : int
        Seed of the rattle.

    Returns
    -------
    ase.Atoms
        With ``arrays["halide_site"]`` and ``info`` holding the configuration,
        defects and lattice constant (provenance).
    """
    from ase import Atoms  # noqa: PLC0415 - optional dependency

    lat = config.lattice
    a = resolve_lattice_constant(config, lattice_constant)
    nx, ny, nz = lat.shape
    ii, jj, kk = np.meshgrid(np.arange(nx), np.arange(ny), np.arange(nz), indexing="ij")
    cells = np.stack([ii.ravel(), jj.ravel(), kk.ravel()], axis=1).astype(np.float64)
    pb = cells * a
    cs = (cells + 0.5) * a

    site_pos = lat.positions_A(a)
    occ = np.asarray(config.occ)
    n_per_site = np.ones(lat.n_sites, dtype=np.int64)
    extra = {}
    if defects is not None and len(defects):
        for d in range(len(defects)):
            s = int(defects.sites[d])
            if defects.kinds[d] == KIND_VACANCY:
                n_per_site[s] = 0
            elif defects.kinds[d] == KIND_INTERSTITIAL:
                n_per_site[s] = 2
                extra[s] = (int(defects.bridge[d, 0]), int(defects.bridge[d, 1]))
            else:
                raise ValueError(f"unknown defect kind code {defects.kinds[d]}")
    hal_pos, hal_sym, hal_site = [], [], []
    for s in range(lat.n_sites):
        n = n_per_site[s]
        if n == 1:
            hal_pos.append(site_pos[s])
            hal_sym.append(HALIDE_SYMBOLS[occ[s]])
            hal_site.append(s)
        elif n == 2:
            t = s % 3
            ax = (t + 1) % 3 if split_axis is None else int(split_axis)
            if ax == t or ax not in (0, 1, 2):
                raise ValueError(f"split_axis {split_axis} must be an axis perpendicular to the bond of site {s}")
            shift = np.zeros(3)
            shift[ax] = split_fraction * a
            for sp, sign in zip(extra[s], (1.0, -1.0)):
                if sp not in (I, BR):
                    raise ValueError(f"bridge species code {sp} of site {s} is not a halide")
                hal_pos.append(site_pos[s] + sign * shift)
                hal_sym.append(HALIDE_SYMBOLS[sp])
                hal_site.append(s)
    positions = np.concatenate([pb, cs, np.asarray(hal_pos).reshape(-1, 3)])
    symbols = ["Pb"] * len(pb) + ["Cs"] * len(cs) + hal_sym
    if rattle_A > 0:
        rng = np.random.default_rng(seed)
        positions = positions + rng.normal(0.0, rattle_A, positions.shape)
    cell = np.diag(np.asarray(lat.shape, dtype=np.float64) * a)
    atoms = Atoms(symbols=symbols, positions=positions, cell=cell, pbc=True)
    atoms.wrap()
    atoms.arrays["halide_site"] = np.concatenate(
        [np.full(len(pb) + len(cs), -1, dtype=np.int64), np.asarray(hal_site, dtype=np.int64)]
    )
    atoms.info.update(
        {
            "lattice_shape": list(lat.shape),
            "lattice_constant_A": a,
            "configuration": config.describe(),
            "defects": describe_defects(defects),
        }
    )
    return atoms


def describe_defects(defects: DefectSet | None) -> list[dict]:
    """JSON-ready list of defects (kind, site, bridge species)."""
    out = []
    if defects is None:
        return out
    for d in range(len(defects)):
        kind = "vacancy" if defects.kinds[d] == KIND_VACANCY else "interstitial"
        rec = {"kind": kind, "site": int(defects.sites[d])}
        if kind == "interstitial":
            rec["bridge"] = [HALIDE_SYMBOLS[int(v)] for v in defects.bridge[d]]
        out.append(rec)
    return out


def occupancy_from_atoms(atoms, lattice: HalideSublattice) -> np.ndarray:
    """Site states (I, Br, V, B) from the ``halide_site`` labels of ``atoms``."""
    from lattice.species import BRIDGE, VACANCY  # noqa: PLC0415

    site = atoms.arrays["halide_site"]
    sym = np.asarray(atoms.get_chemical_symbols())
    occ = np.full(lattice.n_sites, VACANCY, dtype=np.int8)
    counts = np.bincount(site[site >= 0], minlength=lattice.n_sites)
    hal = site >= 0
    occ[site[hal]] = np.where(sym[hal] == "I", I, BR)
    occ[counts == 2] = BRIDGE
    if np.any(counts > 2):
        raise ValueError("a site holds more than two halides")
    return occ


def build_cell(kind: str, shape, *, defect: str = "interstitial", where: str | int = "random",
               added_species: str = "same", lattice_constant: float | str | None = "vegard",
               seed: int = 0, **config_kwargs):
    """One-call builder: configuration + one defect + atoms.

    Parameters
    ----------
    kind : {"pure", "random", "heterojunction", "nanodomain"}
        Configuration builder of :mod:`lattice.configurations`; ``config_kwargs``
        go to it (``species``, ``x_I``, ``thickness_I``, ``interface``, ...).
    shape : (3,) int
        Unit cells along x, y, z.
    defect : {"vacancy", "interstitial", "none"}
    where : str or int
        Placement rule of :data:`lattice.PLACEMENTS` or an explicit site.
    seed : int
        Seeds the random mix and the placement.

    Returns
    -------
    (atoms, config, defects)
    """
    lat = HalideSublattice(tuple(shape))
    if kind == "random":
        config_kwargs.setdefault("seed", seed)
    config = build_configuration(lat, kind, **config_kwargs)
    if defect not in ("vacancy", "interstitial", "none"):
        raise ValueError(f"unknown defect {defect!r}; valid defects are ['vacancy', 'interstitial', 'none']")
    n_v = int(defect == "vacancy")
    n_i = int(defect == "interstitial")
    placement = [int(where)] if isinstance(where, (int, np.integer)) else where
    defects = place_defects(config, n_v, n_i, where=placement, added_species=added_species, seed=seed)
    atoms = build_atoms(config, defects, lattice_constant)
    return atoms, config, defects
