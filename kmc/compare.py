"""``kmc compare``: diffusion from direct MD against KMC driven by rate catalogs.

Reads the JSON summary of ``kmc md analyze`` (D by Eq. 1 per temperature,
mean and standard error over runs, and the simulated cell), runs the KMC with
each catalog on the same cell (same shape, composition, lattice constant and
defect) at the same temperatures, and optionally on a larger cell, then
reports ``D_MD / D_KMC`` with its uncertainty and whether the two agree
within the combined uncertainty (``|z| <= 2``, z = difference over the
combined standard error).

The KMC's Eq. 1 counts site-to-site displacements only; the MD's also holds
the vibrations and the dumbbell offsets of the bridge atoms, which are bounded
and do not change the long-time slope.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np

from common.atomic import write_text_atomic
from common.stats import welch_compare
from kmc.analysis import fit_arrhenius
from kmc.config import resolve
from rates.catalog import load_catalog

log = logging.getLogger(__name__)

SPECIES_KEYS = {"X": "all", "I": "I", "Br": "Br"}
# Rows: D by Eq. 1 for all halides (X), I and Br, and "defect": D of the defect's
# own path (MD: the tracked site sequence; KMC: the defect's unwrapped path).
SCHEMA = "halide-kmc/compare"


def load_md_analysis(path) -> dict:
    """The ``kmc md analyze`` summary, checked."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"MD analysis file {str(p)!r} not found")
    try:
        d = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p} is not JSON: {exc}") from None
    if not isinstance(d, dict) or d.get("schema") != "halide-kmc/md-analysis":
        got = d.get("schema") if isinstance(d, dict) else type(d).__name__
        raise ValueError(f"{p} is not a 'kmc md analyze' summary (schema {got!r})")
    from common.schemas import MD_ANALYSIS_FOR_COMPARE, check  # noqa: PLC0415

    check(d, MD_ANALYSIS_FOR_COMPARE, str(p))
    if not d.get("per_temperature") or not d.get("runs"):
        raise ValueError(f"{p} holds no analysed runs")
    return d


def md_cell(md: dict) -> dict:
    """Shape, configuration, lattice constant and defect of the analysed MD cell."""
    runs = md["runs"]
    conf = runs[0]["configuration"]
    kinds = {tuple(r["tracking"]["defect_kinds"]) for r in runs}
    shapes = {tuple(r["configuration"]["shape"]) for r in runs}
    if len(kinds) != 1 or len(shapes) != 1:
        raise ValueError("the MD runs mix cells or defects; compare one set-up at a time")
    kind_list = list(kinds.pop())
    params = {k: v for k, v in conf.items() if k not in ("kind", "shape", "n_sites", "x_I", "axis")}
    if conf["kind"] == "random":
        params = {"x_I": conf.get("x_I")}
    a = float(np.mean([r["lattice_constant_A"] for r in runs]))
    return {"kind": conf["kind"], "shape": list(shapes.pop()), "params": params, "lattice_constant_A": a,
            "vacancies": kind_list.count("vacancy"), "interstitials": kind_list.count("interstitial")}


def kmc_config(cell: dict, shape, temperatures, catalog: str, out_dir: Path, events: int, replicas: int,
               seed: int, workers: int) -> dict:
    """A resolved KMC config reproducing the MD cell (scaled to ``shape``, same defect density)."""
    n_md = int(np.prod(cell["shape"]))
    n_new = int(np.prod(shape))
    scale = max(1, round(n_new / n_md))
    raw = {
        "lattice": {"shape": list(shape), "lattice_constant_A": cell["lattice_constant_A"]},
        "configuration": {"kind": cell["kind"], **cell["params"]},
        "defects": {"vacancies": cell["vacancies"] * scale, "interstitials": cell["interstitials"] * scale,
                    "placement": "random"},
        "run": {"temperatures_K": [float(t) for t in temperatures], "max_events": int(events),
                "n_observations": 100, "replicas": int(replicas), "seed": int(seed), "catalog": catalog,
                "workers": int(workers)},
        "output": {"directory": str(out_dir), "plots": False},
    }
    return resolve(raw)


