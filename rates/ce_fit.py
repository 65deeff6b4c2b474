"""Fit a cluster-expansion energy model (:mod:`lattice.cluster_expansion`) to cell energies.

Training set (JSON, written by the package's data generation or by hand)::

    {"format": "halide-kmc-ce-training-set", "version": 1,
     "units": {"energy": "eV"},
     "source": {"potential": "...", "relaxation": "...", ...},
     "structures": [{"id": "mix-x0.50-3", "group": "host", "shape": [3, 3, 3],
                     "occ": [0, 1, 2, ...],          # site states (lattice.species) in site order
                     "bridge_n_br": [1],             # Br atoms of each bridge, in site order
                     "energy_eV": -1234.5}, ...]}

Every cell energy is linear in the parameters: the zerolet (per cell), the host ECI of
every icet orbit, the vacancy and interstitial terms of every local orbit, and the
bridge-composition energies of IBr and BrBr relative to II::

    E = E0 * n_cells + X_CE(occ) . theta + n_IBr * e_IBr + n_BrBr * e_BrBr

``X_CE`` comes from :func:`features`, which evaluates the energy function itself with a
unit coefficient per parameter, so a fitted model reproduces its fit exactly in the KMC.
Fitting uses trainstation (icet's fitting companion): k-fold cross-validation for the
prediction error (overall and per group of cells), a bootstrap ensemble for the
parameter uncertainties. Parameters no cell of the set determines (an all-zero column)
are fixed at 0 and listed as undetermined.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
from pathlib import Path

import numpy as np

from common.provenance import file_sha256, provenance
from lattice.cluster_expansion import (
    DEFECT_KINDS_CE,
    ClusterExpansion,
    ClusterExpansionError,
    _check_cutoffs,
    _flat_clusters,
    kernel_tables,
    local_orbits_of,
    orbits_of,
)
from lattice.species import BRIDGE, N_STATES, VACANCY
from rates.catalog import _num

FORMAT = "halide-kmc-ce-training-set"
FIT_METHODS = ("ridge", "least-squares", "lasso", "ardr", "bayesian-ridge")


class TrainingSetError(ValueError):
    """A training set is malformed; the message names the file and field."""


# --------------------------------------------------------------------------
# Training set
# --------------------------------------------------------------------------
def load_training_set(path) -> dict:
    """Read and check a training set; every structure gets numpy arrays ``occ`` and ``bridge_n_br``."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except OSError as exc:
        raise TrainingSetError(f"{p}: cannot read training set ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise TrainingSetError(f"{p}: not valid JSON ({exc})") from None
    return check_training_set(doc, str(p))


def check_training_set(doc: dict, origin: str = "<training set>") -> dict:
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise TrainingSetError(f"{origin}: field 'format' must be {FORMAT!r}")
    if doc.get("version") != 1:
        raise TrainingSetError(f"{origin}: version {doc.get('version')!r} is not supported (1)")
    if (doc.get("units") or {}).get("energy") != "eV":
        raise TrainingSetError(f"{origin}: units.energy must be 'eV'")
    structs = doc.get("structures")
    if not isinstance(structs, list) or not structs:
        raise TrainingSetError(f"{origin}: 'structures' must be a non-empty list")
    out = []
    ids = set()
    for n, st in enumerate(structs):
        where = f"{origin}: structures[{n}]"
        if not isinstance(st, dict):
            raise TrainingSetError(f"{where}: must be an object")
        sid = str(st.get("id", n))
        if sid in ids:
            raise TrainingSetError(f"{where}: id {sid!r} listed twice")
        ids.add(sid)
        shape = st.get("shape")
        if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(v, int) and v > 0 for v in shape)):
            raise TrainingSetError(f"{where}.shape must be three positive integers")
        occ = np.asarray(st.get("occ"), dtype=np.int64) if isinstance(st.get("occ"), (list, np.ndarray)) else None
        if occ is None or occ.shape != (3 * int(np.prod(shape)),):
            raise TrainingSetError(f"{where}.occ must list {3 * int(np.prod(shape))} site states")
        if occ.min() < 0 or occ.max() >= N_STATES:
            raise TrainingSetError(f"{where}.occ has states outside 0..{N_STATES - 1}")
        nbr = np.asarray(st.get("bridge_n_br", []), dtype=np.int64)
        if nbr.size != int(np.sum(occ == BRIDGE)) or (nbr.size and (nbr.min() < 0 or nbr.max() > 2)):
            raise TrainingSetError(f"{where}.bridge_n_br must give 0-2 Br for each of the "
                                   f"{int(np.sum(occ == BRIDGE))} bridges")
        e = st.get("energy_eV")
        if isinstance(e, bool) or not isinstance(e, (int, float)) or not math.isfinite(e):
            raise TrainingSetError(f"{where}.energy_eV must be a finite number")
        out.append({**st, "id": sid, "shape": [int(v) for v in shape], "occ": occ, "bridge_n_br": nbr,
                    "energy_eV": float(e), "group": str(st.get("group", "all"))})
    return {**doc, "structures": out}


