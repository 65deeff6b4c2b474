"""Cluster-expansion energy of the halide sublattice (clusters from icet), in kernel-ready form.

Energy
------
Every halide site carries the icet point function of its species, ``s = +1``
for I and ``-1`` for Br (icet's trigonometric basis for a binary sublattice;
checked against icet when the space is built); a vacancy or a bridge has no
halide of the host on it and ``s = 0``. With the clusters ``c`` of the icet
:class:`icet.ClusterSpace` of cubic CsPbX3 (Cs and Pb inactive, X = I/Br)::

    E_CE = sum over clusters c of V(c)

    V(c) = J[orbit(c)] * prod_{i in c} s_i                 no defect on c (host term)
         = K_D[lambda(c, p)] * prod_{i in c, i != p} s_i   one defect of kind D on site p of c
         = 0                                               two or more defects on c

``J`` are the host effective cluster interactions per cluster (icet's
parameters divided by the orbit multiplicity: ``E_host / N_cells`` is the
icet prediction per primitive cell); ``K_D`` the defect terms of the
*local orbits* ``lambda(c, p)``: the classes of clusters that contain the
defect site ``p`` under the point group of that site (D4h, 16 operations).
A local orbit of a pair is one shell of neighbours of the defect, one of a
triplet a pair of neighbours, e.g. two X of one PbX6 octahedron around the
defect, so "5 I + 1 Br" and "5 Br + 1 I" around a Pb are different energies.
The singlet local orbit (the defect alone) is the defect's constant. The
bridge's terms do not depend on its orientation or on its own composition
(the catalog's ``bridge_eV`` carries the composition). Defect-defect
interactions beyond this are zero here (the pair energies of the catalog's
energy model still apply, and the two energies add).

Because ``E_CE`` is a function of the configuration, rates from its
differences obey detailed balance (:mod:`rates.ratelaw`).

Kernel form
-----------
:func:`kernel_tables` lists, per site type ``s``, every cluster that contains
the type-``s`` site at the origin (that site first), as doubled-coordinate
offsets of its other sites (:mod:`lattice.sublattice`), with its host
coefficient and the defect coefficient for a defect on each of its sites.
:func:`delta_energy_ce` evaluates the energy change of a hop from these
arrays (no icet in the loop); :func:`total_energy_ce` is the brute-force sum
the tests and the NumPy reference use. On lattices with more than ``reach + 2``
cells per axis the engine keeps per-site fields (:func:`ce_field_init`,
:func:`ce_field_change`) from which :func:`ce_field_channels` takes the 16
channel energies with a few look-ups; coefficients are rounded to multiples of
:data:`COEFF_QUANTUM_EV` so that all these sums are exact.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import common.numba_cache  # noqa: F401 - before numba: a writable kernel cache
from numba import njit

from lattice.environment import site_coords, site_of, wrap
from lattice.species import BR, BRIDGE, DEFECT_KINDS, I, VACANCY

LATTICE_NAME = "cubic-CsPbX3-Pm-3m-halide-sublattice"
A_REF = 6.0
"""Lattice constant (angstrom) of the reference cell the cluster space is built on; cutoffs are in units of a."""
MAX_ORDER = 4
DEFECT_KINDS_CE = DEFECT_KINDS
"""Defect kinds with CE terms, in the order of the kernel tables (those of :mod:`lattice.species`)."""
HOST_SPIN = {I: 1.0, BR: -1.0, VACANCY: 0.0, BRIDGE: 0.0}


class ClusterExpansionError(ValueError):
    """A cluster-expansion model is malformed or does not fit this lattice; the message names the field."""


# --------------------------------------------------------------------------
# Cluster space (icet) and its clusters in doubled coordinates
# --------------------------------------------------------------------------
def primitive_structure(a: float = A_REF):
    """ASE Atoms of cubic CsPbI3: Pb at the origin, X of type 0, 1, 2 at a/2 along x, y, z."""
    from ase import Atoms  # noqa: PLC0415

    return Atoms("CsPbI3", scaled_positions=[(0.5, 0.5, 0.5), (0, 0, 0), (0.5, 0, 0), (0, 0.5, 0), (0, 0, 0.5)],
                 cell=[a, a, a], pbc=True)


def _check_cutoffs(cutoffs) -> tuple[float, ...]:
    try:
        cut = tuple(float(c) for c in cutoffs)
    except (TypeError, ValueError):
        raise ClusterExpansionError(f"cutoffs_a must be a list of numbers, got {cutoffs!r}") from None
    if not 1 <= len(cut) <= MAX_ORDER - 1:
        raise ClusterExpansionError(f"cutoffs_a needs 1 to {MAX_ORDER - 1} values (pairs, triplets, "
                                    f"quadruplets), got {len(cut)}")
    if not all(math.isfinite(c) and 0.5 < c <= 3.0 for c in cut):
        raise ClusterExpansionError(f"cutoffs_a {list(cut)} must lie in (0.5, 3.0] lattice constants")
    return cut


@lru_cache(maxsize=8)
def cluster_space(cutoffs_a: tuple[float, ...]):
    """The icet ClusterSpace of the halide sublattice (I/Br) with cutoffs in units of a."""
    from icet import ClusterSpace  # noqa: PLC0415

    cut = _check_cutoffs(cutoffs_a)
    cs = ClusterSpace(primitive_structure(), [c * A_REF for c in cut],
                      [["Cs"], ["Pb"], ["I", "Br"], ["I", "Br"], ["I", "Br"]])
    _check_host_spin(cs)
    return cs


def _doubled(pos: np.ndarray) -> tuple[int, int, int]:
    d = np.rint(2.0 * np.asarray(pos, dtype=float) / A_REF).astype(np.int64)
    if np.max(np.abs(2.0 * np.asarray(pos) / A_REF - d)) > 1e-6 or int(np.sum(d % 2)) != 1:
        raise ClusterExpansionError(f"icet cluster site at {pos} is not a halide site")  # pragma: no cover
    return int(d[0]), int(d[1]), int(d[2])


def _site_type(p) -> int:
    return [int(v) % 2 for v in p].index(1)


_ROT = ((0, 1, 2), (1, 2, 0), (2, 0, 1))
"""Axis permutation that maps a type-s site onto a type-0 site: new axis a is old axis _ROT[s][a]."""


def _site_group_ops():
    """The 16 signed permutations that fix a type-0 site (axis 0 kept): its point group D4h."""
    ops = []
    for perm in ((0, 1, 2), (0, 2, 1)):
        for signs in itertools.product((1, -1), repeat=3):
            ops.append((perm, signs))
    return ops


_OPS = _site_group_ops()


def local_canonical(cluster, p) -> tuple:
    """Canonical form of ``cluster`` (doubled points) seen from its site ``p``: sorted offsets, site group reduced."""
    s = _site_type(p)
    rel = [tuple(int(q[_ROT[s][a]]) - int(p[_ROT[s][a]]) for a in range(3)) for q in cluster]
    best = None
    for perm, signs in _OPS:
        img = tuple(sorted(tuple(signs[a] * r[perm[a]] for a in range(3)) for r in rel))
        if best is None or img < best:
            best = img
    return best


@dataclass(frozen=True)
class Orbit:
    """One icet orbit: its clusters through the origin site of each type, as doubled-coordinate offsets."""

    index: int
    order: int
    radius_a: float
    multiplicity: int
    through: tuple  # through[s] = tuple of clusters (tuple of offsets, the origin first) containing site e_s


@lru_cache(maxsize=8)
def orbits_of(cutoffs_a: tuple[float, ...]) -> tuple[Orbit, ...]:
    """The non-empty orbits (order >= 1) of :func:`cluster_space`, in icet's orbit order."""
    cs = cluster_space(cutoffs_a)
    prim = cs.primitive_structure
    pb = [i for i, z in enumerate(prim.numbers) if z == 82]
    origin = prim.positions[pb[0]]
    out = []
    mult = cs.get_multiplicities()
    for oi in range(len(cs.orbit_list)):
        orb = cs.orbit_list.get_orbit(oi)
        through = [set(), set(), set()]
        for cl in orb.clusters:
            pts = [_doubled(np.asarray(q) - origin) for q in cl.positions]
            for p in pts:
                s = _site_type(p)
                shift = tuple((1 if a == s else 0) - p[a] for a in range(3))
                moved = [tuple(q[a] + shift[a] for a in range(3)) for q in pts]
                origin_site = tuple(1 if a == s else 0 for a in range(3))
                others = sorted(tuple(q[a] - origin_site[a] for a in range(3)) for q in moved if q != origin_site)
                through[s].add(((0, 0, 0),) + tuple(others))
        n_through = sum(len(t) for t in through)
        if n_through != orb.order * len(orb.clusters):  # pragma: no cover - geometry invariant
            raise ClusterExpansionError(f"orbit {oi}: {n_through} clusters through the sites, expected "
                                        f"{orb.order} x {len(orb.clusters)}")
        out.append(Orbit(index=oi, order=int(orb.order), radius_a=float(orb.radius) / A_REF,
                         multiplicity=int(mult[oi + 1]), through=tuple(tuple(sorted(t)) for t in through)))
    return tuple(out)


