"""Rotation rates of split interstitials fitted from successive MD hops (maximum likelihood).

What the MD records carry
-------------------------
Every hop event of a tracked interstitial names the site it left (A), the
neighbour slot of its destination (B), the bridge atom that moved (the
*mover*), the one that stayed behind and the lattice atom it kicked out (the
*target*). The new bridge on B holds the mover and the target. The next hop
of the same defect starts from B and moves one of these two atoms; its
relation to the *landing* orientation of the first hop
(:func:`lattice.orientation.successive_relation`) is ``aligned``,
``crossing`` or ``perpendicular``. Pairs whose second hop does not start on
B with one of the two bridge atoms (a hop the tracker resolved differently)
are counted as ``unlinked`` and left out.

Model
-----
In the oriented model (:mod:`lattice.orientation`) the bridge lands in the
orientation L and, until it hops again, rotates: by 90 degrees at rate
``rho`` per channel (two channels) and by a flip at rate ``phi``. Relative
to L its orientation is L, F (flipped) or R (one of the two turned by 90
degrees); the collapsed generator is::

    L -> F: phi   L -> R: 2 rho
    F -> L: phi   F -> R: 2 rho
    R -> L: rho   R -> F: rho      (R -> R, the flip between the two R, is silent)

From every state the bridge hops at ``h = 4 Gamma`` (4 aligned kick-outs of
rate ``Gamma`` each, the pure-crystal case). The next hop is aligned, crossing
or perpendicular relative to L when the bridge is in L, F or R at that
moment, so the probabilities of the three relations are the row L of
``h (h I - Q)^-1``, a function of ``r = rho / Gamma`` and ``f = phi / Gamma``
only. The counts of the three relations are multinomial; ``(r, f)`` follow
by maximum likelihood with the covariance from the observed information (or,
for an estimate on the boundary ``f = 0``, the one-sided 68 % profile bound).

Rates
-----
``Gamma`` is the aligned per-channel hop rate of the oriented model, 4 x the
per-channel rate of the orientation-free counting of the MD tracker (16
channels there, 4 here, the same total hop rate), and follows the Arrhenius
line of the MD hop rates. The ratios are fitted jointly over temperatures,
``ln r(T) = a - b (beta - beta0)`` (``temperature_model = "arrhenius"``) or
with ``b = 0`` (``"ratio"``, the default: rotations share the hops'
activation energy, all that 25-50 pairs per temperature resolve), so that
``E_rot = E_hop + b`` and ``nu_rot = nu_hop exp(a + b beta0)``; errors by
the delta method from the observed information and the hop-rate fit.

Scope and assumptions (stated in the catalog's provenance)
----------------------------------------------------------
* Pairs are grouped by the composition of the landing bridge (II, IBr, BrBr);
  the fit uses pure-crystal kinetics (all 4 aligned channels equal). A
  composition without data takes the mean of the fitted ones (E and
  ln nu), labelled ``source = "fallback"``.
* :func:`orient_catalog` turns an orientation-free catalog into an oriented
  one: interstitial prefactors x 4 (16 open channels become 4 with the same
  total hop rate in a uniform environment; in mixed environments the split
  of the total among channels then follows the aligned subset), vacancy
  classes unchanged, rotations added.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from common.units import K_B_EV
from lattice.orientation import RELATIONS, REL_ALIGNED, REL_CROSSING, REL_PERPENDICULAR, successive_relation
from lattice.species import BRIDGE_NAMES

CHANNEL_FACTOR = 4.0
"""Aligned per-channel rate / orientation-free per-channel rate (16 channels -> 4, same total)."""
H_ALIGNED = 4.0
"""Open kick-outs of an oriented bridge (units of Gamma)."""


class OrientationFitError(ValueError):
    """The MD data cannot give a rotation fit (no successive pairs, inconsistent records)."""


# --------------------------------------------------------------------------- pairs from MD records
@dataclass
class RelationCounts:
    """Successive-hop relations of one group (bridge composition, temperature)."""

    temperature_K: float
    n_br: int
    counts: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=np.int64))
    n_unlinked: int = 0
    n_same_atom_return: int = 0
    gamma_free_per_ps: float = math.nan
    gamma_free_err_per_ps: float = math.nan

    @property
    def n_pairs(self) -> int:
        return int(self.counts.sum())

    def fractions(self) -> np.ndarray:
        n = self.n_pairs
        return self.counts / n if n else np.full(3, math.nan)


def _species_of(record: dict, atom: int) -> int:
    """1 for Br, 0 for I (``halide_species`` of the record: 0 = I, 1 = Br)."""
    return int(record["halide_species"][int(atom)])


def check_record(record, where: str) -> None:
    """Raise :class:`OrientationFitError` naming the first field a run record lacks for the rotation fit."""
    if not isinstance(record, dict):
        raise OrientationFitError(f"{where}: not a run record")
    for key in ("temperature_K", "halide_species", "tracking"):
        if key not in record:
            hint = " (written before it was recorded: rerun kmc md analyze)" if key == "halide_species" else ""
            raise OrientationFitError(f"{where}: field {key!r} missing{hint}")
    tr = record["tracking"]
    for key in ("events", "classes"):
        if not isinstance(tr.get(key), list):
            raise OrientationFitError(f"{where}: field tracking.{key} missing or not a list")
    n = len(record["halide_species"])
    for i, e in enumerate(tr["events"]):
        for key in ("defect", "time_ps", "from_site", "to_site", "slot", "mover_atom", "target_atom"):
            if key not in e:
                raise OrientationFitError(f"{where}: field tracking.events[{i}].{key} missing")
        for key in ("mover_atom", "target_atom"):
            if not (isinstance(e[key], int) and 0 <= e[key] < n) and e.get("kind_name") == "interstitial":
                raise OrientationFitError(f"{where}: tracking.events[{i}].{key} = {e[key]!r} is no halide index")


def record_pairs(record: dict) -> list[tuple[int, int, bool, bool]]:
    """Successive kick-out pairs of one MD record.

    Returns
    -------
    list of ``(n_br, relation, same_atom, returned)`` for linked pairs and
    ``(-1, -1, False, False)`` for unlinked ones. ``n_br``: Br atoms of the
    landing bridge; ``returned``: the mover went straight back to A.
    """
    events = [e for e in record["tracking"]["events"] if e.get("kind_name", "interstitial") == "interstitial"]
    by_defect: dict[int, list[dict]] = {}
    for e in sorted(events, key=lambda e: (e["defect"], e["time_ps"])):
        by_defect.setdefault(int(e["defect"]), []).append(e)
    out = []
    for evs in by_defect.values():
        for e1, e2 in zip(evs[:-1], evs[1:]):
            bridge = (int(e1["mover_atom"]), int(e1["target_atom"]))
            m2 = int(e2["mover_atom"])
            if int(e2["from_site"]) != int(e1["to_site"]) or m2 not in bridge:
                out.append((-1, -1, False, False))
                continue
            same = m2 == bridge[0]
            rel = successive_relation(int(e1["from_site"]) % 3, int(e1["slot"]), same, int(e2["slot"]))
            n_br = _species_of(record, bridge[0]) + _species_of(record, bridge[1])
            returned = same and int(e2["to_site"]) == int(e1["from_site"])
            out.append((n_br, rel, same, returned))
    return out


def _pure_gamma(record: dict) -> tuple[float, float, float]:
    """(hops, exposure ps, -) of the interstitial classes of a record (orientation-free counting)."""
    n = tau = 0.0
    for c in record["tracking"]["classes"]:
        if c.get("defect") == "interstitial":
            n += float(c["n_hops"])
            tau += float(c["exposure_ps"])
    return n, tau, 0.0


def relation_counts(records) -> dict[tuple[float, int], RelationCounts]:
    """Relation counts per (temperature, landing-bridge composition) over MD records.

    The orientation-free hop rate per channel of the group's temperature
    (all interstitial classes of those records pooled) is attached with its
    Poisson error.
    """
    groups: dict[tuple[float, int], RelationCounts] = {}
    hops: dict[float, list[float]] = {}
    unlinked: dict[float, int] = {}
    for rec in records:
        T = float(rec["temperature_K"])
        n, tau, _ = _pure_gamma(rec)
        h = hops.setdefault(T, [0.0, 0.0])
        h[0] += n
        h[1] += tau
        for n_br, rel, _same, returned in record_pairs(rec):
            if n_br < 0:
                unlinked[T] = unlinked.get(T, 0) + 1
                continue
            g = groups.setdefault((T, n_br), RelationCounts(T, n_br))
            g.counts[rel] += 1
            g.n_same_atom_return += int(returned)
    for (T, _nb), g in groups.items():
        n, tau = hops[T]
        g.n_unlinked = unlinked.get(T, 0)
        if tau > 0:
            g.gamma_free_per_ps = n / tau
            g.gamma_free_err_per_ps = math.sqrt(max(n, 1.0)) / tau
    return groups


# --------------------------------------------------------------------------- the chain and the MLE
def relation_probabilities(r: float, f: float, h: float = H_ALIGNED) -> np.ndarray:
    """(3,) probabilities of an aligned, crossing and perpendicular next hop, rates in units of Gamma."""
    r = max(float(r), 0.0)
    f = max(float(f), 0.0)
    Q = np.array([[-(f + 2 * r), f, 2 * r],
                  [f, -(f + 2 * r), 2 * r],
                  [r, r, -2 * r]])
    M = h * np.eye(3) - Q
    p = h * np.linalg.solve(M.T, np.array([1.0, 0.0, 0.0]))
    p = np.clip(p, 1e-300, 1.0)
    return p / p.sum()


def _nll(theta, counts) -> float:
    p = relation_probabilities(theta[0], theta[1])
    return -float(np.sum(counts * np.log(p)))


@dataclass
class RelationFit:
    """MLE of ``r = rho / Gamma`` and ``f = phi / Gamma`` from relation counts."""

    r: float
    f: float
    r_err: float
    f_err: float
    f_upper: float | None
    nll: float
    probabilities: np.ndarray
    counts: np.ndarray


def fit_relations(counts) -> RelationFit:
    """Maximum-likelihood ``(r, f)`` from (aligned, crossing, perpendicular) counts.

    Errors: square roots of the inverse observed information (numerical
    Hessian in ``(r, f)``); a parameter on its boundary 0 gets the one-sided
    68 % profile-likelihood bound in ``f_upper`` (or an ``r`` error from the
    same bound) instead.
    """
    from scipy.optimize import minimize  # noqa: PLC0415

    counts = np.asarray(counts, dtype=np.float64)
    if counts.shape != (3,) or np.any(counts < 0) or counts.sum() <= 0:
        raise OrientationFitError(f"relation counts must be 3 non-negative numbers with a positive sum, got {counts}")
    best = None
    for r0 in (0.05, 0.3, 1.0, 3.0):
        for f0 in (0.0, 0.1, 1.0):
            res = minimize(_nll, np.array([r0, f0]), args=(counts,), method="L-BFGS-B",
                           bounds=[(0.0, 1e4), (0.0, 1e4)])
            if best is None or res.fun < best.fun:
                best = res
    r, f = (float(v) for v in best.x)
    nll0 = float(best.fun)

    def hess(theta):
        eps = np.maximum(1e-4, 1e-3 * np.abs(theta))
        H = np.zeros((2, 2))
        for i in range(2):
            for j in range(2):
                def g(di, dj):
                    t = theta.copy()
                    t[i] += di * eps[i]
                    t[j] += dj * eps[j]
                    return _nll(np.maximum(t, 0.0), counts)
                H[i, j] = (g(1, 1) - g(1, -1) - g(-1, 1) + g(-1, -1)) / (4 * eps[i] * eps[j])
        return H

    def upper(i):
        """One-sided 68 % bound of parameter i by the profile likelihood (the other re-optimised)."""
        lo, hi = 0.0, 1.0
        def prof(v):
            j = 1 - i
            best_j = min((minimize(lambda x: _nll(np.array([v, x[0]] if i == 0 else [x[0], v]), counts),
                                   np.array([s]), method="L-BFGS-B", bounds=[(0.0, 1e4)]).fun
                          for s in (0.0, 0.3, 2.0)))
            del j
            return best_j - nll0
        while prof(hi) < 0.5 and hi < 1e4:
            lo, hi = hi, hi * 4.0
        for _ in range(40):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if prof(mid) < 0.5 else (lo, mid)
        return hi

    on_edge = [v <= 1e-6 for v in (r, f)]
    theta = np.array([r, f])
    r_err = f_err = math.nan
    f_upper = None
    if not any(on_edge):
        try:
            cov = np.linalg.inv(hess(theta))
            r_err, f_err = (float(math.sqrt(max(c, 0.0))) for c in np.diag(cov))
        except np.linalg.LinAlgError:
            pass
    else:
        if on_edge[1]:
            f_upper = upper(1)
            f_err = f_upper
            f = 0.0
        if on_edge[0]:
            r = 0.0
            r_err = upper(0)
        else:
            h = hess(theta)[0, 0]
            r_err = float(1.0 / math.sqrt(h)) if h > 0 else math.nan
    return RelationFit(r=r, f=f, r_err=r_err, f_err=f_err, f_upper=f_upper, nll=nll0,
                       probabilities=relation_probabilities(r, f), counts=counts)


# --------------------------------------------------------------------------- rates over temperature
@dataclass
class RotationFit:
    """Rotation rates of one bridge composition: per temperature and as Arrhenius pairs."""

    n_br: int
    per_T: list[dict]
    rot90: dict
    flip: dict
    source: str = "md"
    joint: dict = field(default_factory=dict)

    @property
    def bridge(self) -> str:
        return BRIDGE_NAMES[self.n_br]


LN_RATIO_BOUNDS = (math.log(1e-6), math.log(1e3))
TEMPERATURE_MODELS = ("ratio", "arrhenius")


def _wls_arrhenius(T, n, tau_s):
    """ln Gamma = ln nu - E beta by Poisson-weighted least squares; (ln nu, E, cov)."""
    beta = 1.0 / (K_B_EV * np.asarray(T, dtype=np.float64))
    n = np.asarray(n, dtype=np.float64)
    y = np.log(n / np.asarray(tau_s, dtype=np.float64))
    w = np.sqrt(n)
    A = np.column_stack([np.ones_like(beta), -beta])
    if beta.size == 1:
        return float(y[0]), math.nan, np.full((2, 2), math.nan)
    coef, *_ = np.linalg.lstsq(A * w[:, None], y * w, rcond=None)
    cov = np.linalg.inv((A * w[:, None]).T @ (A * w[:, None]))
    return float(coef[0]), float(coef[1]), cov


def _joint_fit(counts_T: np.ndarray, beta: np.ndarray, model: str):
    """MLE of ``ln r(T) = a_r - b_r (beta - beta0)`` and the same for ``f`` over all temperatures.

    ``model = "ratio"`` fixes ``b = 0`` (rotations share the activation
    energy of the hops). Returns (theta = [a_r, b_r, a_f, b_f], cov, nll, beta0).
    """
    from scipy.optimize import minimize  # noqa: PLC0415

    beta0 = float(np.average(beta, weights=counts_T.sum(axis=1)))
    free = [0, 2] if model == "ratio" else [0, 1, 2, 3]

    def unpack(x):
        th = np.zeros(4)
        th[free] = x
        return th

    def nll(x):
        th = unpack(x)
        tot = 0.0
        for c, b in zip(counts_T, beta):
            r = math.exp(np.clip(th[0] - th[1] * (b - beta0), *LN_RATIO_BOUNDS))
            f = math.exp(np.clip(th[2] - th[3] * (b - beta0), *LN_RATIO_BOUNDS))
            tot -= float(np.sum(c * np.log(relation_probabilities(r, f))))
        return tot

    lo, hi = LN_RATIO_BOUNDS
    bounds = [(lo, hi) if i in (0, 2) else (-20.0, 20.0) for i in free]
    best = None
    for ar in (-2.0, 0.0, 1.0):
        for af in (-5.0, -1.0, 0.5):
            x0 = np.array([ar if i == 0 else af if i == 2 else 0.0 for i in free])
            res = minimize(nll, x0, method="L-BFGS-B", bounds=bounds)
            if best is None or res.fun < best.fun:
                best = res
    x = best.x
    n = len(free)
    H = np.zeros((n, n))
    eps = 1e-3
    for i in range(n):
        for j in range(n):
            def g(di, dj):
                t = x.copy()
                t[i] += di * eps
                t[j] += dj * eps
                return nll(t)
            H[i, j] = (g(1, 1) - g(1, -1) - g(-1, 1) + g(-1, -1)) / (4 * eps * eps)
    cov_free = np.full((n, n), math.nan)
    try:
        c = np.linalg.inv(H)
        if np.all(np.diag(c) > 0):
            cov_free = c
    except np.linalg.LinAlgError:
        pass
    cov = np.zeros((4, 4))
    cov[np.ix_(free, free)] = cov_free
    upper = {}
    for i, p in enumerate(free):
        if p in (0, 2) and x[i] <= lo + 1e-3:
            # one-sided 68 % profile-likelihood bound of a parameter on its lower bound
            def prof(v, i=i):
                others = [j for j in range(n) if j != i]
                def sub(y):
                    t = x.copy()
                    t[i] = v
                    t[others] = y
                    return nll(t)
                return minimize(sub, x[others], method="L-BFGS-B", bounds=[bounds[j] for j in others]).fun - best.fun
            a, b = lo, hi
            for _ in range(30):
                m = 0.5 * (a + b)
                a, b = (m, b) if prof(m) < 0.5 else (a, m)
            upper[p] = b
            cov[p, :] = cov[:, p] = 0.0
            cov[p, p] = math.nan
    return unpack(x), cov, float(best.fun), beta0, upper


def fit_rotations(records, temperature_model: str = "ratio", min_pairs: int = 1,
                  single_T_hop_E_eV: float | None = None) -> dict[int, RotationFit]:
    """Rotation fits per landing-bridge composition (only compositions with data; see :func:`complete_fits`).

    The ratios ``r = rho / Gamma`` and ``f = phi / Gamma`` are fitted jointly
    over all temperatures of a composition (``temperature_model``:
    ``"ratio"``, temperature-independent ratios, i.e. rotations with the
    activation energy of the hops; ``"arrhenius"``, an activation-energy
    difference each as well). ``Gamma(T)`` is the Arrhenius line of the MD
    hop rates (x :data:`CHANNEL_FACTOR`). Per-temperature fits are kept as a
    diagnostic in ``per_T``; a flip ratio whose per-T estimate is 0 has its
    one-sided 68 % bound in ``f_upper``. With hops at one temperature only
    the hop activation energy is ``single_T_hop_E_eV`` (e.g. the catalog's
    interstitial barrier; stated in ``joint``) and the prefactor follows
    from the rate at that temperature.
    """
    if temperature_model not in TEMPERATURE_MODELS:
        raise OrientationFitError(f"temperature_model {temperature_model!r} unknown; valid: {list(TEMPERATURE_MODELS)}")
    groups = relation_counts(records)
    out: dict[int, RotationFit] = {}
    hops: dict[float, list[float]] = {}
    for rec in records:
        n, tau, _ = _pure_gamma(rec)
        h = hops.setdefault(float(rec["temperature_K"]), [0.0, 0.0])
        h[0] += n
        h[1] += tau * 1e-12
    for n_br in sorted({nb for _T, nb in groups}):
        rows = []
        for (T, nb), g in sorted(groups.items()):
            if nb != n_br:
                continue
            row = {"temperature_K": T, "counts": {name: int(g.counts[i]) for i, name in enumerate(RELATIONS)},
                   "n_pairs": g.n_pairs, "n_unlinked": g.n_unlinked, "n_same_atom_return": g.n_same_atom_return,
                   "gamma_free_per_ps": g.gamma_free_per_ps}
            if g.n_pairs >= min_pairs:
                fit = fit_relations(g.counts)
                row.update(r=fit.r, r_err=fit.r_err, f=fit.f, f_err=fit.f_err, f_upper=fit.f_upper)
            rows.append(row)
        used = [r for r in rows if r["n_pairs"] >= min_pairs]
        temps = sorted({r["temperature_K"] for r in used})
        T_hop = [T for T in sorted(hops) if hops[T][0] > 0]
        if not used or not T_hop:
            continue
        counts_T = np.array([[r["counts"][k] for k in RELATIONS] for r in used], dtype=np.float64)
        beta = np.array([1.0 / (K_B_EV * r["temperature_K"]) for r in used])
        model = temperature_model if len(temps) > 1 else "ratio"
        th, cov, nll, beta0, upper = _joint_fit(counts_T, beta, model)
        ln_nu_h, E_h, cov_h = _wls_arrhenius(T_hop, [hops[T][0] for T in T_hop], [hops[T][1] for T in T_hop])
        hop_E_source = "md-arrhenius"
        if math.isfinite(E_h) and E_h < 0:
            # A falling rate is no thermally activated hop: the maximum likelihood under E >= 0 lies on the
            # bound, E = 0 and nu = total hops / total time; the unconstrained slope's error stays as E's error.
            n_tot = sum(hops[T][0] for T in T_hop)
            hop_E_source = f"md-arrhenius at the bound E >= 0 (unconstrained {E_h:.3f} eV)"
            E_h = 0.0
            ln_nu_h = math.log(n_tot / sum(hops[T][1] for T in T_hop))
            cov_h = np.array([[1.0 / n_tot, 0.0], [0.0, cov_h[1, 1]]])
        ln_nu_h += math.log(CHANNEL_FACTOR)
        if not math.isfinite(E_h):
            if single_T_hop_E_eV is None:
                raise OrientationFitError("rotation rates need MD hops at two or more temperatures "
                                          f"(hops only at {T_hop} K) or a given hop activation energy")
            E_h = float(single_T_hop_E_eV)
            ln_nu_h += E_h / (K_B_EV * T_hop[0])
            cov_h = np.zeros((2, 2))
            cov_h[0, 0] = 1.0 / hops[T_hop[0]][0]
            cov_h[1, 1] = math.nan  # the activation energy is given, not measured
            hop_E_source = "given (hops at one temperature)"
        kinds = {}
        for kind, (ia, ib) in (("rot90", (0, 1)), ("flip", (2, 3))):
            a, b = th[ia], th[ib]
            E = E_h + b
            ln_nu = ln_nu_h + a + b * beta0
            var_E = cov_h[1, 1] + cov[ib, ib]
            # d ln nu = d ln nu_h + d a + beta0 d b
            var_ln_nu = cov_h[0, 0] + cov[ia, ia] + beta0 ** 2 * cov[ib, ib] + 2 * beta0 * cov[ia, ib]
            kinds[kind] = {"E_eV": float(E), "E_err_eV": float(math.sqrt(var_E)) if var_E >= 0 else math.nan,
                           "prefactor_Hz": float(math.exp(ln_nu)),
                           "prefactor_err_Hz": float(math.exp(ln_nu) * math.sqrt(var_ln_nu))
                           if var_ln_nu >= 0 else math.nan,
                           "ln_ratio": float(a), "ln_ratio_err": float(math.sqrt(cov[ia, ia]))
                           if cov[ia, ia] >= 0 else math.nan,
                           "dE_vs_hop_eV": float(b), "at_lower_bound": ia in upper,
                           "ln_ratio_upper_68": upper.get(ia)}
            if ia in upper:
                # not resolved: the rate enters at the estimate (ratio 1e-6); its error is the 68 % bound
                kinds[kind]["prefactor_err_Hz"] = float(math.exp(ln_nu_h + upper[ia] + b * beta0))
        joint = {"temperature_model": model, "nll": nll, "beta0_per_eV": beta0, "n_pairs": int(counts_T.sum()),
                 "hop_arrhenius": {"E_eV": E_h, "prefactor_Hz": math.exp(ln_nu_h), "E_source": hop_E_source,
                                   "note": "aligned per-channel rate = 4 x orientation-free per-channel rate"}}
        joint["direct"] = _direct_counts(records, n_br)
        out[n_br] = RotationFit(n_br, rows, kinds["rot90"], kinds["flip"], joint=joint)
    return out


def _direct_counts(records, n_br: int) -> dict:
    """Rotations counted frame by frame by the MD tracker (records with an ``orientation`` block), per T.

    A cross-check of the pair-based fit: ``rho = n_rot90 / (2 t)`` per channel and ``phi = n_flip / t``,
    ``t`` the time with an assigned orientation, Poisson errors; plus the relations of the hops to the
    tracked orientation before them (the model allows aligned ones only) and how many landed as the
    model says. These counts depend on the tracker's thresholds (split, axis ratio, dwell).
    """
    per_T: dict[float, dict] = {}
    for rec in records:
        o = rec.get("orientation")
        if not isinstance(o, dict):
            continue
        T = float(rec["temperature_K"])
        d = per_T.setdefault(T, {"n_rot90": 0, "n_flip": 0, "assigned_ps": 0.0, "unassigned_frames": 0,
                                 "frames": 0, "relations": {}, "landing": {}})
        rc = o.get("rotation_counts", {}).get(str(n_br), {})
        d["n_rot90"] += int(rc.get("rot90", 0))
        d["n_flip"] += int(rc.get("flip", 0))
        d["assigned_ps"] += float(o.get("assigned_ps", {}).get(str(n_br), 0.0))
        d["unassigned_frames"] += int(o.get("n_unassigned_frames", 0))
        d["frames"] += int(o.get("n_interstitial_frames", 0))
        for key, src in (("relations", "relation_counts"), ("landing", "landing_counts")):
            for k, v in o.get(src, {}).items():
                d[key][k] = d[key].get(k, 0) + int(v)
    for d in per_T.values():
        t = d["assigned_ps"] * 1e-12
        d["rho_Hz"] = d["n_rot90"] / (2 * t) if t > 0 else math.nan
        d["rho_err_Hz"] = math.sqrt(max(d["n_rot90"], 1)) / (2 * t) if t > 0 else math.nan
        d["phi_Hz"] = d["n_flip"] / t if t > 0 else math.nan
        d["phi_err_Hz"] = math.sqrt(max(d["n_flip"], 1)) / t if t > 0 else math.nan
    return {f"{T:g}": v for T, v in sorted(per_T.items())}


def complete_fits(fits: dict[int, RotationFit]) -> dict[int, RotationFit]:
    """All three bridge compositions: a missing one takes the mean E and ln nu of the fitted ones."""
    if not fits:
        raise OrientationFitError("no successive interstitial hop pairs in the MD records: no rotation rates")
    out = dict(fits)
    for n_br in range(3):
        if n_br in out:
            continue
        kinds = {}
        for kind in ("rot90", "flip"):
            vals = [getattr(f, kind) for f in fits.values() if math.isfinite(getattr(f, kind)["E_eV"])]
            E = float(np.mean([v["E_eV"] for v in vals]))
            ln_nu = float(np.mean([math.log(v["prefactor_Hz"]) for v in vals]))
            spread = float(np.std([v["E_eV"] for v in vals])) if len(vals) > 1 else 0.0
            kinds[kind] = {"E_eV": E, "E_err_eV": float(math.hypot(spread, max(v["E_err_eV"] for v in vals))),
                           "prefactor_Hz": math.exp(ln_nu), "prefactor_err_Hz": math.nan, "n_T": 0}
        out[n_br] = RotationFit(n_br, [], kinds["rot90"], kinds["flip"], source="fallback")
    return out


def orient_catalog(catalog, fits: dict[int, RotationFit], name: str | None = None, md_sources=None):
    """An oriented copy of an orientation-free catalog with the fitted rotations.

    Interstitial prefactors (and their errors) are multiplied by
    :data:`CHANNEL_FACTOR`; the energy model and the vacancy classes stay.
    """
    from lattice.environment import N_VACANCY_CLASSES  # noqa: PLC0415

    if catalog.oriented:
        raise OrientationFitError(f"catalog {catalog.name!r} is already oriented")
    fits = complete_fits(fits)
    pref = catalog.prefactor_Hz.copy()
    pref_err = catalog.prefactor_err_Hz.copy()
    pref[N_VACANCY_CLASSES:] *= CHANNEL_FACTOR
    pref_err[N_VACANCY_CLASSES:] *= CHANNEL_FACTOR
    E = np.full(6, np.nan)
    E_err = np.full(6, np.nan)
    nu = np.full(6, np.nan)
    nu_err = np.full(6, np.nan)
    src = [""] * 6
    for n_br, fit in fits.items():
        for kind_i, kind in enumerate(("rot90", "flip")):
            v = getattr(fit, kind)
            i = kind_i * 3 + n_br
            E[i], E_err[i], nu[i], nu_err[i] = v["E_eV"], v["E_err_eV"], v["prefactor_Hz"], v["prefactor_err_Hz"]
            src[i] = fit.source
    from lattice.orientation import rotation_class, rotation_label  # noqa: PLC0415

    for i in range(6):
        label = rotation_label(rotation_class(i // 3, i % 3))
        if not (math.isfinite(E[i]) and math.isfinite(nu[i]) and nu[i] > 0):
            raise OrientationFitError(f"rotation fit gave no finite rate for {label}")
        if E[i] < 0:
            raise OrientationFitError(f"rotation fit gave a negative activation energy for {label} "
                                      f"({E[i]:.3f} eV); use temperature_model='ratio'")
    prov = dict(catalog.provenance)
    prov["orientation"] = {
        "method": "rates.orientation_fit: multinomial MLE of successive-hop relations (3-state bridge chain), "
                  "Arrhenius per rotation kind and bridge composition",
        "channel_factor": CHANNEL_FACTOR,
        "assumptions": ["interstitial prefactors x 4: 16 orientation-free channels -> 4 aligned, same total rate",
                        "rotations energy-neutral (all orientations on a site equal)",
                        "compositions without MD pairs: mean E and ln nu of the fitted ones"],
        "fits": {BRIDGE_NAMES[nb]: {"source": f.source, "rot90": f.rot90, "flip": f.flip, "per_T": f.per_T}
                 for nb, f in sorted(fits.items())},
        "md_sources": list(md_sources or []),
    }
    return dataclasses.replace(
        catalog, name=name or f"{catalog.name}-oriented", prefactor_Hz=pref, prefactor_err_Hz=pref_err,
        interstitial_model="oriented", rotation_E_eV=E, rotation_E_err_eV=E_err, rotation_prefactor_Hz=nu,
        rotation_prefactor_err_Hz=nu_err, rotation_source=src, provenance=prov)


__all__ = [
    "CHANNEL_FACTOR", "OrientationFitError", "RelationCounts", "RelationFit", "RotationFit", "complete_fits",
    "fit_relations", "fit_rotations", "orient_catalog", "record_pairs", "relation_counts",
    "relation_probabilities", "REL_ALIGNED", "REL_CROSSING", "REL_PERPENDICULAR",
]