# --------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------
def parameter_names(cutoffs_a) -> list[str]:
    cut = _check_cutoffs(cutoffs_a)
    names = ["E0 (per cell)"]
    names += [f"host orbit {o.index} (order {o.order}, r={o.radius_a:.3f} a)" for o in orbits_of(cut)]
    for kind in DEFECT_KINDS_CE:
        names += [f"{kind} local orbit {j} (orbit {lo[0]}, {len(lo[1])} sites)"
                  for j, lo in enumerate(local_orbits_of(cut))]
    names += ["bridge IBr - II", "bridge BrBr - II"]
    return names


_ID_TABLES: dict = {}


def _id_tables(cut):
    """Kernel tables whose coefficients are parameter ids + 1 (host: orbit; defect: local orbit)."""
    if cut not in _ID_TABLES:
        n_orb, n_loc = len(orbits_of(cut)), len(local_orbits_of(cut))
        model = ClusterExpansion(cut, np.arange(1, n_orb + 1, dtype=float),
                                 {k: np.arange(1, n_loc + 1, dtype=float) for k in DEFECT_KINDS_CE})
        _ID_TABLES[cut] = kernel_tables(model)
    return _ID_TABLES[cut]


def features(occ, dims, bridge_n_br, cutoffs_a) -> np.ndarray:
    """Row of the design matrix of one cell (see :func:`parameter_names` for the columns)."""
    cut = _check_cutoffs(cutoffs_a)
    n_orb, n_loc = len(orbits_of(cut)), len(local_orbits_of(cut))
    tables = _id_tables(cut)
    idx, host, dfc, weight = _flat_clusters(dims, tables)
    occ = np.asarray(occ, dtype=np.int64)
    occ_ext = np.append(occ, 4)
    spin_ext = np.append(tables.spin, 1.0)
    st = occ_ext[idx]
    is_def = (st == VACANCY) | (st == BRIDGE)
    nd = is_def.sum(axis=1)
    spins = spin_ext[st]
    row = np.zeros(1 + n_orb + 2 * n_loc + 2)
    row[0] = float(np.prod(dims))
    h = nd == 0
    row[1:1 + n_orb] = np.bincount(host[h].astype(np.int64) - 1, weights=(spins[h].prod(axis=1) * weight[h]),
                                   minlength=n_orb)
    one = np.nonzero(nd == 1)[0]
    if one.size:
        p = np.argmax(is_def[one], axis=1)
        kind = (st[one, p] == BRIDGE).astype(np.int64)
        lid = dfc[one, kind, p].astype(np.int64) - 1
        rest = np.where(is_def[one], 1.0, spins[one]).prod(axis=1) * weight[one]
        col = 1 + n_orb + kind * n_loc + lid
        row += np.bincount(col, weights=rest, minlength=row.size)
    nb = np.asarray(bridge_n_br, dtype=np.int64)
    row[-2] = float(np.sum(nb == 1))
    row[-1] = float(np.sum(nb == 2))
    return row


