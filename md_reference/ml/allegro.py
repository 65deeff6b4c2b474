"""Allegro / NequIP models driving LAMMPS through ``fix external``.

:class:`AllegroPotential` loads a model of the NequIP framework (Allegro or
NequIP) into nequip's own ASE calculator,
:class:`nequip.integrations.ase.NequIPCalculator`, and hands it to LAMMPS with
:class:`~md_reference.md.potentials.ExternalPotential`: every MD step LAMMPS calls
back with the positions, the calculator returns energy (eV), forces (eV/A)
and stress, and LAMMPS gets the virial ``-stress * V``. Forces in LAMMPS are
therefore the calculator's forces by construction (what LAMMPS adds is the
integration, thermostats, barostats and NEB).

Model files
-----------
``*.nequip.zip``
    A packaged model (``nequip-package build``): portable, loads eagerly in
    torch, or is compiled by this module (see ``compile``).
``*.nequip.pt2``
    An AOTInductor model compiled with ``nequip-compile --mode aotinductor
    --target ase --device DEV``; tied to the torch version and the CPU
    instruction set (or GPU) of the machine that compiled it.

Compile modes (for a ``.nequip.zip``)
-------------------------------------
``"never"``
    Eager torch model from the package (no compile; a few seconds to load).
``"auto"`` (default)
    The compiled model from the cache if one matches, else eager. Never
    starts a compile (30-70 s for a small model on one core).
``"always"``
    The cached compiled model, compiling it first when the cache has none.

The cache folder is ``$HALIDE_KMC_CACHE/compiled`` (default
``~/.cache/halide-kmc/compiled``); an entry is keyed by the SHA-256 of the
package, the compile target (``ase``), the device (and GPU name), the
torch/nequip/allegro versions and a hash of the CPU flags, and carries a JSON
sidecar with those fields. A ``.nequip.pt2`` given directly is loaded as is
(``compile`` does not apply).

Bundled model
-------------
``allegro:reaxff-small`` (:data:`BUNDLED_MODELS`) is
``md_reference/data/allegro_small_reaxff.nequip.zip``, a small Allegro model
(about 14k parameters) trained by this package's pipeline on labels of the
reference ReaxFF; its record (``allegro_small_reaxff.json``) and validation
report (``allegro_small_reaxff_validation/``) sit next to it. It loads
eagerly on any machine with the allegro extra; ``compile="always"`` compiles
it for that machine on first use.

Units: LAMMPS ``metal`` (eV, A, ps); models are assumed to be trained in eV
and A (the NequIP convention for these datasets).

Side effects of loading: nequip's ``set_global_state`` sets torch's default
dtype to float64 and seeds torch's, NumPy's legacy and Python's global RNGs
(this package never uses the global ones). One thread is the fastest setting
on a shared machine: call ``torch.set_num_threads(1)``. The ``pair_allegro``
compile target (ghost atoms, no stress) is not usable through ``fix external``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from common.atomic import write_text_atomic
from md_reference.md.potentials import (
    ExternalPotential,
    PotentialError,
    ase_calculator_compute,
    file_sha256,
)

log = logging.getLogger(__name__)

COMPILE_MODES = ("auto", "never", "always")
COMPILE_TARGET = "ase"
PACKAGE_SUFFIX = ".nequip.zip"
COMPILED_SUFFIX = ".nequip.pt2"
CACHE_SCHEMA = "halide-kmc/compiled-model/1"
DATA_DIR = Path(__file__).resolve().parents[1] / "data"
#: Models shipped with the package: ``allegro:NAME`` (or ``AllegroPotential(NAME)``) loads the file.
BUNDLED_MODELS = {"reaxff-small": DATA_DIR / "allegro_small_reaxff.nequip.zip"}


class ModelCompileError(RuntimeError):
    """``nequip-compile`` failed."""


def _pkg_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def default_cache_dir() -> Path:
    """``$HALIDE_KMC_CACHE/compiled``, or ``~/.cache/halide-kmc/compiled``."""
    root = os.environ.get("HALIDE_KMC_CACHE")
    return (Path(root).expanduser() if root else Path("~/.cache/halide-kmc").expanduser()) / "compiled"


def cpu_flags_hash() -> str:
    """SHA-256 (16 hex) of the machine architecture and the CPU flags of ``/proc/cpuinfo``."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = " ".join(sorted(line.split(":", 1)[1].split()))
                break
    except OSError:
        pass
    return hashlib.sha256(f"{platform.machine()}|{flags}".encode()).hexdigest()[:16]