def _ratio(md_m, md_e, k_m, k_e, n_md=None, n_kmc=None, n_hops=None, min_hops: int = 50) -> dict:
    """D_MD / D_KMC with its error and a Welch t comparison (t-distributed for a few runs).

    A zero D is a value, not a missing one. With fewer than ``min_hops`` MD hops
    the row gets no verdict (``agree`` None, ``verdict`` "insufficient hops").
    """
    out = {"ratio": None, "ratio_err": None, "z": None, "dof": None, "p_value": None, "agree": None}
    if not all(v is not None and math.isfinite(v) for v in (md_m, k_m)):
        out["verdict"] = "no value"
        return out
    md_e = md_e if md_e is not None and math.isfinite(md_e) else math.nan
    k_e = k_e if k_e is not None and math.isfinite(k_e) else math.nan
    if k_m > 0:
        r = md_m / k_m
        out["ratio"] = r
        out["ratio_err"] = abs(r) * math.sqrt((md_e / md_m) ** 2 + (k_e / k_m) ** 2) if md_m else math.nan
    cmp = welch_compare(md_m, md_e, n_md if n_md is not None else 0, k_m, k_e, n_kmc if n_kmc is not None else 0)
    out.update(z=cmp["t"], dof=cmp["dof"], p_value=cmp["p_value"], agree=cmp["agree"])
    if n_hops is not None and n_hops < min_hops:
        out["agree"] = None
        out["verdict"] = f"insufficient hops: {n_hops} < {min_hops}"
    else:
        out["verdict"] = "undetermined" if out["agree"] is None else ("agree" if out["agree"] else "disagree")
    return out


def compare(md_path, catalogs: list[str], out_dir, *, upscale_shape=None, events: int = 200_000,
            replicas: int = 8, seed: int = 1, workers: int = 1, species=("X", "I", "Br"),
            min_hops: int = 50) -> dict:
    """Run the KMC for every catalog (and cell) and tabulate D_MD / D_KMC."""
    from kmc.runner import provenance, run_all  # noqa: PLC0415

    md = load_md_analysis(md_path)
    cell = md_cell(md)
    temps = [e["temperature_K"] for e in md["per_temperature"]]
    out = Path(out_dir)
    rows, kmc_results = [], []
    shapes = [("md-cell", cell["shape"])]
    if upscale_shape is not None:
        shapes.append(("upscaled", list(upscale_shape)))
    for cat in catalogs:
        catalog = load_catalog(cat)
        for label, shape in shapes:
            sub = out / f"{Path(str(cat)).stem}_{label}"
            cfg = kmc_config(cell, shape, temps, cat, sub, events, replicas, seed, workers)
            summ = run_all(cfg, resume=False, progress=False)
            kmc_results.append({"catalog": str(cat), "catalog_name": catalog.name, "catalog_sha256": catalog.sha256(),
                                "cell": label, "shape": shape, "summary": str(sub / "summary.json")})
            for e_md, e_k in zip(md["per_temperature"], summ["per_temperature"], strict=True):
                defect_kind = "interstitial" if cell["interstitials"] else "vacancy"
                for sp in (*species, "defect"):
                    if sp == "defect":  # the tracked defect's own path against the KMC defect's
                        dm = e_md.get("D_defect_cm2_s", {})
                        dk = e_k["D_defect_cm2_s"].get(defect_kind, {})
                    else:
                        dm = e_md["D_eq1_cm2_s"][sp]
                        dk = e_k["D_eq1_per_defect_cm2_s"].get(SPECIES_KEYS[sp], {})
                    if dm.get("mean") is None or not math.isfinite(dm["mean"]):
                        continue
                    rows.append({
                        "catalog": catalog.name, "cell": label, "shape": shape, "temperature_K": e_md["temperature_K"],
                        "species": sp, "D_md": dm["mean"], "D_md_err": dm["sem"], "n_md_runs": dm["n"],
                        "D_kmc": dk.get("mean"), "D_kmc_err": dk.get("sem"), "n_kmc_runs": dk.get("n"),
                        "n_hops_md": e_md.get("n_hops"),
                        **_ratio(dm["mean"], dm["sem"], dk.get("mean"), dk.get("sem"), dm.get("n"), dk.get("n"),
                                 e_md.get("n_hops"), min_hops),
                    })
    fits = {}
    for sp in (*species, "defect"):
        T = [e["temperature_K"] for e in md["per_temperature"]]
        src = [e.get("D_defect_cm2_s", {}) if sp == "defect" else e["D_eq1_cm2_s"][sp] for e in md["per_temperature"]]
        D = [d.get("mean") for d in src]
        De = [d.get("sem") for d in src]
        try:
            fits[f"md:{sp}"] = fit_arrhenius(T, D, De)
        except (ValueError, TypeError):
            pass
        for cat in {r["catalog"] for r in rows}:
            for label, _ in shapes:
                sel = [r for r in rows if r["catalog"] == cat and r["cell"] == label and r["species"] == sp]
                try:
                    fits[f"kmc:{cat}:{label}:{sp}"] = fit_arrhenius([r["temperature_K"] for r in sel],
                                                                   [r["D_kmc"] for r in sel],
                                                                   [r["D_kmc_err"] for r in sel])
                except (ValueError, TypeError):
                    pass
    result = {"schema": SCHEMA, "schema_version": 1, "md_analysis": str(md_path), "md_cell": cell,
              "kmc": kmc_results, "rows": rows, "arrhenius": fits, "provenance": provenance(),
              "units": {"D": "cm^2/s", "temperature": "K"},
              "criterion": "Welch t-test of the two means (standard errors over runs / replicas), agree when the "
                           f"two-sided p > 0.05; no verdict with fewer than {min_hops} MD hops"}
    out.mkdir(parents=True, exist_ok=True)
    from kmc.runner import _clean  # noqa: PLC0415

    write_text_atomic((out / "compare.json"), json.dumps(_clean(result), indent=1) + "\n")
    try:
        _plot(result, out / "compare_arrhenius.png")
    except Exception as exc:  # noqa: BLE001 - the table must survive a plotting problem
        log.warning("plot failed: %s", exc)
    return result