def design_matrix(ts: dict, cutoffs_a) -> tuple[np.ndarray, np.ndarray]:
    X = np.array([features(s["occ"], s["shape"], s["bridge_n_br"], cutoffs_a) for s in ts["structures"]])
    y = np.array([s["energy_eV"] for s in ts["structures"]])
    return X, y


# --------------------------------------------------------------------------
# Fit
# --------------------------------------------------------------------------
def fit_cluster_expansion(ts: dict, cutoffs_a, method: str = "ridge", n_splits: int = 5, seed: int = 0,
                          ensemble_size: int = 50) -> tuple[ClusterExpansion, dict]:
    """Fit; return the model (with errors and the fit report in ``model.fit``) and the bridge energies."""
    from trainstation import CrossValidationEstimator, EnsembleOptimizer  # noqa: PLC0415

    if method not in FIT_METHODS:
        raise ValueError(f"fit method {method!r} unknown; valid: {list(FIT_METHODS)}")
    cut = _check_cutoffs(cutoffs_a)
    X, y = design_matrix(ts, cut)
    names = parameter_names(cut)
    active = np.any(np.abs(X) > 1e-12, axis=0)
    # columns equal to another (e.g. a defect singlet and a bridge count in one-defect cells) are kept
    # once; the fit determines their sum, reported as undetermined for the dropped one
    keep = []
    for j in np.nonzero(active)[0]:
        if not any(np.allclose(X[:, j], X[:, i]) for i in keep):
            keep.append(int(j))
    keep = np.array(keep, dtype=np.int64)
    n_par = keep.size
    if X.shape[0] < n_par + 2:
        raise ValueError(f"{X.shape[0]} cells cannot determine {n_par} parameters (need at least {n_par + 2})")
    A = X[:, keep]
    # fit per cell: divide rows by the number of cells so that large and small cells weigh alike
    w = 1.0 / X[:, 0]
    Aw, yw = A * w[:, None], y * w
    splits = int(min(n_splits, X.shape[0]))
    cve = CrossValidationEstimator((Aw, yw), fit_method=method, validation_method="k-fold", n_splits=splits,
                                   seed=seed)
    cve.validate()
    cve.train()
    theta = np.zeros(X.shape[1])
    theta[keep] = cve.parameters
    ens = EnsembleOptimizer((Aw, yw), fit_method=method, ensemble_size=ensemble_size, seed=seed)
    ens.train()
    err = np.full(X.shape[1], np.nan)
    err[keep] = ens.parameters_std
    # cross-validated prediction error per group (each cell predicted by the fold that left it out)
    pred = np.full(y.size, np.nan)
    rng = np.random.default_rng(seed)
    order = rng.permutation(y.size)
    for f in range(splits):
        test = order[f::splits]
        train = np.setdiff1d(order, test)
        sub = CrossValidationEstimator((Aw[train], yw[train]), fit_method=method, validation_method="k-fold",
                                       n_splits=max(2, min(splits, train.size)), seed=seed, check_condition=False)
        sub.train()
        pred[test] = A[test] @ sub.parameters
    full = A @ cve.parameters
    resid_site = (pred - y) / (3.0 * X[:, 0])
    groups = {}
    for g in sorted({s["group"] for s in ts["structures"]}):
        m = np.array([s["group"] == g for s in ts["structures"]])
        groups[g] = {"n_cells": int(m.sum()), "cv_rmse_meV_per_site": float(1e3 * np.sqrt(np.mean(resid_site[m] ** 2))),
                     "cv_rmse_eV_per_cell": float(np.sqrt(np.mean((pred[m] - y[m]) ** 2)))}
    n_orb, n_loc = len(orbits_of(cut)), len(local_orbits_of(cut))
    host = theta[1:1 + n_orb]
    dv = {k: theta[1 + n_orb + i * n_loc:1 + n_orb + (i + 1) * n_loc] for i, k in enumerate(DEFECT_KINDS_CE)}
    de = {k: err[1 + n_orb + i * n_loc:1 + n_orb + (i + 1) * n_loc] for i, k in enumerate(DEFECT_KINDS_CE)}
    x_i = [float(np.sum(s["occ"] == 0) / max(1, np.sum(s["occ"] < VACANCY))) for s in ts["structures"]]
    report = {
        "method": method, "n_cells": int(y.size), "n_parameters": int(n_par), "cv_splits": splits,
        "cv_rmse_eV_per_cell_weighted": float(cve.rmse_validation),
        "groups": groups, "ensemble_size": int(ensemble_size), "seed": int(seed),
        "undetermined": [names[j] for j in range(X.shape[1]) if j not in set(keep.tolist())],
        "bridge_eV": {"IBr-II": float(theta[-2]), "BrBr-II": float(theta[-1])},
        "bridge_err_eV": {"IBr-II": _num(err[-2]), "BrBr-II": _num(err[-1])},
        "cells": {s["id"]: {"energy_eV": float(y[i]), "cv_prediction_eV": float(pred[i]),
                            "fit_prediction_eV": float(full[i])} for i, s in enumerate(ts["structures"])},
    }
    model = ClusterExpansion(cut, host, dv, E0_eV=float(theta[0]), host_err_eV=err[1:1 + n_orb],
                             defect_err_eV=de, x_I_range=(min(x_i), max(x_i)), fit=report)
    return model, report


