"""The lattice energy model (pair and bridge energies) from the endpoint dE of NEB records.

The identifiability rules and the least-squares fit are described in :mod:`rates.neb_fit`.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field

import numpy as np

from lattice.species import (
    BRIDGE,
    N_STATES,
    VACANCY,
)
from rates.catalog import RateCatalog, load_catalog
from rates.ratelaw import delta_energy_kickout, delta_energy_vacancy

from rates.kra_fit import _wls
from rates.neb_records import (
    _HALIDE_CODES,
    _RANK_RTOL,
    DEFAULT_ENERGY_PARAMETERS,
    ENERGY_PARAMETERS,
    MIN_RECORDS_PER_PARAMETER,
    PRIOR_SIGMA_EV,
    NEBRecord,
    _corr,
    _json,
    _json_matrix,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------
# Energy model from dE
# --------------------------------------------------------------------------
def energy_parameters_of(catalog: RateCatalog) -> np.ndarray:
    """(13,) float64: the catalog's energy model in the order of :data:`ENERGY_PARAMETERS`."""
    J = catalog.pair_eV
    return np.array([J[a, b] for a in range(N_STATES) for b in range(a, N_STATES)] + list(catalog.bridge_eV))


def _unpack(theta: np.ndarray):
    J = np.zeros((N_STATES, N_STATES))
    k = 0
    for a in range(N_STATES):
        for b in range(a, N_STATES):
            J[a, b] = J[b, a] = theta[k]
            k += 1
    return J, np.ascontiguousarray(theta[k:k + 3], dtype=np.float64)


def predict_delta_energy(rec: NEBRecord, theta: np.ndarray) -> float:
    """dE (eV) of a record's hop under energy parameters ``theta`` (rate-law functions)."""
    if not rec.has_counts:
        raise ValueError(f"{rec.source}: no pre-hop state counts (the cell was not rebuilt)")
    J, eb = _unpack(np.asarray(theta, dtype=np.float64))
    if rec.defect == "vacancy":
        return float(delta_energy_vacancy(rec.cA, rec.cB, rec.mover, J))
    return float(delta_energy_kickout(rec.cA, rec.cB, rec.mover, rec.other, rec.target, J, eb))


def design_matrix(records) -> np.ndarray:
    """(n_records, 13) float64: d dE / d parameter of each record.

    dE is linear and homogeneous in the parameters, so column ``p`` is dE with
    parameter ``p`` set to 1 and all others 0 (computed once per record).
    """
    eye = np.eye(len(ENERGY_PARAMETERS))
    rows = []
    for r in records:
        if r._design_row is None:
            r._design_row = np.array([predict_delta_energy(r, eye[p]) for p in range(eye.shape[0])])
        rows.append(r._design_row)
    return np.array(rows).reshape(len(rows), eye.shape[0])


@dataclass
class EnergyModelFit:
    """Least-squares fit of energy-model parameters to NEB endpoint energy differences.

    Attributes
    ----------
    theta_eV, theta_err_eV : (13,) float64
        All parameters (:data:`ENERGY_PARAMETERS`): fitted ones and the base
        values of the rest; errors NaN where not fitted (base errors are kept by the catalog).
    fitted : list of str
        Names of the fitted parameters.
    cov : (n_fitted, n_fitted) float64
    not_fitted : dict
        ``name -> reason`` for requested parameters that were not fitted.
    n_records : int
        Records used (mixed environments with a rebuilt cell).
    sigma_eV, sigma_source, dof, rmse_eV, rmse_base_eV :
        Residual scale, its origin, degrees of freedom, RMS residual of the fit
        and of the base catalog's energy model on the same records.
    status : str
        ``"fitted"`` or why nothing was fitted.
    cv_rmse_eV, cv_n, cv_by_family :
        Cross-validated RMSE of dE overall and ``{family: {"rmse_eV", "n"}}``.
    """

    theta_eV: np.ndarray
    theta_err_eV: np.ndarray
    fitted: list
    cov: np.ndarray
    not_fitted: dict
    n_records: int
    sigma_eV: float = math.nan
    sigma_source: str = ""
    dof: int = 0
    rmse_eV: float = math.nan
    rmse_base_eV: float = math.nan
    status: str = "fitted"
    cv_rmse_eV: float = math.nan
    cv_n: int = 0
    cv_by_family: dict = field(default_factory=dict)

    def value(self, name: str) -> tuple[float, float]:
        """(value, error) of parameter ``name`` (e.g. ``"pair:I-V"``), eV."""
        k = _param_index(name)
        return float(self.theta_eV[k]), float(self.theta_err_eV[k])

    def to_dict(self) -> dict:
        return {"status": self.status,
                "parameters": {n: {"value_eV": float(self.theta_eV[_param_index(n)]),
                                   "error_eV": _json(self.theta_err_eV[_param_index(n)])} for n in self.fitted},
                "correlation": _json_matrix(_corr(self.cov)), "not_fitted": dict(self.not_fitted),
                "n_records": self.n_records, "dof": self.dof, "sigma_eV": _json(self.sigma_eV),
                "sigma_source": self.sigma_source, "rmse_eV": _json(self.rmse_eV),
                "rmse_base_eV": _json(self.rmse_base_eV), "cv_rmse_eV": _json(self.cv_rmse_eV), "cv_n": self.cv_n,
                "cv_by_family": copy.deepcopy(self.cv_by_family)}