def _plot(result: dict, path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(5.5, 4))
    rows = [r for r in result["rows"] if r["species"] == "X"]
    seen = set()
    for r in rows:
        key = ("MD", r["temperature_K"])
        if key not in seen:
            seen.add(key)
            ax.errorbar(1000 / r["temperature_K"], r["D_md"], yerr=r["D_md_err"] or 0, fmt="ks",
                        label="MD (Eq. 1)" if len(seen) == 1 else None)
    markers = iter("o^vD<>")
    for cat in sorted({(r["catalog"], r["cell"]) for r in rows}):
        sel = sorted([r for r in rows if (r["catalog"], r["cell"]) == cat], key=lambda r: r["temperature_K"])
        x = [1000 / r["temperature_K"] for r in sel]
        ax.errorbar(x, [r["D_kmc"] for r in sel], yerr=[r["D_kmc_err"] or 0 for r in sel], fmt=next(markers, "o") + "-",
                    mfc="none", label=f"KMC {cat[0]} ({cat[1]})")
    ax.set_yscale("log")
    ax.set_xlabel("1000 / T (1/K)")
    ax.set_ylabel("D, Eq. 1 (cm$^2$/s)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_table(result: dict) -> str:
    lines = [f"{'catalog':<28} {'cell':<9} {'T (K)':>6} {'sp':>6} {'D_MD (cm2/s)':>20} {'D_KMC (cm2/s)':>20} "
             f"{'MD/KMC':>14} {'t':>6} verdict"]
    for r in result["rows"]:
        def f(m, e):
            if m is None:
                return "n/a"
            return f"{m:.3e}+-{e:.1e}" if e is not None and math.isfinite(e) else f"{m:.3e}"
        ratio = "n/a" if r["ratio"] is None else (f"{r['ratio']:.2f}+-{r['ratio_err']:.2f}"
                                                  if r["ratio_err"] is not None and math.isfinite(r["ratio_err"])
                                                  else f"{r['ratio']:.2f}")
        z = "n/a" if r["z"] is None or not math.isfinite(r["z"]) else f"{r['z']:+.1f}"
        lines.append(f"{r['catalog'][:28]:<28} {r['cell']:<9} {r['temperature_K']:6g} {r['species']:>6} "
                     f"{f(r['D_md'], r['D_md_err']):>20} {f(r['D_kmc'], r['D_kmc_err']):>20} {ratio:>14} {z:>6} "
                     f"{r.get('verdict', '')}")
    return "\n".join(lines)


def add_compare_parser(sub) -> None:
    p = sub.add_parser("compare", help="D from direct MD against KMC driven by rate catalogs",
                       description="Run the KMC with each catalog on the cell of a 'kmc md analyze' summary "
                                   "(and optionally a larger one) at its temperatures; print D_MD / D_KMC with "
                                   "uncertainties and write compare.json and an Arrhenius plot. With --matrix: "
                                   "the validation matrix (run or resume the MD it needs, fit catalogs, run the "
                                   "KMC, write report.md/report.json).")
    p.add_argument("md_analysis", nargs="?", help="md_analysis.json written by 'kmc md analyze'")
    p.add_argument("--catalog", "-c", action="append", help="rate catalog (repeatable; 'default')")
    p.add_argument("--upscale-shape", nargs=3, type=int, metavar=("NX", "NY", "NZ"),
                   help="also run on this larger cell (same defect density)")
    p.add_argument("--events", type=int, default=200_000, help="KMC events per run")
    p.add_argument("--replicas", type=int, default=8, help="KMC runs per temperature")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workers", type=int, default=1, help="parallel processes (matrix: MD lanes at a time)")
    p.add_argument("--out", "-o", default=None, help="output folder (default: compare, or validation with --matrix)")
    m = p.add_argument_group("validation matrix")
    m.add_argument("--matrix", metavar="SPEC", help="matrix spec (TOML), e.g. validation/matrix.toml")
    m.add_argument("--no-md", action="store_true", help="use the MD records there are; run no MD")
    m.add_argument("--max-wall-s", type=float, help="stop the MD after this wall time (runs stop at a checkpoint)")
    m.add_argument("--case", action="append", dest="cases", help="only this case (repeatable)")
    m.add_argument("--no-plots", action="store_true")
    m.add_argument("--status", action="store_true", help="print the MD lanes (runs, hops) and exit")
    p.set_defaults(handler=cmd_compare)


def cmd_compare(args) -> int:
    if args.matrix:
        return cmd_matrix(args)
    if not args.md_analysis or not args.catalog:
        raise ValueError("kmc compare needs an md_analysis.json and at least one --catalog (or --matrix SPEC)")
    out = args.out or "compare"
    result = compare(args.md_analysis, args.catalog, out, upscale_shape=args.upscale_shape,
                     events=args.events, replicas=args.replicas, seed=args.seed, workers=args.workers)
    print(format_table(result))
    print(f"\nwrote {Path(out) / 'compare.json'} and {Path(out) / 'compare_arrhenius.png'}")
    return 0


def cmd_matrix(args) -> int:
    """``kmc compare --matrix``: the CLI is the one place where kmc reaches the MD side."""
    from workflows.matrix import format_report, run_matrix, verdict_counts  # noqa: PLC0415
    from workflows.matrix_md import lane_table  # noqa: PLC0415
    from workflows.matrix_spec import load_spec  # noqa: PLC0415

    out = Path(args.out or "validation")
    if args.status:
        spec = load_spec(args.matrix)
        print(f"{'case':<22} {'T (K)':>7} {'runs':>5} {'MD ps':>7} {'hops':>5}  status")
        for r in lane_table(spec, out):
            print(f"{r['case']:<22} {r['temperature_K']:7g} {r['n_runs']:5d} {r['md_ps']:7.0f} {r['n_hops']:5d}  "
                  f"{'needs runs' if r['needs_run'] else 'done'}")
        return 0
    logging.getLogger("workflows").setLevel(logging.INFO)
    report = run_matrix(args.matrix, out, run_md=not args.no_md, workers=args.workers, max_wall_s=args.max_wall_s,
                        cases=args.cases, plots=not args.no_plots)
    text = format_report(report)
    print(text)
    vc = verdict_counts(report)
    print(f"wrote {out / 'report.md'} and {out / 'report.json'}: {vc['agree']} agree, {vc['disagree']} disagree, "
          f"{vc['insufficient hops']} insufficient hops")
    return 0
