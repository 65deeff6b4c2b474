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

    [[parameter]]                   # a direction in the defect terms of the cluster expansion
    kind = "ce_defect"              # (needs calibration.ce_cutoffs_a, e.g. [1.01, 1.01, 1.01])
    defect = "vacancy"
    name = "interface asymmetry"
    terms = {1 = -1.0, 10 = 1.0}    # local orbit (as `kmc rates show` numbers them) = weight: K_j += w v
    bounds = [-0.05, 0.05]

    [[target]]
    id = "V_I+"
    defect = "vacancy"
    structure = "pure"              # pure (with species) | random (with x_I)
    species = "I"
    tracer = "all"                  # Eq. 1 over all halides, or I | Br
    Ea = {value = 0.16, err = 0.03, unit = "eV"}
    D0 = {value = 0.24, err = 0.19, unit = "1e-3 cm^2/s"}
    D_ref = {value = 4.9, err = 1.0, unit = "1e-7 cm^2/s", T_K = 300}

``[[check]]`` entries with ``fit = true`` (interface barriers, mixing counts;
:mod:`workflows.calibrate_checks`) are residuals of the fit like the targets.

Stages: ``[[stage]]`` tables (``parameters`` = labels such as
``"E_KRA_shift:vacancy:I"`` or ``"ce_defect:vacancy:interface asymmetry"``,
``targets`` = target and fitted check ids, optional ``max_evaluations``) are
fitted one after another, each from the values the previous ones left, so
that cheap observables fix most parameters before the expensive ones (cluster
expansion in the loop, heterojunctions) move a few. Without stages there is
one with everything. Parameter errors come from each stage's Jacobian (the
covariance is block-diagonal by stage); every target and fitted check is
evaluated again at the final values.

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
from workflows.calibrate_checks import CheckError, check_rows, format_checks, load_checks, mixing_order

DEFECTS = ("vacancy", "interstitial")
MOVERS = ("I", "Br")
PARAMETER_KINDS = {"E_KRA_shift": "eV", "ln_prefactor": "1", "E_KRA_bowing": "eV", "ce_defect": "eV"}
STRUCTURES = ("pure", "random")
TRACERS = ("all", "I", "Br")
QUANTITIES = ("Ea", "D0", "D_ref")
ENERGY_UNITS = {"eV": 1.0, "meV": 1e-3}
D_UNITS = {"cm^2/s": 1.0, "1e-3 cm^2/s": 1e-3, "1e-7 cm^2/s": 1e-7, "m^2/s": 1e4, "A^2/ps": 1e-4}
CALIBRATION_KEYS = {"base_catalog", "shape", "temperatures_K", "replicas", "events", "seed", "name", "diff_step",
                    "diff_step_ln", "max_evaluations", "restarts", "ce_cutoffs_a"}
STAGE_KEYS = {"name", "parameters", "targets", "max_evaluations"}


class CalibrationError(ValueError):
    """A target table that cannot be used: the message names the field."""


