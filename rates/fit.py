"""Hop rates and Arrhenius parameters per environment class, by maximum likelihood.

Observations
------------
For every temperature ``T`` and hop class ``c`` (:mod:`lattice.environment`)
the data are the number of hops ``n`` and the *exposure* ``tau`` (s): the time
integral of the number of open paths of class ``c``, summed over all defects
(summed residence time x open exit paths; :mod:`md_reference.analysis.tracker` computes
it from MD, :mod:`kmc.exposure` from a KMC trajectory). If every path of class
``c`` hops with one rate ``k`` (a Poisson process per path), the log-likelihood
of a trajectory is, up to a constant,

.. math::

    \\log L = \\sum_{T, c} \\left[ n_{T,c} \\ln k_{T,c} - k_{T,c} \\tau_{T,c} \\right].

Per temperature the maximum-likelihood rate is ``k = n / tau`` with the Poisson
standard error ``sqrt(n) / tau``; for a class with no hops the one-sided 95 %
upper limit ``chi2_0.95(2 n + 2) / (2 tau)`` (Garwood), ``-ln(0.05) / tau`` at
``n = 0``, is the useful number.

Arrhenius fit
-------------
With ``k_{T,c} = nu_c exp(-E_c / k_B T)`` the log-rate is linear in
``(ln nu_c, E_c)``, so ``log L`` is concave in these parameters and has one
maximum; it is found with :func:`scipy.optimize.minimize` (``trust-exact``,
analytic gradient and Hessian, scipy's default tolerances), the prefactor on a
log scale. Modes (:data:`FIT_MODES`):

``"per-class"``
    ``(E_c, nu_c)`` of each class independently. A class with hops at a single
    temperature has no finite two-parameter maximum (only ``k`` at that
    temperature is determined): its ``E_c`` is fitted with the prefactor fixed at
    a given value (the base catalog's, in :func:`build_catalog_from_md`).
``"shared-prefactor"``
    One ``nu`` for all classes with hops and one ``E_c`` per class, fitted
    jointly. Needs at least one class with hops at two or more temperatures.
``"fixed-prefactor"``
    ``E_c`` only, every prefactor fixed at a given value.

Errors come from the observed Fisher information, the Hessian ``H`` of
``-log L`` at the maximum: ``cov = H^{-1}`` in ``(ln nu, E)``. For this Poisson
model ``H`` does not depend on the counts, so observed and expected
information coincide. ``prefactor_err_Hz = nu * sigma(ln nu)`` (delta method;
the error is symmetric in ``ln nu``, i.e. a factor ``exp(sigma)``). With a
fixed prefactor the error of ``E`` adds, in quadrature, the shift of the
optimum caused by the prefactor's own error:
``dE/d ln nu = sum(w beta) / sum(w beta^2)`` with ``w = k tau``.

The catalog writer :func:`build_catalog_from_md` turns a fit into a
:class:`rates.catalog.RateCatalog`; classes without a fit keep the base
catalog's values, flagged ``"fallback:<base source>"``.
"""

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import json
import logging
import math
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

from lattice.environment import DESCRIPTOR_NAME, DESCRIPTOR_VERSION, N_CLASSES, class_label
from rates.catalog import RateCatalog, load_catalog
from rates.ratelaw import K_B_EV

log = logging.getLogger(__name__)

#: Schema of the analysis file written by ``kmc md analyze`` (:mod:`md_reference.analysis.analyze`).
MD_ANALYSIS_SCHEMA = "halide-kmc/md-analysis"
MD_ANALYSIS_SCHEMA_VERSION = 1
PS_TO_S = 1.0e-12
#: Confidence level of the one-sided upper limits of per-temperature rates.
UPPER_LIMIT_CL = 0.95

#: Fit modes -> one-line description (the keys are the valid ``mode`` values).
FIT_MODES = {
    "per-class": "E_KRA and prefactor per class; prefactor fixed where a class has hops at one temperature only",
    "shared-prefactor": "one prefactor for all classes with hops, one E_KRA per class, fitted jointly",
    "fixed-prefactor": "E_KRA per class with the prefactor fixed at the base catalog's value",
}

#: ``ArrheniusFit.method`` values -> catalog class source id.
_SOURCE_OF_METHOD = {
    "free": "md-mle",
    "shared-prefactor": "md-mle-shared-prefactor",
    "fixed-prefactor": "md-mle-fixed-prefactor",
}


