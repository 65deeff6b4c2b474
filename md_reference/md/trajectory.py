"""MD trajectory files (HDF5) with their metadata.

One file per run. Layout (schema ``halide-kmc/md-trajectory`` version 1)::

    /                   attrs: schema, schema_version, units (JSON), provenance (JSON)
    /positions          (n_frames, n_atoms, 3) float32  unwrapped Cartesian positions, A
    /time_ps            (n_frames,) float64             time since the end of equilibration, ps
    /cell_A             (n_frames, 3) float64           orthogonal box lengths, A
    /potential_energy_eV (n_frames,) float64
    /temperature_K      (n_frames,) float64
    /symbols            (n_atoms,) bytes                element of each atom
    /halide_site        (n_atoms,) int64                starting halide site (-1: Pb, Cs)
    /configuration/     occ (n_sites,) int8 and the labels of lattice.Configuration
    /checkpoint/        step, positions, velocities (LAMMPS units), image-free
                        unwrapped positions; present while a run can be resumed

Positions are unwrapped (image flags applied), in the frame in which the ideal
halide sites are ``lattice.positions_A(a)`` at ``t = 0``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lattice import Configuration, HalideSublattice

SCHEMA = "halide-kmc/md-trajectory"
SCHEMA_VERSION = 1
UNITS = {
    "positions": "angstrom",
    "time_ps": "ps",
    "cell_A": "angstrom",
    "potential_energy_eV": "eV",
    "temperature_K": "K",
}


class TrajectoryError(ValueError):
    """A file is not a readable trajectory of this package."""


@dataclass
class Trajectory:
    """An MD trajectory in memory.

    Attributes
    ----------
    positions_A : (n_frames, n_atoms, 3) float
        Unwrapped positions.
    time_ps : (n_frames,) float
    cell_A : (n_frames, 3) float
    symbols : (n_atoms,) str
    halide_site : (n_atoms,) int64
    configuration : Configuration
    provenance : dict
    potential_energy_eV, temperature_K : (n_frames,) float
    """

    positions_A: np.ndarray
    time_ps: np.ndarray
    cell_A: np.ndarray
    symbols: np.ndarray
    halide_site: np.ndarray
    configuration: Configuration
    provenance: dict = field(default_factory=dict)
    potential_energy_eV: np.ndarray | None = None
    temperature_K: np.ndarray | None = None
    path: str | None = None

    @property
    def n_frames(self) -> int:
        return int(self.time_ps.size)

    @property
    def lattice(self) -> HalideSublattice:
        return self.configuration.lattice

    @property
    def lattice_constant_A(self) -> float:
        """Mean cubic lattice constant over the frames."""
        return float(np.mean(self.cell_A / np.asarray(self.lattice.shape, dtype=np.float64)))

    def mask(self, species: str) -> np.ndarray:
        """Atoms of ``species``; "X" means all halides."""
        if species == "X":
            return np.isin(self.symbols, ("I", "Br"))
        return self.symbols == species

    @property
    def temperature_set_K(self) -> float:
        return float(self.provenance.get("md_settings", {}).get("temperature_K", np.nan))


def _config_to_group(group, config: Configuration) -> None:
    group.create_dataset("occ", data=np.asarray(config.occ, dtype=np.int8))
    group.attrs["kind"] = config.kind
    group.attrs["shape"] = np.asarray(config.lattice.shape, dtype=np.int64)
    group.attrs["axis"] = int(config.axis)
    group.attrs["params"] = json.dumps(config.params, default=_json_default)
    if config.box is not None:
        group.create_dataset("box", data=np.asarray(config.box, dtype=np.int64))
    if config.domain_species is not None:
        group.attrs["domain_species"] = int(config.domain_species)
    if config.plane_region is not None:
        group.create_dataset("plane_region", data=np.asarray(config.plane_region, dtype=np.int8))
    if config.interface_planes is not None:
        group.create_dataset("interface_planes", data=np.asarray(config.interface_planes, dtype=np.int64))


def _config_from_group(group) -> Configuration:
    lat = HalideSublattice(tuple(int(v) for v in group.attrs["shape"]))
    return Configuration(
        lattice=lat,
        occ=group["occ"][()],
        kind=str(group.attrs["kind"]),
        axis=int(group.attrs["axis"]),
        box=group["box"][()] if "box" in group else None,
        domain_species=int(group.attrs["domain_species"]) if "domain_species" in group.attrs else None,
        plane_region=group["plane_region"][()] if "plane_region" in group else None,
        interface_planes=group["interface_planes"][()] if "interface_planes" in group else None,
        params=json.loads(group.attrs["params"]),
    )


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


class TrajectoryWriter:
    """Append frames to a trajectory file; keeps a resumable checkpoint.

    Parameters
    ----------
    path : str or Path
    atoms : ase.Atoms
        The starting structure (symbols, ``halide_site`` array).
    configuration : Configuration
    provenance : dict
    resume : bool
        Open an existing file and continue it (its provenance must match).
    """

    def __init__(self, path, atoms=None, configuration: Configuration | None = None,
                 provenance: dict | None = None, resume: bool = False):
        import h5py  # noqa: PLC0415

        self.path = Path(path)
        if resume:
            self.h5 = h5py.File(self.path, "a")
            _check_schema(self.h5, self.path)
            old = json.loads(self.h5.attrs["provenance"])
            if provenance is not None and _physics(old) != _physics(provenance):
                self.h5.close()
                raise TrajectoryError(
                    f"{self.path} was written with different settings; refusing to resume it "
                    "(delete it or choose another output folder)"
                )
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.h5 = h5py.File(self.path, "w")
        h = self.h5
        h.attrs["schema"] = SCHEMA
        h.attrs["schema_version"] = SCHEMA_VERSION
        h.attrs["units"] = json.dumps(UNITS)
        h.attrs["provenance"] = json.dumps(provenance or {}, default=_json_default)
        n = len(atoms)
        h.create_dataset("positions", shape=(0, n, 3), maxshape=(None, n, 3), dtype=np.float32,
                         chunks=(16, n, 3), compression="gzip", compression_opts=4, shuffle=True)
        for name in ("time_ps", "potential_energy_eV", "temperature_K"):
            h.create_dataset(name, shape=(0,), maxshape=(None,), dtype=np.float64, chunks=(1024,))
        h.create_dataset("cell_A", shape=(0, 3), maxshape=(None, 3), dtype=np.float64, chunks=(1024, 3))
        h.create_dataset("symbols", data=np.array(atoms.get_chemical_symbols(), dtype="S2"))
        h.create_dataset("halide_site", data=np.asarray(atoms.arrays["halide_site"], dtype=np.int64))
        _config_to_group(h.create_group("configuration"), configuration)
        h.flush()

    @property
    def n_frames(self) -> int:
        return int(self.h5["time_ps"].shape[0])

    def append(self, positions_A, time_ps, cell_A, energy_eV, temperature_K) -> None:
        h = self.h5
        i = self.n_frames
        for name, value in (("time_ps", time_ps), ("potential_energy_eV", energy_eV),
                            ("temperature_K", temperature_K)):
            h[name].resize((i + 1,))
            h[name][i] = value
        h["cell_A"].resize((i + 1, 3))
        h["cell_A"][i] = cell_A
        h["positions"].resize((i + 1,) + h["positions"].shape[1:])
        h["positions"][i] = positions_A

    def save_checkpoint(self, step: int, positions_A, velocities, cell_A, extra: dict | None = None) -> None:
        """Store what a resume needs (positions, velocities in LAMMPS units, step) and flush."""
        h = self.h5
        if "checkpoint" in h:
            del h["checkpoint"]
        g = h.create_group("checkpoint")
        g.attrs["step"] = int(step)
        g.attrs["n_frames"] = self.n_frames
        g.attrs["extra"] = json.dumps(extra or {}, default=_json_default)
        g.create_dataset("positions_A", data=np.asarray(positions_A, dtype=np.float64))
        g.create_dataset("velocities", data=np.asarray(velocities, dtype=np.float64))
        g.create_dataset("cell_A", data=np.asarray(cell_A, dtype=np.float64))
        h.flush()

    def load_checkpoint(self) -> dict | None:
        h = self.h5
        if "checkpoint" not in h:
            return None
        g = h["checkpoint"]
        n = int(g.attrs["n_frames"])
        # Frames written after the checkpoint are dropped: the resumed run rewrites them.
        for name in ("time_ps", "potential_energy_eV", "temperature_K"):
            h[name].resize((n,))
        h["cell_A"].resize((n, 3))
        h["positions"].resize((n,) + h["positions"].shape[1:])
        return {
            "step": int(g.attrs["step"]),
            "n_frames": n,
            "positions_A": g["positions_A"][()],
            "velocities": g["velocities"][()],
            "cell_A": g["cell_A"][()],
            "extra": json.loads(g.attrs["extra"]),
        }

    def finish(self, summary: dict | None = None) -> None:
        h = self.h5
        h.attrs["complete"] = True
        if summary is not None:
            h.attrs["run_summary"] = json.dumps(summary, default=_json_default)
        h.flush()

    def close(self) -> None:
        if self.h5 is not None:
            self.h5.close()
            self.h5 = None


def _physics(prov: dict) -> dict:
    """The parts of the provenance a resumed run must share."""
    keys = ("structure", "potential", "md_settings", "run")
    out = {k: prov.get(k) for k in keys}
    if isinstance(out.get("potential"), dict):
        out["potential"] = {k: v for k, v in out["potential"].items() if k in ("kind", "sha256", "path")}
    return json.loads(json.dumps(out, default=_json_default))


def _check_schema(h5, path) -> None:
    if h5.attrs.get("schema") != SCHEMA:
        raise TrajectoryError(f"{path} is not an MD trajectory of this package (schema {h5.attrs.get('schema')!r})")
    if int(h5.attrs.get("schema_version", -1)) > SCHEMA_VERSION:
        raise TrajectoryError(f"{path} has schema version {h5.attrs['schema_version']}, newer than {SCHEMA_VERSION}")


def is_complete(path) -> bool:
    import h5py  # noqa: PLC0415

    try:
        with h5py.File(path, "r") as h:
            return bool(h.attrs.get("complete", False))
    except OSError:
        return False


def read_trajectory(path, frames: slice | None = None) -> Trajectory:
    """Load a trajectory file (all frames, or a slice)."""
    import h5py  # noqa: PLC0415

    path = Path(path)
    if not path.is_file():
        raise TrajectoryError(f"trajectory file {str(path)!r} not found")
    try:
        h = h5py.File(path, "r")
    except OSError as exc:
        raise TrajectoryError(f"{path} is not an HDF5 file: {exc}") from None
    with h:
        _check_schema(h, path)
        sl = frames if frames is not None else slice(None)
        traj = Trajectory(
            positions_A=h["positions"][sl].astype(np.float64),
            time_ps=h["time_ps"][sl],
            cell_A=h["cell_A"][sl],
            symbols=np.array([s.decode() for s in h["symbols"][()]]),
            halide_site=h["halide_site"][()],
            configuration=_config_from_group(h["configuration"]),
            provenance=json.loads(h.attrs["provenance"]),
            potential_energy_eV=h["potential_energy_eV"][sl],
            temperature_K=h["temperature_K"][sl],
            path=str(path),
        )
        traj.provenance["complete"] = bool(h.attrs.get("complete", False))
        if "run_summary" in h.attrs:
            traj.provenance["run_summary"] = json.loads(h.attrs["run_summary"])
    return traj