@dataclasses.dataclass(frozen=True)
class Parameter:
    kind: str
    defect: str
    mover: str | None
    bounds: tuple[float, float]
    start: float = 0.0
    name: str | None = None  # ce_defect: the direction's name
    terms: tuple = ()  # ce_defect: ((local orbit, weight), ...)
    cutoffs_a: tuple | None = None  # ce_defect: cluster space of the terms

    @property
    def label(self) -> str:
        if self.kind == "ce_defect":
            return f"ce_defect:{self.defect}:{self.name}"
        return f"{self.kind}:{self.defect}" + (f":{self.mover}" if self.mover else "")

    def classes(self) -> np.ndarray:
        """Hop classes whose barrier the parameter changes (a ce_defect term: every class of its defect)."""
        from lattice.environment import N_CLASSES, decode_class  # noqa: PLC0415

        return np.array([c for c in range(N_CLASSES) if decode_class(c)["defect"] == self.defect
                         and (self.mover is None or decode_class(c)["mover"] == self.mover)], dtype=np.int64)


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    parameters: tuple[int, ...]  # indices into CalibrationSpec.parameters
    targets: tuple[str, ...]  # target ids
    checks: tuple[str, ...]  # fitted check ids
    max_evaluations: int


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
    checks: tuple  # workflows.calibrate_checks.Check: measured and reported; fitted where check.fit
    parameters: tuple[Parameter, ...]
    targets: tuple[Target, ...]
    source: str
    source_sha256: str
    stages: tuple = ()  # Stage, fitted one after another
    ce_cutoffs_a: tuple | None = None

    @property
    def fitted_checks(self) -> tuple:
        return tuple(c for c in self.checks if c.fit)


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
    unknown = set(data) - {"calibration", "parameter", "target", "check", "stage"}
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
    ce_cut = None
    if "ce_cutoffs_a" in c:
        from lattice.cluster_expansion import ClusterExpansionError, _check_cutoffs, local_orbits_of  # noqa: PLC0415

        try:
            ce_cut = _check_cutoffs(c["ce_cutoffs_a"])
            n_local = len(local_orbits_of(ce_cut))
        except (ClusterExpansionError, TypeError, ValueError) as exc:
            raise CalibrationError(f"calibration.ce_cutoffs_a: {exc}") from None
    params = []
    raw_p = data.get("parameter", [])
    if not isinstance(raw_p, list) or not raw_p:
        raise CalibrationError(f"{p}: no [[parameter]] to adjust")
    for i, d in enumerate(raw_p):
        w = f"parameter[{i}]"
        _only(d, ("kind", "defect", "mover", "bounds", "start", "name", "terms"), w)
        kind = _choice(d, "kind", PARAMETER_KINDS, w)
        defect = _choice(d, "defect", DEFECTS, w)
        mover = _choice(d, "mover", MOVERS, w, required=False)
        name, terms = None, ()
        if kind == "ce_defect":
            if mover is not None:
                raise CalibrationError(f"{w}.mover does not apply to kind 'ce_defect' (a defect energy term)")
            if ce_cut is None:
                raise CalibrationError(f"{w}: kind 'ce_defect' needs calibration.ce_cutoffs_a (the cluster space)")
            name = d.get("name")
            if not isinstance(name, str) or not name:
                raise CalibrationError(f"{w}.name missing (kind 'ce_defect' names its direction)")
            raw_terms = d.get("terms")
            if not isinstance(raw_terms, dict) or not raw_terms:
                raise CalibrationError(f"{w}.terms must be a table {{local orbit = weight}}")
            tl = []
            for k, wt in raw_terms.items():
                try:
                    j = int(k)
                except ValueError:
                    raise CalibrationError(f"{w}.terms: key {k!r} is not a local orbit number") from None
                if not 0 <= j < n_local:
                    raise CalibrationError(f"{w}.terms: local orbit {j} does not exist (cutoffs "
                                           f"{list(ce_cut)} have {n_local}: 0-{n_local - 1})")
                tl.append((j, _num(wt, f"{w}.terms.{k}")))
            terms = tuple(sorted(tl))
        elif "name" in d or "terms" in d:
            raise CalibrationError(f"{w}: name and terms apply to kind 'ce_defect' only")
        bounds = d.get("bounds", [-5.0, 5.0] if kind == "ln_prefactor" else
                       [-0.2, 0.2] if kind == "ce_defect" else [-0.5, 0.5])
        if not (isinstance(bounds, list) and len(bounds) == 2):
            raise CalibrationError(f"{w}.bounds must be [low, high]")
        lo, hi = (_num(b, f"{w}.bounds") for b in bounds)
        start = _num(d.get("start", 0.0), f"{w}.start")
        if not lo < hi or not lo <= start <= hi:
            raise CalibrationError(f"{w}: need bounds low < high with start inside, got {bounds}, start {start}")
        par = Parameter(kind, defect, mover, (lo, hi), start, name, terms, ce_cut if kind == "ce_defect" else None)
        if any(q.label == par.label for q in params):
            raise CalibrationError(f"{w}: {par.label} given twice")
        params.append(par)
    targets = []
    raw_t = data.get("target", [])
    raw_c = data.get("check") or []
    if not isinstance(raw_t, list) or not (raw_t or any(isinstance(ch, dict) and ch.get("fit", False) is not False
                                                        for ch in raw_c if isinstance(raw_c, list))):
        raise CalibrationError(f"{p}: no [[target]] (and no [[check]] with fit = true)")
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
    try:
        checks = load_checks(data.get("check"), ints["seed"])
    except CheckError as exc:
        raise CalibrationError(str(exc)) from None
    fitted = [ch for ch in checks if ch.fit]
    clash = {ch.id for ch in checks} & {t.id for t in targets}
    if clash:
        raise CalibrationError(f"check id(s) {sorted(clash)} are also target ids")
    n_res = sum(len(t.values) for t in targets) + len(fitted)
    if n_res < len(params):
        raise CalibrationError(f"{len(params)} parameters but only {n_res} target values: underdetermined")
    used = {(t.defect, m) for t in targets for m in ((t.species,) if t.species else MOVERS)}
    mixed = {t.defect for t in targets if t.structure == "random"}
    for par in params:
        if par.kind == "ce_defect":
            if par.defect not in mixed and not any(ch.defect == par.defect for ch in fitted):
                raise CalibrationError(f"parameter {par.label}: no random-mix {par.defect} target or fitted "
                                       f"{par.defect} check moves it (a defect energy term is the same on every "
                                       "site of a pure crystal)")
            continue
        if par.kind == "E_KRA_bowing" and par.defect not in mixed:
            raise CalibrationError(f"parameter {par.label}: no random-mix {par.defect} target moves it "
                                   "(a bowing is zero in pure crystals)")
        if not any(par.defect == d and (par.mover is None or par.mover == m) for d, m in used):
            raise CalibrationError(f"parameter {par.label}: no target moves it (no {par.defect} target "
                                   f"with {par.mover or 'any'} movers)")
    stages = _stages(data.get("stage"), params, targets, checks, ints["max_evaluations"])
    return CalibrationSpec(
        base_catalog=str(c.get("base_catalog", "default")), shape=tuple(shape), temperatures_K=temps,
        replicas=ints["replicas"], events=ints["events"], seed=ints["seed"],
        name=str(c.get("name", f"calibrated-{p.stem}")),
        diff_step=_num(c.get("diff_step", 0.01), "calibration.diff_step", positive=True),
        diff_step_ln=_num(c.get("diff_step_ln", 0.1), "calibration.diff_step_ln", positive=True),
        max_evaluations=ints["max_evaluations"], restarts=ints["restarts"], checks=checks, parameters=tuple(params), targets=tuple(targets),
        source=str(p), source_sha256=file_sha256(p), stages=stages, ce_cutoffs_a=ce_cut)