# --------------------------------------------------------------------------
# Observations
# --------------------------------------------------------------------------
@dataclass
class HopObservations:
    """Hop counts and exposures per temperature and hop class.

    Attributes
    ----------
    temperatures_K : (n_T,) float64
        Strictly increasing temperatures, K.
    hop_counts : (n_T, 104) int64
        Number of hops of each class at each temperature.
    exposure_s : (n_T, 104) float64
        Exposure (time x open paths) of each class at each temperature, s.
    sources : list of dict
        Where the numbers came from, e.g. ``{"file": ..., "sha256": ...}``.

    Raises
    ------
    ValueError
        On a shape mismatch, a non-positive or repeated temperature, a negative
        or non-integer count, a negative or non-finite exposure, or hops of a
        class with zero exposure at that temperature.
    """

    temperatures_K: np.ndarray
    hop_counts: np.ndarray
    exposure_s: np.ndarray
    sources: list = field(default_factory=list)

    def __post_init__(self):
        T = np.atleast_1d(np.asarray(self.temperatures_K, dtype=np.float64))
        if T.ndim != 1 or T.size == 0:
            raise ValueError(f"temperatures_K must be a non-empty 1-D array, got shape {T.shape}")
        if not np.all(np.isfinite(T)) or np.any(T <= 0):
            raise ValueError(f"temperatures_K must be finite and > 0, got {T.tolist()}")
        if np.any(np.diff(T) <= 0):
            raise ValueError(f"temperatures_K must be strictly increasing, got {T.tolist()} "
                             "(observations_from_counts sums rows of equal temperature)")
        shape = (T.size, N_CLASSES)
        n = np.asarray(self.hop_counts)
        tau = np.asarray(self.exposure_s, dtype=np.float64)
        for name, arr in (("hop_counts", n), ("exposure_s", tau)):
            if arr.shape != shape:
                raise ValueError(f"{name} must have shape (n_temperatures, {N_CLASSES}) = {shape}, got {arr.shape}")
        if n.dtype.kind not in "iu":
            nf = n.astype(np.float64)
            if not np.all(np.isfinite(nf)) or np.any(nf != np.round(nf)):
                raise ValueError("hop_counts must be whole numbers")
        n = n.astype(np.int64)
        if np.any(n < 0):
            t, c = np.argwhere(n < 0)[0]
            raise ValueError(f"hop_counts must be >= 0: {n[t, c]} hops of class {c} ({class_label(c)}) at {T[t]:g} K")
        if not np.all(np.isfinite(tau)):
            t, c = np.argwhere(~np.isfinite(tau))[0]
            raise ValueError(f"exposure_s must be finite: class {c} ({class_label(c)}) at {T[t]:g} K has {tau[t, c]}")
        if np.any(tau < 0):
            t, c = np.argwhere(tau < 0)[0]
            raise ValueError(f"exposure_s must be >= 0: class {c} ({class_label(c)}) at {T[t]:g} K has {tau[t, c]:g} s")
        bad = (n > 0) & (tau == 0)
        if np.any(bad):
            t, c = np.argwhere(bad)[0]
            raise ValueError(f"hop_counts/exposure_s: {n[t, c]} hops of class {c} ({class_label(c)}) at {T[t]:g} K "
                             "with zero exposure (a hop needs an open path, so exposure > 0)")
        self.temperatures_K = T
        self.hop_counts = n
        self.exposure_s = tau
        self.sources = list(self.sources)

    # -- queries ------------------------------------------------------------
    @property
    def beta_per_eV(self) -> np.ndarray:
        """(n_T,) float64: ``1 / (k_B T)``, 1/eV."""
        return 1.0 / (K_B_EV * self.temperatures_K)

    @property
    def observed(self) -> np.ndarray:
        """(104,) bool: class has exposure at some temperature."""
        return np.any(self.exposure_s > 0, axis=0)

    @property
    def total_hops(self) -> np.ndarray:
        """(104,) int64: hops of each class over all temperatures."""
        return self.hop_counts.sum(axis=0)

    def rates(self) -> dict[str, np.ndarray]:
        """Maximum-likelihood rate per temperature and class, with Poisson errors and upper limits.

        Returns
        -------
        dict of (n_T, 104) float64 arrays, NaN where the class has no exposure:
        ``rate_Hz`` (``n / tau``), ``rate_err_Hz`` (``sqrt(n) / tau``; NaN where
        ``n = 0``: use the upper limit) and ``rate_upper95_Hz`` (one-sided 95 %
        upper limit ``chi2_0.95(2 n + 2) / (2 tau)``, ``-ln(0.05) / tau`` at ``n = 0``).
        """
        from scipy.special import gammaincinv  # scipy loads on use: the kmc CLI imports this module

        n = self.hop_counts.astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            tau = np.where(self.exposure_s > 0, self.exposure_s, np.nan)
            rate = n / tau
            err = np.where(n > 0, np.sqrt(n) / tau, np.nan)
            # chi2_p(2 n + 2) / 2 = gammaincinv(n + 1, p)
            upper = gammaincinv(n + 1.0, UPPER_LIMIT_CL) / tau
        return {"rate_Hz": rate, "rate_err_Hz": err, "rate_upper95_Hz": upper}


