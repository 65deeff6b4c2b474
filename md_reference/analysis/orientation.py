"""Orientation of split interstitials in MD frames: per-frame assignment, rotations, hop labels.

The MD side of :mod:`lattice.orientation`. For every frame and tracked
interstitial the two halides assigned to its committed site (the bridge) are
taken at their time-averaged positions (the tracker's centred running mean,
drift removed). Their separation ``d`` has a component along each of the two
axes perpendicular to the site's Pb-X-Pb bond; the *orientation axis* is the
larger one, and the atom on its ``+`` side is recorded. A frame is
**unassigned** (counted, never guessed) when

* it is complex, or the raw defect site differs from the committed one;
* the site does not hold exactly two atoms;
* the split is too small (``|d_w| < min_split_A``) or ambiguous
  (``|d_w| < axis_ratio |d_u|``, e.g. a bridge turned halfway or along a
  diagonal).

Rotations
---------
The assigned orientations of a residence (the frames at one committed site)
are cut into runs of constant (axis, ``+`` atom). Runs shorter than
``min_dwell_ps`` are librations or the distortion of a hop in progress and
are dropped (a residence with only short runs keeps its longest); the
committed orientation is the last kept run, and a change between kept runs is
a rotation: ``rot90`` (the axis changes) or ``flip`` (the two atoms swap
sides). Unassigned frames carry the committed orientation.

Hop labels
----------
Each kick-out gets the committed orientation before it (``relation``: is the
hop *aligned*, *crossing* or *perpendicular* to it, see
:data:`lattice.orientation.RELATION`, with the mover as the bridge atom that
moves) and, after it, whether the new bridge's first committed orientation is
the landing orientation of the model (:data:`lattice.orientation.LANDING`:
split along the hop's component on A's axis, mover on A's side).
"""

from __future__ import annotations

import numpy as np

from lattice.orientation import LANDING, RELATION, RELATIONS
from lattice.species import KIND_INTERSTITIAL

DEFAULT_MIN_SPLIT_A = 0.6
"""Smallest perpendicular split (A) of an assigned bridge; ideal bridges are split by about 0.5 a (3 A)."""
DEFAULT_AXIS_RATIO = 1.5
"""The orientation axis's split must exceed the other perpendicular one by this factor."""


def smoothed_positions(pos: np.ndarray, drift_A: np.ndarray | None, window_frames: int) -> np.ndarray:
    """Centred running mean over ``window_frames`` frames (the tracker's), drift removed."""
    p = np.asarray(pos, dtype=np.float64)
    if drift_A is not None:
        p = p - drift_A[:, None, :]
    n = p.shape[0]
    w = int(window_frames)
    h_back, h_fwd = w // 2, (w - 1) // 2
    csum = np.concatenate([np.zeros((1,) + p.shape[1:]), np.cumsum(p, axis=0)], axis=0)
    f = np.arange(n)
    lo = np.maximum(0, f - h_back)
    hi = np.minimum(n, f + h_fwd + 1)
    return (csum[hi] - csum[lo]) / (hi - lo)[:, None, None]


