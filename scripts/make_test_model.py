"""Make the tiny Allegro model of the tests (``tests/data/tiny_allegro.nequip.zip``).

Steps: short ReaxFF NVT runs at 600 K of 2x2x2 CsPbI3 / CsPbBr3 / mixed cells
with one vacancy or one split interstitial -> frames labelled with ReaxFF
(energy, forces, stress) -> ``nequip-train`` of the ``tiny`` Allegro preset
(~700 parameters) -> ``nequip-package build``. Writes the packaged model and
``tiny_allegro.json`` (command, seeds, dataset hash, versions, final
train/val metrics). The model is for plumbing tests, not for physics.

Run from the repository root (about a minute on one core)::

    OMP_NUM_THREADS=1 .venv/bin/python scripts/make_test_model.py

The ReaxFF file is read where it lies (``--reaxff``, default
``../shared/potentials/reaxff/IBrPbCs.ff`` next to the repository); it is
never copied into the repository.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from md_reference.ml import training as T  # noqa: E402
from md_reference.md.potentials import ReaxFF, file_sha256  # noqa: E402

DEFAULT_REAXFF = REPO.parent / "shared" / "potentials" / "reaxff" / "IBrPbCs.ff"
DEFAULT_OUT = REPO / "tests" / "data" / "tiny_allegro.nequip.zip"
SCHEMA = "halide-kmc/test-model/1"


def git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reaxff", default=str(DEFAULT_REAXFF), help="ReaxFF parameter file (IBrPbCs.ff)")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="packaged model (.nequip.zip)")
    ap.add_argument("--frames-per-cell", type=int, default=12, help="frames per MD trajectory (6 cells)")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--temperature", type=float, default=600.0, help="MD temperature (K)")
    ap.add_argument("--workdir", default=None, help="keep dataset, config and run here (default: a temp dir)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    reaxff = ReaxFF(args.reaxff)
    out = Path(args.out).resolve()
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="tiny_allegro_")
        work = Path(tmp.name)
    else:
        work = Path(args.workdir).resolve()
        work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        sampling = T.SamplingSettings(temperature_K=args.temperature, frames_per_cell=args.frames_per_cell,
                                      seed=args.seed)
        dataset = T.build_dataset(reaxff, work / "dataset.extxyz", sampling)
        t_data = time.perf_counter() - t0
        config = T.write_training_config(work, work / "dataset.extxyz", preset="tiny", max_epochs=args.epochs,
                                         seed=args.seed, device="cpu")
        ckpt = T.train(config, work / "run")
        metrics = T.final_metrics(work / "run")
        t_train = time.perf_counter() - t0 - t_data
        T.package(ckpt, out)
    finally:
        if tmp is not None:
            tmp.cleanup()

    size = out.stat().st_size
    keep = ("epoch", "train_metric_epoch/forces_rmse", "train_metric_epoch/per_atom_energy_rmse",
            "train_metric_epoch/stress_rmse", "val0_epoch/forces_rmse", "val0_epoch/forces_mae",
            "val0_epoch/per_atom_energy_rmse", "val0_epoch/per_atom_energy_mae", "val0_epoch/stress_rmse")
    record = {
        "schema": SCHEMA,
        "model_file": out.name,
        "model_sha256": file_sha256(out),
        "model_bytes": size,
        "purpose": "plumbing tests of md_reference.ml.allegro (not a physical model)",
        "command": " ".join(["python", "scripts/make_test_model.py",
                             *(shlex.quote(a) for a in (argv or sys.argv[1:]))]),
        "git_revision": git_revision(),
        "seed": args.seed,
        "preset": "tiny",
        "training_preset": T.PRESETS["tiny"],
        "max_epochs": args.epochs,
        "reaxff": {"file": Path(args.reaxff).name, "sha256": reaxff.sha256},
        "dataset": {k: dataset[k] for k in ("sha256", "n_frames", "n_atoms", "species", "forces_rms_eV_A",
                                            "energy_per_atom_std_eV")},
        "sampling": T.to_jsonable(asdict(sampling)),
        "final_metrics": {k: metrics[k] for k in keep if k in metrics},
        "units": {"energy": "eV", "forces": "eV/A", "stress": "eV/A^3"},
        "versions": T.versions(),
        "wall_time_s": {"dataset": round(t_data, 1), "training": round(t_train, 1),
                        "total": round(time.perf_counter() - t0, 1)},
    }
    out.with_name(out.name.replace(".nequip.zip", ".json")).write_text(json.dumps(record, indent=2) + "\n")
    logging.getLogger(__name__).info("wrote %s (%.0f kB) and its provenance JSON", out, size / 1024)
    return 0


if __name__ == "__main__":
    sys.exit(main())