def observations_from_counts(temperatures_K, hop_counts, exposure_s, sources=None) -> HopObservations:
    """Observations from arrays; rows of equal temperature are summed.

    Parameters
    ----------
    temperatures_K : float or (n_rows,) float
        Temperature of each row, K.
    hop_counts : (104,) or (n_rows, 104) int
        Hops per class.
    exposure_s : (104,) or (n_rows, 104) float
        Exposure per class, s.
    sources : list of dict or str, optional
        Provenance of the numbers (a string becomes ``{"description": ...}``).

    Returns
    -------
    HopObservations
    """
    T = np.atleast_1d(np.asarray(temperatures_K, dtype=np.float64))
    n = np.asarray(hop_counts)
    tau = np.asarray(exposure_s, dtype=np.float64)
    if n.ndim == 1:
        n = n[None, :]
    if tau.ndim == 1:
        tau = tau[None, :]
    if T.ndim != 1 or n.shape != (T.size, N_CLASSES) or tau.shape != (T.size, N_CLASSES):
        raise ValueError(f"hop_counts and exposure_s must have shape ({T.size}, {N_CLASSES}) for {T.size} "
                         f"temperature(s), got {n.shape} and {tau.shape}")
    if not np.all(np.isfinite(T)) or np.any(T <= 0):
        raise ValueError(f"temperatures_K must be finite and > 0, got {T.tolist()}")
    uniq, inv = np.unique(T, return_inverse=True)
    n_sum = np.zeros((uniq.size, N_CLASSES), dtype=n.dtype if n.dtype.kind in "iu" else np.float64)
    tau_sum = np.zeros((uniq.size, N_CLASSES))
    np.add.at(n_sum, inv, n)
    np.add.at(tau_sum, inv, tau)
    if n.dtype.kind in "iu" and np.any(n < 0):  # a negative row must not hide in a sum
        raise ValueError("hop_counts must be >= 0")
    if np.any(tau < 0):
        raise ValueError("exposure_s must be >= 0")
    if sources is None:
        sources = []
    elif isinstance(sources, (str, dict)):
        sources = [sources]
    sources = [{"description": s} if isinstance(s, str) else dict(s) for s in sources]
    return HopObservations(uniq, n_sum, tau_sum, sources)


def combine_observations(observations) -> HopObservations:
    """Sum several :class:`HopObservations` (rows of equal temperature are added; sources concatenated)."""
    obs = list(observations)
    if not obs:
        raise ValueError("combine_observations needs at least one HopObservations")
    return observations_from_counts(
        np.concatenate([o.temperatures_K for o in obs]),
        np.concatenate([o.hop_counts for o in obs]),
        np.concatenate([o.exposure_s for o in obs]),
        sources=[s for o in obs for s in o.sources],
    )


def observations_from_md_analysis(path_or_dict) -> HopObservations:
    """Read the per-class hop counts and exposures of an MD analysis file.

    Parameters
    ----------
    path_or_dict : str, Path or dict
        A JSON file written by ``kmc md analyze`` (schema
        ``halide-kmc/md-analysis`` v1) or its parsed content. Used fields:
        ``per_temperature[*].temperature_K`` and
        ``per_temperature[*].classes[*].{cls, n_hops, exposure_ps}``
        (``label``, if present, must match the class id).

    Returns
    -------
    HopObservations
        Exposure converted from ps to s; ``sources`` holds the file name, its
        sha256 (of the bytes; of the canonical JSON for a dict) and the
        trajectory files the analysis lists under ``inputs``.

    Raises
    ------
    ValueError
        The file is missing or not valid JSON, or a field is missing or invalid
        (the message names it).
    """
    if isinstance(path_or_dict, dict):
        data = path_or_dict
        origin = "<dict>"
        sha = hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    else:
        p = Path(path_or_dict)
        if not p.is_file():
            raise ValueError(f"MD analysis file {str(p)!r} does not exist")
        raw = p.read_bytes()
        origin = str(p)
        sha = hashlib.sha256(raw).hexdigest()
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{origin}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{origin}: an MD analysis must be a JSON object")
    schema = data.get("schema")
    if schema != MD_ANALYSIS_SCHEMA:
        raise ValueError(f"{origin}: field 'schema' is {schema!r}, expected {MD_ANALYSIS_SCHEMA!r}")
    ver = data.get("schema_version")
    if ver != MD_ANALYSIS_SCHEMA_VERSION:
        raise ValueError(f"{origin}: schema_version {ver!r} is not supported (this package reads "
                         f"{MD_ANALYSIS_SCHEMA_VERSION})")
    units = data.get("units", {})
    if not isinstance(units, dict):
        raise ValueError(f"{origin}: field 'units' must be an object, got {units!r}")
    if units.get("time", "ps") != "ps":
        raise ValueError(f"{origin}: units.time must be 'ps', got {units.get('time')!r}")
    per_t = data.get("per_temperature")
    if not isinstance(per_t, list) or not per_t:
        raise ValueError(f"{origin}: field 'per_temperature' must be a non-empty list")
    temps, counts, expos = [], [], []
    for i, entry in enumerate(per_t):
        where = f"{origin}: per_temperature[{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} must be an object")
        T = _number(entry.get("temperature_K"), f"{where}.temperature_K")
        if T <= 0:
            raise ValueError(f"{where}.temperature_K must be > 0, got {T}")
        if T in temps:
            raise ValueError(f"{where}.temperature_K {T:g} K listed twice")
        classes = entry.get("classes")
        if not isinstance(classes, list):
            raise ValueError(f"{where}.classes must be a list")
        n = np.zeros(N_CLASSES, dtype=np.int64)
        tau = np.zeros(N_CLASSES)
        seen = set()
        for j, c in enumerate(classes):
            cw = f"{where}.classes[{j}]"
            if not isinstance(c, dict):
                raise ValueError(f"{cw} must be an object")
            cid = c.get("cls")
            if isinstance(cid, bool) or not isinstance(cid, int) or not 0 <= cid < N_CLASSES:
                raise ValueError(f"{cw}.cls {cid!r} is not a class of {DESCRIPTOR_NAME!r} v{DESCRIPTOR_VERSION} "
                                 f"(0..{N_CLASSES - 1})")
            if "label" in c and c["label"] != class_label(cid):
                raise ValueError(f"{cw}.label {c['label']!r} contradicts class id {cid} ({class_label(cid)}): "
                                 "was the file written with another environment descriptor?")
            if cid in seen:
                raise ValueError(f"{cw}: class {cid} ({class_label(cid)}) listed twice")
            seen.add(cid)
            nh = c.get("n_hops")
            if isinstance(nh, bool) or not isinstance(nh, int) or nh < 0:
                raise ValueError(f"{cw}.n_hops must be an integer >= 0, got {nh!r}")
            ex = _number(c.get("exposure_ps"), f"{cw}.exposure_ps")
            if ex < 0:
                raise ValueError(f"{cw}.exposure_ps must be >= 0, got {ex}")
            if nh > 0 and ex == 0:
                raise ValueError(f"{cw}: {nh} hops of class {class_label(cid)} with exposure_ps = 0")
            n[cid] = nh
            tau[cid] = ex * PS_TO_S
        temps.append(T)
        counts.append(n)
        expos.append(tau)
    source = {"file": origin, "sha256": sha, "kind": "md-analysis"}
    inputs = data.get("inputs")
    if isinstance(inputs, list):
        source["md_inputs"] = [{"file": str(x.get("file")), "sha256": str(x.get("sha256"))}
                               for x in inputs if isinstance(x, dict)]
    return observations_from_counts(temps, np.array(counts), np.array(expos), sources=[source])


