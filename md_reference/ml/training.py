"""Training, packaging and compiling Allegro models with ``nequip-train``.

From a few user-facing choices (size preset, cutoff, species, epochs, device)
to a deployed model, each step writing one self-describing file:

1. a dataset (:mod:`md_reference.ml.dataset`: sampled, FPS-selected and labelled
   frames in extxyz with a JSON sidecar);
2. :func:`write_training_config` writes the Hydra YAML that ``nequip-train``
   reads (an ``allegro.model.AllegroModel`` of a named size preset) and
   :func:`train` runs it in a subprocess (best checkpoint ``best.ckpt``);
3. :func:`package` turns the best checkpoint into a portable ``.nequip.zip``
   that :class:`md_reference.ml.allegro.AllegroPotential` loads (eagerly, or
   compiled with AOTInductor for the machine that runs it and cached:
   :func:`md_reference.ml.allegro.compile_package`).

:func:`train_pipeline` runs all of it and writes ``NAME.json`` next to the
model: the command, seed, dataset SHA-256, preset, versions, final metrics and
wall times (``kmc md train`` is its command line).

Nothing here imports torch or nequip at import time: training and packaging
run in subprocesses with one thread (``OMP_NUM_THREADS=1``) unless told
otherwise; only :func:`build_model_from_config` imports nequip.

The dataset functions that used to live here (:func:`sample_md_frames`,
:func:`label_frames_with_lammps`, :func:`write_dataset`, :func:`build_dataset`,
:class:`CellSpec`, :class:`SamplingSettings`) are re-exported from
:mod:`md_reference.ml.dataset`.

Units: energies eV, forces eV/A, stress eV/A^3 with ASE's sign convention
(positive under tension, ``stress = -virial / V``).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common.atomic import write_text_atomic
from common.provenance import git_revision, to_jsonable, versions  # noqa: F401 - re-exported
from md_reference.md.potentials import file_sha256
from md_reference.ml.dataset import (  # noqa: F401 - re-exported (older home of the dataset functions)
    DATASET_SCHEMA,
    DEFAULT_CELLS,
    SPECIES,
    CellSpec,
    SamplingSettings,
    build_dataset,
    label_frames_with_lammps,
    sample_md_frames,
    write_dataset,
)

log = logging.getLogger(__name__)

TRAINING_SCHEMA = "halide-kmc/allegro-training/1"
MODEL_RECORD_SCHEMA = "halide-kmc/allegro-model/1"


# ----------------------------------------------------------------------------
# training config
# ----------------------------------------------------------------------------
# Allegro sizes (parameters for 4 species). "paper" is the size of a production
# model for this system: r_max 6 A, l_max 2, 2 layers, 64 scalar / 32 tensor
# features, Allegro MLPs 2 x 128 (the Allegro tutorial's), 1.3e5 parameters.
PRESETS: dict[str, dict] = {
    "tiny": dict(r_max_A=5.0, l_max=1, num_layers=1, num_scalar_features=8, num_tensor_features=4,
                 mlp_width=8, allegro_mlp_width=8, allegro_mlp_depth=1, num_bessels=8, batch_size=5,
                 lr=5e-3),  # 720 parameters
    "small": dict(r_max_A=5.5, l_max=1, num_layers=2, num_scalar_features=32, num_tensor_features=8,
                  mlp_width=32, allegro_mlp_width=32, allegro_mlp_depth=1, num_bessels=8, batch_size=5,
                  lr=2e-3),  # 13 776 parameters
    "paper": dict(r_max_A=6.0, l_max=2, num_layers=2, num_scalar_features=64, num_tensor_features=32,
                  mlp_width=64, allegro_mlp_width=128, allegro_mlp_depth=2, num_bessels=8, batch_size=4,
                  lr=1e-3),  # 132 352 parameters
}


LR_SCHEDULES = ("constant", "cosine")


def _preset(name: str) -> dict:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets are {sorted(PRESETS)}")
    return dict(PRESETS[name])


def write_training_config(out_dir: str | Path, dataset_extxyz: str | Path, *, preset: str = "tiny",
                          r_max_A: float | None = None, species=SPECIES, max_epochs: int = 50,
                          device: str = "cpu", seed: int = 1, val_fraction: float = 0.2,
                          stress: bool = True, model_dtype: str = "float32", lr: float | None = None,
                          batch_size: int | None = None, lr_schedule: str = "constant",
                          loss_coeffs: dict | None = None, energy_shifts: str | dict = "mean",
                          name: str = "train.yaml") -> Path:
    """Write the ``nequip-train`` Hydra config of an Allegro model.

    Parameters
    ----------
    out_dir : path
        Folder of the YAML (created).
    dataset_extxyz : path
        Labelled frames (:func:`write_dataset`); split into train/val by ``val_fraction``.
    preset : {"tiny", "small", "paper"}
        Model size (:data:`PRESETS`).
    r_max_A : float, optional
        Cutoff (A); the preset's by default.
    species : sequence of str
        Chemical symbols; they are also the model's type names.
    max_epochs, seed, lr, batch_size : training settings (``lr``/``batch_size`` default to the preset's).
    device : {"cpu", "cuda"}
        Lightning accelerator.
    stress : bool
        Train on stress too (the dataset must hold it).
    model_dtype : {"float32", "float64"}
    lr_schedule : {"constant", "cosine"}
        ``"cosine"``: cosine annealing of the learning rate over ``max_epochs``
        down to 5 % of the initial value (suits a fixed epoch budget).
    loss_coeffs : dict, optional
        Weights of the MSE loss terms ``total_energy`` (per atom, eV^2),
        ``forces`` ((eV/A)^2) and ``stress`` ((eV/A^3)^2); 1 each by default.
    energy_shifts : {"mean", "fit"} or dict
        Fixed per-type energy shifts of the model (eV/atom): the dataset's mean
        energy per atom for every type (``"mean"``), a least-squares fit of the
        frame energies on the species counts (``"fit"``, :func:`fit_energy_shifts`;
        the network then learns only what composition alone does not explain),
        or ``{type: eV}``.

    Returns
    -------
    Path of the YAML.
    """
    import yaml  # noqa: PLC0415 - pyyaml comes with nequip/hydra

    p = _preset(preset)
    if device not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}; valid devices are ['cpu', 'cuda']")
    if model_dtype not in ("float32", "float64"):
        raise ValueError(f"unknown model_dtype {model_dtype!r}; valid dtypes are ['float32', 'float64']")
    if isinstance(energy_shifts, dict):
        shifts = {str(k): float(v) for k, v in energy_shifts.items()}
    elif energy_shifts == "fit":
        shifts = fit_energy_shifts(dataset_extxyz, species)
    elif energy_shifts == "mean":
        shifts = "${training_data_stats:per_atom_energy_mean}"
    else:
        raise ValueError(f"unknown energy_shifts {energy_shifts!r}; valid values are 'mean', 'fit' or a dict")
    if isinstance(shifts, dict) and sorted(shifts) != sorted(str(t) for t in species):
        raise ValueError(f"energy_shifts must name every species {list(species)}, got {sorted(shifts)}")
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr_schedule {lr_schedule!r}; valid schedules are {list(LR_SCHEDULES)}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    if int(max_epochs) != max_epochs or max_epochs < 1:
        raise ValueError(f"max_epochs must be a positive integer, got {max_epochs}")
    species = [str(s) for s in species]
    r_max = float(r_max_A if r_max_A is not None else p["r_max_A"])
    width = p["mlp_width"]
    dataset = Path(dataset_extxyz).resolve()
    if not dataset.is_file():
        raise FileNotFoundError(f"dataset {dataset} not found")

    coeffs = {"total_energy": 1.0, "forces": 1.0, **({"stress": 1.0} if stress else {})}
    unknown = sorted(set(loss_coeffs or {}) - set(coeffs))
    if unknown:
        raise ValueError(f"unknown loss_coeffs {unknown}; valid terms are {sorted(coeffs)}")
    coeffs.update({k: float(v) for k, v in (loss_coeffs or {}).items()})
    if stress:
        loss = {"_target_": "nequip.train.EnergyForceStressLoss", "per_atom_energy": True, "coeffs": coeffs}
        metrics = {"_target_": "nequip.train.EnergyForceStressMetrics",
                   "coeffs": {"per_atom_energy_mae": 1.0, "forces_mae": 1.0, "stress_mae": 1.0}}
    else:
        loss = {"_target_": "nequip.train.EnergyForceLoss", "per_atom_energy": True, "coeffs": coeffs}
        metrics = {"_target_": "nequip.train.EnergyForceMetrics",
                   "coeffs": {"per_atom_energy_mae": 1.0, "forces_mae": 1.0}}
    loader = {"_target_": "torch.utils.data.DataLoader", "batch_size": int(batch_size or p["batch_size"])}
    config = {
        "run": ["train", "val"],
        "seed": int(seed),
        "cutoff_radius": r_max,
        "chemical_symbols": species,
        "model_type_names": "${chemical_symbols}",
        "data": {
            "_target_": "nequip.data.datamodule.ASEDataModule",
            "seed": "${seed}",
            "split_dataset": {"file_path": str(dataset), "train": 1.0 - val_fraction, "val": val_fraction},
            "transforms": [
                {"_target_": "nequip.data.transforms.ChemicalSpeciesToAtomTypeMapper",
                 "model_type_names": "${model_type_names}",
                 "chemical_species_to_atom_type_map": "${list_to_identity_dict:${chemical_symbols}}"},
                {"_target_": "nequip.data.transforms.NeighborListTransform", "r_max": "${cutoff_radius}"},
            ],
            "train_dataloader": {**loader, "shuffle": True},
            "val_dataloader": loader,
            "stats_manager": {"_target_": "nequip.data.CommonDataStatisticsManager",
                              "type_names": "${model_type_names}"},
        },
        "trainer": {
            "_target_": "lightning.Trainer",
            "accelerator": "gpu" if device == "cuda" else "cpu",
            "devices": 1,
            "max_epochs": int(max_epochs),
            "check_val_every_n_epoch": 1,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": {"_target_": "lightning.pytorch.loggers.CSVLogger",
                       "save_dir": "${hydra:runtime.output_dir}", "name": "csv", "version": 0},
            "callbacks": [
                {"_target_": "lightning.pytorch.callbacks.ModelCheckpoint",
                 "monitor": "val0_epoch/weighted_sum", "dirpath": "${hydra:runtime.output_dir}",
                 "filename": "best", "save_top_k": 1, "save_last": True},
            ],
        },
        "training_module": {
            "_target_": "nequip.train.EMALightningModule",
            "loss": loss,
            "val_metrics": metrics,
            "train_metrics": "${training_module.val_metrics}",
            "optimizer": {"_target_": "torch.optim.Adam", "lr": float(lr or p["lr"])},
            **({"lr_scheduler": {"scheduler": {"_target_": "torch.optim.lr_scheduler.CosineAnnealingLR",
                                               "T_max": int(max_epochs), "eta_min": 0.05 * float(lr or p["lr"])},
                                 "interval": "epoch", "frequency": 1}} if lr_schedule == "cosine" else {}),
            "model": {
                "_target_": "allegro.model.AllegroModel",
                "seed": "${seed}",
                "model_dtype": model_dtype,
                "type_names": "${model_type_names}",
                "r_max": "${cutoff_radius}",
                "radial_chemical_embed": {"_target_": "allegro.nn.TwoBodyBesselScalarEmbed",
                                          "num_bessels": p["num_bessels"], "bessel_trainable": False,
                                          "polynomial_cutoff_p": 6},
                "radial_chemical_embed_dim": p["num_scalar_features"],
                "scalar_embed_mlp_hidden_layers_depth": 1,
                "scalar_embed_mlp_hidden_layers_width": width,
                "scalar_embed_mlp_nonlinearity": "silu",
                "l_max": p["l_max"],
                "parity": True,
                "num_layers": p["num_layers"],
                "num_scalar_features": p["num_scalar_features"],
                "num_tensor_features": p["num_tensor_features"],
                "allegro_mlp_hidden_layers_depth": p["allegro_mlp_depth"],
                "allegro_mlp_hidden_layers_width": p["allegro_mlp_width"],
                "allegro_mlp_nonlinearity": "silu",
                "tp_path_channel_coupling": True,
                "readout_mlp_hidden_layers_depth": 1,
                "readout_mlp_hidden_layers_width": width,
                "readout_mlp_nonlinearity": "silu",
                "avg_num_neighbors": "${training_data_stats:num_neighbors_mean}",
                "per_type_energy_shifts": shifts,
                "per_type_energy_scales": "${training_data_stats:forces_rms}",
                "per_type_energy_scales_trainable": False,
                "per_type_energy_shifts_trainable": False,
            },
        },
        "global_options": {"allow_tf32": False},
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not name.endswith(".yaml"):
        raise ValueError(f"config name must end with .yaml, got {name!r}")
    path = out_dir / name
    header = (f"# nequip-train config written by md_reference.ml.training ({TRAINING_SCHEMA})\n"
              f"# preset {preset}; dataset sha256 {file_sha256(dataset)}\n")
    write_text_atomic(path, header + yaml.safe_dump(config, sort_keys=False))
    return path


def fit_energy_shifts(dataset_extxyz: str | Path, species=SPECIES) -> dict:
    """Per-type energies (eV/atom) from a least-squares fit ``E_frame ~ sum_t n_t mu_t``.

    The minimum-norm solution (numpy ``lstsq``) where species counts are
    linearly dependent (Cs and Pb always come in equal numbers: only
    ``mu_Cs + mu_Pb`` is determined, and it is split evenly).
    """
    import numpy as np  # noqa: PLC0415
    from ase.io import read  # noqa: PLC0415

    species = [str(t) for t in species]
    frames = read(str(dataset_extxyz), index=":", format="extxyz")
    if not frames:
        raise ValueError(f"{dataset_extxyz} holds no frames")
    counts = np.array([[a.get_chemical_symbols().count(t) for t in species] for a in frames], dtype=np.float64)
    energies = np.array([a.get_potential_energy() for a in frames])
    mu, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    return {t: float(v) for t, v in zip(species, mu)}


def build_model_from_config(config_path: str | Path, stats: dict | None = None):
    """Instantiate the model section of a training config (as ``nequip-train`` would).

    The ``${training_data_stats:NAME}`` values come from ``stats`` instead of
    the dataset (defaults: 30 neighbours, -3 eV/atom, 0.3 eV/A force RMS), so
    this checks a config and counts parameters without training. Imports
    nequip (about 6 s).

    Returns
    -------
    torch.nn.Module
        The nequip ``GraphModel``.
    """
    import nequip  # noqa: F401, PLC0415 - registers nequip's OmegaConf resolvers
    from hydra.utils import instantiate  # noqa: PLC0415
    from nequip.utils.global_state import set_global_state  # noqa: PLC0415
    from omegaconf import OmegaConf  # noqa: PLC0415

    values = {"num_neighbors_mean": 30.0, "per_atom_energy_mean": -3.0, "forces_rms": 0.3,
              "per_type_forces_rms": None, "per_type_num_neighbors_mean": None, **(stats or {})}

    def training_data_stats(name: str):
        if name not in values or values[name] is None:
            raise KeyError(f"no value for training_data_stats:{name}; pass it in stats")
        return values[name]

    OmegaConf.register_new_resolver("training_data_stats", training_data_stats, replace=True)
    cfg = OmegaConf.load(Path(config_path))
    set_global_state(**OmegaConf.to_container(cfg.get("global_options", {}), resolve=True))
    model_cfg = OmegaConf.to_container(cfg.training_module.model, resolve=True)
    return instantiate(model_cfg, _recursive_=False, _convert_="all")


# ----------------------------------------------------------------------------
# subprocesses
# ----------------------------------------------------------------------------
def _tool(name: str) -> str:
    here = Path(sys.executable).parent / name
    if here.is_file():
        return str(here)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found; install the allegro extra (nequip, nequip-allegro)")
    return found


def _one_thread_env(threads: int = 1) -> dict:
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[k] = str(threads)
    env.setdefault("PYTHONHASHSEED", "0")
    return env


def _run_logged(cmd: list[str], log_path: Path, env: dict, cwd: Path | None = None) -> None:
    log.info("running %s (log %s)", " ".join(cmd), log_path)
    with open(log_path, "w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    if proc.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"{Path(cmd[0]).name} failed with exit status {proc.returncode}; "
                           f"last lines of {log_path}:\n{tail}")


def train(config_path: str | Path, run_dir: str | Path | None = None, *, threads: int = 1,
          overrides: list[str] = ()) -> Path:
    """Run ``nequip-train`` on a config in a subprocess; returns the best checkpoint.

    Parameters
    ----------
    config_path : path
        YAML from :func:`write_training_config`.
    run_dir : path, optional
        Hydra output folder (checkpoints, ``csv/`` metrics, ``train.log``);
        ``<config folder>/run`` by default.
    threads : int
        ``OMP_NUM_THREADS`` of the subprocess.
    overrides : list of str
        Extra Hydra overrides, e.g. ``["trainer.max_epochs=2"]``.
    """
    config_path = Path(config_path).resolve()
    run_dir = Path(run_dir).resolve() if run_dir is not None else config_path.parent / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [_tool("nequip-train"), "-cp", str(config_path.parent), "-cn", config_path.name,
           f"hydra.run.dir={run_dir}", *overrides]
    _run_logged(cmd, run_dir / "train.log", _one_thread_env(threads), cwd=run_dir)
    best = run_dir / "best.ckpt"
    if not best.is_file():
        raise RuntimeError(f"nequip-train finished without {best}")
    return best


def final_metrics(run_dir: str | Path) -> dict:
    """Last logged value of each epoch metric of a run (``run_dir/csv/version_0/metrics.csv``)."""
    path = Path(run_dir) / "csv" / "version_0" / "metrics.csv"
    if not path.is_file():
        return {}
    last: dict[str, float] = {}
    with open(path) as fh:
        for row in csv.DictReader(fh):
            for k, v in row.items():
                if v not in ("", None) and ("epoch" in k or k == "epoch"):
                    last[k] = float(v)
    return last


def package(ckpt: str | Path, out_zip: str | Path, *, threads: int = 1) -> Path:
    """``nequip-package build CKPT OUT_ZIP``; returns the path of the ``.nequip.zip``."""
    out_zip = Path(out_zip).resolve()
    if not out_zip.name.endswith(".nequip.zip"):
        raise ValueError(f"a packaged model file must end with .nequip.zip, got {out_zip.name}")
    out_zip.parent.mkdir(parents=True, exist_ok=True)
    log_path = out_zip.with_name(out_zip.name + ".package.log")
    _run_logged([_tool("nequip-package"), "build", str(Path(ckpt).resolve()), str(out_zip)],
                log_path, _one_thread_env(threads), cwd=out_zip.parent)
    log_path.unlink(missing_ok=True)  # kept only when packaging fails
    return out_zip


# ----------------------------------------------------------------------------
# the whole pipeline
# ----------------------------------------------------------------------------
LIMITATIONS = (
    "Trained on labels of the reference potential, not on DFT: with the reference ReaxFF it inherits "
    "ReaxFF's neutral halide vacancies and interstitials (QEq keeps cells neutral), not the charged "
    "V_X+ / X_i- of the paper's DFT-trained Allegro model. A small model trained briefly on small cells "
    "(2x2x2 to 4x2x2 and 3x3x3): check its validation report before trusting rates from it."
)


def _config_shifts(config_path: Path):
    import yaml  # noqa: PLC0415

    text = Path(config_path).read_text()
    return yaml.safe_load(text)["training_module"]["model"]["per_type_energy_shifts"]


def model_record_path(model_path: str | Path) -> Path:
    """The JSON sidecar of a model: ``NAME.nequip.zip`` -> ``NAME.json``."""
    model_path = Path(model_path)
    name = model_path.name
    for suffix in (".nequip.zip", ".nequip.pt2"):
        if name.endswith(suffix):
            return model_path.with_name(name[: -len(suffix)] + ".json")
    return model_path.with_suffix(".json")


def train_pipeline(out_dir: str | Path, reference, *, name: str = "allegro", preset: str = "small",
                   dataset: str | Path = "small", epochs: int = 100, r_max_A: float | None = None,
                   species=SPECIES, device: str = "cpu", seed: int = 1, val_fraction: float = 0.1,
                   lr: float | None = None, batch_size: int | None = None, lr_schedule: str = "cosine",
                   loss_coeffs: dict | None = None, energy_shifts: str | dict = "fit",
                   compile: bool = False, cache_dir: str | Path | None = None, threads: int = 1,
                   work_dir: str | Path | None = None, reference_spec: str | None = None,
                   command: str | None = None) -> dict:
    """Dataset -> ``nequip-train`` -> ``nequip-package`` (-> compile) in one call.

    Writes ``OUT/NAME.nequip.zip`` and ``OUT/NAME.json`` (the model record:
    command, seed, dataset SHA-256 and summary, preset, versions, final
    train/val metrics, wall times, limitations). Intermediate files (dataset,
    config, checkpoints, logs) go to ``work_dir`` (default ``OUT/NAME_work``).

    Parameters
    ----------
    out_dir : path
    reference : Potential, spec or ASE calculator
        Labels the dataset (:func:`md_reference.ml.dataset.build_training_set`).
    name : str
        Model file stem.
    preset : {"tiny", "small", "paper"}
        Model size (:data:`PRESETS`).
    dataset : str or path
        A dataset preset of :data:`md_reference.ml.dataset.DATASET_PRESETS`, or an
        existing extxyz (with its sidecar) to train on.
    epochs : int
    r_max_A : float, optional
        Cutoff; the preset's by default.
    species : sequence of str
        Model type names (chemical symbols).
    device : {"cpu", "cuda"}
        Where nequip-train runs (and what ``compile`` targets).
    seed : int
        Seeds the dataset sampling and the training.
    val_fraction, lr, batch_size, lr_schedule, loss_coeffs, energy_shifts :
        Training settings (:func:`write_training_config`).
    compile : bool
        Also compile the package with AOTInductor for this machine into the
        compile cache (:func:`md_reference.ml.allegro.compile_package`, 30-70 s).
    cache_dir : path, optional
        Compile cache (default: the user cache).
    threads : int
        ``OMP_NUM_THREADS`` of the training subprocess.
    reference_spec : str, optional
        The reference as the user gave it (e.g. ``reaxff:../shared/...``), recorded
        so that ``kmc md validate`` finds it again.
    command : str, optional
        The command line to record (default: this function call).

    Returns
    -------
    dict
        The model record (also written to ``OUT/NAME.json``).
    """
    from md_reference.md.potentials import Potential, load_potential  # noqa: PLC0415
    from md_reference.ml import dataset as D  # noqa: PLC0415

    if int(epochs) != epochs or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs}")
    _preset(preset)
    if device not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}; valid devices are ['cpu', 'cuda']")
    out_dir = Path(out_dir).resolve()
    work = Path(work_dir).resolve() if work_dir is not None else out_dir / f"{name}_work"
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ref_desc = None
    if isinstance(reference, (Potential, str, dict)):
        ref_desc = load_potential(reference).describe()
    dataset_path = Path(dataset)
    if dataset_path.suffix == ".extxyz" and dataset_path.is_file():
        _, meta = D.read_dataset(dataset_path)
        dataset_origin = {"given": str(dataset_path)}
    else:
        settings = D.dataset_preset(str(dataset))
        settings.seed = int(seed)
        dataset_path = work / "dataset.extxyz"
        meta = D.build_training_set(reference, dataset_path, settings)
        dataset_origin = {"preset": str(dataset)}
    t_data = time.perf_counter() - t0
    config = write_training_config(work, dataset_path, preset=preset, r_max_A=r_max_A, species=species,
                                   max_epochs=int(epochs), device=device, seed=seed, val_fraction=val_fraction,
                                   lr=lr, batch_size=batch_size, lr_schedule=lr_schedule,
                                   loss_coeffs=loss_coeffs, energy_shifts=energy_shifts)
    run_dir = work / "run"
    ckpt = train(config, run_dir, threads=threads)
    metrics = final_metrics(run_dir)
    t_train = time.perf_counter() - t0 - t_data
    model = package(ckpt, out_dir / f"{name}.nequip.zip", threads=threads)
    from md_reference.ml.allegro import _count_parameters  # noqa: PLC0415

    n_params = _count_parameters(model)
    compiled = None
    if compile:
        from md_reference.ml.allegro import compile_package  # noqa: PLC0415

        path, now = compile_package(model, device, cache_dir)
        compiled = {"path": str(path), "compiled_this_run": now}
    prov = meta.get("provenance", {})
    p = _preset(preset)
    record = {
        "schema": MODEL_RECORD_SCHEMA,
        "model_file": model.name,
        "model_sha256": file_sha256(model),
        "model_bytes": model.stat().st_size,
        "n_parameters": n_params,
        "architecture": "Allegro (nequip-allegro), float32",
        "preset": preset,
        "preset_parameters": p,
        "r_max_A": float(r_max_A if r_max_A is not None else p["r_max_A"]),
        "species": [str(s) for s in species],
        "training": {"max_epochs": int(epochs), "device": device, "seed": int(seed), "val_fraction": val_fraction,
                     "lr": float(lr or p["lr"]), "batch_size": int(batch_size or p["batch_size"]),
                     "lr_schedule": lr_schedule, "threads": threads,
                     "energy_shifts": (energy_shifts if isinstance(energy_shifts, dict) else
                                       {"method": energy_shifts,
                                        "values_eV": _config_shifts(config)}),
                     "loss": {"terms": "MSE of per-atom energy (eV), forces (eV/A), stress (eV/A^3)",
                              "coeffs": {"total_energy": 1.0, "forces": 1.0, "stress": 1.0, **(loss_coeffs or {})}},
                     "best_checkpoint": "lowest val0_epoch/weighted_sum"},
        "reference": {"spec": reference_spec, "describe": ref_desc or prov.get("reference")},
        "dataset": {**dataset_origin, "file": dataset_path.name, "sha256": meta.get("sha256"),
                    "n_frames": meta.get("n_frames"), "n_atoms": meta.get("n_atoms"),
                    "frames_by_source": prov.get("frames_by_source"), "compositions": prov.get("compositions"),
                    "selection": {k: prov.get("selection", {}).get(k) for k in
                                  ("method", "keep_fraction", "n_candidates", "n_selected")},
                    "md_seeds": prov.get("md_seeds"),
                    "forces_rms_eV_A": meta.get("forces_rms_eV_A"),
                    "energy_per_atom_std_eV": meta.get("energy_per_atom_std_eV")},
        "final_metrics": metrics,
        "compiled": compiled,
        "command": command or (f"md_reference.ml.training.train_pipeline({str(out_dir)!r}, {reference_spec!r}, "
                               f"name={name!r}, preset={preset!r}, dataset={str(dataset)!r}, epochs={epochs}, "
                               f"r_max_A={r_max_A}, device={device!r}, seed={seed})"),
        "git_revision": git_revision(),
        "versions": versions(),
        "units": {"energy": "eV", "forces": "eV/A", "stress": "eV/A^3"},
        "wall_time_s": {"dataset": round(t_data, 1), "training": round(t_train, 1),
                        "total": round(time.perf_counter() - t0, 1)},
        "limitations": LIMITATIONS,
    }
    write_text_atomic(model_record_path(model), json.dumps(to_jsonable(record), indent=2) + "\n")
    log.info("model %s (%s parameters, %.0f kB) in %.0f s", model, n_params, record["model_bytes"] / 1024,
             record["wall_time_s"]["total"])
    return record
