"""``kmc rates neb``: climbing-image NEB of sampled halide-defect hops.

Builds a cell (pure, random mix, heterojunction), samples hops of one defect
kind, runs :func:`md_reference.neb.run_neb` on each (optionally in parallel
processes), writes one JSON file of records (one per hop) and prints a table.
``--validate DIR`` instead runs the four DFT reference hops
(:func:`md_reference.neb.validate_reference_paths`).

Only :mod:`argparse` is imported at module level; ASE and LAMMPS load when the
command runs. Registered from :mod:`kmc.cli` by :func:`add_neb_parser`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from common.atomic import write_text_atomic

RECORDS_SCHEMA = "halide-kmc/neb-records"
RECORDS_VERSION = 1


def add_neb_parser(rates_sub) -> None:
    """Add ``neb`` to the subparsers of ``kmc rates``."""
    p = rates_sub.add_parser(
        "neb", help="NEB barriers of sampled hops (LAMMPS potential)",
        description="Climbing-image NEB of sampled vacancy or interstitial hops in a cubic CsPbX3 cell "
                    "(frozen far field, mirror-symmetric endpoints; see md_reference.neb.band). Writes JSON "
                    "records (environment class, barriers, image energies, provenance) and prints a table.")
    p.set_defaults(handler=run_neb_command)
    g = p.add_argument_group("structure")
    g.add_argument("--structure", default="pure", choices=["pure", "random", "heterojunction"])
    g.add_argument("--shape", nargs=3, type=int, default=[3, 3, 3], metavar=("NX", "NY", "NZ"))
    g.add_argument("--species", default="I", choices=["I", "Br"], help="pure: the halide")
    g.add_argument("--x-I", type=float, help="random: iodide fraction")
    g.add_argument("--structure-seed", type=int, default=0, help="random: seed of the mix")
    g.add_argument("--thickness-I", type=int, help="heterojunction: I layer thickness (cells)")
    g.add_argument("--thickness-Br", type=int, help="heterojunction: Br layer thickness (cells)")
    g.add_argument("--interface", choices=["I-rich", "Br-rich"], default="I-rich", help="heterojunction interface")
    g.add_argument("--axis", default="x", help="heterojunction stacking axis (x, y, z)")
    g.add_argument("--where", default="random",
                   help="defect start sites: random, interface, near-interface, region:I, region:Br, "
                        "or comma-separated site indices")
    g.add_argument("--near-planes", type=int, default=2, help="near-interface: largest plane distance")
    g.add_argument("--lattice-constant", default="vegard", help="A, or 'vegard' (between --a-I and --a-Br)")
    g.add_argument("--a-I", type=float, default=6.30, help="CsPbI3 lattice constant for Vegard (A)")
    g.add_argument("--a-Br", type=float, default=5.90, help="CsPbBr3 lattice constant for Vegard (A)")
    h = p.add_argument_group("hops")
    h.add_argument("--defect", default="vacancy", choices=["vacancy", "interstitial"])
    h.add_argument("--added-species", default="same", choices=["same", "I", "Br"],
                   help="interstitial: halide added to the site's own atom")
    h.add_argument("--hops", type=int, default=4, help="number of sampled hops")
    h.add_argument("--rotation", choices=["rot90", "flip"],
                   help="interstitial: the barrier of a bridge rotation in place (90 degrees or a flip) on "
                        "--hops sampled sites, instead of kick-outs")
    h.add_argument("--seed", type=int, default=0, help="seed of the hop sampling")
    n = p.add_argument_group("NEB")
    n.add_argument("--potential", help="KIND:PATH (e.g. reaxff:/path/IBrPbCs.ff) or a JSON potential spec")
    n.add_argument("--images", type=int, default=5, help="intermediate images")
    n.add_argument("--spring", type=float, default=0.1, help="spring constant, eV/A^2")
    n.add_argument("--fmax", type=float, default=0.03, help="NEB force tolerance, eV/A")
    n.add_argument("--max-steps", type=int, default=600, help="NEB optimiser steps")
    n.add_argument("--constraint", default="frozen-far-field", choices=["frozen-far-field", "none"])
    n.add_argument("--free-radius-A", type=float, help="relaxed radius around the hop midpoint (A)")
    n.add_argument("--endpoints", default="mirror", choices=["mirror", "independent"])
    n.add_argument("--no-climb", action="store_true", help="plain NEB (no climbing image)")
    n.add_argument("--starts", type=int, default=1,
                   help="NEBs per hop: the ideal start plus rattled ones; keeps the lowest initial minimum "
                        "(use 3+ for interstitials)")
    n.add_argument("--workers", type=int, default=1, help="parallel processes (one thread each)")
    n.add_argument("--out", "-o", default="neb_records.json", help="output JSON")
    n.add_argument("--validate", metavar="DIR",
                   help="instead: the four DFT reference hops in DIR (dft_migration_paths), table vs DFT")


def _potential_spec(text: str | None):
    if not text:
        raise ValueError("--potential is required (KIND:PATH or a JSON spec)")
    text = text.strip()
    if text.startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--potential is not valid JSON: {exc}") from None
    return text


def _settings(args):
    from md_reference.neb.band import NEBSettings  # noqa: PLC0415

    return NEBSettings(n_images=args.images, spring_eV_A2=args.spring, fmax_eV_A=args.fmax,
                       max_steps=args.max_steps, constraint=args.constraint, free_radius_A=args.free_radius_A,
                       endpoints=args.endpoints, climb=not args.no_climb,
                       n_starts=args.starts).validate()


def _config(args):
    from lattice import HalideSublattice, build_configuration  # noqa: PLC0415

    lat = HalideSublattice(tuple(args.shape))
    if args.structure == "pure":
        return build_configuration(lat, "pure", species=args.species)
    if args.structure == "random":
        if args.x_I is None:
            raise ValueError("--structure random needs --x-I")
        return build_configuration(lat, "random", x_I=args.x_I, seed=args.structure_seed)
    if args.thickness_I is None or args.thickness_Br is None:
        raise ValueError("--structure heterojunction needs --thickness-I and --thickness-Br")
    return build_configuration(lat, "heterojunction", thickness_I=args.thickness_I, thickness_Br=args.thickness_Br,
                               interface=args.interface, axis=args.axis)


def _where(text: str):
    if all(part.strip().lstrip("-").isdigit() for part in text.split(",")):
        return [int(v) for v in text.split(",")]
    return text


def _table(records: list[dict]) -> str:
    head = (f"{'#':>3} {'defect':<12} {'A->B':>9} {'mover':>5} {'class':<18} {'fwd':>7} {'bwd':>7} "
            f"{'dE':>7} {'E_KRA':>7} {'conv':>5} {'wall s':>7}")
    lines = [head, "-" * len(head)]
    for i, r in enumerate(records):
        if "error" in r:
            lines.append(f"{i:3d} failed: {r['error']}")
            continue
        lines.append(f"{i:3d} {r['defect']:<12} {r['site_a']:>4}->{r['site_b']:<4} {r['mover']:>5} "
                     f"{r['env_label']:<18} {r['barrier_forward_eV']:7.3f} {r['barrier_backward_eV']:7.3f} "
                     f"{r['delta_E_eV']:7.3f} {r['kra_barrier_eV']:7.3f} {str(r['converged']):>5} "
                     f"{r['provenance']['wall_s']:7.1f}")
    return "\n".join(lines)


def cmd_neb_validate(args) -> int:
    from md_reference.md.runner import md_provenance  # noqa: PLC0415
    from md_reference.neb.band import format_validation_table, validate_reference_paths  # noqa: PLC0415

    rows = validate_reference_paths(_potential_spec(args.potential), args.validate, _settings(args))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps({"schema": "halide-kmc/neb-validation", "schema_version": 1,
                               "units": {"energy": "eV", "length": "A"}, "rows": rows,
                               "versions": md_provenance()}, indent=1))
    print(format_validation_table(rows))
    print("\nDFT: max of ref_kcal; pot@DFT / pub@DFT: the potential's / the published ReaxFF energies of the "
          "DFT images (vs the reference image); NEB fwd/bwd: climbing-image NEB of the same hop in the same "
          "cell; span: max - min along the NEB band.")
    print(f"wrote {out}")
    return 0


def cmd_neb_rotation(args) -> int:
    """``kmc rates neb --defect interstitial --rotation rot90|flip``: rotation barriers on sampled sites."""
    from md_reference.md.potentials import load_potential  # noqa: PLC0415
    from md_reference.md.runner import md_provenance  # noqa: PLC0415
    from md_reference.md.structures import resolve_lattice_constant  # noqa: PLC0415
    from md_reference.neb.band import candidate_defect_sites, run_rotation_neb  # noqa: PLC0415

    if args.defect != "interstitial":
        raise ValueError("--rotation needs --defect interstitial")
    spec = _potential_spec(args.potential)
    pot = load_potential(spec)
    settings = _settings(args)
    config = _config(args)
    lc = args.lattice_constant
    a = resolve_lattice_constant(config, None if lc == "vegard" else lc, args.a_I, args.a_Br)
    cand = candidate_defect_sites(config, _where(args.where), args.near_planes)
    rng = np.random.default_rng(args.seed)
    sites = rng.choice(cand, size=min(int(args.hops), cand.size), replace=False)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    records = []
    for site in sites:
        records.append(run_rotation_neb(config, int(site), args.rotation, spec, a, settings,
                                        added_species=args.added_species))
        write_text_atomic(out, json.dumps({"schema": "halide-kmc/rotation-neb-records", "schema_version": 1,
                                           "units": {"energy": "eV", "length": "A"},
                                           "configuration": config.describe(), "lattice_constant_A": a,
                                           "potential": pot.describe(), "versions": md_provenance(),
                                           "records": records}, indent=1))
    print(f"{'site':>6} {'bridge':>6} {'kind':>6} {'E_fwd (eV)':>11} {'E_bwd (eV)':>11} {'dE':>8} status")
    for r in records:
        status = "diverged (not a barrier)" if r["diverged"] else ("converged" if r["converged"] else "not converged")
        print(f"{r['site']:>6} {r['bridge']:>6} {r['kind']:>6} {r['barrier_forward_eV']:>11.4f} "
              f"{r['barrier_backward_eV']:>11.4f} {r['delta_E_eV']:>8.4f} {status}")
    print(f"\nwrote {out}")
    return 0 if all(r["converged"] for r in records) else 1


def cmd_neb(args) -> int:
    if args.validate:
        return cmd_neb_validate(args)
    if getattr(args, "rotation", None):
        return cmd_neb_rotation(args)
    from md_reference.md.potentials import load_potential  # noqa: PLC0415
    from md_reference.md.runner import md_provenance  # noqa: PLC0415
    from md_reference.md.structures import resolve_lattice_constant  # noqa: PLC0415
    from md_reference.neb.band import run_hops, sample_hops  # noqa: PLC0415

    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    spec = _potential_spec(args.potential)
    pot = load_potential(spec)
    settings = _settings(args)
    config = _config(args)
    lc = args.lattice_constant
    a = resolve_lattice_constant(config, None if lc == "vegard" else lc, args.a_I, args.a_Br)
    hops = sample_hops(config, args.defect, args.hops, args.seed, _where(args.where), args.near_planes)
    dist = None
    if config.interface_planes is not None:
        dist = config.plane_distance_to_interface()[config.lattice.plane_index(config.axis)]
    request = {k: v for k, v in vars(args).items() if k not in ("handler",)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    records: list = [None] * len(hops)
    header = {"schema": RECORDS_SCHEMA, "schema_version": RECORDS_VERSION,
              "units": {"energy": "eV", "length": "A"}, "request": request,
              "configuration": config.describe(), "lattice_constant_A": a, "settings": settings.to_dict(),
              "potential": pot.describe(), "versions": md_provenance(),
              "note": "ReaxFF (QEq) cells are neutral: barriers of neutral defects."}

    def on_result(i, res):
        rec = res["record"] if res["ok"] else {"hop": res["hop"], "error": res["error"]}
        if dist is not None:
            rec["interface_distance_planes"] = int(dist[hops[i]["site_a"]])
        records[i] = rec
        done = [r for r in records if r is not None]
        write_text_atomic(out, json.dumps({**header, "n_done": len(done), "records": records}, indent=1))
        logging.getLogger("md_reference.neb.band").info("hop %d/%d done", len(done), len(hops))

    run_hops(config, args.defect, hops, spec, a, settings, added_species=args.added_species,
             workers=args.workers, on_result=on_result)
    print(f"{config.kind} {tuple(config.lattice.shape)} a = {a:.4f} A, {args.defect}, potential "
          f"{pot.describe().get('kind')} ({pot.describe().get('sha256', '')[:12]})")
    print(_table(records))
    print(f"\nwrote {out}")
    return 0 if all("error" not in r for r in records) else 1


def run_neb_command(args) -> int:
    """Entry point used by :mod:`kmc.cli` (errors propagate to its handler)."""
    return cmd_neb(args)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m md_reference.neb.cli ...``)."""
    parser = argparse.ArgumentParser(prog="neb")
    sub = parser.add_subparsers(dest="rates_command", required=True)
    add_neb_parser(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return args.handler(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