def _stages(raw, params, targets, checks, max_eval) -> tuple[Stage, ...]:
    """``[[stage]]`` tables, or one stage with every parameter, target and fitted check."""
    all_t = tuple(t.id for t in targets)
    all_c = tuple(ch.id for ch in checks if ch.fit)
    if raw is None:
        return (Stage("all", tuple(range(len(params))), all_t, all_c, max_eval),)
    if not isinstance(raw, list) or not raw:
        raise CalibrationError("stage must be a list of tables ([[stage]])")
    labels = [q.label for q in params]
    n_values = {t.id: len(t.values) for t in targets}
    by_check = {ch.id: ch for ch in checks}
    out, seen = [], set()
    for i, d in enumerate(raw):
        w = f"stage[{i}]"
        if not isinstance(d, dict):
            raise CalibrationError(f"{w} must be a table")
        _only(d, STAGE_KEYS, w)
        name = d.get("name", str(i + 1))
        if not isinstance(name, str) or not name:
            raise CalibrationError(f"{w}.name must be a non-empty string")
        w = f"stage {name!r}"
        pl = d.get("parameters")
        if not isinstance(pl, list) or not pl or not all(isinstance(x, str) for x in pl):
            raise CalibrationError(f"{w}.parameters must list parameter labels, e.g. {labels[:2]}")
        idx = []
        for lab in pl:
            if lab not in labels:
                raise CalibrationError(f"{w}.parameters: {lab!r} is no parameter; the table has {labels}")
            if labels.index(lab) in idx:
                raise CalibrationError(f"{w}.parameters: {lab!r} given twice")
            idx.append(labels.index(lab))
        tl = d.get("targets", list(all_t + all_c))
        if not isinstance(tl, list) or not tl or not all(isinstance(x, str) for x in tl):
            raise CalibrationError(f"{w}.targets must list target or fitted check ids")
        ts, cs = [], []
        for tid in tl:
            if tid in n_values:
                ts.append(tid)
            elif tid in by_check:
                if not by_check[tid].fit:
                    raise CalibrationError(f"{w}.targets: check {tid!r} is not fitted (set fit = true)")
                cs.append(tid)
            else:
                raise CalibrationError(f"{w}.targets: {tid!r} is no target or check id")
        if len(set(tl)) != len(tl):
            raise CalibrationError(f"{w}.targets lists an id twice")
        n_res = sum(n_values[t] for t in ts) + len(cs)
        if n_res < len(idx):
            raise CalibrationError(f"{w}: {len(idx)} parameters but {n_res} target values: underdetermined")
        me = d.get("max_evaluations", max_eval)
        if isinstance(me, bool) or not isinstance(me, int) or me < 1:
            raise CalibrationError(f"{w}.max_evaluations must be an integer >= 1, got {me!r}")
        seen.update(idx)
        out.append(Stage(name, tuple(idx), tuple(ts), tuple(cs), me))
    missing = [labels[j] for j in range(len(params)) if j not in seen]
    if missing:
        raise CalibrationError(f"parameter(s) {missing} are in no [[stage]]: they would never be adjusted")
    fitted_unused = [c for c in all_c if not any(c in st.checks for st in out)]
    if fitted_unused:
        raise CalibrationError(f"fitted check(s) {fitted_unused} are in no [[stage]]")
    return tuple(out)


