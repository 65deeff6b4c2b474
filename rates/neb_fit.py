"""Barriers and the energy model from NEB records, and a rate catalog built from them.

Split by job: :mod:`rates.neb_records` (record files), :mod:`rates.kra_fit` (barriers),
:mod:`rates.energy_fit` (energy model); this module fits both with cross-validation and builds
the catalog.

Input: the JSON record files of ``kmc rates neb`` (:mod:`md_reference.neb.cli`,
schema ``halide-kmc/neb-records`` v1), one record per hop with its environment
class (:mod:`lattice.environment`), forward/backward barriers and endpoint
energies. Two quantities of each hop are used:

* the kinetically-resolved barrier ``E_KRA = E_fwd - dE/2 = (E_fwd + E_bwd)/2``,
* the endpoint energy difference ``dE = E(final) - E(initial)``.

Records of bands that did not converge, of endpoints that did not relax, or
with an image below an endpoint (no defined barrier) are skipped and counted
(:class:`NEBRecordSet`); malformed or self-contradictory ones raise ``ValueError``.

Barriers
--------
Per *family* of hop classes -- ``(vacancy, mover)`` or ``(interstitial, mover,
pair_nI)`` -- E_KRA is modelled as linear in the shell descriptor,

.. math::  E_{KRA}(n_I) = a_f + b_f\\, n_I,

fitted by weighted least squares (weights ``1/sigma_i^2``; ``sigma_i = 1``
unless a record carries ``kra_err_eV``). Modes (:data:`SLOPE_MODES`):
``"per-family"`` (own slope where the family has at least ``min_records_linear``
records at two or more ``shell_nI`` values, else a constant), ``"pooled"`` (one
slope per defect kind shared by its families, one intercept per family) and
``"constant"``. Parameter covariance ``s^2 (X^T W X)^{-1}``: with relative
weights (``absolute_sigma=False``, as in :func:`scipy.optimize.curve_fit`)
``s^2`` is the reduced chi-square pooled over all families of the same defect
kind (vacancy and kick-out barriers scatter differently; families are too
small for their own variance); with no residual degree of freedom in a kind,
``s = prior_sigma_eV`` and the fit says so.

Energy model
------------
``dE`` of the lattice Hamiltonian is linear in the pair energies ``J`` and the
bridge energies: ``dE_i = X_i . theta`` where column ``p`` of ``X`` is the
rate law's own :func:`rates.ratelaw.delta_energy_vacancy` /
:func:`rates.ratelaw.delta_energy_kickout` evaluated with parameter ``p`` set
to 1 and all others to 0, on the record's pre-hop state counts (so the fit
uses exactly the KMC's Hamiltonian). Those counts need the occupancy of the
cell, which records do not store: it is rebuilt with
:func:`lattice.build_configuration` from the file's ``request`` (structure,
shape, species, x_I, structure_seed, ...) or, for pure / heterojunction /
nanodomain cells, from the record's ``provenance.configuration``; every record
is checked against it (its class and species must come out again). Records
whose cell cannot be rebuilt enter the E_KRA fit only; without any, the
energy model is the base catalog's and the fit says so.

Many parameters are not separable with single-defect data (e.g. with one
vacancy, only ``J[m,I] - J[m,Br] - J[V,I] + J[V,Br]`` per mover ``m`` enters
``dE``). Only the parameters of ``energy_parameters`` are free (default
:data:`DEFAULT_ENERGY_PARAMETERS`: each with a reference partner kept at the
base value), taken in that order and kept only if their column raises the rank
of ``X`` (so a parameter without data, or aliased with an earlier one, keeps the
base value and is listed with the reason; so does one that enters the dE of
fewer than ``min_records_per_parameter`` records). The free ones are fitted to
``dE - X theta_base`` by ordinary least squares, covariance
``s^2 (X^T X)^{-1}`` with ``s^2 = RSS / (n - p)``. Hops in a single-species
environment (one halide on every site of ``N(A) | N(B)`` and in every hop
atom, e.g. all hops in a pure cell) have ``dE = 0`` by symmetry in the model
and in the NEB (mirror endpoints) and are left out; every other record counts,
also one whose dE the model cannot vary (it measures the model's error).

Cross-validation
----------------
Leave-one-out (default) or seeded k-fold over the records: every fold is
refitted with the same rules and predicts its held-out records; the RMSE of
E_KRA per family (and pooled) and of dE (per family and pooled, records of
mixed environments only) are reported. A family with one record has no CV error.

Catalog
-------
:func:`build_catalog_from_neb` writes a :class:`rates.catalog.RateCatalog`:
every class of a fitted family gets the family's E_KRA at its ``shell_nI``,
``class_source`` ``"neb-fit"`` inside the range of fitted ``shell_nI`` values and
``"neb-fit-extrapolated"`` outside it (``extrapolate=False`` keeps the base
values there); other classes keep the base values (``"fallback:<source>"``).
NEB has no prefactor: it is one value given by the caller, the base catalog's
per-class value, or the mean of an MD-fitted catalog's
(:func:`prefactor_from_md_catalog`). :func:`overlay_md_fit` puts MD-fitted
classes over a NEB catalog.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import logging
import math
import sys
from dataclasses import dataclass

import numpy as np

from lattice.environment import (
    N_CLASSES,
    class_label,
    decode_class,
)
from lattice.species import (
    BRIDGE_NAMES,
    STATE_NAMES,
)
from rates.catalog import RateCatalog, load_catalog
from rates.fit import _package_version

from rates.energy_fit import (  # noqa: F401 - re-exported: rates.neb_fit is the entry point
    EnergyModelFit,
    _mixed_environment,
    design_matrix,
    energy_parameters_of,
    fit_energy_model,
    predict_delta_energy,
)
from rates.kra_fit import FamilyFit, fit_kra  # noqa: F401
from rates.neb_records import (  # noqa: F401
    DEFAULT_ENERGY_PARAMETERS,
    ENERGY_PARAMETERS,
    MIN_RECORDS_PER_PARAMETER,
    PRIOR_SIGMA_EV,
    RECORD_SCHEMA,
    RECORDS_SCHEMA,
    SCHEMA_VERSION,
    SLOPE_MODES,
    SOURCE_ENERGY,
    SOURCE_EXTRAPOLATED,
    SOURCE_FIT,
    NEBRecord,
    NEBRecordSet,
    _family_classes,
    _json,
    family_of_class,
    load_neb_record_files,
    load_neb_records,
    parse_record,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------
# Both fits with cross-validation
# --------------------------------------------------------------------------
@dataclass
class NEBFit:
    """E_KRA families, energy model and cross-validation of one record set."""

    families: dict
    energy: EnergyModelFit
    slope_mode: str
    cv: str
    record_set: NEBRecordSet
    cv_rmse_kra_eV: float = math.nan

    def summary(self) -> dict:
        """JSON-ready summary (stored as ``provenance["fit"]`` of the catalog)."""
        return {"slope_mode": self.slope_mode, "cross_validation": self.cv,
                "n_records": len(self.record_set.records), "skipped": dict(self.record_set.skipped),
                "notes": list(self.record_set.notes),
                "families": [f.to_dict() for f in self.families.values()],
                "cv_rmse_kra_eV": _json(self.cv_rmse_kra_eV),
                "energy_model": self.energy.to_dict()}


def _folds(n: int, cv_folds: int | None, seed: int) -> list[np.ndarray]:
    if cv_folds is None or int(cv_folds) >= n:
        return [np.array([i]) for i in range(n)]
    k = int(cv_folds)
    if k < 2:
        raise ValueError(f"cv_folds must be >= 2 or None (leave-one-out), got {cv_folds}")
    perm = np.random.default_rng(seed).permutation(n)
    return [np.sort(perm[j::k]) for j in range(k)]


def fit_neb(record_set: NEBRecordSet, base_catalog="default", slope_mode: str = "per-family",
            energy_parameters=DEFAULT_ENERGY_PARAMETERS, fit_energy: bool = True, min_records_linear: int = 3,
            absolute_sigma: bool = False, prior_sigma_eV: float = PRIOR_SIGMA_EV, cv_folds: int | None = None,
            cv_seed: int = 0, min_records_per_parameter: int = MIN_RECORDS_PER_PARAMETER) -> NEBFit:
    """Fit E_KRA families and the energy model, and cross-validate both.

    Parameters
    ----------
    record_set : NEBRecordSet
        From :func:`load_neb_records` / :func:`load_neb_record_files`.
    base_catalog : RateCatalog, str or Path
        Energy-model values of parameters that are not fitted.
    slope_mode, min_records_linear, absolute_sigma, prior_sigma_eV :
        See :func:`fit_kra`.
    energy_parameters, min_records_per_parameter :
        See :func:`fit_energy_model`.
    fit_energy : bool
        False: keep the base catalog's energy model.
    cv_folds : int or None
        None: leave-one-out; k: k folds drawn with ``default_rng(cv_seed)``.

    Returns
    -------
    NEBFit
    """
    records = list(record_set.records)
    if not records:
        raise ValueError("no converged NEB records to fit (skipped: "
                         + ", ".join(f"{v} {k}" for k, v in record_set.skipped.items() if v) + ")")
    base = base_catalog if isinstance(base_catalog, RateCatalog) else load_catalog(base_catalog)
    kw = {"slope_mode": slope_mode, "min_records_linear": min_records_linear, "absolute_sigma": absolute_sigma,
          "prior_sigma_eV": prior_sigma_eV}
    families = fit_kra(records, **kw)
    if fit_energy:
        energy = fit_energy_model(records, base, energy_parameters, prior_sigma_eV, min_records_per_parameter)
    else:
        theta0 = energy_parameters_of(base)
        energy = EnergyModelFit(theta0, np.full(theta0.size, np.nan), [], np.zeros((0, 0)), {}, 0,
                                status=f"not fitted (fit_energy=False): energy model of base catalog {base.name!r}")
    # cross-validation
    kra_err: dict[str, list] = {}
    de_err: dict[str, list] = {}
    folds = _folds(len(records), cv_folds, cv_seed)
    for test in folds:
        held = set(test.tolist())
        train = [r for i, r in enumerate(records) if i not in held]
        fam_cv = fit_kra(train, **kw) if train else {}
        en_cv = None
        if energy.fitted:
            en_cv = fit_energy_model(train, base, energy_parameters, prior_sigma_eV, min_records_per_parameter)
        for i in test:
            r = records[i]
            if r.family in fam_cv:
                kra_err.setdefault(r.family, []).append(r.kra_eV - float(fam_cv[r.family].predict(r.shell_nI)[0]))
            if en_cv is not None and r.has_counts and _mixed_environment(r):
                de_err.setdefault(r.family, []).append(r.delta_E_eV - predict_delta_energy(r, en_cv.theta_eV))
    for lb, f in families.items():
        e = np.asarray(kra_err.get(lb, []))
        f.cv_n = int(e.size)
        f.cv_rmse_eV = float(np.sqrt(np.mean(e ** 2))) if e.size else math.nan
    all_kra = np.concatenate([np.asarray(v) for v in kra_err.values()]) if kra_err else np.zeros(0)
    if de_err:
        all_de = np.concatenate([np.asarray(v) for v in de_err.values()])
        energy.cv_rmse_eV = float(np.sqrt(np.mean(all_de ** 2)))
        energy.cv_n = int(all_de.size)
        energy.cv_by_family = {lb: {"rmse_eV": float(np.sqrt(np.mean(np.square(v)))), "n": len(v)}
                               for lb, v in sorted(de_err.items())}
    cv = "leave-one-out" if len(folds) == len(records) else f"{len(folds)}-fold (seed {cv_seed})"
    return NEBFit(families=families, energy=energy, slope_mode=slope_mode, cv=cv, record_set=record_set,
                  cv_rmse_kra_eV=float(np.sqrt(np.mean(all_kra ** 2))) if all_kra.size else math.nan)


# --------------------------------------------------------------------------
# Catalog
# --------------------------------------------------------------------------
def prefactor_from_md_catalog(md_catalog: RateCatalog) -> tuple[float, float]:
    """One attempt frequency from an MD-fitted catalog (:func:`rates.fit.build_catalog_from_md`).

    The inverse-variance weighted mean of ``ln prefactor`` over classes whose
    prefactor was fitted (class source ``md-mle`` or ``md-mle-shared-prefactor``;
    fixed prefactors carry no information). Returns ``(prefactor_Hz,
    prefactor_err_Hz)``, the error as ``prefactor * sigma(mean ln prefactor)``.

    Raises
    ------
    ValueError
        No class with a fitted prefactor and a finite error.
    """
    use = [c for c in range(N_CLASSES) if md_catalog.class_source[c] in ("md-mle", "md-mle-shared-prefactor")
           and md_catalog.present[c] and np.isfinite(md_catalog.prefactor_err_Hz[c])
           and md_catalog.prefactor_err_Hz[c] > 0]
    if not use:
        raise ValueError(f"catalog {md_catalog.name!r} has no class with a fitted prefactor (class source md-mle or "
                         "md-mle-shared-prefactor with an error); give the prefactor explicitly")
    ln_nu = np.log(md_catalog.prefactor_Hz[use])
    s = md_catalog.prefactor_err_Hz[use] / md_catalog.prefactor_Hz[use]
    if len(set(np.round(ln_nu, 12))) == 1:  # one shared prefactor: its own error
        return float(math.exp(ln_nu[0])), float(math.exp(ln_nu[0]) * s[0])
    w = 1.0 / s ** 2
    mean = float(np.sum(w * ln_nu) / np.sum(w))
    return math.exp(mean), math.exp(mean) * float(1.0 / math.sqrt(np.sum(w)))


def build_catalog_from_neb(records, base_catalog="default", *, prefactor_Hz: float | None = None,
                           prefactor_err_Hz: float | None = None, prefactor_catalog: RateCatalog | None = None,
                           slope_mode: str = "per-family", energy_parameters=DEFAULT_ENERGY_PARAMETERS,
                           fit_energy: bool = True, extrapolate: bool = True, min_records_linear: int = 3,
                           absolute_sigma: bool = False, prior_sigma_eV: float = PRIOR_SIGMA_EV,
                           cv_folds: int | None = None, cv_seed: int = 0,
                           min_records_per_parameter: int = MIN_RECORDS_PER_PARAMETER, name: str | None = None,
                           description: str | None = None, extra_provenance: dict | None = None) -> RateCatalog:
    """A rate catalog from NEB records.

    Parameters
    ----------
    records : NEBRecordSet, or path(s) of record files
    base_catalog : RateCatalog, str or Path
        Fallback values of classes outside the fitted families, the energy-model
        parameters not fitted, lattice constants and temperature range.
    prefactor_Hz, prefactor_err_Hz : float, optional
        One attempt frequency for every NEB-fitted class.
    prefactor_catalog : RateCatalog, optional
        Without ``prefactor_Hz``: take it from this MD-fitted catalog
        (:func:`prefactor_from_md_catalog`). Without either, NEB-fitted classes
        keep the base catalog's per-class prefactors.
    slope_mode, energy_parameters, fit_energy, min_records_linear, absolute_sigma, prior_sigma_eV, cv_folds, cv_seed,\
    min_records_per_parameter :
        See :func:`fit_neb`.
    extrapolate : bool
        Give classes of a fitted family outside its fitted shell_nI range the
        model's value (``"neb-fit-extrapolated"``); False keeps the base values there.
    name, description : str, optional
    extra_provenance : dict, optional
        Merged into ``provenance``.

    Returns
    -------
    RateCatalog
        Validated (parsed back from its JSON form); ``provenance["fit"]`` holds
        :meth:`NEBFit.summary`.
    """
    rs = records if isinstance(records, NEBRecordSet) else load_neb_record_files(records)
    base = base_catalog if isinstance(base_catalog, RateCatalog) else load_catalog(base_catalog)
    fit = fit_neb(rs, base, slope_mode=slope_mode, energy_parameters=energy_parameters, fit_energy=fit_energy,
                  min_records_linear=min_records_linear, absolute_sigma=absolute_sigma,
                  prior_sigma_eV=prior_sigma_eV, cv_folds=cv_folds, cv_seed=cv_seed,
                  min_records_per_parameter=min_records_per_parameter)
    if prefactor_Hz is not None:
        nu_src = "given"
        nu_val = float(prefactor_Hz)
        nu_err = math.nan if prefactor_err_Hz is None else float(prefactor_err_Hz)
        if not (math.isfinite(nu_val) and nu_val > 0):
            raise ValueError(f"prefactor_Hz must be finite and > 0, got {prefactor_Hz}")
    elif prefactor_catalog is not None:
        nu_val, nu_err = prefactor_from_md_catalog(prefactor_catalog)
        nu_src = f"mean of the fitted prefactors of MD catalog {prefactor_catalog.name!r}"
    else:
        nu_val = nu_err = None
        nu_src = f"base catalog {base.name!r} (per class)"
    e_kra = base.E_KRA_eV.copy()
    e_err = base.E_KRA_err_eV.copy()
    nu = base.prefactor_Hz.copy()
    nu_e = base.prefactor_err_Hz.copy()
    src = [f"fallback:{s}" if base.present[c] else "" for c, s in enumerate(base.class_source)]
    unfitted = {}
    for lb, f in fit.families.items():
        for c in _family_classes(lb):
            n = decode_class(c)["shell_nI"]
            inside = f.in_range(n)
            if not inside and not extrapolate:
                continue
            v, se = f.predict(n)
            if v < 0:
                unfitted[class_label(c)] = f"model E_KRA {float(v):.4g} eV < 0 (family {lb}); base value kept"
                log.warning("NEB fit: class %s: model E_KRA %.4g eV < 0; keeping the base value", class_label(c), v)
                continue
            e_kra[c] = float(v)
            e_err[c] = float(se)
            if nu_val is not None:
                nu[c] = nu_val
                nu_e[c] = nu_err
            src[c] = SOURCE_FIT if inside else SOURCE_EXTRAPOLATED
    pair = base.pair_eV.copy()
    pair_err = base.pair_err_eV.copy()
    pair_src = dict(base.pair_source)
    bridge = base.bridge_eV.copy()
    bridge_err = base.bridge_err_eV.copy()
    bridge_src = list(base.bridge_source)
    for pname in fit.energy.fitted:
        v, e = fit.energy.value(pname)
        kind, what = pname.split(":")
        if kind == "pair":
            a, b = (STATE_NAMES.index(s) for s in what.split("-"))
            pair[a, b] = pair[b, a] = v
            pair_err[a, b] = pair_err[b, a] = e
            pair_src[(STATE_NAMES[min(a, b)], STATE_NAMES[max(a, b)])] = SOURCE_ENERGY
        else:
            nb = BRIDGE_NAMES.index(what)
            bridge[nb], bridge_err[nb], bridge_src[nb] = v, e, SOURCE_ENERGY
    files = [s["file"] for s in rs.sources]
    sources = dict(base.sources)
    what = (f"NEB records ({len(rs.records)} converged hops from {', '.join(files)}): E_KRA = (E_fwd + E_bwd)/2 "
            f"fitted per family as a function of shell_nI (slope mode {slope_mode!r}, weighted least squares)")
    sources[SOURCE_FIT] = what + "; class inside the fitted shell_nI range of its family"
    sources[SOURCE_EXTRAPOLATED] = what + "; class OUTSIDE the fitted shell_nI range (extrapolated)"
    sources[SOURCE_ENERGY] = ("least-squares fit of pair/bridge energies to the NEB endpoint energy differences dE, "
                              "with the rate law's dE functions on the rebuilt pre-hop configurations")
    if fit.energy.fitted:
        energy_text = ("Energy model: "
                       + ", ".join(f"{p} = {fit.energy.value(p)[0]:.4g} +- {fit.energy.value(p)[1]:.2g} eV"
                                   for p in fit.energy.fitted)
                       + f" fitted to NEB dE ({fit.energy.n_records} records of mixed environments); other terms from base "
                         f"catalog {base.name!r}")
    else:
        energy_text = f"Energy model of base catalog {base.name!r} ({fit.energy.status})."
    assumptions = [
        (f"Classes with class_source {SOURCE_FIT}/{SOURCE_EXTRAPOLATED}: E_KRA from a per-family model "
         f"({SLOPE_MODES[slope_mode]}) fitted to NEB kinetically-resolved barriers; E_KRA_err_eV is the standard "
         "error of the model at that shell_nI (parameter covariance only; the scatter of single hops about the "
         "model is in provenance.fit.families[*].sigma_eV). Extrapolated classes carry no model-error term."),
        f"Prefactor of NEB-fitted classes: {nu_src} (NEB gives no prefactor).",
        ("NEB barriers are static 0 K barriers of one cell per hop (frozen far field); the KMC applies them at "
         "every temperature of the catalog's range."),
        energy_text,
        f"Classes with class_source fallback:* keep the values of base catalog {base.name!r}.",
    ] + [f"base catalog {base.name!r}: {a}" for a in base.assumptions]
    inputs = {s["file"]: s["sha256"] for s in rs.sources}
    inputs[f"base catalog {base.name}"] = base.sha256()
    summary = fit.summary()
    summary.update({"extrapolate": extrapolate, "prefactor": {"source": nu_src, "prefactor_Hz": nu_val,
                                                              "prefactor_err_Hz": _json(nu_err) if nu_err is not None
                                                              else None},
                    "record_sources": copy.deepcopy(rs.sources), "unfitted": unfitted,
                    "base_catalog": {"name": base.name, "sha256": base.sha256()}})
    provenance = {
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "generator": "rates.neb_fit.build_catalog_from_neb",
        "package_version": _package_version(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "inputs": inputs,
        "fit": summary,
    }
    if extra_provenance:
        provenance.update(copy.deepcopy(extra_provenance))
    cat = RateCatalog(
        name=name or f"neb-fit-{slope_mode}",
        description=description if description is not None else
        f"E_KRA and energy model fitted to NEB records; other classes from {base.name!r}.",
        E_KRA_eV=e_kra, E_KRA_err_eV=e_err, prefactor_Hz=nu, prefactor_err_Hz=nu_e, class_source=src,
        pair_eV=pair, pair_err_eV=pair_err, pair_source=pair_src, bridge_eV=bridge, bridge_err_eV=bridge_err,
        bridge_source=bridge_src, lattice_constant_A=dict(base.lattice_constant_A),
        temperature_range_K=tuple(base.temperature_range_K), sources=sources, assumptions=assumptions,
        provenance=provenance,
    )
    return RateCatalog.from_dict(json.loads(json.dumps(cat.to_dict())), origin=f"fitted catalog {cat.name!r}")


def overlay_md_fit(neb_catalog: RateCatalog, md_catalog: RateCatalog, name: str | None = None) -> RateCatalog:
    """MD-fitted classes (class source ``md-mle*``) of ``md_catalog`` over ``neb_catalog``.

    Every other class, the energy model, lattice constants and temperature range
    come from ``neb_catalog``; class sources tell which fit a class came from.
    The MD barriers were fitted with the MD catalog's own energy model (they
    absorb the mean dE/2 of the class's MD hops; exact for dE = 0).
    """
    md = [c for c in range(N_CLASSES) if md_catalog.class_source[c].startswith("md-mle")]
    cat = copy.deepcopy(neb_catalog)
    for c in md:
        cat.E_KRA_eV[c] = md_catalog.E_KRA_eV[c]
        cat.E_KRA_err_eV[c] = md_catalog.E_KRA_err_eV[c]
        cat.prefactor_Hz[c] = md_catalog.prefactor_Hz[c]
        cat.prefactor_err_Hz[c] = md_catalog.prefactor_err_Hz[c]
        cat.class_source[c] = md_catalog.class_source[c]
    cat.name = name or f"md-over-{neb_catalog.name}"
    cat.description = (f"MD-fitted classes of {md_catalog.name!r} over the NEB catalog {neb_catalog.name!r} "
                       "(energy model and other classes).")
    for k, v in md_catalog.sources.items():
        if k.startswith("md-mle"):
            cat.sources[k] = v
    cat.assumptions = ([(f"Precedence: classes fitted to MD hop counts (class_source md-mle*, {len(md)} classes) "
                         f"override NEB-fitted ones (neb-fit*); MD barriers were fitted with the energy model of "
                         f"{md_catalog.name!r}, the KMC uses this catalog's.")]
                       + list(neb_catalog.assumptions)
                       + [f"MD catalog: {a}" for a in md_catalog.assumptions if not a.startswith("base catalog")])
    cat.provenance = copy.deepcopy(neb_catalog.provenance)
    cat.provenance["generator"] = "rates.neb_fit.overlay_md_fit"
    cat.provenance["md_fit"] = copy.deepcopy(md_catalog.provenance.get("fit", {}))
    cat.provenance.setdefault("inputs", {}).update(md_catalog.provenance.get("inputs", {}))
    cat.provenance["inputs"][f"MD catalog {md_catalog.name}"] = md_catalog.sha256()
    cat.provenance["md_classes"] = [class_label(c) for c in md]
    return RateCatalog.from_dict(json.loads(json.dumps(cat.to_dict())), origin=f"combined catalog {cat.name!r}")


def format_fit_table(summary: dict) -> str:
    """Text table of the fitted families and energy model (``catalog.provenance["fit"]``)."""
    head = (f"{'family':<12} {'model':<13} {'n':>3} {'nI range':>8} {'E_KRA(nI=0) eV':>16} {'slope eV/I':>17} "
            f"{'sigma':>6} {'CV RMSE':>8}")
    lines = [f"E_KRA families ({summary['slope_mode']}; CV {summary['cross_validation']}; "
             f"{summary['n_records']} records, skipped "
             + (", ".join(f"{v} {k}" for k, v in summary["skipped"].items() if v) or "none") + ")",
             head, "-" * len(head)]
    for f in summary["families"]:
        nv = f["shell_nI_values"]
        slope = "-" if f["model"] == "constant" else f"{f['slope_eV_per_I']:+.4f}+-{f['slope_err_eV_per_I']:.4f}"
        cv = "-" if f["cv_rmse_eV"] is None else f"{f['cv_rmse_eV']:.4f}"
        sig = "-" if f["sigma_eV"] is None else f"{f['sigma_eV']:.3f}"
        lines.append(f"{f['family']:<12} {f['model']:<13} {f['n_records']:>3} {f'{min(nv)}-{max(nv)}':>8} "
                     f"{f['intercept_eV']:>8.4f}+-{f['intercept_err_eV']:.4f} {slope:>17} {sig:>6} {cv:>8}")
    if summary.get("cv_rmse_kra_eV") is not None:
        lines.append(f"pooled CV RMSE of E_KRA: {summary['cv_rmse_kra_eV']:.4f} eV")
    em = summary["energy_model"]
    lines.append(f"\nenergy model: {em['status']}")
    if not em["parameters"]:
        return "\n".join(lines)
    for pname, p in em["parameters"].items():
        e = "n/a" if p["error_eV"] is None else f"{p['error_eV']:.4f}"
        lines.append(f"  {pname:<14} {p['value_eV']:+.4f} +- {e} eV")
    for pname, why in em["not_fitted"].items():
        lines.append(f"  {pname:<14} base value ({why})")
    if em["n_records"]:
        def f4(v):
            return "n/a" if v is None else f"{v:.4f}"
        lines.append(f"  dE: {em['n_records']} records of mixed environments, RMSE fit {f4(em['rmse_eV'])} eV, base model "
                     f"{f4(em['rmse_base_eV'])} eV, CV {f4(em['cv_rmse_eV'])} eV")
        for lb, v in em["cv_by_family"].items():
            lines.append(f"    CV RMSE dE {lb:<12} {v['rmse_eV']:.4f} eV (n={v['n']})")
    return "\n".join(lines)


__all__ = [
    "DEFAULT_ENERGY_PARAMETERS",
    "ENERGY_PARAMETERS",
    "SLOPE_MODES",
    "EnergyModelFit",
    "FamilyFit",
    "NEBFit",
    "NEBRecord",
    "NEBRecordSet",
    "build_catalog_from_neb",
    "design_matrix",
    "energy_parameters_of",
    "family_of_class",
    "fit_energy_model",
    "fit_kra",
    "fit_neb",
    "format_fit_table",
    "load_neb_record_files",
    "load_neb_records",
    "overlay_md_fit",
    "parse_record",
    "predict_delta_energy",
    "prefactor_from_md_catalog",
]
