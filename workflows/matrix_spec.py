"""The validation-matrix spec: a TOML file of cases (cell, defect, temperatures, what to compare).

Layout (see ``validation/matrix.toml``, the committed default)::

    [matrix]  potential (KIND:PATH, relative paths from the spec's folder), min_hops, seed
    [md]      defaults of every case: run_ps, equil_ps, dt_fs, dump_fs, max_runs,
              lattice_constant ("npt", "vegard" or A), thermostat
    [kmc]     replicas, time_factor, upscale_shape, fit_mode, seed, lag_fraction (verdict lag / run_ps),
              interstitial_model (orientation-free | oriented: rotations fitted from the MD hop pairs)
    [[case]]  id, defect (interstitial | vacancy), structure (pure | random |
              heterojunction | nanodomain) and its parameters (species; x_I;
              thickness_I, thickness_Br, interface; domain_species, domain_size),
              shape, temperatures_K, compare (diffusion | profile | mixing),
              where (defect placement rule), min_hops (more for profiles and mixing),
              target_hops (hops per temperature the MD lanes run for: a number, or a table
              {temperature = hops}; default min_hops), and any
              [md] key as an override.

Every field is checked once, here; an error names the case and the field.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFECTS = ("interstitial", "vacancy")
STRUCTURES = ("pure", "random", "heterojunction", "nanodomain")
COMPARES = ("diffusion", "profile", "mixing")
STRUCTURE_KEYS = {
    "pure": ("species",),
    "random": ("x_I",),
    "heterojunction": ("thickness_I", "thickness_Br", "interface"),
    "nanodomain": ("domain_species", "domain_size"),
}
MD_DEFAULTS = {"run_ps": 50.0, "equil_ps": 2.0, "dt_fs": 2.0, "dump_fs": 50.0, "max_runs": 10,
               "lattice_constant": "npt", "thermostat": "nose-hoover"}
KMC_DEFAULTS = {"replicas": 8, "time_factor": 4.0, "upscale_shape": [12, 12, 12], "fit_mode": "shared", "seed": 7,
                "lag_fraction": 0.25, "interstitial_model": "orientation-free"}
MATRIX_DEFAULTS = {"potential": None, "min_hops": 50, "seed": 1}
CASE_KEYS = {"id", "defect", "structure", "shape", "temperatures_K", "compare", "where", "min_hops", "target_hops", "species", "x_I",
             "thickness_I", "thickness_Br", "interface", "domain_species", "domain_size", *MD_DEFAULTS}


class SpecError(ValueError):
    """Invalid matrix spec; the message names the case and field."""


@dataclass(frozen=True)
class MDParams:
    run_ps: float
    equil_ps: float
    dt_fs: float
    dump_fs: float
    max_runs: int
    lattice_constant: float | str
    thermostat: str


@dataclass(frozen=True)
class Case:
    id: str
    defect: str
    structure: str
    params: dict
    shape: tuple[int, int, int]
    temperatures_K: tuple[float, ...]
    compare: str
    where: str | int
    md: MDParams
    min_hops: int | None = None
    target_hops: int | dict | None = None  # one number, or {temperature_K: hops}

    def hops_wanted(self, temperature_K: float, default: int) -> int:
        """Hops the MD lane at this temperature runs for."""
        th = self.target_hops
        if isinstance(th, dict):
            th = th.get(float(temperature_K))
        return int(th or self.min_hops or default)

    def physics(self, potential_sha256: str, seed: int) -> dict:
        """What determines the case's MD (the hash of the compact records)."""
        return {"defect": self.defect, "structure": self.structure, "params": self.params,
                "shape": list(self.shape), "where": self.where, "md": asdict(self.md),
                "potential_sha256": potential_sha256, "seed": seed}

    def physics_hash(self, potential_sha256: str, seed: int) -> str:
        d = self.physics(potential_sha256, seed)
        d["md"] = {k: v for k, v in d["md"].items() if k != "max_runs"}  # more runs extend a case
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class KMCParams:
    replicas: int
    time_factor: float
    upscale_shape: tuple[int, int, int] | None
    fit_mode: str
    seed: int
    lag_fraction: float
    interstitial_model: str = "orientation-free"


@dataclass(frozen=True)
class MatrixSpec:
    path: str
    potential: str
    potential_path: str
    min_hops: int
    seed: int
    kmc: KMCParams
    cases: tuple[Case, ...] = field(default_factory=tuple)
    text_sha256: str = ""

    def case(self, case_id: str) -> Case:
        for c in self.cases:
            if c.id == case_id:
                return c
        raise SpecError(f"no case {case_id!r} in {self.path}; cases are {[c.id for c in self.cases]}")