def resolve_base(spec: CalibrationSpec, relative_to: Path | None = None):
    from rates.catalog import load_catalog  # noqa: PLC0415

    b = spec.base_catalog
    if b != "default" and relative_to is not None and not Path(b).is_absolute():
        b = str((relative_to / b).resolve()) if (relative_to / b).exists() else b
    return load_catalog(b)


# --------------------------------------------------------------------------- the model
def apply_parameters(catalog, params, x) -> object:
    """A copy of ``catalog`` with the parameter values ``x`` applied (shifts, log factors, bowings and cluster-
    expansion defect terms; a catalog without a cluster expansion gets one with zero host terms)."""
    import copy  # noqa: PLC0415

    from lattice.cluster_expansion import ClusterExpansion  # noqa: PLC0415
    from lattice.environment import SHELL_SIZE, decode_class  # noqa: PLC0415

    E = catalog.E_KRA_eV.copy()
    nu = catalog.prefactor_Hz.copy()
    ce = catalog.cluster_expansion
    for par, v in zip(params, x):
        if par.kind == "ce_defect":
            if ce is catalog.cluster_expansion:
                ce = copy.deepcopy(ce) if ce is not None else ClusterExpansion.zeros(par.cutoffs_a)
            if tuple(ce.cutoffs_a) != tuple(par.cutoffs_a):
                raise CalibrationError(f"parameter {par.label}: the base catalog's cluster expansion has cutoffs "
                                       f"{list(ce.cutoffs_a)}, calibration.ce_cutoffs_a {list(par.cutoffs_a)}")
            for j, wt in par.terms:
                ce.defect_eV[par.defect][j] += wt * float(v)
            continue
        cls = par.classes()
        if par.kind == "E_KRA_shift":
            E[cls] = E[cls] + float(v)
        elif par.kind == "E_KRA_bowing":
            n_i = np.array([decode_class(c)["shell_nI"] for c in cls], dtype=np.float64)
            E[cls] = E[cls] + float(v) * n_i * (SHELL_SIZE - n_i) / (SHELL_SIZE / 2) ** 2
        else:
            nu[cls] = nu[cls] * math.exp(float(v))
    return dataclasses.replace(catalog, E_KRA_eV=E, prefactor_Hz=nu, cluster_expansion=ce)


