"""The ``kmc`` command.

``kmc run [CONFIG]``          run a configured KMC job set (the embedded default without CONFIG)
``kmc config``                print the embedded default config (a template)
``kmc rates show [CATALOG]``  print a catalog as a table
``kmc rates fit --md A.json --out C.json``  fit per-class hop rates to MD hop counts and write a catalog
``kmc rates fit --neb R.json [--md A.json] --out C.json``  catalog from NEB records (MD classes take precedence)
``kmc compare MD.json -c CAT``  D from direct MD against KMC with rate catalogs
``kmc compare --matrix SPEC``  the KMC-vs-MD validation matrix
``kmc sweep SWEEP.toml``       a base config times axes over config keys, on Dask
``kmc md run|analyze ...``    direct MD with LAMMPS and its analysis (needs the ``md`` extra;
                              defined in :mod:`md_reference.cli`, loaded only for these commands)
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

import numpy as np

from kmc.config import ConfigError, default_config_text, load_config
from kmc.errors import Interrupted
from rates.catalog import CatalogError, MissingRateError, load_catalog


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="run KMC jobs (temperatures x replicas) from a TOML config",
                       description="Run KMC jobs. Without CONFIG the embedded default runs "
                                   "(a CsPbI3 nanodomain in CsPbBr3 with defects at 300 K, ~1e6 sites).")
    p.add_argument("config", nargs="?", help="TOML config file (default: the embedded default)")
    p.add_argument("--shape", nargs=3, type=int, metavar=("NX", "NY", "NZ"), help="lattice size in unit cells")
    p.add_argument("--temperature", "-T", nargs="+", type=float, help="temperature(s) in K")
    p.add_argument("--time", type=float, help="simulated time per run, s")
    p.add_argument("--events", type=int, help="maximum number of events per run")
    p.add_argument("--seed", type=int, help="master seed")
    p.add_argument("--catalog", help="rate catalog file ('default' for the embedded one)")
    p.add_argument("--replicas", type=int, help="independent runs per temperature")
    p.add_argument("--workers", type=int, help="parallel processes")
    p.add_argument("--observations", type=int, help="observations per run")
    p.add_argument("--vacancies", type=int, help="number of vacancies")
    p.add_argument("--interstitials", type=int, help="number of split interstitials")
    p.add_argument("--out", "-o", help="output directory")
    p.add_argument("--resume", action="store_true", help="continue interrupted jobs from their checkpoints")
    p.add_argument("--restart-corrupt", action="store_true",
                   help="with --resume: set damaged run files / checkpoints aside (*.corrupt-<time>) and rerun those jobs")
    p.add_argument("--no-plots", action="store_true", help="skip the plots")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def cmd_run(args) -> int:
    from kmc.runner import run_all

    cfg = load_config(args.config)
    overrides = {
        "lattice.shape": list(args.shape) if args.shape else None,
        "run.temperatures_K": args.temperature,
        "run.time_s": args.time,
        "run.max_events": args.events,
        "run.seed": args.seed,
        "run.catalog": args.catalog,
        "run.replicas": args.replicas,
        "run.workers": args.workers,
        "run.n_observations": args.observations,
        "defects.vacancies": args.vacancies,
        "defects.interstitials": args.interstitials,
        "output.directory": args.out,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if args.no_plots:
        overrides["output.plots"] = False
    cfg = cfg.with_overrides(overrides)
    summary = run_all(cfg, resume=args.resume, progress=not args.quiet, restart_corrupt=args.restart_corrupt)
    _print_summary(summary)
    print(f"\nwrote {cfg.output.directory}/summary.json")
    return 0


def _fmt(v, err=None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if err is None or (isinstance(err, float) and math.isnan(err)):
        return f"{v:.3e}"
    return f"{v:.3e} +- {err:.1e}"


def _print_summary(summary: dict) -> None:
    print(f"{'T (K)':>7} {'runs':>4} {'events/run':>11} {'t/run (s)':>10}  "
          f"{'D_Eq1 all (cm2/s)':>24} {'D_Eq1 I':>24} {'D_Eq1 Br':>24}")
    for e in summary["per_temperature"]:
        D = e["D_eq1_per_defect_cm2_s"]
        print(f"{e['temperature_K']:7g} {e['replicas']:4d} {sum(e['n_events']) / len(e['n_events']):11.3e} "
              f"{e['time_s'][0]:10.3e}  {_fmt(D['all']['mean'], D['all']['sem']):>24} "
              f"{_fmt(D['I']['mean'], D['I']['sem']):>24} {_fmt(D['Br']['mean'], D['Br']['sem']):>24}")
        for kind, v in e["D_defect_cm2_s"].items():
            print(f"{'':7} defect D ({kind}): {_fmt(v['mean'], v['sem'])} cm2/s")
        for m in e["mixing_final"]:
            if m["domain_halides_outside"] or m["matrix_halides_inside"]:
                print(f"{'':7} mixing: {m['domain_halides_outside']} domain halides outside, "
                      f"{m['matrix_halides_inside']} matrix halides inside")
    for key, fit in summary.get("arrhenius", {}).items():
        if "Ea_eV" in fit:
            print(f"Arrhenius {key}: Ea = {_fmt(fit['Ea_eV'], fit['Ea_err_eV'])} eV, D0 = {_fmt(fit['D0'])} cm2/s, "
                  f"D(300 K) = {_fmt(fit['D_ref'])} cm2/s")


def cmd_config(args) -> int:
    sys.stdout.write(default_config_text())
    return 0


def cmd_rates_show(args) -> int:
    from lattice.environment import class_label

    cat = load_catalog(args.catalog)
    print(f"catalog: {cat.name}  (sha256 {cat.sha256()[:16]})")
    if cat.description:
        print(cat.description)
    print(f"temperature range: {cat.temperature_range_K[0]:g}-{cat.temperature_range_K[1]:g} K; "
          f"lattice constants: I {cat.lattice_constant_A['I']} A, Br {cat.lattice_constant_A['Br']} A")
    print("\nbridge energies (eV):", ", ".join(f"{n} {v:+.4f}" for n, v in zip(("II", "IBr", "BrBr"), cat.bridge_eV)))
    names = ("I", "Br", "V", "B")
    pairs = [f"{names[a]}-{names[b]} {cat.pair_eV[a, b]:+.4f}" for a in range(4) for b in range(a, 4)
             if cat.pair_eV[a, b] != 0]
    print("pair energies (eV):", ", ".join(pairs) if pairs else "all zero")
    print(f"\n{'id':>4} {'class':<22} {'E_KRA (eV)':>12} {'+-':>7} {'prefactor (Hz)':>15}  source")
    for c in range(cat.E_KRA_eV.size):
        if cat.present[c]:
            err = cat.E_KRA_err_eV[c]
            print(f"{c:4d} {class_label(c):<22} {cat.E_KRA_eV[c]:12.4f} {'' if math.isnan(err) else f'{err:7.3f}':>7} "
                  f"{cat.prefactor_Hz[c]:15.3e}  {cat.class_source[c]}")
    missing = int((~cat.present).sum())
    if missing:
        print(f"\n{missing} classes have no entry")
    cal = cat.provenance.get("calibration")
    if isinstance(cal, dict):
        print(f"\ncalibrated to {Path(str(cal.get('targets_file', '?'))).name} (chi2 {cal.get('chi2', math.nan):.1f} for "
              f"{cal.get('dof', '?')} dof; all targets within error: {cal.get('all_within_error')}):")
        for p in cal.get("parameters", []):
            print(f"  {p['label']:<32} {p['value']:+.4f} +- {p['err']:.4f} {p['unit']}")
    print(f"\ninterstitial model: {cat.interstitial_model}")
    if cat.oriented:
        from lattice.orientation import rotation_class, rotation_label

        for i in range(6):
            if math.isnan(cat.rotation_E_eV[i]):
                continue
            err = cat.rotation_E_err_eV[i]
            print(f"     {rotation_label(rotation_class(i // 3, i % 3)):<22} {cat.rotation_E_eV[i]:12.4f} "
                  f"{'' if math.isnan(err) else f'{err:7.3f}':>7} {cat.rotation_prefactor_Hz[i]:15.3e}  "
                  f"{cat.rotation_source[i]}")
    ce = cat.cluster_expansion
    if ce is not None:
        fit = ce.fit or {}
        print(f"\ncluster expansion: cutoffs {list(ce.cutoffs_a)} a, {len(ce.orbits)} orbits, "
              f"{len(ce.local_orbits)} local orbits per defect, fitted x_I range {list(ce.x_I_range)}"
              + (f", {fit.get('method')} on {fit.get('n_cells')} cells" if fit else ""))
        for g, r in (fit.get("groups") or {}).items():
            print(f"  CV RMSE {g}: {r['cv_rmse_meV_per_site']:.2f} meV/site")
        print(f"  {'orbit':>5} {'order':>5} {'r/a':>6} {'mult':>4} {'ECI (meV)':>10} {'err':>7}")
        for i, o in enumerate(ce.orbits):
            err = np.nan if ce.host_err_eV is None else ce.host_err_eV[i]
            print(f"  {o.index:5d} {o.order:5d} {o.radius_a:6.3f} {o.multiplicity:4d} {1e3 * ce.host_eci_eV[i]:10.3f} "
                  f"{'' if not np.isfinite(err) else f'{1e3 * err:7.3f}':>7}")
        print(f"  {'local':>5} {'orbit':>5} {'sites':>5} {'vacancy (meV)':>14} {'interstitial (meV)':>19}")
        for j, lo in enumerate(ce.local_orbits):
            print(f"  {j:5d} {lo[0]:5d} {len(lo[1]):5d} {1e3 * ce.defect_eV['vacancy'][j]:14.3f} "
                  f"{1e3 * ce.defect_eV['interstitial'][j]:19.3f}")
    if args.json:
        print(json.dumps(cat.to_dict(), indent=1))
    return 0


def cmd_rates_fit(args) -> int:
    from kmc.runner import provenance
    from lattice.environment import class_label
    from rates.fit import build_catalog_from_md, combine_observations, observations_from_md_analysis

    out = Path(args.out)
    if out.exists() and not args.force:
        raise FileExistsError(f"output catalog {str(out)!r} exists; use --force to overwrite it")
    if getattr(args, "neb", None):
        return _cmd_rates_fit_neb(args, out)
    if not args.md:
        raise ValueError("kmc rates fit needs --md ANALYSIS.json and/or --neb RECORDS.json")
    if getattr(args, "prefactor_Hz", None) is not None:
        raise ValueError("--prefactor-Hz sets the prefactor of NEB-fitted classes; it needs --neb")
    obs = combine_observations([observations_from_md_analysis(p) for p in args.md])
    cat = build_catalog_from_md(obs, args.base, mode=args.mode, name=args.name, description=args.description,
                                extra_provenance={"versions": provenance()})
    rot_fits = None
    if getattr(args, "interstitial_model", "orientation-free") == "oriented":
        cat, rot_fits = _orient_from_md_files(cat, args.md)
    cat.save(out)
    fit = cat.provenance["fit"]
    print(f"catalog: {cat.name}  (sha256 {cat.sha256()[:16]}), base {fit['base_catalog']['name']!r}, mode {args.mode}")
    print(f"{int(obs.hop_counts.sum())} hops from {len(args.md)} file(s) at "
          f"{', '.join(f'{t:g}' for t in obs.temperatures_K)} K")
    print(f"\n{'id':>4} {'class':<22} {'hops':>6} {'E_KRA (eV)':>18} {'prefactor (Hz)':>22}  source")
    n_fit = 0
    for c in range(cat.E_KRA_eV.size):
        if not cat.class_source[c].startswith("md-mle"):
            continue
        n_fit += 1
        e_err, p_err = cat.E_KRA_err_eV[c], cat.prefactor_err_Hz[c]
        e_txt = f"{cat.E_KRA_eV[c]:.4f} +- {e_err:.4f}"
        p_txt = f"{cat.prefactor_Hz[c]:.3e}" + ("" if math.isnan(p_err) else f" +- {p_err:.1e}")
        print(f"{c:4d} {class_label(c):<22} {int(obs.total_hops[c]):6d} {e_txt:>18} {p_txt:>22}  {cat.class_source[c]}")
    n_fallback = sum(s.startswith("fallback:") for s in cat.class_source)
    print(f"\n{n_fit} classes fitted; {n_fallback} keep the base catalog's values (class source fallback:...)")
    for label, why in fit["unfitted"].items():
        print(f"  not fitted: {label}: {why}")
    if rot_fits is not None:
        _print_rotations(cat, rot_fits)
    print(f"wrote {out}")
    return 0


def _print_rotations(cat, rot_fits) -> None:
    from lattice.orientation import rotation_class, rotation_label

    print("\nrotations (oriented interstitials; interstitial prefactors x 4):")
    print(f"{'class':<22} {'E (eV)':>18} {'prefactor (Hz)':>22}  source")
    for i in range(6):
        print(f"{rotation_label(rotation_class(i // 3, i % 3)):<22} "
              f"{cat.rotation_E_eV[i]:.4f} +- {cat.rotation_E_err_eV[i]:.4f} {cat.rotation_prefactor_Hz[i]:>14.3e}"
              f" +- {cat.rotation_prefactor_err_Hz[i]:.1e}  {cat.rotation_source[i]}")
    for _nb, f in sorted(rot_fits.items()):
        pairs = ", ".join(f"{r['temperature_K']:g} K: {r['n_pairs']}" for r in f.per_T)
        print(f"  {f.bridge}: successive-hop pairs {pairs}")
        for T, d in f.joint.get("direct", {}).items():
            rel = d["relations"]
            print(f"    tracked frame by frame at {T} K: rot90 {d['rho_Hz']:.2e} +- {d['rho_err_Hz']:.1e} Hz/channel "
                  f"({d['n_rot90']}), flips {d['n_flip']}; hops aligned/crossing/perpendicular to the tracked "
                  f"orientation {rel.get('aligned', 0)}/{rel.get('crossing', 0)}/{rel.get('perpendicular', 0)}, "
                  f"landed as the model {d['landing'].get('landing', 0)} of "
                  f"{sum(d['landing'].values())}; unassigned frames {d['unassigned_frames']} of {d['frames']}")


def _orient_from_md_files(cat, paths):
    """Oriented copy of ``cat`` with rotations fitted from the hop pairs of the runs in MD analysis files."""
    import numpy as np

    from common.provenance import file_sha256
    from lattice.environment import N_VACANCY_CLASSES
    from rates.orientation_fit import check_record, fit_rotations, orient_catalog

    records, sources = [], []
    for p in paths:
        data = json.loads(Path(p).read_text())
        runs = data.get("runs") if isinstance(data, dict) else None
        if not isinstance(runs, list) or not runs:
            raise ValueError(f"{p}: field 'runs' missing or empty (the rotation fit needs the per-run hop events)")
        for i, r in enumerate(runs):
            check_record(r, f"{p}: runs[{i}]")
        records += runs
        sources.append({"file": str(p), "sha256": file_sha256(p)})
    fits = fit_rotations(records, single_T_hop_E_eV=float(np.nanmean(cat.E_KRA_eV[N_VACANCY_CLASSES:])))
    return orient_catalog(cat, fits, name=cat.name, md_sources=sources), fits


def _cmd_rates_fit_neb(args, out: Path) -> int:
    """``kmc rates fit --neb ...``: NEB catalog; with ``--md``, MD-fitted classes take precedence over NEB ones."""
    from kmc.runner import provenance
    from rates.fit import build_catalog_from_md, combine_observations, observations_from_md_analysis
    from rates.neb_fit import build_catalog_from_neb, format_fit_table, load_neb_record_files, overlay_md_fit

    records = load_neb_record_files(args.neb)
    md_cat = None
    if args.md:
        obs = combine_observations([observations_from_md_analysis(p) for p in args.md])
        md_cat = build_catalog_from_md(obs, args.base, mode=args.mode)
    prefactor_catalog = None
    if md_cat is not None and args.prefactor_Hz is None:
        from rates.neb_fit import prefactor_from_md_catalog

        try:
            prefactor_from_md_catalog(md_cat)
            prefactor_catalog = md_cat
        except ValueError as exc:
            print(f"note: {exc}; NEB classes keep the base catalog's prefactors")
    cat = build_catalog_from_neb(records, args.base, prefactor_Hz=args.prefactor_Hz,
                                 prefactor_catalog=prefactor_catalog,
                                 slope_mode=args.slope_mode, name=None if md_cat else args.name,
                                 description=None if md_cat else args.description,
                                 extra_provenance={"versions": provenance()})
    if md_cat is not None:
        cat = overlay_md_fit(cat, md_cat, name=args.name)
        if args.description is not None:
            cat.description = args.description
        cat.provenance["versions"] = provenance()
    rot_fits = None
    if getattr(args, "interstitial_model", "orientation-free") == "oriented":
        if not args.md:
            raise ValueError("--interstitial-model oriented fits rotations from MD hop pairs; it needs --md")
        cat, rot_fits = _orient_from_md_files(cat, args.md)
    cat.save(out)
    fit = cat.provenance["fit"]
    print(f"catalog: {cat.name}  (sha256 {cat.sha256()[:16]}), base {fit['base_catalog']['name']!r}; "
          f"NEB records from {len(args.neb)} file(s); prefactor of NEB classes: {fit['prefactor']['source']}")
    print(format_fit_table(fit))
    counts = {}
    for s in cat.class_source:
        key = s.split(":")[0] + ":..." if s.startswith("fallback:") else s
        counts[key] = counts.get(key, 0) + 1
    print("\nclass sources: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    if md_cat is not None:
        print("precedence: md-mle* (MD hop counts) over neb-fit* (NEB) over fallback:* (base catalog)")
    for label, why in fit["unfitted"].items():
        print(f"  not fitted: {label}: {why}")
    if rot_fits is not None:
        _print_rotations(cat, rot_fits)
    print(f"wrote {out}")
    return 0


def _print_rotations(cat, rot_fits) -> None:
    from lattice.orientation import rotation_class, rotation_label

    print("\nrotations (oriented interstitials; interstitial prefactors x 4):")
    print(f"{'class':<22} {'E (eV)':>18} {'prefactor (Hz)':>22}  source")
    for i in range(6):
        print(f"{rotation_label(rotation_class(i // 3, i % 3)):<22} "
              f"{cat.rotation_E_eV[i]:.4f} +- {cat.rotation_E_err_eV[i]:.4f} {cat.rotation_prefactor_Hz[i]:>14.3e}"
              f" +- {cat.rotation_prefactor_err_Hz[i]:.1e}  {cat.rotation_source[i]}")
    for _nb, f in sorted(rot_fits.items()):
        pairs = ", ".join(f"{r['temperature_K']:g} K: {r['n_pairs']}" for r in f.per_T)
        print(f"  {f.bridge}: successive-hop pairs {pairs}")
        for T, d in f.joint.get("direct", {}).items():
            rel = d["relations"]
            print(f"    tracked frame by frame at {T} K: rot90 {d['rho_Hz']:.2e} +- {d['rho_err_Hz']:.1e} Hz/channel "
                  f"({d['n_rot90']}), flips {d['n_flip']}; hops aligned/crossing/perpendicular to the tracked "
                  f"orientation {rel.get('aligned', 0)}/{rel.get('crossing', 0)}/{rel.get('perpendicular', 0)}, "
                  f"landed as the model {d['landing'].get('landing', 0)} of "
                  f"{sum(d['landing'].values())}; unassigned frames {d['unassigned_frames']} of {d['frames']}")


def _orient_from_md_files(cat, paths):
    """Oriented copy of ``cat`` with rotations fitted from the hop pairs of the runs in MD analysis files."""
    import numpy as np

    from common.provenance import file_sha256
    from lattice.environment import N_VACANCY_CLASSES
    from rates.orientation_fit import check_record, fit_rotations, orient_catalog

    records, sources = [], []
    for p in paths:
        data = json.loads(Path(p).read_text())
        runs = data.get("runs") if isinstance(data, dict) else None
        if not isinstance(runs, list) or not runs:
            raise ValueError(f"{p}: field 'runs' missing or empty (the rotation fit needs the per-run hop events)")
        for i, r in enumerate(runs):
            check_record(r, f"{p}: runs[{i}]")
        records += runs
        sources.append({"file": str(p), "sha256": file_sha256(p)})
    fits = fit_rotations(records, single_T_hop_E_eV=float(np.nanmean(cat.E_KRA_eV[N_VACANCY_CLASSES:])))
    return orient_catalog(cat, fits, name=cat.name, md_sources=sources), fits


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kmc", description="Halide-defect KMC for CsPb(I_x Br_1-x)_3 perovskites")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO)")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run(sub)
    sub.add_parser("config", help="print the embedded default config")
    rates = sub.add_parser("rates", help="rate catalogs")
    rsub = rates.add_subparsers(dest="rates_command", required=True)
    show = rsub.add_parser("show", help="print a catalog as a table")
    show.add_argument("catalog", nargs="?", default="default", help="catalog file, or an embedded one: default, paper (default: default)")
    show.add_argument("--json", action="store_true", help="also print the JSON")
    from md_reference.neb.cli import add_neb_parser  # argparse only; ASE/LAMMPS load on use

    add_neb_parser(rsub)
    from rates.fit import FIT_MODES

    fit = rsub.add_parser("fit", help="fit per-class hop rates to MD hop counts and/or NEB records; write a catalog",
                          description="Maximum-likelihood Arrhenius fit of the per-class hop counts and exposures "
                                      "of MD analysis files (kmc md analyze); classes without a fit keep the base "
                                      "catalog's values. With --neb: E_KRA per hop family and the energy model "
                                      "from NEB records (kmc rates neb); MD-fitted classes (class source md-mle*) "
                                      "take precedence over NEB-fitted ones (neb-fit*).")
    fit.add_argument("--md", action="append", metavar="ANALYSIS.json",
                     help="MD analysis JSON (repeat for several; equal temperatures are pooled)")
    fit.add_argument("--neb", action="append", metavar="RECORDS.json",
                     help="NEB records of kmc rates neb (repeat for several): E_KRA(shell_nI) per family and the "
                          "energy model (rates.neb_fit); with --md, MD-fitted classes take precedence")
    fit.add_argument("--prefactor-Hz", type=float, help="--neb: prefactor of NEB-fitted classes (default: the mean "
                                                        "fitted MD prefactor with --md, else the base catalog's)")
    from rates.neb_fit import SLOPE_MODES

    fit.add_argument("--slope-mode", default="per-family", choices=list(SLOPE_MODES),
                     help="--neb: E_KRA model in shell_nI; " + "; ".join(f"{k}: {v}" for k, v in SLOPE_MODES.items()))
    fit.add_argument("--base", default="default", help="base catalog: energy model and fallback values "
                                                       "(default: the embedded one)")
    fit.add_argument("--mode", default="per-class", choices=list(FIT_MODES),
                     help="; ".join(f"{k}: {v}" for k, v in FIT_MODES.items()))
    fit.add_argument("--interstitial-model", default="orientation-free", choices=["orientation-free", "oriented"],
                     help="oriented: bridge orientations with rotation rates fitted (maximum likelihood) from the "
                          "successive interstitial hops of the --md runs (rates.orientation_fit); catalog schema v2")
    fit.add_argument("--out", "-o", required=True, help="catalog file to write")
    fit.add_argument("--name", help="catalog name (default md-mle-<mode>)")
    fit.add_argument("--description", help="catalog description")
    fit.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    from rates.ce_fit import add_ce_fit_parser, add_ce_report_parser  # argparse only; icet loads on use

    add_ce_fit_parser(rsub)
    add_ce_report_parser(rsub)
    from workflows.calibrate import add_calibrate_parser  # argparse only; the KMC loads on use

    add_calibrate_parser(rsub)
    from md_reference.ce_data import add_ce_data_parser  # argparse only; ASE/LAMMPS load on use

    add_ce_data_parser(rsub)
    from md_reference.cli import add_md_parser  # argparse only; the MD stack loads on use

    add_md_parser(sub)
    from kmc.compare import add_compare_parser

    add_compare_parser(sub)
    from kmc.sweep import add_sweep_parser

    add_sweep_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded by commands that write provenance
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if getattr(args, "handler", None) is not None:  # subcommands that carry their own handler
            return args.handler(args)
        if args.command == "run":
            return cmd_run(args)
        if args.command == "config":
            return cmd_config(args)
        if args.command == "rates" and args.rates_command == "show":
            return cmd_rates_show(args)
        if args.command == "rates" and args.rates_command == "fit":
            return cmd_rates_fit(args)
        if args.command == "md":
            from md_reference.cli import run_md_command

            return run_md_command(args)
    except Interrupted as exc:
        print(f"kmc: interrupted: {exc}; continue with the same command and --resume", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("kmc: interrupted; checkpoints written so far are kept (continue with --resume)", file=sys.stderr)
        return 130
    except (ConfigError, CatalogError, MissingRateError, FileExistsError, ValueError, RuntimeError, OSError) as exc:
        print(f"kmc: error: {exc}", file=sys.stderr)
        return 2
    parser.error("unknown command")
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
