"""Statistics shared by the MD analysis, the KMC analysis and the validation matrix.

* Eq. 1 of the paper, ``D = (1/6) d/dt < sum_i |r_i(t + t0) - r_i(t0)|^2 >``,
  summed over all atoms of a species; with several defects in a cell the
  package reports it *per defect*.
* Mean and standard error over independent runs, Student-t comparisons of two
  such means (a z from a few replicas is t-distributed, not normal), bootstrap
  intervals, and Arrhenius fits (Eq. 2).

The diffusion estimators that work on hop logs (lattice paths) are in
:mod:`common.diffusion`.
"""

from __future__ import annotations

import math

import numpy as np

from common.units import ANGSTROM2_TO_CM2, K_B_EV



def half_lattice_sq_to_cm2(lattice_constant_A: float) -> float:
    """Factor from (a/2)^2 (the unit of doubled coordinates squared) to cm^2."""
    return (0.5 * lattice_constant_A) ** 2 * ANGSTROM2_TO_CM2


def slope_D(time_s: np.ndarray, msd: np.ndarray, skip_fraction: float = 0.2) -> float:
    """D = slope / 6 of a least-squares line through ``msd(t)`` for t >= skip_fraction * t_end.

    ``msd`` in cm^2, result in cm^2/s. Returns NaN with fewer than 2 points.
    """
    t = np.asarray(time_s, dtype=np.float64)
    y = np.asarray(msd, dtype=np.float64)
    if t.size < 2 or t[-1] <= 0:
        return math.nan
    sel = t >= skip_fraction * t[-1]
    if np.count_nonzero(sel) < 2:
        sel = np.ones_like(t, dtype=bool)
    slope = np.polyfit(t[sel], y[sel], 1)[0]
    return float(slope / 6.0)


def block_D(time_s: np.ndarray, msd: np.ndarray, n_blocks: int = 5) -> tuple[float, float]:
    """Mean and standard error of D from the MSD increments over ``n_blocks`` equal time blocks.

    Each block gives ``(msd(t_b+1) - msd(t_b)) / (6 (t_b+1 - t_b))``, an unbiased
    estimate for diffusive motion; their scatter gives the standard error.
    Returns (NaN, NaN) when there are too few observations.
    """
    t = np.asarray(time_s, dtype=np.float64)
    y = np.asarray(msd, dtype=np.float64)
    if t.size < n_blocks + 1:
        return math.nan, math.nan
    edges = np.linspace(0, t.size - 1, n_blocks + 1).round().astype(int)
    vals = []
    for a, b in zip(edges[:-1], edges[1:]):
        if t[b] > t[a]:
            vals.append((y[b] - y[a]) / (6.0 * (t[b] - t[a])))
    if len(vals) < 2:
        return math.nan, math.nan
    v = np.asarray(vals)
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(v.size))


