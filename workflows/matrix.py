"""The KMC-vs-MD validation matrix: ``kmc compare --matrix SPEC --out DIR``.

One call (re)runs the MD each case still needs (:mod:`workflows.matrix_md`,
checkpointed, ``--max-wall-s``), fits catalogs from the compact MD records,
runs the KMC (:mod:`workflows.matrix_kmc`) and writes ``DIR/report.json``,
``DIR/report.md`` and plots. With ``--no-md`` only the committed records are
used, so anyone can redo the KMC side without LAMMPS.

Rows and verdicts
-----------------
*Diffusion* cases give one row per (temperature, species X/I/Br/defect, cell,
fit). The verdict estimator is the lattice-path Eq. 1 at a fixed lag
``tau = lag_fraction x`` the MD run length (default 1/4) (:func:`common.diffusion.lattice_lag_D`): the same
quantity on both sides (site-to-site displacements over the same lag), never
negative, free of the vibrational plateau that dominates the raw MSD of a run
with a few hops, and with its error from the spread of independent MD runs
and KMC replicas. The two means are compared with Welch's t (honest degrees
of freedom for a few runs): ``agree`` when the two-sided p > 0.05. A row
whose temperature has fewer than ``min_hops`` MD hops gets
``insufficient hops: N < min_hops`` and no verdict. The report also shows
the other estimators on the MD side (least-squares slope of the raw MSD as
in the paper, kinisi, hop counting with a correlation factor, bootstrap over
runs) so that their spread is visible.

*Profile* cases compare the defect's residence per halide plane (MD frames
against KMC residence times) with a Hotelling-type T^2 over planes (covariance from KMC replicas of the MD run length); *mixing* cases
the mixing counts at the end of an MD run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path

import numpy as np

from common.atomic import write_json_atomic, write_text_atomic
from common.diffusion import angle_histogram, back_hop_fraction, hop_count_D, lattice_lag_D
from common.provenance import file_sha256, provenance
from common.stats import bootstrap_mean, mean_sem, welch_compare
from common.units import K_B_EV
from workflows import matrix_kmc as MK
from workflows.matrix_md import lane_status, load_records, run_missing_md
from workflows.matrix_spec import Case, MatrixSpec, load_spec

log = logging.getLogger(__name__)

SCHEMA = "halide-kmc/validation-matrix"
SCHEMA_VERSION = 2
LEVEL = 0.95


def _species_present(recs: list[dict]) -> list[str]:
    sp = np.asarray(recs[0]["halide_species"])
    out = ["X"]
    if np.any(sp == 0) and np.any(sp == 1):
        out += ["I", "Br"]
    return out + ["defect"]


def _md_D_tau(recs, lag_ps: float, species: str) -> list[float]:
    atoms, paths = MK.md_hoplogs(recs)
    if species == "defect":
        return [lattice_lag_D(p, lag_ps, "X") for p in paths]
    return [lattice_lag_D(a, lag_ps, species) for a in atoms]


def _kinisi_combined(recs, species: str) -> dict:
    """Inverse-variance mean of the per-run kinisi medians (half the 68 % width as the error)."""
    vals, errs = [], []
    for r in recs:
        k = r.get("kinisi", {}).get(species)
        if k and "D_cm2_s" in k and k.get("hi_cm2_s") is not None:
            vals.append(k["D_cm2_s"])
            errs.append(max(0.5 * (k["hi_cm2_s"] - k["lo_cm2_s"]), 1e-30))
    if not vals:
        return {"mean": None, "err": None, "n": 0}
    w = 1.0 / np.asarray(errs) ** 2
    return {"mean": float(np.sum(w * vals) / w.sum()), "err": float(1.0 / math.sqrt(w.sum())), "n": len(vals)}


def md_estimators(recs: list[dict], lag_ps: float, species: str) -> dict:
    """Every estimator of Eq. 1 (or the defect-path D) on the MD side of one (case, T)."""
    dt = _md_D_tau(recs, lag_ps, species)
    m, s, n = mean_sem(dt)
    out = {"lattice_lag": {"mean": m, "sem": s, "n": n, "lag_ps": lag_ps},
           "bootstrap_runs": bootstrap_mean(dt, seed=1)}
    atoms, paths = MK.md_hoplogs(recs)
    logs = paths if species == "defect" else atoms
    hc = hop_count_D(logs, "X" if species == "defect" else species)
    out["hop_count"] = hc
    if species != "defect":
        sl = [r["D_eq1_cm2_s"].get(species) for r in recs]
        ms, ss, ns = mean_sem([v for v in sl if v is not None])
        out["msd_slope"] = {"mean": ms, "sem": ss, "n": ns, "fit_window": "10-50 % of the run"}
        out["kinisi"] = _kinisi_combined(recs, species)
    return out


def _verdict(n_hops: int, min_hops: int, cmp: dict) -> str:
    if n_hops < min_hops:
        return f"insufficient hops: {n_hops} < {min_hops}"
    if cmp["agree"] is None:
        return "undetermined (no error estimate)"
    return "agree" if cmp["agree"] else "disagree"


def _row(case, T, species, cell, fit, n_hops, min_hops, md, kmc_vals, unseen, kmc_extra=None) -> dict:
    """One comparison row. With a single MD run (no spread to take an error from) the row falls back to
    hop counting times the correlation factor on both sides, with Poisson and delta-method errors."""
    km, ks, kn = mean_sem(kmc_vals)
    dm = dict(md["lattice_lag"])
    estimator = "lattice_lag"
    kh = (kmc_extra or {}).get("kmc_hop_count")
    if dm["n"] < 2 and kh is not None and math.isfinite(md["hop_count"]["err_cm2_s"]):
        hc = md["hop_count"]
        dm = {"mean": hc["D_cm2_s"], "sem": hc["err_cm2_s"], "n": math.inf}
        km, ks, kn = kh["D_cm2_s"], kh["err_cm2_s"], math.inf
        estimator = "hop_count (one MD run)"
    cmp = welch_compare(dm["mean"], dm["sem"], dm["n"], km, ks, kn, level=LEVEL)
    ratio = dm["mean"] / km if (km and math.isfinite(km) and km > 0 and math.isfinite(dm["mean"])) else math.nan
    ratio_err = (abs(ratio) * math.sqrt((dm["sem"] / dm["mean"]) ** 2 + (ks / km) ** 2)
                 if math.isfinite(ratio) and dm["mean"] > 0 and math.isfinite(dm["sem"]) and math.isfinite(ks)
                 else math.nan)
    return {"case": case.id, "temperature_K": T, "species": species, "cell": cell, "fit": fit,
            "n_hops_md": n_hops, "n_runs_md": md["lattice_lag"]["n"], "D_md": dm["mean"], "D_md_err": dm["sem"],
            "D_kmc": km, "D_kmc_err": ks, "n_kmc": kn, "ratio": ratio, "ratio_err": ratio_err, **cmp,
            "verdict": _verdict(n_hops, min_hops, cmp), "verdict_estimator": estimator,
            "unseen_class_hop_fraction": unseen, "md_estimators": md, **(kmc_extra or {})}


def _correlation_stats(logs, species="X") -> dict:
    bf, npairs = back_hop_fraction_pooled(logs, species)
    return {"back_hop_fraction": bf, "n_pairs": npairs,
            "back_hop_err": math.sqrt(bf * (1 - bf) / npairs) if npairs else math.nan,
            "angles": angle_histogram(logs, species)}


def correlation_test(md: dict, kmc: dict, min_pairs: int = 10, n_mc: int = 20000, seed: int = 0) -> dict:
    """Back-hop z-score and angle-histogram p-value of MD against KMC (the KMC taken as the null model).

    The angle p-value is a Monte-Carlo G-test: multinomial samples of the MD
    pair count drawn from the KMC bin frequencies, p = share with a
    likelihood-ratio statistic at least the observed one (exact for small
    counts, where chi-square tables are not). Verdict: ``agree`` when
    ``|z| <= 2`` and ``p >= 0.05``; fewer than ``min_pairs`` MD pairs gives
    no verdict.
    """
    n_md = int(md["n_pairs"])
    err = math.hypot(md["back_hop_err"], kmc["back_hop_err"]) if n_md else math.nan
    z = (md["back_hop_fraction"] - kmc["back_hop_fraction"]) / err if n_md and err > 0 else math.nan
    obs = np.asarray(md["angles"]["counts"], dtype=np.int64)
    ref = np.asarray(kmc["angles"]["counts"], dtype=np.float64)
    p = math.nan
    if n_md and ref.sum() > 0:
        q = (ref + 0.5) / (ref + 0.5).sum()  # no empty KMC bin (half-count prior)

        def G(c):
            c = np.atleast_2d(c)
            with np.errstate(divide="ignore", invalid="ignore"):
                t = np.where(c > 0, c * np.log(c / (c.sum(axis=1, keepdims=True) * q)), 0.0)
            return 2.0 * t.sum(axis=1)

        rng = np.random.default_rng(seed)
        sims = rng.multinomial(int(obs.sum()), q, size=n_mc)
        p = float((np.count_nonzero(G(sims) >= G(obs)[0] - 1e-12) + 1) / (n_mc + 1))
    if n_md < min_pairs:
        verdict = f"insufficient pairs: {n_md} < {min_pairs}"
    else:
        verdict = "agree" if abs(z) <= 2.0 and p >= 0.05 else "disagree"
    return {"back_hop_z": z, "angles_p": p, "verdict": verdict}


def back_hop_fraction_pooled(logs, species="X"):
    n_b, n_p = 0.0, 0
    for lg in logs:
        f, n = back_hop_fraction(lg, species)
        if n:
            n_b += f * n
            n_p += n
    return (n_b / n_p if n_p else math.nan), n_p


# --------------------------------------------------------------------------
# case evaluations
# --------------------------------------------------------------------------
def _lattice_a(recs) -> float:
    return float(np.mean([r["lattice_constant_A"] for r in recs]))


def _fits(case: Case, records: dict, spec: MatrixSpec):
    """(fit name, temperature -> (catalog, obs, runs compared)) for the in-sample and held-out fits."""
    temps = [T for T in records if records[T]]
    out = {}
    obs_all = MK.md_observations(records)
    if obs_all is None:
        return out
    im = spec.kmc.interstitial_model

    def recs_of(temperatures=None, runs=None):
        return [r for T in temps if temperatures is None or T in temperatures for r in records[T]
                if runs is None or r["run_index"] in runs]

    cat_all = MK.fit_catalog(obs_all, spec.kmc.fit_mode, f"md-{case.id}-all", recs_of(), im)
    out["all"] = {T: (cat_all, obs_all, None) for T in temps}
    held = {}
    if len(case.temperatures_K) > 1:
        for T in temps:
            others = [t for t in temps if t != T]
            obs = MK.md_observations(records, temperatures=others) if others else None
            if obs is not None and obs.hop_counts.sum() > 0:
                held[T] = (MK.fit_catalog(obs, spec.kmc.fit_mode, f"md-{case.id}-without-T{T:g}",
                                          recs_of(temperatures=others), im), obs, None)
    else:
        for T in temps:
            idx = [r["run_index"] for r in records[T]]
            even = [i for i in idx if i % 2 == 0]
            odd = [i for i in idx if i % 2 == 1]
            if even and odd:
                obs = MK.md_observations(records, runs=even)
                if obs is not None and obs.hop_counts.sum() > 0:
                    held[T] = (MK.fit_catalog(obs, spec.kmc.fit_mode, f"md-{case.id}-even-runs",
                                              recs_of(runs=even), im), obs, odd)
    if held:
        out["held-out"] = held
    return out


def evaluate_diffusion(spec: MatrixSpec, case: Case, records: dict, upscale: bool = True) -> dict:
    rows, corr = [], []
    fits = _fits(case, records, spec)
    for fit, per_T in fits.items():
        for T, (cat, obs, runs) in sorted(per_T.items()):
            recs = [r for r in records[T] if runs is None or r["run_index"] in runs]
            n_hops = int(sum(r["tracking"]["n_hops"] for r in recs))
            a = _lattice_a(recs)
            total_ps = sum(r["duration_ps"] for r in recs)
            lag_ps = spec.kmc.lag_fraction * min(r["duration_ps"] for r in recs)
            cells = [("md-cell", case.shape)]
            if upscale and fit == "all" and spec.kmc.upscale_shape is not None:
                cells.append(("upscaled", spec.kmc.upscale_shape))
            for cell, shape in cells:
                reps = MK.run_replicas(case, cat, shape, T, a, spec.kmc.time_factor * total_ps * MK.PS,
                                       spec.kmc.replicas, spec.kmc.seed)
                unseen = MK.unseen_fraction(reps, obs)
                for sp in _species_present(recs):
                    md = md_estimators(recs, lag_ps, sp)
                    kv = MK.per_replica_D(reps, lag_ps * MK.PS, sp)
                    if not kv:
                        continue
                    kh = hop_count_D([r["atoms"] if sp != "defect" else r["paths"][0] for r in reps],
                                     "X" if sp == "defect" else sp, A2_per_time_to_cm2_s=1e-16)
                    if sp != "defect":
                        kh = {k: (v / reps[0]["n_defects"] if k in ("D_cm2_s", "err_cm2_s", "D_uncorrelated_cm2_s")
                                  else v) for k, v in kh.items()}
                    rows.append(_row(case, T, sp, cell, fit, n_hops, spec.min_hops, md, kv, unseen,
                                     {"kmc_hop_count": kh,
                                      "kmc_events_per_replica": float(np.mean([r["n_events"] for r in reps]))}))
                if fit == "all" and cell == "md-cell":
                    md_atoms, _ = MK.md_hoplogs(recs)
                    c_md, c_km = _correlation_stats(md_atoms), _correlation_stats([r["atoms"] for r in reps])
                    corr.append({"case": case.id, "temperature_K": T, "md": c_md, "kmc": c_km,
                                 **correlation_test(c_md, c_km, seed=spec.kmc.seed)})
    orientation = None
    if "all" in fits:
        cat0 = next(iter(fits["all"].values()))[0]
        if cat0.oriented:
            o = cat0.provenance.get("orientation", {})
            orientation = {"fits": o.get("fits"), "rotation_rates_Hz": {
                f"{T:g}": dict(zip(("rot90:II", "rot90:IBr", "rot90:BrBr", "flip:II", "flip:IBr", "flip:BrBr"),
                                   (float(v) for v in cat0.rotation_rates_Hz(T)))) for T in sorted(fits["all"])}}
    return {"rows": rows, "correlations": corr, "orientation": orientation}


def _plane_fractions_md(rec) -> np.ndarray:
    c = np.asarray(rec["layer_occupancy"]["counts"], dtype=np.float64)
    return c / c.sum() if c.sum() else c


def profile_test(md_f: np.ndarray, km_f: np.ndarray) -> tuple[float | None, int | None, float | None]:
    """Hotelling-type test of equal mean plane fractions of MD runs and KMC replicas.

    Under the hypothesis that both come from the same process, the per-run
    covariance ``C`` of the fractions is the same on both sides; it is estimated
    from the (many) KMC replicas, which do not need the few MD runs to carry
    their own. ``T2 = d^T [C (1/n_md + 1/n_kmc)]^+ d`` over the planes (one
    dimension is lost to the sum rule; the pseudo-inverse keeps the rank
    ``k``), and ``T2 (n_kmc - k) / (k (n_kmc - 1))`` follows F(k, n_kmc - k).

    Returns (T2, k, p), or Nones with fewer than 2 MD runs.
    """
    from scipy import stats as st  # noqa: PLC0415

    n_md, n_km = len(md_f), len(km_f)
    if n_md < 2 or n_km < 3:
        return None, None, None
    d = md_f.mean(axis=0) - km_f.mean(axis=0)
    C = np.cov(km_f, rowvar=False) * (1.0 / n_md + 1.0 / n_km)
    w, V = np.linalg.eigh(C)
    keep = w > w.max() * 1e-10
    k = int(keep.sum())
    if k == 0 or n_km <= k:
        return None, None, None
    y = V[:, keep].T @ d
    t2 = float(np.sum(y * y / w[keep]))
    f = t2 * (n_km - k) / (k * (n_km - 1))
    return t2, k, float(st.f.sf(f, k, n_km - k))


def evaluate_profile(spec: MatrixSpec, case: Case, records: dict) -> dict:
    out = []
    fits = _fits(case, records, spec)
    for fit, per_T in fits.items():
        for T, (cat, obs, runs) in sorted(per_T.items()):
            recs = [r for r in records[T] if (runs is None or r["run_index"] in runs) and "layer_occupancy" in r]
            if not recs:
                continue
            n_hops = int(sum(r["tracking"]["n_hops"] for r in recs))
            a = _lattice_a(recs)
            # KMC replicas like the MD runs: same start rule, same length (the approach to equilibrium from
            # the starting site is part of what is compared), and many of them for the covariance.
            dur = float(np.mean([r["duration_ps"] for r in recs]))
            n_rep = max(4 * len(recs), 48)
            reps = MK.run_replicas(case, cat, case.shape, T, a, dur * MK.PS, n_rep, spec.kmc.seed, n_obs=4)
            md_f = np.array([_plane_fractions_md(r) for r in recs])
            km_f = np.array([r["occ_time"] / r["occ_time"].sum() for r in reps])
            spp = np.asarray(reps[0]["sites_per_plane"], dtype=np.float64)
            mm = md_f.mean(axis=0)
            ms = md_f.std(axis=0, ddof=1) / math.sqrt(len(md_f)) if len(md_f) > 1 else None
            km, ks = km_f.mean(axis=0), km_f.std(axis=0, ddof=1) / math.sqrt(len(km_f))
            chi2, dof, p = profile_test(md_f, km_f)
            kT = K_B_EV * T

            def F(frac):
                ps = frac / spp
                with np.errstate(divide="ignore"):
                    return np.where(ps > 0, -kT * np.log(ps / ps.max()), np.inf)

            reg = recs[0]["layer_occupancy"].get("region")
            region = np.asarray([] if reg is None else reg, dtype=float)
            contrast = {}
            for name, f in (("md", mm), ("kmc", km)):
                if region.size == f.size:
                    pI = f[region == 0].sum() / spp[region == 0].sum()
                    pB = f[region == 1].sum() / spp[region == 1].sum()
                    contrast[name] = float(-kT * math.log(pI / pB)) if pI > 0 and pB > 0 else None
            verdict = (f"insufficient hops: {n_hops} < {spec.min_hops}" if n_hops < spec.min_hops else
                       "undetermined (one MD run)" if p is None else ("agree" if p > 1 - LEVEL else "disagree"))
            out.append({"case": case.id, "temperature_K": T, "fit": fit, "n_hops_md": n_hops, "n_runs_md": len(recs),
                        "md_fraction": mm, "md_fraction_err": ms, "kmc_fraction": km, "kmc_fraction_err": ks,
                        "md_F_eV": F(mm), "kmc_F_eV": F(km), "region": region,
                        "F_I_layer_minus_Br_layer_eV": contrast,
                        "chi2": chi2, "dof": dof, "p_value": p, "verdict": verdict,
                        "unseen_class_hop_fraction": MK.unseen_fraction(reps, obs)})
    return {"profiles": out}


def evaluate_mixing(spec: MatrixSpec, case: Case, records: dict) -> dict:
    out = []
    fits = _fits(case, records, spec)
    for fit, per_T in fits.items():
        for T, (cat, obs, runs) in sorted(per_T.items()):
            recs = [r for r in records[T] if (runs is None or r["run_index"] in runs) and "mixing" in r]
            if not recs:
                continue
            n_hops = int(sum(r["tracking"]["n_hops"] for r in recs))
            a = _lattice_a(recs)
            dur = float(np.mean([r["duration_ps"] for r in recs]))
            reps = MK.run_replicas(case, cat, case.shape, T, a, dur * MK.PS, max(spec.kmc.replicas, 16),
                                   spec.kmc.seed, n_obs=20)
            md_end = [float(r["mixing"]["events"][-1]) for r in recs]
            km_end = [float(r["mixing"][-1] - r["mixing"][0]) for r in reps]
            m1, s1, n1 = mean_sem(md_end)
            m2, s2, n2 = mean_sem(km_end)
            cmp = welch_compare(m1, s1, n1, m2, s2, n2, level=LEVEL)
            out.append({"case": case.id, "temperature_K": T, "fit": fit, "n_hops_md": n_hops, "n_runs_md": n1,
                        "time_ps": dur, "md_mixing_events": m1, "md_err": s1, "kmc_mixing_events": m2, "kmc_err": s2,
                        "n_kmc": n2, **cmp, "verdict": _verdict(n_hops, spec.min_hops, cmp),
                        "md_curves": [{"time_ps": r["mixing"]["time_ps"], "events": r["mixing"]["events"]}
                                      for r in recs],
                        "kmc_curve": {"time_ps": np.asarray(reps[0]["mixing_time_s"]) / MK.PS,
                                      "events_mean": np.mean([r["mixing"] - r["mixing"][0] for r in reps], axis=0)},
                        "unseen_class_hop_fraction": MK.unseen_fraction(reps, obs)})
    return {"mixing": out}


EVALUATORS = {"diffusion": evaluate_diffusion, "profile": evaluate_profile, "mixing": evaluate_mixing}


# --------------------------------------------------------------------------
# the whole matrix
# --------------------------------------------------------------------------
def _case_key(spec: MatrixSpec, case: Case, records: dict) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"kmc": spec.kmc.__dict__, "min_hops": spec.min_hops, "case": case.id,
                         "schema": SCHEMA_VERSION}, sort_keys=True, default=str).encode())
    for T in sorted(records):
        for r in records[T]:
            h.update(r["trajectory_sha256"].encode())
    return h.hexdigest()[:16]


def run_matrix(spec_path, out, *, run_md: bool = True, workers: int = 1, max_wall_s: float | None = None,
               cases: list[str] | None = None, plots: bool = True) -> dict:
    """Run or resume the matrix and write the report; returns the report dict."""
    from common.atomic import jsonable  # noqa: PLC0415

    spec = load_spec(spec_path)
    out = Path(out)
    if cases:
        unknown = [c for c in cases if c not in {k.id for k in spec.cases}]
        if unknown:
            raise ValueError(f"unknown case(s) {unknown}; cases in {spec.path} are {[c.id for c in spec.cases]}")
    pot_sha = file_sha256(spec.potential_path)
    # check every existing record before running anything
    all_records = {c.id: load_records(spec, c, out, pot_sha) for c in spec.cases}
    lanes = []
    if run_md:
        lanes = run_missing_md(spec, out, workers=workers, max_wall_s=max_wall_s, cases=cases)
        all_records = {c.id: load_records(spec, c, out, pot_sha) for c in spec.cases}
    report = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "spec": spec.path, "spec_sha256": spec.text_sha256,
              "potential": {"spec": spec.potential.split(":", 1)[0] + ":" + Path(spec.potential_path).name,
                            "sha256": pot_sha},
              "min_hops": spec.min_hops, "level": LEVEL, "kmc": spec.kmc.__dict__, "lanes": [], "cases": {},
              "md_lane_runs": lanes, "provenance": provenance(),
              "units": {"D": "cm^2/s", "temperature": "K", "time": "ps", "energy": "eV"},
              "verdict_estimator": f"lattice-path Eq. 1 at lag {spec.kmc.lag_fraction:g} x run_ps; Welch t-test, "
                                   "two-sided p > 0.05 agrees"}
    cache_dir = out / "kmc_cache"
    for case in spec.cases:
        records = all_records[case.id]
        for T in case.temperatures_K:
            recs = records[float(T)]
            stt = lane_status(spec, recs, case, T)
            report["lanes"].append({"case": case.id, "temperature_K": float(T), "n_runs": stt["n_runs"],
                                    "n_hops": stt["n_hops"], "md_ps": float(sum(r["duration_ps"] for r in recs)),
                                    "max_runs": case.md.max_runs,
                                    "framework_msd_A2": float(np.mean([r["framework_msd_half_run_A2"] for r in recs]))
                                    if recs else None,
                                    "lattice_constant_A": _lattice_a(recs) if recs else None,
                                    "complex_frames": int(sum(r["tracking"]["n_complex_frames"] for r in recs))})
        if cases and case.id not in cases:
            continue
        if not any(records.values()):
            report["cases"][case.id] = {"status": "no MD yet"}
            continue
        key = _case_key(spec, case, records)
        cp = cache_dir / f"{case.id}.json"
        res = None
        if cp.is_file():
            try:
                cached = json.loads(cp.read_text())
                if cached.get("key") == key:
                    res = cached["result"]
            except (OSError, json.JSONDecodeError):
                res = None
        if res is None:
            log.info("KMC side of %s", case.id)
            try:
                res = jsonable(EVALUATORS[case.compare](spec, case, records))
            except ValueError as exc:  # a rate fit the MD does not support: a row of its own, not an abort
                log.warning("%s: KMC side failed: %s", case.id, exc)
                report["cases"][case.id] = {"compare": case.compare, "status": f"KMC side failed: {exc}"}
                continue
            write_json_atomic(cp, {"key": key, "result": res})
        report["cases"][case.id] = {"compare": case.compare, **res}
    if cases:
        _carry_over(report, out / "report.json", [c.id for c in spec.cases if c.id not in cases])
    report = jsonable(report)
    write_json_atomic(out / "report.json", report)
    write_text_atomic(out / "report.md", format_report(report))
    if plots:
        try:
            from workflows.matrix_plots import write_plots  # noqa: PLC0415

            write_plots(report, out / "plots")
        except Exception as exc:  # noqa: BLE001 - the report must survive a plotting problem
            log.warning("plots failed: %s", exc)
    return report


def _carry_over(report: dict, previous_path: Path, case_ids: list[str]) -> None:
    """Cases not evaluated this time keep their results from the previous report of the same spec and potential."""
    try:
        prev = json.loads(previous_path.read_text())
    except (OSError, json.JSONDecodeError):
        return
    if prev.get("spec_sha256") != report["spec_sha256"] or prev.get("potential") != report["potential"]:
        log.warning("%s: made from another spec or potential; cases not run now are left out", previous_path)
        return
    for cid in case_ids:
        if cid in prev.get("cases", {}):
            report["cases"][cid] = prev["cases"][cid]


# --------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------
def _e(m, e=None, fmt=".2e"):
    if m is None or (isinstance(m, float) and not math.isfinite(m)):
        return "n/a"
    if e is None or (isinstance(e, float) and not math.isfinite(e)):
        return f"{m:{fmt}}"
    return f"{m:{fmt}} ± {e:.1e}" if fmt.endswith("e") else f"{m:{fmt}} ± {e:{fmt}}"


def verdict_counts(report: dict) -> dict:
    c = {"agree": 0, "disagree": 0, "insufficient hops": 0, "other": 0}
    for case in report["cases"].values():
        for r in (case.get("rows", []) + case.get("profiles", []) + case.get("mixing", [])
                  + case.get("correlations", [])):
            v = r["verdict"]
            k = "insufficient hops" if v.startswith("insufficient") else v if v in c else "other"
            c[k] += 1
    return c


def format_report(report: dict) -> str:
    L = ["# Validation matrix: KMC against direct MD", "",
         f"Potential `{report['potential']['spec']}` (sha256 {report['potential']['sha256'][:12]}), "
         f"spec `{Path(report['spec']).name}` (sha256 {report['spec_sha256'][:12]}), "
         f"git {report['provenance'].get('git_revision', '?')[:12]}, {report['provenance'].get('created_utc')}.", "",
         "Verdict estimator: " + report["verdict_estimator"] + f"; a temperature with fewer than "
         f"{report['min_hops']} MD hops gets no verdict.", ""]
    vc = verdict_counts(report)
    L += [f"Verdicts: {vc['agree']} agree, {vc['disagree']} disagree, {vc['insufficient hops']} insufficient hops"
          + (f", {vc['other']} undetermined" if vc["other"] else "") + ".", "", "## MD lanes", "",
          "| case | T (K) | runs | MD ps | hops | a (A) | framework MSD (A^2) | complex frames |",
          "|---|---|---|---|---|---|---|---|"]
    for ln in report["lanes"]:
        L.append(f"| {ln['case']} | {ln['temperature_K']:g} | {ln['n_runs']}/{ln['max_runs']} | {ln['md_ps']:.0f} | "
                 f"{ln['n_hops']} | {_e(ln['lattice_constant_A'], fmt='.3f')} | {_e(ln['framework_msd_A2'], fmt='.2f')} | "
                 f"{ln['complex_frames']} |")
    L += ["", "Framework MSD: mean squared displacement of Pb and Cs over half a run; it stays near 1 A^2 "
          "(vibrations) while the cell is a cubic crystal and grows without bound if it melts.", ""]
    rows = [r for c in report["cases"].values() for r in c.get("rows", [])]
    if rows:
        L += ["## Diffusion (Eq. 1 per defect, cm^2/s)", "",
              "| case | T (K) | sp | cell | fit | MD hops | D_MD | D_KMC | MD/KMC | t (dof) | p | unseen | verdict |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            t = "n/a" if r["t"] is None else f"{r['t']:+.1f} ({r['dof']:.0f})"
            p = "n/a" if r["p_value"] is None else f"{r['p_value']:.2f}"
            un = "n/a" if r["unseen_class_hop_fraction"] is None else f"{100 * r['unseen_class_hop_fraction']:.0f} %"
            L.append(f"| {r['case']} | {r['temperature_K']:g} | {r['species']} | {r['cell']} | {r['fit']} | "
                     f"{r['n_hops_md']} | {_e(r['D_md'], r['D_md_err'])} | {_e(r['D_kmc'], r['D_kmc_err'])} | "
                     f"{_e(r['ratio'], r['ratio_err'], '.2f')} | {t} | {p} | {un} | {r['verdict']} |")
        L += ["", "### MD estimators side by side (fit: all, MD cell)", "",
              "| case | T (K) | sp | lattice lag (verdict) | bootstrap runs (sd) | hop count x f | f | raw MSD slope | kinisi |",
              "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if r["fit"] != "all" or r["cell"] != "md-cell":
                continue
            m = r["md_estimators"]
            hc = m["hop_count"]
            ms = m.get("msd_slope", {})
            kn = m.get("kinisi", {})
            L.append(f"| {r['case']} | {r['temperature_K']:g} | {r['species']} | "
                     f"{_e(m['lattice_lag']['mean'], m['lattice_lag']['sem'])} | {_e(m['bootstrap_runs']['mean'], m['bootstrap_runs']['sd'])} | "
                     f"{_e(hc['D_cm2_s'], hc['err_cm2_s'])} | {_e(hc['f'], fmt='.2f')} | "
                     f"{_e(ms.get('mean'), ms.get('sem'))} | {_e(kn.get('mean'), kn.get('err'))} |")
    corr = [c for case in report["cases"].values() for c in case.get("correlations", [])]
    if corr:
        L += ["", "### Successive hops of the same atom (MD cell, fit: all)", "",
              "Back-hop fraction: share of an atom's consecutive hop pairs in which the second hop returns it.", "",
              "| case | T (K) | MD back-hop | KMC back-hop | z | MD pairs | MD cos histogram | KMC cos histogram "
              "| angles p | verdict |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        for c in corr:
            L.append(f"| {c['case']} | {c['temperature_K']:g} | {_e(c['md']['back_hop_fraction'], c['md']['back_hop_err'], '.3f')} | "
                     f"{_e(c['kmc']['back_hop_fraction'], c['kmc']['back_hop_err'], '.3f')} | "
                     f"{_e(c.get('back_hop_z'), fmt='+.1f')} | {c['md']['n_pairs']} | "
                     f"{c['md']['angles']['counts']} | {c['kmc']['angles']['counts']} | "
                     f"{_e(c.get('angles_p'), fmt='.2f')} | {c.get('verdict', 'n/a')} |")
        L += ["", "cos bins: [-1, -0.75), [-0.75, -0.25), [-0.25, 0.25), [0.25, 0.75), [0.75, 1]. "
              "z: back-hop difference over the combined error; angles p: Monte-Carlo G-test of the MD histogram "
              "against the KMC frequencies; agree when |z| <= 2 and p >= 0.05."]
    ori = [(cid, c["orientation"]) for cid, c in report["cases"].items() if c.get("orientation")]
    if ori:
        L += ["", "### Interstitial orientation: rotation rates fitted from the MD hop pairs (fit: all)", "",
              "Relations of an interstitial's next hop to the landing orientation of its last one "
              "(aligned / crossing / perpendicular, pairs per temperature), the fitted ratios to the aligned "
              "hop rate (r: 90-degree rotation, f: flip; joint fit over temperatures) and the rates at each "
              "temperature (`rates.orientation_fit`).", "",
              "| case | bridge | source | pairs (a/c/p) per T | ln r | ln f (68 % upper bound) | rot90 rate (Hz) at T | flip rate (Hz) at T |",
              "|---|---|---|---|---|---|---|---|"]
        for cid, o in ori:
            for br, f in (o.get("fits") or {}).items():
                if f["source"] != "md":
                    continue  # compositions the case lacks take the mean of the fitted ones
                pairs = "; ".join(f"{r['temperature_K']:g} K: {r['counts']['aligned']}/{r['counts']['crossing']}/"
                                  f"{r['counts']['perpendicular']}" for r in f.get("per_T", [])) or "none"
                lr, lf = f["rot90"], f["flip"]
                up = lf.get("ln_ratio_upper_68")
                lnf = (f"< {up:.2f}" if up is not None else _e(lf.get("ln_ratio"), lf.get("ln_ratio_err"), ".2f")) \
                    if f["source"] == "md" else "n/a"
                rates = o["rotation_rates_Hz"]
                rr = ", ".join(f"{T}: {v[f'rot90:{br}']:.2e}" for T, v in rates.items())
                fr = ", ".join(f"{T}: {v[f'flip:{br}']:.1e}" for T, v in rates.items())
                L.append(f"| {cid} | {br} | {f['source']} | {pairs} | "
                         f"{_e(lr.get('ln_ratio'), lr.get('ln_ratio_err'), '.2f') if f['source'] == 'md' else 'n/a'} | "
                         f"{lnf} | {rr} | {fr} |")
    prof = [p for c in report["cases"].values() for p in c.get("profiles", [])]
    if prof:
        L += ["", "## Heterojunction occupancy profiles", "",
              "| case | T (K) | fit | MD hops | runs | T2 / dof | p | F(I layer) - F(Br layer) MD | KMC | verdict |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        for p in prof:
            c = p["F_I_layer_minus_Br_layer_eV"]
            chi = "n/a" if p["chi2"] is None else f"{p['chi2']:.1f} / {p['dof']}"
            L.append(f"| {p['case']} | {p['temperature_K']:g} | {p['fit']} | {p['n_hops_md']} | {p['n_runs_md']} | {chi} | "
                     f"{'n/a' if p['p_value'] is None else format(p['p_value'], '.2f')} | "
                     f"{_e(c.get('md'), fmt='+.3f')} | {_e(c.get('kmc'), fmt='+.3f')} | {p['verdict']} |")
    mix = [m for c in report["cases"].values() for m in c.get("mixing", [])]
    if mix:
        L += ["", "## Nanodomain mixing counts", "",
              "| case | T (K) | fit | MD hops | time (ps) | MD events | KMC events | p | verdict |", "|---|---|---|---|---|---|---|---|---|"]
        for m in mix:
            L.append(f"| {m['case']} | {m['temperature_K']:g} | {m['fit']} | {m['n_hops_md']} | {m['time_ps']:.0f} | "
                     f"{_e(m['md_mixing_events'], m['md_err'], '.2f')} | {_e(m['kmc_mixing_events'], m['kmc_err'], '.2f')} | "
                     f"{'n/a' if m['p_value'] is None else format(m['p_value'], '.2f')} | {m['verdict']} |")
    missing = [k for k, v in report["cases"].items() if v.get("status") == "no MD yet"]
    if missing:
        L += ["", "No MD records yet: " + ", ".join(missing) + "."]
    failed = [(k, v["status"]) for k, v in report["cases"].items() if str(v.get("status", "")).startswith("KMC side")]
    if failed:
        L += ["", "## Cases without a KMC comparison", ""] + [f"- {k}: {msg}" for k, msg in failed]
    return "\n".join(L) + "\n"