@lru_cache(maxsize=8)
def local_orbits_of(cutoffs_a: tuple[float, ...]) -> tuple[tuple, ...]:
    """The local orbits around a defect site: ``(orbit index, canonical offsets)`` in a fixed order."""
    seen = {}
    for orb in orbits_of(cutoffs_a):
        for cl in orb.through[0]:
            origin = (1, 0, 0)
            pts = [tuple(o[a] + origin[a] for a in range(3)) for o in cl]
            key = (orb.index, local_canonical(pts, origin))
            seen.setdefault(key, None)
    return tuple(sorted(seen, key=lambda k: (len(k[1]), k[0], k[1])))


def fingerprint(cutoffs_a) -> str:
    """Hash of the lattice, the orbits and the local orbits (what a stored model must match)."""
    cut = _check_cutoffs(cutoffs_a)
    doc = {"lattice": LATTICE_NAME, "orbits": [(o.order, round(o.radius_a, 6), o.multiplicity, o.through)
                                                for o in orbits_of(cut)],
           "local": local_orbits_of(cut)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=list).encode()).hexdigest()


# --------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------
@dataclass
class ClusterExpansion:
    """Host ECIs per icet orbit and defect terms per local orbit (eV per cluster).

    ``host_eci_eV[i]`` belongs to :func:`orbits_of` ``[i]``; ``defect_eV[kind][j]`` to
    :func:`local_orbits_of` ``[j]`` (kinds ``"vacancy"``, ``"interstitial"``). ``E0_eV`` is the
    zerolet per primitive cell (it does not enter energy differences at fixed size).
    """

    cutoffs_a: tuple
    host_eci_eV: np.ndarray
    defect_eV: dict
    E0_eV: float = 0.0
    host_err_eV: np.ndarray | None = None
    defect_err_eV: dict = field(default_factory=dict)
    x_I_range: tuple = (0.0, 1.0)
    fit: dict = field(default_factory=dict)

    def __post_init__(self):
        self.cutoffs_a = _check_cutoffs(self.cutoffs_a)
        n_orb = len(orbits_of(self.cutoffs_a))
        n_loc = len(local_orbits_of(self.cutoffs_a))
        self.host_eci_eV = np.asarray(self.host_eci_eV, dtype=np.float64)
        if self.host_eci_eV.shape != (n_orb,):
            raise ClusterExpansionError(f"host_eci_eV has {self.host_eci_eV.size} values, the cluster space "
                                        f"with cutoffs {list(self.cutoffs_a)} has {n_orb} orbits")
        if not np.all(np.isfinite(self.host_eci_eV)):
            raise ClusterExpansionError("host_eci_eV has non-finite values")
        d = {}
        for kind in DEFECT_KINDS_CE:
            v = np.asarray(self.defect_eV.get(kind, np.zeros(n_loc)), dtype=np.float64)
            if v.shape != (n_loc,):
                raise ClusterExpansionError(f"defect_eV.{kind} has {v.size} values, expected {n_loc} local orbits")
            if not np.all(np.isfinite(v)):
                raise ClusterExpansionError(f"defect_eV.{kind} has non-finite values")
            d[kind] = v
        extra = set(self.defect_eV) - set(DEFECT_KINDS_CE)
        if extra:
            raise ClusterExpansionError(f"defect_eV has unknown defect kinds {sorted(extra)}; valid: "
                                        f"{list(DEFECT_KINDS_CE)}")
        self.defect_eV = d
        lo, hi = (float(v) for v in self.x_I_range)
        if not 0.0 <= lo <= hi <= 1.0:
            raise ClusterExpansionError(f"x_I_range {list(self.x_I_range)} must satisfy 0 <= lo <= hi <= 1")
        self.x_I_range = (lo, hi)

    @classmethod
    def zeros(cls, cutoffs_a) -> "ClusterExpansion":
        cut = _check_cutoffs(cutoffs_a)
        return cls(cut, np.zeros(len(orbits_of(cut))), {})

    @property
    def orbits(self) -> tuple[Orbit, ...]:
        return orbits_of(self.cutoffs_a)

    @property
    def local_orbits(self) -> tuple:
        return local_orbits_of(self.cutoffs_a)

    def check_composition(self, x_I: float) -> list[str]:
        """Warnings for a composition outside the range the fit saw."""
        lo, hi = self.x_I_range
        if not lo - 1e-9 <= x_I <= hi + 1e-9:
            return [f"cluster expansion extrapolates: x_I = {x_I:.3f} lies outside the fitted range [{lo}, {hi}]"]
        return []

    # -- serialisation (the catalog's "cluster_expansion" block)
    def to_dict(self) -> dict:
        def err(arr, i):
            return None if arr is None or not math.isfinite(float(arr[i])) else float(arr[i])

        return {
            "lattice": LATTICE_NAME,
            "basis": "icet trigonometric point functions: I = +1, Br = -1; a defect site is 0",
            "cutoffs_a": list(self.cutoffs_a),
            "fingerprint": fingerprint(self.cutoffs_a),
            "E0_eV_per_cell": float(self.E0_eV),
            "x_I_range": list(self.x_I_range),
            "orbits": [{"index": o.index, "order": o.order, "radius_a": round(o.radius_a, 6),
                        "multiplicity": o.multiplicity, "eci_eV": float(self.host_eci_eV[i]),
                        "eci_err_eV": err(self.host_err_eV, i)} for i, o in enumerate(self.orbits)],
            "defect_terms": {kind: [{"local_orbit": j, "orbit": lo[0], "offsets": [list(v) for v in lo[1]],
                                     "value_eV": float(self.defect_eV[kind][j]),
                                     "error_eV": err(self.defect_err_eV.get(kind), j)}
                                    for j, lo in enumerate(self.local_orbits)] for kind in DEFECT_KINDS_CE},
            "fit": json.loads(json.dumps(self.fit, default=float)),
        }

    @classmethod
    def from_dict(cls, d: dict, where: str = "cluster_expansion") -> "ClusterExpansion":
        if not isinstance(d, dict):
            raise ClusterExpansionError(f"{where}: must be an object")
        if d.get("lattice") != LATTICE_NAME:
            raise ClusterExpansionError(f"{where}.lattice is {d.get('lattice')!r}; this package evaluates "
                                        f"{LATTICE_NAME!r} only")
        cut = _check_cutoffs(d.get("cutoffs_a"))
        if d.get("fingerprint") != fingerprint(cut):
            raise ClusterExpansionError(f"{where}.fingerprint does not match the cluster space this package builds "
                                        f"for cutoffs {list(cut)} (another lattice or icet orbit order)")
        orbs = d.get("orbits")
        n_orb = len(orbits_of(cut))
        if not isinstance(orbs, list) or len(orbs) != n_orb:
            raise ClusterExpansionError(f"{where}.orbits must list the {n_orb} orbits of the cluster space")
        for i, (o, mine) in enumerate(zip(orbs, orbits_of(cut))):
            if not isinstance(o, dict) or o.get("order") != mine.order:
                raise ClusterExpansionError(f"{where}.orbits[{i}] does not match orbit {i} (order {mine.order})")
        eci = [_num(o.get("eci_eV"), f"{where}.orbits[{i}].eci_eV") for i, o in enumerate(orbs)]
        eci_err = [_num(o.get("eci_err_eV"), f"{where}.orbits[{i}].eci_err_eV", True) for i, o in enumerate(orbs)]
        terms = d.get("defect_terms", {})
        if not isinstance(terms, dict):
            raise ClusterExpansionError(f"{where}.defect_terms must be an object")
        n_loc = len(local_orbits_of(cut))
        dv, de = {}, {}
        for kind, rows in terms.items():
            if kind not in DEFECT_KINDS_CE:
                raise ClusterExpansionError(f"{where}.defect_terms has unknown defect kind {kind!r}; valid: "
                                            f"{list(DEFECT_KINDS_CE)}")
            if not isinstance(rows, list) or len(rows) != n_loc:
                raise ClusterExpansionError(f"{where}.defect_terms.{kind} must list the {n_loc} local orbits")
            dv[kind] = [_num(r.get("value_eV") if isinstance(r, dict) else None,
                             f"{where}.defect_terms.{kind}[{j}].value_eV") for j, r in enumerate(rows)]
            de[kind] = np.array([_num(r.get("error_eV"), f"{where}.defect_terms.{kind}[{j}].error_eV", True)
                                 for j, r in enumerate(rows)])
        x_rng = d.get("x_I_range", [0.0, 1.0])
        try:
            return cls(cut, np.array(eci), dv, E0_eV=_num(d.get("E0_eV_per_cell", 0.0), f"{where}.E0_eV_per_cell"),
                       host_err_eV=np.array(eci_err), defect_err_eV=de, x_I_range=tuple(x_rng),
                       fit=dict(d.get("fit") or {}))
        except (TypeError, ValueError) as exc:
            raise ClusterExpansionError(f"{where}: {exc}") from None


