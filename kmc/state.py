"""Engine state: the flat arrays the kernels work on.

Per site (13 bytes)
-------------------
``occ`` (n_sites,) int8
    Site state (:mod:`lattice.species`: 0 I, 1 Br, 2 vacancy, 3 bridge).
``disp`` (n_sites, 3) int32
    Unwrapped displacement, in units of a/2, of the halide on the site since
    the start of the run; it travels with the atom when it hops. On a defect
    site (vacancy or bridge) no single atom sits there and ``disp[site, 0]``
    holds the index of the defect instead (the bridge atoms' displacements are
    in ``def_adisp``).

Per defect
----------
``def_kind`` (n,) int8, ``def_site`` (n,) int64, ``def_xyz`` (n, 3) int64
(doubled coordinates), ``def_s`` (n,) int64 (site type), ``def_sp`` (n, 2)
int8 (bridge species, -1 for vacancies), ``def_adisp`` (n, 2, 3) int32
(bridge-atom displacements), ``def_disp`` (n, 3) int64 (the defect's own
unwrapped displacement), ``def_tenter`` (n,) float64 (time it reached its
site), ``def_or`` (n,) int8 (bridge orientation, :mod:`lattice.orientation`;
-1 for vacancies and the orientation-free model), ``rates`` (n, 20) float64
and ``classes`` (n, 20) int64 per channel,
the sum ``tree`` (2 P,) float64 over P >= n leaves and ``stamp`` (n,) int64.

Observables kept by the kernels
-------------------------------
``msd`` (2,) int64: sum over all atoms of each species of |d|^2, (a/2)^2;
``plane_count`` (2, n_planes) int64: atoms of each species per plane;
``occ_time`` (4, n_planes) float64: defect residence time per plane for
vacancies and II, IBr, BrBr bridges, s; ``in_box`` (2,) int64: atoms of each
species inside the nanodomain box; ``hop_count`` (104,) int64 per hop class;
``rot_count`` (6,) int64 rotations per rotation class (``kind * 3 + n_Br``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

from kmc import _kernels as K
from lattice.cluster_expansion import FIELD_COMPONENTS, kernel_tables
from lattice.configurations import Configuration
from lattice.defects import DefectSet
from lattice.environment import N_CLASSES
from lattice.orientation import N_ROTATION_CLASSES, NO_ORIENTATION, initial_orientation
from lattice.species import BRIDGE, KIND_VACANCY, VACANCY
from rates.catalog import MissingRateError, RateCatalog
from rates.ratelaw import K_B_EV

SAVED_ARRAYS = (
    "occ", "disp", "def_kind", "def_site", "def_xyz", "def_s", "def_sp", "def_adisp", "def_disp",
    "def_tenter", "msd", "plane_count", "occ_time", "in_box", "hop_count", "counters", "def_or", "rot_count",
)
OPTIONAL_SAVED = {"def_or": NO_ORIENTATION, "rot_count": 0}
"""Arrays that checkpoints of the orientation-free engine lack, with the value they had there."""


@dataclass
class EngineState:
    """All arrays of one KMC run (see the module docstring)."""

    dims: np.ndarray
    occ: np.ndarray
    disp: np.ndarray
    def_kind: np.ndarray
    def_site: np.ndarray
    def_xyz: np.ndarray
    def_s: np.ndarray
    def_sp: np.ndarray
    def_adisp: np.ndarray
    def_disp: np.ndarray
    def_tenter: np.ndarray
    def_or: np.ndarray
    rates: np.ndarray
    classes: np.ndarray
    tree: np.ndarray
    n_leaves: int
    stamp: np.ndarray
    axis: int
    msd: np.ndarray
    plane_count: np.ndarray
    occ_time: np.ndarray
    use_box: bool
    box: np.ndarray
    in_box: np.ndarray
    hop_count: np.ndarray
    rot_count: np.ndarray
    counters: np.ndarray
    err: np.ndarray
    ce_field: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """(3 n_sites,) per-site cluster-expansion field (:func:`lattice.cluster_expansion.ce_field_init`),
    rebuilt by :func:`fill_rates`; empty without a cluster expansion or on a lattice too small for it."""
    ce_delta: np.ndarray = field(default_factory=lambda: np.zeros((3, 1, 3), np.int64))
    """Site-index steps of the field's clusters on this lattice (:meth:`CETables.field_deltas`)."""

    @property
    def n_sites(self) -> int:
        return int(self.occ.size)

    @property
    def n_defects(self) -> int:
        return int(self.def_kind.size)

    def nbytes_per_site(self) -> float:
        """Bytes of per-site arrays divided by the number of sites."""
        return (self.occ.nbytes + self.disp.nbytes + self.ce_field.nbytes) / self.n_sites

    def kernel_ce(self, params: "RateParams") -> tuple:
        """``params.ce`` with this state's per-site field and its index steps last (what the kernels take)."""
        return params.ce[:-2] + (self.ce_field, self.ce_delta)

    def nbytes_total(self) -> int:
        return sum(getattr(self, f.name).nbytes for f in fields(self) if isinstance(getattr(self, f.name), np.ndarray))

    def bridge_n_br(self) -> np.ndarray:
        """Number of Br atoms of each interstitial's bridge (vacancies excluded)."""
        inter = self.def_kind != KIND_VACANCY
        return (self.def_sp[inter, 0] + self.def_sp[inter, 1]).astype(np.int64)

    def species_totals(self) -> np.ndarray:
        """(2,) int64: number of I and Br atoms (bridges count both atoms)."""
        out = np.array([np.count_nonzero(self.occ == 0), np.count_nonzero(self.occ == 1)], dtype=np.int64)
        inter = self.def_kind != KIND_VACANCY
        for sp in (0, 1):
            out[sp] += np.count_nonzero(self.def_sp[inter] == sp)
        return out

    def squared_displacements(self) -> np.ndarray:
        """(2,) int64: sum of |d|^2 over atoms of each species, recomputed from the arrays."""
        out = np.zeros(2, dtype=np.int64)
        single = self.occ < VACANCY
        d2 = np.einsum("ij,ij->i", self.disp[single].astype(np.int64), self.disp[single].astype(np.int64))
        sp = self.occ[single]
        for s in (0, 1):
            out[s] = d2[sp == s].sum()
        inter = self.def_kind != KIND_VACANCY
        a = self.def_adisp[inter].astype(np.int64)
        d2b = np.einsum("ijk,ijk->ij", a, a)
        spb = self.def_sp[inter]
        for s in (0, 1):
            out[s] += d2b[spb == s].sum()
        return out