def _number(v, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{where} must be a number, got {v!r}")
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"{where} must be finite, got {v}")
    return v


# --------------------------------------------------------------------------
# Maximum-likelihood Arrhenius fits
# --------------------------------------------------------------------------
@dataclass
class ArrheniusFit:
    """Result of :func:`fit_arrhenius`; per-class arrays are NaN where a class was not fitted.

    Attributes
    ----------
    mode : str
        One of :data:`FIT_MODES`.
    temperatures_K : (n_T,) float64
    E_KRA_eV, E_KRA_err_eV : (104,) float64
        Fitted barrier and its standard error (including, for a fixed
        prefactor, the propagated prefactor error), eV.
    E_KRA_stat_err_eV : (104,) float64
        Standard error of the barrier from the counts alone, eV.
    prefactor_Hz, prefactor_err_Hz : (104,) float64
        Prefactor and its standard error (``nu * sigma(ln nu)``), Hz.
    ln_prefactor_err : (104,) float64
        ``sigma(ln nu)``.
    corr_E_ln_prefactor : (104,) float64
        Correlation of ``E`` and ``ln nu`` (NaN for a fixed prefactor).
    n_hops : (104,) int64
        Hops per class, all temperatures.
    n_temperatures_with_hops : (104,) int64
    method : list of str
        Per class: ``"free"``, ``"shared-prefactor"``, ``"fixed-prefactor"``, or
        ``""`` (not fitted).
    reason : dict
        ``class id -> why it was not fitted`` for observed classes without a fit.
    log_likelihood : float
        ``sum [n ln k - k tau]`` at the optimum, all fitted classes.
    """

    mode: str
    temperatures_K: np.ndarray
    E_KRA_eV: np.ndarray
    E_KRA_err_eV: np.ndarray
    E_KRA_stat_err_eV: np.ndarray
    prefactor_Hz: np.ndarray
    prefactor_err_Hz: np.ndarray
    ln_prefactor_err: np.ndarray
    corr_E_ln_prefactor: np.ndarray
    n_hops: np.ndarray
    n_temperatures_with_hops: np.ndarray
    method: list
    reason: dict
    log_likelihood: float

    @property
    def fitted(self) -> np.ndarray:
        """(104,) bool: class has a fit."""
        return ~np.isnan(self.E_KRA_eV)


def _poisson_log_mle(A, offset, n, tau, theta0, what: str):
    """Maximum-likelihood ``theta`` of counts ``n ~ Poisson(tau exp(offset + A theta))``.

    Parameters
    ----------
    A : (n_obs, p) float64
        Design matrix: ``ln k = offset + A theta`` (one row per temperature and class).
    offset : (n_obs,) float64
    n, tau : (n_obs,) float64
        Counts and exposures (rows with ``tau = 0`` carry no information and are dropped).
    theta0 : (p,) float64
        Start (any finite point with a positive-definite Fisher information).

    Returns
    -------
    theta : (p,) float64
    log_likelihood : float
        ``sum [n ln k - k tau]`` at ``theta``.
    cov : (p, p) float64
        Inverse observed Fisher information ``(A^T diag(k tau) A)^{-1}``.

    Notes
    -----
    ``-log L`` is convex in ``theta``. It is minimised with scipy's
    ``trust-exact`` and its default tolerances in whitened coordinates
    ``theta = theta0 + L^{-T} u`` (``L L^T`` = Fisher information at ``theta0``),
    so that ``u`` is measured in standard errors and scipy's gradient tolerance
    means the same for every data set. The objective is evaluated relative to
    ``theta0`` as ``sum [w0 expm1(d) - n d]`` (``d = A (theta - theta0)``,
    ``w0`` = expected counts at ``theta0``), which keeps its rounding error far
    below the decrease of a Newton step near the optimum even for large counts.
    """
    from scipy import linalg, optimize  # scipy loads on use: the kmc CLI imports this module

    keep = tau > 0
    A, offset, n, tau = A[keep], offset[keep], n[keep], tau[keep]
    theta0 = np.asarray(theta0, dtype=np.float64)
    w0 = tau * np.exp(offset + A @ theta0)
    try:
        L = np.linalg.cholesky(A.T @ (w0[:, None] * A))
    except np.linalg.LinAlgError:
        raise ValueError(f"{what}: the parameters are not identifiable from the data "
                         "(singular Fisher information)") from None
    B = linalg.solve_triangular(L, A.T, lower=True).T  # d = B u

    def fun(u):
        d = B @ u
        e = np.expm1(d)
        f = float(np.sum(w0 * e - n * d))
        g = B.T @ (w0 * (1.0 + e) - n)
        return f, g

    def hess(u):
        w = w0 * np.exp(B @ u)
        return B.T @ (w[:, None] * B)

    with np.errstate(over="ignore", invalid="ignore"):
        res = optimize.minimize(fun, np.zeros(theta0.size), jac=True, hess=hess, method="trust-exact")
    if not res.success:
        raise RuntimeError(f"{what}: the optimiser did not converge ({res.message})")
    theta = theta0 + linalg.solve_triangular(L.T, res.x, lower=False)
    ln_k = offset + A @ theta
    w = tau * np.exp(ln_k)
    H = A.T @ (w[:, None] * A)
    try:
        Lh = np.linalg.cholesky(H)
    except np.linalg.LinAlgError:
        raise ValueError(f"{what}: singular Fisher information at the optimum") from None
    Li = linalg.solve_triangular(Lh, np.eye(theta.size), lower=True)
    return theta, float(np.sum(n * ln_k - w)), Li.T @ Li