class Evaluator:
    """KMC observables of every target for parameter values, with common random numbers.

    Targets on the same cell (defect, structure, species or x_I) differ only in the tracer, so they share
    one set of KMC runs: cells, defect sites and streams are keyed by the cell's index, the same at every
    evaluation. Runs are cached per parameter point and cell (and check), so stages and the final
    evaluation reuse them."""

    def __init__(self, spec: CalibrationSpec, base):
        from lattice import HalideSublattice, build_pure, build_random_mix, place_defects  # noqa: PLC0415

        self.spec, self.base = spec, base
        self.n_evaluations = 0
        self.cells = {}  # cell key -> (cell index, configuration, defect sets of the replicas)
        self.cell_of = {}  # target id -> cell key
        self._runs: dict = {}  # (point, cell key or check id) -> KMC result
        self._tmp = None
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

    def _check_value(self, cat, check) -> dict:
        import tempfile  # noqa: PLC0415

        from workflows.calibrate_checks import run_check  # noqa: PLC0415

        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="kmc-calibrate-")
        path = Path(self._tmp.name) / "catalog.json"
        cat.save(path)
        return run_check(check, str(path))

    def is_cached(self, x, target_ids=None, check_ids=None) -> bool:
        pt = tuple(np.round(np.asarray(x, dtype=np.float64), 12))
        ts = self.spec.targets if target_ids is None else [t for t in self.spec.targets if t.id in target_ids]
        cs = self.spec.fitted_checks if check_ids is None else [c for c in self.spec.checks if c.id in check_ids]
        return all((pt, self.cell_of[t.id]) in self._runs for t in ts) and all((pt, c.id) in self._runs for c in cs)

    def observables(self, x, target_ids=None, check_ids=None) -> dict:
        """Per target: D(T) and the Arrhenius fit (Ea eV, D0 and D_ref cm^2/s with errors); per fitted check
        (all by default, or those named): its value and error. Counts one evaluation when any KMC runs."""
        pt = tuple(np.round(np.asarray(x, dtype=np.float64), 12))
        ts = self.spec.targets if target_ids is None else [t for t in self.spec.targets if t.id in target_ids]
        cs = self.spec.fitted_checks if check_ids is None else [c for c in self.spec.checks if c.id in check_ids]
        if not self.is_cached(x, [t.id for t in ts], [c.id for c in cs]):
            self.n_evaluations += 1
        cat = apply_parameters(self.base, self.spec.parameters, x)
        res = {}
        for t in ts:
            key = (pt, self.cell_of[t.id])
            if key not in self._runs:
                self._runs[key] = self.cell_msd(cat, self.cell_of[t.id])
            d = self.D_from_msd(cat, t, self._runs[key])
            T, D, e = (np.array(c) for c in zip(*d))
            t_ref = t.values.get("D_ref", {}).get("T_K", 300.0)
            try:
                fit = fit_arrhenius(T, D, e, T_ref_K=t_ref)
            except ValueError as exc:
                raise CalibrationError(f"target {t.id!r}: {exc} (KMC gave D = {D.tolist()})") from None
            res[t.id] = {"D_per_T": [{"temperature_K": a, "D_cm2_s": b, "err_cm2_s": c} for a, b, c in d], **fit}
        for c in cs:
            key = (pt, c.id)
            if key not in self._runs:
                self._runs[key] = self._check_value(cat, c)
            res[c.id] = self._runs[key]
        return res