def attach(base, model: ClusterExpansion, *, name: str, training_path: str | None = None,
           argv: list | None = None, replace_energy_model: bool = True):
    """A copy of catalog ``base`` with ``model`` as its cluster expansion (catalog schema v3).

    With ``replace_energy_model`` the base's pair energies and bridge energies are replaced by
    the fit (pairs 0, bridges from the fit relative to II), so the energy is the CE alone.
    """
    from rates.catalog import UNITS  # noqa: PLC0415

    cat = copy.deepcopy(base)
    cat.cluster_expansion = model
    cat.name = name
    src = f"ce-fit:{Path(training_path).name if training_path else 'data'}"
    if replace_energy_model:
        cat.pair_eV = np.zeros_like(cat.pair_eV)
        cat.pair_err_eV = np.full_like(cat.pair_err_eV, np.nan)
        cat.pair_source = {}
        b = model.fit.get("bridge_eV", {})
        be = model.fit.get("bridge_err_eV", {})
        cat.bridge_eV = np.array([0.0, b.get("IBr-II", 0.0), b.get("BrBr-II", 0.0)])
        cat.bridge_err_eV = np.array([np.nan, be.get("IBr-II") or np.nan, be.get("BrBr-II") or np.nan])
        cat.bridge_source = [src] * 3
    inputs = {}
    if training_path:
        inputs[Path(training_path).name] = file_sha256(training_path)
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    libs = {}
    for pkg in ("icet", "trainstation"):
        try:
            libs[pkg] = version(pkg)
        except PackageNotFoundError:  # pragma: no cover
            libs[pkg] = None
    cat.provenance = {**copy.deepcopy(base.provenance), **provenance(), "generator": "kmc rates ce-fit",
                      "argv": list(argv or []), "base_catalog": base.name, "base_catalog_sha256": base.sha256(),
                      "units": dict(UNITS), "libraries": libs,
                      "inputs": {**base.provenance.get("inputs", {}), **inputs}}
    cat.sources = {**cat.sources, src: f"cluster expansion fitted to {training_path or 'a training set'} "
                                       f"({model.fit.get('method')}, {model.fit.get('n_cells')} cells)"}
    return cat


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------
def add_ce_fit_parser(rsub) -> None:
    p = rsub.add_parser("ce-fit", help="fit a cluster-expansion energy model to cell energies; write a v3 catalog",
                        description=__doc__.split("\n\n")[0])
    p.add_argument("training", help="training set JSON (format halide-kmc-ce-training-set)")
    p.add_argument("--cutoffs", type=float, nargs="+", default=[1.3, 1.01], metavar="A",
                   help="icet cutoffs in lattice constants: pairs, triplets[, quadruplets] (default 1.3 1.01)")
    p.add_argument("--method", default="ridge", choices=list(FIT_METHODS), help="trainstation fit method")
    p.add_argument("--splits", type=int, default=5, help="k of the k-fold cross-validation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--base", default="default", help="catalog whose hop classes the new one keeps")
    p.add_argument("--keep-pairs", action="store_true",
                   help="keep the base catalog's pair and bridge energies (the CE adds to them)")
    p.add_argument("--out", "-o", required=True, help="catalog file to write")
    p.add_argument("--name", help="catalog name (default: <base>-ce)")
    p.add_argument("--force", action="store_true", help="overwrite --out")
    p.set_defaults(handler=cmd_ce_fit)