def _free_design(beta):
    """Design of ``ln k_T = ln nu - E beta_T``, parameters ``(ln nu, E)``."""
    return np.column_stack([np.ones_like(beta), -beta])


def _start_free(beta, n, tau):
    """Weighted least-squares start ``(ln nu, E)`` from the temperatures with hops."""
    m = n > 0
    y = np.log(n[m] / tau[m])
    slope, intercept = np.polyfit(beta[m], y, 1, w=np.sqrt(n[m]))
    return np.array([intercept, -slope])


def _start_fixed(ln_nu, beta, n, tau):
    """Start ``E`` for a fixed prefactor: the count-weighted mean of ``(ln nu - ln(n/tau)) / beta``."""
    m = n > 0
    return float(np.sum(n[m] * (ln_nu - np.log(n[m] / tau[m])) / beta[m]) / n[m].sum())


def fit_class_arrhenius(temperatures_K, hop_counts, exposure_s, prefactor_Hz=None, prefactor_err_Hz=None) -> dict:
    """Maximum-likelihood ``E`` (and ``nu``) of one class from counts and exposures.

    Parameters
    ----------
    temperatures_K : (n_T,) float
    hop_counts : (n_T,) int
    exposure_s : (n_T,) float
        Exposure, s.
    prefactor_Hz : float, optional
        Fix the prefactor at this value (needed when hops occur at one temperature only).
    prefactor_err_Hz : float, optional
        Error of the fixed prefactor, propagated into ``E_KRA_err_eV``.

    Returns
    -------
    dict with ``E_KRA_eV``, ``E_KRA_err_eV``, ``E_KRA_stat_err_eV``, ``prefactor_Hz``,
    ``prefactor_err_Hz``, ``ln_prefactor_err``, ``corr_E_ln_prefactor``,
    ``log_likelihood``, ``method`` (``"free"`` or ``"fixed-prefactor"``).

    Raises
    ------
    ValueError
        No hops at all, or a free fit with hops at fewer than two temperatures.
    """
    T = np.atleast_1d(np.asarray(temperatures_K, dtype=np.float64))
    n = np.atleast_1d(np.asarray(hop_counts))
    tau = np.atleast_1d(np.asarray(exposure_s, dtype=np.float64))
    if T.ndim != 1 or n.shape != T.shape or tau.shape != T.shape:
        raise ValueError(f"temperatures_K, hop_counts and exposure_s must be 1-D of equal length, got shapes "
                         f"{T.shape}, {n.shape}, {tau.shape}")
    if not np.all(np.isfinite(T)) or np.any(T <= 0):
        raise ValueError(f"temperatures_K must be finite and > 0, got {T.tolist()}")
    if n.dtype.kind not in "iu" or np.any(n < 0):
        raise ValueError(f"hop_counts must be integers >= 0, got {n.tolist()}")
    if not np.all(np.isfinite(tau)) or np.any(tau < 0):
        raise ValueError(f"exposure_s must be finite and >= 0, got {tau.tolist()}")
    if np.any((n > 0) & (tau == 0)):
        raise ValueError("hop_counts/exposure_s: hops with zero exposure")
    return _fit_one(1.0 / (K_B_EV * T), n.astype(np.float64), tau, prefactor_Hz, prefactor_err_Hz, "class fit")


