"""Training cells for the cluster-expansion energy model, relaxed with a package potential.

``kmc rates ce-data --out train.json`` builds and relaxes, with the reference ReaxFF by
default:

* **host cells**: random CsPb(I_x Br_1-x)3 mixes on a grid of x_I (several seeds) and
  heterojunctions of both interface types (I-rich, Br-rich) along x; positions and the three
  cell lengths relaxed (FIRE on an ASE FrechetCellFilter, cubic angles kept), so that the
  host energies carry no imposed strain;
* **defect cells**: one vacancy or one split interstitial placed on sites of the mixes and on
  every halide plane across both heterojunctions (layer by layer through the interfaces),
  relaxed at the cell of their relaxed host (positions only: the composition-dependent
  volume is the host's, the defect's local strain relaxes).

Each cell's energy goes into a training set (:mod:`rates.ce_fit`) with its site states. The
run is resumable: finished cells are kept in ``--out`` (written atomically after each one)
and skipped on the next call; ``--max-wall-s`` stops between cells. Work is spread over
``--workers`` processes with one thread each.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from common.atomic import write_text_atomic
from common.provenance import provenance, versions
from lattice import HalideSublattice, build_heterojunction, build_random_mix, place_defects
from lattice.species import BR, BRIDGE, VACANCY

log = logging.getLogger(__name__)
FORMAT = "halide-kmc-ce-training-set"
DEFAULT_POTENTIAL = "reaxff:../shared/potentials/reaxff/IBrPbCs.ff"
START_A_I, START_A_BR = 6.29, 5.875
"""Starting cubic lattice constants (A): the reference ReaxFF's relaxed 0 K CsPbI3 / CsPbBr3 (3x3x3 cells)."""


def plan(shape=(3, 3, 3), x_grid=(0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0), seeds=3,
         defect_x=(0.25, 0.5, 0.75), defect_sites=3, het_shape=(6, 3, 3), het_planes_step=1, het_sites_per_plane=1,
         defect_seeds=2, seed=0) -> list[dict]:
    """The cells to compute, hosts first; each a dict with ``id``, ``host`` and optional ``defect``."""
    rng = np.random.default_rng(seed)
    tasks = []
    hosts = []
    for x in x_grid:
        for k in range(1 if x in (0.0, 1.0) else seeds):
            h = {"id": f"mix-x{x:.3f}-s{k}", "host": {"kind": "mix", "x_I": float(x), "seed": int(k),
                                                       "shape": list(shape)}}
            hosts.append(h)
    for itf in ("I-rich", "Br-rich"):
        hosts.append({"id": f"het-{itf}", "host": {"kind": "heterojunction", "interface": itf,
                                                   "shape": list(het_shape)}})
    tasks += hosts
    for h in hosts:
        cfg = _host_config(h["host"])
        lat = cfg.lattice
        if h["host"]["kind"] == "mix":
            if h["host"]["x_I"] not in defect_x or h["host"]["seed"] >= defect_seeds:
                continue
            sites = rng.choice(lat.n_sites, defect_sites, replace=False)
        else:
            # one site per halide plane along x (both PbX2 and CsX planes), through both interfaces
            planes = lat.plane_index(0)
            sites = [int(v) for p in range(0, lat.n_planes(0), het_planes_step)
                     for v in rng.choice(np.flatnonzero(planes == p), het_sites_per_plane, replace=False)]
        for kind in ("vacancy", "interstitial"):
            for site in sites:
                d = {"kind": kind, "site": int(site)}
                if kind == "interstitial":
                    d["added"] = ("I", "Br")[int(rng.integers(2))]
                tasks.append({"id": f"{h['id']}-{kind[0]}{int(site)}", "host": h["host"], "host_id": h["id"],
                              "defect": d})
    return tasks


def _host_config(host: dict):
    lat = HalideSublattice(tuple(host["shape"]))
    if host["kind"] == "mix":
        return build_random_mix(lat, host["x_I"], seed=1000 + int(host["seed"]))
    n = host["shape"][0] // 2
    return build_heterojunction(lat, n, host["shape"][0] - n, interface=host["interface"])


