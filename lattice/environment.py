"""The one definition of a hop's local environment.

Every part of the package that labels a hop -- the KMC kernels, the rate
catalog, the NumPy reference engine and the MD hop analysis -- calls the
functions of this module, so that a hop seen in MD and the same hop in the KMC
fall in the same class.

Descriptor ``path-shell-nI`` (version 1)
----------------------------------------
A hop moves one halide (the *mover*) from site A to a nearest-neighbour site B
(``B = A + offset[type(A), k]``), along an edge of the PbX6 octahedron that A
and B share.

* Vacancy hop: the vacancy sits on A, the mover comes from B.
  (Written from the defect's point of view: the *defect* moves A -> B, the
  mover moves B -> A.)
* Interstitial kick-out: a bridge (split interstitial) sits on A holding the
  mover and a *remaining* atom; the mover moves to B, whose single atom (the
  *target*) joins it in a new bridge on B, and the remaining atom stays as a
  regular halide on A.

The environment of the path is the **path shell**: the 12 halide sites that
are nearest neighbours of A or of B, A and B excluded,
``shell = (N(A) | N(B)) - {A, B}``. Its descriptor value ``shell_nI`` is the
number of shell sites holding a single iodide (sites holding a Br, a vacancy
or a bridge count as non-I), 0 .. 12.

The class of a hop is the tuple

* vacancy:      ``(vacancy, mover, shell_nI)``                  -> 2 x 13 = 26 classes
* interstitial: ``(interstitial, mover, pair_nI, shell_nI)``    -> 2 x 3 x 13 = 78 classes

where ``pair_nI`` is the number of iodides among {remaining atom, target
atom}. Both tuples are invariant under reversing the hop (the reverse vacancy
hop has the same mover and the same shell; the reverse kick-out swaps the
roles of remaining and target atoms), so a catalog that gives one barrier per
class automatically has symmetric kinetically-resolved barriers, which is what
detailed balance needs. Classes are numbered

* ``cls = mover * 13 + shell_nI`` for vacancies (0 .. 25),
* ``cls = 26 + (mover * 3 + pair_nI) * 13 + shell_nI`` for interstitials (26 .. 103).

The same pass over the neighbours also returns the state counts ``cA`` over
``N(A) - {B}`` and ``cB`` over ``N(B) - {A}`` that the energy model needs
(:mod:`rates.energy`); neither set contains A or B, so both are unchanged by
the hop.
"""

from __future__ import annotations

import numpy as np
import common.numba_cache  # noqa: F401 - before numba: a writable kernel cache
from numba import njit

from lattice.species import BR, DEFECT_KINDS, HALIDES, I, KIND_INTERSTITIAL, KIND_VACANCY, N_STATES
from lattice.sublattice import HOP_BACK, HOP_COMMON, NEIGHBOUR_OFFSETS, NEIGHBOUR_TYPES

DESCRIPTOR_NAME = "path-shell-nI"
DESCRIPTOR_VERSION = 1
SHELL_SIZE = 12
N_SHELL_VALUES = SHELL_SIZE + 1
N_VACANCY_CLASSES = 2 * N_SHELL_VALUES
N_INTERSTITIAL_CLASSES = 2 * 3 * N_SHELL_VALUES
N_CLASSES = N_VACANCY_CLASSES + N_INTERSTITIAL_CLASSES

# Module-level copies as plain arrays: numba freezes them as constants.
_OFF = np.ascontiguousarray(NEIGHBOUR_OFFSETS)
_TYP = np.ascontiguousarray(NEIGHBOUR_TYPES)
_BACK = np.ascontiguousarray(HOP_BACK)
_COMMON = np.ascontiguousarray(HOP_COMMON)


@njit(cache=True, inline="always")
def wrap(c, n2):
    """Wrap one doubled coordinate into [0, n2) (n2 = 2 * cells); |overshoot| < n2."""
    if c < 0:
        return c + n2
    if c >= n2:
        return c - n2
    return c


@njit(cache=True, inline="always")
def site_of(x, y, z, s, dims):
    """Site index of wrapped doubled coordinates (x, y, z) of type s."""
    return (((x >> 1) * dims[1] + (y >> 1)) * dims[2] + (z >> 1)) * 3 + s