def residuals(spec: CalibrationSpec, obs: dict, with_model_error: bool = False, target_ids=None,
              check_ids=None) -> np.ndarray:
    """(model - target) / error per target value (all, or those named) and fitted check; ln ratios with
    relative errors for D0 and D_ref."""
    r = []
    for t in spec.targets:
        if target_ids is not None and t.id not in target_ids:
            continue
        o = obs[t.id]
        for q, tv in t.values.items():
            if q == "Ea":
                err2 = tv["err"] ** 2 + (o["Ea_err_eV"] ** 2 if with_model_error else 0.0)
                r.append((o["Ea_eV"] - tv["value"]) / math.sqrt(err2))
            else:
                key, ekey = ("D0", "D0_err") if q == "D0" else ("D_ref", "D_ref_err")
                rel2 = (tv["err"] / tv["value"]) ** 2 + ((o[ekey] / o[key]) ** 2 if with_model_error else 0.0)
                r.append(math.log(o[key] / tv["value"]) / math.sqrt(rel2))
    for c in spec.fitted_checks:
        if check_ids is not None and c.id not in check_ids:
            continue
        o = obs[c.id]
        me = o["err"] if with_model_error and math.isfinite(o["err"]) else 0.0
        v = o["value"] if math.isfinite(o["value"]) else math.copysign(10.0, o["value"]) + c.value
        r.append((v - c.value) / math.hypot(c.err, me))
    return np.asarray(r, dtype=np.float64)


# --------------------------------------------------------------------------- the fit
class _BudgetReached(Exception):
    """The optimiser asked for more KMC evaluations than the stage's ``max_evaluations``."""


def _fit_stage(spec, stage, ev, x_all, progress):
    """Least squares over the stage's parameters (the others fixed at ``x_all``); returns the stage's record."""
    from scipy.optimize import least_squares  # noqa: PLC0415

    idx = np.array(stage.parameters, dtype=np.int64)
    sel = dict(target_ids=stage.targets, check_ids=stage.checks)
    n0 = ev.n_evaluations
    best_seen = {"cost": math.inf, "x": None}

    def full(xs):
        xx = np.array(x_all, dtype=np.float64)
        xx[idx] = xs
        return xx

    def res_at(xs, budget=True, with_model_error=False):
        xx = full(xs)
        if budget and not ev.is_cached(xx, **sel) and ev.n_evaluations - n0 >= stage.max_evaluations:
            raise _BudgetReached
        new = not ev.is_cached(xx, **sel)
        o = ev.observables(xx, **sel)
        r = residuals(spec, o, with_model_error, **sel)
        if not with_model_error:
            cost = float(np.sum(r ** 2))
            if cost < best_seen["cost"]:
                best_seen.update(cost=cost, x=np.array(xs, dtype=np.float64))
        if new and progress is not None:
            progress(ev.n_evaluations, xx)
        return r

    params = [spec.parameters[j] for j in idx]
    x0 = np.array([x_all[j] for j in idx], dtype=np.float64)
    lo = np.array([p.bounds[0] for p in params])
    hi = np.array([p.bounds[1] for p in params])
    steps = np.array([spec.diff_step_ln if p.kind == "ln_prefactor" else spec.diff_step for p in params])

    def jac(xs, with_model_error=False, budget=True):
        # forward differences with absolute steps (a step inside the bounds), on the cached evaluations:
        # steps large enough that the event order of the mixed cells changing does not dominate the slope
        r0 = res_at(xs, budget, with_model_error)
        J = np.empty((r0.size, xs.size))
        for j in range(xs.size):
            xp = np.array(xs, dtype=np.float64)
            xp[j] = xp[j] + steps[j] if xp[j] + steps[j] <= hi[j] else xp[j] - steps[j]
            J[:, j] = (res_at(xp, budget, with_model_error) - r0) / (xp[j] - xs[j])
        return J

    start_cost = float(np.sum(res_at(x0) ** 2))
    # KMC noise left by the common random numbers (a changed event order) can shrink the trust region
    # far from the optimum; a fresh run from the best point restores it. Restarts stop when one gains
    # less than 1 % in cost.
    x_best, status, message, nfev, runs = x0, 0, "", 0, []
    try:
        for _ in range(1 + spec.restarts):
            sol = least_squares(lambda xs: res_at(xs), x_best, jac=jac, bounds=(lo, hi),
                                method="trf", x_scale=steps * 10, xtol=1e-3, ftol=1e-4)
            prev = runs[-1]["cost"] if runs else start_cost
            cost = float(np.sum(sol.fun ** 2))
            runs.append({"cost": cost, "nfev": int(sol.nfev), "status": int(sol.status)})
            if cost < prev:
                x_best = sol.x
            status, message, nfev = int(sol.status), str(sol.message), nfev + int(sol.nfev)
            if cost > prev * 0.99:
                break
    except _BudgetReached:
        x_best, status, nfev = best_seen["x"], -2, ev.n_evaluations - n0
        message = f"stopped at the evaluation budget ({stage.max_evaluations}); the best point seen is kept"
    # errors: Jacobian of the residuals with target and KMC errors combined, at the stage optimum
    J = jac(x_best, with_model_error=True, budget=False)
    try:
        cov = np.linalg.inv(J.T @ J)
    except np.linalg.LinAlgError:
        cov = np.full((idx.size, idx.size), np.nan)
    cost = float(np.sum(res_at(x_best, budget=False) ** 2))
    return {"name": stage.name, "parameters": [p.label for p in params], "targets": list(stage.targets),
            "checks": list(stage.checks), "x": x_best, "cov": cov, "start_cost": start_cost, "cost": cost,
            "n_evaluations": ev.n_evaluations - n0, "status": status, "converged": status > 0,
            "message": message, "nfev": nfev, "runs": runs}


