"""Halide-defect tracking on MD trajectories: site assignment, hop events and exposure.

The MD side of the KMC-vs-MD comparison. Every halide of an MD trajectory is
mapped onto a site of the ideal halide sublattice
(:class:`lattice.sublattice.HalideSublattice`); a site with no atom is a
vacancy, a site with two atoms a split interstitial (Pb-XX-Pb bridge). Moves of
these defects between sites are the *hop events*, labelled with the one
environment definition of the package, :func:`lattice.environment.classify_hop`,
so that an MD hop and a KMC hop of the same class are the same process.

Algorithm
---------
1. **Drift removal** (optional): the mean displacement of the framework atoms
   (Pb + Cs) from frame 0 is subtracted from every halide position.
2. **Time averaging**: a centred running mean over ``window_frames`` frames
   (frames ``f - w//2 .. f + (w-1)//2``, shrinking at the ends of the run), so
   an averaged position crosses a site boundary at the time the raw one does,
   with no lag. With ``window_frames = 1`` no averaging is done.
3. **Site assignment with hysteresis**: each atom goes to its nearest halide
   site (periodic, :class:`scipy.spatial.cKDTree` with ``boxsize``) but keeps
   its previous site unless the new nearest site is closer by more than
   ``hysteresis_A``. The sites of two neighbours are ``a/sqrt(2)`` (4.4 A) apart,
   so an atom must pass ``hysteresis_A / 2`` beyond the midpoint to switch.
4. **Defects per frame**: site counts 0 (vacancy) and 2 (bridge). A frame
   whose numbers of vacancies and bridges differ from frame 0's, or with a site
   holding 3 or more atoms (a Frenkel pair, a transient cluster), is *complex*:
   it is flagged, counted, and skipped by the defect bookkeeping.
   Defects are matched between consecutive valid frames by minimum-image
   distance (:func:`scipy.optimize.linear_sum_assignment` within each kind),
   which is unambiguous while defects stay well separated.
5. **Commitment**: the raw defect-site sequence of each defect is cut into
   runs of constant site. A run at a new site that lasts less than
   ``min_dwell_ps`` and is followed by a return to the committed site is a
   *recrossing* (rattling), not a hop. Any other change of site is a committed
   hop, timed at the first frame of the new run. A last run shorter than
   ``min_dwell_ps`` is left uncommitted (``n_unresolved_tail``).
6. **Epochs and classes**: the committed hops of all defects cut the run into
   epochs of constant committed defect sites. Each epoch's site states
   (:mod:`lattice.species` codes) come from its *reference frame*, the last
   valid frame of the epoch whose raw defect sites equal the committed ones.
   The hop that ends an epoch and every possible path out of it during the
   epoch are classified on that same occupancy, so that the maximum-likelihood
   rate ``rate_c = hop_counts[c] / exposure_ps[c]`` uses one definition for the
   numerator and the denominator.

Exposure
--------
For a committed residence of duration ``tau`` every open path adds ``tau`` to
``exposure_ps[class]``: a vacancy has 8 paths (one per neighbour slot, mover =
the species on the neighbour site), an interstitial has 16 (8 slots x 2 bridge
atoms that can move; the other one stays). Paths whose target site does not
hold a single halide (another defect) are blocked and skipped. The last,
censored residence counts its full duration: for a Poisson process the
likelihood of an unfinished residence is ``exp(-rate tau)``, so it contributes
``tau`` to the exposure and nothing to the counts.

Defaults
--------
``window_frames = 5``
    Averages out the fast part of the thermal motion for dumps every 10-50 fs
    (halide vibrations have periods of 0.2-1 ps) while smearing a hop, which
    takes about 0.1-0.3 ps, by at most two frames on either side.
``hysteresis_A = 0.5``
    About 1.5-2 times the rms thermal displacement of a halide along the hop
    direction at 300-600 K (0.25-0.35 A), and 11 % of the 4.4 A hop length: an
    atom has to pass 0.25 A beyond the midpoint to change site.
``min_dwell_ps = 0.2``
    Longer than the time of a failed crossing (a fraction of a vibrational
    period) and 2-3 orders of magnitude shorter than the mean residence time of
    a halide defect (tens to hundreds of ps at 500-600 K), so real back-hops are
    discarded with probability well below 1 %.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

from lattice.environment import N_CLASSES, class_label, classify_hop, decode_class
from lattice.species import BR, BRIDGE, DEFECT_KINDS, HALIDES, I, KIND_INTERSTITIAL, KIND_VACANCY, VACANCY
from lattice.sublattice import HalideSublattice

logger = logging.getLogger(__name__)

DEFAULT_WINDOW_FRAMES = 5
DEFAULT_HYSTERESIS_A = 0.5
DEFAULT_MIN_DWELL_PS = 0.2

_CHUNK_FRAMES = 1024
# -ln(0.05): one-sided 95 % upper limit of a Poisson rate with zero events, in units of 1/exposure.
_POISSON_UPPER95_ZERO = -math.log(0.05)


# --------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class HopEvent:
    """One committed defect hop.

    Attributes
    ----------
    time_ps : float
        Time of the first frame at which the defect sits on ``to_site``.
    frame : int
        Index of that frame.
    defect : int
        Index of the defect (column of :attr:`DefectTrack.defect_site`).
    kind : int
        ``KIND_VACANCY`` (0) or ``KIND_INTERSTITIAL`` (1).
    from_site, to_site : int
        Site of the defect before and after the hop (the defect's point of
        view: in a vacancy hop the atom moves ``to_site -> from_site``).
    slot : int
        Neighbour slot (0..7) of ``to_site`` in the neighbour list of
        ``from_site`` (lattice slot order); -1 for a non-nearest-neighbour hop.
    mover : int
        Species code of the moving halide; -1 when it could not be identified.
    other : int
        Kick-out: species of the atom that stays on ``from_site``; -1 for
        vacancy hops or when unidentified.
    cls : int
        Environment class (:func:`lattice.environment.classify_hop`) on the
        occupancy before the hop; -1 when not classifiable.
    mover_atom, other_atom, target_atom : int
        Atom indices (rows of the halide arrays): the mover, the remaining
        bridge atom (kick-out) and the atom that was on ``to_site`` and forms
        the new bridge with the mover (kick-out); -1 where not applicable.
    """

    time_ps: float
    frame: int
    defect: int
    kind: int
    from_site: int
    to_site: int
    slot: int
    mover: int
    other: int
    cls: int
    mover_atom: int = -1
    other_atom: int = -1
    target_atom: int = -1

    @property
    def label(self) -> str | None:
        """Class label (``V:I:nI=7`` ...) or None when unclassified."""
        return class_label(self.cls) if self.cls >= 0 else None

    def to_dict(self) -> dict:
        """JSON-ready dict (plain Python scalars) with the class label and names."""
        d = {k: (float(v) if k == "time_ps" else int(v)) for k, v in asdict(self).items()}
        d["kind_name"] = DEFECT_KINDS[self.kind]
        d["mover_name"] = HALIDES[self.mover] if self.mover >= 0 else None
        d["other_name"] = HALIDES[self.other] if self.other >= 0 else None
        d["label"] = self.label
        return d


@dataclass
class DefectTrack:
    """Result of :func:`track_defects`.

    Attributes
    ----------
    lattice : HalideSublattice
    lattice_constant_A : float
    times_ps : (n_frames,) float64
    halide_species : (n_halides,) int8
        Species code of every halide atom.
    events : list of HopEvent
        Committed hops in time order.
    defect_site : (n_frames, n_defects) int64
        Committed site of each defect per frame.
    defect_kind : (n_frames, n_defects) int8
        Kind of each defect per frame (constant: a vacancy stays a vacancy).
    raw_defect_site : (n_frames, n_defects) int64
        Site seen in each frame before the recrossing filter; -1 on complex frames.
    bridge_n_br : (n_frames, n_defects) int8
        Number of Br in the committed bridge (0 = II, 1 = IBr, 2 = BrBr);
        -1 for vacancies and for epochs without a reference frame.
    complex_frame : (n_frames,) bool
        Frame whose defect content differs from frame 0's.
    site_assignment : (n_frames, n_halides) int32
        Site of every atom per frame (after averaging and hysteresis).
    reference_frame : (n_frames,) int64
        Frame whose assignment defines the committed state of each frame's
        epoch; -1 if the epoch has none.
    exposure_ps : (N_CLASSES,) float64
        Summed residence time over the open paths of each class (ps).
    hop_counts : (N_CLASSES,) int64
        Classified hops per class.
    exposure_unclassified_ps : float
        Residence time (per defect, not per path) of epochs without a reference frame.
    n_recrossings : int
        Short excursions that returned (not hops).
    n_complex_frames : int
    n_unresolved_tail : int
        Final runs shorter than ``min_dwell_ps`` left uncommitted.
    params : dict
        The tracking parameters used.
    """

    lattice: HalideSublattice
    lattice_constant_A: float
    times_ps: np.ndarray
    halide_species: np.ndarray
    events: list
    defect_site: np.ndarray
    defect_kind: np.ndarray
    raw_defect_site: np.ndarray
    bridge_n_br: np.ndarray
    complex_frame: np.ndarray
    site_assignment: np.ndarray
    reference_frame: np.ndarray
    exposure_ps: np.ndarray
    hop_counts: np.ndarray
    exposure_unclassified_ps: float = 0.0
    n_recrossings: int = 0
    n_complex_frames: int = 0
    n_unresolved_tail: int = 0
    params: dict = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        return int(self.times_ps.size)

    @property
    def n_defects(self) -> int:
        return int(self.defect_site.shape[1])

    @property
    def n_hops(self) -> int:
        return len(self.events)

    def occupancy(self, committed: bool = True) -> np.ndarray:
        """Site states per frame, (n_frames, n_sites) int8 (I, Br, V, B codes).

        Parameters
        ----------
        committed : bool
            True: each frame gets the occupancy of its epoch's reference frame
            (consistent with :attr:`defect_site`; frames of an epoch without a
            reference frame fall back to their own assignment). False: the
            occupancy seen in each frame (sites with 3+ atoms get ``BRIDGE``).
        """
        n_sites = self.lattice.n_sites
        out = np.empty((self.n_frames, n_sites), dtype=np.int8)
        source = self.reference_frame if committed else np.full(self.n_frames, -1, dtype=np.int64)
        cache: dict[int, np.ndarray] = {}
        for f in range(self.n_frames):
            g = int(source[f]) if source[f] >= 0 else f
            if g not in cache:
                cache[g] = _occupancy_from_assignment(self.site_assignment[g], self.halide_species, n_sites)
            out[f] = cache[g]
        return out

    def rates(self) -> tuple[np.ndarray, np.ndarray]:
        """Maximum-likelihood rate per class and its Poisson standard error (1/ps).

        ``rate = n / exposure`` and ``err = sqrt(n) / exposure``; NaN where the
        class has no exposure.
        """
        with np.errstate(divide="ignore", invalid="ignore"):
            expo = np.where(self.exposure_ps > 0, self.exposure_ps, np.nan)
            rate = self.hop_counts / expo
            err = np.sqrt(self.hop_counts) / expo
        return rate, err

    def summary(self) -> dict:
        """JSON-ready summary: hop counts, classes with labels, rates with Poisson errors."""
        rate, err = self.rates()
        classes = []
        for c in np.flatnonzero((self.exposure_ps > 0) | (self.hop_counts > 0)):
            n = int(self.hop_counts[c])
            expo = float(self.exposure_ps[c])
            entry = {
                "cls": int(c),
                "label": class_label(int(c)),
                **decode_class(int(c)),
                "n_hops": n,
                "exposure_ps": expo,
                "rate_per_ps": float(rate[c]) if expo > 0 else None,
                "rate_err_per_ps": float(err[c]) if expo > 0 else None,
            }
            if n == 0 and expo > 0:
                entry["rate_upper95_per_ps"] = _POISSON_UPPER95_ZERO / expo
            classes.append(entry)
        kinds = self.defect_kind[0].tolist() if self.n_frames else []
        n_classified = sum(1 for e in self.events if e.cls >= 0)
        return {
            "n_frames": self.n_frames,
            "duration_ps": float(self.times_ps[-1] - self.times_ps[0]) if self.n_frames else 0.0,
            "n_defects": self.n_defects,
            "defect_kinds": [DEFECT_KINDS[k] for k in kinds],
            "n_hops": self.n_hops,
            "n_hops_classified": n_classified,
            "n_hops_non_nn": sum(1 for e in self.events if e.slot < 0),
            "n_recrossings": int(self.n_recrossings),
            "n_complex_frames": int(self.n_complex_frames),
            "n_unresolved_tail": int(self.n_unresolved_tail),
            "exposure_unclassified_ps": float(self.exposure_unclassified_ps),
            "params": dict(self.params),
            "classes": classes,
            "events": [e.to_dict() for e in self.events],
        }


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------
def remove_framework_drift(positions_A: np.ndarray, framework_positions_A: np.ndarray) -> np.ndarray:
    """Subtract the mean framework displacement from frame 0 from every frame.

    Parameters
    ----------
    positions_A : (n_frames, n_atoms, 3) float
        Unwrapped positions to correct (A).
    framework_positions_A : (n_frames, n_fw, 3) float
        Unwrapped positions of the framework atoms (Pb + Cs) in the same frames (A).

    Returns
    -------
    (n_frames, n_atoms, 3) float64
        Positions in the frame co-moving with the framework.
    """
    pos = np.asarray(positions_A, dtype=np.float64)
    fw = np.asarray(framework_positions_A, dtype=np.float64)
    if fw.ndim != 3 or fw.shape[2] != 3 or fw.shape[1] < 1 or fw.shape[0] != pos.shape[0]:
        raise ValueError(
            f"framework_positions_A must have shape (n_frames={pos.shape[0]}, n_fw>=1, 3), got {fw.shape}"
        )
    return pos - _drift(fw)[:, None, :]


def _drift(fw: np.ndarray) -> np.ndarray:
    """(n_frames, 3): mean framework displacement from frame 0."""
    return fw.mean(axis=1) - fw[0].mean(axis=0)


def _occupancy_from_assignment(assign: np.ndarray, species: np.ndarray, n_sites: int) -> np.ndarray:
    """(n_sites,) int8 site states from one frame's atom -> site assignment."""
    counts = np.bincount(assign, minlength=n_sites)
    occ = np.full(n_sites, VACANCY, dtype=np.int8)
    occ[counts >= 2] = BRIDGE
    single = counts[assign] == 1
    occ[assign[single]] = species[single]
    return occ