def _normalise_device(device: str) -> str:
    dev = str(device)
    if dev == "cpu" or dev == "cuda" or (dev.startswith("cuda:") and dev[5:].isdigit()):
        return dev
    raise PotentialError(f"unknown device {device!r}; valid devices are 'cpu', 'cuda' or 'cuda:N'")


def compile_cache_key(model_sha256: str, device: str, target: str = COMPILE_TARGET) -> dict:
    """Fields that identify a compiled model (the cache key is their hash)."""
    import torch  # noqa: PLC0415

    fields = {
        "model_sha256": model_sha256,
        "target": target,
        "device": device,
        "torch": torch.__version__,
        "nequip": _pkg_version("nequip"),
        "nequip-allegro": _pkg_version("nequip-allegro"),
        "cpu_flags": cpu_flags_hash(),
    }
    if device.startswith("cuda"):
        idx = int(device.split(":")[1]) if ":" in device else 0
        major, minor = torch.cuda.get_device_capability(idx)
        fields["gpu"] = f"{torch.cuda.get_device_name(idx)} sm{major}{minor}"
    return fields


def _key_hash(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]


def cached_compiled_path(package_path: str | Path, device: str = "cpu", cache_dir: str | Path | None = None,
                         model_sha256: str | None = None) -> Path:
    """Where the compiled file of a package lives in the cache (it may not exist)."""
    package_path = Path(package_path)
    sha = model_sha256 or file_sha256(package_path)
    key = _key_hash(compile_cache_key(sha, device))
    name = package_path.name
    stem = name[: -len(PACKAGE_SUFFIX)] if name.endswith(PACKAGE_SUFFIX) else package_path.stem
    return Path(cache_dir or default_cache_dir()) / f"{stem}-{key}{COMPILED_SUFFIX}"


def _run_nequip_compile(package_path: Path, out_path: Path, device: str, timeout_s: float) -> None:
    """``nequip-compile PACKAGE OUT --mode aotinductor --device DEV --target ase`` in a subprocess."""
    cmd = [sys.executable, "-m", "nequip.scripts.compile", str(package_path), str(out_path),
           "--mode", "aotinductor", "--device", device, "--target", COMPILE_TARGET]
    log.info("compiling %s for %s (AOTInductor, target %s); this takes a minute or more",
             package_path.name, device, COMPILE_TARGET)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise ModelCompileError(f"nequip-compile of {package_path} took more than {timeout_s} s") from exc
    if proc.returncode != 0 or not out_path.is_file():
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-25:])
        raise ModelCompileError(f"nequip-compile of {package_path} failed (exit {proc.returncode}):\n{tail}")


def _count_parameters(package_path: Path) -> int | None:
    """Number of model parameters of a package (loads it eagerly; None on failure)."""
    try:
        from nequip.model.saved_models.load_utils import load_saved_model  # noqa: PLC0415

        return int(sum(p.numel() for p in load_saved_model(str(package_path), compile_mode="eager").parameters()))
    except Exception as exc:  # noqa: BLE001 - provenance only
        log.debug("cannot count parameters of %s: %s", package_path, exc)
        return None