def _fit_one(beta, n, tau, prefactor_Hz, prefactor_err_Hz, what):
    n_t_hops = int(np.count_nonzero(n > 0))
    if n_t_hops == 0:
        raise ValueError(f"{what}: no hops, so no finite maximum-likelihood barrier")
    if prefactor_Hz is None:
        if n_t_hops < 2:
            raise ValueError(f"{what}: hops at {n_t_hops} temperature(s); a free (E, prefactor) fit needs hops at two "
                             "or more (give prefactor_Hz to fit E with a fixed prefactor)")
        x, loglike, cov = _poisson_log_mle(_free_design(beta), np.zeros_like(beta), n, tau,
                                           _start_free(beta, n, tau), what)
        s_ln = math.sqrt(cov[0, 0])
        s_e = math.sqrt(cov[1, 1])
        nu = math.exp(x[0])
        return {"E_KRA_eV": float(x[1]), "E_KRA_err_eV": s_e, "E_KRA_stat_err_eV": s_e, "prefactor_Hz": nu,
                "prefactor_err_Hz": nu * s_ln, "ln_prefactor_err": s_ln,
                "corr_E_ln_prefactor": cov[0, 1] / (s_ln * s_e),
                "log_likelihood": loglike, "method": "free"}
    nu = float(prefactor_Hz)
    if not (math.isfinite(nu) and nu > 0):
        raise ValueError(f"{what}: prefactor_Hz must be finite and > 0, got {prefactor_Hz}")
    ln_nu = math.log(nu)
    x, loglike, cov = _poisson_log_mle(-beta[:, None], np.full_like(beta, ln_nu), n, tau,
                                       [_start_fixed(ln_nu, beta, n, tau)], what)
    s_stat = math.sqrt(cov[0, 0])
    s_ln = 0.0
    if prefactor_err_Hz is not None and math.isfinite(float(prefactor_err_Hz)):
        s_ln = float(prefactor_err_Hz) / nu
    w = np.exp(ln_nu - x[0] * beta) * tau
    dE_dln_nu = float((w * beta).sum() / (w * beta ** 2).sum())
    return {"E_KRA_eV": float(x[0]), "E_KRA_err_eV": math.hypot(s_stat, dE_dln_nu * s_ln), "E_KRA_stat_err_eV": s_stat,
            "prefactor_Hz": nu, "prefactor_err_Hz": nu * s_ln if s_ln else math.nan,
            "ln_prefactor_err": s_ln if s_ln else math.nan, "corr_E_ln_prefactor": math.nan,
            "log_likelihood": loglike, "method": "fixed-prefactor"}


def fit_arrhenius(obs: HopObservations, mode: str = "per-class", prefactor_Hz=None,
                  prefactor_err_Hz=None) -> ArrheniusFit:
    """Maximum-likelihood Arrhenius parameters of every class with hops.

    Parameters
    ----------
    obs : HopObservations
    mode : {"per-class", "shared-prefactor", "fixed-prefactor"}
        See :data:`FIT_MODES` and the module docstring.
    prefactor_Hz, prefactor_err_Hz : (104,) float, optional
        Prefactors (and errors) used where a prefactor is fixed: in
        ``"fixed-prefactor"`` mode for every class, in ``"per-class"`` mode for
        classes with hops at a single temperature (without them such classes
        are not fitted). NaN entries count as absent.

    Returns
    -------
    ArrheniusFit

    Raises
    ------
    ValueError
        Unknown mode; ``"fixed-prefactor"`` without ``prefactor_Hz``;
        ``"shared-prefactor"`` without a class that has hops at two or more
        temperatures.
    """
    if mode not in FIT_MODES:
        raise ValueError(f"unknown fit mode {mode!r}; valid modes are {list(FIT_MODES)}")
    nu_fix = _per_class(prefactor_Hz, "prefactor_Hz")
    nu_fix_err = _per_class(prefactor_err_Hz, "prefactor_err_Hz")
    if mode == "fixed-prefactor" and nu_fix is None:
        raise ValueError("fit mode 'fixed-prefactor' needs prefactor_Hz (one value per class)")
    beta = obs.beta_per_eV
    n = obs.hop_counts.astype(np.float64)
    tau = obs.exposure_s
    n_t_hops = np.count_nonzero(obs.hop_counts > 0, axis=0)
    nan = np.full(N_CLASSES, np.nan)
    out = {k: nan.copy() for k in ("E_KRA_eV", "E_KRA_err_eV", "E_KRA_stat_err_eV", "prefactor_Hz",
                                   "prefactor_err_Hz", "ln_prefactor_err", "corr_E_ln_prefactor")}
    method = [""] * N_CLASSES
    reason: dict[int, str] = {}
    loglike = 0.0
    with_hops = np.flatnonzero(n_t_hops > 0)
    for c in np.flatnonzero(obs.observed & (n_t_hops == 0)):
        reason[int(c)] = "no hops (exposure only)"

    def store(c, res):
        for k in out:
            out[k][c] = res[k]
        method[c] = res["method"]

    if mode == "shared-prefactor":
        multi = with_hops[n_t_hops[with_hops] >= 2]
        if multi.size == 0:
            raise ValueError("fit mode 'shared-prefactor' needs a class with hops at two or more temperatures "
                             f"(temperatures: {obs.temperatures_K.tolist()})")
        starts = np.array([_start_free(beta, n[:, c], tau[:, c]) for c in multi])
        ln_nu0 = float(np.average(starts[:, 0], weights=n[:, multi].sum(axis=0)))
        e0 = [_start_fixed(ln_nu0, beta, n[:, c], tau[:, c]) for c in with_hops]
        m = with_hops.size
        # rows (T, class i): ln k = ln nu - E_i beta_T
        A = np.zeros((beta.size, m, 1 + m))
        A[:, :, 0] = 1.0
        A[:, np.arange(m), 1 + np.arange(m)] = -beta[:, None]
        x, loglike, cov = _poisson_log_mle(A.reshape(-1, 1 + m), np.zeros(beta.size * m),
                                           n[:, with_hops].ravel(), tau[:, with_hops].ravel(),
                                           np.concatenate([[ln_nu0], e0]), "shared-prefactor fit")
        nu = math.exp(x[0])
        s_ln = math.sqrt(cov[0, 0])
        for i, c in enumerate(with_hops):
            s_e = math.sqrt(cov[1 + i, 1 + i])
            store(c, {"E_KRA_eV": x[1 + i], "E_KRA_err_eV": s_e, "E_KRA_stat_err_eV": s_e, "prefactor_Hz": nu,
                      "prefactor_err_Hz": nu * s_ln, "ln_prefactor_err": s_ln,
                      "corr_E_ln_prefactor": cov[0, 1 + i] / (s_ln * s_e), "method": "shared-prefactor"})
    else:
        for c in with_hops:
            fixed = mode == "fixed-prefactor" or n_t_hops[c] < 2
            p = p_err = None
            if fixed:
                if nu_fix is None or not np.isfinite(nu_fix[c]):
                    reason[int(c)] = (f"hops at {n_t_hops[c]} temperature(s) only and no prefactor to fix"
                                      if mode == "per-class" else "no prefactor to fix")
                    continue
                p = nu_fix[c]
                p_err = None if nu_fix_err is None else nu_fix_err[c]
            res = _fit_one(beta, n[:, c], tau[:, c], p, p_err, f"class {c} ({class_label(c)})")
            store(c, res)
            loglike += res["log_likelihood"]
    fit = ArrheniusFit(mode=mode, temperatures_K=obs.temperatures_K.copy(), **out,
                       n_hops=obs.total_hops.copy(), n_temperatures_with_hops=n_t_hops.astype(np.int64),
                       method=method, reason=reason, log_likelihood=float(loglike))
    neg = np.flatnonzero(fit.fitted & (fit.E_KRA_eV < 0))
    if neg.size:
        log.warning("negative fitted barrier for class(es) %s", ", ".join(class_label(c) for c in neg))
    return fit


