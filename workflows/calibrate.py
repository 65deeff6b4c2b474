"""Calibrate catalog parameters so that KMC observables match a target table (``kmc rates calibrate``).

A target table (TOML or JSON) names the KMC setting, the parameters to adjust
and the targets with units::

    [calibration]
    base_catalog = "default"        # catalog the parameters are applied to
    shape = [6, 6, 6]               # cell of every target run (one defect per cell)
    temperatures_K = [400, 500, 600, 700]
    replicas = 8
    events = 20000                  # KMC events per replica and temperature
    seed = 2026
    max_evaluations = 200           # KMC evaluations at most (the best point seen is kept)
    restarts = 3                    # fresh optimiser runs from the best point while the cost falls by > 1 %
    diff_step = 0.01                # eV, finite-difference step of barrier parameters (Jacobian)
    diff_step_ln = 0.1              # and of log prefactors: steps well above the KMC noise

    [[parameter]]
    kind = "E_KRA_shift"            # eV added to the KRA of the classes selected
    defect = "vacancy"              # vacancy | interstitial
    mover = "I"                     # optional: I | Br (default: both)
    bounds = [-0.3, 0.3]

    [[parameter]]
    kind = "ln_prefactor"           # prefactors x exp(value)
    defect = "vacancy"
    mover = "I"

    # kind = "E_KRA_bowing": eV added at a half-iodide hop shell, b * n_I (12 - n_I) / 36 for a shell
    # with n_I of 12 sites iodide: zero in both pure crystals, it moves mixed-cell barriers only

    [[target]]
    id = "V_I+"
    defect = "vacancy"
    structure = "pure"              # pure (with species) | random (with x_I)
    species = "I"
    tracer = "all"                  # Eq. 1 over all halides, or I | Br
    Ea = {value = 0.16, err = 0.03, unit = "eV"}
    D0 = {value = 0.24, err = 0.19, unit = "1e-3 cm^2/s"}
    D_ref = {value = 4.9, err = 1.0, unit = "1e-7 cm^2/s", T_K = 300}

Observables: per target and temperature the Eq. 1 diffusion coefficient per
defect of the tracer (``msd(t_end) / 6 t_end`` summed over the tracer atoms,
one defect per cell, the form of the paper's Tables 2-3), mean over replicas,
then a weighted Arrhenius fit giving ``Ea``, ``D0`` and ``D_ref``.

Common random numbers: every evaluation uses the same configurations, defect
sites and random streams and stops after the same number of events, so that a
uniform shift of the barriers of a class family rescales time only and the
objective is smooth where the event order does not change. The optimiser is
``scipy.optimize.least_squares`` on the residuals ``(model - target) / error``
(``ln`` of the ratio for diffusion coefficients, relative errors); parameter
errors come from the Jacobian at the optimum with target and KMC errors
combined. The residual of every target, met or not, goes into the
calibrated catalog's provenance: a fit that leaves targets outside their
errors is reported as such, never claimed.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from common.atomic import read_text_file
from common.provenance import file_sha256, provenance
from common.stats import fit_arrhenius, half_lattice_sq_to_cm2
from workflows.calibrate_checks import CheckError, check_rows, format_checks, load_checks

DEFECTS = ("vacancy", "interstitial")
MOVERS = ("I", "Br")
PARAMETER_KINDS = {"E_KRA_shift": "eV", "ln_prefactor": "1", "E_KRA_bowing": "eV"}
STRUCTURES = ("pure", "random")
TRACERS = ("all", "I", "Br")
QUANTITIES = ("Ea", "D0", "D_ref")
ENERGY_UNITS = {"eV": 1.0, "meV": 1e-3}
D_UNITS = {"cm^2/s": 1.0, "1e-3 cm^2/s": 1e-3, "1e-7 cm^2/s": 1e-7, "m^2/s": 1e4, "A^2/ps": 1e-4}
CALIBRATION_KEYS = {"base_catalog", "shape", "temperatures_K", "replicas", "events", "seed", "name", "diff_step",
                    "diff_step_ln", "max_evaluations", "restarts"}


class CalibrationError(ValueError):
    """A target table that cannot be used: the message names the field."""


@dataclasses.dataclass(frozen=True)
class Parameter:
    kind: str
    defect: str
    mover: str | None
    bounds: tuple[float, float]
    start: float = 0.0

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.defect}" + (f":{self.mover}" if self.mover else "")

    def classes(self) -> np.ndarray:
        from lattice.environment import N_CLASSES, decode_class  # noqa: PLC0415

        return np.array([c for c in range(N_CLASSES) if decode_class(c)["defect"] == self.defect
                         and (self.mover is None or decode_class(c)["mover"] == self.mover)], dtype=np.int64)


@dataclasses.dataclass(frozen=True)
class Target:
    id: str
    defect: str
    structure: str
    species: str | None
    x_I: float | None
    tracer: str
    values: dict  # quantity -> {"value": SI-ish (eV or cm^2/s), "err": ..., "T_K": ...}


@dataclasses.dataclass(frozen=True)
class CalibrationSpec:
    base_catalog: str
    shape: tuple[int, int, int]
    temperatures_K: tuple[float, ...]
    replicas: int
    events: int
    seed: int
    name: str
    diff_step: float  # absolute finite-difference step of the barrier shifts (eV)
    diff_step_ln: float  # and of the ln prefactors
    max_evaluations: int
    restarts: int  # fresh least_squares runs from the best point while the cost still falls by > 1 %
    checks: tuple  # workflows.calibrate_checks.Check: measured and reported, not fitted
    parameters: tuple[Parameter, ...]
    targets: tuple[Target, ...]
    source: str
    source_sha256: str


# --------------------------------------------------------------------------- reading the table
def _num(v, where: str, positive: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        raise CalibrationError(f"{where} must be a finite number, got {v!r}")
    if positive and float(v) <= 0:
        raise CalibrationError(f"{where} must be > 0, got {v!r}")
    return float(v)


def _choice(d: dict, key: str, valid, where: str, default=None, required: bool = True):
    if key not in d:
        if required and default is None:
            raise CalibrationError(f"{where}.{key} missing (one of {list(valid)})")
        return default
    if d[key] not in valid:
        raise CalibrationError(f"{where}.{key} = {d[key]!r} unknown; valid: {list(valid)}")
    return d[key]


def _only(d: dict, allowed, where: str) -> None:
    """Refuse keys of ``d`` outside ``allowed``, naming them."""
    bad = set(d) - set(allowed)
    if bad:
        raise CalibrationError(f"{where}: unknown key(s) {sorted(bad)}")


def _quantity(q: str, v, where: str) -> dict:
    w = f"{where}.{q}"
    if not isinstance(v, dict):
        raise CalibrationError(f"{w} must be a table {{value, err, unit}}")
    _only(v, ("value", "err", "unit", "T_K"), w)
    if "unit" not in v:
        raise CalibrationError(f"{w}.unit missing")
    if "err" not in v:
        raise CalibrationError(f"{w}.err missing: a target needs an error to be weighed")
    units = ENERGY_UNITS if q == "Ea" else D_UNITS
    if v["unit"] not in units:
        raise CalibrationError(f"{w}.unit = {v['unit']!r} is not a unit of "
                               f"{'an energy' if q == 'Ea' else 'a diffusion coefficient'}; valid: {list(units)}")
    f = units[v["unit"]]
    out = {"value": _num(v.get("value"), f"{w}.value", positive=q != "Ea") * f,
           "err": _num(v["err"], f"{w}.err", positive=True) * f, "unit_given": v["unit"]}
    if q == "D_ref":
        out["T_K"] = _num(v.get("T_K"), f"{w}.T_K", positive=True)
    elif "T_K" in v:
        raise CalibrationError(f"{w}.T_K applies to D_ref only")
    return out


def load_targets(path) -> CalibrationSpec:
    """Read and check a target table; every problem is a :class:`CalibrationError` naming the field."""
    p = Path(path)
    try:
        text = read_text_file(p, "target table")
    except ValueError as exc:
        raise CalibrationError(str(exc)) from None
    try:
        if p.suffix == ".json":
            data = json.loads(text)
        else:
            import tomllib  # noqa: PLC0415

            data = tomllib.loads(text)
    except (json.JSONDecodeError, ValueError) as exc:
        raise CalibrationError(f"{p}: cannot be parsed ({exc})") from None
    if not isinstance(data, dict):
        raise CalibrationError(f"{p}: not a table")
    unknown = set(data) - {"calibration", "parameter", "target", "check"}
    if unknown:
        raise CalibrationError(f"{p}: unknown section(s) {sorted(unknown)}")
    c = data.get("calibration", {})
    bad = set(c) - CALIBRATION_KEYS
    if bad:
        raise CalibrationError(f"calibration: unknown key(s) {sorted(bad)}; valid: {sorted(CALIBRATION_KEYS)}")
    shape = c.get("shape", [6, 6, 6])
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(s, int) and s >= 3 for s in shape)):
        raise CalibrationError(f"calibration.shape must be 3 integers >= 3, got {shape!r}")
    temps = c.get("temperatures_K", [400.0, 500.0, 600.0, 700.0])
    if not isinstance(temps, list) or len(temps) < 2:
        raise CalibrationError("calibration.temperatures_K must list two or more temperatures (Arrhenius fits)")
    temps = tuple(_num(t, "calibration.temperatures_K", positive=True) for t in temps)
    if len(set(temps)) != len(temps):
        raise CalibrationError(f"calibration.temperatures_K has duplicate temperatures: {list(temps)}")
    ints = {}
    for k, dflt, lo in (("replicas", 8, 2), ("events", 20000, 100), ("seed", 0, 0), ("max_evaluations", 200, 1),
                        ("restarts", 3, 0)):
        v = c.get(k, dflt)
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise CalibrationError(f"calibration.{k} must be an integer >= {lo}, got {v!r}")
        ints[k] = v
    params = []
    raw_p = data.get("parameter", [])
    if not isinstance(raw_p, list) or not raw_p:
        raise CalibrationError(f"{p}: no [[parameter]] to adjust")
    for i, d in enumerate(raw_p):
        w = f"parameter[{i}]"
        _only(d, ("kind", "defect", "mover", "bounds", "start"), w)
        kind = _choice(d, "kind", PARAMETER_KINDS, w)
        defect = _choice(d, "defect", DEFECTS, w)
        mover = _choice(d, "mover", MOVERS, w, required=False)
        bounds = d.get("bounds", [-5.0, 5.0] if kind == "ln_prefactor" else [-0.5, 0.5])
        if not (isinstance(bounds, list) and len(bounds) == 2):
            raise CalibrationError(f"{w}.bounds must be [low, high]")
        lo, hi = (_num(b, f"{w}.bounds") for b in bounds)
        start = _num(d.get("start", 0.0), f"{w}.start")
        if not lo < hi or not lo <= start <= hi:
            raise CalibrationError(f"{w}: need bounds low < high with start inside, got {bounds}, start {start}")
        par = Parameter(kind, defect, mover, (lo, hi), start)
        if any(q.label == par.label for q in params):
            raise CalibrationError(f"{w}: {par.label} given twice")
        params.append(par)
    targets = []
    raw_t = data.get("target", [])
    if not isinstance(raw_t, list) or not raw_t:
        raise CalibrationError(f"{p}: no [[target]]")
    for i, d in enumerate(raw_t):
        w = f"target[{i}]"
        _only(d, ("id", "defect", "structure", "species", "x_I", "tracer", *QUANTITIES), w)
        tid = d.get("id")
        if not isinstance(tid, str) or not tid:
            raise CalibrationError(f"{w}.id missing")
        w = f"target {tid!r}"
        if any(t.id == tid for t in targets):
            raise CalibrationError(f"{w}: id given twice")
        defect = _choice(d, "defect", DEFECTS, w)
        structure = _choice(d, "structure", STRUCTURES, w)
        species = x_I = None
        if structure == "pure":
            species = _choice(d, "species", MOVERS, w)
            if "x_I" in d:
                raise CalibrationError(f"{w}.x_I applies to structure 'random'")
        else:
            x_I = _num(d.get("x_I"), f"{w}.x_I")
            if not 0.0 < x_I < 1.0:
                raise CalibrationError(f"{w}.x_I must lie in (0, 1), got {x_I}")
            if "species" in d:
                raise CalibrationError(f"{w}.species applies to structure 'pure'")
        tracer = _choice(d, "tracer", TRACERS, w, default="all")
        if species is not None and tracer not in ("all", species):
            raise CalibrationError(f"{w}.tracer {tracer!r}: pure Cs Pb {species}3 has no {tracer}")
        vals = {q: _quantity(q, d[q], w) for q in QUANTITIES if q in d}
        if not vals:
            raise CalibrationError(f"{w}: no quantity to match (one or more of {list(QUANTITIES)})")
        targets.append(Target(tid, defect, structure, species, x_I, tracer, vals))
    n_res = sum(len(t.values) for t in targets)
    if n_res < len(params):
        raise CalibrationError(f"{len(params)} parameters but only {n_res} target values: underdetermined")
    used = {(t.defect, m) for t in targets for m in ((t.species,) if t.species else MOVERS)}
    mixed = {t.defect for t in targets if t.structure == "random"}
    for par in params:
        if par.kind == "E_KRA_bowing" and par.defect not in mixed:
            raise CalibrationError(f"parameter {par.label}: no random-mix {par.defect} target moves it "
                                   "(a bowing is zero in pure crystals)")
        if not any(par.defect == d and (par.mover is None or par.mover == m) for d, m in used):
            raise CalibrationError(f"parameter {par.label}: no target moves it (no {par.defect} target "
                                   f"with {par.mover or 'any'} movers)")
    try:
        checks = load_checks(data.get("check"), ints["seed"])
    except CheckError as exc:
        raise CalibrationError(str(exc)) from None
    return CalibrationSpec(
        base_catalog=str(c.get("base_catalog", "default")), shape=tuple(shape), temperatures_K=temps,
        replicas=ints["replicas"], events=ints["events"], seed=ints["seed"],
        name=str(c.get("name", f"calibrated-{p.stem}")),
        diff_step=_num(c.get("diff_step", 0.01), "calibration.diff_step", positive=True),
        diff_step_ln=_num(c.get("diff_step_ln", 0.1), "calibration.diff_step_ln", positive=True),
        max_evaluations=ints["max_evaluations"], restarts=ints["restarts"], checks=checks, parameters=tuple(params), targets=tuple(targets),
        source=str(p), source_sha256=file_sha256(p))


def resolve_base(spec: CalibrationSpec, relative_to: Path | None = None):
    from rates.catalog import load_catalog  # noqa: PLC0415

    b = spec.base_catalog
    if b != "default" and relative_to is not None and not Path(b).is_absolute():
        b = str((relative_to / b).resolve()) if (relative_to / b).exists() else b
    return load_catalog(b)


# --------------------------------------------------------------------------- the model
def apply_parameters(catalog, params, x) -> object:
    """A copy of ``catalog`` with the parameter values ``x`` applied (shifts and log factors)."""
    from lattice.environment import SHELL_SIZE, decode_class  # noqa: PLC0415

    E = catalog.E_KRA_eV.copy()
    nu = catalog.prefactor_Hz.copy()
    for par, v in zip(params, x):
        cls = par.classes()
        if par.kind == "E_KRA_shift":
            E[cls] = E[cls] + float(v)
        elif par.kind == "E_KRA_bowing":
            n_i = np.array([decode_class(c)["shell_nI"] for c in cls], dtype=np.float64)
            E[cls] = E[cls] + float(v) * n_i * (SHELL_SIZE - n_i) / (SHELL_SIZE / 2) ** 2
        else:
            nu[cls] = nu[cls] * math.exp(float(v))
    return dataclasses.replace(catalog, E_KRA_eV=E, prefactor_Hz=nu)


class Evaluator:
    """KMC observables of every target for parameter values, with common random numbers.

    Targets on the same cell (defect, structure, species or x_I) differ only in the tracer, so they share
    one set of KMC runs: cells, defect sites and streams are keyed by the cell's index, the same at every
    evaluation."""

    def __init__(self, spec: CalibrationSpec, base):
        from lattice import HalideSublattice, build_pure, build_random_mix, place_defects  # noqa: PLC0415

        self.spec, self.base = spec, base
        self.n_evaluations = 0
        self.cells = {}  # cell key -> (cell index, configuration, defect sets of the replicas)
        self.cell_of = {}  # target id -> cell key
        lat = HalideSublattice(spec.shape)
        for t in spec.targets:
            key = (t.defect, t.structure, t.species if t.structure == "pure" else round(float(t.x_I), 6))
            self.cell_of[t.id] = key
            if key in self.cells:
                continue
            ci = len(self.cells)
            if t.structure == "pure":
                cfg = build_pure(lat, t.species)
            else:
                cfg = build_random_mix(lat, t.x_I, seed=np.random.default_rng([spec.seed, ci, 1 << 20]))
            nv, ni = (1, 0) if t.defect == "vacancy" else (0, 1)
            reps = [place_defects(cfg, nv, ni, seed=np.random.default_rng([spec.seed, ci, r, 1 << 21]))
                    for r in range(spec.replicas)]
            self.cells[key] = (ci, cfg, reps)

    def cell_msd(self, catalog, key) -> list[tuple[float, np.ndarray, float]]:
        """Per temperature: (T, per-replica tracer MSD per halide species in (a/2)^2, shape (replicas, 2),
        per-replica simulated time in s)."""
        from kmc.simulation import Simulation  # noqa: PLC0415

        ci, cfg, reps = self.cells[key]
        out = []
        for T in self.spec.temperatures_K:
            msd, times = [], []
            for r, defects in enumerate(reps):
                seed = np.random.SeedSequence([self.spec.seed, ci, r, int(round(T * 1000))])
                sim = Simulation(cfg, defects, catalog, T, seed)
                sim.advance(math.inf, max_events=self.spec.events)
                msd.append(sim.state.msd.astype(np.float64).copy())
                times.append(sim.time_s)
            out.append((T, np.asarray(msd), np.asarray(times)))
        return out

    def D_from_msd(self, catalog, target: Target, runs) -> list[tuple[float, float, float]]:
        """(T, mean D, sem) of the target tracer's Eq. 1 D per defect over the replicas, cm^2/s."""
        from lattice.species import HALIDES  # noqa: PLC0415

        cfg = self.cells[self.cell_of[target.id]][1]
        fac = half_lattice_sq_to_cm2(catalog.lattice_constant(float(np.mean(cfg.occ == 0))))
        out = []
        for T, msd, times in runs:
            m = msd.sum(axis=1) if target.tracer == "all" else msd[:, HALIDES.index(target.tracer)]
            v = np.where(times > 0, m * fac / (6.0 * np.where(times > 0, times, 1.0)), np.nan)
            out.append((T, float(np.mean(v)), float(np.std(v, ddof=1) / math.sqrt(v.size))))
        return out

    def D_per_T(self, catalog, target: Target) -> list[tuple[float, float, float]]:
        """(T, mean D, sem) of one target, running its cell's KMC."""
        return self.D_from_msd(catalog, target, self.cell_msd(catalog, self.cell_of[target.id]))

    def observables(self, x) -> dict:
        """Per target: D(T) and the Arrhenius fit (Ea eV, D0 and D_ref cm^2/s with errors)."""
        self.n_evaluations += 1
        cat = apply_parameters(self.base, self.spec.parameters, x)
        res, runs = {}, {}
        for t in self.spec.targets:
            key = self.cell_of[t.id]
            if key not in runs:
                runs[key] = self.cell_msd(cat, key)
            d = self.D_from_msd(cat, t, runs[key])
            T, D, e = (np.array(c) for c in zip(*d))
            t_ref = t.values.get("D_ref", {}).get("T_K", 300.0)
            try:
                fit = fit_arrhenius(T, D, e, T_ref_K=t_ref)
            except ValueError as exc:
                raise CalibrationError(f"target {t.id!r}: {exc} (KMC gave D = {D.tolist()})") from None
            res[t.id] = {"D_per_T": [{"temperature_K": a, "D_cm2_s": b, "err_cm2_s": c} for a, b, c in d], **fit}
        return res