def compile_package(package_path: str | Path, device: str = "cpu", cache_dir: str | Path | None = None,
                    *, force: bool = False, timeout_s: float = 1800.0) -> tuple[Path, bool]:
    """Compile a ``.nequip.zip`` for ``device`` into the cache, unless it is there already.

    Returns
    -------
    (path, compiled_now) : the cached ``.nequip.pt2`` and whether this call compiled it.
    """
    package_path = Path(package_path).resolve()
    device = _normalise_device(device)
    sha = file_sha256(package_path)
    fields = compile_cache_key(sha, device)
    out = cached_compiled_path(package_path, device, cache_dir, model_sha256=sha)
    if out.is_file() and not force:
        return out, False
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name[: -len(COMPILED_SUFFIX)]}.{os.getpid()}.tmp{COMPILED_SUFFIX}")
    t0 = time.perf_counter()
    try:
        _run_nequip_compile(package_path, tmp, device, timeout_s)
        os.replace(tmp, out)  # atomic: a concurrent reader never sees half a file
    finally:
        tmp.unlink(missing_ok=True)
    sidecar = {
        "schema": CACHE_SCHEMA,
        "n_parameters": _count_parameters(package_path),
        "key": fields,
        "source": str(package_path),
        "compiled_sha256": file_sha256(out),
        "compile_time_s": round(time.perf_counter() - t0, 2),
        "command": f"nequip-compile {package_path.name} {out.name} --mode aotinductor "
                   f"--device {device} --target {COMPILE_TARGET}",
    }
    write_text_atomic(out.with_name(out.name + ".json"), json.dumps(sidecar, indent=2))
    log.info("compiled %s in %.1f s -> %s", package_path.name, sidecar["compile_time_s"], out)
    return out, True


def _species_map(type_names: list[str], species_map: dict | None) -> dict[str, str]:
    """``{chemical symbol: model type name}``; identity when the type names are symbols."""
    from ase.data import chemical_symbols  # noqa: PLC0415

    if species_map is None:
        bad = [t for t in type_names if t not in chemical_symbols[1:]]
        if bad:
            raise PotentialError(
                f"model type names {bad} are not chemical symbols; pass species_map={{symbol: type_name}} "
                f"covering the model's type names {type_names}"
            )
        return {t: t for t in type_names}
    out = {str(k): str(v) for k, v in dict(species_map).items()}
    unknown = sorted(set(out.values()) - set(type_names))
    if unknown:
        raise PotentialError(f"species_map names type(s) {unknown} the model lacks; its types are {type_names}")
    bad = [k for k in out if k not in chemical_symbols[1:]]
    if bad:
        raise PotentialError(f"species_map keys {bad} are not chemical symbols")
    return out