def _per_class(values, name: str):
    if values is None:
        return None
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape != (N_CLASSES,):
        raise ValueError(f"{name} must have one value per class, shape ({N_CLASSES},), got {arr.shape}")
    return arr


# --------------------------------------------------------------------------
# Catalog writer
# --------------------------------------------------------------------------
def build_catalog_from_md(obs: HopObservations, base_catalog="default", mode: str = "per-class",
                          name: str | None = None, description: str | None = None,
                          temperature_range_K=None, extra_provenance: dict | None = None) -> RateCatalog:
    """A rate catalog whose classes seen in MD carry maximum-likelihood Arrhenius parameters.

    Parameters
    ----------
    obs : HopObservations
        Hop counts and exposures (e.g. :func:`observations_from_md_analysis`).
    base_catalog : RateCatalog, str or Path
        Source of the energy model (pair and bridge energies), the lattice
        constants, the prefactors fixed where needed and the values of every
        class without a fit; ``"default"`` is the embedded catalog.
    mode : {"per-class", "shared-prefactor", "fixed-prefactor"}
        Fit mode (:func:`fit_arrhenius`).
    name, description : str, optional
        Catalog name and description (defaults name the mode and the base).
    temperature_range_K : (2,) float, optional
        Declared validity range; default the span of the observed temperatures.
    extra_provenance : dict, optional
        Merged into ``provenance`` (e.g. the git revision from the caller).

    Returns
    -------
    RateCatalog
        Validated (parsed back from its own JSON form). Class sources:
        ``"md-mle"`` (free fit), ``"md-mle-shared-prefactor"``,
        ``"md-mle-fixed-prefactor"``, or ``"fallback:<base source>"`` for
        classes without a fit (never seen, no hops, or a negative fitted
        barrier, which the catalog format forbids).
    """
    base = base_catalog if isinstance(base_catalog, RateCatalog) else load_catalog(base_catalog)
    fit = fit_arrhenius(obs, mode, prefactor_Hz=base.prefactor_Hz, prefactor_err_Hz=base.prefactor_err_Hz)
    use = fit.fitted & (fit.E_KRA_eV >= 0)
    reason = dict(fit.reason)
    for c in np.flatnonzero(fit.fitted & ~use):
        reason[int(c)] = f"fitted E_KRA = {fit.E_KRA_eV[c]:.4g} eV < 0 (not allowed in a catalog)"
    e_kra = base.E_KRA_eV.copy()
    e_err = base.E_KRA_err_eV.copy()
    nu = base.prefactor_Hz.copy()
    nu_err = base.prefactor_err_Hz.copy()
    src = list(base.class_source)
    for c in range(N_CLASSES):
        if use[c]:
            e_kra[c] = fit.E_KRA_eV[c]
            e_err[c] = fit.E_KRA_err_eV[c]
            nu[c] = fit.prefactor_Hz[c]
            nu_err[c] = fit.prefactor_err_Hz[c]
            src[c] = _SOURCE_OF_METHOD[fit.method[c]]
        elif base.present[c]:
            src[c] = f"fallback:{base.class_source[c]}"
    files = [s.get("file", s.get("description", "?")) for s in obs.sources]
    t_lo, t_hi = (float(obs.temperatures_K[0]), float(obs.temperatures_K[-1])) if temperature_range_K is None \
        else (float(temperature_range_K[0]), float(temperature_range_K[1]))
    sources = {f"base:{k}" if k in _SOURCE_OF_METHOD.values() else k: v for k, v in base.sources.items()}
    what = (f"maximum-likelihood Arrhenius fit (mode {mode!r}) of per-class hop counts and exposures from "
            f"{', '.join(files) or 'programmatic observations'} at {', '.join(f'{t:g}' for t in obs.temperatures_K)} K")
    sources["md-mle"] = what + "; E_KRA and prefactor of the class fitted freely"
    sources["md-mle-shared-prefactor"] = what + "; one prefactor shared by all fitted classes, E_KRA per class"
    sources["md-mle-fixed-prefactor"] = (what + "; E_KRA fitted with the prefactor fixed at the value of base "
                                         f"catalog {base.name!r}")
    assumptions = [
        "Classes with class_source md-mle*: E_KRA_eV and prefactor_Hz maximise log L = sum_T [n_T ln k_T - k_T tau_T] "
        "with k_T = prefactor exp(-E_KRA / k_B T), n_T the hops and tau_T the exposure (time x open paths) of the "
        "class at temperature T: every path of a class is assumed to hop with one rate (a Poisson process).",
        "The fitted barrier is the class's effective barrier. The energy model (pair_eV, bridge_eV) is taken from the "
        f"base catalog {base.name!r}, and the fitted E_KRA absorbs the mean dE/2 of the class's hops in MD: exact when "
        "dE = 0, as for every hop in a pure compound; for other hops the KMC adds each hop's own dE/2 on top.",
        "Errors: inverse of the observed Fisher information (Hessian of -log L at the optimum; for this Poisson model "
        "equal to the expected information); prefactor_err_Hz = prefactor * sigma(ln prefactor). With a fixed "
        "prefactor the base catalog's prefactor error is propagated into E_KRA_err_eV.",
        f"Classes with class_source fallback:* keep the values of base catalog {base.name!r} (not seen in MD, seen "
        "without hops, or fitted to a negative barrier; see provenance.fit.unfitted).",
    ] + [f"base catalog {base.name!r}: {a}" for a in base.assumptions]
    per_class = []
    for c in np.flatnonzero(obs.observed | (fit.n_hops > 0)):
        per_class.append({
            "id": int(c), "label": class_label(int(c)),
            "n_hops": obs.hop_counts[:, c].tolist(), "exposure_s": obs.exposure_s[:, c].tolist(),
            "method": fit.method[c] if use[c] else "",
            "E_KRA_stat_err_eV": _json_num(fit.E_KRA_stat_err_eV[c]),
            "ln_prefactor_err": _json_num(fit.ln_prefactor_err[c]),
            "corr_E_ln_prefactor": _json_num(fit.corr_E_ln_prefactor[c]),
            "base_source": base.class_source[c],
        })
    inputs = {str(s.get("file", s.get("description", f"source {i}"))): s.get("sha256", "")
              for i, s in enumerate(obs.sources)}
    inputs[f"base catalog {base.name}"] = base.sha256()
    provenance = {
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "generator": "rates.fit.build_catalog_from_md",
        "package_version": _package_version(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "scipy": _scipy_version(),
        "inputs": inputs,
        "fit": {
            "mode": mode,
            "temperatures_K": obs.temperatures_K.tolist(),
            "n_hops_total": int(obs.hop_counts.sum()),
            "log_likelihood": fit.log_likelihood,
            "observation_sources": copy.deepcopy(obs.sources),
            "base_catalog": {"name": base.name, "sha256": base.sha256(),
                             "temperature_range_K": list(base.temperature_range_K)},
            "classes": per_class,
            "unfitted": {class_label(c): r for c, r in sorted(reason.items())},
        },
    }
    if extra_provenance:
        provenance.update(copy.deepcopy(extra_provenance))
    cat = RateCatalog(
        name=name or f"md-mle-{mode}",
        description=description if description is not None else
        f"Hop rates fitted to MD hop counts ({mode}); unseen classes from {base.name!r}.",
        E_KRA_eV=e_kra, E_KRA_err_eV=e_err, prefactor_Hz=nu, prefactor_err_Hz=nu_err, class_source=src,
        pair_eV=base.pair_eV.copy(), pair_err_eV=base.pair_err_eV.copy(), pair_source=dict(base.pair_source),
        bridge_eV=base.bridge_eV.copy(), bridge_err_eV=base.bridge_err_eV.copy(),
        bridge_source=list(base.bridge_source), lattice_constant_A=dict(base.lattice_constant_A),
        temperature_range_K=(t_lo, t_hi), sources=sources, assumptions=assumptions, provenance=provenance,
    )
    return RateCatalog.from_dict(json.loads(json.dumps(cat.to_dict())), origin=f"fitted catalog {cat.name!r}")


def _json_num(v):
    v = float(v)
    return None if math.isnan(v) else v


def _scipy_version() -> str:
    import scipy

    return scipy.__version__


def _package_version() -> str:
    try:
        return metadata.version("halide-kmc")
    except metadata.PackageNotFoundError:
        return "unknown"


__all__ = [
    "ArrheniusFit",
    "FIT_MODES",
    "HopObservations",
    "build_catalog_from_md",
    "combine_observations",
    "fit_arrhenius",
    "fit_class_arrhenius",
    "observations_from_counts",
    "observations_from_md_analysis",
]
