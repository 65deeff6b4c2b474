"""``kmc md ...`` subcommands: direct MD with LAMMPS and its analysis.

``kmc md run``      independent MD runs of one cell with one defect at several temperatures
``kmc md analyze``  defect tracking, hop events, D (Eq. 1), Arrhenius fits, layer/bridge/mixing statistics
``kmc md train``    dataset (sampled, FPS-selected, labelled by a reference) + nequip-train + package (+ compile)
``kmc md validate`` a model against its reference: force/energy parity on held-out MD frames, NEB barriers, speed

Only :mod:`argparse` is imported here; LAMMPS, ASE and torch load when a
command runs.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from common.atomic import write_text_atomic


def add_md_parser(sub) -> None:
    md = sub.add_parser("md", help="direct MD with LAMMPS (ReaxFF, Allegro) and its analysis")
    msub = md.add_subparsers(dest="md_command", required=True)

    p = msub.add_parser(
        "run", help="run MD of a CsPbX3 cell with one halide defect",
        description="Independent NVT runs (after an optional NPT measurement of the lattice constant) of a "
                    "cubic CsPbX3 supercell with one vacancy or split interstitial; one HDF5 trajectory per "
                    "(temperature, run) in --out.")
    g = p.add_argument_group("structure")
    g.add_argument("--structure", default="pure", choices=["pure", "random", "heterojunction", "nanodomain"])
    g.add_argument("--shape", nargs=3, type=int, default=[4, 4, 4], metavar=("NX", "NY", "NZ"))
    g.add_argument("--species", default="I", help="pure: the halide (I or Br)")
    g.add_argument("--x-I", type=float, help="random: iodide fraction")
    g.add_argument("--thickness-I", type=int, help="heterojunction: I layer thickness (cells)")
    g.add_argument("--thickness-Br", type=int, help="heterojunction: Br layer thickness (cells)")
    g.add_argument("--interface", choices=["I-rich", "Br-rich"], help="heterojunction interface type")
    g.add_argument("--axis", default=None, help="heterojunction stacking axis (x, y, z)")
    g.add_argument("--domain-species", choices=["I", "Br"], help="nanodomain: halide of the domain")
    g.add_argument("--domain-size", type=int, help="nanodomain: edge in cells")
    g.add_argument("--defect", default="interstitial", choices=["interstitial", "vacancy", "none"])
    g.add_argument("--where", default="random",
                   help="defect site: a site index or a rule (random, domain, matrix, interface, region:I, region:Br)")
    g.add_argument("--added-species", default="same", choices=["same", "I", "Br"],
                   help="halide added for an interstitial")
    g.add_argument("--lattice-constant", default="vegard",
                   help="A, 'vegard' (between --a-I and --a-Br) or 'npt' (measured with the potential at each T)")
    g.add_argument("--a-I", type=float, default=6.30, help="CsPbI3 lattice constant for Vegard (A)")
    g.add_argument("--a-Br", type=float, default=5.90, help="CsPbBr3 lattice constant for Vegard (A)")
    g.add_argument("--structure-seed", type=int, default=0, help="seed of the random mix and the defect site")
    g.add_argument("--vary-structure", action="store_true", help="a different structure seed per run")
    m = p.add_argument_group("MD")
    m.add_argument("--potential", required=True,
                   help="KIND:PATH, e.g. reaxff:/path/IBrPbCs.ff or allegro:/path/model.nequip.zip")
    m.add_argument("-T", "--temperature", nargs="+", type=float, default=[600.0], help="temperature(s), K")
    m.add_argument("--runs", type=int, default=1, help="independent runs per temperature")
    m.add_argument("--ps", type=float, default=20.0, help="production time per run, ps")
    m.add_argument("--equil-ps", type=float, default=2.0, help="equilibration before recording, ps")
    m.add_argument("--dt-fs", type=float, default=2.0, help="timestep, fs")
    m.add_argument("--dump-fs", type=float, default=50.0, help="interval between recorded frames, fs")
    m.add_argument("--thermostat", default="nose-hoover", choices=["nose-hoover", "langevin"])
    m.add_argument("--damping-fs", type=float, default=100.0, help="thermostat damping time, fs")
    m.add_argument("--seed", type=int, default=1, help="master seed of the velocities")
    m.add_argument("--workers", type=int, default=1, help="parallel processes (one thread each)")
    m.add_argument("-q", "--quiet", action="store_true", help="no progress bars or progress log lines")
    m.add_argument("--out", "-o", default="md_runs", help="output folder")
    m.add_argument("--no-resume", action="store_true", help="start over instead of resuming checkpoints")
    m.add_argument("--max-wall-s", type=float, help="stop each run at a checkpoint after this wall time")

    a = msub.add_parser("analyze", help="analyse MD trajectories",
                        description="Track the defect in each trajectory, extract labelled hop events, "
                                    "compute D by Eq. 1 per species, average over runs per temperature, fit "
                                    "Arrhenius, and the layer, bridge and mixing statistics. Writes a JSON "
                                    "summary and plots.")
    a.add_argument("trajectories", nargs="+", help="trajectory files or folders holding T*_r*.h5")
    a.add_argument("--out", "-o", help="summary JSON (default: <first folder>/md_analysis.json)")
    a.add_argument("--plots", help="folder for plots (default: next to the summary)")
    a.add_argument("--no-plots", action="store_true")
    a.add_argument("--window-frames", type=int, help="tracker: running-average window (frames)")
    a.add_argument("--hysteresis-A", type=float, help="tracker: site-switch margin (A)")
    a.add_argument("--min-dwell-ps", type=float, help="tracker: shortest residence counted as a hop (ps)")

    t = msub.add_parser(
        "train", help="train an Allegro model on reference labels (dataset + nequip-train + package)",
        description="Sample defective CsPbX3 cells (thermal MD, strained cells, hop paths), select frames by "
                    "farthest-point sampling, label them with the reference potential, train an Allegro model "
                    "with nequip-train and package it. Writes OUT/NAME.nequip.zip and OUT/NAME.json (the model "
                    "record: command, seed, dataset hash, versions, metrics); intermediates in OUT/NAME_work.")
    t.add_argument("--reference", required=True, help="labelling potential, e.g. reaxff:/path/IBrPbCs.ff")
    t.add_argument("--preset", default="small", choices=["tiny", "small", "paper"], help="model size")
    t.add_argument("--dataset", default="small",
                   help="dataset preset (tiny, small, large) or an existing .extxyz with its sidecar")
    t.add_argument("--epochs", type=int, default=100)
    t.add_argument("--r-max", type=float, help="cutoff radius (A); the preset's by default")
    t.add_argument("--species", nargs="+", default=["Cs", "Pb", "I", "Br"], help="model species")
    t.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where nequip-train runs")
    t.add_argument("--seed", type=int, default=1, help="seed of the dataset sampling and the training")
    t.add_argument("--lr", type=float, help="learning rate (the preset's by default)")
    t.add_argument("--batch-size", type=int, help="batch size (the preset's by default)")
    t.add_argument("--val-fraction", type=float, default=0.1, help="fraction of frames for nequip's validation")
    t.add_argument("--loss", nargs="+", default=[], metavar="TERM=WEIGHT",
                   help="loss weights, e.g. stress=1000 (terms: total_energy (per atom), forces, stress)")
    t.add_argument("--name", default="allegro", help="model file stem")
    t.add_argument("--compile", action="store_true",
                   help="also compile the model for this machine into the compile cache (AOTInductor)")
    t.add_argument("--work", help="folder of the intermediates (default OUT/NAME_work)")
    t.add_argument("--out", "-o", default="models", help="output folder")

    v = msub.add_parser(
        "validate", help="validate a model against its reference potential",
        description="Force parity (R2, MAE, RMSE; all atoms and defect environment) and energy/stress errors "
                    "on held-out MD frames (mixed and pure cells, seeds never used for training), CI-NEB "
                    "barriers of the four reference hops with model and reference, MD speed. Prints a "
                    "summary; writes validation.json and parity/barrier plots to --out.")
    v.add_argument("model", help="model file (.nequip.zip / .nequip.pt2) or a potential spec KIND:PATH")
    v.add_argument("--reference", help="reference potential spec (default: the one in the model's record)")
    v.add_argument("--out", "-o", help="folder of validation.json and the plots (default: MODEL_validation)")
    v.add_argument("--compile", default="auto", choices=["auto", "never", "always"],
                   help="Allegro compile mode (auto: cached compiled model if any, else eager)")
    v.add_argument("--device", default="cpu", help="Allegro device (cpu, cuda)")
    v.add_argument("-T", "--temperature", type=float, default=600.0, help="MD temperature of the frames, K")
    v.add_argument("--shape", nargs=3, type=int, default=[3, 3, 3], metavar=("NX", "NY", "NZ"))
    v.add_argument("--frames", type=int, default=8, help="frames per (composition, defect) run")
    v.add_argument("--sample-every", type=int, default=100, help="MD steps (2 fs) between frames")
    v.add_argument("--equil-steps", type=int, default=1000, help="MD steps before the first frame")
    v.add_argument("--seed", type=int, default=2027, help="seed of the held-out MD")
    v.add_argument("--defect-radius", type=float, default=5.0, help="defect environment radius (A)")
    v.add_argument("--no-neb", action="store_true", help="skip the NEB barriers")
    v.add_argument("--dft-paths", help="folder of the DFT path images (udmb_*.xyz): adds DFT energies")
    v.add_argument("--timing-steps", type=int, default=10, help="timed MD steps on 1081 atoms (0: none)")
    v.add_argument("--no-plots", action="store_true")


def _structure_params(args) -> dict:
    kind = args.structure
    if kind == "pure":
        return {"species": args.species}
    if kind == "random":
        if args.x_I is None:
            raise ValueError("--structure random needs --x-I")
        return {"x_I": args.x_I}
    if kind == "heterojunction":
        if args.thickness_I is None or args.thickness_Br is None:
            raise ValueError("--structure heterojunction needs --thickness-I and --thickness-Br")
        out = {"thickness_I": args.thickness_I, "thickness_Br": args.thickness_Br,
               "interface": args.interface or "I-rich"}
        if args.axis is not None:
            out["axis"] = args.axis
        return out
    if kind == "nanodomain":
        if args.domain_species is None or args.domain_size is None:
            raise ValueError("--structure nanodomain needs --domain-species and --domain-size")
        return {"domain_species": args.domain_species, "domain_size": args.domain_size}
    raise ValueError(f"unknown structure {kind!r}")


def _steps(ps: float, dt_fs: float, name: str) -> int:
    n = round(ps * 1000.0 / dt_fs)
    if abs(n * dt_fs - ps * 1000.0) > 1e-6 * max(1.0, ps * 1000.0):
        raise ValueError(f"{name} = {ps} ps is not a whole number of {dt_fs} fs steps")
    return int(n)


def cmd_md_run(args) -> int:
    import math  # noqa: PLC0415

    from md_reference.md.lammps_driver import MDSettings  # noqa: PLC0415
    from md_reference.md.runner import MDJob, StructureSpec, run_all  # noqa: PLC0415

    for T in args.temperature:
        if not (math.isfinite(T) and 1.0 <= T <= 5000.0):
            raise ValueError(f"-T/--temperature must be finite temperatures in [1, 5000] K, got {T}")
    if len({f"{T:g}" for T in args.temperature}) != len(args.temperature):
        raise ValueError(f"-T/--temperature has duplicate temperatures {args.temperature}")
    if args.runs < 1:
        raise ValueError(f"--runs must be >= 1, got {args.runs}")
    for name in ("ps", "equil_ps", "dt_fs", "dump_fs", "damping_fs"):
        v = getattr(args, name)
        if not math.isfinite(v) or v < 0 or (v == 0 and name != "equil_ps"):
            raise ValueError(f"--{name.replace('_', '-')} must be a finite positive number, got {v}")
    if args.max_wall_s is not None and not args.max_wall_s > 0:
        raise ValueError(f"--max-wall-s must be > 0, got {args.max_wall_s}")
    lc = args.lattice_constant
    if lc not in ("vegard", "npt"):
        try:
            lc = float(lc)
        except ValueError:
            raise ValueError(f"--lattice-constant must be a number, 'vegard' or 'npt', got {lc!r}") from None
    where = int(args.where) if str(args.where).lstrip("-").isdigit() else args.where
    dump_every = _steps(args.dump_fs / 1000.0, args.dt_fs, "--dump-fs")
    n_steps = _steps(args.ps, args.dt_fs, "--ps")
    if n_steps % dump_every:
        raise ValueError(f"--ps ({args.ps} ps) must be a multiple of --dump-fs ({args.dump_fs} fs)")
    settings = MDSettings(temperature_K=args.temperature[0], timestep_fs=args.dt_fs, n_steps=n_steps,
                          equilibration_steps=_steps(args.equil_ps, args.dt_fs, "--equil-ps"),
                          dump_every=dump_every, thermostat=args.thermostat,
                          thermostat_damping_fs=args.damping_fs, seed=1).validate()
    job = MDJob(
        structure=StructureSpec(kind=args.structure, shape=tuple(args.shape), defect=args.defect, where=where,
                                added_species=args.added_species, lattice_constant=lc,
                                seed=args.structure_seed, params=_structure_params(args)),
        potential=args.potential,
        settings=settings,
        temperatures_K=tuple(args.temperature),
        n_runs=args.runs,
        seed=args.seed,
        out_dir=args.out,
        vary_structure=args.vary_structure,
        a_I_A=args.a_I,
        a_Br_A=args.a_Br,
    )
    # Fail on a bad potential or structure before starting workers.
    from md_reference.md.potentials import load_potential  # noqa: PLC0415
    from md_reference.md.structures import build_cell  # noqa: PLC0415

    load_potential(job.potential)
    build_cell(job.structure.kind, job.structure.shape, defect=job.structure.defect, where=where,
               added_species=job.structure.added_species, lattice_constant=6.0, seed=job.structure.seed,
               **job.structure.params)
    logging.getLogger("md_reference").setLevel(logging.WARNING if getattr(args, "quiet", False) else logging.INFO)
    results = run_all(job, workers=args.workers, resume=not args.no_resume,
                      progress=not getattr(args, "quiet", False),
                      max_wall_s=args.max_wall_s)
    print(f"{'file':<40} {'status':<18} {'frames':>7} {'ms/step':>8} {'<T> (K)':>8}")
    for r in sorted(results, key=lambda r: r["path"]):
        ms = r.get("ms_per_step")
        tm = r.get("mean_temperature_K")
        print(f"{r['path']:<40} {r['status']:<18} {r.get('n_frames', ''):>7} "
              f"{'' if ms is None else f'{ms:8.2f}':>8} {'' if tm is None else f'{tm:8.1f}':>8}")
    print(f"\nwrote {Path(args.out) / 'job.json'}; analyse with: kmc md analyze {args.out}")
    return 0


def cmd_md_analyze(args) -> int:
    from md_reference.analysis.analyze import analyze_files, expand_paths, print_report  # noqa: PLC0415

    files = expand_paths(args.trajectories)
    tracker = {k: v for k, v in (("window_frames", args.window_frames), ("hysteresis_A", args.hysteresis_A),
                                 ("min_dwell_ps", args.min_dwell_ps)) if v is not None}
    out = Path(args.out) if args.out else files[0].parent / "md_analysis.json"
    plots = None if args.no_plots else Path(args.plots) if args.plots else out.parent / "md_plots"
    summary = analyze_files(files, tracker_kwargs=tracker, plots_dir=plots)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(summary, indent=1))
    print_report(summary, sys.stdout)
    print(f"\nwrote {out}" + (f" and plots in {plots}" if plots else ""))
    return 0


def _command_line(args_list=None) -> str:
    import shlex  # noqa: PLC0415

    argv = sys.argv[1:] if args_list is None else args_list
    return " ".join(["kmc", *(shlex.quote(a) for a in argv)])


def cmd_md_train(args) -> int:
    from md_reference.ml.training import train_pipeline  # noqa: PLC0415

    loss = {}
    for item in args.loss:
        term, _, weight = item.partition("=")
        try:
            loss[term] = float(weight)
        except ValueError:
            raise ValueError(f"--loss takes TERM=WEIGHT, got {item!r}") from None
    logging.getLogger("md_reference").setLevel(logging.INFO)
    record = train_pipeline(
        args.out, args.reference, name=args.name, preset=args.preset, dataset=args.dataset, epochs=args.epochs,
        r_max_A=args.r_max, species=args.species, device=args.device, seed=args.seed, lr=args.lr,
        batch_size=args.batch_size, val_fraction=args.val_fraction, loss_coeffs=loss or None,
        compile=args.compile, work_dir=args.work,
        reference_spec=args.reference, command=_command_line(getattr(args, "argv", None)))
    m = record["final_metrics"]
    out = Path(args.out)
    print(f"model     {out / record['model_file']} ({record['n_parameters']} parameters, "
          f"{record['model_bytes'] / 1024:.0f} kB)")
    print(f"dataset   {record['dataset']['n_frames']} frames {record['dataset']['frames_by_source']}, "
          f"sha256 {record['dataset']['sha256'][:12]}")
    for k in ("val0_epoch/forces_mae", "val0_epoch/forces_rmse", "val0_epoch/per_atom_energy_mae"):
        if k in m:
            print(f"{k:<34} {m[k]:.4f}")
    print(f"wall time {record['wall_time_s']['total']:.0f} s; record {out / record['model_file'].replace('.nequip.zip', '.json')}")
    print(f"validate with: kmc md validate {out / record['model_file']}")
    return 0


def _model_spec(model: str, compile_mode: str, device: str):
    """A potential spec from ``KIND:PATH``, a model file or a bundled model name (Allegro by default)."""
    from md_reference.md.potentials import POTENTIALS  # noqa: PLC0415
    from md_reference.ml.allegro import BUNDLED_MODELS  # noqa: PLC0415 - no torch at import

    kind = model.split(":", 1)[0] if ":" in model else None
    if kind in POTENTIALS and kind != "allegro":
        return model
    path = model.split(":", 1)[1] if kind == "allegro" else model
    path = str(BUNDLED_MODELS.get(path, path))
    return {"kind": "allegro", "path": path, "compile": compile_mode, "device": device}


def _default_reference(model_path: Path) -> str:
    from md_reference.md.potentials import file_sha256  # noqa: PLC0415
    from md_reference.ml.training import model_record_path  # noqa: PLC0415

    rec_path = model_record_path(model_path)
    if not rec_path.is_file():
        raise ValueError(f"no model record {rec_path.name} next to {model_path}; give --reference KIND:PATH")
    rec = json.loads(rec_path.read_text()).get("reference", {})
    desc = rec.get("describe") or {}
    candidates = [rec.get("spec")]
    if desc.get("kind") and desc.get("path"):
        candidates.append(f"{desc['kind']}:{desc['path']}")
    for spec in candidates:
        if not spec or ":" not in spec:
            continue
        kind, path = spec.split(":", 1)
        if Path(path).is_file():
            if desc.get("sha256") and file_sha256(path) != desc["sha256"]:
                logging.getLogger(__name__).warning("reference %s differs from the one the model was trained on "
                                                    "(SHA-256 mismatch)", path)
            return spec
    raise ValueError(f"the reference of {model_path.name} ({candidates[0]}) is not found from here; "
                     "give --reference KIND:PATH")


def cmd_md_validate(args) -> int:
    from md_reference.ml.validation import (  # noqa: PLC0415
        ValidationSettings,
        format_report,
        validate_potential,
    )

    spec = _model_spec(args.model, args.compile, args.device)
    model_path = Path(spec["path"]) if isinstance(spec, dict) else Path(args.model.split(":", 1)[1])
    reference = args.reference or _default_reference(model_path)
    settings = ValidationSettings(temperature_K=args.temperature, shape=tuple(args.shape), frames_per_run=args.frames,
                                  sample_every=args.sample_every, equilibration_steps=args.equil_steps,
                                  seed=args.seed, defect_radius_A=args.defect_radius, neb=not args.no_neb,
                                  dft_paths_dir=args.dft_paths, timing_steps=args.timing_steps)
    name = model_path.name.replace(".nequip.zip", "").replace(".nequip.pt2", "")
    out = Path(args.out) if args.out else model_path.with_name(f"{name}_validation")
    logging.getLogger("md_reference").setLevel(logging.INFO)
    report = validate_potential(spec, reference, settings, out_dir=out, plots=not args.no_plots,
                                model_spec=args.model, reference_spec=reference)
    print(format_report(report))
    print(f"\nwrote {out / 'validation.json'}" + ("" if args.no_plots else " and plots"))
    return 0


def run_md_command(args) -> int:
    if args.md_command == "run":
        return cmd_md_run(args)
    if args.md_command == "analyze":
        return cmd_md_analyze(args)
    if args.md_command == "train":
        return cmd_md_train(args)
    if args.md_command == "validate":
        return cmd_md_validate(args)
    raise ValueError(f"unknown md command {args.md_command!r}")