def residuals(spec: CalibrationSpec, obs: dict, with_model_error: bool = False) -> np.ndarray:
    """(model - target) / error per target value; ln ratios with relative errors for D0 and D_ref."""
    r = []
    for t in spec.targets:
        o = obs[t.id]
        for q, tv in t.values.items():
            if q == "Ea":
                err2 = tv["err"] ** 2 + (o["Ea_err_eV"] ** 2 if with_model_error else 0.0)
                r.append((o["Ea_eV"] - tv["value"]) / math.sqrt(err2))
            else:
                key, ekey = ("D0", "D0_err") if q == "D0" else ("D_ref", "D_ref_err")
                rel2 = (tv["err"] / tv["value"]) ** 2 + ((o[ekey] / o[key]) ** 2 if with_model_error else 0.0)
                r.append(math.log(o[key] / tv["value"]) / math.sqrt(rel2))
    return np.asarray(r, dtype=np.float64)


# --------------------------------------------------------------------------- the fit
class _BudgetReached(Exception):
    """The optimiser asked for more KMC evaluations than ``calibration.max_evaluations``."""


def calibrate(spec: CalibrationSpec, base, progress=None) -> dict:
    """Least-squares calibration; returns the values, errors, residuals and the calibrated catalog."""
    from scipy.optimize import least_squares  # noqa: PLC0415

    ev = Evaluator(spec, base)
    cache: dict[tuple, dict] = {}

    best_seen = {"cost": math.inf, "x": None}

    def obs_at(x, budget: bool = True):
        k = tuple(np.round(np.asarray(x, dtype=np.float64), 12))
        if k not in cache:
            if budget and ev.n_evaluations >= spec.max_evaluations:
                raise _BudgetReached
            cache[k] = ev.observables(x)
            cost = float(np.sum(residuals(spec, cache[k]) ** 2))
            if cost < best_seen["cost"]:
                best_seen.update(cost=cost, x=np.array(x, dtype=np.float64))
            if progress is not None:
                progress(ev.n_evaluations, x)
        return cache[k]

    x0 = np.array([p.start for p in spec.parameters])
    lo = np.array([p.bounds[0] for p in spec.parameters])
    hi = np.array([p.bounds[1] for p in spec.parameters])
    steps = np.array([spec.diff_step_ln if p.kind == "ln_prefactor" else spec.diff_step for p in spec.parameters])

    def jac(x, with_model_error=False, budget=True):
        # forward differences with absolute steps (a step inside the bounds), on the cached evaluations:
        # steps large enough that the event order of the mixed cells changing does not dominate the slope
        r0 = residuals(spec, obs_at(x, budget), with_model_error)
        J = np.empty((r0.size, x.size))
        for j in range(x.size):
            xp = np.array(x, dtype=np.float64)
            xp[j] = xp[j] + steps[j] if xp[j] + steps[j] <= hi[j] else xp[j] - steps[j]
            J[:, j] = (residuals(spec, obs_at(xp, budget), with_model_error) - r0) / (xp[j] - x[j])
        return J

    start_obs = obs_at(x0)
    # KMC noise left by the common random numbers (a changed event order) can shrink the trust region
    # far from the optimum; a fresh run from the best point restores it. Restarts stop when one gains
    # less than 1 % in cost.
    x_best, status, message, nfev, runs = x0, 0, "", 0, []
    try:
        for _ in range(1 + spec.restarts):
            sol = least_squares(lambda x: residuals(spec, obs_at(x)), x_best, jac=jac, bounds=(lo, hi),
                                method="trf", x_scale=steps * 10, xtol=1e-3, ftol=1e-4)
            prev = runs[-1]["cost"] if runs else float(np.sum(residuals(spec, start_obs) ** 2))
            cost = float(np.sum(sol.fun ** 2))
            runs.append({"cost": cost, "nfev": int(sol.nfev), "status": int(sol.status)})
            if cost < prev:
                x_best = sol.x
            status, message, nfev = int(sol.status), str(sol.message), nfev + int(sol.nfev)
            if cost > prev * 0.99:
                break
    except _BudgetReached:
        x_best, status, nfev = best_seen["x"], -2, ev.n_evaluations
        message = f"stopped at the evaluation budget ({spec.max_evaluations}); the best point seen is kept"
    best = obs_at(x_best, budget=False)
    # errors: Jacobian of the residuals with target and KMC errors combined, at the optimum
    r0 = residuals(spec, best, with_model_error=True)
    J = jac(x_best, with_model_error=True, budget=False)
    try:
        cov = np.linalg.inv(J.T @ J)
        err = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    except np.linalg.LinAlgError:
        cov = np.full((x_best.size, x_best.size), np.nan)
        err = np.full(x_best.size, np.nan)
    at_bound = [bool(np.isclose(v, a) or np.isclose(v, b)) for v, a, b in zip(x_best, lo, hi)]
    rows = target_rows(spec, best)
    n_res = r0.size
    chi2 = float(np.sum(r0 ** 2))
    cat = apply_parameters(base, spec.parameters, x_best)
    result = {
        "parameters": [{"label": p.label, "kind": p.kind, "unit": PARAMETER_KINDS[p.kind], "value": float(v),
                        "err": float(e), "start": p.start, "bounds": list(p.bounds), "at_bound": ab,
                        "classes": len(p.classes())}
                       for p, v, e, ab in zip(spec.parameters, x_best, err, at_bound)],
        "covariance": cov.tolist(), "targets": rows, "start_targets": target_rows(spec, start_obs),
        "chi2": chi2, "dof": n_res - x_best.size, "n_evaluations": ev.n_evaluations,
        "optimizer": {"method": "scipy.optimize.least_squares trf (forward-difference Jacobian, absolute steps)",
                      "status": status, "converged": status > 0, "message": message, "nfev": nfev,
                      "runs": runs},
        "all_within_error": all(r["within_error"] for r in rows),
    }
    prov = dict(cat.provenance)
    prov["calibration"] = {
        "targets_file": spec.source, "targets_sha256": spec.source_sha256, "base_catalog": base.name,
        "base_catalog_sha256": base.sha256(),
        "kmc": {"shape": list(spec.shape), "temperatures_K": list(spec.temperatures_K), "replicas": spec.replicas,
                "events": spec.events, "seed": spec.seed,
                "estimator": "Eq. 1 per defect, msd(t_end) / 6 t_end, mean over replicas; weighted Arrhenius fit",
                "common_random_numbers": True},
        **{k: v for k, v in result.items() if k != "start_targets"}, "software": provenance()}
    result["catalog"] = dataclasses.replace(cat, name=spec.name, provenance=prov,
                                            description=f"{base.description} Calibrated with kmc rates calibrate "
                                                        f"to {Path(spec.source).name}.".strip())
    return result