def _min_image_sq(coords_a: np.ndarray, coords_b: np.ndarray, two_n: np.ndarray) -> np.ndarray:
    """Squared minimum-image distances between doubled coordinates (pairwise)."""
    d = coords_a[:, None, :] - coords_b[None, :, :]
    d = d - two_n * np.round(d / two_n)
    return np.sum(d.astype(np.float64) ** 2, axis=-1)


def _validate(pos, times, species, lattice, a, window, hyst, dwell, fw):
    if not isinstance(lattice, HalideSublattice):
        raise ValueError(f"lattice must be a HalideSublattice, got {type(lattice).__name__}")
    if not (np.isfinite(a) and a > 0):
        raise ValueError(f"lattice_constant_A must be a positive number, got {a}")
    if pos.ndim != 3 or pos.shape[2] != 3 or pos.shape[0] < 1 or pos.shape[1] < 1:
        raise ValueError(f"halide_positions_A must have shape (n_frames, n_halides, 3), got {pos.shape}")
    if not np.all(np.isfinite(pos)):
        raise ValueError("halide_positions_A contains non-finite values")
    if times.shape != (pos.shape[0],):
        raise ValueError(f"times_ps must have shape ({pos.shape[0]},), got {times.shape}")
    if not np.all(np.isfinite(times)) or np.any(np.diff(times) <= 0):
        raise ValueError("times_ps must be finite and strictly increasing")
    if species.shape != (pos.shape[1],):
        raise ValueError(f"halide_species must have shape ({pos.shape[1]},), got {species.shape}")
    if not np.all(np.isin(species, (I, BR))):
        raise ValueError(f"halide_species must hold only the codes I={I} and BR={BR}")
    if int(window) != window or window < 1:
        raise ValueError(f"window_frames must be an integer >= 1, got {window}")
    if not (np.isfinite(hyst) and hyst >= 0):
        raise ValueError(f"hysteresis_A must be a finite number >= 0, got {hyst}")
    if not (np.isfinite(dwell) and dwell >= 0):
        raise ValueError(f"min_dwell_ps must be a finite number >= 0, got {dwell}")
    if fw is not None and (fw.ndim != 3 or fw.shape[0] != pos.shape[0] or fw.shape[2] != 3 or fw.shape[1] < 1):
        raise ValueError(
            f"framework_positions_A must have shape (n_frames={pos.shape[0]}, n_fw>=1, 3), got {fw.shape}"
        )
    d_nn = a / math.sqrt(2.0)
    if hyst > 0.25 * d_nn:
        logger.warning("hysteresis_A = %.3g A is more than a quarter of the hop length %.3g A", hyst, d_nn)


