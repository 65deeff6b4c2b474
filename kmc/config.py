"""Run configuration: TOML file + command-line overrides -> one validated, frozen :class:`RunConfig`.

The config is checked once, in :func:`resolve`, and from then on travels as a
frozen dataclass whose fields the runner and the engine read
(``cfg.run.seed``, ``cfg.lattice.shape``); :meth:`RunConfig.to_dict` gives the
JSON stored in run files (the same layout as before the dataclass, so old
run files resume), :meth:`RunConfig.to_toml` a TOML file that
:func:`load_config` reads back to an equal config, and
:meth:`RunConfig.with_overrides` a re-validated copy with some fields changed.

Sections and keys (defaults in brackets)::

    [lattice]        shape = [nx, ny, nz]             unit cells (required)
                     lattice_constant_A = "vegard"    or a number (angstrom)
    [configuration]  kind = "pure" | "random" | "heterojunction" | "nanodomain"
                     species = "I"                    (pure)
                     x_I = 0.5                        (random)
                     thickness_I, thickness_Br = 8, 8; interface = "I-rich"; axis = "x"  (heterojunction)
                     domain_species = "I"; domain_size = 4; origin = [..] (nanodomain)
    [defects]        vacancies = 0; interstitials = 0
                     placement = "random" | "domain" | "matrix" | "interface" | "region:I" | "region:Br" | [sites]
                     added_species = "same" | "I" | "Br"
    [run]            temperatures_K = [300.0]; time_s (required unless max_events); max_events
                     n_observations = 100; replicas = 1; seed = 0; catalog = "default"
                     workers = 1; checkpoint_every_wall_s = 60.0; event_log = 0
    [output]         directory = "kmc_run"; plots = true
"""

from __future__ import annotations

import copy
import json
import math
import sys
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from common.atomic import read_text_file
from lattice.configurations import BUILDERS, INTERFACE_TYPES
from lattice.defects import PLACEMENTS

DEFAULTS: dict = {
    "lattice": {"shape": None, "lattice_constant_A": "vegard"},
    "configuration": {"kind": "pure", "species": "I", "x_I": 0.5, "thickness_I": 8, "thickness_Br": 8,
                      "interface": "I-rich", "axis": "x", "domain_species": "I", "domain_size": 4,
                      "origin": None},
    "defects": {"vacancies": 0, "interstitials": 0, "placement": "random", "added_species": "same"},
    "run": {"temperatures_K": [300.0], "time_s": None, "max_events": None, "n_observations": 100,
            "replicas": 1, "seed": 0, "catalog": "default", "workers": 1, "checkpoint_every_wall_s": 60.0,
            "event_log": 0},
    "output": {"directory": "kmc_run", "plots": True},
}

# keys of each configuration kind that are passed to its builder
KIND_KEYS = {
    "pure": ("species",),
    "random": ("x_I",),
    "heterojunction": ("thickness_I", "thickness_Br", "interface", "axis"),
    "nanodomain": ("domain_species", "domain_size", "origin", "axis"),
}


class ConfigError(ValueError):
    """Invalid run configuration; the message names the field."""


def default_config_text() -> str:
    """The embedded default configuration (TOML text)."""
    return resources.files("kmc").joinpath("data/default.toml").read_text()


@dataclass(frozen=True)
class LatticeConfig:
    shape: tuple[int, int, int]
    lattice_constant_A: float | str


@dataclass(frozen=True)
class ConfigurationConfig:
    kind: str
    species: str
    x_I: float
    thickness_I: int
    thickness_Br: int
    interface: str
    axis: str
    domain_species: str
    domain_size: int
    origin: tuple[int, int, int] | None


@dataclass(frozen=True)
class DefectsConfig:
    vacancies: int
    interstitials: int
    placement: str | tuple[int, ...]
    added_species: str


@dataclass(frozen=True)
class RunSection:
    temperatures_K: tuple[float, ...]
    time_s: float | None
    max_events: int | None
    n_observations: int
    replicas: int
    seed: int
    catalog: str
    workers: int
    checkpoint_every_wall_s: float
    event_log: int


@dataclass(frozen=True)
class OutputConfig:
    directory: str
    plots: bool


SECTIONS = {"lattice": LatticeConfig, "configuration": ConfigurationConfig, "defects": DefectsConfig,
            "run": RunSection, "output": OutputConfig}


def _plain(v):
    return [_plain(x) for x in v] if isinstance(v, (tuple, list)) else v


def _frozen(v):
    return tuple(_frozen(x) for x in v) if isinstance(v, list) else v