def frame_orientations(smooth: np.ndarray, track, *, min_split_A: float = DEFAULT_MIN_SPLIT_A,
                       axis_ratio: float = DEFAULT_AXIS_RATIO):
    """Per-frame orientation of every interstitial.

    Returns
    -------
    axis : (n_frames, n_defects) int8
        Orientation axis (0..2), -1 unassigned (and for vacancies).
    plus_atom : (n_frames, n_defects) int64
        Halide index on the ``+axis`` side, -1 unassigned.
    """
    n_frames, n_def = track.defect_site.shape
    box = np.asarray(track.lattice.shape, dtype=np.float64) * track.lattice_constant_A
    axis = np.full((n_frames, n_def), -1, dtype=np.int8)
    plus = np.full((n_frames, n_def), -1, dtype=np.int64)
    assign = track.site_assignment
    for j in range(n_def):
        if track.defect_kind[0, j] != KIND_INTERSTITIAL:
            continue
        for f in range(n_frames):
            site = int(track.defect_site[f, j])
            if track.complex_frame[f] or int(track.raw_defect_site[f, j]) != site:
                continue
            atoms = np.flatnonzero(assign[f] == site)
            if atoms.size != 2:
                continue
            d = smooth[f, atoms[0]] - smooth[f, atoms[1]]
            d -= box * np.round(d / box)
            s = site % 3
            w1, w2 = (s + 1) % 3, (s + 2) % 3
            a1, a2 = abs(d[w1]), abs(d[w2])
            w, big, small = (w1, a1, a2) if a1 >= a2 else (w2, a2, a1)
            if big < min_split_A or big < axis_ratio * small:
                continue
            axis[f, j] = w
            plus[f, j] = atoms[0] if d[w] > 0 else atoms[1]
    return axis, plus


def _code(w: int, plus_is_slot0: bool) -> int:
    """Orientation code ``2 w + b`` of :mod:`lattice.orientation` with the given atom as slot 0."""
    return 2 * int(w) + (1 if plus_is_slot0 else 0)