# --------------------------------------------------------------------------
# Stage 1-3: averaged positions -> site assignment
# --------------------------------------------------------------------------
def assign_sites(
    halide_positions_A: np.ndarray,
    lattice: HalideSublattice,
    lattice_constant_A: float,
    *,
    drift_A: np.ndarray | None = None,
    window_frames: int = DEFAULT_WINDOW_FRAMES,
    hysteresis_A: float = DEFAULT_HYSTERESIS_A,
) -> np.ndarray:
    """Site of every halide per frame, with centred time averaging and hysteresis.

    Parameters
    ----------
    halide_positions_A : (n_frames, n_halides, 3) float
        Unwrapped Cartesian positions (A).
    lattice : HalideSublattice
    lattice_constant_A : float
    drift_A : (n_frames, 3) float, optional
        Rigid drift subtracted from each frame (A).
    window_frames : int
        Width of the centred running mean (1 = none).
    hysteresis_A : float
        An atom changes site only when the new nearest site is closer than its
        current one by more than this (A).

    Returns
    -------
    (n_frames, n_halides) int32 site indices.
    """
    pos = np.asarray(halide_positions_A, dtype=np.float64)
    n_frames, n_atoms = pos.shape[:2]
    a = float(lattice_constant_A)
    box = np.asarray(lattice.shape, dtype=np.float64) * a
    site_pos = lattice.positions_A(a)
    tree = cKDTree(site_pos, boxsize=box)
    w = int(window_frames)
    h_back, h_fwd = w // 2, (w - 1) // 2
    out = np.empty((n_frames, n_atoms), dtype=np.int32)
    prev = None
    for start in range(0, n_frames, _CHUNK_FRAMES):
        stop = min(n_frames, start + _CHUNK_FRAMES)
        lo_all, hi_all = max(0, start - h_back), min(n_frames, stop + h_fwd)
        block = pos[lo_all:hi_all]
        if drift_A is not None:
            block = block - drift_A[lo_all:hi_all, None, :]
        csum = np.concatenate([np.zeros((1, n_atoms, 3)), np.cumsum(block, axis=0)], axis=0)
        f = np.arange(start, stop)
        lo = np.maximum(0, f - h_back) - lo_all
        hi = np.minimum(n_frames, f + h_fwd + 1) - lo_all
        smooth = (csum[hi] - csum[lo]) / (hi - lo)[:, None, None]
        wrapped = np.mod(smooth, box)
        wrapped = np.where(wrapped >= box, wrapped - box, wrapped)
        d_near, near = tree.query(wrapped.reshape(-1, 3))
        d_near = d_near.reshape(stop - start, n_atoms)
        near = near.reshape(stop - start, n_atoms)
        for r in range(stop - start):
            if prev is None:
                cur = near[r]
            else:
                delta = smooth[r] - site_pos[prev]
                delta -= box * np.round(delta / box)
                d_prev = np.sqrt(np.sum(delta * delta, axis=1))
                switch = (near[r] != prev) & (d_near[r] < d_prev - hysteresis_A)
                cur = np.where(switch, near[r], prev)
            out[start + r] = cur
            prev = cur
    return out