@dataclass(frozen=True)
class RunConfig:
    """A validated run configuration (see the module docstring for the keys)."""

    lattice: LatticeConfig
    configuration: ConfigurationConfig
    defects: DefectsConfig
    run: RunSection
    output: OutputConfig

    def to_dict(self) -> dict:
        """Plain nested dict (lists, not tuples): the layout stored in run files and summaries."""
        return {sec: {f.name: _plain(getattr(getattr(self, sec), f.name)) for f in fields(cls)}
                for sec, cls in SECTIONS.items()}

    def to_toml(self) -> str:
        """TOML text that :func:`load_config` reads back to an equal config (None values are omitted)."""
        lines = []
        for sec, vals in self.to_dict().items():
            lines.append(f"[{sec}]")
            for k, v in vals.items():
                if v is not None:
                    lines.append(f"{k} = {json.dumps(v)}")
            lines.append("")
        return "\n".join(lines)

    def with_overrides(self, overrides: dict) -> "RunConfig":
        """A new, re-validated config with ``{"section.key": value}`` changed."""
        raw = self.to_dict()
        for dotted, value in overrides.items():
            section, _, key = dotted.partition(".")
            if section not in raw or key not in raw[section]:
                raise ConfigError(f"unknown config field {dotted!r}")
            raw[section][key] = value
        return resolve(raw)


def load_config(path: str | Path | None) -> RunConfig:
    """Read a TOML config file (the embedded default if ``path`` is None) and resolve it."""
    if path is None:
        raw = tomllib.loads(default_config_text())
    else:
        p = Path(path)
        try:
            text = read_text_file(p, "config file")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: not valid TOML ({exc})") from None
    return resolve(raw)


def resolve(raw: dict) -> RunConfig:
    """Merge ``raw`` over :data:`DEFAULTS`, validate every field, and freeze the result."""
    if isinstance(raw, RunConfig):
        return raw
    cfg = copy.deepcopy(DEFAULTS)
    for section, values in raw.items():
        if section not in cfg:
            raise ConfigError(f"unknown config section [{section}]; valid sections are {sorted(cfg)}")
        if not isinstance(values, dict):
            raise ConfigError(f"[{section}] must be a table")
        for key, val in values.items():
            if key not in cfg[section]:
                raise ConfigError(f"unknown key {key!r} in [{section}]; valid keys are {sorted(cfg[section])}")
            cfg[section][key] = copy.deepcopy(val)
    _validate(cfg)
    return RunConfig(**{sec: cls(**{k: _frozen(v) for k, v in cfg[sec].items()}) for sec, cls in SECTIONS.items()})


INT64_MAX = 2 ** 63 - 1