def make_state(config: Configuration, defects: DefectSet, catalog: RateCatalog) -> EngineState:
    """Build the engine state for ``config`` with ``defects`` (rates not yet filled)."""
    lat = config.lattice
    occ = config.occ.astype(np.int8).copy()
    disp = np.zeros((lat.n_sites, 3), dtype=np.int32)
    n = len(defects)
    if n == 0:
        raise ValueError("a KMC run needs at least one defect (vacancies + interstitials = 0)")
    if n > np.iinfo(np.int32).max:
        raise ValueError("too many defects")
    ce_field = np.zeros(0)
    ce_delta = np.zeros((3, 1, 3), np.int64)
    if catalog.cluster_expansion is not None:
        tables = kernel_tables(catalog.cluster_expansion)
        reach = int(tables.reach[0])
        if min(lat.dims) <= reach:
            raise ValueError(f"lattice.shape {list(lat.dims)} is too small for the catalog's cluster expansion "
                             f"(clusters span {reach} half-cells; every axis needs more than {reach} cells)")
        if tables.active and min(lat.dims) > reach + 2:
            # per-site fields (24 B/site); on smaller lattices the kernels sum the clusters directly
            ce_field = np.zeros(FIELD_COMPONENTS * lat.n_sites)
            ce_delta = tables.field_deltas(lat.dims)
    xyz = lat.coords(defects.sites).reshape(n, 3).astype(np.int64)
    def_s = (defects.sites % 3).astype(np.int64)
    def_or = np.full(n, NO_ORIENTATION, dtype=np.int8)
    for d in range(n):
        site = defects.sites[d]
        occ[site] = VACANCY if defects.kinds[d] == KIND_VACANCY else BRIDGE
        disp[site, 0] = d
        if catalog.oriented and defects.kinds[d] != KIND_VACANCY:
            def_or[d] = initial_orientation(int(site), d)
    n_leaves = 1
    while n_leaves < n:
        n_leaves *= 2
    axis = int(config.axis)
    n_planes = lat.n_planes(axis)
    planes = xyz[:, axis]
    all_planes = lat.plane_index(axis)
    plane_count = np.zeros((2, n_planes), dtype=np.int64)
    for sp in (0, 1):
        plane_count[sp] = np.bincount(all_planes[occ == sp], minlength=n_planes)
    for d in range(n):
        if defects.kinds[d] != KIND_VACANCY:
            for sp in defects.bridge[d]:
                plane_count[sp, planes[d]] += 1
    use_box = config.box is not None
    box = config.box.astype(np.int64) if use_box else np.zeros((3, 2), dtype=np.int64)
    in_box = np.zeros(2, dtype=np.int64)
    if use_box:
        mask = config.domain_mask()
        for sp in (0, 1):
            in_box[sp] = np.count_nonzero(occ[mask] == sp)
        for d in range(n):
            if defects.kinds[d] != KIND_VACANCY and mask[defects.sites[d]]:
                for sp in defects.bridge[d]:
                    in_box[sp] += 1
    return EngineState(
        dims=lat.dims,
        occ=occ,
        disp=disp,
        def_kind=defects.kinds.astype(np.int8).copy(),
        def_site=defects.sites.astype(np.int64).copy(),
        def_xyz=xyz,
        def_s=def_s,
        def_sp=defects.bridge.astype(np.int8).copy(),
        def_adisp=np.zeros((n, 2, 3), dtype=np.int32),
        def_disp=np.zeros((n, 3), dtype=np.int64),
        def_tenter=np.zeros(n, dtype=np.float64),
        def_or=def_or,
        rates=np.zeros((n, K.N_CHANNELS), dtype=np.float64),
        classes=np.full((n, K.N_CHANNELS), -1, dtype=np.int64),
        tree=np.zeros(2 * n_leaves, dtype=np.float64),
        n_leaves=n_leaves,
        stamp=np.zeros(n, dtype=np.int64),
        axis=axis,
        msd=np.zeros(2, dtype=np.int64),
        plane_count=plane_count,
        occ_time=np.zeros((4, n_planes), dtype=np.float64),
        use_box=use_box,
        box=box,
        in_box=in_box,
        hop_count=np.zeros(N_CLASSES, dtype=np.int64),
        rot_count=np.zeros(N_ROTATION_CLASSES, dtype=np.int64),
        counters=np.zeros(2, dtype=np.int64),
        err=np.zeros(1, dtype=np.int64),
        ce_field=ce_field,
        ce_delta=ce_delta,
    )