# --------------------------------------------------------------------------
# Stage 4-5: defect sequences and commitment
# --------------------------------------------------------------------------
def _defect_sequences(assign: np.ndarray, lattice: HalideSublattice):
    """Raw defect sites per frame, complex-frame flags and the defect kinds."""
    n_frames = assign.shape[0]
    n_sites = lattice.n_sites
    counts0 = np.bincount(assign[0], minlength=n_sites)
    if counts0.max() > 2:
        raise ValueError(
            "halide_positions_A: frame 0 has a site with "
            f"{int(counts0.max())} atoms; the defect content of the run is defined by frame 0"
        )
    vac0 = np.flatnonzero(counts0 == 0)
    br0 = np.flatnonzero(counts0 == 2)
    kinds = np.concatenate([np.full(vac0.size, KIND_VACANCY), np.full(br0.size, KIND_INTERSTITIAL)]).astype(np.int8)
    n_def = kinds.size
    raw = np.full((n_frames, n_def), -1, dtype=np.int64)
    raw[0] = np.concatenate([vac0, br0])
    complex_frame = np.zeros(n_frames, dtype=bool)
    coords = lattice.coords()
    two_n = 2 * lattice.dims
    if n_def > 1:
        d2 = _min_image_sq(coords[raw[0]], coords[raw[0]], two_n)
        np.fill_diagonal(d2, np.inf)
        if d2.min() <= 8.0:  # within two hops: (doubled) |(1,1,0)| * 2 = sqrt(8)
            logger.warning("defects of frame 0 are within two hops of each other; matching may be ambiguous")
    idx_v = np.flatnonzero(kinds == KIND_VACANCY)
    idx_b = np.flatnonzero(kinds == KIND_INTERSTITIAL)
    last = raw[0].copy()
    for f in range(1, n_frames):
        counts = np.bincount(assign[f], minlength=n_sites)
        vac = np.flatnonzero(counts == 0)
        br = np.flatnonzero(counts == 2)
        if counts.max() > 2 or vac.size != idx_v.size or br.size != idx_b.size:
            complex_frame[f] = True
            continue
        for idx, sites in ((idx_v, vac), (idx_b, br)):
            if idx.size == 1:
                raw[f, idx[0]] = sites[0]
            elif idx.size > 1:
                cost = _min_image_sq(coords[last[idx]], coords[sites], two_n)
                rows, cols = linear_sum_assignment(cost)
                raw[f, idx[rows]] = sites[cols]
        last = raw[f]
    return kinds, raw, complex_frame