def cmd_ce_fit(args: argparse.Namespace) -> int:
    from rates.catalog import load_catalog  # noqa: PLC0415

    out = Path(args.out)
    if out.exists() and not args.force:
        raise FileExistsError(f"{out} exists (use --force to overwrite)")
    try:
        cut = _check_cutoffs(args.cutoffs)
    except ClusterExpansionError as exc:
        raise ValueError(f"--cutoffs: {exc}") from None
    ts = load_training_set(args.training)
    base = load_catalog(args.base)
    model, rep = fit_cluster_expansion(ts, cut, method=args.method, n_splits=args.splits, seed=args.seed)
    cat = attach(base, model, name=args.name or f"{base.name}-ce", training_path=args.training,
                 argv=getattr(args, "argv", []), replace_energy_model=not args.keep_pairs)
    cat.save(out)
    print(f"{rep['n_cells']} cells, {rep['n_parameters']} parameters ({rep['method']}, {rep['cv_splits']}-fold CV)")
    for g, r in rep["groups"].items():
        print(f"  {g:>16}: {r['n_cells']:4d} cells, CV RMSE {r['cv_rmse_meV_per_site']:.2f} meV/site "
              f"({r['cv_rmse_eV_per_cell']:.4f} eV/cell)")
    if rep["undetermined"]:
        print(f"  undetermined (fixed 0): {len(rep['undetermined'])} parameters")
    print(f"wrote {out}")
    return 0


