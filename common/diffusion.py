"""Diffusion estimators for Eq. 1 from hop logs (lattice paths) and from positions (kinisi).

A *hop log* lists, for every hop, its time, the atom that moved and the
site-to-site displacement of that atom. It is what both sides of a KMC-vs-MD
comparison produce: the KMC's event log replayed on atom identities, and the
MD tracker's committed hops. Estimators on hop logs see the lattice path only:
no vibrational plateau, no dumbbell offsets, so a run with few hops is not
dominated by the cage motion that a fit of the raw MSD must subtract.

Estimators (all for Eq. 1 summed over the atoms of a selection, per run):

``lattice_lag``
    ``D_tau = <sum_i |R_i(t0 + tau) - R_i(t0)|^2>_t0 / (6 tau)`` at one lag
    ``tau``, averaged over a dense grid of origins ``t0`` in ``[0, T - tau]``.
    Never negative; unbiased for uncorrelated hops at any ``tau``; with
    correlated hops (back-hops) it converges to D as ``tau`` grows, with a
    bias of order (correlation offset)/(6 tau). Comparing MD and KMC at the
    *same* ``tau`` compares the same quantity on both sides.
``hop_count``
    ``D = f n l^2 / (6 T)`` with the mean squared hop length ``l^2`` and the
    correlation factor ``f = (1 + <cos theta>)/(1 - <cos theta>)`` from the
    angles between successive hops of the same atom; error from Poisson
    counting and the delta method on ``<cos theta>``.
``msd_slope`` (of raw positions, :mod:`md_reference.analysis.observables`)
    the paper's least-squares slope of the multi-origin MSD over a lag window.
``kinisi``
    kinisi's Bayesian fit of the MSD with its covariance (:func:`kinisi_eq1`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from common.units import A2_PER_PS_TO_CM2_PER_S


@dataclass(frozen=True)
class HopLog:
    """Site-to-site moves of atoms in one run.

    Attributes
    ----------
    time : (n,) float64
        Time of each hop (any unit; the estimators return D per that unit, see
        ``A2_per_time_to_cm2_s``).
    atom : (n,) int64
        Index of the atom that moved (0 .. n_atoms-1).
    step_A : (n, 3) float64
        Its displacement, A.
    atom_species : (n_atoms,) int8
        Species code of every atom (0 I, 1 Br).
    duration : float
        Length of the run (same unit as ``time``).
    """

    time: np.ndarray
    atom: np.ndarray
    step_A: np.ndarray
    atom_species: np.ndarray
    duration: float

    @classmethod
    def from_arrays(cls, time, atom, step_A, atom_species, duration) -> "HopLog":
        t = np.asarray(time, dtype=np.float64).reshape(-1)
        a = np.asarray(atom, dtype=np.int64).reshape(-1)
        s = np.asarray(step_A, dtype=np.float64).reshape(-1, 3)
        sp = np.asarray(atom_species, dtype=np.int8).reshape(-1)
        if not (t.size == a.size == s.shape[0]):
            raise ValueError(f"hop log arrays differ in length: time {t.size}, atom {a.size}, step {s.shape[0]}")
        if a.size and (a.min() < 0 or a.max() >= sp.size):
            raise ValueError(f"hop log atom indices must lie in [0, {sp.size})")
        if not (math.isfinite(duration) and duration > 0):
            raise ValueError(f"hop log duration must be > 0, got {duration}")
        if t.size and (np.any(np.diff(t) < 0) or t[0] < 0 or t[-1] > duration * (1 + 1e-12)):
            raise ValueError("hop times must be sorted and lie in [0, duration]")
        return cls(t, a, s, sp, float(duration))

    @property
    def n_hops(self) -> int:
        return int(self.time.size)

    def select(self, species: str) -> np.ndarray:
        """Boolean mask over hops whose atom is of ``species`` ("I", "Br" or "X" for all)."""
        if species == "X":
            return np.ones(self.n_hops, dtype=bool)
        code = {"I": 0, "Br": 1}[species]
        return self.atom_species[self.atom] == code


def lattice_msd(log: HopLog, lags, species: str = "X", n_origins: int = 400) -> np.ndarray:
    """Multi-origin MSD of the lattice paths, summed over the atoms of ``species`` (A^2).

    Origins lie on a uniform grid of ``n_origins`` points in ``[0, duration - lag]``
    for each lag (so every lag uses the whole run).
    """
    lags = np.atleast_1d(np.asarray(lags, dtype=np.float64))
    sel = log.select(species)
    t, a, s = log.time[sel], log.atom[sel], log.step_A[sel]
    out = np.zeros(lags.size)
    if t.size == 0:
        return out
    moved, inv = np.unique(a, return_inverse=True)
    # hops grouped by atom, in time order within each atom; cumulative displacement after each hop
    order = np.lexsort((t, inv))
    t_s, inv_s = t[order], inv[order]
    starts = np.searchsorted(inv_s, np.arange(moved.size + 1))
    cum = np.cumsum(s[order], axis=0)
    before = np.zeros((moved.size, 3))
    before[1:] = cum[starts[1:-1] - 1]
    cum -= before[inv_s]

    def positions(times: np.ndarray) -> np.ndarray:
        # (len(times), n_moved, 3): displacement of each moved atom at each time
        pos = np.zeros((times.size, moved.size, 3))
        for m in range(moved.size):
            lo, hi = starts[m], starts[m + 1]
            k = np.searchsorted(t_s[lo:hi], times, side="right")
            ok = k > 0
            pos[ok, m] = cum[lo:hi][k[ok] - 1]
        return pos

    for n, lag in enumerate(lags):
        if not 0 < lag <= log.duration:
            raise ValueError(f"lag {lag} outside (0, duration {log.duration}]")
        o = np.linspace(0.0, log.duration - lag, int(n_origins))
        d = positions(o + lag) - positions(o)
        out[n] = float(np.mean(np.sum(d * d, axis=(1, 2))))
    return out


def lattice_lag_D(log: HopLog, lag: float, species: str = "X", n_origins: int = 400,
                  A2_per_time_to_cm2_s: float = A2_PER_PS_TO_CM2_PER_S) -> float:
    """``D_tau`` (cm^2/s; default unit conversion for times in ps) of one run."""
    return float(lattice_msd(log, [lag], species, n_origins)[0] / (6.0 * lag) * A2_per_time_to_cm2_s)


def successive_cosines(log: HopLog, species: str = "X") -> np.ndarray:
    """cos(angle) between each hop and the next hop of the same atom."""
    sel = log.select(species)
    a, s, t = log.atom[sel], log.step_A[sel], log.time[sel]
    order = np.lexsort((t, a))
    a, s = a[order], s[order]
    same = a[1:] == a[:-1]
    u, v = s[:-1][same], s[1:][same]
    nu = np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1)
    ok = nu > 0
    return np.clip(np.einsum("ij,ij->i", u[ok], v[ok]) / nu[ok], -1.0, 1.0)


def back_hop_fraction(log: HopLog, species: str = "X") -> tuple[float, int]:
    """Fraction of successive same-atom hop pairs that return the atom (cos = -1), and the pair count."""
    c = successive_cosines(log, species)
    if c.size == 0:
        return math.nan, 0
    return float(np.mean(c < -0.999)), int(c.size)


def hop_count_D(logs: list[HopLog], species: str = "X",
                A2_per_time_to_cm2_s: float = A2_PER_PS_TO_CM2_PER_S) -> dict:
    """``D = f n <l^2> / (6 T)`` pooled over runs, with f from successive-hop angles.

    Returns
    -------
    dict with ``D_cm2_s``, ``err_cm2_s`` (Poisson on n, delta method on
    <cos theta>), ``D_uncorrelated_cm2_s`` (f = 1), ``f``, ``mean_cos``,
    ``n_hops``, ``n_pairs``.
    """
    n = 0
    l2 = 0.0
    T = 0.0
    cos = []
    for lg in logs:
        sel = lg.select(species)
        n += int(sel.sum())
        l2 += float(np.sum(lg.step_A[sel] ** 2))
        T += lg.duration
        cos.append(successive_cosines(lg, species))
    c = np.concatenate(cos) if cos else np.zeros(0)
    out = {"n_hops": n, "n_pairs": int(c.size), "D_cm2_s": math.nan, "err_cm2_s": math.nan,
           "D_uncorrelated_cm2_s": math.nan, "f": math.nan, "mean_cos": math.nan}
    if n == 0 or T <= 0:
        return out
    d0 = l2 / (6.0 * T) * A2_per_time_to_cm2_s
    mc = float(c.mean()) if c.size else 0.0
    f = (1.0 + mc) / (1.0 - mc) if mc < 1 else math.inf
    var_mc = float(c.var(ddof=1) / c.size) if c.size > 1 else 0.0
    df_dmc = 2.0 / (1.0 - mc) ** 2
    rel = math.sqrt(1.0 / n + (df_dmc ** 2 * var_mc) / f ** 2) if f > 0 else math.nan
    out.update(D_cm2_s=f * d0, err_cm2_s=f * d0 * rel, D_uncorrelated_cm2_s=d0, f=f, mean_cos=mc)
    return out


def angle_histogram(logs: list[HopLog], species: str = "X", bins=None) -> dict:
    """Histogram of cos(angle) between successive hops of the same atom (the discrete angles of the lattice)."""
    c = np.concatenate([successive_cosines(lg, species) for lg in logs]) if logs else np.zeros(0)
    edges = np.asarray(bins if bins is not None else [-1.01, -0.75, -0.25, 0.25, 0.75, 1.01])
    h = np.histogram(c, bins=edges)[0]
    return {"edges": edges, "counts": h, "n": int(c.size)}


def kinisi_eq1(positions_A: np.ndarray, symbols, species: str, cell_A, dt_ps: float, start_fraction: float = 0.1,
               max_fraction: float = 0.5, n_dt: int = 60, seed: int = 1) -> dict:
    """kinisi's covariance-aware Bayesian fit of the MSD, scaled to Eq. 1 (times the number of atoms).

    kinisi (McCluskey et al.) estimates the self-diffusion coefficient ``D*``
    of the selected atoms from their MSD with its full covariance; Eq. 1 sums
    over atoms, so ``D_eq1 = N D*``. Framework atoms (Pb, Cs) stay in the
    frames so that kinisi removes the drift with them; the selected halides are
    relabelled as one element for kinisi's species selection.

    Returns
    -------
    dict with ``D_cm2_s`` (posterior median), ``lo_cm2_s``/``hi_cm2_s``
    (16th/84th percentiles), ``n_atoms``, ``start_ps``.
    """
    import scipp as sc  # noqa: PLC0415
    from ase import Atoms  # noqa: PLC0415
    from kinisi.analyze import DiffusionAnalyzer  # noqa: PLC0415

    sym = np.asarray(symbols).astype(str)
    sel = np.isin(sym, ("I", "Br")) if species == "X" else sym == species
    keep = sel | np.isin(sym, ("Pb", "Cs"))
    pos = np.asarray(positions_A)[:, keep]
    labels = np.where(sel[keep], "I", sym[keep])
    cell = np.diag(np.asarray(cell_A, dtype=np.float64))
    frames = [Atoms(symbols=list(labels), positions=p, cell=cell, pbc=True) for p in pos]
    for f in frames:
        f.wrap()
    n_frames = len(frames)
    steps = np.unique(np.round(np.linspace(1, int(max_fraction * (n_frames - 1)), n_dt)).astype(int))
    dt = sc.array(dims=["time interval"], values=steps * dt_ps, unit="ps")
    da = DiffusionAnalyzer.from_ase(frames, specie="I", time_step=sc.scalar(dt_ps, unit="ps"),
                                    step_skip=sc.scalar(1, unit=sc.units.dimensionless), dt=dt, progress=False)
    start = start_fraction * (n_frames - 1) * dt_ps
    da.diffusion(sc.scalar(start, unit="ps"), progress=False, random_state=np.random.RandomState(seed))
    samples = np.asarray(da.D.to(unit="cm^2/s").values, dtype=np.float64)
    n_atoms = int(sel.sum())
    q16, q50, q84 = np.quantile(samples, [0.16, 0.5, 0.84])
    return {"D_cm2_s": float(q50 * n_atoms), "lo_cm2_s": float(q16 * n_atoms), "hi_cm2_s": float(q84 * n_atoms),
            "n_atoms": n_atoms, "start_ps": float(start), "n_samples": int(samples.size)}


# --------------------------------------------------------------------------
# Eq. 1 from positions: multi-origin MSD and its least-squares slope
# --------------------------------------------------------------------------
DEFAULT_FIT_WINDOW = (0.1, 0.5)
DEFAULT_N_ORIGINS = 100
DEFAULT_N_LAGS = 200


def _check_traj(positions_A, times_ps) -> tuple[np.ndarray, np.ndarray, float]:
    pos = np.asarray(positions_A, dtype=np.float64)
    t = np.asarray(times_ps, dtype=np.float64)
    if pos.ndim != 3 or pos.shape[2] != 3 or pos.shape[0] < 2:
        raise ValueError(f"positions_A must have shape (n_frames >= 2, n_atoms, 3), got {pos.shape}")
    if t.shape != (pos.shape[0],):
        raise ValueError(f"times_ps must have shape ({pos.shape[0]},), got {t.shape}")
    dt = np.diff(t)
    if not np.all(np.isfinite(dt)) or np.any(dt <= 0):
        raise ValueError("times_ps must be finite and strictly increasing")
    if not np.allclose(dt, dt[0], rtol=1e-3, atol=0.0):
        raise ValueError("times_ps must be evenly spaced (multi-origin MSD uses frame lags)")
    return pos, t, float(dt.mean())


def msd_eq1(
    positions_A: np.ndarray,
    times_ps: np.ndarray,
    *,
    n_origins: int = DEFAULT_N_ORIGINS,
    max_lag_fraction: float = DEFAULT_FIT_WINDOW[1],
    n_lags: int = DEFAULT_N_LAGS,
) -> tuple[np.ndarray, np.ndarray]:
    """Multi-time-origin MSD summed over atoms (the bracket of Eq. 1).

    ``msd(L) = (1/n_o) sum_o sum_i |r_i(t_o + L) - r_i(t_o)|^2`` with up to
    ``n_origins`` origins spread evenly over all the origins available for lag
    ``L`` (so long lags use the whole run too).

    Parameters
    ----------
    positions_A : (n_frames, n_atoms, 3) float
        Unwrapped positions (A), drift already removed by the caller
        (e.g. :func:`md_reference.analysis.tracker.remove_framework_drift`).
    times_ps : (n_frames,) float
        Evenly spaced frame times (ps).
    n_origins : int
        Maximum number of time origins per lag.
    max_lag_fraction : float
        Longest lag as a fraction of the run length, in (0, 1].
    n_lags : int
        Maximum number of lags evaluated (evenly spaced frame lags from 0).

    Returns
    -------
    lags_ps : (n,) float64
    msd_A2 : (n,) float64
        Summed (not averaged) squared displacement (A^2).
    """
    pos, t, dt = _check_traj(positions_A, times_ps)
    if not 0.0 < max_lag_fraction <= 1.0:
        raise ValueError(f"max_lag_fraction must lie in (0, 1], got {max_lag_fraction}")
    if int(n_origins) < 1 or int(n_lags) < 2:
        raise ValueError(f"n_origins must be >= 1 and n_lags >= 2, got {n_origins}, {n_lags}")
    n_frames = pos.shape[0]
    max_lag = max(1, int(math.floor(max_lag_fraction * (n_frames - 1))))
    lags = np.unique(np.round(np.linspace(0, max_lag, int(n_lags))).astype(np.int64))
    msd = np.empty(lags.size, dtype=np.float64)
    for n, lag in enumerate(lags):
        n_avail = n_frames - lag
        origins = np.unique(np.round(np.linspace(0, n_avail - 1, min(int(n_origins), n_avail))).astype(np.int64))
        d = pos[origins + lag] - pos[origins]
        msd[n] = np.mean(np.sum(d * d, axis=(1, 2)))
    return lags * dt, msd


def fit_msd_eq1(lags_ps: np.ndarray, msd_A2: np.ndarray, duration_ps: float,
                fit_window: tuple[float, float] = DEFAULT_FIT_WINDOW) -> dict:
    """Least-squares line through the MSD over a lag window; ``D = slope / 6``.

    Parameters
    ----------
    lags_ps, msd_A2 : (n,) float
        Output of :func:`msd_eq1`.
    duration_ps : float
        Length of the run; the window is ``fit_window * duration_ps``.
    fit_window : (float, float)
        Fractions of the run bounding the fitted lags. The lower bound skips
        the ballistic and vibrational (cage) part, whose plateau the intercept
        absorbs; the upper bound drops long lags averaged over few independent
        origins.

    Returns
    -------
    dict with ``D_cm2_s``, ``slope_A2_ps``, ``intercept_A2``, ``n_points``, ``fit_window_ps``.
    """
    lo, hi = (float(v) for v in fit_window)
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"fit_window must satisfy 0 <= lo < hi <= 1, got {fit_window}")
    lags = np.asarray(lags_ps, dtype=np.float64)
    msd = np.asarray(msd_A2, dtype=np.float64)
    sel = (lags >= lo * duration_ps) & (lags <= hi * duration_ps * (1 + 1e-9))
    if np.count_nonzero(sel) < 2:
        raise ValueError(f"fit_window {fit_window} holds fewer than 2 lags; use a longer run or more lags")
    slope, intercept = np.polyfit(lags[sel], msd[sel], 1)
    return {
        "D_cm2_s": float(slope / 6.0 * A2_PER_PS_TO_CM2_PER_S),
        "slope_A2_ps": float(slope),
        "intercept_A2": float(intercept),
        "n_points": int(np.count_nonzero(sel)),
        "fit_window_ps": [lo * duration_ps, hi * duration_ps],
    }


def diffusion_eq1(
    positions_A: np.ndarray,
    times_ps: np.ndarray,
    *,
    fit_window: tuple[float, float] = DEFAULT_FIT_WINDOW,
    n_origins: int = DEFAULT_N_ORIGINS,
    n_lags: int = DEFAULT_N_LAGS,
) -> float:
    """Diffusion coefficient of Eq. 1 (cm^2/s) of the atoms given.

    The MSD summed over atoms (:func:`msd_eq1`) is fitted by a straight line
    over lags in ``fit_window`` (default 10-50 % of the run: for a 2 ns run,
    200-1000 ps, far beyond the sub-ps vibrational regime, while keeping at
    least half of the run for averaging over origins). ``D = slope / 6``,
    converted with 1 A^2/ps = 1e-4 cm^2/s.

    Parameters
    ----------
    positions_A : (n_frames, n_atoms, 3) float
        Unwrapped, drift-free positions (A) of one species (or all halides).
    times_ps : (n_frames,) float
        Evenly spaced times (ps).
    fit_window, n_origins, n_lags
        See :func:`fit_msd_eq1` and :func:`msd_eq1`.

    Returns
    -------
    float
        D in cm^2/s.
    """
    pos, t, _ = _check_traj(positions_A, times_ps)
    lags, msd = msd_eq1(pos, t, n_origins=n_origins, max_lag_fraction=float(fit_window[1]), n_lags=n_lags)
    return fit_msd_eq1(lags, msd, float(t[-1] - t[0]), fit_window)["D_cm2_s"]
