"""Bridge orientations on planted MD trajectories: per-frame assignment, rotations, hop labels.

Planted with the synthetic-trajectory builder of ``test_tracker.py``: ideal
sites plus seeded Gaussian noise, atoms moved linearly. Covers rotations and
librations, aligned kick-outs that land as the model says, a kick-out
recrossing, a genuine return hop after the dwell time, a chain of hops by
the kicked-out atom, and frames where the bridge cannot be assigned.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_tracker import BRIDGE_HALF_A, Builder

from lattice import HalideSublattice, build_pure
from lattice.orientation import LANDING, NEIGHBOUR_TYPES, RELATION, REL_ALIGNED
from lattice.sublattice import NEIGHBOUR_OFFSETS
from md_reference.analysis.orientation import frame_orientations, label_orientations, smoothed_positions


@pytest.fixture(scope="module")
def lat():
    return HalideSublattice((3, 3, 3))


def _e(axis):
    v = np.zeros(3)
    v[axis] = 1.0
    return v


def _split(bld, site, axis, plus_atom, minus_atom, frame, ramp=3):
    """Re-place the bridge on ``site`` split along ``axis`` (``plus_atom`` on the + side) around ``frame``."""
    c = bld.sites_xyz[site]
    bld.move(plus_atom, c + BRIDGE_HALF_A * _e(axis), frame, ramp)
    bld.move(minus_atom, c - BRIDGE_HALF_A * _e(axis), frame, ramp)


def _aligned_slot(s, axis, side):
    """A neighbour slot of a type-``s`` site that an atom on ``side`` of ``axis`` reaches aligned."""
    for k in range(8):
        if NEIGHBOUR_TYPES[s, k] == axis and NEIGHBOUR_OFFSETS[s, k, axis] == side:
            return k
    raise AssertionError


def _kickout(bld, lat, a_site, k, mover, other, frame):
    """Aligned kick-out of ``mover`` from ``a_site`` to neighbour ``k``, landing as the model says.

    Returns (b_site, target atom): the new bridge on B is split along A's axis, mover on A's side.
    """
    b_site = int(lat.neighbour_table[a_site, k])
    target = int(np.flatnonzero(bld.site_of == b_site)[0])
    s_a = a_site % 3
    a_side = -int(NEIGHBOUR_OFFSETS[s_a, k, s_a])
    c = bld.sites_xyz[b_site]
    bld.move(mover, c + a_side * BRIDGE_HALF_A * _e(s_a), frame)
    bld.move(target, c - a_side * BRIDGE_HALF_A * _e(s_a), frame)
    bld.move(other, bld.sites_xyz[a_site], frame)
    bld.site_of[mover] = bld.site_of[target] = b_site
    bld.site_of[other] = a_site
    return b_site, target


def _label(bld, **kw):
    track = bld.track()
    pos, _, _ = bld.trajectory()
    return track, label_orientations(track, smoothed_positions(pos, None, 5), **kw)


def test_static_bridge_assigned_every_frame(lat):
    occ = build_pure(lat, "I").occ
    a = 40
    bld = Builder(lat, occ, 200, bridges={a: 0}, noise_A=0.15, seed=1)
    site_atom, added = (int(x) for x in bld.atoms_on(a))
    track = bld.track()
    pos, _, _ = bld.trajectory()
    axis, plus = frame_orientations(smoothed_positions(pos, None, 5), track)
    assert np.all(axis[:, 0] == (a % 3 + 1) % 3) and np.all(plus[:, 0] == site_atom)
    rec = label_orientations(track, smoothed_positions(pos, None, 5))
    assert rec["n_unassigned_frames"] == 0 and rec["n_rotations"] == {"rot90": 0, "flip": 0}
    assert rec["assigned_ps"]["0"] == pytest.approx(track.times_ps[-1])
    json.dumps(rec)


def test_rotation_flip_and_libration(lat):
    occ = build_pure(lat, "I").occ
    a = 40
    s = a % 3
    w, u = (s + 1) % 3, (s + 2) % 3
    bld = Builder(lat, occ, 600, bridges={a: 0}, noise_A=0.15, seed=2)
    p_atom, m_atom = (int(x) for x in bld.atoms_on(a))
    _split(bld, a, u, p_atom, m_atom, 150)     # rot90
    _split(bld, a, u, m_atom, p_atom, 300)     # flip
    _split(bld, a, w, m_atom, p_atom, 450, ramp=1)   # libration: 0.1 ps turned, then back
    _split(bld, a, u, m_atom, p_atom, 456, ramp=1)
    _, rec = _label(bld)
    kinds = [(r["kind"], r["frame"]) for r in rec["rotations"]]
    assert [k for k, _ in kinds] == ["rot90", "flip"]
    assert abs(kinds[0][1] - 150) <= 4 and abs(kinds[1][1] - 300) <= 4
    assert rec["rotation_counts"]["0"] == {"rot90": 1, "flip": 1}
    # mid-rotation frames (the pair passes the diagonal) are counted as unassigned, never mislabelled
    assert 0 < rec["n_unassigned_frames"] < 40
    # without the dwell filter the libration is two more rotations
    _, rec0 = _label(bld, min_dwell_ps=0.0)
    assert rec0["n_rotations"]["rot90"] == 3 and rec0["n_rotations"]["flip"] == 1


def test_aligned_kickout_lands_and_returns_after_dwell(lat):
    """A -> B (aligned, landing) then, 4 ps later, the same atom B -> A: two hops, not a recrossing."""
    occ = build_pure(lat, "I").occ
    a = 40
    s = a % 3
    w = (s + 1) % 3
    bld = Builder(lat, occ, 700, bridges={a: 0}, noise_A=0.15, seed=3)
    p_atom, m_atom = (int(x) for x in bld.atoms_on(a))  # p_atom on +w
    k = _aligned_slot(s, w, +1)
    b, target = _kickout(bld, lat, a, k, p_atom, m_atom, 200)
    back = int(np.flatnonzero(lat.neighbour_table[b] == a)[0])
    assert RELATION[b % 3, LANDING[s, k], 0, back] == REL_ALIGNED  # the straight return is aligned
    _kickout(bld, lat, b, back, p_atom, target, 400)
    track, rec = _label(bld)
    assert track.n_hops == 2 and track.n_recrossings == 0
    assert [(e.from_site, e.to_site, e.mover_atom) for e in track.events] == [(a, b, p_atom), (b, a, p_atom)]
    assert [h["relation"] for h in rec["hops"]] == ["aligned", "aligned"]
    assert [h["landing"] for h in rec["hops"]] == [True, True]
    assert rec["relation_counts"]["aligned"] == 2 and rec["landing_counts"]["landing"] == 2
    assert rec["n_rotations"] == {"rot90": 0, "flip": 0}


def test_kickout_recrossing_is_neither_hop_nor_rotation(lat):
    occ = build_pure(lat, "I").occ
    a = 40
    s = a % 3
    w = (s + 1) % 3
    bld = Builder(lat, occ, 300, bridges={a: 0}, noise_A=0.15, seed=4)
    p_atom, m_atom = (int(x) for x in bld.atoms_on(a))
    k = _aligned_slot(s, w, +1)
    b = int(lat.neighbour_table[a, k])
    target = int(bld.atoms_on(b)[0])
    start = {i: bld.pos[150, i].copy() for i in (p_atom, m_atom, target)}
    _kickout(bld, lat, a, k, p_atom, m_atom, 150)
    for i, x in start.items():  # back after 0.1 ps: a recrossing
        bld.move(i, x, 158, ramp=1)
    track, rec = _label(bld)
    assert track.n_hops == 0 and track.n_recrossings == 1
    assert rec["n_rotations"] == {"rot90": 0, "flip": 0}
    assert rec["hops"] == []


def test_chain_by_the_kicked_out_atom_and_a_perpendicular_hop(lat):
    """A -> B by the mover, then B -> C by the atom it kicked out; a third hop against the orientation."""
    occ = build_pure(lat, "I").occ
    a = 40
    s = a % 3
    w = (s + 1) % 3
    bld = Builder(lat, occ, 900, bridges={a: 0}, noise_A=0.15, seed=5)
    p_atom, m_atom = (int(x) for x in bld.atoms_on(a))
    k1 = _aligned_slot(s, w, +1)
    b, t1 = _kickout(bld, lat, a, k1, p_atom, m_atom, 200)
    # the kicked-out atom t1 sits on the far side of A along s: its aligned hops go that way
    t = b % 3
    far = int(NEIGHBOUR_OFFSETS[s, k1, s])
    k2 = _aligned_slot(t, s, far)
    assert RELATION[t, LANDING[s, k1], 1, k2] == REL_ALIGNED
    c, t2 = _kickout(bld, lat, b, k2, t1, p_atom, 400)
    # third hop from C perpendicular to C's landing orientation (no rotation planted before it)
    tc = c % 3
    o_c = int(LANDING[t, k2])
    k3 = next(k for k in range(8) if RELATION[tc, o_c, 0, k] == 2)
    _kickout(bld, lat, c, k3, t1, t2, 650)
    track, rec = _label(bld)
    assert [(e.from_site, e.mover_atom) for e in track.events] == [(a, p_atom), (b, t1), (c, t1)]
    assert [h["relation"] for h in rec["hops"]] == ["aligned", "aligned", "perpendicular"]
    assert [h["landing"] for h in rec["hops"]] == [True, True, True]
    assert rec["relation_counts"] == {"aligned": 2, "crossing": 0, "perpendicular": 1, "unknown": 0}
    assert rec["n_rotations"] == {"rot90": 0, "flip": 0}  # the distortion during a hop is no rotation


def test_collapsed_bridge_frames_are_unassigned(lat):
    occ = build_pure(lat, "I").occ
    a = 40
    bld = Builder(lat, occ, 300, bridges={a: 0}, noise_A=0.05, seed=6)
    p_atom, m_atom = (int(x) for x in bld.atoms_on(a))
    w = (a % 3 + 1) % 3
    c = bld.sites_xyz[a]
    bld.move(p_atom, c + 0.1 * _e(w), 100)   # both atoms near the site: no split to read
    bld.move(m_atom, c - 0.1 * _e(w), 100)
    _split(bld, a, w, p_atom, m_atom, 200)   # and back to the same orientation
    _, rec = _label(bld)
    assert rec["n_unassigned_frames"] >= 90
    assert rec["n_rotations"] == {"rot90": 0, "flip": 0}
    assert rec["unassigned_fraction"] == pytest.approx(rec["n_unassigned_frames"] / 300)