def target_rows(spec: CalibrationSpec, obs: dict) -> list[dict]:
    """Model against target per target value, with the deviation in combined errors."""
    rows = []
    for t in spec.targets:
        o = obs[t.id]
        for q, tv in t.values.items():
            if q == "Ea":
                m, me = o["Ea_eV"], o["Ea_err_eV"]
                z = (m - tv["value"]) / math.hypot(tv["err"], me if math.isfinite(me) else 0.0)
            else:
                key = "D0" if q == "D0" else "D_ref"
                m, me = o[key], o[f"{key}_err"]
                z = math.log(m / tv["value"]) / math.hypot(tv["err"] / tv["value"],
                                                           me / m if math.isfinite(me) else 0.0)
            rows.append({"target": t.id, "quantity": q, "unit": "eV" if q == "Ea" else "cm^2/s",
                         "target_value": tv["value"], "target_err": tv["err"], "model": float(m),
                         "model_err": float(me), "z": float(z), "within_error": bool(abs(z) <= 1.0),
                         **({"T_K": tv["T_K"]} if "T_K" in tv else {})})
    return rows


def format_report(result: dict, spec: CalibrationSpec) -> str:
    """Markdown: parameters, and every target against the model before and after."""
    L = [f"# Calibration `{spec.name}`", "",
         f"Targets `{Path(spec.source).name}` (sha256 {spec.source_sha256[:12]}); KMC on {spec.shape[0]}x"
         f"{spec.shape[1]}x{spec.shape[2]} cells, one defect, T = {', '.join(f'{t:g}' for t in spec.temperatures_K)}"
         f" K, {spec.replicas} replicas x {spec.events} events, seed {spec.seed}; "
         f"{result['n_evaluations']} KMC evaluations; chi2 = {result['chi2']:.1f} for {result['dof']} dof.", "",
         "| parameter | value | error | bounds | at bound |", "|---|---|---|---|---|"]
    for p in result["parameters"]:
        L.append(f"| {p['label']} ({p['unit']}) | {p['value']:+.4f} | {p['err']:.4f} | {p['bounds']} | "
                 f"{'yes' if p['at_bound'] else ''} |")
    L += ["", "| target | quantity | target | start | calibrated | z | within error |", "|---|---|---|---|---|---|---|"]
    for r, s in zip(result["targets"], result["start_targets"]):
        f = ".3f" if r["quantity"] == "Ea" else ".3g"
        q = r["quantity"] + (f" ({r['T_K']:g} K)" if "T_K" in r else "")
        L.append(f"| {r['target']} | {q} ({r['unit']}) | {r['target_value']:{f}} +- {r['target_err']:{f}} | "
                 f"{s['model']:{f}} | {r['model']:{f}} +- {r['model_err']:{f}} | {r['z']:+.1f} | "
                 f"{'yes' if r['within_error'] else 'NO'} |")
    dEa = [abs(r["model"] - r["target_value"]) for r in result["targets"] if r["quantity"] == "Ea"]
    if dEa:
        L += ["", f"Largest |E_a(KMC) - E_a(target)|: {max(dEa):.3f} eV; "
                  f"{sum(d <= 0.02 for d in dEa)} of {len(dEa)} rows within 0.02 eV."]
    n_out = sum(not r["within_error"] for r in result["targets"])
    L += ["", "All targets within their errors." if n_out == 0 else
          f"{n_out} of {len(result['targets'])} target values outside their errors (|z| > 1): not reached."]
    return "\n".join(L) + "\n"