def _relax_cell(task: dict, potential: str, fmax: float, max_steps: int, cell_A=None) -> dict:
    """Relax one cell; return its training-set row (and the relaxed cell lengths for hosts)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from ase.filters import FrechetCellFilter  # noqa: PLC0415
    from ase.optimize import FIRE  # noqa: PLC0415

    from md_reference.md.calculator import LammpsCalculator  # noqa: PLC0415
    from md_reference.md.potentials import load_potential  # noqa: PLC0415
    from md_reference.md.structures import build_atoms, vegard_lattice_constant  # noqa: PLC0415

    cfg = _host_config(task["host"])
    occ = cfg.occ.astype(np.int64).copy()
    nbr = []
    defects = None
    d = task.get("defect")
    if d is not None:
        if d["kind"] == "vacancy":
            defects = place_defects(cfg, 1, 0, where=[d["site"]])
            occ[d["site"]] = VACANCY
        else:
            defects = place_defects(cfg, 0, 1, where=[d["site"]], added_species=d["added"])
            occ[d["site"]] = BRIDGE
            nbr = [int(np.sum(np.asarray(defects.bridge[0]) == BR))]
    a0 = vegard_lattice_constant(cfg.x_I, START_A_I, START_A_BR)
    atoms = build_atoms(cfg, defects, a0)
    if cell_A is not None:
        atoms.set_cell(np.diag(cell_A), scale_atoms=True)
    atoms.rattle(0.01, seed=7)
    calc = LammpsCalculator(load_potential(potential))
    atoms.calc = calc
    t0 = time.perf_counter()
    target = atoms if cell_A is not None else FrechetCellFilter(atoms, mask=[1, 1, 1, 0, 0, 0])
    opt = FIRE(target, logfile=None)
    converged = bool(opt.run(fmax=fmax, steps=max_steps))
    e = float(atoms.get_potential_energy())
    calc.close()
    row = {"id": task["id"], "group": "host" if d is None else d["kind"], "shape": task["host"]["shape"],
           "occ": occ.tolist(), "bridge_n_br": nbr, "energy_eV": e, "converged": converged,
           "steps": int(opt.nsteps), "wall_s": round(time.perf_counter() - t0, 2),
           "cell_A": [float(v) for v in np.diag(atoms.cell)], "x_I": float(cfg.x_I), "host": task["host"]}
    if d is not None:
        row["defect"] = d
        row["host_id"] = task["host_id"]
        row["plane_x"] = int(cfg.lattice.plane_index(0)[d["site"]])
    return row


def _worker(args):
    task, potential, fmax, max_steps, cell = args
    try:
        return _relax_cell(task, potential, fmax, max_steps, cell)
    except Exception as exc:  # noqa: BLE001 - one failed cell is reported, the others go on
        return {"id": task["id"], "error": f"{type(exc).__name__}: {exc}"}


def generate(out, potential: str = DEFAULT_POTENTIAL, *, workers: int = 1, fmax: float = 0.02,
             max_steps: int = 1500, max_wall_s: float | None = None, tasks: list | None = None,
             progress: bool = True) -> dict:
    """Compute the missing cells of ``tasks`` (default :func:`plan`) into ``out``; return the document."""
    import multiprocessing as mp  # noqa: PLC0415

    from md_reference.md.potentials import load_potential  # noqa: PLC0415

    pot = load_potential(potential)  # fails fast on a bad spec
    out = Path(out)
    tasks = plan() if tasks is None else tasks
    if out.exists():
        doc = json.loads(out.read_text())
        if doc.get("format") != FORMAT:
            raise ValueError(f"{out}: not a training set (format {doc.get('format')!r})")
        if doc.get("source", {}).get("potential") != str(potential):
            raise ValueError(f"{out} was made with potential {doc.get('source', {}).get('potential')!r}, "
                             f"not {potential!r}: use another --out")
    else:
        doc = {"format": FORMAT, "version": 1, "units": {"energy": "eV", "length": "angstrom"},
               "source": {"potential": str(potential), "potential_description": pot.describe(),
                          "relaxation": f"FIRE to {fmax} eV/A (max {max_steps} steps); hosts: positions and cell "
                                        "lengths (FrechetCellFilter); defect cells: positions at the relaxed "
                                        "host cell", "generator": "kmc rates ce-data"},
               "provenance": {**provenance(), "versions": versions()}, "structures": [], "failed": []}
    done = {s["id"] for s in doc["structures"]}
    t_start = time.perf_counter()
    from tqdm import tqdm  # noqa: PLC0415

    bar = tqdm(total=len(tasks), initial=len(done & {t["id"] for t in tasks}), unit="cell", disable=not progress)
    for phase in ("host", "defect"):
        todo = [t for t in tasks if t["id"] not in done and (("defect" in t) == (phase == "defect"))]
        cells = {s["id"]: s.get("cell_A") for s in doc["structures"] if s["group"] == "host"}
        args = [(t, str(potential), fmax, max_steps, cells.get(t.get("host_id")) if phase == "defect" else None)
                for t in todo if phase == "host" or t.get("host_id") in cells]
        if not args:
            continue
        ctx = mp.get_context("spawn")
        with ctx.Pool(max(1, int(workers))) as pool:
            for row in pool.imap_unordered(_worker, args):
                if "error" in row:
                    doc["failed"].append(row)
                    log.warning("cell %s failed: %s", row["id"], row["error"])
                else:
                    doc["structures"].append(row)
                write_text_atomic(out, json.dumps(doc) + "\n")
                bar.update(1)
                if max_wall_s is not None and time.perf_counter() - t_start > max_wall_s:
                    pool.terminate()
                    bar.close()
                    log.warning("stopped after --max-wall-s %.0f s; rerun the same command to continue", max_wall_s)
                    return doc
    bar.close()
    return doc


def add_ce_data_parser(rsub) -> None:
    p = rsub.add_parser("ce-data", help="relax training cells (mixes, heterojunctions, defects layer by layer) "
                                        "with a package potential for kmc rates ce-fit",
                        description=__doc__.split("\n\n")[0])
    p.add_argument("--out", "-o", required=True, help="training set JSON (resumed if it exists)")
    p.add_argument("--potential", default=DEFAULT_POTENTIAL, help="KIND:PATH (default: the reference ReaxFF)")
    p.add_argument("--workers", type=int, default=1, help="processes (one thread each)")
    p.add_argument("--fmax", type=float, default=0.02, help="force criterion, eV/A")
    p.add_argument("--max-steps", type=int, default=1500)
    p.add_argument("--max-wall-s", type=float, help="stop between cells after this wall time")
    p.add_argument("--het-planes-step", type=int, default=1, help="defects on every n-th plane of the junctions")
    p.add_argument("--het-sites-per-plane", type=int, default=1, help="defect sites per junction plane")
    p.add_argument("--seeds", type=int, default=3, help="random mixes per composition")
    p.add_argument("--defect-sites", type=int, default=3, help="defect sites per mix (x_I = 0.25, 0.5, 0.75)")
    p.add_argument("--defect-seeds", type=int, default=2, help="mixes per composition that get defects")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=cmd_ce_data)


def cmd_ce_data(args: argparse.Namespace) -> int:
    if args.workers < 1 or args.fmax <= 0 or args.max_steps < 1:
        raise ValueError("--workers, --fmax and --max-steps must be positive")
    doc = generate(args.out, args.potential, workers=args.workers, fmax=args.fmax, max_steps=args.max_steps,
                   max_wall_s=args.max_wall_s, tasks=plan(het_planes_step=args.het_planes_step, het_sites_per_plane=args.het_sites_per_plane,
                             seeds=args.seeds, defect_sites=args.defect_sites, defect_seeds=args.defect_seeds),
                   progress=not args.quiet)
    groups = {}
    for s in doc["structures"]:
        groups[s["group"]] = groups.get(s["group"], 0) + 1
    print(f"{len(doc['structures'])} cells ({', '.join(f'{k}: {v}' for k, v in sorted(groups.items()))}), "
          f"{len(doc['failed'])} failed; wrote {args.out}")
    return 0