@njit(cache=True)
def site_coords(site, dims, out):
    """Write the doubled coordinates of ``site`` into ``out[0:3]``; return its type."""
    s = site % 3
    cell = site // 3
    k = cell % dims[2]
    j = (cell // dims[2]) % dims[1]
    i = cell // (dims[2] * dims[1])
    out[0] = 2 * i
    out[1] = 2 * j
    out[2] = 2 * k
    out[s] += 1
    return s


@njit(cache=True)
def neighbour_site(x, y, z, s, m, dims):
    """Site index of neighbour slot ``m`` of the type-``s`` site at (x, y, z)."""
    xn = wrap(x + _OFF[s, m, 0], 2 * dims[0])
    yn = wrap(y + _OFF[s, m, 1], 2 * dims[1])
    zn = wrap(z + _OFF[s, m, 2], 2 * dims[2])
    return site_of(xn, yn, zn, _TYP[s, m], dims)


@njit(cache=True)
def hop_counts(occ, dims, x, y, z, s, k, cA, cB):
    """Neighbour-state counts and shell descriptor of the hop A -> slot ``k``.

    Parameters
    ----------
    occ : (n_sites,) int8
        Site states (:mod:`lattice.species` codes).
    dims : (3,) int64
        Cell counts.
    x, y, z, s : int
        Doubled coordinates and type of site A.
    k : int
        Neighbour slot of B in N(A).
    cA, cB : (4,) int64, overwritten
        Counts of each site state over ``N(A) - {B}`` and ``N(B) - {A}``.

    Returns
    -------
    shell_nI : int
        Number of single iodides in the 12-site path shell.
    """
    for t in range(N_STATES):
        cA[t] = 0
        cB[t] = 0
    n2x = 2 * dims[0]
    n2y = 2 * dims[1]
    n2z = 2 * dims[2]
    common_i = 0
    for m in range(8):
        if m == k:
            continue
        st = occ[neighbour_site(x, y, z, s, m, dims)]
        cA[st] += 1
        if (m == _COMMON[s, k, 0] or m == _COMMON[s, k, 1]) and st == I:
            common_i += 1
    xb = wrap(x + _OFF[s, k, 0], n2x)
    yb = wrap(y + _OFF[s, k, 1], n2y)
    zb = wrap(z + _OFF[s, k, 2], n2z)
    t = _TYP[s, k]
    back = _BACK[s, k]
    for m in range(8):
        if m == back:
            continue
        cB[occ[neighbour_site(xb, yb, zb, t, m, dims)]] += 1
    return cA[I] + cB[I] - common_i


@njit(cache=True, inline="always")
def vacancy_class(mover, shell_nI):
    """Class id of a vacancy hop."""
    return mover * N_SHELL_VALUES + shell_nI


@njit(cache=True, inline="always")
def interstitial_class(mover, pair_nI, shell_nI):
    """Class id of an interstitial kick-out hop."""
    return N_VACANCY_CLASSES + (mover * 3 + pair_nI) * N_SHELL_VALUES + shell_nI


# --------------------------------------------------------------------------
# Python-side helpers (not for kernels)
# --------------------------------------------------------------------------
def decode_class(cls: int) -> dict:
    """Human-readable fields of class ``cls``.

    Returns
    -------
    dict with keys ``defect`` ("vacancy"/"interstitial"), ``mover`` ("I"/"Br"),
    ``pair_nI`` (None for vacancies), ``shell_nI``.
    """
    cls = int(cls)
    if not 0 <= cls < N_CLASSES:
        raise ValueError(f"hop class {cls} out of range [0, {N_CLASSES})")
    if cls < N_VACANCY_CLASSES:
        mover, shell = divmod(cls, N_SHELL_VALUES)
        return {"defect": DEFECT_KINDS[KIND_VACANCY], "mover": HALIDES[mover], "pair_nI": None, "shell_nI": shell}
    rest = cls - N_VACANCY_CLASSES
    mp, shell = divmod(rest, N_SHELL_VALUES)
    mover, pair = divmod(mp, 3)
    return {"defect": DEFECT_KINDS[KIND_INTERSTITIAL], "mover": HALIDES[mover], "pair_nI": pair, "shell_nI": shell}


def encode_class(defect: str, mover: str, shell_nI: int, pair_nI: int | None = None) -> int:
    """Class id from its fields (the inverse of :func:`decode_class`)."""
    from lattice.species import defect_kind_code, species_code

    kind = defect_kind_code(defect)
    m = species_code(mover)
    if not 0 <= int(shell_nI) <= SHELL_SIZE:
        raise ValueError(f"shell_nI must be in 0..{SHELL_SIZE}, got {shell_nI}")
    if kind == KIND_VACANCY:
        if pair_nI is not None:
            raise ValueError("pair_nI is defined only for interstitial hops")
        return int(vacancy_class(m, int(shell_nI)))
    if pair_nI is None or not 0 <= int(pair_nI) <= 2:
        raise ValueError(f"interstitial hops need pair_nI in 0..2, got {pair_nI}")
    return int(interstitial_class(m, int(pair_nI), int(shell_nI)))


def class_label(cls: int) -> str:
    """Short text label, e.g. ``V:I:nI=7`` or ``Xi:Br:pI=1:nI=3``."""
    d = decode_class(cls)
    if d["defect"] == "vacancy":
        return f"V:{d['mover']}:nI={d['shell_nI']}"
    return f"Xi:{d['mover']}:pI={d['pair_nI']}:nI={d['shell_nI']}"


def classify_hop(occ: np.ndarray, dims: np.ndarray, site_a: int, slot: int, kind: int,
                 mover: int, other: int | None = None) -> int:
    """Class of the hop from defect site ``site_a`` through neighbour ``slot``.

    Parameters
    ----------
    occ : (n_sites,) int8
        Site states before the hop.
    dims : (3,) int64
        Cell counts of the lattice.
    site_a : int
        Site of the defect (vacancy or bridge) before the hop.
    slot : int
        Neighbour slot (0..7) of the destination of the defect.
    kind : int
        ``KIND_VACANCY`` or ``KIND_INTERSTITIAL``.
    mover : int
        Species code of the moving halide.
    other : int, optional
        For kick-outs: species of the atom that stays on A. The target's
        species is read from ``occ``.
    """
    dims = np.asarray(dims, dtype=np.int64)
    xyz = np.zeros(3, dtype=np.int64)
    s = site_coords(int(site_a), dims, xyz)
    ca = np.zeros(N_STATES, dtype=np.int64)
    cb = np.zeros(N_STATES, dtype=np.int64)
    shell = hop_counts(occ, dims, xyz[0], xyz[1], xyz[2], s, int(slot), ca, cb)
    if kind == KIND_VACANCY:
        return int(vacancy_class(int(mover), shell))
    if other is None:
        raise ValueError("an interstitial hop needs the species of the remaining atom")
    target = occ[neighbour_site(xyz[0], xyz[1], xyz[2], s, int(slot), dims)]
    if target not in (I, BR):
        raise ValueError("a kick-out needs a single halide on the target site")
    pair = int(other == I) + int(target == I)
    return int(interstitial_class(int(mover), pair, shell))