def _int(v, name: str, lo: int | None = None, hi: int = INT64_MAX) -> int:
    """An exact integer (not a bool, not a float with or without a fraction) in [lo, hi], in Python integers."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"{name} must be an integer, got {v!r}")
    if lo is not None and v < lo:
        raise ConfigError(f"{name} must be >= {lo}, got {v}")
    if v > hi:
        raise ConfigError(f"{name} must be <= {hi}, got {v}")
    return v


def _num(v, name: str, positive: bool = False, lo: float | None = None, hi: float | None = None) -> float:
    """A finite number (int or float, not a bool or a string), optionally > 0 and within [lo, hi]."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(f"{name} must be a number, got {v!r}")
    if not math.isfinite(v):
        raise ConfigError(f"{name} must be finite, got {v!r}")
    if positive and not v > 0:
        raise ConfigError(f"{name} must be > 0, got {v}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ConfigError(f"{name} must lie in [{lo:g}, {hi:g}], got {v}")
    return float(v)


def _choice(v, name: str, choices) -> str:
    if not isinstance(v, str) or v not in choices:
        raise ConfigError(f"unknown {name} {v!r}; valid values are {sorted(choices)}")
    return v


def _validate(cfg: dict) -> None:
    lat = cfg["lattice"]
    shape = lat["shape"]
    if not (isinstance(shape, list) and len(shape) == 3):
        raise ConfigError(f"lattice.shape must be a list of 3 cell counts, got {shape!r}")
    for n, v in enumerate(shape):
        _int(v, f"lattice.shape[{n}]", lo=2, hi=10_000)
    a = lat["lattice_constant_A"]
    if a != "vegard":
        _num(a, "lattice.lattice_constant_A", positive=True, lo=3.0, hi=10.0)
    conf = cfg["configuration"]
    _choice(conf["kind"], "configuration.kind", BUILDERS)
    _choice(conf["interface"], "configuration.interface", INTERFACE_TYPES)
    _choice(conf["axis"], "configuration.axis", ("x", "y", "z"))
    for key in ("species", "domain_species"):
        _choice(conf[key], f"configuration.{key}", ("I", "Br"))
    x = _num(conf["x_I"], "configuration.x_I", lo=0.0, hi=1.0)
    for key in ("thickness_I", "thickness_Br", "domain_size"):
        _int(conf[key], f"configuration.{key}", lo=1, hi=10_000)
    conf["x_I"] = x
    if conf["origin"] is not None:
        o = conf["origin"]
        if not (isinstance(o, list) and len(o) == 3):
            raise ConfigError(f"configuration.origin must be a list of 3 cell indices, got {o!r}")
        for n, v in enumerate(o):
            _int(v, f"configuration.origin[{n}]", lo=0, hi=10_000)
    dfc = cfg["defects"]
    _int(dfc["vacancies"], "defects.vacancies", lo=0)
    _int(dfc["interstitials"], "defects.interstitials", lo=0)
    if dfc["vacancies"] + dfc["interstitials"] == 0:
        raise ConfigError("a KMC run needs at least one defect: set defects.vacancies or defects.interstitials")
    pl = dfc["placement"]
    if isinstance(pl, str):
        if pl not in PLACEMENTS:
            raise ConfigError(f"unknown defects.placement {pl!r}; valid placements are {list(PLACEMENTS)} or a list of sites")
    elif isinstance(pl, list):
        for n, v in enumerate(pl):
            _int(v, f"defects.placement[{n}]", lo=0)
    else:
        raise ConfigError("defects.placement must be a placement name or a list of site indices")
    if dfc["added_species"] not in ("same", "I", "Br"):
        raise ConfigError(f"unknown defects.added_species {dfc['added_species']!r}; valid: ['same', 'I', 'Br']")
    run = cfg["run"]
    temps = run["temperatures_K"]
    if isinstance(temps, (int, float)) and not isinstance(temps, bool):
        temps = run["temperatures_K"] = [float(temps)]
    if not (isinstance(temps, list) and temps):
        raise ConfigError("run.temperatures_K must be a non-empty list of temperatures")
    run["temperatures_K"] = [_num(t, "run.temperatures_K[]", positive=True, lo=1.0, hi=5000.0) for t in temps]
    names = [f"T{t:g}" for t in run["temperatures_K"]]
    if len(set(names)) != len(names):
        raise ConfigError(f"run.temperatures_K has duplicate (or indistinguishable) temperatures {run['temperatures_K']}; "
                          "use replicas for repeats")
    if run["time_s"] is None and run["max_events"] is None:
        raise ConfigError("set a budget: run.time_s (simulated seconds) and/or run.max_events")
    if run["time_s"] is not None:
        run["time_s"] = _num(run["time_s"], "run.time_s", positive=True)
    if run["max_events"] is not None:
        _int(run["max_events"], "run.max_events", lo=1)
    _int(run["n_observations"], "run.n_observations", lo=2)
    _int(run["replicas"], "run.replicas", lo=1)
    _int(run["seed"], "run.seed", lo=0, hi=INT64_MAX)
    _int(run["workers"], "run.workers", lo=1)
    _int(run["event_log"], "run.event_log", lo=0)
    _int(run["replicas"], "run.replicas", lo=1, hi=100_000)
    _num(run["checkpoint_every_wall_s"], "run.checkpoint_every_wall_s", positive=True)
    if not isinstance(run["catalog"], str):
        raise ConfigError("run.catalog must be 'default', 'paper' or a path to a catalog file")
    out = cfg["output"]
    if not isinstance(out["directory"], str) or not out["directory"]:
        raise ConfigError("output.directory must be a non-empty path")
    if not isinstance(out["plots"], bool):
        raise ConfigError("output.plots must be true or false")


def builder_kwargs(cfg: RunConfig) -> dict:
    """Arguments for :func:`lattice.build_configuration` (without lattice/kind/seed)."""
    conf = cfg.to_dict()["configuration"]
    kw = {k: conf[k] for k in KIND_KEYS[conf["kind"]]}
    if conf["kind"] == "nanodomain" and kw.get("origin") is None:
        kw.pop("origin")
    return kw


def physics_fingerprint(cfg: RunConfig) -> dict:
    """The part of a config that determines a trajectory (used to refuse mismatched resumes)."""
    d = cfg.to_dict()
    run = {k: v for k, v in d["run"].items() if k not in ("workers", "checkpoint_every_wall_s")}
    return {"lattice": d["lattice"], "configuration": d["configuration"], "defects": d["defects"], "run": run}