def label_orientations(track, smooth: np.ndarray, *, min_dwell_ps: float | None = None,
                       min_split_A: float = DEFAULT_MIN_SPLIT_A, axis_ratio: float = DEFAULT_AXIS_RATIO) -> dict:
    """Orientation bookkeeping of a :class:`~md_reference.analysis.tracker.DefectTrack`.

    Returns
    -------
    dict (JSON-ready) with ``n_interstitial_frames``, ``n_unassigned_frames``,
    ``rotations`` (list of {time_ps, frame, defect, site, kind, n_br}),
    ``n_rotations`` per kind, ``hops`` (per tracked hop event, in the order of
    ``track.events``: ``relation`` (aligned/crossing/perpendicular or None when
    no orientation was known before it) and ``landing`` (True/False/None)),
    ``relation_counts``, ``landing_counts``, ``assigned_ps`` per bridge
    composition (time with a known orientation, the exposure of rotations) and
    ``rotation_counts`` per composition, and the parameters.
    """
    times = track.times_ps
    dwell = float(track.params["min_dwell_ps"] if min_dwell_ps is None else min_dwell_ps)
    axis, plus = frame_orientations(smooth, track, min_split_A=min_split_A, axis_ratio=axis_ratio)
    n_frames, n_def = track.defect_site.shape
    inter = [j for j in range(n_def) if track.defect_kind[0, j] == KIND_INTERSTITIAL]
    n_int_frames = n_frames * len(inter)
    n_unassigned = int(sum(np.count_nonzero(axis[:, j] < 0) for j in inter))
    # committed orientation per frame: runs of constant (axis, plus) within one committed site
    committed = np.full((n_frames, n_def, 2), -1, dtype=np.int64)
    rotations = []
    for j in inter:
        site = track.defect_site[:, j]
        runs = []  # [site, axis, plus, first frame, last frame]
        for f in range(n_frames):
            if axis[f, j] < 0:
                continue
            key = (int(site[f]), int(axis[f, j]), int(plus[f, j]))
            if runs and tuple(runs[-1][:3]) == key:
                runs[-1][4] = f
            else:
                runs.append([*key, f, f])
        # residences: maximal frame ranges of one committed site
        change = np.flatnonzero(np.diff(site)) + 1
        res_start = np.concatenate([[0], change])
        res_end = np.concatenate([change, [n_frames]])
        for r0, r1 in zip(res_start, res_end):
            group = [r for r in runs if r0 <= r[3] < r1]
            if not group:
                continue
            # runs shorter than the dwell time are librations or the distortion of a hop in progress
            keep = [r for r in group if times[r[4]] - times[r[3]] >= dwell]
            if not keep:
                keep = [max(group, key=lambda r: times[r[4]] - times[r[3]])]
            merged = []
            for r in keep:
                if merged and tuple(merged[-1][:3]) == tuple(r[:3]):
                    merged[-1][4] = r[4]
                else:
                    merged.append(list(r))
            for i, r in enumerate(merged):
                lo = r0 if i == 0 else r[3]
                hi = merged[i + 1][3] if i + 1 < len(merged) else r1
                committed[lo:hi, j] = (r[1], r[2])
                if i > 0:
                    prev = merged[i - 1]
                    kind = "rot90" if prev[1] != r[1] else "flip"
                    rotations.append({"time_ps": float(times[r[3]]), "frame": int(r[3]), "defect": int(j),
                                      "site": int(r[0]), "kind": kind,
                                      "n_br": int(track.bridge_n_br[r[3], j])})
    # exposure of rotations: time with a known committed orientation, per bridge composition
    assigned_ps = {0: 0.0, 1: 0.0, 2: 0.0}
    rot_counts = {nb: {"rot90": 0, "flip": 0} for nb in range(3)}
    dt = np.diff(times)
    for j in inter:
        known = committed[:-1, j, 0] >= 0
        nb = track.bridge_n_br[:-1, j]
        for v in range(3):
            assigned_ps[v] += float(dt[known & (nb == v)].sum())
    for r in rotations:
        if r["n_br"] in rot_counts:
            rot_counts[r["n_br"]][r["kind"]] += 1
    # hop labels
    hops = []
    rel_counts = dict.fromkeys(RELATIONS, 0)
    rel_counts["unknown"] = 0
    land_counts = {"landing": 0, "other": 0, "unknown": 0}
    for ev in track.events:
        if ev.kind != KIND_INTERSTITIAL or ev.slot < 0 or ev.mover_atom < 0:
            hops.append({"relation": None, "landing": None})
            rel_counts["unknown"] += 1
            land_counts["unknown"] += 1
            continue
        j, f = ev.defect, ev.frame
        s_a = ev.from_site % 3
        before = [g for g in range(f - 1, -1, -1) if committed[g, j, 0] >= 0 and track.defect_site[g, j] == ev.from_site]
        rel = None
        if before:
            w, p = committed[before[0], j]
            o = _code(w, p == ev.mover_atom)
            rel = RELATIONS[int(RELATION[s_a, o, 0, ev.slot])]
        after = [g for g in range(f, n_frames) if committed[g, j, 0] >= 0 and track.defect_site[g, j] == ev.to_site]
        land = None
        if after:
            w, p = committed[after[0], j]
            o_after = _code(w, p == ev.mover_atom)
            land = bool(o_after == int(LANDING[s_a, ev.slot]))
        rel_counts[rel or "unknown"] += 1
        land_counts["unknown" if land is None else ("landing" if land else "other")] += 1
        hops.append({"relation": rel, "landing": land})
    return {
        "n_interstitial_frames": n_int_frames,
        "n_unassigned_frames": n_unassigned,
        "unassigned_fraction": n_unassigned / n_int_frames if n_int_frames else None,
        "rotations": rotations,
        "n_rotations": {"rot90": sum(r["kind"] == "rot90" for r in rotations),
                        "flip": sum(r["kind"] == "flip" for r in rotations)},
        "rotation_counts": {str(k): v for k, v in rot_counts.items()},
        "assigned_ps": {str(k): v for k, v in assigned_ps.items()},
        "hops": hops,
        "relation_counts": rel_counts,
        "landing_counts": land_counts,
        "params": {"min_split_A": float(min_split_A), "axis_ratio": float(axis_ratio), "min_dwell_ps": dwell,
                   "window_frames": int(track.params["window_frames"])},
    }


__all__ = ["DEFAULT_AXIS_RATIO", "DEFAULT_MIN_SPLIT_A", "frame_orientations", "label_orientations",
           "smoothed_positions"]
