"""Numba kernels of the rejection-free (residence-time) lattice KMC.

Pure functions over flat arrays: no classes, no I/O. The engine state is
described in :mod:`kmc.state`; the algorithm, event for event, is the one of
the NumPy reference :mod:`kmc.reference`.

Algorithm (one event)
---------------------
1. ``R = sum of all defect rates`` (root of a binary sum tree over defects).
2. ``dt = -ln(1 - u1) / R`` with ``u1`` the next uniform number. If
   ``t + dt > t_stop`` the event is not executed: ``t = t_stop`` and the
   kernel returns (exact by the memorylessness of the exponential clock).
3. ``u2 * R`` selects the defect by descending the sum tree (O(log n_def)),
   then its event by a linear scan over at most 20 channels: 8 vacancy hops,
   or 16 interstitial kick-outs (8 destinations x 2 bridge atoms) plus, for an
   oriented bridge (:mod:`lattice.orientation`), 3 rotations in place
   (channels 16-18; only the 4 kick-outs aligned with the orientation are open).
4. The hop (or rotation: only the orientation changes) is applied and the rates of the moved defect and of every defect
   within two hops of the two changed sites are recomputed; only their tree
   paths are updated.

Implementation notes
--------------------
* The rates of a defect come from its *patch*, the 39 sites within two hops,
  gathered once (index steps precomputed per lattice away from the periodic
  boundary, wrapped per axis near it) as packed one-hot states, from which the
  neighbour counts of all 8 hops follow by additions; classes and rates are
  bit-for-bit those of :func:`lattice.environment.hop_counts` with
  :mod:`rates.ratelaw` (``_defect_rates_reference`` keeps that direct form).
* ``run_events`` memoises ``hop_rate`` per call in a small direct-mapped cache
  keyed by all of its inputs, so a repeated environment costs no ``exp``.
* Its body ``_run_events_impl`` is compiled without reference counting
  (scratch arrays are allocated by the ``run_events`` wrapper).
* After a hop the neighbour scan of the region runs only if a defect lies in
  the patch of B (known from the gather) or on the 15 other region sites.

Uniform numbers come from a buffer filled by the Python side
(``numpy.random.Generator.random``), consumed strictly in order: the same
seed gives the same run whatever the chunking, and a checkpoint holds the
generator state and the unused tail of the buffer.
"""

from __future__ import annotations

import math

import numpy as np
import common.numba_cache  # noqa: F401 - before numba: a writable kernel cache
from numba import njit

from lattice.environment import (
    hop_counts,
    interstitial_class,
    neighbour_site,
    site_of,
    vacancy_class,
    wrap,
)
from lattice.species import BR, BRIDGE, I, KIND_VACANCY, VACANCY
from lattice.sublattice import (
    HOP_BACK,
    HOP_COMMON,
    NEIGHBOUR_OFFSETS,
    NEIGHBOUR_TYPES,
    REGION_COUNTS,
    REGION_OFFSETS,
)
from lattice.orientation import ALIGNED, LANDING, ROTATED, ROTATION_CLASS_BASE
from lattice.cluster_expansion import (
    ce_field_change,
    ce_field_channels,
    ce_field_init,
    delta_energy_ce,
    delta_energy_ce_channels,
)
from rates.ratelaw import delta_energy_kickout, delta_energy_vacancy, hop_rate

# status codes returned by run_events
STOP_TIME = 0
STOP_EVENTS = 1
STOP_BUFFER = 2
STOP_FROZEN = 3
STOP_MISSING_RATE = 4
STOP_LOG_FULL = 5

N_KICK_CHANNELS = 16
"""Hop channels ``slot * 8 + k`` (vacancies: slot 0 only)."""
N_CHANNELS = 20
"""Plus the in-place rotation channels 16, 17 (90 degrees) and 18 (flip) of an oriented bridge; 19 unused."""

# counters layout (int64 array)
C_EVENTS = 0  # events executed since the start of the run
C_LOG = 1  # rows used in the event log

_OFF = np.ascontiguousarray(NEIGHBOUR_OFFSETS)
_TYP = np.ascontiguousarray(NEIGHBOUR_TYPES)
_ROFF = np.ascontiguousarray(REGION_OFFSETS)
_RCNT = np.ascontiguousarray(REGION_COUNTS)
_ALN = np.ascontiguousarray(ALIGNED)
_LAND = np.ascontiguousarray(LANDING.astype(np.int64))
_ROTN = np.ascontiguousarray(ROTATED.astype(np.int64))
_ROT_BASE = ROTATION_CLASS_BASE


# --------------------------------------------------------------------------
# Static "patch" tables (built once at import from the sublattice geometry)
# --------------------------------------------------------------------------
# The rates of a defect on site A (type s) depend only on the 39 sites within
# two hops of A: A itself (patch index 0), its 8 neighbours N(A) (patch index
# 1 + slot) and N(B) for every B in N(A). The kernels gather the states of
# these sites once into a small local array (the *patch*) and evaluate all 8
# hops from it through the tables below.
#
# A site at doubled offset o from A lies in the cell
# ``cell(A) + floor((par + o) / 2)`` (per axis; par = 1 on axis s, the odd
# coordinate of A, else 0) and its index is ``3 * cell + type``. The cell offset
# of a patch site is in -1..1 on every axis (``_PC``, one of 27 codes), that of
# a site of the *region* of a hop (the sites within two hops of A or of B, whose
# defects need new rates after the hop; the union of the patches of A and B) in
# -2..2 (``_RC``, one of 125). Away from the periodic boundary the index step
# from A to such a site is a constant per lattice (``_patch_deltas``,
# ``_region_deltas``, computed once per kernel call); near it the wrapped step
# along each axis is computed per visit (``_axis_steps``) and the three are
# added (``_PW``, ``_RW``: positions of a site's per-axis steps).
_PATCH_SIZE = 39
_PATCH_R = 1
_REGION_R = 2


