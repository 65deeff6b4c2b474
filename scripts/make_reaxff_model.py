"""Make the committed Allegro model ``md_reference/data/allegro_small_reaxff.nequip.zip`` and its validation.

Steps (each is a ``kmc md`` command, so the model record holds a command anyone can rerun):

1. ``kmc md train``: the ``small`` dataset preset of :mod:`md_reference.ml.dataset`
   (thermal MD of pure, mixed x = 0.25/0.5/0.75, heterojunction and nanodomain
   cells with one vacancy or split interstitial at 300 and 600 K, strained
   cells, IDPP hop paths, NEB bands in 3x3x3 mixed cells; farthest-point
   selection) labelled by the reference ReaxFF, the ``small`` Allegro preset
   (about 14k parameters), ``--epochs`` epochs on one CPU thread, packaged;
2. ``kmc md validate``: held-out 600 K MD frames (3x3x3 mixed, CsPbI3, CsPbBr3),
   NEB barriers of the four reference hops (with the DFT path images when
   ``--dft-paths`` exists), MD speed on 1081 atoms; JSON + plots in
   ``md_reference/data/allegro_small_reaxff_validation/``.

Run from the repository root (about 25-35 min on one core)::

    OMP_NUM_THREADS=1 .venv/bin/python scripts/make_reaxff_model.py

The ReaxFF file is read where it lies (``--reaxff``, default
``../shared/potentials/reaxff/IBrPbCs.ff``, relative to the repository root);
it is never copied into the repository. Intermediates (dataset, checkpoints,
logs) go to ``--work`` (default: a temporary folder, deleted).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DATA = Path("md_reference") / "data"
NAME = "allegro_small_reaxff"
LOSS = ["total_energy=1"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reaxff", default="../shared/potentials/reaxff/IBrPbCs.ff",
                    help="reference ReaxFF file (path relative to the repository root or absolute)")
    ap.add_argument("--dft-paths", default="../shared/reference/dft_migration_paths",
                    help="DFT path images for the barrier check (skipped when missing)")
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--loss", nargs="+", default=LOSS, metavar="TERM=WEIGHT", help="loss weights (kmc md train --loss)")
    ap.add_argument("--work", default=None, help="keep dataset, config and checkpoints here")
    ap.add_argument("--skip-train", action="store_true", help="only validate the existing model")
    args = ap.parse_args(argv)
    os.chdir(REPO)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")

    from kmc.cli import main as kmc

    tmp = None
    work = Path(args.work) if args.work else Path(tmp := tempfile.mkdtemp(prefix="allegro_small_"))
    model = DATA / f"{NAME}.nequip.zip"
    try:
        if not args.skip_train:
            rc = kmc(["md", "train", "--reference", f"reaxff:{args.reaxff}", "--preset", "small", "--dataset", "small",
                      "--epochs", str(args.epochs), "--seed", str(args.seed), "--name", NAME,
                      "--loss", *args.loss, "--out", str(DATA), "--work", str(work)])
            if rc:
                return rc
        val_dir = DATA / f"{NAME}_validation"
        cmd = ["md", "validate", str(model), "--reference", f"reaxff:{args.reaxff}", "--compile", "never",
               "--out", str(val_dir)]
        if Path(args.dft_paths).is_dir():
            cmd += ["--dft-paths", args.dft_paths]
        rc = kmc(cmd)
        if rc:
            return rc
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    record_path = DATA / f"{NAME}.json"
    record = json.loads(record_path.read_text())
    report = json.loads((val_dir / "validation.json").read_text())
    record["regenerate"] = "OMP_NUM_THREADS=1 .venv/bin/python scripts/make_reaxff_model.py " + " ".join(
        a for a in (argv if argv is not None else sys.argv[1:]))
    record["validation"] = {"report": str(val_dir / "validation.json"), "command": "kmc " + " ".join(cmd[:2] + [
        str(model)] + cmd[3:]), "summary": report["summary"], "speed": report.get("speed"),
        "barriers_eV": {b["hop"]: {"model": b["model"].get("barrier_eV"), "reference": b["reference"].get("barrier_eV"),
                                   "difference": b.get("barrier_difference_eV")} for b in report.get("barriers", [])}}
    sm = report["summary"]
    record["limitations"] = record.get("limitations", "") + (
        f" Validation against the reference ({sm['headline_set']}, 600 K): force R2 {sm['force_r2_all']:.3f}, MAE "
        f"{1e3 * sm['force_mae_all_eV_A']:.0f} meV/A (defect environment R2 {sm['force_r2_defect_env']:.3f}, MAE "
        f"{1e3 * sm['force_mae_defect_env_eV_A']:.0f} meV/A), energy MAE {1e3 * sm['energy_mae_eV_atom']:.1f} meV/atom"
        + ("" if sm.get("max_abs_barrier_difference_eV") is None else
           f"; CI-NEB barriers of the four reference hops differ from the reference's by up to "
           f"{sm['max_abs_barrier_difference_eV']:.2f} eV, so take barriers and rates from the reference NEB, "
           "not from this model") + ".")
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"updated {record_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