def _commit(raw_j: np.ndarray, valid: np.ndarray, times: np.ndarray, min_dwell_ps: float):
    """Recrossing filter for one defect.

    Returns
    -------
    hops : list of (frame, from_site, to_site)
    n_recrossings : int
    tail_unresolved : bool
    """
    frames = np.flatnonzero(valid)
    s = raw_j[frames]
    starts = np.concatenate([[0], np.flatnonzero(s[1:] != s[:-1]) + 1])
    run_site = s[starts]
    run_frame = frames[starts]
    committed = int(run_site[0])
    hops = []
    n_rec = 0
    tail = False
    n_runs = run_site.size
    for i in range(1, n_runs):
        site = int(run_site[i])
        if site == committed:
            continue
        t_enter = times[run_frame[i]]
        if i + 1 < n_runs:
            dwell = times[run_frame[i + 1]] - t_enter
            if dwell < min_dwell_ps and int(run_site[i + 1]) == committed:
                n_rec += 1
                continue
        elif times[-1] - t_enter < min_dwell_ps:
            tail = True
            break
        hops.append((int(run_frame[i]), committed, site))
        committed = site
    return hops, n_rec, tail


# --------------------------------------------------------------------------
# Main entry
# --------------------------------------------------------------------------
def track_defects(
    halide_positions_A: np.ndarray,
    times_ps: np.ndarray,
    halide_species: np.ndarray,
    lattice: HalideSublattice,
    lattice_constant_A: float,
    *,
    framework_positions_A: np.ndarray | None = None,
    window_frames: int = DEFAULT_WINDOW_FRAMES,
    hysteresis_A: float = DEFAULT_HYSTERESIS_A,
    min_dwell_ps: float = DEFAULT_MIN_DWELL_PS,
) -> DefectTrack:
    """Track halide vacancies and split interstitials through an MD trajectory.

    See the module docstring for the algorithm and the choice of defaults.

    Parameters
    ----------
    halide_positions_A : (n_frames, n_halides, 3) float
        Unwrapped Cartesian halide positions (A), in the frame where the ideal
        sites are ``lattice.positions_A(lattice_constant_A)`` (box origin 0,
        box lengths ``shape * a``).
    times_ps : (n_frames,) float
        Strictly increasing frame times (ps).
    halide_species : (n_halides,) int
        Species codes, ``I`` (0) or ``BR`` (1).
    lattice : HalideSublattice
        Supercell of the trajectory.
    lattice_constant_A : float
        Cubic lattice constant a (A).
    framework_positions_A : (n_frames, n_fw, 3) float, optional
        Unwrapped Pb + Cs positions; their mean displacement from frame 0 is
        removed from the halides (rigid drift). Without them no drift is removed.
    window_frames : int
        Width of the centred running mean over frames (1 = no averaging).
    hysteresis_A : float
        Site-switch hysteresis (A).
    min_dwell_ps : float
        Shortest residence at a new site that counts as a hop when the defect
        then returns to the previous site (ps).

    Returns
    -------
    DefectTrack

    Raises
    ------
    ValueError
        On arrays of the wrong shape, non-increasing times, unknown species
        codes, bad parameters, or a frame 0 with a site holding 3+ atoms.
    """
    pos = np.asarray(halide_positions_A, dtype=np.float64)
    times = np.asarray(times_ps, dtype=np.float64)
    species = np.asarray(halide_species)
    fw = None if framework_positions_A is None else np.asarray(framework_positions_A, dtype=np.float64)
    a = float(lattice_constant_A)
    _validate(pos, times, species, lattice, a, window_frames, hysteresis_A, min_dwell_ps, fw)
    species = species.astype(np.int8)
    params = {
        "window_frames": int(window_frames),
        "window": "centred",
        "hysteresis_A": float(hysteresis_A),
        "min_dwell_ps": float(min_dwell_ps),
        "drift_removed": fw is not None,
        "lattice_shape": list(lattice.shape),
        "lattice_constant_A": a,
    }
    drift = None if fw is None else _drift(fw)
    assign = assign_sites(pos, lattice, a, drift_A=drift, window_frames=int(window_frames),
                          hysteresis_A=float(hysteresis_A))

    kinds, raw, complex_frame = _defect_sequences(assign, lattice)
    n_frames, n_def = raw.shape
    valid = ~complex_frame
    n_complex = int(complex_frame.sum())
    if n_complex:
        logger.warning("%d of %d frames have a defect content different from frame 0 (skipped)", n_complex, n_frames)

    # Commitment per defect.
    committed = np.empty_like(raw)
    hop_list = []  # (frame, defect, from, to)
    n_rec = 0
    n_tail = 0
    for j in range(n_def):
        hops, rec, tail = _commit(raw[:, j], valid, times, float(min_dwell_ps))
        n_rec += rec
        n_tail += int(tail)
        committed[:, j] = raw[0, j]
        for frame, a_site, b_site in hops:
            committed[frame:, j] = b_site
            hop_list.append((frame, j, a_site, b_site))
    hop_list.sort()

    # Epochs and their reference frames.
    consistent = valid & np.all(raw == committed, axis=1) if n_def else valid.copy()
    bounds = sorted({0, *(h[0] for h in hop_list)})
    epoch_start = np.asarray(bounds, dtype=np.int64)
    epoch_end = np.append(epoch_start[1:], n_frames - 1)  # frame at which the epoch ends (time-wise)
    cons_idx = np.flatnonzero(consistent)
    epoch_ref = np.full(epoch_start.size, -1, dtype=np.int64)
    for e in range(epoch_start.size):
        last_frame = epoch_start[e + 1] - 1 if e + 1 < epoch_start.size else n_frames - 1
        k = np.searchsorted(cons_idx, last_frame, side="right") - 1
        if k >= 0 and cons_idx[k] >= epoch_start[e]:
            epoch_ref[e] = cons_idx[k]
    reference_frame = np.repeat(epoch_ref, np.diff(np.append(epoch_start, n_frames)))

    nbr = lattice.neighbour_table
    dims = lattice.dims
    n_sites = lattice.n_sites
    exposure = np.zeros(N_CLASSES, dtype=np.float64)
    counts = np.zeros(N_CLASSES, dtype=np.int64)
    bridge_n_br = np.full((n_frames, n_def), -1, dtype=np.int8)
    expo_unclassified = 0.0
    occ_cache: dict[int, np.ndarray] = {}

    def occ_of(frame: int) -> np.ndarray:
        if frame not in occ_cache:
            occ_cache[frame] = _occupancy_from_assignment(assign[frame], species, n_sites)
        return occ_cache[frame]

    for e in range(epoch_start.size):
        f0 = int(epoch_start[e])
        f1 = int(epoch_end[e])
        tau = float(times[f1] - times[f0])
        ref = int(epoch_ref[e])
        if ref < 0:
            expo_unclassified += tau * n_def
            continue
        occ = occ_of(ref)
        stop = int(epoch_start[e + 1]) if e + 1 < epoch_start.size else n_frames
        for j in range(n_def):
            site = int(committed[f0, j])
            if kinds[j] == KIND_INTERSTITIAL:
                atoms = np.flatnonzero(assign[ref] == site)
                sp = species[atoms]
                bridge_n_br[f0:stop, j] = int(np.count_nonzero(sp == BR))
                movers = ((int(sp[0]), int(sp[1])), (int(sp[1]), int(sp[0])))
            else:
                movers = None
            if tau <= 0:
                continue
            for k in range(8):
                target = int(occ[nbr[site, k]])
                if target not in (I, BR):
                    continue
                if movers is None:
                    exposure[classify_hop(occ, dims, site, k, KIND_VACANCY, target)] += tau
                else:
                    for mover, other in movers:
                        exposure[classify_hop(occ, dims, site, k, KIND_INTERSTITIAL, mover, other)] += tau

    # Hop events.
    events = []
    for frame, j, a_site, b_site in hop_list:
        e = int(np.searchsorted(epoch_start, frame, side="left")) - 1  # epoch ending at this hop
        ref = int(epoch_ref[e]) if e >= 0 else -1
        row = np.flatnonzero(nbr[a_site] == b_site)
        slot = int(row[0]) if row.size else -1
        mover = other = cls = -1
        mover_atom = other_atom = target_atom = -1
        if ref >= 0:
            before, after = assign[ref], assign[frame]
            if kinds[j] == KIND_VACANCY:
                cand = np.flatnonzero((before == b_site) & (after == a_site))
                if cand.size == 1:
                    mover_atom = int(cand[0])
                    mover = int(species[mover_atom])
            else:
                pair = np.flatnonzero(before == a_site)
                tgt = np.flatnonzero(before == b_site)
                moved = pair[after[pair] == b_site]
                stayed = pair[after[pair] == a_site]
                if pair.size == 2 and moved.size == 1 and stayed.size == 1:
                    mover_atom, other_atom = int(moved[0]), int(stayed[0])
                    mover, other = int(species[mover_atom]), int(species[other_atom])
                    if tgt.size == 1 and after[tgt[0]] == b_site:
                        target_atom = int(tgt[0])
            if slot >= 0 and mover >= 0 and (kinds[j] == KIND_VACANCY or target_atom >= 0):
                occ = occ_of(ref)
                try:
                    cls = classify_hop(occ, dims, a_site, slot, int(kinds[j]), mover,
                                       other if kinds[j] == KIND_INTERSTITIAL else None)
                except ValueError:
                    cls = -1
        if cls >= 0:
            counts[cls] += 1
        events.append(HopEvent(
            time_ps=float(times[frame]), frame=int(frame), defect=int(j), kind=int(kinds[j]),
            from_site=int(a_site), to_site=int(b_site), slot=slot, mover=mover, other=other, cls=int(cls),
            mover_atom=mover_atom, other_atom=other_atom, target_atom=target_atom,
        ))
    n_unclassified = sum(1 for ev in events if ev.cls < 0)
    if n_unclassified:
        logger.info("%d of %d hops could not be classified", n_unclassified, len(events))

    return DefectTrack(
        lattice=lattice,
        lattice_constant_A=a,
        times_ps=times,
        halide_species=species,
        events=events,
        defect_site=committed,
        defect_kind=np.broadcast_to(kinds, (n_frames, n_def)).copy(),
        raw_defect_site=raw,
        bridge_n_br=bridge_n_br,
        complex_frame=complex_frame,
        site_assignment=assign,
        reference_frame=reference_frame,
        exposure_ps=exposure,
        hop_counts=counts,
        exposure_unclassified_ps=expo_unclassified,
        n_recrossings=n_rec,
        n_complex_frames=n_complex,
        n_unresolved_tail=n_tail,
        params=params,
    )


__all__ = [
    "DEFAULT_HYSTERESIS_A",
    "DEFAULT_MIN_DWELL_PS",
    "DEFAULT_WINDOW_FRAMES",
    "DefectTrack",
    "HopEvent",
    "assign_sites",
    "remove_framework_drift",
    "track_defects",
]