def calibrate(spec: CalibrationSpec, base, progress=None) -> dict:
    """Least-squares calibration, stage by stage; returns the values, errors, residuals and the catalog."""
    if base.cluster_expansion is not None and spec.ce_cutoffs_a is not None \
            and tuple(base.cluster_expansion.cutoffs_a) != tuple(spec.ce_cutoffs_a):
        raise CalibrationError(f"calibration.ce_cutoffs_a {list(spec.ce_cutoffs_a)} differ from the base "
                               f"catalog's cluster expansion ({list(base.cluster_expansion.cutoffs_a)})")
    ev = Evaluator(spec, base)
    x0 = np.array([p.start for p in spec.parameters], dtype=np.float64)
    lo = np.array([p.bounds[0] for p in spec.parameters])
    hi = np.array([p.bounds[1] for p in spec.parameters])
    start_obs = ev.observables(x0, check_ids=())
    x = x0.copy()
    cov = np.full((x.size, x.size), np.nan)
    stage_rec = []
    for st in spec.stages:
        rec = _fit_stage(spec, st, ev, x, progress)
        idx = np.array(st.parameters, dtype=np.int64)
        x[idx] = rec["x"]
        cov[np.ix_(idx, idx)] = rec["cov"]
        stage_rec.append({k: v for k, v in rec.items() if k not in ("x", "cov")})
    best = ev.observables(x)  # every target and fitted check at the final values (cached where it can)
    err = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    err[~np.isfinite(np.diag(cov))] = np.nan
    at_bound = [bool(np.isclose(v, a) or np.isclose(v, b)) for v, a, b in zip(x, lo, hi)]
    rows = target_rows(spec, best)
    r0 = residuals(spec, best, with_model_error=True)
    chi2 = float(np.sum(r0 ** 2))
    cat = apply_parameters(base, spec.parameters, x)
    last = stage_rec[-1]
    result = {
        "parameters": [{"label": p.label, "kind": p.kind, "unit": PARAMETER_KINDS[p.kind], "value": float(v),
                        "err": float(e), "start": p.start, "bounds": list(p.bounds), "at_bound": ab,
                        "classes": len(p.classes()),
                        **({"terms": {str(j): w for j, w in p.terms}, "cutoffs_a": list(p.cutoffs_a)}
                           if p.kind == "ce_defect" else {})}
                       for p, v, e, ab in zip(spec.parameters, x, err, at_bound)],
        "covariance": cov.tolist(), "targets": rows, "start_targets": target_rows(spec, start_obs),
        "fitted_checks": [{"id": c.id, "target": c.value, "target_err": c.err, "model": best[c.id]["value"],
                           "model_err": best[c.id]["err"]} for c in spec.fitted_checks],
        "chi2": chi2, "dof": r0.size - x.size, "n_evaluations": ev.n_evaluations,
        "optimizer": {"method": "scipy.optimize.least_squares trf (forward-difference Jacobian, absolute steps)"
                                + (f", {len(stage_rec)} stages; covariance block-diagonal by stage"
                                   if len(stage_rec) > 1 else ""),
                      "status": last["status"], "converged": all(s["converged"] for s in stage_rec),
                      "message": "; ".join(f"{s['name']}: {s['message']}" for s in stage_rec)
                      if len(stage_rec) > 1 else last["message"],
                      "nfev": sum(s["nfev"] for s in stage_rec), "runs": [r for s in stage_rec for r in s["runs"]],
                      "stages": stage_rec},
        "all_within_error": all(r["within_error"] for r in rows),
    }
    if cat.cluster_expansion is not None and cat.cluster_expansion is not base.cluster_expansion:
        cat.cluster_expansion.fit = {**(cat.cluster_expansion.fit or {}),
                                     "method": "kmc rates calibrate (defect terms)",
                                     "calibrated_terms": [p["label"] for p in result["parameters"]
                                                          if p["kind"] == "ce_defect"]}
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
    stages = result["optimizer"].get("stages", [])
    if len(stages) > 1:
        L += ["", "| stage | parameters | targets | evaluations | cost start -> end | converged |", "|---|---|---|---|---|---|"]
        for st in stages:
            L.append(f"| {st['name']} | {', '.join(st['parameters'])} | {', '.join(st['targets'] + st['checks'])} | "
                     f"{st['n_evaluations']} | {st['start_cost']:.1f} -> {st['cost']:.1f} | "
                     f"{'yes' if st['converged'] else 'no: ' + st['message']} |")
    if any(p["start"] != 0.0 for p in result["parameters"]):
        L += ["", "Start column: the KMC at the table's start values of the parameters (not the base catalog)."]
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
    checks = []
    if spec.checks:
        if not args.quiet:
            print(f"checks: {len(spec.checks)} KMC measurements at the start and the calibrated catalog",
                  file=sys.stderr, flush=True)
        import tempfile  # noqa: PLC0415

        with tempfile.TemporaryDirectory(prefix="kmc-calibrate-") as d:
            start, calibrated = Path(d) / "start.json", Path(d) / "calibrated.json"
            base.save(start)
            cat.save(calibrated)
            checks = check_rows(spec.checks, {"start": str(start), "calibrated": str(calibrated)})
        cal = dict(cat.provenance["calibration"])
        cal["checks"] = [{"id": r["id"], "kind": r["kind"], "fitted": r["fitted"], "target": r["target"],
                          "target_err": r["target_err"], "unit": r["unit"],
                          **{n: {k: r[n][k] for k in ("value", "err", "z", "within_error")}
                             for n in ("start", "calibrated")}} for r in checks]
        cat = dataclasses.replace(cat, provenance={**cat.provenance, "calibration": cal})
    cat.save(out)
    rep_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(rep_dir / "calibration.json", jsonable({**res, "checks": checks,
                                                              "mixing_order": mixing_order(checks),
                                                              "catalog": str(out),
                                                              "catalog_sha256": cat.sha256(),
                                                              "provenance": provenance()}))
    md = format_report(res, spec) + format_checks(checks)
    write_text_atomic(rep_dir / "calibration.md", md)
    print(md)
    print(f"wrote {out}")
    return 0


__all__ = ["add_calibrate_parser", "cmd_calibrate", "CalibrationError", "CalibrationSpec", "Evaluator", "Parameter", "Target", "apply_parameters",
           "calibrate", "format_report", "load_targets", "residuals", "target_rows"]