def _num(v, where: str, allow_none: bool = False) -> float:
    if v is None and allow_none:
        return math.nan
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        raise ClusterExpansionError(f"{where}: expected a finite number, got {v!r}")
    return float(v)


# --------------------------------------------------------------------------
# Kernel tables
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class CETables:
    """Arrays the kernels read (see :func:`kernel_tables`); ``n[s] == 0`` everywhere means no CE."""

    n: np.ndarray  # (3,) entries per site type
    order: np.ndarray  # (3, E) cluster size
    off: np.ndarray  # (3, E, 3, 3) offsets of the other sites (doubled coordinates)
    host: np.ndarray  # (3, E) J of the cluster
    dfc: np.ndarray  # (3, E, 2, 4) K_D for a defect of kind D on position p (0: the origin site)
    spin: np.ndarray  # (4,) point function per site state
    reach: np.ndarray  # (1,) largest |offset| per axis (doubled coordinates)
    # the CE patch of a type-s centre A: every site the 8 hops of A need (see _patch_tables)
    p_n: np.ndarray = None  # (3,) patch size per type
    p_off: np.ndarray = None  # (3, P, 3) doubled offsets from A
    p_bk: np.ndarray = None  # (3, 8) patch index of B_k
    p_typ: np.ndarray = None  # (3, 8) type of B_k
    cache_key: np.ndarray = None  # (C, W) int64 exact keys (-1: empty)
    cache_val: np.ndarray = None  # (C, 16) float64 dE of the 16 channels
    scratch: np.ndarray = None  # (P + 2 W,) int64 gathered states and key words
    de16: np.ndarray = None  # (16,) float64 scratch of the kernels
    # clusters through A that also contain B_k (the hop's pair): entry e of type s and position of B_k in it
    sh_n: np.ndarray = None  # (3, 8)
    sh_e: np.ndarray = None  # (3, 8, M)
    sh_j: np.ndarray = None  # (3, 8, M)

    def as_tuple(self, site_field: np.ndarray | None = None, deltas: np.ndarray | None = None) -> tuple:
        """The arrays in the order the kernels index them; the last two are the per-site field of
        :func:`ce_field_init` (empty: the kernels evaluate the clusters directly) and the site-index
        steps of :func:`field_deltas` for that lattice."""
        fld = np.zeros(0) if site_field is None else site_field
        dl = np.zeros((3, 1, 3), np.int64) if deltas is None else deltas
        return (self.n, self.order, self.off, self.host, self.dfc, self.spin, self.reach,
                self.p_n, self.p_off, self.p_bk, self.p_typ, self.cache_key, self.cache_val,
                self.scratch, self.de16, self.sh_n, self.sh_e, self.sh_j, fld, dl)

    def field_deltas(self, dims) -> np.ndarray:
        """(3, E, 3) int64: site-index step from a type-s site to the other sites of its cluster entries,
        valid for a site at least ``reach`` half-cells away from every boundary of a lattice of ``dims``."""
        d = np.asarray(dims, dtype=np.int64)
        out = np.zeros((3, self.off.shape[1], 3), np.int64)

        def index(c):
            t = int(np.argmax(c % 2))
            return int(((c[0] // 2 * d[1] + c[1] // 2) * d[2] + c[2] // 2) * 3 + t)

        for s in range(3):
            c0 = 2 * (d // 2)
            c0[s] += 1
            for e in range(int(self.n[s])):
                for j in range(int(self.order[s, e]) - 1):
                    out[s, e, j] = index(c0 + self.off[s, e, j]) - index(c0)
        return out

    @property
    def active(self) -> bool:
        return bool(self.n.sum() > 0)


CACHE_BITS = 12
"""Entries of the direct-mapped dE cache of a CE (keyed by the exact states of the patch)."""
COEFF_QUANTUM_EV = 2.0 ** -40
"""Coefficients enter the kernels rounded to multiples of this (9.1e-13 eV): every cluster value is
+-J or +-K, so sums of them are exact in float64 (below 2**13 eV) in any order, and an energy change
summed from per-site fields kept up to date hop by hop equals the one summed cluster by cluster."""
FIELD_COMPONENTS = 3
"""Per-site field (:func:`ce_field_init`): the coefficient of the site's spin, and its energy as a
vacancy and as a bridge, each summed over the clusters through the site."""


def _with_patch(n, order, off, host, dfc, spin, reach) -> CETables:
    from lattice.sublattice import NEIGHBOUR_OFFSETS, NEIGHBOUR_TYPES  # noqa: PLC0415

    p_offs = []
    p_bk = np.zeros((3, 8), np.int64)
    p_typ = np.zeros((3, 8), np.int64)
    for s in range(3):
        # A, its 8 neighbours, and every site of a cluster through A or through one of them
        index = {(0, 0, 0): 0}

        def ix(o, index=index):
            o = tuple(int(v) for v in o)
            if o not in index:
                index[o] = len(index)
            return index[o]

        for k in range(8):
            p_bk[s, k] = ix(NEIGHBOUR_OFFSETS[s, k])
            p_typ[s, k] = NEIGHBOUR_TYPES[s, k]
        for e in range(int(n[s])):
            for j in range(int(order[s, e]) - 1):
                ix(off[s, e, j])
        for k in range(8):
            t = int(NEIGHBOUR_TYPES[s, k])
            for e in range(int(n[t])):
                for j in range(int(order[t, e]) - 1):
                    ix(NEIGHBOUR_OFFSETS[s, k] + off[t, e, j])
        p_offs.append(sorted(index, key=index.get))
    p_n = np.array([len(o) for o in p_offs], np.int64)
    p_off = np.zeros((3, max(p_n), 3), np.int64)
    for s in range(3):
        p_off[s, :p_n[s]] = p_offs[s]
    words = (2 * int(max(p_n)) + 63) // 64 + 1  # 2 bits per state, plus one word of (s, kind, s0, s1)
    active = int(n.sum()) > 0
    cap = (1 << CACHE_BITS) if active else 1
    shared = [[[] for _ in range(8)] for _ in range(3)]
    for s in range(3):
        for k in range(8):
            ob = tuple(int(v) for v in NEIGHBOUR_OFFSETS[s, k])
            for e in range(int(n[s])):
                for j in range(int(order[s, e]) - 1):
                    if tuple(int(v) for v in off[s, e, j]) == ob:
                        shared[s][k].append((e, j + 1))
    m = max(1, max(len(shared[s][k]) for s in range(3) for k in range(8)))
    sh_n = np.zeros((3, 8), np.int64)
    sh_e = np.zeros((3, 8, m), np.int64)
    sh_j = np.zeros((3, 8, m), np.int64)
    for s in range(3):
        for k in range(8):
            sh_n[s, k] = len(shared[s][k])
            for i, (e, j) in enumerate(shared[s][k]):
                sh_e[s, k, i] = e
                sh_j[s, k, i] = j
    return CETables(n, order, off, host, dfc, spin, reach, p_n, p_off, p_bk, p_typ,
                    np.full((cap, words), -1, np.int64), np.zeros((cap, 16)),
                    np.zeros(int(max(p_n)) + 2 * words, np.int64), np.zeros(16), sh_n, sh_e, sh_j)


def empty_tables() -> CETables:
    """Tables of no cluster expansion (the kernels skip it)."""
    return _with_patch(np.zeros(3, np.int64), np.zeros((3, 1), np.int64), np.zeros((3, 1, 3, 3), np.int64),
                       np.zeros((3, 1)), np.zeros((3, 1, 2, 4)), np.zeros(4), np.zeros(1, np.int64))


def _quantise(v):
    return np.round(np.asarray(v, dtype=np.float64) / COEFF_QUANTUM_EV) * COEFF_QUANTUM_EV


def kernel_tables(model: ClusterExpansion | None) -> CETables:
    """Export ``model`` to :class:`CETables` (clusters with all coefficients zero are dropped;
    coefficients rounded to multiples of :data:`COEFF_QUANTUM_EV`)."""
    if model is None:
        return empty_tables()
    local_index = {lo: j for j, lo in enumerate(model.local_orbits)}
    rows = [[], [], []]
    for i, orb in enumerate(model.orbits):
        for s in range(3):
            origin = tuple(1 if a == s else 0 for a in range(3))
            for cl in orb.through[s]:
                pts = [tuple(o[a] + origin[a] for a in range(3)) for o in cl]
                kd = np.zeros((2, 4))
                for p_idx, p in enumerate(pts):
                    j = local_index[(orb.index, local_canonical(pts, p))]
                    for kk, kind in enumerate(DEFECT_KINDS_CE):
                        kd[kk, p_idx] = model.defect_eV[kind][j]
                kd = _quantise(kd)
                h = float(_quantise(model.host_eci_eV[i]))
                if h == 0.0 and not np.any(kd):
                    continue
                rows[s].append((orb.order, cl[1:], h, kd))
    n_max = max(1, max(len(r) for r in rows))
    n = np.array([len(r) for r in rows], dtype=np.int64)
    order = np.zeros((3, n_max), np.int64)
    off = np.zeros((3, n_max, 3, 3), np.int64)
    host = np.zeros((3, n_max))
    dfc = np.zeros((3, n_max, 2, 4))
    reach = 0
    for s in range(3):
        for e, (od, others, h, kd) in enumerate(rows[s]):
            order[s, e] = od
            for j, o in enumerate(others):
                off[s, e, j] = o
                reach = max(reach, max(abs(v) for v in o))
            host[s, e] = h
            dfc[s, e] = kd
    spin = np.array([HOST_SPIN[st] for st in range(4)])
    return _with_patch(n, order, off, host, dfc, spin, np.array([reach], np.int64))


def _check_host_spin(cs) -> None:
    """Raise if icet's point functions are not I = +1, Br = -1 (the convention of :data:`HOST_SPIN`)."""
    smap = cs.species_maps[2]
    got = {z: cs.evaluate_cluster_function(2, 0, smap[z]) for z in (53, 35)}
    if not (math.isclose(got[53], 1.0) and math.isclose(got[35], -1.0)):  # pragma: no cover - icet convention
        raise ClusterExpansionError(f"icet point functions I={got[53]}, Br={got[35]}; expected +1, -1")


# --------------------------------------------------------------------------
# Energies
# --------------------------------------------------------------------------
_FLAT_CACHE: dict = {}


def _flat_clusters(dims, tables: CETables):
    """Every (site, entry) cluster of a lattice as rows of site indices (-1 padded) and coefficients."""
    dims = tuple(int(v) for v in dims)
    key = (id(tables), dims)
    hit = _FLAT_CACHE.get(key)
    if hit is not None and hit[0] is tables:
        return hit[1]
    d = np.asarray(dims, dtype=np.int64)
    n_sites = 3 * int(np.prod(d))
    site = np.arange(n_sites)
    typ = site % 3
    cell = site // 3
    xyz = np.stack([2 * (cell // (d[1] * d[2])), 2 * ((cell // d[2]) % d[1]), 2 * (cell % d[2])], axis=1)
    xyz[np.arange(n_sites), typ] += 1
    rows, host, dfc, weight = [], [], [], []
    for s in range(3):
        sel = np.nonzero(typ == s)[0]
        for e in range(int(tables.n[s])):
            od = int(tables.order[s, e])
            idx = np.full((sel.size, MAX_ORDER), -1, dtype=np.int64)
            idx[:, 0] = sel
            for j in range(od - 1):
                q = (xyz[sel] + tables.off[s, e, j]) % (2 * d)
                idx[:, j + 1] = ((q[:, 0] // 2 * d[1] + q[:, 1] // 2) * d[2] + q[:, 2] // 2) * 3 \
                    + np.argmax(q % 2, axis=1)
            rows.append(idx)
            host.append(np.full(sel.size, tables.host[s, e]))
            dfc.append(np.broadcast_to(tables.dfc[s, e], (sel.size, 2, 4)))
            weight.append(np.full(sel.size, 1.0 / od))
    out = (np.concatenate(rows), np.concatenate(host), np.concatenate(dfc), np.concatenate(weight))
    if len(_FLAT_CACHE) > 16:
        _FLAT_CACHE.clear()
    _FLAT_CACHE[key] = (tables, out)
    return out


def total_energy_ce(occ: np.ndarray, dims, tables: CETables) -> float:
    """Brute-force ``E_CE`` of a configuration: every cluster of the lattice evaluated from scratch
    (each cluster is listed once per site and weighted 1/order); for tests and the reference engine."""
    if not tables.active:
        return 0.0
    idx, host, dfc, weight = _flat_clusters(dims, tables)
    occ_ext = np.append(np.asarray(occ, dtype=np.int64), 4)  # state 4: padding (spin 1, no defect)
    spin_ext = np.append(tables.spin, 1.0)
    st = occ_ext[idx]
    is_def = (st == VACANCY) | (st == BRIDGE)
    nd = is_def.sum(axis=1)
    spins = spin_ext[st]
    val = np.where(nd == 0, host * spins.prod(axis=1), 0.0)
    one = nd == 1
    if np.any(one):
        p = np.argmax(is_def[one], axis=1)
        rows = np.nonzero(one)[0]
        kind = (st[rows, p] == BRIDGE).astype(np.int64)
        rest = np.where(is_def[one], 1.0, spins[one]).prod(axis=1)
        val[rows] = dfc[rows, kind, p] * rest
    return float(np.sum(val * weight))


@njit(cache=True, inline="always")
def _add_site(st, pos, nd, kind, p, prod, spin):
    """Account one site in state ``st`` at cluster position ``pos``: defects counted, host spins multiplied."""
    if st >= VACANCY:
        return nd + 1, 1 if st == BRIDGE else 0, pos, prod
    return nd, kind, p, prod * spin[st]


@njit(cache=True, inline="always")
def _value(nd, kind, pos, prod, h, dfc, s, e):
    if nd == 0:
        return h * prod
    if nd == 1:
        return dfc[s, e, kind, pos] * prod
    return 0.0


@njit(cache=True)
def delta_energy_ce(occ, dims, xa, ya, za, sa, xb, yb, zb, sb, site_a, site_b, a_new, b_new, ce):
    """``E_CE(after) - E_CE(before)`` when site A takes state ``a_new`` and site B ``b_new``.

    ``ce`` is :meth:`CETables.as_tuple`. Sums V(after) - V(before) over every cluster that
    contains A, then over every cluster that contains B but not A (scalar products, no temporaries).
    """
    n_ent, order, off, host, dfc, spin = ce[0], ce[1], ce[2], ce[3], ce[4], ce[5]
    n2x = 2 * dims[0]
    n2y = 2 * dims[1]
    n2z = 2 * dims[2]
    de = 0.0
    for side in range(2):
        if side == 0:
            x, y, z, s, site_c, new_c = xa, ya, za, sa, site_a, a_new
            site_o, new_o = site_b, b_new
        else:
            x, y, z, s, site_c, new_c = xb, yb, zb, sb, site_b, b_new
            site_o, new_o = site_a, a_new
        c0 = occ[site_c]
        for e in range(n_ent[s]):
            od = order[s, e]
            # before / after: number of defects, kind and position of the last one, product of host spins
            nd0 = 0
            nd1 = 0
            k0 = 0
            k1 = 0
            p0 = 0
            p1 = 0
            pr0 = 1.0
            pr1 = 1.0
            skip = False
            for j in range(od - 1):
                qx = wrap(x + off[s, e, j, 0], n2x)
                qy = wrap(y + off[s, e, j, 1], n2y)
                qz = wrap(z + off[s, e, j, 2], n2z)
                q = _site_index(qx, qy, qz, dims)
                st = occ[q]
                st1 = st
                if q == site_o:
                    if side == 1:
                        skip = True  # counted with A
                        break
                    st1 = new_o
                nd0, k0, p0, pr0 = _add_site(st, j + 1, nd0, k0, p0, pr0, spin)
                nd1, k1, p1, pr1 = _add_site(st1, j + 1, nd1, k1, p1, pr1, spin)
            if skip:
                continue
            nd0, k0, p0, pr0 = _add_site(c0, 0, nd0, k0, p0, pr0, spin)
            nd1, k1, p1, pr1 = _add_site(new_c, 0, nd1, k1, p1, pr1, spin)
            h = host[s, e]
            de += _value(nd1, k1, p1, pr1, h, dfc, s, e) - _value(nd0, k0, p0, pr0, h, dfc, s, e)
    return de


@njit(cache=True)
def delta_energy_ce_channels(occ, dims, x, y, z, s, is_vac, s0, s1, ce, out):
    """CE dE of the 16 hop channels ``slot * 8 + k`` of a defect on A = (x, y, z), type ``s``.

    Vacancy (``is_vac``): A -> the species on B_k, B_k -> vacancy (slot 0; slot 1 unused).
    Bridge (s0, s1): A -> the remaining atom (s1 for slot 0, s0 for slot 1), B_k -> bridge.
    Channels whose B_k holds a defect get 0 (they are closed). The states of the CE patch
    are gathered once; the 16 values are looked up in the exact-key cache of ``ce`` (keyed
    by the patch states, the site type and the defect) or, on a miss, computed channel by
    channel with :func:`delta_energy_ce` and stored: a hit returns the very values a miss
    computed, so results do not depend on the cache. Returns True
    when the patch could be used (no two patch offsets on one site of the lattice); else the
    caller falls back to :func:`delta_energy_ce` per channel.
    """
    p_n, p_off, p_bk, p_typ = ce[7], ce[8], ce[9], ce[10]
    ckey, cval, scratch = ce[11], ce[12], ce[13]
    n2x = 2 * dims[0]
    n2y = 2 * dims[1]
    n2z = 2 * dims[2]
    npat = p_n[s]
    words = ckey.shape[1]
    if n2x <= 2 * (ce[6][0] + 2) or n2y <= 2 * (ce[6][0] + 2) or n2z <= 2 * (ce[6][0] + 2):
        return False
    # gather the patch states and pack them (2 bits each) into the key
    for w in range(words):
        scratch[npat + w] = 0
    for p in range(npat):
        qx = wrap(x + p_off[s, p, 0], n2x)
        qy = wrap(y + p_off[s, p, 1], n2y)
        qz = wrap(z + p_off[s, p, 2], n2z)
        st = occ[_site_index(qx, qy, qz, dims)]
        scratch[p] = st
        scratch[npat + (p >> 5)] |= np.int64(st) << np.int64(2 * (p & 31))
    meta = ((s * 2 + (1 if is_vac else 0)) * 4 + s0) * 4 + s1
    scratch[npat + words - 1] = meta
    h = meta
    for w in range(words):
        v = scratch[npat + w]
        h = (h * 1000003) ^ (v ^ (v >> 29))
    slot_c = (h ^ (h >> 17) ^ (h >> 35)) & (ckey.shape[0] - 1)
    hit = True
    for w in range(words):
        if ckey[slot_c, w] != scratch[npat + w]:
            hit = False
            break
    if hit:
        for c in range(16):
            out[c] = cval[slot_c, c]
        return True
    # miss: the direct sum of delta_energy_ce per open channel
    site_a = site_of(x, y, z, s, dims)
    for k in range(8):
        st_b = scratch[p_bk[s, k]]
        xb = wrap(x + p_off[s, p_bk[s, k], 0], n2x)
        yb = wrap(y + p_off[s, p_bk[s, k], 1], n2y)
        zb = wrap(z + p_off[s, p_bk[s, k], 2], n2z)
        t = p_typ[s, k]
        site_b = site_of(xb, yb, zb, t, dims)
        for slot in range(2):
            c = slot * 8 + k
            out[c] = 0.0
            if st_b >= VACANCY or (is_vac and slot == 1):
                continue
            if slot == 1 and s0 == s1:
                out[c] = out[k]
                continue
            if is_vac:
                out[c] = delta_energy_ce(occ, dims, x, y, z, s, xb, yb, zb, t, site_a, site_b, st_b, VACANCY, ce)
            else:
                out[c] = delta_energy_ce(occ, dims, x, y, z, s, xb, yb, zb, t, site_a, site_b,
                                         s1 if slot == 0 else s0, BRIDGE, ce)
    for w in range(words):
        ckey[slot_c, w] = scratch[npat + w]
    for c in range(16):
        cval[slot_c, c] = out[c]
    return True


# --------------------------------------------------------------------------
# Per-site fields: energy changes from a few look-ups
# --------------------------------------------------------------------------
# For site i, over the clusters c through i (the others j != i at their current states):
#   X_i   = sum_c J_c P_c + sum_{c: one defect d on the others} K_d P'_c   (E of i as host sigma: sigma X_i)
#   F_D,i = sum_{c: no defect on the others} K_D(i in c) P_c                (E of i as a defect of kind D)
# with P the product of the others' host spins. A hop changes A (u_A -> v_A) and B (u_B -> v_B):
#   dE = [E_i(A, v_A) - E_i(A, u_A)] + [E_i(B, v_B) - E_i(B, u_B)]
#        + sum_{c through A and B} [V(v_A, v_B) - V(v_A, u_B) - V(u_A, v_B) + V(u_A, u_B)]
# exactly (the last sum: the clusters the two single-site changes count twice). The fields of the sites
# of the clusters through a changed site are updated after each hop, one site after the other.


@njit(cache=True, inline="always")
def _site_index(x, y, z, dims):
    """Site index of wrapped doubled coordinates, the type read from their parity."""
    return site_of(x, y, z, 0 if (x & 1) else (1 if (y & 1) else 2), dims)


@njit(cache=True, inline="always")
def _no_wrap(x, y, z, n2x, n2y, n2z, r):
    """True when every site within ``r`` half-cells of (x, y, z) is reached without wrapping."""
    return r <= x < n2x - r and r <= y < n2y - r and r <= z < n2z - r


@njit(cache=True, inline="always")
def _field_terms(nd, kind, pos, prod, h, dfc, s, e, pj):
    """Contributions of cluster (s, e) to the field of its site at position ``pj``, given the others' aggregate."""
    if nd == 0:
        return h * prod, dfc[s, e, 0, pj] * prod, dfc[s, e, 1, pj] * prod
    if nd == 1:
        return dfc[s, e, kind, pos] * prod, 0.0, 0.0
    return 0.0, 0.0, 0.0


@njit(cache=True)
def ce_field_init(occ, dims, ce, fld):
    """Fill ``fld`` ((3 n_sites,): X, F_vacancy, F_bridge per site) from scratch."""
    n_ent, order, off, host, dfc, spin = ce[0], ce[1], ce[2], ce[3], ce[4], ce[5]
    n2x = 2 * dims[0]
    n2y = 2 * dims[1]
    n2z = 2 * dims[2]
    xyz = np.zeros(3, np.int64)
    for site in range(occ.shape[0]):
        s = site_coords(site, dims, xyz)
        x = xyz[0]
        y = xyz[1]
        z = xyz[2]
        fx = 0.0
        fv = 0.0
        fb = 0.0
        for e in range(n_ent[s]):
            nd = 0
            kind = 0
            pos = 0
            prod = 1.0
            for j in range(order[s, e] - 1):
                q = _site_index(wrap(x + off[s, e, j, 0], n2x), wrap(y + off[s, e, j, 1], n2y),
                                wrap(z + off[s, e, j, 2], n2z), dims)
                nd, kind, pos, prod = _add_site(occ[q], j + 1, nd, kind, pos, prod, spin)
            a, b, c = _field_terms(nd, kind, pos, prod, host[s, e], dfc, s, e, 0)
            fx += a
            fv += b
            fb += c
        fld[3 * site] = fx
        fld[3 * site + 1] = fv
        fld[3 * site + 2] = fb


@njit(cache=True, inline="always")
def _kt(dfc, s, e, p, st):
    """Defect term of entry (s, e) for a site in state ``st`` at position ``p`` (0 for a host species)."""
    if st >= VACANCY:
        return dfc[s, e, st - VACANCY, p]
    return 0.0


@njit(cache=True, inline="always")
def ce_field_change(occ, dims, x, y, z, s, site, new_state, ce, fld):
    """Update ``fld`` for site (x, y, z; type s) taking ``new_state`` (``occ`` still holds the old one;
    the caller writes the new state afterwards).

    For a cluster through the site (position 0) and another of its sites j, with R the rest of the
    cluster: ``w0 = prod_R s`` (0 if R holds a defect) and ``w1`` the one-defect sum over R. The
    field of j holds ``J w0(R + i) + w1(R + i)`` (X) and ``K_D(j) w0(R + i)`` (F_D), and
    ``w0(R + i) = s_i w0(R)``, ``w1(R + i) = K(i) w0(R) + s_i w1(R)``: the change follows from the
    changes of ``s_i`` and ``K(i)`` alone (no branches on the states of R)."""
    n_ent, order, off, host, dfc, spin = ce[0], ce[1], ce[2], ce[3], ce[4], ce[5]
    n2x = 2 * dims[0]
    n2y = 2 * dims[1]
    n2z = 2 * dims[2]
    old = occ[site]
    dl = ce[19]
    r = ce[6][0]
    inside = _no_wrap(x, y, z, n2x, n2y, n2z, r)
    dsp = spin[new_state] - spin[old]
    for e in range(n_ent[s]):
        od = order[s, e]
        if od == 1:
            continue  # the singlet: no other site's field holds it
        h = host[s, e]
        dk0 = _kt(dfc, s, e, 0, new_state) - _kt(dfc, s, e, 0, old)
        q1 = q2 = q3 = 0
        t1 = t2 = t3 = 0
        for j in range(od - 1):
            if inside:
                q = site + dl[s, e, j]
            else:
                q = _site_index(wrap(x + off[s, e, j, 0], n2x), wrap(y + off[s, e, j, 1], n2y),
                                wrap(z + off[s, e, j, 2], n2z), dims)
            if j == 0:
                q1 = q
                t1 = occ[q]
            elif j == 1:
                q2 = q
                t2 = occ[q]
            else:
                q3 = q
                t3 = occ[q]
        if od == 2:
            fld[3 * q1] += h * dsp + dk0
            fld[3 * q1 + 1] += dfc[s, e, 0, 1] * dsp
            fld[3 * q1 + 2] += dfc[s, e, 1, 1] * dsp
            continue
        sp1 = spin[t1]
        sp2 = spin[t2]
        k1 = _kt(dfc, s, e, 1, t1)
        k2 = _kt(dfc, s, e, 2, t2)
        if od == 3:
            # j = site 1 (R = site 2), then j = site 2 (R = site 1)
            dw0 = dsp * sp2
            dw1 = dk0 * sp2 + dsp * k2
            fld[3 * q1] += h * dw0 + dw1
            fld[3 * q1 + 1] += dfc[s, e, 0, 1] * dw0
            fld[3 * q1 + 2] += dfc[s, e, 1, 1] * dw0
            dw0 = dsp * sp1
            dw1 = dk0 * sp1 + dsp * k1
            fld[3 * q2] += h * dw0 + dw1
            fld[3 * q2 + 1] += dfc[s, e, 0, 2] * dw0
            fld[3 * q2 + 2] += dfc[s, e, 1, 2] * dw0
            continue
        sp3 = spin[t3]
        k3 = _kt(dfc, s, e, 3, t3)
        for j in range(3):
            if j == 0:
                w0 = sp2 * sp3
                w1 = k2 * sp3 + k3 * sp2
                q = q1
            elif j == 1:
                w0 = sp1 * sp3
                w1 = k1 * sp3 + k3 * sp1
                q = q2
            else:
                w0 = sp1 * sp2
                w1 = k1 * sp2 + k2 * sp1
                q = q3
            dw0 = dsp * w0
            dw1 = dk0 * w0 + dsp * w1
            fld[3 * q] += h * dw0 + dw1
            fld[3 * q + 1] += dfc[s, e, 0, j + 1] * dw0
            fld[3 * q + 2] += dfc[s, e, 1, j + 1] * dw0


@njit(cache=True, inline="always")
def _site_energy(fld, site, st, spin):
    """Energy of the clusters through ``site`` with the site in state ``st`` (the field's definition)."""
    if st == VACANCY:
        return fld[3 * site + 1]
    if st == BRIDGE:
        return fld[3 * site + 2]
    return spin[st] * fld[3 * site]


@njit(cache=True, inline="always")
def _pair_value(nd, kind, pos, prod, st_a, st_b, jb, h, dfc, s, e, spin):
    nd, kind, pos, prod = _add_site(st_a, 0, nd, kind, pos, prod, spin)
    nd, kind, pos, prod = _add_site(st_b, jb, nd, kind, pos, prod, spin)
    return _value(nd, kind, pos, prod, h, dfc, s, e)


@njit(cache=True, inline="always")
def ce_field_channels(occ, dims, x, y, z, s, is_vac, s0, s1, ce, out):
    """CE dE of the 16 hop channels ``slot * 8 + k`` of a defect on A = (x, y, z), type ``s``, from the
    per-site field ``ce[18]`` (same channels and values as :func:`delta_energy_ce_channels`)."""
    order, off, host, dfc, spin = ce[1], ce[2], ce[3], ce[4], ce[5]
    p_off, p_bk = ce[8], ce[9]
    sh_n, sh_e, sh_j, fld = ce[15], ce[16], ce[17], ce[18]
    n2x = 2 * dims[0]
    n2y = 2 * dims[1]
    n2z = 2 * dims[2]
    site_a = _site_index(x, y, z, dims)
    dl = ce[19]
    inside = _no_wrap(x, y, z, n2x, n2y, n2z, ce[6][0] + 1)
    u_a = VACANCY if is_vac else BRIDGE
    e_a_old = _site_energy(fld, site_a, u_a, spin)
    v_b = VACANCY if is_vac else BRIDGE
    for k in range(8):
        pk = p_bk[s, k]
        xb = wrap(x + p_off[s, pk, 0], n2x)
        yb = wrap(y + p_off[s, pk, 1], n2y)
        zb = wrap(z + p_off[s, pk, 2], n2z)
        site_b = _site_index(xb, yb, zb, dims)
        u_b = occ[site_b]
        out[k] = 0.0
        out[8 + k] = 0.0
        if u_b >= VACANCY:
            continue
        e_b = _site_energy(fld, site_b, v_b, spin) - _site_energy(fld, site_b, u_b, spin)
        sb = spin[u_b]
        for slot in range(1 if is_vac else 2):
            if is_vac:
                v_a = u_b
            else:
                v_a = s1 if slot == 0 else s0
            if slot == 1 and s0 == s1:
                out[8 + k] = out[k]
                continue
            de = (_site_energy(fld, site_a, v_a, spin) - e_a_old) + e_b
            sa = spin[v_a]
            for i in range(sh_n[s, k]):
                # the cluster through A and B: w0, w1 of the rest R (closed form of
                # V(vA, vB) - V(vA, uB) - V(uA, vB) + V(uA, uB))
                e = sh_e[s, k, i]
                jb = sh_j[s, k, i]
                w0 = 1.0
                w1 = 0.0
                for j in range(order[s, e] - 1):
                    if j + 1 == jb:
                        continue
                    if inside:
                        q = site_a + dl[s, e, j]
                    else:
                        q = _site_index(wrap(x + off[s, e, j, 0], n2x), wrap(y + off[s, e, j, 1], n2y),
                                        wrap(z + off[s, e, j, 2], n2z), dims)
                    st = occ[q]
                    w1 = w1 * spin[st] + _kt(dfc, s, e, j + 1, st) * w0
                    w0 = w0 * spin[st]
                hw = host[s, e] * w0 + w1
                if is_vac:
                    de += sb * w0 * (dfc[s, e, 0, jb] + dfc[s, e, 0, 0]) - hw
                else:
                    de += w0 * (dfc[s, e, 1, jb] * sa + dfc[s, e, 1, 0] * sb) - sa * sb * hw
            out[slot * 8 + k] = de
    return True
