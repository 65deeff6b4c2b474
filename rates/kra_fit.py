"""Kinetically-resolved barriers from NEB records: E_KRA linear in the shell iodide count per hop family.

The model, weights and covariance are described in :mod:`rates.neb_fit`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from lattice.species import (
    DEFECT_KINDS,
)

from rates.neb_records import PRIOR_SIGMA_EV, SLOPE_MODES, _family_fields, _json

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------
# E_KRA(shell_nI) per family
# --------------------------------------------------------------------------
@dataclass
class FamilyFit:
    """E_KRA model of one family: ``E(n) = intercept_eV + slope_eV * n`` (n = shell_nI).

    Attributes
    ----------
    label : str
        ``"V:I"``, ``"Xi:Br:pI=1"``, ...
    model : {"linear", "linear-pooled", "constant"}
    intercept_eV, slope_eV : float
        Value at shell_nI = 0 and change per shell iodide (0 for a constant).
    cov : (2, 2) float64
        Covariance of (intercept, slope), eV^2 (zeros in the slope row of a constant).
    n_records : int
    shell_values : list of int
        Distinct fitted shell_nI values (the range of validity is their min..max).
    sigma_eV : float
        Scale ``s`` of the covariance (see the module docstring).
    sigma_source : str
        ``"residuals"`` (pooled reduced chi-square), ``"absolute"`` (given errors) or ``"prior"``.
    rmse_eV : float
        Root-mean-square residual of the fit.
    cv_rmse_eV : float
        Cross-validated RMSE (NaN without held-out predictions); ``cv_n`` predictions.
    """

    label: str
    model: str
    intercept_eV: float
    slope_eV: float
    cov: np.ndarray
    n_records: int
    shell_values: list
    sigma_eV: float = math.nan
    sigma_source: str = ""
    rmse_eV: float = math.nan
    cv_rmse_eV: float = math.nan
    cv_n: int = 0

    @property
    def intercept_err_eV(self) -> float:
        return float(math.sqrt(max(self.cov[0, 0], 0.0)))

    @property
    def slope_err_eV(self) -> float:
        return float(math.sqrt(max(self.cov[1, 1], 0.0)))

    def predict(self, shell_nI) -> tuple[np.ndarray, np.ndarray]:
        """(value, standard error) of E_KRA at ``shell_nI`` (scalar or array), eV."""
        n = np.asarray(shell_nI, dtype=np.float64)
        v = self.intercept_eV + self.slope_eV * n
        var = self.cov[0, 0] + 2.0 * n * self.cov[0, 1] + n * n * self.cov[1, 1]
        return v, np.sqrt(np.maximum(var, 0.0))

    def in_range(self, shell_nI: int) -> bool:
        return min(self.shell_values) <= shell_nI <= max(self.shell_values)

    def to_dict(self) -> dict:
        return {"family": self.label, **_family_fields(self.label), "model": self.model,
                "intercept_eV": self.intercept_eV, "intercept_err_eV": self.intercept_err_eV,
                "slope_eV_per_I": self.slope_eV, "slope_err_eV_per_I": self.slope_err_eV,
                "cov_intercept_slope_eV2": float(self.cov[0, 1]),
                "n_records": self.n_records, "shell_nI_values": list(self.shell_values),
                "sigma_eV": _json(self.sigma_eV), "sigma_source": self.sigma_source,
                "rmse_eV": _json(self.rmse_eV), "cv_rmse_eV": _json(self.cv_rmse_eV), "cv_n": self.cv_n}


def _wls(X: np.ndarray, y: np.ndarray, w: np.ndarray):
    """Weighted least squares: (coef, unscaled covariance (X^T W X)^-1, weighted RSS)."""
    sw = np.sqrt(w)
    A = X * sw[:, None]
    coef, *_ = np.linalg.lstsq(A, y * sw, rcond=None)
    cov = np.linalg.pinv(A.T @ A)
    r = (y - X @ coef) * sw
    return coef, cov, float(r @ r)


def fit_kra(records, slope_mode: str = "per-family", min_records_linear: int = 3, absolute_sigma: bool = False,
            prior_sigma_eV: float = PRIOR_SIGMA_EV) -> dict[str, FamilyFit]:
    """E_KRA(shell_nI) per family by weighted least squares (see the module docstring).

    Parameters
    ----------
    records : sequence of NEBRecord
    slope_mode : {"per-family", "pooled", "constant"}
        See :data:`SLOPE_MODES`.
    min_records_linear : int
        ``"per-family"``: fewest records for a family's own slope (>= 3 leaves a
        residual degree of freedom).
    absolute_sigma : bool
        Treat the records' ``sigma_eV`` as absolute errors (no rescaling).
    prior_sigma_eV : float
        Noise level used where a defect kind has no residual degree of freedom.

    Returns
    -------
    dict
        ``family label -> FamilyFit``, families sorted by label.
    """
    if slope_mode not in SLOPE_MODES:
        raise ValueError(f"unknown slope_mode {slope_mode!r}; valid modes are {list(SLOPE_MODES)}")
    if int(min_records_linear) < 2:
        raise ValueError(f"min_records_linear must be >= 2, got {min_records_linear}")
    if not prior_sigma_eV > 0:
        raise ValueError(f"prior_sigma_eV must be > 0, got {prior_sigma_eV}")
    records = list(records)
    fams: dict[str, list] = {}
    for r in records:
        fams.setdefault(r.family, []).append(r)
    out: dict[str, FamilyFit] = {}
    for kind in DEFECT_KINDS:
        labels = sorted(lb for lb in fams if _family_fields(lb)["defect"] == kind)
        if not labels:
            continue
        raw = {}  # label -> (intercept, slope, unscaled cov, rss, dof, model)
        if slope_mode == "pooled":
            rows = [r for lb in labels for r in fams[lb]]
            n_vals = np.array([r.shell_nI for r in rows], dtype=np.float64)
            X = np.zeros((len(rows), len(labels) + 1))
            for i, r in enumerate(rows):
                X[i, labels.index(r.family)] = 1.0
            X[:, -1] = n_vals
            has_slope = any(len({r.shell_nI for r in fams[lb]}) >= 2 for lb in labels)
            if not has_slope:
                X = X[:, :-1]
            y = np.array([r.kra_eV for r in rows])
            w = np.array([1.0 / r.sigma_eV ** 2 for r in rows])
            coef, cu, rss = _wls(X, y, w)
            dof = len(rows) - X.shape[1]
            for j, lb in enumerate(labels):
                c2 = np.zeros((2, 2))
                c2[0, 0] = cu[j, j]
                b = 0.0
                if has_slope:
                    b = coef[-1]
                    c2[0, 1] = c2[1, 0] = cu[j, -1]
                    c2[1, 1] = cu[-1, -1]
                raw[lb] = (coef[j], b, c2, "linear-pooled" if has_slope else "constant")
            rss_kind, dof_kind = rss, dof
        else:
            rss_kind, dof_kind = 0.0, 0
            for lb in labels:
                rows = fams[lb]
                n_vals = np.array([r.shell_nI for r in rows], dtype=np.float64)
                linear = (slope_mode == "per-family" and len(rows) >= int(min_records_linear)
                          and np.unique(n_vals).size >= 2)
                X = np.column_stack([np.ones(len(rows)), n_vals]) if linear else np.ones((len(rows), 1))
                y = np.array([r.kra_eV for r in rows])
                w = np.array([1.0 / r.sigma_eV ** 2 for r in rows])
                coef, cu, rss = _wls(X, y, w)
                c2 = np.zeros((2, 2))
                c2[: cu.shape[0], : cu.shape[1]] = cu
                raw[lb] = (coef[0], coef[1] if linear else 0.0, c2, "linear" if linear else "constant")
                rss_kind += rss
                dof_kind += len(rows) - X.shape[1]
        if absolute_sigma:
            s2, src = 1.0, "absolute"
        elif dof_kind > 0:
            s2, src = rss_kind / dof_kind, "residuals"
        else:
            s2, src = prior_sigma_eV ** 2, "prior"
            log.warning("%s barriers: no residual degree of freedom (%d records in %d families); E_KRA errors use "
                        "prior_sigma_eV = %g eV", kind, sum(len(fams[lb]) for lb in labels), len(labels),
                        prior_sigma_eV)
        for lb in labels:
            a, b, c2, model = raw[lb]
            rows = fams[lb]
            res = np.array([r.kra_eV - (a + b * r.shell_nI) for r in rows])
            out[lb] = FamilyFit(label=lb, model=model, intercept_eV=float(a), slope_eV=float(b), cov=c2 * s2,
                                n_records=len(rows), shell_values=sorted({r.shell_nI for r in rows}),
                                sigma_eV=math.sqrt(s2), sigma_source=src,
                                rmse_eV=float(np.sqrt(np.mean(res ** 2))))
    return dict(sorted(out.items()))