def _cell_and_type(s: int, o) -> tuple[list[int], int]:
    par = [1 if a == s else 0 for a in range(3)]
    c = [(par[a] + int(o[a])) // 2 for a in range(3)]
    odd = [(par[a] + int(o[a])) % 2 for a in range(3)]
    if sum(odd) != 1:  # pragma: no cover - geometry invariant
        raise RuntimeError("offset does not lead to a halide site")
    return c, odd.index(1)


def _cell_code(c, radius: int) -> int:
    width = 2 * radius + 1
    for v in c:
        if abs(v) > radius:  # pragma: no cover - geometry invariant
            raise RuntimeError("site outside the expected cell block")
    return ((c[0] + radius) * width + c[1] + radius) * width + c[2] + radius


def _patch_offsets(s: int) -> list[tuple[int, int, int]]:
    """Doubled-coordinate offsets of the 39 patch sites of a type-``s`` centre, in patch order.

    Index 0 is the centre, 1 + m its neighbour slot m, then the other sites within
    two hops in order of first appearance (slot m, then slot m2 of that neighbour).
    """
    offs = [(0, 0, 0)] + [tuple(int(v) for v in NEIGHBOUR_OFFSETS[s, m]) for m in range(8)]
    for m in range(8):
        t = NEIGHBOUR_TYPES[s, m]
        for m2 in range(8):
            o = tuple(int(v) for v in NEIGHBOUR_OFFSETS[s, m] + NEIGHBOUR_OFFSETS[t, m2])
            if o not in offs:
                offs.append(o)
    if len(offs) != _PATCH_SIZE:  # pragma: no cover - geometry invariant
        raise RuntimeError("unexpected size of the two-hop patch")
    return offs


def _patch_tables():
    """Tables of the patch of a type-s centre A.

    Returns
    -------
    pc, pt : (3, 39) int64
        Cell-offset code (``_cell_code``, radius 1) and site type of patch site p.
    nbb : (3, 8, 7) int64
        Patch indices of ``N(B) - {A}`` for the hop to neighbour slot k (B = slot k).
    cmn : (3, 8, 2) int64
        Patch indices of the two sites of ``N(A)`` that are also neighbours of B.
    """
    n_nb = NEIGHBOUR_OFFSETS.shape[1]
    pc = np.zeros((3, _PATCH_SIZE), dtype=np.int64)
    pt = np.zeros((3, _PATCH_SIZE), dtype=np.int64)
    nbb = np.zeros((3, n_nb, n_nb - 1), dtype=np.int64)
    cmn = np.zeros((3, n_nb, 2), dtype=np.int64)
    for s in range(3):
        offs = _patch_offsets(s)
        index = {o: p for p, o in enumerate(offs)}
        for p, o in enumerate(offs):
            c, typ = _cell_and_type(s, o)
            pc[s, p] = _cell_code(c, _PATCH_R)
            pt[s, p] = typ
        for k in range(n_nb):
            d = NEIGHBOUR_OFFSETS[s, k]
            t = NEIGHBOUR_TYPES[s, k]
            nbb[s, k] = [index[tuple(int(v) for v in d + NEIGHBOUR_OFFSETS[t, m])]
                         for m in range(n_nb) if m != HOP_BACK[s, k]]
            cmn[s, k] = [1 + int(HOP_COMMON[s, k, 0]), 1 + int(HOP_COMMON[s, k, 1])]
    return pc, pt, nbb, cmn


def _region_tables():
    n_s, n_k, n_q = REGION_OFFSETS.shape[:3]
    rc = np.zeros((n_s, n_k, n_q), dtype=np.int64)
    rt = np.zeros((n_s, n_k, n_q), dtype=np.int64)
    for s in range(n_s):
        for k in range(n_k):
            for q in range(REGION_COUNTS[s, k]):
                c, typ = _cell_and_type(s, REGION_OFFSETS[s, k, q])
                rc[s, k, q] = _cell_code(c, _REGION_R)
                rt[s, k, q] = typ
    return rc, rt


_PC, _PT, _NBB, _CMN = _patch_tables()
_RC, _RT = _region_tables()


def _a_side_tables() -> np.ndarray:
    """(3, 8, 15) int64: patch indices (centre A) of the region sites of hop (s, k) outside the patch of B.

    The region of a hop (the sites within two hops of A or of B, ``REGION_OFFSETS``)
    is the patch of B plus these sites; neither A nor B is one of them.
    """
    rows = []
    for s in range(3):
        offs_a = _patch_offsets(s)
        for k in range(8):
            d = NEIGHBOUR_OFFSETS[s, k]
            t = NEIGHBOUR_TYPES[s, k]
            patch_b = {tuple(int(v) + int(w) for v, w in zip(d, o)) for o in _patch_offsets(int(t))}
            extra = [p for p, o in enumerate(offs_a) if o not in patch_b]
            region = {tuple(int(v) for v in o) for o in REGION_OFFSETS[s, k, : REGION_COUNTS[s, k]]}
            if set(offs_a) | patch_b != region or (0, 0, 0) not in patch_b:  # pragma: no cover
                raise RuntimeError("region is not the union of the two patches")
            rows.append(extra)
    if len({len(r) for r in rows}) != 1:  # pragma: no cover - geometry invariant
        raise RuntimeError("uneven number of A-side region sites")
    return np.asarray(rows, dtype=np.int64).reshape(3, 8, -1)


_AX = _a_side_tables()
_N_AX = _AX.shape[2]


def _axis_positions(codes: np.ndarray, radius: int) -> np.ndarray:
    """Split cell codes into positions in a per-axis step array of ``3 * (2 radius + 1)`` entries."""
    width = 2 * radius + 1
    cx = codes // (width * width)
    cy = (codes // width) % width
    cz = codes % width
    return np.ascontiguousarray(np.stack([cx, width + cy, 2 * width + cz], axis=-1).astype(np.int64))


_PW = _axis_positions(_PC, _PATCH_R)
_RW = _axis_positions(_RC, _REGION_R)
_W_LEN = 3 * (2 * _REGION_R + 1)
_CS_LEN = 9 + 27  # scratch of _gather_patch

# Rate cache of run_events: direct-mapped, keyed by an integer that fixes every
# input of the rate (class, species, packed neighbour-state counts); catalog and
# temperature are constant within one call. A hit returns the value computed
# earlier by the very same expression, so results are bitwise unchanged.
_CACHE_BITS = 12
_CACHE_SIZE = 1 << _CACHE_BITS
_CACHE_MASK = _CACHE_SIZE - 1


@njit(cache=True)
def _axis_steps(w, radius, x, y, z, dims):
    """``w[a * (2 r + 1) + o + r]``: wrapped site-index step of cell offset o along axis a."""
    width = 2 * radius + 1
    stride = 3
    for ax in range(2, -1, -1):
        if ax == 0:
            c = x >> 1
        elif ax == 1:
            c = y >> 1
        else:
            c = z >> 1
        n = dims[ax]
        for o in range(-radius, radius + 1):
            cc = c + o
            if cc < 0:
                cc += n
            elif cc >= n:
                cc -= n
            w[ax * width + o + radius] = (cc - c) * stride
        stride *= n


@njit(cache=True)
def _plain_step(code, radius, dims):
    """Site-index step of the cell offset with code ``code`` (see ``_cell_code``), no wrapping."""
    width = 2 * radius + 1
    cx = code // (width * width) - radius
    cy = (code // width) % width - radius
    cz = code % width - radius
    return ((cx * dims[1] + cy) * dims[2] + cz) * 3


@njit(cache=True)
def _patch_deltas(dims):
    """(3, 39) int64: site-index step from A to each patch site, for A away from the boundary."""
    out = np.zeros((3, _PATCH_SIZE), dtype=np.int64)
    for s in range(3):
        for p in range(_PATCH_SIZE):
            out[s, p] = _plain_step(_PC[s, p], _PATCH_R, dims) + _PT[s, p] - s
    return out


@njit(cache=True)
def _region_deltas(dims):
    """(3, 8, L) int64: site-index step from A to each region site, for A away from the boundary."""
    out = np.zeros(_RC.shape, dtype=np.int64)
    for s in range(3):
        for k in range(8):
            for q in range(_RCNT[s, k]):
                out[s, k, q] = _plain_step(_RC[s, k, q], _REGION_R, dims) + _RT[s, k, q] - s
    return out


@njit(cache=True, inline="always")
def _inside(x, y, z, dims, margin):
    """True when the cell of (x, y, z) is at least ``margin`` cells away from every boundary."""
    i = x >> 1
    j = y >> 1
    kk = z >> 1
    return (margin <= i < dims[0] - margin) and (margin <= j < dims[1] - margin) and (margin <= kk < dims[2] - margin)


@njit(cache=True, inline="always")
def _gather_patch(pb, occ, dims, x, y, z, s, pdelta, cs):
    """Fill ``pb[p] = 1 << (4 * occ[patch site p])`` for p = 1..38 (the packed one-hot state).

    ``pb[0]`` receives the bitwise OR of ``pb[1:]``: it is >= 256 iff a vacancy or a
    bridge lies within two hops of the centre (the centre itself excluded).
    """
    acc = 0
    site = (((x >> 1) * dims[1] + (y >> 1)) * dims[2] + (z >> 1)) * 3 + s
    if _inside(x, y, z, dims, _PATCH_R):
        for p in range(1, _PATCH_SIZE):
            v = 1 << (int(occ[np.uint64(site + pdelta[s, p])]) << 2)
            pb[p] = v
            acc |= v
    else:
        # wrapped steps per axis in cs[0:9], then the index of each of the 27 cells in cs[9:36]
        _axis_steps(cs, _PATCH_R, x, y, z, dims)
        base = site - s
        q = 9
        for ox in range(3):
            for oy in range(3, 6):
                sxy = base + cs[ox] + cs[oy]
                for oz in range(6, 9):
                    cs[q] = sxy + cs[oz]
                    q += 1
        for p in range(1, _PATCH_SIZE):
            v = 1 << (int(occ[np.uint64(cs[9 + _PC[s, p]] + _PT[s, p])]) << 2)
            pb[p] = v
            acc |= v
    pb[0] = acc


@njit(cache=True, inline="always")
def _rotation_rates(d, kind, s0, s1, ori, rates, classes, rot_rate, err):
    """Fill the rotation channels 16-19 of defect ``d``; return their sum (NaN on a missing rotation class)."""
    for c in range(N_KICK_CHANNELS, N_CHANNELS):
        rates[d, c] = 0.0
        classes[d, c] = -1
    if kind == KIND_VACANCY or ori < 0:
        return 0.0
    nb = s0 + s1
    r90 = rot_rate[nb]
    rf = rot_rate[3 + nb]
    if r90 != r90:
        err[0] = _ROT_BASE + nb
        return math.nan
    if rf != rf:
        err[0] = _ROT_BASE + 3 + nb
        return math.nan
    rates[d, 16] = r90
    rates[d, 17] = r90
    rates[d, 18] = rf
    classes[d, 16] = _ROT_BASE + nb
    classes[d, 17] = _ROT_BASE + nb
    classes[d, 18] = _ROT_BASE + 3 + nb
    return (r90 + r90) + rf


@njit(cache=True, inline="always")
def _ce_active(ce):
    """True when the catalog has a cluster expansion (some site type has clusters in the tables)."""
    return ce[0][0] + ce[0][1] + ce[0][2] > 0


@njit(cache=True, inline="always")
def _ce_field_on(ce, occ):
    """True when the per-site field of the cluster expansion is kept (``ce[18]`` covers the lattice)."""
    return ce[18].shape[0] == 3 * occ.shape[0] and occ.shape[0] > 0 and ce[19].shape[1] == ce[2].shape[1]


@njit(cache=True)
def _ce_channel(occ, dims, x, y, z, s, k, site_a, a_new, b_new, ce):
    """Cluster-expansion energy change of the hop from A (x, y, z; type s) to its neighbour slot k."""
    xb = wrap(x + _OFF[s, k, 0], 2 * dims[0])
    yb = wrap(y + _OFF[s, k, 1], 2 * dims[1])
    zb = wrap(z + _OFF[s, k, 2], 2 * dims[2])
    sb = _TYP[s, k]
    site_b = site_of(xb, yb, zb, sb, dims)
    return delta_energy_ce(occ, dims, x, y, z, s, xb, yb, zb, sb, site_a, site_b, a_new, b_new, ce)


@njit(cache=True, inline="always")
def _rates_core(d, x, y, z, s, kind, s0, s1, ori, occ, dims, rates, classes, e_kra, prefactor, J, e_bridge, ce,
                rot_rate, beta, err, pb, cs, pdelta, use_cache, ckey, cval):
    """The 20 channel rates of the defect ``d`` at (x, y, z), type ``s``; return their sum.

    ``ori`` is the bridge orientation (:mod:`lattice.orientation`), -1 for a
    vacancy or the orientation-free model. For an oriented bridge only the 4
    aligned kick-outs are open and channels 16-18 hold its rotations, whose
    rates ``rot_rate[kind * 3 + n_Br]`` (Hz) do not depend on the environment.

    Same results, bit for bit, as :func:`_defect_rates_reference` (the direct
    use of :func:`lattice.environment.hop_counts`): the same counts over the
    same sites and the same floating-point expressions in the same order.
    Neighbour-state counts are kept packed, 4 bits per state: a site in state
    ``v`` contributes ``1 << 4 v`` (at most 8 sites are counted, so no field
    overflows), and count ``t`` is ``(packed >> 4 t) & 15``.

    With ``use_cache`` the rate of a channel is looked up in the direct-mapped
    cache ``ckey``/``cval`` under a key that determines every input of
    :func:`rates.ratelaw.hop_rate` (class, mover, remaining and target species,
    both packed count vectors); a miss computes it and stores it. The caller
    must reset the cache (keys -1) whenever ``e_kra``, ``prefactor``, ``J``,
    ``e_bridge`` or ``beta`` change (run_events builds a fresh one per call).
    """
    _gather_patch(pb, occ, dims, x, y, z, s, pdelta, cs)
    ce_on = _ce_active(ce)
    ce_patch = False
    if ce_on:
        use_cache = False  # the CE reaches beyond the counts the cache key holds
        site_a = site_of(x, y, z, s, dims)
        ce_de = ce[14]
        if _ce_field_on(ce, occ):
            ce_patch = ce_field_channels(occ, dims, x, y, z, s, kind == KIND_VACANCY, s0, s1, ce, ce_de)
        else:
            ce_patch = delta_energy_ce_channels(occ, dims, x, y, z, s, kind == KIND_VACANCY, s0, s1, ce, ce_de)
    cnt_all = 0
    for m in range(1, 9):
        cnt_all += pb[m]
    total = 0.0
    for k in range(8):
        bk = pb[1 + k]
        # destination holds a vacancy or a bridge, or (oriented bridge) no kick-out towards it is aligned
        if bk > 16 or (ori >= 0 and _ALN[s, ori, 0, k] == 0 and _ALN[s, ori, 1, k] == 0):
            rates[d, k] = 0.0
            rates[d, 8 + k] = 0.0
            classes[d, k] = -1
            classes[d, 8 + k] = -1
            continue
        st = bk >> 4  # I -> 0, Br -> 1
        # counts over N(A) - {B} and N(B) - {A}
        ca = cnt_all - bk
        cb = 0
        for m in range(7):
            cb += pb[np.uint64(_NBB[s, k, m])]
        # path shell = (N(A) - {B}) + (N(B) - {A}) - the two common sites
        shell = (ca & 15) + (cb & 15) - (pb[np.uint64(_CMN[s, k, 0])] & 1) - (pb[np.uint64(_CMN[s, k, 1])] & 1)
        if kind == KIND_VACANCY:
            rates[d, 8 + k] = 0.0
            classes[d, 8 + k] = -1
            cls = vacancy_class(st, shell)
            key = (cls << 34) | (ca << 16) | cb
            h = (key ^ (key >> 11) ^ (key >> 22) ^ (key >> 33)) & _CACHE_MASK
            if use_cache and ckey[h] == key:
                r = cval[h]
            else:
                de = 0.0
                for t in range(4):
                    dj = J[st, t] - J[VACANCY, t]
                    de += (((ca >> (t << 2)) & 15) - ((cb >> (t << 2)) & 15)) * dj
                if ce_patch:
                    de += ce_de[k]
                elif ce_on:
                    de += _ce_channel(occ, dims, x, y, z, s, k, site_a, st, VACANCY, ce)
                r = hop_rate(cls, de, beta, e_kra, prefactor)
                if r != r:
                    err[0] = cls
                    return math.nan
                if use_cache:
                    ckey[h] = key
                    cval[h] = r
            rates[d, k] = r
            classes[d, k] = cls
            total += r
            continue
        r_prev = 0.0
        cls_prev = -1
        for slot in range(2):
            if ori >= 0 and _ALN[s, ori, slot, k] == 0:
                rates[d, slot * 8 + k] = 0.0
                classes[d, slot * 8 + k] = -1
                continue
            if slot == 0:
                mover = s0
                rem = s1
            else:
                mover = s1
                rem = s0
            if slot == 1 and s1 == s0 and cls_prev >= 0:
                r = r_prev
                cls = cls_prev
            else:
                pair = (1 - rem) + (1 - st)  # number of I (code 0) among remaining and target
                cls = interstitial_class(mover, pair, shell)
                key = (((cls << 2) | (rem << 1) | st) << 32) | (ca << 16) | cb
                h = (key ^ (key >> 11) ^ (key >> 22) ^ (key >> 33)) & _CACHE_MASK
                if use_cache and ckey[h] == key:
                    r = cval[h]
                else:
                    de = 0.0
                    for t in range(4):
                        de += ((ca >> (t << 2)) & 15) * (J[rem, t] - J[BRIDGE, t]) + \
                            ((cb >> (t << 2)) & 15) * (J[BRIDGE, t] - J[st, t])
                    de += J[rem, BRIDGE] - J[BRIDGE, st]
                    de += e_bridge[mover + st] - e_bridge[mover + rem]
                    if ce_patch:
                        de += ce_de[slot * 8 + k]
                    elif ce_on:
                        de += _ce_channel(occ, dims, x, y, z, s, k, site_a, rem, BRIDGE, ce)
                    r = hop_rate(cls, de, beta, e_kra, prefactor)
                    if r != r:
                        err[0] = cls
                        return math.nan
                    if use_cache:
                        ckey[h] = key
                        cval[h] = r
                r_prev = r
                cls_prev = cls
            rates[d, slot * 8 + k] = r
            classes[d, slot * 8 + k] = cls
            total += r
    return total + _rotation_rates(d, kind, s0, s1, ori, rates, classes, rot_rate, err)


@njit(cache=True)
def _defect_rates_scratch(d, occ, dims, def_kind, def_xyz, def_s, def_sp, def_or, rates, classes, e_kra, prefactor,
                          J, e_bridge, ce, rot_rate, beta, err, pb, cs, pdelta, use_cache, ckey, cval):
    """:func:`defect_rates` with caller-provided scratch (``pb``, ``cs``) and patch deltas."""
    return _rates_core(d, def_xyz[d, 0], def_xyz[d, 1], def_xyz[d, 2], def_s[d], def_kind[d],
                       int(def_sp[d, 0]), int(def_sp[d, 1]), int(def_or[d]), occ, dims, rates, classes, e_kra,
                       prefactor, J, e_bridge, ce, rot_rate, beta, err, pb, cs, pdelta, use_cache, ckey, cval)


@njit(cache=True)
def defect_rates(d, occ, dims, def_kind, def_xyz, def_s, def_sp, def_or, rates, classes, e_kra, prefactor,
                 J, e_bridge, ce, rot_rate, beta, cA, cB, err):
    """Recompute the 20 channel rates of defect ``d``; return their sum.

    Channels: ``slot * 8 + k`` with ``k`` the neighbour slot of the destination
    and ``slot`` the bridge atom that moves (always 0 for a vacancy); 16-18 the
    rotations of an oriented bridge (:mod:`lattice.orientation`). Blocked or
    closed channels (destination holds a defect, a kick-out not aligned with
    the orientation) get rate 0 and class -1.

    Returns NaN and writes the class id into ``err[0]`` when the catalog lacks
    a class that occurs. ``cA`` and ``cB`` ((4,) int64) are unused scratch kept
    for the interface: the counts are evaluated from a gathered patch of the 39
    sites within two hops, equivalently to :func:`lattice.environment.hop_counts`.
    """
    pb = np.zeros(_PATCH_SIZE, dtype=np.int64)
    cs = np.zeros(_CS_LEN, dtype=np.int64)
    ckey = np.zeros(1, dtype=np.int64)
    cval = np.zeros(1, dtype=np.float64)
    return _defect_rates_scratch(d, occ, dims, def_kind, def_xyz, def_s, def_sp, def_or, rates, classes, e_kra,
                                 prefactor, J, e_bridge, ce, rot_rate, beta, err, pb, cs, _patch_deltas(dims), False,
                                 ckey, cval)


@njit(cache=True)
def _defect_rates_reference(d, occ, dims, def_kind, def_xyz, def_s, def_sp, def_or, rates, classes, e_kra,
                            prefactor, J, e_bridge, ce, rot_rate, beta, cA, cB, err):
    """Direct implementation with :func:`lattice.environment.hop_counts` (for cross-checks)."""
    x = def_xyz[d, 0]
    y = def_xyz[d, 1]
    z = def_xyz[d, 2]
    s = def_s[d]
    ce_on = _ce_active(ce)
    site_a = site_of(x, y, z, s, dims)
    total = 0.0
    if def_kind[d] == KIND_VACANCY:
        for k in range(8):
            rates[d, 8 + k] = 0.0
            classes[d, 8 + k] = -1
            st = occ[neighbour_site(x, y, z, s, k, dims)]
            if st > BR:
                rates[d, k] = 0.0
                classes[d, k] = -1
                continue
            shell = hop_counts(occ, dims, x, y, z, s, k, cA, cB)
            cls = vacancy_class(st, shell)
            de = delta_energy_vacancy(cA, cB, st, J)
            if ce_on:
                de += _ce_channel(occ, dims, x, y, z, s, k, site_a, st, VACANCY, ce)
            r = hop_rate(cls, de, beta, e_kra, prefactor)
            if r != r:
                err[0] = cls
                return math.nan
            rates[d, k] = r
            classes[d, k] = cls
            total += r
        return total + _rotation_rates(d, def_kind[d], 0, 0, -1, rates, classes, rot_rate, err)
    s0 = def_sp[d, 0]
    s1 = def_sp[d, 1]
    ori = int(def_or[d])
    r_prev = 0.0
    cls_prev = -1
    for k in range(8):
        st = occ[neighbour_site(x, y, z, s, k, dims)]
        if st > BR:
            rates[d, k] = 0.0
            rates[d, 8 + k] = 0.0
            classes[d, k] = -1
            classes[d, 8 + k] = -1
            continue
        shell = hop_counts(occ, dims, x, y, z, s, k, cA, cB)
        for slot in range(2):
            mover = s0 if slot == 0 else s1
            rem = s1 if slot == 0 else s0
            if slot == 1 and s1 == s0:
                r = r_prev
                cls = cls_prev
            else:
                pair = (1 if rem == I else 0) + (1 if st == I else 0)
                cls = interstitial_class(mover, pair, shell)
                de = delta_energy_kickout(cA, cB, mover, rem, st, J, e_bridge)
                if ce_on:
                    de += _ce_channel(occ, dims, x, y, z, s, k, site_a, rem, BRIDGE, ce)
                r = hop_rate(cls, de, beta, e_kra, prefactor)
                r_prev = r
                cls_prev = cls
            if ori >= 0 and _ALN[s, ori, slot, k] == 0:
                # not an event of an oriented bridge (its class need not be in the catalog)
                rates[d, slot * 8 + k] = 0.0
                classes[d, slot * 8 + k] = -1
                continue
            if r != r:
                err[0] = cls
                return math.nan
            rates[d, slot * 8 + k] = r
            classes[d, slot * 8 + k] = cls
            total += r
    return total + _rotation_rates(d, def_kind[d], int(s0), int(s1), ori, rates, classes, rot_rate, err)


@njit(cache=True)
def tree_set(tree, n_leaves, d, value):
    """Set leaf ``d`` of the sum tree and refresh its ancestors (exact sums of children)."""
    i = n_leaves + d
    tree[i] = value
    i >>= 1
    while i >= 1:
        tree[i] = tree[2 * i] + tree[2 * i + 1]
        i >>= 1


@njit(cache=True)
def tree_select(tree, n_leaves, u):
    """Leaf whose cumulative interval contains ``u`` (0 <= u < tree[1]); returns (leaf, remainder)."""
    i = 1
    while i < n_leaves:
        left = 2 * i
        if u < tree[left] or tree[left + 1] == 0.0:
            i = left
        else:
            u -= tree[left]
            i = left + 1
    return i - n_leaves, u


@njit(cache=True)
def _in_box(x, y, z, box):
    return (box[0, 0] <= x <= box[0, 1]) and (box[1, 0] <= y <= box[1, 1]) and (box[2, 0] <= z <= box[2, 1])


@njit(cache=True)
def init_rates(occ, dims, def_kind, def_xyz, def_s, def_sp, def_or, rates, classes, tree, n_leaves,
               e_kra, prefactor, J, e_bridge, ce, rot_rate, beta, err):
    """Fill every defect's rates and the sum tree from scratch. Returns False on a missing class."""
    pb = np.zeros(_PATCH_SIZE, dtype=np.int64)
    cs = np.zeros(_CS_LEN, dtype=np.int64)
    pdelta = _patch_deltas(dims)
    ckey = np.zeros(1, dtype=np.int64)
    cval = np.zeros(1, dtype=np.float64)
    if _ce_active(ce) and _ce_field_on(ce, occ):
        ce_field_init(occ, dims, ce, ce[18])
    tree[:] = 0.0
    for d in range(def_kind.shape[0]):
        tot = _defect_rates_scratch(d, occ, dims, def_kind, def_xyz, def_s, def_sp, def_or, rates, classes,
                                    e_kra, prefactor, J, e_bridge, ce, rot_rate, beta, err, pb, cs, pdelta, False,
                                    ckey, cval)
        if tot != tot:
            return False
        tree[n_leaves + d] = tot
    for i in range(n_leaves - 1, 0, -1):
        tree[i] = tree[2 * i] + tree[2 * i + 1]
    return True


@njit(cache=True, _nrt=False)
def _run_events_impl(
    occ, disp, dims,
    def_kind, def_site, def_xyz, def_s, def_sp, def_adisp, def_disp, def_tenter, def_or,
    rates, classes, tree, n_leaves, stamp,
    e_kra, prefactor, J, e_bridge, ce, rot_rate, beta,
    axis, msd, plane_count, occ_time, use_box, box, in_box, hop_count, rot_count,
    log_time, log_def, log_from, log_to, log_cls, log_slot,
    t, t_stop, max_events, ubuf, upos, counters, err,
    pb, cs, rcs, pdelta, rdelta, upd, ckey, cval,
):
    """Body of :func:`run_events` (scratch arrays allocated by the caller; no reference counting)."""
    n_def = def_kind.shape[0]
    ce_cells = 0
    ce_fld = _ce_active(ce) and _ce_field_on(ce, occ)
    if _ce_active(ce):
        # a defect depends on the sites within max(reach + 1, 2) (doubled, per axis) of it; A and B
        # are within 1 of each other
        dep = ce[6][0] + 1
        if dep < 2:
            dep = 2
        ce_cells = (dep + 2) // 2
    n2x = 2 * dims[0]
    n2y = 2 * dims[1]
    n2z = 2 * dims[2]
    log_cap = log_time.shape[0]
    done = 0
    while True:
        if done >= max_events:
            return STOP_EVENTS, t, upos
        if log_cap > 0 and counters[C_LOG] >= log_cap:
            return STOP_LOG_FULL, t, upos
        if upos + 2 > ubuf.shape[0]:
            return STOP_BUFFER, t, upos
        total = tree[1]
        if not total > 0.0:
            return STOP_FROZEN, t, upos
        dt = -math.log(1.0 - ubuf[upos]) / total
        upos += 1
        if t + dt > t_stop:
            return STOP_TIME, t_stop, upos
        t += dt
        target = ubuf[upos] * total
        upos += 1
        d, rem = tree_select(tree, n_leaves, target)
        if d >= n_def:
            d = n_def - 1
        # channel within the defect
        j = -1
        last = -1
        for c in range(N_CHANNELS):
            r = rates[d, c]
            if r > 0.0:
                last = c
                if rem < r:
                    j = c
                    break
                rem -= r
        if j < 0:
            j = last
        if j >= N_KICK_CHANNELS:
            # rotation in place: only this defect's channels change
            cls = classes[d, j]
            def_or[d] = _ROTN[def_s[d], def_or[d], j - N_KICK_CHANNELS]
            rot_count[cls - _ROT_BASE] += 1
            done += 1
            counters[C_EVENTS] += 1
            stamp[d] = counters[C_EVENTS]
            tot = _rates_core(d, def_xyz[d, 0], def_xyz[d, 1], def_xyz[d, 2], def_s[d], def_kind[d],
                              int(def_sp[d, 0]), int(def_sp[d, 1]), int(def_or[d]), occ, dims, rates, classes,
                              e_kra, prefactor, J, e_bridge, ce, rot_rate, beta, err, pb, cs, pdelta, True, ckey, cval)
            if tot != tot:
                return STOP_MISSING_RATE, t, upos
            tree_set(tree, n_leaves, d, tot)
            continue
        k = j & 7
        slot = j >> 3
        cls = classes[d, j]

        # geometry of the hop A -> B
        site_a = def_site[d]
        x = def_xyz[d, 0]
        y = def_xyz[d, 1]
        z = def_xyz[d, 2]
        s = def_s[d]
        dx = _OFF[s, k, 0]
        dy = _OFF[s, k, 1]
        dz = _OFF[s, k, 2]
        xb = wrap(x + dx, n2x)
        yb = wrap(y + dy, n2y)
        zb = wrap(z + dz, n2z)
        sb = _TYP[s, k]
        site_b = site_of(xb, yb, zb, sb, dims)
        if axis == 0:
            plane_a = x
            plane_b = xb
        elif axis == 1:
            plane_a = y
            plane_b = yb
        else:
            plane_a = z
            plane_b = zb

        # residence of the defect on A
        if def_kind[d] == KIND_VACANCY:
            occ_kind = 0
        else:
            occ_kind = 1 + def_sp[d, 0] + def_sp[d, 1]
        occ_time[occ_kind, plane_a] += t - def_tenter[d]
        def_tenter[d] = t

        if def_kind[d] == KIND_VACANCY:
            mover = occ[site_b]
            # the mover goes B -> A: displacement -delta
            d0 = disp[site_b, 0]
            d1 = disp[site_b, 1]
            d2 = disp[site_b, 2]
            msd[mover] += 2 - 2 * (d0 * dx + d1 * dy + d2 * dz)
            disp[site_a, 0] = d0 - dx
            disp[site_a, 1] = d1 - dy
            disp[site_a, 2] = d2 - dz
            if ce_fld:  # the fields follow A's change (B still old), then B's (A already new)
                ce_field_change(occ, dims, x, y, z, s, site_a, mover, ce, ce[18])
            occ[site_a] = mover
            if ce_fld:
                ce_field_change(occ, dims, xb, yb, zb, sb, site_b, VACANCY, ce, ce[18])
            occ[site_b] = VACANCY
            disp[site_b, 0] = d
            disp[site_b, 1] = 0
            disp[site_b, 2] = 0
            plane_count[mover, plane_b] -= 1
            plane_count[mover, plane_a] += 1
            if use_box:
                ia = _in_box(x, y, z, box)
                ib = _in_box(xb, yb, zb, box)
                if ia != ib:
                    in_box[mover] += 1 if ia else -1
        else:
            mover = def_sp[d, slot]
            remain = def_sp[d, 1 - slot]
            target_sp = occ[site_b]
            # remaining atom becomes the regular halide on A
            if ce_fld:
                ce_field_change(occ, dims, x, y, z, s, site_a, remain, ce, ce[18])
            occ[site_a] = remain
            disp[site_a, 0] = def_adisp[d, 1 - slot, 0]
            disp[site_a, 1] = def_adisp[d, 1 - slot, 1]
            disp[site_a, 2] = def_adisp[d, 1 - slot, 2]
            m0 = def_adisp[d, slot, 0]
            m1 = def_adisp[d, slot, 1]
            m2 = def_adisp[d, slot, 2]
            msd[mover] += 2 + 2 * (m0 * dx + m1 * dy + m2 * dz)
            # new bridge on B: slot 0 = mover, slot 1 = kicked-out target atom
            def_adisp[d, 0, 0] = m0 + dx
            def_adisp[d, 0, 1] = m1 + dy
            def_adisp[d, 0, 2] = m2 + dz
            def_adisp[d, 1, 0] = disp[site_b, 0]
            def_adisp[d, 1, 1] = disp[site_b, 1]
            def_adisp[d, 1, 2] = disp[site_b, 2]
            def_sp[d, 0] = mover
            def_sp[d, 1] = target_sp
            if def_or[d] >= 0:
                def_or[d] = _LAND[s, k]
            if ce_fld:
                ce_field_change(occ, dims, xb, yb, zb, sb, site_b, BRIDGE, ce, ce[18])
            occ[site_b] = BRIDGE
            disp[site_b, 0] = d
            disp[site_b, 1] = 0
            disp[site_b, 2] = 0
            plane_count[mover, plane_a] -= 1
            plane_count[mover, plane_b] += 1
            if use_box:
                ia = _in_box(x, y, z, box)
                ib = _in_box(xb, yb, zb, box)
                if ia != ib:
                    in_box[mover] += -1 if ia else 1

        # the defect itself
        def_site[d] = site_b
        def_xyz[d, 0] = xb
        def_xyz[d, 1] = yb
        def_xyz[d, 2] = zb
        def_s[d] = sb
        def_disp[d, 0] += dx
        def_disp[d, 1] += dy
        def_disp[d, 2] += dz
        hop_count[cls] += 1
        done += 1
        counters[C_EVENTS] += 1
        if log_cap > 0:
            row = counters[C_LOG]
            log_time[row] = t
            log_def[row] = d
            log_from[row] = site_a
            log_to[row] = site_b
            log_cls[row] = cls
            log_slot[row] = slot
            counters[C_LOG] = row + 1

        # rate updates: the moved defect, then every defect within two hops of A or B (the
        # region), in the order of REGION_OFFSETS. The region is the patch of B, just
        # gathered for the moved defect (pb[0] flags a vacancy or bridge in it, B itself
        # excluded), plus the _N_AX sites of _AX around A; the region is scanned only when
        # one of these holds a defect. Any other defect in the region is on one of these
        # sites, so a region without one would have given no update in the scan either. (On
        # a tiny periodic lattice an _AX site may coincide with B: a harmless false alarm.)
        stamp_now = counters[C_EVENTS]
        stamp[d] = stamp_now
        tot = _rates_core(d, xb, yb, zb, sb, def_kind[d], int(def_sp[d, 0]), int(def_sp[d, 1]), int(def_or[d]), occ,
                          dims, rates, classes, e_kra, prefactor, J, e_bridge, ce, rot_rate, beta, err, pb, cs, pdelta,
                          True, ckey, cval)
        if tot != tot:
            return STOP_MISSING_RATE, t, upos
        tree_set(tree, n_leaves, d, tot)
        if n_def > 1 and ce_cells > 0:
            # cluster expansion: every defect whose clusters or hop paths can reach A or B, by a
            # scan of the cells within ce_cells of A's cell (a defect seen twice on a small
            # periodic lattice is recomputed once)
            ci = x >> 1
            cj = y >> 1
            ck = z >> 1
            for oi in range(-ce_cells, ce_cells + 1):
                ii = (ci + oi) % dims[0]
                for oj in range(-ce_cells, ce_cells + 1):
                    jj = (cj + oj) % dims[1]
                    for ok in range(-ce_cells, ce_cells + 1):
                        kk = (ck + ok) % dims[2]
                        base = ((ii * dims[1] + jj) * dims[2] + kk) * 3
                        for tt in range(3):
                            if occ[base + tt] < VACANCY:
                                continue
                            e = disp[base + tt, 0]
                            if stamp[e] == stamp_now:
                                continue
                            stamp[e] = stamp_now
                            tot = _rates_core(e, def_xyz[e, 0], def_xyz[e, 1], def_xyz[e, 2], def_s[e], def_kind[e],
                                              int(def_sp[e, 0]), int(def_sp[e, 1]), int(def_or[e]), occ, dims, rates,
                                              classes, e_kra, prefactor, J, e_bridge, ce, rot_rate, beta, err, pb, cs,
                                              pdelta, True, ckey, cval)
                            if tot != tot:
                                return STOP_MISSING_RATE, t, upos
                            tree_set(tree, n_leaves, e, tot)
        elif n_def > 1:
            near = pb[0] >= 256  # a vacancy (256) or a bridge (4096) in the patch of B
            if not near:
                if _inside(x, y, z, dims, _PATCH_R):
                    for j in range(_N_AX):
                        if occ[site_a + pdelta[s, _AX[s, k, j]]] >= VACANCY:
                            near = True
                else:
                    _axis_steps(rcs, _PATCH_R, x, y, z, dims)
                    for j in range(_N_AX):
                        p = _AX[s, k, j]
                        if occ[site_a - s + rcs[_PW[s, p, 0]] + rcs[_PW[s, p, 1]] + rcs[_PW[s, p, 2]]
                               + _PT[s, p]] >= VACANCY:
                            near = True
            if near:
                n_upd = _scan_region(occ, disp, dims, stamp, stamp_now, x, y, z, s, k, site_a, rdelta, rcs, upd)
                for u in range(n_upd):
                    e = upd[u]
                    if stamp[e] == stamp_now:  # listed twice (tiny periodic lattice)
                        continue
                    stamp[e] = stamp_now
                    tot = _rates_core(e, def_xyz[e, 0], def_xyz[e, 1], def_xyz[e, 2], def_s[e], def_kind[e],
                                      int(def_sp[e, 0]), int(def_sp[e, 1]), int(def_or[e]), occ, dims, rates,
                                      classes, e_kra, prefactor, J, e_bridge, ce, rot_rate, beta, err, pb, cs, pdelta,
                                      True, ckey, cval)
                    if tot != tot:
                        return STOP_MISSING_RATE, t, upos
                    tree_set(tree, n_leaves, e, tot)


@njit(cache=True, _nrt=False)
def _scan_region(occ, disp, dims, stamp, stamp_now, x, y, z, s, k, site_a, rdelta, rcs, upd):
    """Defects not stamped ``stamp_now`` on the region of hop (A, k), in region order.

    Writes them into ``upd`` (a defect may appear twice on a tiny periodic lattice);
    returns their number.
    """
    n_upd = 0
    inside = _inside(x, y, z, dims, _REGION_R)
    if not inside:
        _axis_steps(rcs, _REGION_R, x, y, z, dims)
    for q in range(_RCNT[s, k]):
        if inside:
            sq = site_a + rdelta[s, k, q]
        else:
            sq = site_a - s + rcs[_RW[s, k, q, 0]] + rcs[_RW[s, k, q, 1]] + rcs[_RW[s, k, q, 2]] + _RT[s, k, q]
        if occ[sq] >= VACANCY:
            e = disp[sq, 0]
            if stamp[e] != stamp_now:
                upd[n_upd] = e
                n_upd += 1
    return n_upd


@njit(cache=True)
def run_events(
    # lattice state
    occ, disp, dims,
    # defects
    def_kind, def_site, def_xyz, def_s, def_sp, def_adisp, def_disp, def_tenter, def_or,
    rates, classes, tree, n_leaves, stamp,
    # catalog
    e_kra, prefactor, J, e_bridge, ce, rot_rate, beta,
    # observables
    axis, msd, plane_count, occ_time, use_box, box, in_box, hop_count, rot_count,
    # event log
    log_time, log_def, log_from, log_to, log_cls, log_slot,
    # control
    t, t_stop, max_events, ubuf, upos, counters, err,
):
    """Execute events until ``t_stop``, ``max_events`` more events, or the buffer ends.

    Returns
    -------
    status : int
        One of the ``STOP_*`` codes.
    t : float
        Simulated time (s) after the last executed event, or ``t_stop``.
    upos : int
        Position of the next unused uniform number in ``ubuf``.
    """
    pb = np.zeros(_PATCH_SIZE, dtype=np.int64)
    cs = np.zeros(_CS_LEN, dtype=np.int64)
    rcs = np.zeros(_W_LEN, dtype=np.int64)
    pdelta = _patch_deltas(dims)
    rdelta = _region_deltas(dims)
    upd = np.zeros(_ROFF.shape[2] + 1, dtype=np.int64)
    ckey = np.full(_CACHE_SIZE, -1, dtype=np.int64)
    cval = np.zeros(_CACHE_SIZE, dtype=np.float64)
    return _run_events_impl(
        occ, disp, dims,
        def_kind, def_site, def_xyz, def_s, def_sp, def_adisp, def_disp, def_tenter, def_or,
        rates, classes, tree, n_leaves, stamp,
        e_kra, prefactor, J, e_bridge, ce, rot_rate, beta,
        axis, msd, plane_count, occ_time, use_box, box, in_box, hop_count, rot_count,
        log_time, log_def, log_from, log_to, log_cls, log_slot,
        t, t_stop, max_events, ubuf, upos, counters, err,
        pb, cs, rcs, pdelta, rdelta, upd, ckey, cval,
    )


@njit(cache=True)
def flush_occupancy(t, def_kind, def_xyz, def_sp, def_tenter, axis, occ_time):
    """Add the residence of every defect on its current site up to time ``t``."""
    for d in range(def_kind.shape[0]):
        if def_kind[d] == KIND_VACANCY:
            kk = 0
        else:
            kk = 1 + def_sp[d, 0] + def_sp[d, 1]
        occ_time[kk, def_xyz[d, axis]] += t - def_tenter[d]
        def_tenter[d] = t
