"""Climbing-image NEB of single halide-defect hops with any package potential.

A hop is given on the lattice model (defect site A, neighbour slot k); the
endpoints are built from the same configuration, so every record carries the
hop's environment class from :mod:`lattice.environment` (``classify_hop``).

Endpoints
---------
* vacancy at A, neighbour atom on B (initial) -> that atom on A, vacancy on B (final);
* bridge on A holding (remaining, mover), one atom (target) on B (initial) ->
  remaining atom alone on A, bridge (mover, target) on B (final). The bridge
  geometry is that of the DFT paths: the bridge on A is split along B's bond
  axis with the mover on B's side, the new bridge on B along A's bond axis
  with the mover on A's side.

Keeping the cubic phase (the set-up and why)
--------------------------------------------
Cubic CsPbX3 is not a 0 K minimum of the reference ReaxFF (2024 IBrPbCs):
relaxing a 3x3x3 CsPbI3 cell (a = 6.30 A, the DFT reference cell) with one
vacancy and all atoms free tilts every octahedron (mean Pb-X-Pb bending
15-16 deg even >= 1.8 a from the defect, 2.7 eV lower), and two independently
relaxed endpoints of one hop fall into different tilt patterns (0.19 eV apart);
a band between such endpoints, or from the DFT images onto them, climbs to
+20-70 eV. The DFT reference images bend 14-22 deg next to the defect, 4-6 deg
at 1-1.8 a and ~1 deg beyond. The set-up here:

1. **Frozen far field**, ``free_radius_A = FREE_RADIUS_LATTICE * a = 1.5 a``
   around the hop midpoint (cell fixed, every atom beyond held at its ideal
   cubic position). 1.5 a is half the edge of the 3x3x3 reference cell and the
   largest radius at which the shell beyond 1.8 a stays cubic (<= 0.3 deg);
   at 1.8 a the free region starts to tilt collectively (4-5 deg beyond 1.8 a)
   and the barriers rise (V_I 0.44, I_i 0.38 eV).
2. **Mirror endpoints** (``endpoints="mirror"``): the final endpoint is the
   mirror image of the relaxed initial one, through the Pb shared by A and B,
   swapping the bond axes of A and B (:func:`mirror_operation`); it maps the
   ideal initial hop geometry exactly onto the final one. In pure cells dE = 0
   to 1e-12 eV and forward = backward barrier; independent relaxations gave
   dE = 0.045 eV (V_I, 1.25 a) and, for I_i at 1.5 a, a band that never
   converged (+19 eV). In mixed cells the mirror image is the start of the
   final relaxation; when that band does not converge (seen for a Br kick-out
   at a Br-rich heterojunction interface: 4.7 eV, unconverged; independent
   endpoints: 0.384 eV, converged) the hop is rerun with independent endpoints
   and the record says so (``provenance["mirror_attempt"]``).
3. **Endpoint refinement**: when an image ends > 5 meV below an endpoint, the
   endpoint sat on a symmetric saddle of the tilt landscape; that image is
   relaxed as the new endpoint and the NEB rerun (needed in 7 of 33 runs here).
4. IDPP band, 5 images, climbing image from the start.

Climbing-image NEB of the reference hops in the DFT cells (ReaxFF, forward =
backward barrier, eV) against the free radius:

======  ======  ======  ======  ======  ======  ======  =========================
hop     1.0 a   1.25 a  1.4 a   1.5 a   1.6 a   1.8 a   other at 1.5 a
======  ======  ======  ======  ======  ======  ======  =========================
V_I     0.310   0.376   0.374   0.377   0.417   0.440   9 images 0.380; rattled 0.388
I_i     0.161   0.076   0.051   0.237   0.158   0.381   9 images 0.202; rattled 0.098, 0.304
V_Br            0.537           0.561
Br_i            0.083           0.173
======  ======  ======  ======  ======  ======  ======  =========================

(all atoms free: V_I 0.404, I_i 0.172, but the whole cell tilted 15-16 deg.)
Vacancy barriers are converged to ~0.01 eV between 1.25 a and 1.5 a, with 5
or 9 images and from rattled starts. Kick-out barriers are not: the bridge
relaxes into one of several local tilt minima (within 0.07 eV of each other)
whose barriers span 0.1-0.3 eV; three starts of V_Br gave 0.561 and 0.733 eV
(the latter from a minimum 0.05 eV lower) and one band that did not converge.
``n_starts`` runs the hop from the ideal and
from rattled starts and keeps the NEB out of the lowest initial minimum, with
every start listed in the record; use it for interstitial hops and read the
spread as the uncertainty of the barrier.

Charge equilibration keeps every ReaxFF cell neutral: these are barriers of
neutral defects, not of the charged V_X+ / X_i- of the paper.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lattice import Configuration, HalideSublattice, build_pure, place_defects
from lattice.environment import class_label, classify_hop
from lattice.species import BRIDGE, I, KIND_INTERSTITIAL, KIND_VACANCY, VACANCY
from md_reference.md.structures import SPLIT_FRACTION, build_atoms

log = logging.getLogger(__name__)

#: Default radius of the relaxed region around the hop midpoint, in lattice constants.
FREE_RADIUS_LATTICE = 1.5
CONSTRAINTS = ("frozen-far-field", "none")
ENDPOINT_METHODS = ("mirror", "independent")
INTERPOLATIONS = ("idpp", "linear")
NEB_METHODS = ("improvedtangent", "aseneb", "eb", "spline", "string")
SCHEMA = "halide-kmc/neb-record"
SCHEMA_VERSION = 1
KCAL_MOL_EV = 0.0433641


def _optimizers() -> dict:
    from ase.optimize import BFGS, FIRE, LBFGS  # noqa: PLC0415

    return {"FIRE": FIRE, "BFGS": BFGS, "LBFGS": LBFGS}


def _check_choice(name: str, value, valid) -> None:
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid values are {sorted(valid)}")


@dataclass
class NEBSettings:
    """NEB parameters (energies eV, forces eV/A, lengths A).

    Attributes
    ----------
    n_images : int
        Intermediate images (the band has ``n_images + 2`` structures).
    spring_eV_A2 : float
        Spring constant between images.
    climb : bool
        Climbing image (from the first step).
    fmax_eV_A : float
        Convergence: largest NEB force on any image.
    max_steps : int
        Optimiser steps of the band.
    endpoint_fmax_eV_A, endpoint_max_steps :
        Relaxation of the endpoints.
    constraint : {"frozen-far-field", "none"}
        "frozen-far-field": atoms farther than ``free_radius_A`` from the hop
        midpoint stay at their ideal cubic positions; "none": all atoms free
        (collapses into octahedral tilts in cubic CsPbX3 with ReaxFF).
    free_radius_A : float or None
        Radius of the relaxed region; None means ``FREE_RADIUS_LATTICE * a``.
    endpoints : {"mirror", "independent"}
        Final endpoint as the mirror image of the relaxed initial one (then
        relaxed), or relaxed on its own from the ideal geometry.
    interpolation : {"idpp", "linear"}
        Initial band (ignored when a band is given).
    optimizer : {"FIRE", "BFGS", "LBFGS"}
    max_step_A : float, optional
        Largest atom step of the band optimiser (ASE ``maxstep``; None: its default, 0.2 A).
    method : str
        ASE NEB tangent method.
    endpoint_refinements : int
        When an image of the converged band lies more than
        ``refine_tolerance_eV`` below an endpoint, the endpoint was not the
        minimum next to the saddle (another local tilt minimum): the lowest
        image on that side is relaxed as the new endpoint (with "mirror", the
        new initial one is mirrored again) and the NEB is rerun, at most this
        many times.
    refine_tolerance_eV : float
    rattle_A, rattle_seed :
        Standard deviation (A) of seeded random displacements of the free atoms
        of the initial endpoint before its relaxation (breaks the symmetry of
        the ideal start, so that the relaxation can leave a symmetric saddle).
    n_starts : int
        Independent NEBs of the hop: the ideal start and ``n_starts - 1``
        rattled ones (``rattle_A``, or 0.03 A when it is 0; seeds
        ``rattle_seed + k``). The result is the converged one out of the lowest
        initial minimum; all starts are listed in ``provenance["starts"]``. Kick-out
        barriers depend on the local tilt minimum the bridge relaxes into, so
        interstitial hops need several starts.
    """

    n_images: int = 5
    spring_eV_A2: float = 0.1
    climb: bool = True
    fmax_eV_A: float = 0.03
    max_steps: int = 600
    endpoint_fmax_eV_A: float = 0.01
    endpoint_max_steps: int = 3000
    constraint: str = "frozen-far-field"
    free_radius_A: float | None = None
    endpoints: str = "mirror"
    interpolation: str = "idpp"
    optimizer: str = "FIRE"
    method: str = "improvedtangent"
    endpoint_refinements: int = 2
    refine_tolerance_eV: float = 0.005
    rattle_A: float = 0.0
    rattle_seed: int = 0
    n_starts: int = 1
    max_step_A: float | None = None

    def validate(self) -> "NEBSettings":
        if self.max_step_A is not None and not self.max_step_A > 0:
            raise ValueError(f"max_step_A must be > 0 or None, got {self.max_step_A}")
        if int(self.n_images) != self.n_images or self.n_images < 1:
            raise ValueError(f"n_images must be an integer >= 1, got {self.n_images}")
        for name in ("spring_eV_A2", "fmax_eV_A", "endpoint_fmax_eV_A"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.n_starts < 1:
            raise ValueError(f"n_starts must be >= 1, got {self.n_starts}")
        if not self.rattle_A >= 0:
            raise ValueError(f"rattle_A must be >= 0, got {self.rattle_A}")
        if not self.refine_tolerance_eV > 0:
            raise ValueError(f"refine_tolerance_eV must be > 0, got {self.refine_tolerance_eV}")
        for name in ("max_steps", "endpoint_max_steps", "endpoint_refinements", "n_starts"):
            if int(getattr(self, name)) != getattr(self, name) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {getattr(self, name)}")
        _check_choice("constraint", self.constraint, CONSTRAINTS)
        if self.free_radius_A is not None and not self.free_radius_A > 0:
            raise ValueError(f"free_radius_A must be > 0 or None, got {self.free_radius_A}")
        _check_choice("endpoints", self.endpoints, ENDPOINT_METHODS)
        _check_choice("interpolation", self.interpolation, INTERPOLATIONS)
        _check_choice("optimizer", self.optimizer, _optimizers())
        _check_choice("method", self.method, NEB_METHODS)
        return self

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class NEBResult:
    """One NEB calculation (JSON-ready with :meth:`to_dict`).

    Energies in eV relative to nothing in particular (the potential's zero)
    for ``energy_initial_eV``/``energy_final_eV``; ``image_energies_eV`` are
    relative to the initial endpoint; ``image_path_A`` is the cumulative
    (mass-unweighted) path length of the band.
    """

    defect: str
    site_a: int
    site_b: int
    slot: int
    mover: str
    env_class: int
    env_label: str
    barrier_forward_eV: float
    barrier_backward_eV: float
    energy_initial_eV: float
    energy_final_eV: float
    image_energies_eV: list
    image_path_A: list
    converged: bool
    n_steps: int
    settings: dict
    provenance: dict = field(default_factory=dict)
    mover_index: int | None = None
    other: str | None = None
    target: str | None = None
    endpoints_converged: bool = True
    tilt_deg: dict = field(default_factory=dict)

    @property
    def delta_E_eV(self) -> float:
        return self.energy_final_eV - self.energy_initial_eV

    @property
    def kra_barrier_eV(self) -> float:
        """Kinetically resolved barrier: forward barrier minus half the reaction energy."""
        return self.barrier_forward_eV - 0.5 * self.delta_E_eV

    def to_dict(self) -> dict:
        d = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION}
        d.update(self.__dict__)
        d["delta_E_eV"] = self.delta_E_eV
        d["kra_barrier_eV"] = self.kra_barrier_eV
        d["units"] = {"energy": "eV", "length": "A"}
        return d


# --------------------------------------------------------------------------
# Geometry of a hop
# --------------------------------------------------------------------------
def _min_image_offset(lat: HalideSublattice, site_a: int, site_b: int) -> np.ndarray:
    """Doubled-coordinate offset B - A, minimum image (entries in {-1, 0, 1})."""
    off = lat.coords(int(site_b)) - lat.coords(int(site_a))
    return (off + lat.dims) % (2 * lat.dims) - lat.dims


def hop_endpoints(config: Configuration, kind: str, site_a: int, slot: int, lattice_constant_A: float,
                  mover_index: int = 1, split_fraction: float = SPLIT_FRACTION, added_species: str = "same"):
    """Initial and final ASE structures of one hop (ideal geometry), and its class.

    Parameters
    ----------
    config : Configuration
        I/Br occupation before the defect is placed.
    kind : {"vacancy", "interstitial"}
    site_a : int
        Defect site before the hop.
    slot : int
        Neighbour slot (0-7) of the defect's destination B.
    lattice_constant_A : float
    mover_index : {0, 1}
        Interstitial: which bridge atom moves (0 = the site's own atom, 1 = the added one).
    split_fraction : float
        Half the dumbbell length in units of a.
    added_species : {"same", "I", "Br"}
        Interstitial: the halide added to A's own atom (see :func:`lattice.place_defects`).

    Returns
    -------
    (initial, final, info)
        ``info``: ``env_class``, ``site_a``, ``site_b``, ``slot``, ``mover``
        and ``other`` (species codes; ``other`` = -1 for vacancies),
        ``target`` (species code on B for kick-outs), ``i_mover`` (atom
        index), ``defects``.
    """
    lat = config.lattice
    if not 0 <= int(slot) < 8:
        raise ValueError(f"slot must be in 0..7, got {slot}")
    if mover_index not in (0, 1):
        raise ValueError(f"mover_index must be 0 or 1, got {mover_index}")
    site_b = int(lat.neighbours(site_a)[slot])
    occ = np.asarray(config.occ, dtype=np.int8).copy()
    if kind == "vacancy":
        defects = place_defects(config, 1, 0, where=[site_a])
        mover = int(occ[site_b])
        occ_before = occ.copy()
        occ_before[site_a] = VACANCY
        cls = classify_hop(occ_before, lat.dims, site_a, slot, KIND_VACANCY, mover)
        initial = build_atoms(config, defects, lattice_constant_A)
        final = initial.copy()
        sites = initial.arrays["halide_site"]
        i_mover = int(np.flatnonzero(sites == site_b)[0])
        final.positions[i_mover] = lat.positions_A(lattice_constant_A)[site_a]
        final.arrays["halide_site"][i_mover] = site_a
        info = {"mover": mover, "other": -1, "target": -1}
    elif kind == "interstitial":
        offset = _min_image_offset(lat, site_a, site_b)
        t_a, t_b = site_a % 3, site_b % 3
        defects = place_defects(config, 0, 1, where=[site_a], added_species=added_species)
        initial = build_atoms(config, defects, lattice_constant_A, split_fraction=split_fraction, split_axis=t_b)
        sites = initial.arrays["halide_site"]
        pair_idx = np.flatnonzero(sites == site_a)
        i_mover = int(pair_idx[mover_index])
        i_rem = int(pair_idx[1 - mover_index])
        pos_sites = lat.positions_A(lattice_constant_A)
        # build_atoms puts the site atom at +shift and the added one at -shift along tB;
        # the mover goes on B's side.
        side = 1.0 if mover_index == 0 else -1.0
        if side * offset[t_b] < 0:
            p = initial.positions[i_mover].copy()
            initial.positions[i_mover] = initial.positions[i_rem]
            initial.positions[i_rem] = p
        i_target = int(np.flatnonzero(sites == site_b)[0])
        sym = initial.get_chemical_symbols()
        mover = I if sym[i_mover] == "I" else 1
        other = I if sym[i_rem] == "I" else 1
        occ_before = occ.copy()
        occ_before[site_a] = BRIDGE
        cls = classify_hop(occ_before, lat.dims, site_a, slot, KIND_INTERSTITIAL, mover, other)
        final = initial.copy()
        shift = np.zeros(3)
        shift[t_a] = split_fraction * lattice_constant_A * np.sign(offset[t_a])
        # Positions continuous across the periodic boundary: B's bridge placed next to A.
        centre_b = pos_sites[site_a] + 0.5 * lattice_constant_A * offset
        final.positions[i_rem] = pos_sites[site_a]
        final.positions[i_mover] = centre_b - shift
        final.positions[i_target] = centre_b + shift
        final.arrays["halide_site"][i_mover] = site_b
        info = {"mover": mover, "other": other, "target": int(occ[site_b])}
    else:
        raise ValueError(f"unknown defect kind {kind!r}; valid kinds are ['interstitial', 'vacancy']")
    info.update({"env_class": int(cls), "site_a": int(site_a), "site_b": site_b, "slot": int(slot),
                 "i_mover": i_mover, "defects": defects})
    return initial, final, info


def hop_midpoint_A(lat: HalideSublattice, site_a: int, site_b: int, lattice_constant_A: float) -> np.ndarray:
    """(3,) float: midpoint of the hop A -> B in A (next to A, not wrapped)."""
    off = _min_image_offset(lat, site_a, site_b)
    return lat.positions_A(lattice_constant_A)[int(site_a)] + 0.25 * lattice_constant_A * off


def mirror_operation(lat: HalideSublattice, site_a: int, site_b: int, lattice_constant_A: float):
    """The reflection that swaps the hop's endpoints.

    A and B are X sites of one PbX6 octahedron, on the bond axes tA and tB of
    the Pb they share. The reflection through that Pb which swaps the tA and tB
    axes (``x_tA <-> s x_tB``, ``s = -off_tA off_tB``) maps A onto B and the
    initial hop geometry (vacancy or kick-out dumbbell) onto the final one.

    Returns
    -------
    (centre (3,) float in A, matrix (3, 3) float)
        ``g(r) = centre + matrix @ (r - centre)``.
    """
    off = _min_image_offset(lat, site_a, site_b)
    t_a, t_b = int(site_a) % 3, int(site_b) % 3
    pos = lat.positions_A(lattice_constant_A)[int(site_a)]
    centre = pos.copy()
    centre[t_a] += 0.5 * lattice_constant_A * off[t_a]
    s = -int(off[t_a]) * int(off[t_b])
    m = np.eye(3)
    m[t_a, t_a] = m[t_b, t_b] = 0.0
    m[t_a, t_b] = m[t_b, t_a] = s
    return centre, m


def _mic(d: np.ndarray, L: np.ndarray) -> np.ndarray:
    return d - L * np.round(d / L)


def mirror_final(relaxed_initial, ideal_initial, ideal_final, lat: HalideSublattice, site_a: int, site_b: int,
                 lattice_constant_A: float):
    """Final endpoint as the mirror image of a relaxed initial endpoint.

    ``final_i = ideal_final_i + M (x_j - ideal_initial_j)`` where ``j`` is the
    atom whose ideal initial position the mirror maps onto atom ``i``'s ideal
    final position. Species are not swapped: in a cell whose occupation is not
    mirror-symmetric this is a starting guess for the final relaxation.

    Returns
    -------
    ase.Atoms or None
        None when the mirror is not a symmetry of the periodic cell (the cell
        lengths along tA and tB differ).
    """
    L = np.diag(ideal_initial.cell.array).copy()
    centre, m = mirror_operation(lat, site_a, site_b, lattice_constant_A)
    mapped = centre + (ideal_initial.positions - centre) @ m.T
    d = _mic(mapped[:, None, :] - ideal_final.positions[None, :, :], L)
    dist = np.linalg.norm(d, axis=2)
    j_of_i = np.argmin(dist, axis=0)
    tol = 1e-6 * lattice_constant_A
    if np.any(dist[j_of_i, np.arange(len(ideal_final))] > tol) or np.unique(j_of_i).size != len(ideal_final):
        return None
    disp = _mic(relaxed_initial.positions - ideal_initial.positions, L)
    out = ideal_final.copy()
    out.positions = ideal_final.positions + disp[j_of_i] @ m.T
    return out


def _unmirror(final_like, ideal_initial, ideal_final, lat, site_a, site_b, lattice_constant_A):
    """A structure near the final endpoint mapped back next to the initial one (the mirror is an involution)."""
    return mirror_final(final_like, ideal_final, ideal_initial, lat, site_a, site_b, lattice_constant_A)


def pb_x_pb_bending_deg(atoms) -> np.ndarray:
    """(n,) float: 180 deg minus the Pb-X-Pb angle of each halide with its two nearest Pb (NaN for Pb, Cs)."""
    sym = np.asarray(atoms.get_chemical_symbols())
    L = np.diag(atoms.cell.array)
    pb = atoms.positions[sym == "Pb"]
    out = np.full(len(atoms), np.nan)
    for i in np.flatnonzero((sym == "I") | (sym == "Br")):
        d = _mic(pb - atoms.positions[i], L)
        n = np.linalg.norm(d, axis=1)
        o = np.argsort(n)[:2]
        c = float(np.dot(d[o[0]], d[o[1]]) / (n[o[0]] * n[o[1]]))
        out[i] = 180.0 - float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))
    return out


def tilt_summary(atoms, centre_A: np.ndarray, lattice_constant_A: float) -> dict:
    """Pb-X-Pb bending (deg) by distance from the hop midpoint: the tilt-collapse indicator.

    Shells: ``near`` (< 1 a), ``mid`` (1-1.8 a), ``far`` (>= 1.8 a), mean and max.
    The DFT reference images bend ~15-22 deg near the defect and ~1 deg in the far shell;
    a cell collapsed into octahedral tilts bends ~15 deg everywhere.
    """
    b = pb_x_pb_bending_deg(atoms)
    hal = np.isfinite(b)
    r = np.linalg.norm(_mic(atoms.positions - centre_A, np.diag(atoms.cell.array)), axis=1) / lattice_constant_A
    out = {}
    for name, lo, hi in (("near", 0.0, 1.0), ("mid", 1.0, 1.8), ("far", 1.8, np.inf)):
        sel = hal & (r >= lo) & (r < hi)
        out[name] = {"mean": float(b[sel].mean()) if sel.any() else None,
                     "max": float(b[sel].max()) if sel.any() else None, "n": int(sel.sum())}
    return out


# --------------------------------------------------------------------------
# NEB machinery
# --------------------------------------------------------------------------
def relax(atoms, calc, fmax_eV_A: float, max_steps: int, optimizer: str = "FIRE") -> tuple[float, bool, int]:
    """Relax ``atoms`` in place (its constraints kept); returns (energy eV, converged, steps)."""
    opts = _optimizers()
    _check_choice("optimizer", optimizer, opts)
    atoms.calc = calc
    opt = opts[optimizer](atoms, logfile=None)
    converged = bool(opt.run(fmax=fmax_eV_A, steps=max_steps))
    e = float(atoms.get_potential_energy())
    atoms.calc = None
    return e, converged, int(opt.nsteps)


def neb_between(initial, final, calculator_factory, settings: NEBSettings | None = None, fixed=None,
                band=None) -> dict:
    """Climbing-image NEB between two (relaxed) endpoints.

    Parameters
    ----------
    initial, final : ase.Atoms
        Endpoints with the same atoms in the same order.
    calculator_factory : callable () -> ASE calculator
        Called once per image (each image keeps its own calculator).
    settings : NEBSettings
    fixed : (n,) bool, optional
        Atoms held in place on every image.
    band : sequence of (n, 3) arrays, optional
        Positions of the ``settings.n_images`` intermediate images (instead of
        an interpolation).

    Returns
    -------
    dict with ``energies_eV`` (n_images + 2,), ``path_A``, ``converged``,
    ``n_steps``, ``images`` (the relaxed band as ase.Atoms, calculators detached).
    """
    from ase.constraints import FixAtoms  # noqa: PLC0415
    from ase.mep import NEB  # noqa: PLC0415

    s = (settings or NEBSettings()).validate()
    if len(initial) != len(final) or initial.get_chemical_symbols() != final.get_chemical_symbols():
        raise ValueError("initial and final endpoints must hold the same atoms in the same order")
    n = int(s.n_images)
    images = [initial.copy() for _ in range(n + 1)] + [final.copy()]
    for img in images:
        img.set_constraint()
        if fixed is not None and np.any(fixed):
            img.set_constraint(FixAtoms(mask=np.asarray(fixed, dtype=bool)))
    calcs = [calculator_factory() for _ in images]
    try:
        for img, c in zip(images, calcs):
            img.calc = c
        neb = NEB(images, k=s.spring_eV_A2, climb=s.climb, method=s.method, allow_shared_calculator=False)
        if band is not None:
            band = [np.asarray(p, dtype=np.float64) for p in band]
            if len(band) != n or any(p.shape != initial.positions.shape for p in band):
                raise ValueError(f"band must hold {n} arrays of shape {initial.positions.shape}")
            cell_l = np.diag(initial.cell.array) if initial.pbc.all() else None
            for img, p in zip(images[1:-1], band):
                p = p.copy()
                if cell_l is not None:
                    # Continuous with the initial endpoint (the images may be wrapped differently).
                    p = initial.positions + _mic(p - initial.positions, cell_l)
                if fixed is not None:
                    # Held atoms stay where the endpoints hold them.
                    p[np.asarray(fixed, dtype=bool)] = initial.positions[np.asarray(fixed, dtype=bool)]
                img.positions = p
        elif s.interpolation == "idpp":
            neb.interpolate(method="idpp", mic=True)
        else:
            neb.interpolate(mic=True)
        kw = {} if s.max_step_A is None else {"maxstep": float(s.max_step_A)}
        opt = _optimizers()[s.optimizer](neb, logfile=None, **kw)
        converged = bool(opt.run(fmax=s.fmax_eV_A, steps=s.max_steps))
        e = np.array([float(img.get_potential_energy()) for img in images])
        L = np.diag(initial.cell.array) if initial.cell.orthorhombic and initial.pbc.all() else None
        path = [0.0]
        for i in range(1, len(images)):
            dd = images[i].positions - images[i - 1].positions
            if L is not None:
                dd = _mic(dd, L)
            path.append(path[-1] + float(np.linalg.norm(dd)))
        n_steps = int(opt.nsteps)
    finally:
        for img, c in zip(images, calcs):
            img.calc = None
            if hasattr(c, "close"):
                c.close()
    return {"energies_eV": e, "path_A": path, "converged": converged, "n_steps": n_steps, "images": images}


def _potential_factory(potential):
    from md_reference.md.calculator import LammpsCalculator  # noqa: PLC0415
    from md_reference.md.potentials import load_potential  # noqa: PLC0415

    pot = load_potential(potential)
    return pot, (lambda: LammpsCalculator(pot))


def run_neb(config: Configuration, kind: str, site_a: int, slot: int, potential, lattice_constant_A: float,
            settings: NEBSettings | None = None, mover_index: int = 1, *, added_species: str = "same",
            start=None, band=None, return_images: bool = False):
    """Relax the endpoints and run a climbing-image NEB of one hop.

    Parameters
    ----------
    config, kind, site_a, slot, lattice_constant_A, mover_index, added_species :
        The hop, as in :func:`hop_endpoints`.
    potential : Potential or spec
        Energies come from :class:`md_reference.md.calculator.LammpsCalculator`.
    settings : NEBSettings
    start : (initial, final) ase.Atoms, optional
        Start geometries of the endpoint relaxations in the atom order of
        :func:`hop_endpoints` (e.g. mapped DFT images); default: the ideal ones.
        With ``endpoints="mirror"`` only the initial one is used.
    band : sequence of (n, 3) arrays, optional
        Initial positions of the intermediate images (e.g. DFT images).
    return_images : bool
        Also return the relaxed band (list of ase.Atoms).

    Returns
    -------
    NEBResult, or (NEBResult, images) with ``return_images``.
    """
    s = (settings or NEBSettings()).validate()
    if s.n_starts > 1:
        from dataclasses import replace  # noqa: PLC0415

        runs = []
        for k in range(int(s.n_starts)):
            sk = replace(s, n_starts=1, rattle_A=0.0 if k == 0 else (s.rattle_A or 0.03),
                         rattle_seed=int(s.rattle_seed) + k)
            runs.append(run_neb(config, kind, site_a, slot, potential, lattice_constant_A, sk, mover_index,
                                added_species=added_species, start=start, band=band if k == 0 else None,
                                return_images=True))
        # Converged runs first, then the lowest initial minimum.
        best = min(range(len(runs)), key=lambda k: (not runs[k][0].converged, runs[k][0].energy_initial_eV))
        res, images = runs[best]
        res.settings = s.to_dict()
        res.provenance["starts"] = [
            {"rattle_A": r.settings["rattle_A"], "rattle_seed": r.settings["rattle_seed"],
             "energy_initial_eV": r.energy_initial_eV, "barrier_forward_eV": r.barrier_forward_eV,
             "barrier_backward_eV": r.barrier_backward_eV, "converged": r.converged}
            for r, _ in runs]
        res.provenance["chosen_start"] = best
        res.provenance["wall_s"] = float(sum(r.provenance["wall_s"] for r, _ in runs))
        return (res, images) if return_images else res
    res, images = _run_neb_single(config, kind, site_a, slot, potential, lattice_constant_A, s, mover_index,
                                  added_species, start, band)
    if not res.converged and res.provenance["endpoint_method"] == "mirror":
        # Seen in mixed cells: the mirrored start of the final endpoint relaxes into a tilt
        # pattern the band cannot reach from the initial one. Retry with independent endpoints.
        from dataclasses import replace  # noqa: PLC0415

        log.warning("NEB %s %d->%d with mirror endpoints did not converge; retrying with independent endpoints",
                    kind, site_a, res.site_b)
        alt, alt_images = _run_neb_single(config, kind, site_a, slot, potential, lattice_constant_A,
                                          replace(s, endpoints="independent"), mover_index, added_species,
                                          start, band)
        alt.provenance["mirror_attempt"] = {"barrier_forward_eV": res.barrier_forward_eV,
                                            "converged": res.converged, "wall_s": res.provenance["wall_s"]}
        if alt.converged or alt.barrier_forward_eV < res.barrier_forward_eV:
            res, images = alt, alt_images
    return (res, images) if return_images else res


def _run_neb_single(config, kind, site_a, slot, potential, lattice_constant_A, s, mover_index, added_species,
                    start, band):
    """One NEB of one hop from one start (see :func:`run_neb`); returns (NEBResult, images)."""
    pot, factory = _potential_factory(potential)
    t0 = time.time()
    lat = config.lattice
    ideal_i, ideal_f, info = hop_endpoints(config, kind, site_a, slot, lattice_constant_A, mover_index,
                                           added_species=added_species)
    site_b = info["site_b"]
    centre = hop_midpoint_A(lat, site_a, site_b, lattice_constant_A)
    L = np.diag(ideal_i.cell.array)
    if s.constraint == "none":
        radius = None
        fixed = np.zeros(len(ideal_i), dtype=bool)
    else:
        radius = s.free_radius_A if s.free_radius_A is not None else FREE_RADIUS_LATTICE * lattice_constant_A
        fixed = np.linalg.norm(_mic(ideal_i.positions - centre, L), axis=1) > radius
    from ase.constraints import FixAtoms  # noqa: PLC0415

    initial = (start[0] if start is not None else ideal_i).copy()
    if s.rattle_A > 0:
        rng = np.random.default_rng(s.rattle_seed)
        initial.positions[~fixed] += rng.normal(0.0, s.rattle_A, (int((~fixed).sum()), 3))
    final = None if start is None or s.endpoints == "mirror" else start[1].copy()
    method = s.endpoints
    steps = []
    refinements = 0
    conv_i = conv_f = True
    while True:
        calc = factory()
        try:
            initial.set_constraint(FixAtoms(mask=fixed))
            _, conv_i, n_i = relax(initial, calc, s.endpoint_fmax_eV_A, s.endpoint_max_steps, s.optimizer)
            if method == "mirror":
                final = mirror_final(initial, ideal_i, ideal_f, lat, site_a, site_b, lattice_constant_A)
                if final is None:
                    log.warning("mirror endpoints need equal cell lengths along the two bond axes of the hop; "
                                "relaxing the final endpoint independently")
                    method = "independent"
            if final is None:
                final = ideal_f.copy()
            final.set_constraint(FixAtoms(mask=fixed))
            _, conv_f, n_f = relax(final, calc, s.endpoint_fmax_eV_A, s.endpoint_max_steps, s.optimizer)
        finally:
            calc.close()
        steps.append([n_i, n_f])
        res = neb_between(initial, final, factory, s, fixed=fixed, band=band if refinements == 0 else None)
        e = res["energies_eV"]
        half = (len(e) + 1) // 2
        j_lo = int(np.argmin(e[:half]))
        k_lo = half - 1 + int(np.argmin(e[half - 1:]))
        low_i = e[j_lo] < e[0] - s.refine_tolerance_eV
        low_f = e[k_lo] < e[-1] - s.refine_tolerance_eV
        if not (low_i or low_f) or refinements >= s.endpoint_refinements:
            if low_i or low_f:
                log.warning("NEB %s %d->%d: an image is still below an endpoint after %d refinements",
                            kind, site_a, site_b, refinements)
            break
        refinements += 1
        log.info("NEB %s %d->%d: image below an endpoint (%.3f eV); refining the endpoints", kind, site_a,
                 site_b, float(min(e[j_lo] - e[0], e[k_lo] - e[-1])))
        if method == "mirror":
            # The lower side defines the new initial state; the mirror gives the final one.
            initial = (res["images"][j_lo] if e[j_lo] - e[0] <= e[k_lo] - e[-1] else
                       _unmirror(res["images"][k_lo], ideal_i, ideal_f, lat, site_a, site_b,
                                 lattice_constant_A)).copy()
            final = None
        else:
            if low_i:
                initial = res["images"][j_lo].copy()
            if low_f:
                final = res["images"][k_lo].copy()
    e = res["energies_eV"]
    # The NEB recomputes the endpoint energies: use them (same calculator, same positions).
    e_i, e_f = float(e[0]), float(e[-1])
    top = float(e.max())
    i_top = int(np.argmax(e))
    names = ("I", "Br")
    result = NEBResult(
        defect=kind, site_a=int(site_a), site_b=int(site_b), slot=int(slot),
        mover=names[info["mover"]], env_class=info["env_class"], env_label=class_label(info["env_class"]),
        barrier_forward_eV=top - e_i, barrier_backward_eV=top - e_f,
        energy_initial_eV=e_i, energy_final_eV=e_f,
        image_energies_eV=[float(v - e_i) for v in e], image_path_A=res["path_A"],
        converged=res["converged"], n_steps=res["n_steps"], settings=s.to_dict(),
        mover_index=int(mover_index) if kind == "interstitial" else None,
        other=names[info["other"]] if info["other"] >= 0 else None,
        target=names[info["target"]] if info["target"] >= 0 else None,
        endpoints_converged=bool(conv_i and conv_f),
        tilt_deg={"initial": tilt_summary(res["images"][0], centre, lattice_constant_A),
                  "saddle": tilt_summary(res["images"][i_top], centre, lattice_constant_A)},
        provenance={"potential": pot.describe(), "lattice_constant_A": float(lattice_constant_A),
                    "configuration": config.describe(), "cell_shape": list(lat.shape),
                    "constraint": s.constraint, "free_radius_A": radius,
                    "n_free_atoms": int((~fixed).sum()), "n_atoms": len(ideal_i),
                    "endpoint_method": method, "endpoint_steps": steps,
                    "endpoint_refinements": refinements,
                    "initial_band": "given" if band is not None else s.interpolation,
                    "start": "given" if start is not None else "ideal",
                    "wall_s": time.time() - t0},
    )
    if not result.converged:
        log.warning("NEB %s %d->%d did not converge in %d steps", kind, site_a, site_b, s.max_steps)
    if not result.endpoints_converged:
        log.warning("NEB %s %d->%d: endpoint relaxation did not converge", kind, site_a, site_b)
    return result, res["images"]


ROTATION_KINDS = ("rot90", "flip")
DIVERGED_EV = 2.0
"""A rotation band with an image this far above both endpoints (eV) is reported as diverged."""


def rotation_endpoints(config: Configuration, site: int, kind: str, lattice_constant_A: float,
                       split_fraction: float = SPLIT_FRACTION, added_species: str = "same"):
    """Initial and final ASE structures of a bridge rotation in place (ideal geometry).

    The bridge on ``site`` starts split along ``(type + 1) % 3`` with the
    site's own atom on the + side (:func:`md_reference.md.structures.build_atoms`);
    ``rot90`` ends split along ``(type + 2) % 3`` (own atom on +), ``flip``
    with the two atoms swapped. Returns ``(initial, final, info)`` with the
    atom indices of the pair and the bridge composition (Br atoms).
    """
    if kind not in ROTATION_KINDS:
        raise ValueError(f"rotation kind {kind!r} unknown; valid kinds are {list(ROTATION_KINDS)}")
    lat = config.lattice
    s = int(site) % 3
    w, u = (s + 1) % 3, (s + 2) % 3
    defects = place_defects(config, 0, 1, where=[int(site)], added_species=added_species)
    initial = build_atoms(config, defects, lattice_constant_A, split_fraction=split_fraction, split_axis=w)
    pair = np.flatnonzero(initial.arrays["halide_site"] == int(site))
    own, added = int(pair[0]), int(pair[1])
    centre = lat.positions_A(lattice_constant_A)[int(site)]
    half = split_fraction * lattice_constant_A
    final = initial.copy()
    if kind == "rot90":
        e = np.zeros(3)
        e[u] = half
        final.positions[own] = centre + e
        final.positions[added] = centre - e
    else:
        final.positions[own] = initial.positions[added]
        final.positions[added] = initial.positions[own]
    sym = initial.get_chemical_symbols()
    n_br = int(sym[own] == "Br") + int(sym[added] == "Br")
    return initial, final, {"site": int(site), "kind": kind, "pair": [own, added], "n_br": n_br,
                            "axis_from": w, "axis_to": u if kind == "rot90" else w}


def run_rotation_neb(config: Configuration, site: int, kind: str, potential, lattice_constant_A: float,
                     settings: NEBSettings | None = None, *, added_species: str = "same") -> dict:
    """Relax both orientations and run a climbing-image NEB of a rotation in place (JSON-ready record).

    The far field is held as in :func:`run_neb` (atoms beyond the free radius
    of the site at their ideal positions); endpoints relax independently. The
    band starts with the pair turning on a circle about the site (a quarter
    turn for rot90, a half turn through the 90-degree orientation for a flip,
    whose straight path would make the two atoms meet), so a flip is at least
    a two-step path; the record says where the band's highest image lies. In a pure cell both endpoints are equivalent: ``dE`` is a check.
    """
    from dataclasses import replace  # noqa: PLC0415

    from ase.constraints import FixAtoms  # noqa: PLC0415

    s = settings or NEBSettings()
    # a bridge turning between its neighbours starts far from the band's minimum: small steps keep the
    # charge equilibration of ReaxFF-like potentials out of diverging images
    s = replace(s, endpoints="independent", max_step_A=0.05 if s.max_step_A is None else s.max_step_A).validate()
    pot, factory = _potential_factory(potential)
    t0 = time.time()
    ideal_i, ideal_f, info = rotation_endpoints(config, site, kind, lattice_constant_A, added_species=added_species)
    centre = config.lattice.positions_A(lattice_constant_A)[int(site)]
    L = np.diag(ideal_i.cell.array)
    radius = None
    fixed = np.zeros(len(ideal_i), dtype=bool)
    if s.constraint != "none":
        radius = s.free_radius_A if s.free_radius_A is not None else FREE_RADIUS_LATTICE * lattice_constant_A
        fixed = np.linalg.norm(_mic(ideal_i.positions - centre, L), axis=1) > radius
    initial, final = ideal_i.copy(), ideal_f.copy()
    calc = factory()
    try:
        initial.set_constraint(FixAtoms(mask=fixed))
        _, conv_i, _ = relax(initial, calc, s.endpoint_fmax_eV_A, s.endpoint_max_steps, s.optimizer)
        final.set_constraint(FixAtoms(mask=fixed))
        _, conv_f, _ = relax(final, calc, s.endpoint_fmax_eV_A, s.endpoint_max_steps, s.optimizer)
    finally:
        calc.close()
    # start band: the pair turns on a circle about the site (rot90: a quarter, flip: a half turn through
    # the 90-degree orientation), all other atoms interpolated linearly between the relaxed endpoints
    own, added = info["pair"]
    w, u = info["axis_from"], (int(site) % 3 + 2) % 3
    n = int(s.n_images)
    band = []
    p_i, p_f = initial.positions, initial.positions + _mic(final.positions - initial.positions, L)
    r = 0.5 * float(np.linalg.norm(_mic(p_i[own] - p_i[added], L)))
    turn = 0.5 * np.pi if kind == "rot90" else np.pi
    for m in range(1, n + 1):
        f = m / (n + 1)
        p = p_i + f * (p_f - p_i)
        th = f * turn
        v = np.zeros(3)
        v[w] = r * np.cos(th)
        v[u] = r * np.sin(th)
        p[own] = centre + v
        p[added] = centre - v
        band.append(p)
    res = neb_between(initial, final, factory, s, fixed=fixed, band=band)
    e = res["energies_eV"]
    top = float(e.max())
    i_top = int(np.argmax(e))
    # a band image far above both endpoints (the charge equilibration of a ReaxFF-like potential
    # failing on a distorted image) is a diverged band, not a barrier
    diverged = bool(not np.all(np.isfinite(e)) or top - max(float(e[0]), float(e[-1])) > DIVERGED_EV)
    if diverged:
        log.warning("rotation NEB %s on site %d diverged: an image lies %.1f eV above the endpoints",
                    kind, int(site), top - max(float(e[0]), float(e[-1])))
    # separation of the pair at the highest image
    d = _mic(res["images"][i_top].positions[own] - res["images"][i_top].positions[added], L)
    return {
        "schema": "halide-kmc/rotation-neb", "schema_version": 1, "units": {"energy": "eV", "length": "A"},
        "kind": kind, "site": int(site), "bridge": ("II", "IBr", "BrBr")[info["n_br"]], "n_br": info["n_br"],
        "barrier_forward_eV": top - float(e[0]), "barrier_backward_eV": top - float(e[-1]),
        "delta_E_eV": float(e[-1] - e[0]), "image_energies_eV": [float(v - e[0]) for v in e],
        "image_path_A": res["path_A"], "highest_image": i_top, "pair_separation_at_top_A": d.tolist(),
        "converged": bool(res["converged"]) and not diverged, "diverged": diverged,
        "endpoints_converged": bool(conv_i and conv_f),
        "n_steps": int(res["n_steps"]), "settings": s.to_dict(),
        "provenance": {"potential": pot.describe(), "lattice_constant_A": float(lattice_constant_A),
                       "configuration": config.describe(), "cell_shape": list(config.lattice.shape),
                       "free_radius_A": radius, "n_free_atoms": int((~fixed).sum()), "n_atoms": len(ideal_i),
                       "wall_s": time.time() - t0},
    }


def path_energies(images, potential) -> np.ndarray:
    """Energies (eV) of given structures (e.g. DFT path images) with a package potential."""
    from md_reference.md.calculator import LammpsCalculator  # noqa: PLC0415

    calc = LammpsCalculator(potential)
    out = []
    try:
        for img in images:
            a = img.copy()
            a.calc = calc
            out.append(float(a.get_potential_energy()))
    finally:
        calc.close()
    return np.asarray(out)


# --------------------------------------------------------------------------
# Sampling hops of a configuration and running them
# --------------------------------------------------------------------------
def candidate_defect_sites(config: Configuration, where="random", near_planes: int = 2) -> np.ndarray:
    """Sites a sampled defect may start on.

    ``where``: a rule of :data:`lattice.PLACEMENTS` ("random", "interface",
    "region:I", ...), ``"near-interface"`` (halide planes at most
    ``near_planes`` planes from an interface PbX2 plane of a heterojunction),
    or a sequence of site indices.
    """
    from lattice import candidate_sites  # noqa: PLC0415

    if not isinstance(where, str):
        sites = np.asarray(list(where), dtype=np.int64)
        if np.any((sites < 0) | (sites >= config.lattice.n_sites)):
            raise ValueError(f"site out of range [0, {config.lattice.n_sites})")
        return sites
    if where == "near-interface":
        if config.interface_planes is None:
            raise ValueError(f"where='near-interface' needs a heterojunction, not a {config.kind!r} configuration")
        dist = config.plane_distance_to_interface()[config.lattice.plane_index(config.axis)]
        return np.flatnonzero(dist <= int(near_planes))
    return candidate_sites(config, where)


def sample_hops(config: Configuration, kind: str, n_hops: int, seed: int = 0, where="random",
                near_planes: int = 2) -> list[dict]:
    """Distinct random hops ``{"site_a", "slot", "mover_index"}`` of one defect kind.

    Sites come from :func:`candidate_defect_sites`, slots uniformly from 0-7,
    and for kick-outs the moving bridge atom (0 = the site's own, 1 = the added
    one) uniformly; drawn with ``numpy.random.default_rng(seed)``.
    """
    if kind not in ("vacancy", "interstitial"):
        raise ValueError(f"unknown defect kind {kind!r}; valid kinds are ['interstitial', 'vacancy']")
    sites = candidate_defect_sites(config, where, near_planes)
    n_mi = 2 if kind == "interstitial" else 1
    n_total = sites.size * 8 * n_mi
    if n_hops < 1 or n_hops > n_total:
        raise ValueError(f"n_hops must lie in 1..{n_total} (distinct hops allowed by where={where!r}), got {n_hops}")
    rng = np.random.default_rng(seed)
    picks = rng.choice(n_total, size=n_hops, replace=False)
    out = []
    for p in picks:
        site_i, rest = divmod(int(p), 8 * n_mi)
        slot, mi = divmod(rest, n_mi)
        out.append({"site_a": int(sites[site_i]), "slot": int(slot), "mover_index": int(mi) if n_mi == 2 else 1})
    return out


def _hop_task(task):
    config, kind, hop, potential, a, settings, added_species = task
    import os  # noqa: PLC0415

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        res = run_neb(config, kind, hop["site_a"], hop["slot"], potential, a, NEBSettings(**settings),
                      mover_index=hop["mover_index"], added_species=added_species)
        return {"ok": True, "record": res.to_dict()}
    except Exception as exc:  # noqa: BLE001 - one failed hop must not lose the others
        return {"ok": False, "hop": hop, "error": f"{type(exc).__name__}: {exc}"}


def run_hops(config: Configuration, kind: str, hops: list[dict], potential, lattice_constant_A: float,
             settings: NEBSettings | None = None, *, added_species: str = "same", workers: int = 1,
             on_result=None) -> list[dict]:
    """NEB of several hops, in ``workers`` processes (one thread each).

    Returns one dict per hop, in the order of ``hops``: ``{"ok": True,
    "record": NEBResult dict}`` or ``{"ok": False, "hop", "error"}``.
    ``on_result(index, result)`` is called as each finishes.
    """
    s = (settings or NEBSettings()).validate()
    from md_reference.md.potentials import load_potential  # noqa: PLC0415

    pot = load_potential(potential)
    spec = potential if isinstance(potential, (str, dict)) else pot
    tasks = [(config, kind, h, spec, float(lattice_constant_A), s.to_dict(), added_species) for h in hops]
    out: list = [None] * len(tasks)
    if workers <= 1:
        for i, t in enumerate(tasks):
            out[i] = _hop_task(t)
            if on_result is not None:
                on_result(i, out[i])
        return out
    import os  # noqa: PLC0415
    from concurrent.futures import ProcessPoolExecutor, as_completed  # noqa: PLC0415
    from multiprocessing import get_context  # noqa: PLC0415

    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        with ProcessPoolExecutor(max_workers=int(workers), mp_context=get_context("spawn")) as ex:
            futs = {ex.submit(_hop_task, t): i for i, t in enumerate(tasks)}
            for f in as_completed(futs):
                i = futs[f]
                out[i] = f.result()
                if on_result is not None:
                    on_result(i, out[i])
    finally:
        if old is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = old
    return out


# --------------------------------------------------------------------------
# Validation against the DFT reference paths
# --------------------------------------------------------------------------
#: The four DFT reference hops (Pols et al. 2024 training set), in 3x3x3 cubic cells.
#: Sites on the lattice numbering of a 3x3x3 :class:`HalideSublattice`, read off the files.
REFERENCE_HOPS = {
    "V_I": {"stem": "udmb_CsPbI3_C_DMB_VI", "species": "I", "defect": "vacancy", "site_a": 51, "site_b": 50,
            "dft_barrier_eV": 0.208},
    "I_i": {"stem": "udmb_CsPbI3_C_DMB_II", "species": "I", "defect": "interstitial", "site_a": 51,
            "site_b": 77, "dft_barrier_eV": 0.170},
    "V_Br": {"stem": "udmb_CsPbBr3_C_DMB_VBr", "species": "Br", "defect": "vacancy", "site_a": 51,
             "site_b": 50, "dft_barrier_eV": 0.195},
    "Br_i": {"stem": "udmb_CsPbBr3_C_DMB_IBr", "species": "Br", "defect": "interstitial", "site_a": 51,
             "site_b": 77, "dft_barrier_eV": 0.200},
}


def load_reference_path(reference_dir: str | Path, stem: str) -> list:
    """The 7 DFT images of one path (ase.Atoms, info keys ``ref_kcal``, ``refimg``, ...)."""
    from ase.io import read  # noqa: PLC0415

    files = sorted(Path(reference_dir).glob(f"{stem}_[0-9][0-9].xyz"))
    if not files:
        raise FileNotFoundError(f"no DFT path images {stem}_NN.xyz in {reference_dir}")
    return [read(f) for f in files]


def map_atoms(images, reference) -> tuple[np.ndarray, float]:
    """Permutation putting ``images[0]`` in the atom order of ``reference`` (same species, nearest positions).

    Returns
    -------
    (perm, max_dev_A)
        ``images[k][perm]`` is in ``reference`` order; ``max_dev_A`` is the
        largest distance between ``images[0][perm]`` and ``reference``.
    """
    from scipy.optimize import linear_sum_assignment  # noqa: PLC0415

    L = np.diag(reference.cell.array)
    sym_r = np.asarray(reference.get_chemical_symbols())
    sym_i = np.asarray(images[0].get_chemical_symbols())
    if sorted(sym_r) != sorted(sym_i):
        raise ValueError("the image and the reference hold different atoms")
    perm = np.empty(len(reference), dtype=np.int64)
    dev = 0.0
    for el in np.unique(sym_r):
        ir = np.flatnonzero(sym_r == el)
        ii = np.flatnonzero(sym_i == el)
        d = np.linalg.norm(_mic(images[0].positions[ii][None] - reference.positions[ir][:, None], L), axis=2)
        rows, cols = linear_sum_assignment(d)
        perm[ir[rows]] = ii[cols]
        dev = max(dev, float(d[rows, cols].max()))
    return perm, dev


def _reference_hop(key: str, reference_dir: Path):
    spec = REFERENCE_HOPS[key]
    images = load_reference_path(reference_dir, spec["stem"])
    a = float(images[0].cell.lengths()[0]) / 3.0
    lat = HalideSublattice((3, 3, 3))
    config = build_pure(lat, spec["species"])
    slot = int(np.flatnonzero(lat.neighbours(spec["site_a"]) == spec["site_b"])[0])
    # The mover index whose ideal final geometry matches the last DFT image.
    best = None
    for mi in ((1,) if spec["defect"] == "vacancy" else (1, 0)):
        ini, fin, _ = hop_endpoints(config, spec["defect"], spec["site_a"], slot, a, mi)
        perm, dev0 = map_atoms(images, ini)
        last = images[-1][perm]
        dev1 = float(np.linalg.norm(_mic(last.positions - fin.positions, np.diag(fin.cell.array)), axis=1).max())
        if best is None or dev1 < best[3]:
            best = (mi, perm, dev0, dev1)
    mi, perm, dev0, dev1 = best
    return spec, images, a, config, slot, mi, perm, dev0, dev1


def validate_reference_paths(potential, reference_dir: str | Path, settings: NEBSettings | None = None,
                             hops=tuple(REFERENCE_HOPS), dft_band: bool = False) -> list[dict]:
    """ReaxFF (or any potential) on the four DFT reference hops, next to the DFT barriers.

    For each hop: the potential's energies of the DFT images relative to the
    path's reference image (``refimg``, as ``ref_kcal``), and a climbing-image
    NEB of the same hop in the same 3x3x3 cell (lattice constant of the files)
    with ``settings``; with ``dft_band`` the NEB also starts from the DFT
    images (intermediate images mapped onto the package's atom order; needs
    ``settings.n_images == 5``). The DFT images carry their own mid-shell tilts,
    which do not match the ReaxFF endpoints: measured, V_I at 1.25 a gave 0.370 eV
    (IDPP 0.376), every other case diverged to +27-69 eV; not recommended.

    Returns
    -------
    list of dict, one per hop: ``hop``, ``dft_barrier_eV``, ``dft_image_eV``,
    ``pot_image_eV``, ``pot_image_max_eV``, ``published_reaxff_image_eV``,
    ``neb`` (the :class:`NEBResult` dict), ``neb_barrier_eV`` (forward),
    ``neb_span_eV`` (max - min along the band, the DFT files' definition),
    ``map_dev_A`` (largest distance of the mapped DFT endpoint atoms from the
    ideal hop geometry).
    """
    s = (settings or NEBSettings()).validate()
    reference_dir = Path(reference_dir)
    out = []
    for key in hops:
        if key not in REFERENCE_HOPS:
            raise ValueError(f"unknown reference hop {key!r}; valid hops are {sorted(REFERENCE_HOPS)}")
        spec, images, a, config, slot, mi, perm, dev0, dev1 = _reference_hop(key, reference_dir)
        ref_id = images[0].info["refimg"]
        i_ref = next(i for i, im in enumerate(images) if im.info["id"] == ref_id)
        e = path_energies(images, potential)
        dft = np.array([im.info["ref_kcal"] for im in images]) * KCAL_MOL_EV
        pub = np.array([im.info.get("reaxff_pred_kcal", np.nan) for im in images]) * KCAL_MOL_EV
        band = None
        if dft_band:
            if s.n_images != len(images) - 2:
                raise ValueError(f"dft_band needs n_images = {len(images) - 2}, got {s.n_images}")
            band = [images[k][perm].positions for k in range(1, len(images) - 1)]
        res = run_neb(config, spec["defect"], spec["site_a"], slot, potential, a, s, mover_index=mi, band=band)
        ie = np.asarray(res.image_energies_eV)
        out.append({
            "hop": key, "defect": spec["defect"], "species": spec["species"], "lattice_constant_A": a,
            "dft_barrier_eV": float(dft.max()), "dft_image_eV": dft.tolist(),
            "pot_image_eV": (e - e[i_ref]).tolist(), "pot_image_max_eV": float((e - e[i_ref]).max()),
            "published_reaxff_image_eV": pub.tolist(),
            "neb_barrier_eV": res.barrier_forward_eV, "neb_barrier_backward_eV": res.barrier_backward_eV,
            "neb_span_eV": float(ie.max() - ie.min()), "neb_converged": res.converged,
            "map_dev_A": [dev0, dev1], "neb": res.to_dict(),
        })
    return out


def format_validation_table(rows: list[dict]) -> str:
    """Text table of :func:`validate_reference_paths` rows."""
    head = (f"{'hop':<6} {'DFT':>6} {'pot@DFT':>8} {'pub@DFT':>8} {'NEB fwd':>8} {'NEB bwd':>8} "
            f"{'span':>6} {'conv':>5}")
    lines = [head, "-" * len(head)]
    for r in rows:
        pub = np.asarray(r["published_reaxff_image_eV"])
        i_ref = int(np.argmin(np.asarray(r["dft_image_eV"])))
        lines.append(f"{r['hop']:<6} {r['dft_barrier_eV']:6.3f} {r['pot_image_max_eV']:8.3f} "
                     f"{float(np.nanmax(pub - pub[i_ref])):8.3f} {r['neb_barrier_eV']:8.3f} "
                     f"{r['neb_barrier_backward_eV']:8.3f} {r['neb_span_eV']:6.3f} {str(r['neb_converged']):>5}")
    return "\n".join(lines)


__all__ = [
    "CONSTRAINTS", "ENDPOINT_METHODS", "candidate_defect_sites", "run_hops", "sample_hops", "FREE_RADIUS_LATTICE", "NEBResult", "NEBSettings", "REFERENCE_HOPS",
    "format_validation_table", "hop_endpoints", "hop_midpoint_A", "load_reference_path", "map_atoms",
    "mirror_final", "mirror_operation", "neb_between", "path_energies", "pb_x_pb_bending_deg", "relax",
    "run_neb", "tilt_summary", "validate_reference_paths",
]