def mean_sem(values) -> tuple[float, float, int]:
    """Mean, standard error of the mean (NaN for one value) and count of the finite values."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan, 0
    if v.size == 1:
        return float(v[0]), math.nan, 1
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(v.size)), int(v.size)


def fit_arrhenius(temperature_K, D, D_err=None, T_ref_K: float = 300.0) -> dict:
    """Fit ``D = D0 exp(-E_a / k_B T)`` (Eq. 2) by (weighted) least squares on ln D.

    Parameters
    ----------
    temperature_K, D : array-like
        Temperatures and diffusion coefficients (> 0).
    D_err : array-like, optional
        Standard errors of D; weights 1/var(ln D) = (D/D_err)^2 when all finite.

    Returns
    -------
    dict with ``Ea_eV``, ``Ea_err_eV``, ``D0``, ``D0_err`` (same unit as D),
    ``D_ref`` at ``T_ref_K`` with ``D_ref_err`` (the covariance of E_a and
    ln D0 propagated) and ``n_points``. Errors from the covariance of the fit:
    from the given errors when weighted (also for two points), scaled by the
    residuals when unweighted (NaN for two points).
    """
    T = np.asarray(temperature_K, dtype=np.float64)
    y = np.asarray(D, dtype=np.float64)
    ok = np.isfinite(y) & (y > 0)
    T, y = T[ok], y[ok]
    if T.size < 2 or np.unique(T).size < 2:
        raise ValueError("an Arrhenius fit needs positive D at two or more distinct temperatures")
    x = -1.0 / (K_B_EV * T)
    ln = np.log(y)
    w = None
    if D_err is not None:
        e = np.asarray(D_err, dtype=np.float64)[ok]
        if np.all(np.isfinite(e) & (e > 0)):
            w = y / e
    if w is not None:  # known errors: the covariance follows from them, also for exactly two points
        coef, cov = np.polyfit(x, ln, 1, w=w, cov="unscaled")
    elif T.size == 2:  # no errors and no residual to estimate them from
        coef = np.polyfit(x, ln, 1)
        cov = np.full((2, 2), np.nan)
    else:
        coef, cov = np.polyfit(x, ln, 1, cov=True)
    ea, ln_d0 = float(coef[0]), float(coef[1])
    ea_err = float(math.sqrt(cov[0, 0])) if np.isfinite(cov[0, 0]) else math.nan
    ln_err = float(math.sqrt(cov[1, 1])) if np.isfinite(cov[1, 1]) else math.nan
    d0 = math.exp(ln_d0)
    d_ref = d0 * math.exp(-ea / (K_B_EV * T_ref_K))
    g = np.array([-1.0 / (K_B_EV * T_ref_K), 1.0])  # d ln D_ref / d (E_a, ln D0)
    var_ref = float(g @ cov @ g)
    return {
        "Ea_eV": ea,
        "Ea_err_eV": ea_err,
        "D0": d0,
        "D0_err": d0 * ln_err,
        "T_ref_K": T_ref_K,
        "D_ref": d_ref,
        "D_ref_err": d_ref * math.sqrt(var_ref) if np.isfinite(var_ref) and var_ref >= 0 else math.nan,
        "n_points": int(T.size),
    }


# ----------------------------------------------------------------------------
# two-sample comparison with honest degrees of freedom
# ----------------------------------------------------------------------------
def welch_compare(m1: float, e1: float, n1: int, m2: float, e2: float, n2: int, level: float = 0.95) -> dict:
    """Compare two means with standard errors ``e1``, ``e2`` from ``n1``, ``n2`` independent values.

    ``t = (m1 - m2) / sqrt(e1^2 + e2^2)`` with the Welch-Satterthwaite degrees
    of freedom ``nu = (e1^2 + e2^2)^2 / (e1^4/(n1-1) + e2^4/(n2-1))``; a side
    with ``n = inf`` (an error that is not a standard error over runs, e.g. a
    Poisson error) adds no term to the denominator. Two means agree when the
    two-sided p-value is above ``1 - level`` (|t| below the t quantile, not
    the Gaussian 2).

    Returns
    -------
    dict with ``t``, ``dof``, ``p_value``, ``t_crit`` (the ``level`` quantile
    for ``dof``) and ``agree`` (None when the comparison is undefined:
    non-finite inputs, zero combined error or fewer than 2 values on a side
    that needs them).
    """
    from scipy import stats as st  # noqa: PLC0415

    out = {"t": math.nan, "dof": math.nan, "p_value": math.nan, "t_crit": math.nan, "agree": None}
    vals = (m1, e1, m2, e2)
    if not all(v is not None and math.isfinite(v) for v in vals):
        return out
    v1, v2 = e1 * e1, e2 * e2
    comb = v1 + v2
    if not comb > 0:
        return out
    den = 0.0
    for v, n in ((v1, n1), (v2, n2)):
        if n is None:
            return out
        if math.isinf(n):
            continue
        if n < 2:
            return out
        den += v * v / (n - 1)
    dof = comb * comb / den if den > 0 else math.inf
    t = (m1 - m2) / math.sqrt(comb)
    p = 2.0 * float(st.t.sf(abs(t), dof)) if math.isfinite(dof) else 2.0 * float(st.norm.sf(abs(t)))
    crit = float(st.t.ppf(0.5 + level / 2, dof)) if math.isfinite(dof) else float(st.norm.ppf(0.5 + level / 2))
    out.update(t=float(t), dof=float(dof), p_value=p, t_crit=crit, agree=bool(p > 1.0 - level))
    return out


def t_interval(mean: float, sem: float, n: int, level: float = 0.68) -> tuple[float, float]:
    """Two-sided ``level`` interval ``mean +- t_{n-1} sem`` (NaN for n < 2)."""
    from scipy import stats as st  # noqa: PLC0415

    if n is None or n < 2 or not (math.isfinite(mean) and math.isfinite(sem)):
        return math.nan, math.nan
    q = float(st.t.ppf(0.5 + level / 2, n - 1))
    return mean - q * sem, mean + q * sem


def bootstrap_mean(values, n_boot: int = 2000, seed: int = 0, level: float = 0.68) -> dict:
    """Bootstrap (resampling ``values`` with replacement) of their mean: standard deviation and percentile interval."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size < 2:
        return {"mean": float(v[0]) if v.size else math.nan, "sd": math.nan, "lo": math.nan, "hi": math.nan,
                "n": int(v.size)}
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(int(n_boot), v.size))].mean(axis=1)
    lo, hi = np.quantile(means, [0.5 - level / 2, 0.5 + level / 2])
    return {"mean": float(v.mean()), "sd": float(means.std(ddof=1)), "lo": float(lo), "hi": float(hi),
            "n": int(v.size)}


