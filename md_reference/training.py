"""Datasets and training of Allegro models with ``nequip-train``.

Three steps, each writing one self-describing file:

1. :func:`sample_md_frames` samples frames from short MD runs of small defective
   CsPbX3 cells (any :mod:`md_reference.potentials` potential, in practice
   ReaxFF), :func:`label_frames_with_lammps` labels them (energy, forces,
   stress from the potential through LAMMPS) and :func:`write_dataset` writes
   an extxyz file with a JSON provenance sidecar;
2. :func:`write_training_config` writes the Hydra YAML that ``nequip-train``
   reads (an ``allegro.model.AllegroModel`` of a named size preset) and
   :func:`train` runs it in a subprocess;
3. :func:`package` turns the best checkpoint into a portable ``.nequip.zip``
   that :class:`md_reference.allegro.AllegroPotential` loads.

Nothing here imports torch or nequip at import time: training and packaging
run in subprocesses with one thread (``OMP_NUM_THREADS=1``) unless told
otherwise; only :func:`build_model_from_config` imports nequip.

Units: energies eV, forces eV/A, stress eV/A^3 with ASE's sign convention
(positive under tension, ``stress = -virial / V``).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from md_reference.potentials import Potential, file_sha256, load_potential

log = logging.getLogger(__name__)

DATASET_SCHEMA = "halide-kmc/md-dataset/1"
TRAINING_SCHEMA = "halide-kmc/allegro-training/1"
SPECIES = ("Cs", "Pb", "I", "Br")


# ----------------------------------------------------------------------------
# frames
# ----------------------------------------------------------------------------
@dataclass
class CellSpec:
    """One small cell to sample MD frames from.

    Attributes
    ----------
    shape : (3,) int
        Unit cells along x, y, z.
    composition : str
        ``"I"``, ``"Br"`` (pure) or ``"mixed"`` (random I/Br with ``x_I``).
    defect : {"vacancy", "interstitial", "none"}
    x_I : float
        Iodide fraction of a mixed cell.
    """

    shape: tuple[int, int, int] = (2, 2, 2)
    composition: str = "I"
    defect: str = "interstitial"
    x_I: float = 0.5

    def build(self, lattice_constant_A: float | str, seed: int):
        """(atoms, config, defects) of this cell (see :func:`md_reference.structures.build_cell`)."""
        from md_reference.structures import build_cell  # noqa: PLC0415

        if self.composition in ("I", "Br"):
            return build_cell("pure", self.shape, species=self.composition, defect=self.defect,
                              where="random", lattice_constant=lattice_constant_A, seed=seed)
        if self.composition == "mixed":
            return build_cell("random", self.shape, x_I=self.x_I, defect=self.defect, where="random",
                              lattice_constant=lattice_constant_A, seed=seed)
        raise ValueError(f"unknown composition {self.composition!r}; valid compositions are ['Br', 'I', 'mixed']")


DEFAULT_CELLS = tuple(
    CellSpec((2, 2, 2), comp, defect)
    for comp in ("I", "Br", "mixed")
    for defect in ("interstitial", "vacancy")
)


@dataclass
class SamplingSettings:
    """MD sampling of training frames.

    Attributes
    ----------
    temperature_K : float
    timestep_fs : float
    equilibration_steps : int
        Steps before the first frame.
    sample_every : int
        Steps between frames.
    frames_per_cell : int
    strain : float
        Each trajectory runs at a lattice constant scaled by a factor drawn
        uniformly from ``[1 - strain, 1 + strain]`` around Vegard's law, so
        that the stress labels vary.
    seed : int
    """

    temperature_K: float = 600.0
    timestep_fs: float = 2.0
    equilibration_steps: int = 200
    sample_every: int = 20
    frames_per_cell: int = 12
    strain: float = 0.02
    seed: int = 1
    cells: tuple[CellSpec, ...] = field(default_factory=lambda: DEFAULT_CELLS)

    def validate(self) -> "SamplingSettings":
        if not self.temperature_K > 0:
            raise ValueError(f"temperature_K must be > 0, got {self.temperature_K}")
        for name in ("equilibration_steps", "sample_every", "frames_per_cell"):
            v = getattr(self, name)
            if int(v) != v or v < (0 if name == "equilibration_steps" else 1):
                raise ValueError(f"{name} must be a positive integer, got {v}")
        if not 0.0 <= self.strain < 0.2:
            raise ValueError(f"strain must lie in [0, 0.2), got {self.strain}")
        if not self.cells:
            raise ValueError("cells must hold at least one CellSpec")
        return self


def sample_md_frames(potential: Potential | str | dict, settings: SamplingSettings | None = None) -> list:
    """Frames (unlabelled ``ase.Atoms``) from short NVT runs of small defective cells.

    One Nose-Hoover NVT trajectory per cell of ``settings.cells``, seeded from
    ``settings.seed``; after ``equilibration_steps`` a frame is taken every
    ``sample_every`` steps. Each frame's ``info`` records its cell, defect,
    lattice constant, temperature and MD step.

    Parameters
    ----------
    potential : Potential or spec
        E.g. ``"reaxff:/path/IBrPbCs.ff"``.
    settings : SamplingSettings
    """
    from md_reference.lammps_driver import LammpsSession, MDSettings  # noqa: PLC0415
    from md_reference.structures import vegard_lattice_constant  # noqa: PLC0415

    settings = (settings or SamplingSettings()).validate()
    pot = load_potential(potential)
    rng = np.random.default_rng(settings.seed)
    frames = []
    for icell, spec in enumerate(settings.cells):
        cell_seed = int(rng.integers(1, 2**31 - 1))
        x_I = {"I": 1.0, "Br": 0.0}.get(spec.composition, spec.x_I)
        a = vegard_lattice_constant(x_I) * float(rng.uniform(1 - settings.strain, 1 + settings.strain))
        atoms, _, _ = spec.build(a, seed=cell_seed % 100_000)
        md = MDSettings(temperature_K=settings.temperature_K, timestep_fs=settings.timestep_fs,
                        n_steps=settings.frames_per_cell * settings.sample_every,
                        equilibration_steps=settings.equilibration_steps, dump_every=settings.sample_every,
                        seed=cell_seed % 800_000_000 + 1)
        with LammpsSession(atoms, pot) as sess:
            sess.setup_md(md)
            step = 0
            if settings.equilibration_steps:
                sess.run(settings.equilibration_steps)
                step += settings.equilibration_steps
            for _ in range(settings.frames_per_cell):
                sess.run(settings.sample_every)
                step += settings.sample_every
                frame = atoms.copy()
                frame.set_positions(sess.positions(unwrapped=False))
                frame.info = {
                    "cell_index": icell,
                    "shape": "x".join(str(int(v)) for v in spec.shape),
                    "composition": spec.composition,
                    "defect": spec.defect,
                    "lattice_constant_A": float(a),
                    "temperature_K": float(settings.temperature_K),
                    "md_step": int(step),
                    "md_seed": int(md.seed),
                }
                frames.append(frame)
        log.info("cell %d (%s %s %s): %d frames", icell, spec.shape, spec.composition, spec.defect,
                 settings.frames_per_cell)
    return frames


def label_frames_with_lammps(frames, potential: Potential | str | dict, *, stress: bool = True) -> list:
    """Label frames with a potential's energy, forces and (optionally) stress through LAMMPS.

    Parameters
    ----------
    frames : list of ase.Atoms
        Orthogonal periodic cells.
    potential : Potential or spec
    stress : bool
        Also compute the stress from the virial (``compute pressure NULL
        virial``). An :class:`~md_reference.potentials.ExternalPotential` whose
        compute returns no virial gives a zero stress: pass ``stress=False``.

    Returns
    -------
    list of ase.Atoms
        Copies with a ``SinglePointCalculator`` holding ``energy`` (eV),
        ``forces`` (eV/A) and ``stress`` (Voigt xx yy zz yz xz xy, eV/A^3).
        ``info["label_potential_sha256"]`` names the potential's file hash when it has one.
    """
    from ase import units  # noqa: PLC0415
    from ase.calculators.singlepoint import SinglePointCalculator  # noqa: PLC0415

    from md_reference.lammps_driver import LammpsSession  # noqa: PLC0415
    from md_reference.lammps_lib import lammps_module  # noqa: PLC0415
    from md_reference.potentials import UNIT_PRESSURE_TO_BAR  # noqa: PLC0415

    pot = load_potential(potential)
    lmp_mod = lammps_module()
    sha = pot.describe().get("sha256")
    out = []
    sess, key = None, None
    try:
        for atoms in frames:
            k = (tuple(atoms.get_chemical_symbols()), tuple(np.round(atoms.cell.lengths(), 10)))
            if k != key:
                if sess is not None:
                    sess.close()
                sess = LammpsSession(atoms, pot)
                sess.lmp.command("compute lbl_press all pressure NULL virial")
                key = k
            else:
                sess.set_positions(atoms.get_positions())
            energy, forces = sess.energy_forces()
            labelled = atoms.copy()
            results = {"energy": energy, "forces": forces}
            if stress:
                p = np.array(sess.lmp.numpy.extract_compute("lbl_press", lmp_mod.LMP_STYLE_GLOBAL,
                                                            lmp_mod.LMP_TYPE_VECTOR), dtype=np.float64)
                p_eV_A3 = p * UNIT_PRESSURE_TO_BAR[sess.units] * units.bar  # xx yy zz xy xz yz
                results["stress"] = -p_eV_A3[[0, 1, 2, 5, 4, 3]]
            labelled.calc = SinglePointCalculator(labelled, **results)
            labelled.info["label_potential"] = pot.kind
            if sha:
                labelled.info["label_potential_sha256"] = sha
            out.append(labelled)
    finally:
        if sess is not None:
            sess.close()
    return out


def write_dataset(frames, path: str | Path, provenance: dict | None = None) -> dict:
    """Write labelled frames to extxyz plus a JSON provenance sidecar (``PATH.json``).

    Returns the sidecar dict (schema, number of frames and atoms, the extxyz
    SHA-256, energy/force statistics and ``provenance``).
    """
    from ase.io import write  # noqa: PLC0415

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = []
    for atoms in frames:
        a = atoms.copy()
        a.calc = atoms.calc
        a.info = {k: v for k, v in atoms.info.items() if isinstance(v, (str, int, float, np.integer, np.floating))}
        a.arrays = {k: v for k, v in atoms.arrays.items() if k in ("numbers", "positions", "halide_site")}
        clean.append(a)
    write(path, clean, format="extxyz")
    forces = np.concatenate([a.get_forces() for a in frames]) if frames else np.zeros((0, 3))
    e_per_atom = np.array([a.get_potential_energy() / len(a) for a in frames])
    meta = {
        "schema": DATASET_SCHEMA,
        "file": path.name,
        "sha256": file_sha256(path),
        "n_frames": len(frames),
        "n_atoms": sorted({len(a) for a in frames}),
        "species": sorted({s for a in frames for s in a.get_chemical_symbols()}),
        "units": {"energy": "eV", "forces": "eV/A", "stress": "eV/A^3 (ASE sign: -virial/V)"},
        "forces_rms_eV_A": float(np.sqrt(np.mean(forces**2))) if forces.size else None,
        "energy_per_atom_std_eV": float(e_per_atom.std()) if e_per_atom.size else None,
        "provenance": provenance or {},
    }
    Path(str(path) + ".json").write_text(json.dumps(meta, indent=2, default=str))
    return meta


def build_dataset(potential: Potential | str | dict, path: str | Path,
                  settings: SamplingSettings | None = None) -> dict:
    """Sample, label and write a dataset in one call; returns the sidecar dict."""
    settings = (settings or SamplingSettings()).validate()
    pot = load_potential(potential)
    frames = label_frames_with_lammps(sample_md_frames(pot, settings), pot)
    prov = {"potential": pot.describe(), "sampling": to_jsonable(asdict(settings)), "versions": versions()}
    return write_dataset(frames, path, prov)


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


def _preset(name: str) -> dict:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets are {sorted(PRESETS)}")
    return dict(PRESETS[name])


def write_training_config(out_dir: str | Path, dataset_extxyz: str | Path, *, preset: str = "tiny",
                          r_max_A: float | None = None, species=SPECIES, max_epochs: int = 50,
                          device: str = "cpu", seed: int = 1, val_fraction: float = 0.2,
                          stress: bool = True, model_dtype: str = "float32", lr: float | None = None,
                          batch_size: int | None = None, name: str = "train.yaml") -> Path:
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

    if stress:
        loss = {"_target_": "nequip.train.EnergyForceStressLoss", "per_atom_energy": True,
                "coeffs": {"total_energy": 1.0, "forces": 1.0, "stress": 1.0}}
        metrics = {"_target_": "nequip.train.EnergyForceStressMetrics",
                   "coeffs": {"per_atom_energy_mae": 1.0, "forces_mae": 1.0, "stress_mae": 1.0}}
    else:
        loss = {"_target_": "nequip.train.EnergyForceLoss", "per_atom_energy": True,
                "coeffs": {"total_energy": 1.0, "forces": 1.0}}
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
                "per_type_energy_shifts": "${training_data_stats:per_atom_energy_mean}",
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
    header = (f"# nequip-train config written by md_reference.training ({TRAINING_SCHEMA})\n"
              f"# preset {preset}; dataset sha256 {file_sha256(dataset)}\n")
    path.write_text(header + yaml.safe_dump(config, sort_keys=False))
    return path


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
# provenance helpers
# ----------------------------------------------------------------------------
def versions() -> dict:
    """Versions of the packages a model depends on (None where not installed)."""
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    out = {"python": platform.python_version()}
    for pkg in ("numpy", "ase", "torch", "nequip", "nequip-allegro", "lammps", "lightning"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def to_jsonable(obj):
    return json.loads(json.dumps(obj, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))
