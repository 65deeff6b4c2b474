"""Speed of LAMMPS MD with ReaxFF and with a production-size Allegro model.

Run from the repository root (one thread, as in production)::

    .venv/bin/python benchmarks/bench_md.py                # ~3-6 min (trains, packages, compiles)
    .venv/bin/python benchmarks/bench_md.py --model M.nequip.zip --steps 20   # any packaged model, e.g.
    .venv/bin/python benchmarks/bench_md.py --model md_reference/data/allegro_small_reaxff.nequip.zip --no-reaxff

Workload: a 6x6x6 cubic CsPbI3 supercell (a = 6.30 A) with one split iodide
interstitial (1081 atoms), Nose-Hoover NVT at 600 K, 2 fs steps, through
:class:`md_reference.md.lammps_driver.LammpsSession`:

* ReaxFF (``--reaxff``, the 2024 I/Br/Pb/Cs set) with QEq;
* an Allegro model of the ``paper`` preset of :mod:`md_reference.ml.training`
  (r_max 6 A, l_max 2, 2 layers, 64/32 features, 1.3e5 parameters) through
  ``fix external``, eager (torch) and AOTInductor-compiled (``--target ase``,
  which also computes the stress/virial). Timing does not depend on the
  weights: unless ``--model`` is given, the model is trained for one epoch on a
  few ReaxFF frames in a temporary folder and compiled into a temporary cache.

For each potential: warm-up steps, then ``--steps`` timed steps; the table gives
ms per MD step, ns/day at 2 fs, and (Allegro) the time of one
energy+forces+stress call of the calculator alone on the same atoms, so the
LAMMPS/callback overhead is the difference. Writes JSON (``--out``) with the
CPU model, versions and git revision. A benchmark, not a test: nothing asserts.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import datetime as _dt  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from bench_kmc import cpu_model, git_revision  # noqa: E402 - same folder: one copy of the environment helpers

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # allow running without installing the package
    sys.path.insert(0, str(REPO))

DEFAULT_REAXFF = REPO.parent / "shared" / "potentials" / "reaxff" / "IBrPbCs.ff"
TEMPERATURE_K = 600.0
TIMESTEP_FS = 2.0
LATTICE_A = 6.30
SHAPE = (6, 6, 6)


def environment(torch_threads: int | None) -> dict:
    from md_reference.ml.training import versions

    return {
        "cpu_model": cpu_model(),
        "n_cpus": os.cpu_count(),
        "platform": platform.platform(),
        "versions": versions(),
        "git_revision": git_revision(),
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch_threads": torch_threads,
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")},
    }


def build_system(seed: int):
    from md_reference.md.structures import build_cell

    atoms, _, _ = build_cell("pure", SHAPE, species="I", defect="interstitial", where="random",
                             lattice_constant=LATTICE_A, seed=seed)
    return atoms


def time_md(atoms, potential, steps: int, warmup: int, seed: int) -> dict:
    """Warm up, then time ``steps`` NVT steps; returns ms/step and ns/day."""
    from md_reference.md.lammps_driver import LammpsSession, MDSettings

    with LammpsSession(atoms, potential) as sess:
        sess.setup_md(MDSettings(temperature_K=TEMPERATURE_K, timestep_fs=TIMESTEP_FS, seed=seed))
        t0 = time.perf_counter()
        sess.run(max(warmup, 1))
        t_warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        sess.run(steps)
        elapsed = time.perf_counter() - t0
        temp = sess.temperature_K()
    ms = 1e3 * elapsed / steps
    return {"ms_per_step": ms, "ns_per_day": TIMESTEP_FS * 1e-6 * 86400e3 / ms, "steps": steps,
            "warmup_steps": max(warmup, 1), "warmup_s": t_warm, "final_temperature_K": temp}


def time_calculator(atoms, calc, repeats: int = 5) -> float:
    """ms of one energy+forces+stress call of an ASE calculator (median of ``repeats``)."""
    a = atoms.copy()
    a.calc = calc
    rng = np.random.default_rng(0)
    out = []
    for _ in range(repeats + 1):
        a.positions = atoms.positions + rng.normal(0.0, 1e-3, atoms.positions.shape)
        t0 = time.perf_counter()
        a.get_potential_energy()
        a.get_forces()
        a.get_stress()
        out.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(out[1:]))


def make_paper_model(workdir: Path, reaxff: str, seed: int) -> tuple[Path, dict]:
    """Package a 'paper'-preset Allegro trained for one epoch on a few ReaxFF frames."""
    from md_reference.ml import training as T

    t0 = time.perf_counter()
    settings = T.SamplingSettings(frames_per_cell=2, equilibration_steps=50, sample_every=10, seed=seed,
                                  cells=T.DEFAULT_CELLS[:3])
    T.build_dataset(f"reaxff:{reaxff}", workdir / "frames.extxyz", settings)
    cfg = T.write_training_config(workdir, workdir / "frames.extxyz", preset="paper", max_epochs=1, seed=seed,
                                  val_fraction=1 / 3)
    ckpt = T.train(cfg, workdir / "run")
    model = T.package(ckpt, workdir / "paper.nequip.zip")
    return model, {"origin": "1 epoch on 6 ReaxFF frames (timing only)",
                   "build_time_s": round(time.perf_counter() - t0, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="MD speed: ReaxFF vs Allegro (eager, compiled) on 1081 atoms")
    ap.add_argument("--steps", type=int, default=20, help="timed MD steps per case (default 20)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    ap.add_argument("--reaxff", default=str(DEFAULT_REAXFF), help="ReaxFF parameter file")
    ap.add_argument("--model", default=None, help="packaged Allegro model to time instead of a fresh 'paper' one")
    ap.add_argument("--cache-dir", default=None,
                    help="compiled-model cache (default: temporary for a fresh model, else the user cache)")
    ap.add_argument("--no-eager", action="store_true")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--no-reaxff", action="store_true")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=str(REPO / "bench_results" / "bench_md.json"), help="JSON report path")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    log = logging.getLogger("bench_md")

    import torch

    torch.set_num_threads(1)
    from md_reference.ml.allegro import AllegroPotential
    from md_reference.md.potentials import ReaxFF

    atoms = build_system(args.seed)
    rows: list[dict] = []
    report = {"schema": "halide-kmc/bench-md/1", "environment": environment(torch.get_num_threads()),
              "system": {"shape": list(SHAPE), "n_atoms": len(atoms), "lattice_constant_A": LATTICE_A,
                         "defect": "1 split I interstitial", "temperature_K": TEMPERATURE_K,
                         "timestep_fs": TIMESTEP_FS, "ensemble": "NVT (Nose-Hoover)"},
              "results": rows}

    if not args.no_reaxff:
        pot = ReaxFF(args.reaxff)
        log.info("ReaxFF: %d steps", args.steps)
        rows.append({"potential": "ReaxFF", "backend": "lammps", **time_md(atoms, pot, args.steps, args.warmup,
                                                                             args.seed), "calc_ms": None,
                     "describe": pot.describe()})

    with tempfile.TemporaryDirectory(prefix="bench_md_") as tmp:
        tmp = Path(tmp)
        if args.model:
            model = Path(args.model).resolve()
            report["model"] = {"origin": "given"}
            cache = args.cache_dir
        else:
            log.info("building a 'paper'-preset Allegro model in %s", tmp)
            model, report["model"] = make_paper_model(tmp, args.reaxff, args.seed)
            cache = args.cache_dir or tmp / "cache"
        label = "Allegro given" if args.model else "Allegro paper"
        modes = [m for m, skip in (("never", args.no_eager), ("always", args.no_compile)) if not skip]
        for mode in modes:
            t0 = time.perf_counter()
            try:
                pot = AllegroPotential(model, compile=mode, cache_dir=cache)
            except Exception as exc:  # noqa: BLE001 - report and go on with the other backend
                log.error("Allegro compile=%s failed: %s", mode, exc)
                rows.append({"potential": label, "backend": mode, "error": str(exc)[-2000:]})
                continue
            load_s = time.perf_counter() - t0
            calc_ms = time_calculator(atoms, pot.calculator)
            log.info("Allegro %s: %d steps", pot.backend, args.steps)
            rows.append({"potential": label, "backend": pot.backend, "load_or_compile_s": round(load_s, 1),
                         **time_md(atoms, pot, args.steps, args.warmup, args.seed), "calc_ms": calc_ms,
                         "describe": pot.describe()})

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")

    print(f"\n{len(atoms)} atoms, NVT {TEMPERATURE_K:.0f} K, {TIMESTEP_FS} fs, 1 thread, "
          f"{report['environment']['cpu_model']}")
    print(f"{'potential':<15}{'backend':<13}{'params':>8}{'ms/step':>10}{'ns/day':>9}{'calc ms':>9}{'load s':>8}")
    for r in rows:
        if "error" in r:
            print(f"{r['potential']:<15}{r['backend']:<13}  failed: {r['error'].splitlines()[-1][:60]}")
            continue
        n_par = (r["describe"].get("n_parameters") or "") if r["potential"] != "ReaxFF" else ""
        calc = f"{r['calc_ms']:.1f}" if r["calc_ms"] is not None else ""
        load = f"{r['load_or_compile_s']:.1f}" if "load_or_compile_s" in r else ""
        print(f"{r['potential']:<15}{r['backend']:<13}{n_par!s:>8}{r['ms_per_step']:>10.1f}{r['ns_per_day']:>9.3f}"
              f"{calc:>9}{load:>8}")
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