@dataclass
class RateParams:
    """Catalog arrays and temperature in the form the kernels take."""

    e_kra: np.ndarray
    prefactor: np.ndarray
    J: np.ndarray
    e_bridge: np.ndarray
    ce: tuple
    rot_rate: np.ndarray
    beta: float
    catalog_name: str

    @classmethod
    def from_catalog(cls, catalog: RateCatalog, temperature_K: float) -> "RateParams":
        if not temperature_K > 0:
            raise ValueError(f"temperature_K must be > 0, got {temperature_K}")
        return cls(
            e_kra=np.ascontiguousarray(catalog.E_KRA_eV, dtype=np.float64),
            prefactor=np.ascontiguousarray(catalog.prefactor_Hz, dtype=np.float64),
            J=np.ascontiguousarray(catalog.pair_eV, dtype=np.float64),
            e_bridge=np.ascontiguousarray(catalog.bridge_eV, dtype=np.float64),
            ce=kernel_tables(catalog.cluster_expansion).as_tuple(),
            rot_rate=np.ascontiguousarray(catalog.rotation_rates_Hz(temperature_K), dtype=np.float64),
            beta=1.0 / (K_B_EV * float(temperature_K)),
            catalog_name=catalog.name,
        )


def fill_rates(state: EngineState, params: RateParams) -> None:
    """Compute every rate and the sum tree from scratch (raises on a missing class)."""
    ok = K.init_rates(state.occ, state.dims, state.def_kind, state.def_xyz, state.def_s, state.def_sp,
                      state.def_or, state.rates, state.classes, state.tree, state.n_leaves, params.e_kra,
                      params.prefactor, params.J, params.e_bridge, state.kernel_ce(params), params.rot_rate,
                      params.beta, state.err)
    if not ok:
        raise MissingRateError([int(state.err[0])], params.catalog_name)


def rate_drift(state: EngineState, params: RateParams) -> float:
    """Largest relative difference between the incremental rates and a full recompute
    (``inf`` when a class or the cluster-expansion field differs from its recompute)."""
    rates = state.rates.copy()
    classes = state.classes.copy()
    tree = np.zeros_like(state.tree)
    fresh = np.zeros_like(state.ce_field)
    ce = params.ce[:-2] + (fresh, state.ce_delta)  # the recompute writes its own field
    ok = K.init_rates(state.occ, state.dims, state.def_kind, state.def_xyz, state.def_s, state.def_sp,
                      state.def_or, rates, classes, tree, state.n_leaves, params.e_kra, params.prefactor, params.J,
                      params.e_bridge, ce, params.rot_rate, params.beta, state.err)
    if not ok:
        raise MissingRateError([int(state.err[0])], params.catalog_name)
    if not np.array_equal(classes, state.classes) or not np.array_equal(fresh, state.ce_field):
        return float("inf")
    scale = np.maximum(np.abs(rates), 1e-300)
    rel = np.max(np.abs(rates - state.rates) / scale)
    rel_tree = abs(tree[1] - state.tree[1]) / max(abs(tree[1]), 1e-300)
    return float(max(rel, rel_tree))