class AllegroPotential(ExternalPotential):
    """A NequIP-framework model (Allegro, NequIP) driving LAMMPS (``fix external``).

    Parameters
    ----------
    path : str or Path
        ``*.nequip.zip`` (packaged) or ``*.nequip.pt2`` (AOTInductor, ``--target ase``),
        or the name of a bundled model (:data:`BUNDLED_MODELS`).
    device : {"cpu", "cuda", "cuda:N"}
    compile : {"auto", "never", "always"}
        What to do with a ``.nequip.zip`` (see the module docstring): ``"auto"``
        uses a cached compiled model if one matches, else the eager model.
    cache_dir : path, optional
        Compiled-model cache (default :func:`default_cache_dir`).
    species_map : dict, optional
        ``{chemical symbol: model type name}``; identity when the model's type
        names are chemical symbols.
    compile_timeout_s : float

    Attributes
    ----------
    calculator : nequip.integrations.ase.NequIPCalculator
    r_max_A : float
        Model cutoff (from its metadata); also the LAMMPS neighbour cutoff.
    type_names : list of str
    backend : {"eager", "aotinductor"}
    """

    kind = "allegro"

    def __init__(self, path: str | Path, device: str = "cpu", compile: str = "auto",
                 cache_dir: str | Path | None = None, species_map: dict | None = None,
                 compile_timeout_s: float = 1800.0):
        path = BUNDLED_MODELS.get(str(path), path)
        self.path = Path(path).expanduser().resolve()
        if not self.path.is_file():
            raise PotentialError(f"model file {str(path)!r} not found")
        name = self.path.name
        if not name.endswith((PACKAGE_SUFFIX, COMPILED_SUFFIX)):
            raise PotentialError(
                f"model file {name!r} must end with {PACKAGE_SUFFIX} (nequip-package) or {COMPILED_SUFFIX} "
                "(nequip-compile --mode aotinductor --target ase)"
            )
        if compile not in COMPILE_MODES:
            raise PotentialError(f"unknown compile mode {compile!r}; valid modes are {list(COMPILE_MODES)}")
        self.device = _normalise_device(device)
        try:
            import nequip  # noqa: F401, PLC0415
            import torch  # noqa: PLC0415
        except ImportError as exc:
            raise PotentialError(
                "AllegroPotential needs torch, nequip and nequip-allegro (the allegro extra)"
            ) from exc
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise PotentialError(f"device {self.device!r} requested but torch sees no CUDA device")
        self.compile_mode = compile
        self.sha256 = file_sha256(self.path)
        self.compiled_path: Path | None = None
        self.compiled_now = False
        n_params = None
        if name.endswith(COMPILED_SUFFIX):
            self.compiled_path = self.path
        else:
            cached = cached_compiled_path(self.path, self.device, cache_dir, model_sha256=self.sha256)
            if compile == "always":
                self.compiled_path, self.compiled_now = compile_package(
                    self.path, self.device, cache_dir, timeout_s=compile_timeout_s)
            elif compile == "auto" and cached.is_file():
                self.compiled_path = cached
        if self.compiled_path is not None:
            calc, metadata = self._load_compiled(self.compiled_path, species_map)
            self.backend = "aotinductor"
            sidecar = self.compiled_path.with_name(self.compiled_path.name + ".json")
            n_params = json.loads(sidecar.read_text()).get("n_parameters") if sidecar.is_file() else None
        else:
            calc, metadata, n_params = self._load_eager(self.path, species_map)
            self.backend = "eager"
        self.calculator = calc
        self.r_max_A = float(metadata["r_max"])
        self.type_names = list(metadata["type_names"])
        self.model_dtype = str(metadata.get("model_dtype", "unknown"))
        self.n_parameters = n_params
        description = {
            "path": str(self.path),
            "sha256": self.sha256,
            "compile": compile,
            "backend": self.backend,
            "compiled_path": str(self.compiled_path) if self.compiled_path else None,
            "compiled_sha256": (None if self.compiled_path is None else
                                self.sha256 if self.compiled_path == self.path else file_sha256(self.compiled_path)),
            "compiled_this_run": self.compiled_now,
            "device": self.device,
            "r_max_A": self.r_max_A,
            "type_names": self.type_names,
            "species_map": self.species_map,
            "model_dtype": self.model_dtype,
            "n_parameters": n_params,
            "versions": {"torch": torch.__version__, "nequip": _pkg_version("nequip"),
                         "nequip-allegro": _pkg_version("nequip-allegro")},
        }
        super().__init__(ase_calculator_compute(calc), cutoff_A=self.r_max_A, description=description,
                         elements=tuple(self.species_map))

    # -- loading -------------------------------------------------------------------
    def _transforms(self, metadata: dict, species_map: dict | None):
        from nequip.integrations.utils import basic_transforms  # noqa: PLC0415

        type_names = list(metadata["type_names"])
        self.species_map = _species_map(type_names, species_map)
        return basic_transforms(metadata, float(metadata["r_max"]), type_names, self.species_map)

    def _load_eager(self, path: Path, species_map: dict | None):
        """Eager model from a package, as ``NequIPCalculator._from_saved_model`` builds it."""
        from nequip.integrations.ase import NequIPCalculator  # noqa: PLC0415
        from nequip.model.saved_models.load_utils import load_saved_model  # noqa: PLC0415
        from nequip.utils.global_state import set_global_state  # noqa: PLC0415

        set_global_state(allow_tf32=False)
        model = load_saved_model(str(path), compile_mode="eager")
        model.eval()
        metadata = dict(model.metadata)
        metadata["r_max"] = float(metadata["r_max"])
        metadata["type_names"] = metadata["type_names"].split(" ")
        n_params = int(sum(p.numel() for p in model.parameters()))
        calc = NequIPCalculator(model=model, device=self.device, transforms=self._transforms(metadata, species_map))
        return calc, metadata, n_params

    def _load_compiled(self, path: Path, species_map: dict | None):
        """AOTInductor model, as ``NequIPCalculator.from_compiled_model`` builds it."""
        from nequip.integrations.ase import NequIPCalculator  # noqa: PLC0415
        from nequip.model.inference_models import load_compiled_model  # noqa: PLC0415

        target = NequIPCalculator._get_aoti_compile_target()
        model, metadata = load_compiled_model(str(path), self.device, list(target["input"]), list(target["output"]))
        calc = NequIPCalculator(model=model, device=self.device, transforms=self._transforms(metadata, species_map))
        return calc, metadata