# --------------------------------------------------------------------------
# Report: potential against the CE on what the issue asks for
# --------------------------------------------------------------------------
def ce_report(ts: dict, model: ClusterExpansion) -> dict:
    """Per-plane defect energies across the junctions, their interface contrast, mixing enthalpies.

    Every CE number is the k-fold cross-validation prediction of a cell the fold did not see
    (``model.fit["cells"]``), so agreement is out of sample.
    """
    cells = model.fit.get("cells") or {}
    by_id = {s["id"]: s for s in ts["structures"]}
    missing = [i for i in by_id if i not in cells]
    if missing:
        raise ValueError(f"the catalog's fit has no predictions for {len(missing)} cells of the training set "
                         f"(e.g. {missing[0]!r}): fit it from this training set")
    out = {"cv_rmse": model.fit.get("groups"), "profiles": [], "contrast": [], "mixing": []}
    # defect energies relative to the host cell, plane by plane across the heterojunctions
    for itf in ("I-rich", "Br-rich"):
        host_id = f"het-{itf}"
        if host_id not in by_id:
            continue
        e_host, p_host = cells[host_id]["energy_eV"], cells[host_id]["cv_prediction_eV"]
        for kind in DEFECT_KINDS_CE:
            rows = sorted((s for s in ts["structures"] if s.get("host_id") == host_id and s["group"] == kind),
                          key=lambda s: s["plane_x"])
            if not rows:
                continue
            pot = np.array([cells[r["id"]]["energy_eV"] - e_host for r in rows])
            ce = np.array([cells[r["id"]]["cv_prediction_eV"] - p_host for r in rows])
            planes = [int(r["plane_x"]) for r in rows]
            # symmetry-equivalent sites (one plane of a junction): the potential's own scatter
            groups = {}
            for p_, e_ in zip(planes, pot):
                groups.setdefault(p_, []).append(e_)
            dev = [v - np.mean(g) for g in groups.values() if len(g) > 1 for v in g]
            dof = sum(len(g) - 1 for g in groups.values() if len(g) > 1)
            scatter = float(np.sqrt(np.sum(np.square(dev)) / dof)) if dof else None
            # interface planes against the interiors of the two layers
            from lattice import HalideSublattice, build_heterojunction  # noqa: PLC0415

            shp = by_id[host_id]["shape"]
            cfg = build_heterojunction(HalideSublattice(tuple(shp)), shp[0] // 2, shp[0] - shp[0] // 2, interface=itf)
            itf_planes = set(int(v) for v in cfg.interface_planes)
            region = np.asarray(cfg.plane_region)
            pl = np.array(planes)
            at_itf = np.isin(pl, list(itf_planes))

            def contrast(e):
                return {lay: float(np.mean(e[at_itf]) - np.mean(e[~at_itf & (region[pl] == code)]))
                        for lay, code in (("I layer", 0), ("Br layer", 1))}

            out["interface_terms"] = out.get("interface_terms", [])
            out["interface_terms"].append({"interface": itf, "defect": kind, "interface_planes": sorted(itf_planes),
                                           "potential_eV": contrast(pot), "ce_cv_eV": contrast(ce),
                                           "equivalent_site_scatter_eV": scatter, "scatter_dof": int(dof)})
            out["profiles"].append({"interface": itf, "defect": kind, "planes": planes,
                                    "potential_eV": (pot - pot.min()).tolist(), "ce_cv_eV": (ce - ce.min()).tolist(),
                                    "rmse_eV": float(np.sqrt(np.mean(((pot - pot.mean()) - (ce - ce.mean())) ** 2)))})
            out["contrast"].append({"interface": itf, "defect": kind, "potential_range_eV": float(np.ptp(pot)),
                                    "ce_range_eV": float(np.ptp(ce)), "potential_argmin_plane": planes[int(np.argmin(pot))],
                                    "ce_argmin_plane": planes[int(np.argmin(ce))]})
    # mixing enthalpy of the random mixes (per site), potential vs CE
    mixes = [s for s in ts["structures"] if s["group"] == "host" and s["id"].startswith("mix-")]
    ends = {}
    for s in mixes:
        if s["x_I"] in (0.0, 1.0):
            ends[s["x_I"]] = s
    if 0.0 in ends and 1.0 in ends:
        for s in sorted(mixes, key=lambda s: (s["x_I"], s["id"])):
            n_site = 3.0 * float(np.prod(s["shape"]))
            x = s["x_I"]

            def h(key, s=s, x=x, n_site=n_site):
                e = cells[s["id"]][key]
                e1, e0 = cells[ends[1.0]["id"]][key], cells[ends[0.0]["id"]][key]
                return 1e3 * (e - x * e1 - (1 - x) * e0) / n_site

            out["mixing"].append({"id": s["id"], "x_I": x, "potential_meV_per_site": h("energy_eV"),
                                  "ce_cv_meV_per_site": h("cv_prediction_eV")})
    if out["mixing"]:
        d = np.array([m["potential_meV_per_site"] - m["ce_cv_meV_per_site"] for m in out["mixing"]])
        out["mixing_rmse_meV_per_site"] = float(np.sqrt(np.mean(d ** 2)))
    return out


def report_markdown(rep: dict) -> str:
    lines = ["# Cluster expansion against the potential", "",
             "CE numbers are k-fold cross-validation predictions (each cell predicted by a fit that did not see it).", ""]
    if rep.get("cv_rmse"):
        lines += ["| cells | n | CV RMSE (meV/site) | CV RMSE (eV/cell) |", "|---|---|---|---|"]
        lines += [f"| {g} | {r['n_cells']} | {r['cv_rmse_meV_per_site']:.2f} | {r['cv_rmse_eV_per_cell']:.3f} |"
                  for g, r in rep["cv_rmse"].items()]
        lines.append("")
    for p in rep["profiles"]:
        lines += [f"## {p['defect']} across the {p['interface']} heterojunction (energy vs plane, eV, min = 0)", "",
                  "| plane | " + " | ".join(str(v) for v in p["planes"]) + " |",
                  "|---|" + "---|" * len(p["planes"]),
                  "| potential | " + " | ".join(f"{v:.3f}" for v in p["potential_eV"]) + " |",
                  "| CE (CV) | " + " | ".join(f"{v:.3f}" for v in p["ce_cv_eV"]) + " |",
                  "", f"RMSE of the profile (means removed): {p['rmse_eV']:.3f} eV", ""]
    if rep["contrast"]:
        lines += ["## Interface contrast", "", "| interface | defect | range potential (eV) | range CE (eV) | "
                  "lowest plane potential | lowest plane CE |", "|---|---|---|---|---|---|"]
        lines += [f"| {c['interface']} | {c['defect']} | {c['potential_range_eV']:.3f} | {c['ce_range_eV']:.3f} | "
                  f"{c['potential_argmin_plane']} | {c['ce_argmin_plane']} |" for c in rep["contrast"]]
        lines.append("")
    if rep.get("interface_terms"):
        lines += ["## Interface planes minus the layer interiors (eV)", "",
                  "| interface | defect | potential: vs I layer | vs Br layer | CE (CV): vs I layer | vs Br layer | "
                  "potential scatter at equivalent sites |", "|---|---|---|---|---|---|---|"]
        for t in rep["interface_terms"]:
            sc = t["equivalent_site_scatter_eV"]
            lines.append(f"| {t['interface']} | {t['defect']} | {t['potential_eV']['I layer']:+.3f} | "
                         f"{t['potential_eV']['Br layer']:+.3f} | {t['ce_cv_eV']['I layer']:+.3f} | "
                         f"{t['ce_cv_eV']['Br layer']:+.3f} | {'n/a' if sc is None else f'{sc:.3f}'} |")
        lines.append("")
    if rep["mixing"]:
        lines += ["## Mixing enthalpy of the random mixes (meV/site)", "", "| cell | x_I | potential | CE (CV) |",
                  "|---|---|---|---|"]
        lines += [f"| {m['id']} | {m['x_I']:.3f} | {m['potential_meV_per_site']:.2f} | {m['ce_cv_meV_per_site']:.2f} |"
                  for m in rep["mixing"]]
        lines += ["", f"RMSE: {rep.get('mixing_rmse_meV_per_site', float('nan')):.2f} meV/site", ""]
    return "\n".join(lines) + "\n"


def add_ce_report_parser(rsub) -> None:
    p = rsub.add_parser("ce-report", help="cluster expansion vs the potential: defect energies plane by plane "
                                          "across both heterojunctions, interface contrast, mixing enthalpy")
    p.add_argument("training", help="the training set the catalog was fitted to")
    p.add_argument("catalog", help="catalog written by kmc rates ce-fit")
    p.add_argument("--out", "-o", required=True, help="directory for ce_report.json and ce_report.md")
    p.set_defaults(handler=cmd_ce_report)


def cmd_ce_report(args: argparse.Namespace) -> int:
    from common.atomic import write_text_atomic  # noqa: PLC0415
    from rates.catalog import load_catalog  # noqa: PLC0415

    ts = load_training_set(args.training)
    cat = load_catalog(args.catalog)
    if cat.cluster_expansion is None:
        raise ValueError(f"{args.catalog}: catalog has no cluster_expansion (fit one with kmc rates ce-fit)")
    rep = ce_report(ts, cat.cluster_expansion)
    rep["provenance"] = {**provenance(), "training_set": str(args.training),
                         "training_set_sha256": file_sha256(args.training), "catalog": str(args.catalog),
                         "catalog_sha256": cat.sha256()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "ce_report.json", json.dumps(rep, indent=1) + "\n")
    write_text_atomic(out / "ce_report.md", report_markdown(rep))
    print(report_markdown(rep))
    return 0