def _param_index(name: str) -> int:
    if name not in ENERGY_PARAMETERS:
        raise ValueError(f"unknown energy-model parameter {name!r}; valid names are {list(ENERGY_PARAMETERS)}")
    return ENERGY_PARAMETERS.index(name)


def _rank(A: np.ndarray) -> int:
    if A.size == 0:
        return 0
    s = np.linalg.svd(A, compute_uv=False)
    return int(np.count_nonzero(s > _RANK_RTOL * max(1.0, s[0]) * max(A.shape)))


def _mixed_environment(rec: NEBRecord) -> bool:
    """True unless every neighbour of A and B and every hop atom is the same halide (dE = 0 by symmetry)."""
    present = {t for t in _HALIDE_CODES if rec.cA[t] > 0 or rec.cB[t] > 0}
    present |= {s for s in (rec.mover, rec.other, rec.target) if s >= 0}
    return len(present) > 1 or bool(rec.cA[VACANCY] + rec.cB[VACANCY] + rec.cA[BRIDGE] + rec.cB[BRIDGE])


def fit_energy_model(records, base_catalog="default", parameters=DEFAULT_ENERGY_PARAMETERS,
                     prior_sigma_eV: float = PRIOR_SIGMA_EV,
                     min_records_per_parameter: int = MIN_RECORDS_PER_PARAMETER) -> EnergyModelFit:
    """Fit energy-model parameters to the records' dE (see the module docstring).

    Parameters
    ----------
    records : sequence of NEBRecord
        Records without pre-hop counts are ignored.
    base_catalog : RateCatalog, str or Path
        Values of every parameter not fitted.
    parameters : sequence of str
        Free parameters, in order of preference (names of :data:`ENERGY_PARAMETERS`).
    prior_sigma_eV : float
        Error scale when the fit has no residual degree of freedom.
    min_records_per_parameter : int
        A parameter is fitted only if the dE of at least this many records
        depends on it (fewer would be fixed by one or two hops, noise included).

    Returns
    -------
    EnergyModelFit
    """
    base = base_catalog if isinstance(base_catalog, RateCatalog) else load_catalog(base_catalog)
    idx = [_param_index(p) for p in parameters]
    if len(set(idx)) != len(idx):
        raise ValueError(f"energy parameters listed twice: {list(parameters)}")
    theta0 = energy_parameters_of(base)
    nan = np.full(theta0.size, np.nan)
    rows = [r for r in records if r.has_counts]
    X = design_matrix(rows) if rows else np.zeros((0, theta0.size))
    informative = np.array([_mixed_environment(r) for r in rows], dtype=bool)
    rows = [r for r, keep in zip(rows, informative) if keep]
    X = X[informative]
    if not rows:
        why = "no record with a rebuilt cell and a mixed environment (e.g. only pure cells)"
        return EnergyModelFit(theta0.copy(), nan, [], np.zeros((0, 0)), {p: why for p in parameters}, 0,
                              status=f"not fitted: {why}; energy model of base catalog {base.name!r}")
    y = np.array([r.delta_E_eV for r in rows]) - X @ theta0
    chosen: list[int] = []
    not_fitted = {}
    for p, k in zip(parameters, idx):
        n_dep = int(np.count_nonzero(X[:, k]))
        if n_dep == 0:
            not_fitted[p] = "does not enter dE of any record"
            continue
        if n_dep < int(min_records_per_parameter):
            not_fitted[p] = f"enters dE of {n_dep} record(s) only (< {int(min_records_per_parameter)})"
            continue
        if _rank(X[:, chosen + [k]]) <= len(chosen):
            aliased = ", ".join(ENERGY_PARAMETERS[j] for j in chosen)
            not_fitted[p] = f"not separable from {aliased} with these records"
            continue
        chosen.append(k)
    theta = theta0.copy()
    err = nan.copy()
    base_rmse = float(np.sqrt(np.mean(y ** 2)))
    if not chosen:
        return EnergyModelFit(theta, err, [], np.zeros((0, 0)), not_fitted, len(rows), rmse_base_eV=base_rmse,
                              status=f"not fitted: no free parameter enters dE; energy model of {base.name!r}")
    Xc = X[:, chosen]
    coef, cu, rss = _wls(Xc, y, np.ones(len(rows)))
    dof = len(rows) - len(chosen)
    if dof > 0:
        s2, src = rss / dof, "residuals"
    else:
        s2, src = prior_sigma_eV ** 2, "prior"
        log.warning("energy-model fit: %d parameters from %d records leaves no residual degree of freedom; errors "
                    "use prior_sigma_eV = %g eV", len(chosen), len(rows), prior_sigma_eV)
    cov = cu * s2
    theta[chosen] = theta0[chosen] + coef
    err[chosen] = np.sqrt(np.diag(cov))
    return EnergyModelFit(theta, err, [ENERGY_PARAMETERS[k] for k in chosen], cov, not_fitted, len(rows),
                          sigma_eV=math.sqrt(s2), sigma_source=src, dof=dof,
                          rmse_eV=math.sqrt(rss / len(rows)), rmse_base_eV=base_rmse)
