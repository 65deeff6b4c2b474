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
   then its hop by a linear scan over at most 16 channels.
4. The hop is applied and the rates of the moved defect and of every defect
   within two hops of the two changed sites are recomputed; only their tree
   paths are updated.

Uniform numbers come from a buffer filled by the Python side
(``numpy.random.Generator.random``), consumed strictly in order: the same
seed gives the same run whatever the chunking, and a checkpoint holds the
generator state and the unused tail of the buffer.
"""

from __future__ import annotations

import math

import numpy as np
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
from lattice.sublattice import NEIGHBOUR_OFFSETS, NEIGHBOUR_TYPES, REGION_COUNTS, REGION_OFFSETS
from rates.ratelaw import delta_energy_kickout, delta_energy_vacancy, hop_rate

# status codes returned by run_events
STOP_TIME = 0
STOP_EVENTS = 1
STOP_BUFFER = 2
STOP_FROZEN = 3
STOP_MISSING_RATE = 4
STOP_LOG_FULL = 5

N_CHANNELS = 16

# counters layout (int64 array)
C_EVENTS = 0  # events executed since the start of the run
C_LOG = 1  # rows used in the event log

_OFF = np.ascontiguousarray(NEIGHBOUR_OFFSETS)
_TYP = np.ascontiguousarray(NEIGHBOUR_TYPES)
_ROFF = np.ascontiguousarray(REGION_OFFSETS)
_RCNT = np.ascontiguousarray(REGION_COUNTS)


@njit(cache=True)
def defect_rates(d, occ, dims, def_kind, def_xyz, def_s, def_sp, rates, classes, e_kra, prefactor,
                 J, e_bridge, beta, cA, cB, err):
    """Recompute the 16 channel rates of defect ``d``; return their sum.

    Channels: ``slot * 8 + k`` with ``k`` the neighbour slot of the destination
    and ``slot`` the bridge atom that moves (always 0 for a vacancy). Blocked
    channels (destination holds a defect) get rate 0 and class -1.

    Returns NaN and writes the class id into ``err[0]`` when the catalog lacks
    a class that occurs.
    """
    x = def_xyz[d, 0]
    y = def_xyz[d, 1]
    z = def_xyz[d, 2]
    s = def_s[d]
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
            r = hop_rate(cls, delta_energy_vacancy(cA, cB, st, J), beta, e_kra, prefactor)
            if r != r:
                err[0] = cls
                return math.nan
            rates[d, k] = r
            classes[d, k] = cls
            total += r
        return total
    s0 = def_sp[d, 0]
    s1 = def_sp[d, 1]
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
                r = rates[d, k]
                cls = classes[d, k]
            else:
                pair = (1 if rem == I else 0) + (1 if st == I else 0)
                cls = interstitial_class(mover, pair, shell)
                r = hop_rate(cls, delta_energy_kickout(cA, cB, mover, rem, st, J, e_bridge), beta, e_kra, prefactor)
                if r != r:
                    err[0] = cls
                    return math.nan
            rates[d, slot * 8 + k] = r
            classes[d, slot * 8 + k] = cls
            total += r
    return total


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
def init_rates(occ, dims, def_kind, def_xyz, def_s, def_sp, rates, classes, tree, n_leaves,
               e_kra, prefactor, J, e_bridge, beta, err):
    """Fill every defect's rates and the sum tree from scratch. Returns False on a missing class."""
    cA = np.zeros(4, dtype=np.int64)
    cB = np.zeros(4, dtype=np.int64)
    tree[:] = 0.0
    for d in range(def_kind.shape[0]):
        tot = defect_rates(d, occ, dims, def_kind, def_xyz, def_s, def_sp, rates, classes,
                           e_kra, prefactor, J, e_bridge, beta, cA, cB, err)
        if tot != tot:
            return False
        tree[n_leaves + d] = tot
    for i in range(n_leaves - 1, 0, -1):
        tree[i] = tree[2 * i] + tree[2 * i + 1]
    return True


@njit(cache=True)
def run_events(
    # lattice state
    occ, disp, dims,
    # defects
    def_kind, def_site, def_xyz, def_s, def_sp, def_adisp, def_disp, def_tenter,
    rates, classes, tree, n_leaves, stamp,
    # catalog
    e_kra, prefactor, J, e_bridge, beta,
    # observables
    axis, msd, plane_count, occ_time, use_box, box, in_box, hop_count,
    # event log
    log_time, log_def, log_from, log_to, log_cls,
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
    cA = np.zeros(4, dtype=np.int64)
    cB = np.zeros(4, dtype=np.int64)
    n_def = def_kind.shape[0]
    n2 = 2 * dims
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
        xb = wrap(x + dx, n2[0])
        yb = wrap(y + dy, n2[1])
        zb = wrap(z + dz, n2[2])
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
            occ[site_a] = mover
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
            counters[C_LOG] = row + 1

        # rate updates: the moved defect, then every defect within two hops of A or B
        stamp_now = counters[C_EVENTS]
        stamp[d] = stamp_now
        tot = defect_rates(d, occ, dims, def_kind, def_xyz, def_s, def_sp, rates, classes,
                           e_kra, prefactor, J, e_bridge, beta, cA, cB, err)
        if tot != tot:
            return STOP_MISSING_RATE, t, upos
        tree_set(tree, n_leaves, d, tot)
        if n_def > 1:
            for q in range(_RCNT[s, k]):
                xq = wrap(x + _ROFF[s, k, q, 0], n2[0])
                yq = wrap(y + _ROFF[s, k, q, 1], n2[1])
                zq = wrap(z + _ROFF[s, k, q, 2], n2[2])
                sq = 0 if (xq & 1) else (1 if (yq & 1) else 2)
                st = occ[site_of(xq, yq, zq, sq, dims)]
                if st >= VACANCY:
                    e = disp[site_of(xq, yq, zq, sq, dims), 0]
                    if stamp[e] != stamp_now:
                        stamp[e] = stamp_now
                        tot = defect_rates(e, occ, dims, def_kind, def_xyz, def_s, def_sp, rates, classes,
                                           e_kra, prefactor, J, e_bridge, beta, cA, cB, err)
                        if tot != tot:
                            return STOP_MISSING_RATE, t, upos
                        tree_set(tree, n_leaves, e, tot)


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