# ----------------------------------------------------------------------------
# whole-trajectory estimators for KMC observation traces
# ----------------------------------------------------------------------------
def endpoint_D(time_s, msd) -> float:
    """``D = msd(t_end) / (6 t_end)`` of a trace that starts at t = 0 with msd(0) = 0.

    Uses the whole trajectory, is never negative, and has no fit window. For
    lattice hops without a vibrational part it is unbiased for uncorrelated
    motion and converges to D for correlated motion as t_end grows.
    """
    t = np.asarray(time_s, dtype=np.float64)
    y = np.asarray(msd, dtype=np.float64)
    if t.size < 2 or not t[-1] > 0:
        return math.nan
    return float((y[-1] - y[0]) / (6.0 * (t[-1] - t[0])))


def block_ratio_D(time_s, positions, n_blocks: int = 10) -> tuple[float, float, int]:
    """D of walkers from their positions at observation times, over consecutive time blocks.

    Each block ``b`` restarts the origin: ``S_b = sum_k |R_k(t_b+1) - R_k(t_b)|^2``
    over the ``n`` walkers. ``D = sum_b S_b / (6 n sum_b dt_b)`` (never negative);
    its standard error from the spread of the per-block values
    ``S_b / (6 n dt_b)`` (weighted by block length), which shrinks as
    1/sqrt(blocks), i.e. as 1/sqrt(hops) at a fixed number of hops per block.

    Parameters
    ----------
    time_s : (m,) float
        Observation times (increasing).
    positions : (m, n, 3) float
        Unwrapped positions of the n walkers at those times (any length unit;
        D comes out in unit^2 / s).
    n_blocks : int
        Number of blocks (observations are grouped into about equal-time blocks).

    Returns
    -------
    (D, sem, blocks_used)
    """
    t = np.asarray(time_s, dtype=np.float64)
    R = np.asarray(positions, dtype=np.float64)
    if R.ndim != 3 or R.shape[0] != t.size or t.size < 2 or R.shape[1] == 0:
        return math.nan, math.nan, 0
    edges = np.unique(np.searchsorted(t, np.linspace(t[0], t[-1], int(n_blocks) + 1)).clip(0, t.size - 1))
    edges[0], edges[-1] = 0, t.size - 1
    edges = np.unique(edges)
    dt = t[edges[1:]] - t[edges[:-1]]
    S = np.sum((R[edges[1:]] - R[edges[:-1]]) ** 2, axis=(1, 2))
    ok = dt > 0
    dt, S = dt[ok], S[ok]
    n = R.shape[1]
    if dt.size == 0:
        return math.nan, math.nan, 0
    D = float(S.sum() / (6.0 * n * dt.sum()))
    if dt.size < 2:
        return D, math.nan, int(dt.size)
    vals = S / (6.0 * n * dt)
    w = dt / dt.sum()
    var = float(np.sum(w * w * (vals - D) ** 2) * dt.size / (dt.size - 1))
    return D, math.sqrt(var), int(dt.size)