# --------------------------------------------------------------------------- CLI
def add_calibrate_parser(rsub) -> None:
    p = rsub.add_parser("calibrate", help="adjust catalog parameters so that KMC D(T) matches a target table "
                                          "(Arrhenius E_a, D0, D(T_ref)); residuals and errors in the provenance",
                        description=__doc__.split("\n\n")[0])
    p.add_argument("targets", help="target table (TOML or JSON; see workflows.calibrate)")
    p.add_argument("--out", "-o", required=True, help="calibrated catalog to write")
    p.add_argument("--report", help="directory for calibration.md and calibration.json (default: beside --out)")
    p.add_argument("--force", action="store_true", help="overwrite --out")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    p.set_defaults(handler=cmd_calibrate)


def cmd_calibrate(args) -> int:
    import sys  # noqa: PLC0415

    from common.atomic import jsonable, write_json_atomic, write_text_atomic  # noqa: PLC0415

    out = Path(args.out)
    if out.exists() and not args.force:
        raise FileExistsError(f"{out} exists (use --force to overwrite)")
    spec = load_targets(args.targets)  # every check before any KMC runs
    base = resolve_base(spec, Path(args.targets).parent)
    rep_dir = Path(args.report) if args.report else out.parent

    def progress(n, x):
        if not args.quiet:
            vals = ", ".join(f"{p.label}={v:+.4f}" for p, v in zip(spec.parameters, x))
            print(f"evaluation {n}: {vals}", file=sys.stderr, flush=True)

    res = calibrate(spec, base, progress=progress)
    cat = res.pop("catalog")
    cat.save(out)
    checks = []
    if spec.checks:
        if not args.quiet:
            print(f"checks: {len(spec.checks)} KMC measurements at the start and the calibrated catalog",
                  file=sys.stderr, flush=True)
        import tempfile  # noqa: PLC0415

        with tempfile.TemporaryDirectory(prefix="kmc-calibrate-") as d:
            start = Path(d) / "start.json"
            base.save(start)
            checks = check_rows(spec.checks, {"start": str(start), "calibrated": str(out)})
    rep_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(rep_dir / "calibration.json", jsonable({**res, "checks": checks, "catalog": str(out),
                                                              "catalog_sha256": cat.sha256(),
                                                              "provenance": provenance()}))
    md = format_report(res, spec) + format_checks(checks)
    write_text_atomic(rep_dir / "calibration.md", md)
    print(md)
    print(f"wrote {out}")
    return 0


__all__ = ["add_calibrate_parser", "cmd_calibrate", "CalibrationError", "CalibrationSpec", "Evaluator", "Parameter", "Target", "apply_parameters",
           "calibrate", "format_report", "load_targets", "residuals", "target_rows"]