def _int(v, where: str, lo: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise SpecError(f"{where} must be an integer, got {v!r}")
    if lo is not None and v < lo:
        raise SpecError(f"{where} must be >= {lo}, got {v}")
    return v


def _num(v, where: str, positive: bool = True) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise SpecError(f"{where} must be a finite number, got {v!r}")
    if positive and not v > 0:
        raise SpecError(f"{where} must be > 0, got {v}")
    return float(v)


def _choice(v, where: str, choices) -> str:
    if v not in choices:
        raise SpecError(f"{where} must be one of {list(choices)}, got {v!r}")
    return v


def _shape(v, where: str) -> tuple[int, int, int]:
    if not (isinstance(v, list) and len(v) == 3):
        raise SpecError(f"{where} must be a list of 3 cell counts, got {v!r}")
    return tuple(_int(x, where, 1) for x in v)


def _md(raw: dict, where: str) -> MDParams:
    lc = raw["lattice_constant"]
    if not (lc in ("npt", "vegard") or (not isinstance(lc, bool) and isinstance(lc, (int, float))
                                        and math.isfinite(lc) and 3.0 < lc < 10.0)):
        raise SpecError(f"{where}.lattice_constant must be 'npt', 'vegard' or a number of A in (3, 10), got {lc!r}")
    md = MDParams(run_ps=_num(raw["run_ps"], f"{where}.run_ps"), equil_ps=_num(raw["equil_ps"], f"{where}.equil_ps",
                                                                              positive=False),
                  dt_fs=_num(raw["dt_fs"], f"{where}.dt_fs"), dump_fs=_num(raw["dump_fs"], f"{where}.dump_fs"),
                  max_runs=_int(raw["max_runs"], f"{where}.max_runs", 1),
                  lattice_constant=float(lc) if not isinstance(lc, str) else lc,
                  thermostat=_choice(raw["thermostat"], f"{where}.thermostat", ("nose-hoover", "langevin")))
    for name, ps in (("run_ps", md.run_ps), ("dump_fs", md.dump_fs / 1000.0), ("equil_ps", md.equil_ps)):
        n = ps * 1000.0 / md.dt_fs
        if abs(n - round(n)) > 1e-6:
            raise SpecError(f"{where}.{name} is not a whole number of {md.dt_fs} fs steps")
    if abs(md.run_ps * 1000.0 / md.dump_fs - round(md.run_ps * 1000.0 / md.dump_fs)) > 1e-6:
        raise SpecError(f"{where}.run_ps must be a multiple of dump_fs")
    return md


def _params(raw: dict, structure: str, where: str) -> dict:
    p = {}
    for k in STRUCTURE_KEYS[structure]:
        if k not in raw:
            raise SpecError(f"{where}: structure {structure!r} needs {k!r}")
        p[k] = raw[k]
    for k in {"species", "x_I", "thickness_I", "thickness_Br", "interface", "domain_species", "domain_size"} - set(p):
        if k in raw:
            raise SpecError(f"{where}.{k} does not apply to structure {structure!r}")
    if "species" in p:
        _choice(p["species"], f"{where}.species", ("I", "Br"))
    if "x_I" in p:
        x = _num(p["x_I"], f"{where}.x_I", positive=False)
        if not 0.0 < x < 1.0:
            raise SpecError(f"{where}.x_I must lie in (0, 1), got {x}")
        p["x_I"] = x
    for k in ("thickness_I", "thickness_Br", "domain_size"):
        if k in p:
            _int(p[k], f"{where}.{k}", 1)
    if "interface" in p:
        _choice(p["interface"], f"{where}.interface", ("I-rich", "Br-rich"))
    if "domain_species" in p:
        _choice(p["domain_species"], f"{where}.domain_species", ("I", "Br"))
    return p


def _target_hops(th, temperatures: tuple, where: str):
    """``target_hops``: one number for every temperature, or a table {temperature = hops}."""
    if th is None:
        return None
    if not isinstance(th, dict):
        return _int(th, f"{where}.target_hops", 1)
    out = {}
    for k, v in th.items():
        try:
            T = float(k)
        except ValueError:
            raise SpecError(f"{where}.target_hops: key {k!r} is not a temperature in K") from None
        if T not in temperatures:
            raise SpecError(f"{where}.target_hops: {k} K is not one of temperatures_K {list(temperatures)}")
        out[T] = _int(v, f"{where}.target_hops.{k}", 1)
    return out


def load_spec(path) -> MatrixSpec:
    """Read and check a matrix spec (TOML)."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"matrix spec {str(p)!r} does not exist or is not a file")
    try:
        text = p.read_text(encoding="utf-8")
        raw = tomllib.loads(text)
    except UnicodeDecodeError as exc:
        raise SpecError(f"{p}: not UTF-8 text ({exc.reason})") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{p}: not valid TOML ({exc})") from None
    for sec in raw:
        if sec not in ("matrix", "md", "kmc", "case"):
            raise SpecError(f"{p}: unknown section [{sec}]; valid sections are ['case', 'kmc', 'matrix', 'md']")
    sections = {}
    for sec, defaults in (("matrix", MATRIX_DEFAULTS), ("md", MD_DEFAULTS), ("kmc", KMC_DEFAULTS)):
        vals = raw.get(sec, {})
        if not isinstance(vals, dict):
            raise SpecError(f"{p}: [{sec}] must be a table")
        for k in vals:
            if k not in defaults:
                raise SpecError(f"{p}: unknown key {k!r} in [{sec}]; valid keys are {sorted(defaults)}")
        sections[sec] = {**defaults, **vals}
    m = sections["matrix"]
    pot = m["potential"]
    if not isinstance(pot, str) or ":" not in pot:
        raise SpecError(f"{p}: matrix.potential must be KIND:PATH (e.g. reaxff:IBrPbCs.ff), got {pot!r}")
    kind, ppath = pot.split(":", 1)
    pp = Path(ppath)
    if not pp.is_absolute():
        pp = (p.parent / pp).resolve()
    if not pp.is_file():
        raise SpecError(f"{p}: matrix.potential file {str(pp)!r} not found")
    k = sections["kmc"]
    ups = k["upscale_shape"]
    kmc = KMCParams(replicas=_int(k["replicas"], "kmc.replicas", 2), time_factor=_num(k["time_factor"], "kmc.time_factor"),
                    upscale_shape=None if ups in (None, [], False) else _shape(ups, "kmc.upscale_shape"),
                    fit_mode=_choice(k["fit_mode"], "kmc.fit_mode", ("per-class", "shared", "fixed")),
                    seed=_int(k["seed"], "kmc.seed", 0), lag_fraction=_num(k["lag_fraction"], "kmc.lag_fraction"),
                    interstitial_model=_choice(k["interstitial_model"], "kmc.interstitial_model",
                                               ("orientation-free", "oriented")))
    if not kmc.lag_fraction <= 0.5:
        raise SpecError(f"{p}: kmc.lag_fraction must lie in (0, 0.5], got {kmc.lag_fraction}")
    cases_raw = raw.get("case", [])
    if not isinstance(cases_raw, list) or not cases_raw:
        raise SpecError(f"{p}: no [[case]] entries")
    cases, seen = [], set()
    for n, c in enumerate(cases_raw):
        where = f"case[{n}]"
        if not isinstance(c, dict):
            raise SpecError(f"{where} must be a table")
        for key in c:
            if key not in CASE_KEYS:
                raise SpecError(f"{where}: unknown key {key!r}; valid keys are {sorted(CASE_KEYS)}")
        cid = c.get("id")
        if not isinstance(cid, str) or not cid or any(ch in cid for ch in "/\\ ") or cid.startswith("."):
            raise SpecError(f"{where}.id must be a non-empty name without spaces or slashes, got {cid!r}")
        where = f"case {cid!r}"
        if cid in seen:
            raise SpecError(f"{where}: duplicate id")
        seen.add(cid)
        for key in ("defect", "structure", "shape", "temperatures_K", "compare"):
            if key not in c:
                raise SpecError(f"{where}: missing {key!r}")
        defect = _choice(c["defect"], f"{where}.defect", DEFECTS)
        structure = _choice(c["structure"], f"{where}.structure", STRUCTURES)
        temps = c["temperatures_K"]
        if not isinstance(temps, list) or not temps:
            raise SpecError(f"{where}.temperatures_K must be a non-empty list")
        T = tuple(_num(t, f"{where}.temperatures_K") for t in temps)
        if len({f"{t:g}" for t in T}) != len(T):
            raise SpecError(f"{where}.temperatures_K has duplicate temperatures {list(T)}")
        compare = _choice(c["compare"], f"{where}.compare", COMPARES)
        if compare == "profile" and structure != "heterojunction":
            raise SpecError(f"{where}: compare = 'profile' needs a heterojunction")
        if compare == "mixing" and structure != "nanodomain":
            raise SpecError(f"{where}: compare = 'mixing' needs a nanodomain")
        wh = c.get("where", "random")
        if isinstance(wh, bool) or not isinstance(wh, (str, int)):
            raise SpecError(f"{where}.where must be a placement rule or a site index, got {wh!r}")
        md = _md({**sections["md"], **{kk: v for kk, v in c.items() if kk in MD_DEFAULTS}}, where)
        mh = c.get("min_hops")
        th = c.get("target_hops")
        cases.append(Case(id=cid, defect=defect, structure=structure, params=_params(c, structure, where),
                          shape=_shape(c["shape"], f"{where}.shape"), temperatures_K=T, compare=compare,
                          where=wh, md=md, min_hops=None if mh is None else _int(mh, f"{where}.min_hops", 1),
                          target_hops=_target_hops(th, T, where)))
    import hashlib as _h  # noqa: PLC0415

    return MatrixSpec(path=str(p), potential=f"{kind}:{pp}", potential_path=str(pp),
                      min_hops=_int(m["min_hops"], "matrix.min_hops", 1), seed=_int(m["seed"], "matrix.seed", 1),
                      kmc=kmc, cases=tuple(cases), text_sha256=_h.sha256(text.encode()).hexdigest())
