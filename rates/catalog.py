"""Rate catalog, format versions 1, 2 and 3.

Version 3 is version 2 plus a cluster-expansion energy model
(:mod:`lattice.cluster_expansion`), added to the pair/bridge energies::

      "cluster_expansion": {"lattice": "...", "cutoffs_a": [1.3, 1.01], "fingerprint": "...",
                            "orbits": [{"index": 0, "order": 1, "eci_eV": ...}, ...],
                            "defect_terms": {"vacancy": [...], "interstitial": [...]}, ...}

A catalog without one is written as version 2 (or 1), as before.

Version 2 is version 1 plus the interstitial model (:mod:`lattice.orientation`)::

      "interstitial_model": "oriented",
      "rotations": [{"kind": "rot90", "bridge": "II", "E_eV": 0.2, "E_err_eV": 0.02,
                     "prefactor_Hz": 1e12, "prefactor_err_Hz": null, "source": "..."}, ...]

In the ``oriented`` model the interstitial classes give the rate of each of the
4 kick-outs aligned with the bridge orientation, and ``rotations`` the in-place
90-degree (``rot90``) and flip rotations per bridge composition. A version-1
file is the ``orientation-free`` model (any bridge atom to any of its 8
neighbours, no rotations) and is written back as version 1, byte for byte
the same document.

Version 1:

A catalog is one self-describing JSON file::

    {
      "format": "halide-kmc-rate-catalog",
      "schema_version": 1,
      "name": "...", "description": "...",
      "descriptor": {"name": "path-shell-nI", "version": 1, "n_classes": 104},
      "rate_law": {"name": "kra-detailed-balance", "expression": "..."},
      "units": {"energy": "eV", "prefactor": "Hz", "length": "angstrom", "temperature": "K"},
      "temperature_range_K": [lo, hi],
      "lattice_constant_A": {"I": 6.30, "Br": 5.90, "mixing_rule": "vegard"},
      "energy_model": {
        "pair_eV":   [{"states": ["V", "I"], "value": 0.0125, "error": 0.005, "source": "..."}, ...],
        "bridge_eV": [{"bridge": "II", "value": 0.1439, "error": 0.02, "source": "..."}, ...]
      },
      "classes": [{"id": 0, "label": "V:I:nI=0", "defect": "vacancy", "mover": "I",
                   "pair_nI": null, "shell_nI": 0, "E_KRA_eV": 0.108, "E_KRA_err_eV": 0.05,
                   "prefactor_Hz": 1e12, "prefactor_err_Hz": 1e12, "source": "..."}, ...],
      "sources": {"source-id": "full reference", ...},
      "assumptions": ["..."],
      "provenance": {"created_utc": "...", "generator": "...", "package_version": "...",
                     "inputs": {"name": "sha256"}}
    }

Classes may be missing (a catalog fitted to MD covers what MD saw); the engine
refuses to start when a class that occurs has no entry, and stops with
:class:`MissingRateError` if one appears later. Pair energies not listed are 0.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from common.atomic import read_text_file, write_text_atomic
from lattice.cluster_expansion import ClusterExpansion, ClusterExpansionError
from lattice.environment import (
    DESCRIPTOR_NAME,
    DESCRIPTOR_VERSION,
    N_CLASSES,
    class_label,
    decode_class,
)
from lattice.orientation import (
    INTERSTITIAL_MODELS,
    N_ROTATION_CLASSES,
    ROTATION_KINDS,
    is_rotation_class,
    rotation_class,
    rotation_label,
)
from lattice.species import BRIDGE_NAMES, HALIDES, N_STATES, STATE_NAMES, bridge_code

FORMAT_NAME = "halide-kmc-rate-catalog"
SCHEMA_VERSION = 3
"""Newest version written (with a cluster expansion); otherwise 2 (oriented) or 1 (orientation-free)."""
SUPPORTED_VERSIONS = (1, 2, 3)
RATE_LAW_NAME = "kra-detailed-balance"
RATE_LAW_EXPRESSION = (
    "rate = prefactor_Hz * exp(-E_a / (k_B T)), E_a = max(E_KRA(class) + dE/2, dE, 0), "
    "dE = E(final) - E(initial) from the energy model"
)
UNITS = {"energy": "eV", "prefactor": "Hz", "length": "angstrom", "temperature": "K"}
DEFAULT_CATALOG = "default"
#: catalogs shipped with the package, by name (``run.catalog = "paper"``, ``kmc rates show paper``)
EMBEDDED_CATALOGS = {"default": "data/default_catalog.json", "paper": "data/paper_catalog.json"}
MAX_PREFACTOR_HZ = 1e16
"""Attempt frequencies are 1e11-1e14 Hz; beyond this a catalog value is a unit error, not physics."""
MAX_ENERGY_EV = 20.0
"""Barriers and pair/bridge energies beyond this (in magnitude) are refused."""


class CatalogError(ValueError):
    """A catalog file is malformed or inconsistent; the message names the field."""


class MissingRateError(CatalogError):
    """A hop class that occurs has no rate in the catalog."""

    def __init__(self, classes, catalog_name: str = "?"):
        self.classes = sorted(int(c) for c in np.atleast_1d(classes))
        labels = ", ".join(f"{c} ({event_label(c)})" for c in self.classes[:20])
        more = "" if len(self.classes) <= 20 else f" and {len(self.classes) - 20} more"
        super().__init__(
            f"catalog {catalog_name!r} has no rate for event class(es) that occur: {labels}{more}"
        )


def event_label(cls: int) -> str:
    """Label of a hop class or of a rotation class."""
    return rotation_label(cls) if is_rotation_class(cls) else class_label(cls)


def _nan6() -> np.ndarray:
    return np.full(N_ROTATION_CLASSES, np.nan)


@dataclass
class RateCatalog:
    """Environment-resolved hop rates and the energy model (in memory).

    Attributes
    ----------
    name : str
    E_KRA_eV, E_KRA_err_eV, prefactor_Hz, prefactor_err_Hz : (104,) float64
        Per hop class; NaN where the catalog has no entry.
    class_source : list of str
        Source id per class ("" where missing).
    pair_eV, pair_err_eV : (4, 4) float64
        Symmetric pair energies J[state, state] and their errors.
    pair_source : dict
        ``(state_a, state_b) -> source id`` for listed pairs.
    bridge_eV, bridge_err_eV : (3,) float64
        Bridge energies by number of Br atoms.
    bridge_source : list of str
    lattice_constant_A : dict
        ``{"I": a_I, "Br": a_Br, "mixing_rule": "vegard"}``.
    temperature_range_K : (2,) float
    interstitial_model : {"orientation-free", "oriented"}
    rotation_E_eV, rotation_E_err_eV, rotation_prefactor_Hz, rotation_prefactor_err_Hz : (6,) float64
        Per rotation class ``kind * 3 + n_Br`` (:func:`lattice.orientation.rotation_class` minus the
        base); NaN where missing (all NaN for the orientation-free model).
    rotation_source : list of str
    """

    name: str
    E_KRA_eV: np.ndarray
    E_KRA_err_eV: np.ndarray
    prefactor_Hz: np.ndarray
    prefactor_err_Hz: np.ndarray
    class_source: list
    pair_eV: np.ndarray
    pair_err_eV: np.ndarray
    pair_source: dict
    bridge_eV: np.ndarray
    bridge_err_eV: np.ndarray
    bridge_source: list
    lattice_constant_A: dict
    temperature_range_K: tuple
    description: str = ""
    sources: dict = field(default_factory=dict)
    assumptions: list = field(default_factory=list)
    provenance: dict = field(default_factory=dict)
    interstitial_model: str = "orientation-free"
    rotation_E_eV: np.ndarray = field(default_factory=_nan6)
    rotation_E_err_eV: np.ndarray = field(default_factory=_nan6)
    rotation_prefactor_Hz: np.ndarray = field(default_factory=_nan6)
    rotation_prefactor_err_Hz: np.ndarray = field(default_factory=_nan6)
    rotation_source: list = field(default_factory=lambda: [""] * N_ROTATION_CLASSES)
    cluster_expansion: ClusterExpansion | None = None

    # -- queries
    @property
    def oriented(self) -> bool:
        """True for the oriented interstitial model (aligned kick-outs and rotations)."""
        return self.interstitial_model == "oriented"

    def rotation_rates_Hz(self, temperature_K: float) -> np.ndarray:
        """(6,) rotation rates at ``temperature_K`` (NaN where missing; NaN everywhere when orientation-free)."""
        from common.units import K_B_EV  # noqa: PLC0415

        return self.rotation_prefactor_Hz * np.exp(-self.rotation_E_eV / (K_B_EV * float(temperature_K)))

    def require_rotations(self, bridge_n_br) -> None:
        """Raise :class:`MissingRateError` if an oriented catalog lacks a rotation of a bridge composition present."""
        if not self.oriented:
            return
        missing = [rotation_class(kind, int(nb)) for nb in np.unique(np.asarray(bridge_n_br, dtype=np.int64))
                   for kind in range(2) if math.isnan(self.rotation_E_eV[kind * 3 + int(nb)])]
        if missing:
            raise MissingRateError(missing, self.name)

    @property
    def present(self) -> np.ndarray:
        """(104,) bool: class has an entry."""
        return ~np.isnan(self.E_KRA_eV)

    def require_classes(self, classes) -> None:
        """Raise :class:`MissingRateError` if any of ``classes`` has no entry."""
        classes = np.unique(np.asarray(classes, dtype=np.int64))
        missing = classes[~self.present[classes]]
        if missing.size:
            raise MissingRateError(missing, self.name)

    def lattice_constant(self, x_I: float) -> float:
        """Lattice constant (angstrom) at iodide fraction ``x_I`` (Vegard's law)."""
        a_i = float(self.lattice_constant_A["I"])
        a_br = float(self.lattice_constant_A["Br"])
        return x_I * a_i + (1.0 - x_I) * a_br

    def check_temperature(self, temperature_K: float) -> list[str]:
        """Warnings (as text) for a temperature outside the catalog's range."""
        lo, hi = self.temperature_range_K
        if not lo <= temperature_K <= hi:
            return [f"temperature {temperature_K} K lies outside the catalog's range [{lo}, {hi}] K"]
        return []

    def sha256(self) -> str:
        """Hash of the canonical JSON form (what a run records and checks on resume)."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    # -- (de)serialisation ---------------------------------------------------
    def to_dict(self) -> dict:
        classes = []
        for c in range(N_CLASSES):
            if not self.present[c]:
                continue
            d = decode_class(c)
            classes.append({
                "id": c,
                "label": class_label(c),
                **d,
                "E_KRA_eV": float(self.E_KRA_eV[c]),
                "E_KRA_err_eV": _num(self.E_KRA_err_eV[c]),
                "prefactor_Hz": float(self.prefactor_Hz[c]),
                "prefactor_err_Hz": _num(self.prefactor_err_Hz[c]),
                "source": self.class_source[c],
            })
        pairs = []
        for a in range(N_STATES):
            for b in range(a, N_STATES):
                key = (STATE_NAMES[a], STATE_NAMES[b])
                if key in self.pair_source or self.pair_eV[a, b] != 0.0:
                    pairs.append({
                        "states": list(key),
                        "value": float(self.pair_eV[a, b]),
                        "error": _num(self.pair_err_eV[a, b]),
                        "source": self.pair_source.get(key, ""),
                    })
        bridges = [
            {"bridge": BRIDGE_NAMES[n], "value": float(self.bridge_eV[n]),
             "error": _num(self.bridge_err_eV[n]), "source": self.bridge_source[n]}
            for n in range(3)
        ]
        out = {
            "format": FORMAT_NAME,
            "schema_version": 3 if self.cluster_expansion is not None else (2 if self.oriented else 1),
            "name": self.name,
            "description": self.description,
            "descriptor": {"name": DESCRIPTOR_NAME, "version": DESCRIPTOR_VERSION, "n_classes": N_CLASSES},
            "rate_law": {"name": RATE_LAW_NAME, "expression": RATE_LAW_EXPRESSION},
            "units": dict(UNITS),
            "temperature_range_K": [float(v) for v in self.temperature_range_K],
            "lattice_constant_A": dict(self.lattice_constant_A),
            "energy_model": {"pair_eV": pairs, "bridge_eV": bridges},
            "classes": classes,
            "sources": dict(self.sources),
            "assumptions": list(self.assumptions),
            "provenance": copy.deepcopy(self.provenance),
        }
        if self.oriented or self.cluster_expansion is not None:
            out["interstitial_model"] = self.interstitial_model
            out["rotations"] = [
                {"id": rotation_class(kind, nb), "label": rotation_label(rotation_class(kind, nb)),
                 "kind": ROTATION_KINDS[kind], "bridge": BRIDGE_NAMES[nb],
                 "E_eV": float(self.rotation_E_eV[kind * 3 + nb]),
                 "E_err_eV": _num(self.rotation_E_err_eV[kind * 3 + nb]),
                 "prefactor_Hz": float(self.rotation_prefactor_Hz[kind * 3 + nb]),
                 "prefactor_err_Hz": _num(self.rotation_prefactor_err_Hz[kind * 3 + nb]),
                 "source": self.rotation_source[kind * 3 + nb]}
                for kind in range(2) for nb in range(3) if not math.isnan(self.rotation_E_eV[kind * 3 + nb])
            ]
        if self.cluster_expansion is not None:
            out["cluster_expansion"] = self.cluster_expansion.to_dict()
        return out

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        write_text_atomic(path, json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def from_dict(cls, data: dict, origin: str = "<dict>") -> "RateCatalog":
        return _parse(data, origin)

    @classmethod
    def load(cls, path: str | Path) -> "RateCatalog":
        """Read and validate a catalog file; ``"default"`` loads the embedded one."""
        if str(path) in EMBEDDED_CATALOGS:
            res = resources.files("rates").joinpath(EMBEDDED_CATALOGS[str(path)])
            if not res.is_file():
                raise CatalogError(f"embedded catalog {str(path)!r} is not built "
                                   "(kmc rates calibrate rates/data/paper_targets.toml)")
            text = res.read_text()
            origin = f"embedded {path} catalog"
        else:
            p = Path(path)
            try:
                text = read_text_file(p, "catalog file")
            except ValueError as exc:
                raise CatalogError(str(exc)) from None
            origin = str(p)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CatalogError(f"{origin}: not valid JSON ({exc})") from None
        return _parse(data, origin)


def load_catalog(path: str | Path = DEFAULT_CATALOG) -> RateCatalog:
    """Load a catalog file, or the embedded default for ``"default"``."""
    return RateCatalog.load(path)


def _num(v) -> float | None:
    v = float(v)
    return None if math.isnan(v) else v


def _req(d: dict, key: str, where: str):
    if not isinstance(d, dict) or key not in d:
        raise CatalogError(f"{where}: missing field {key!r}")
    return d[key]


def _float(v, where: str, allow_none: bool = False) -> float:
    if v is None and allow_none:
        return math.nan
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise CatalogError(f"{where}: expected a number, got {v!r}")
    v = float(v)
    if not math.isfinite(v):
        raise CatalogError(f"{where}: expected a finite number, got {v!r}")
    return v


_SCHEMAS: dict = {}


def catalog_schema(version: int = 1) -> dict:
    """The JSON Schema of catalog format ``version`` (``rates/data/catalog_v<version>.schema.json``)."""
    if version not in _SCHEMAS:
        _SCHEMAS[version] = json.loads(
            resources.files("rates").joinpath(f"data/catalog_v{version}.schema.json").read_text())
    return _SCHEMAS[version]


def _check_schema(data, origin: str, version: int = 1) -> None:
    """Validate the document's structure (containers, types, required fields); name the first bad field's path."""
    from common.schemas import check  # noqa: PLC0415

    check(data, catalog_schema(version), origin, CatalogError)


def _parse(data: dict, origin: str) -> RateCatalog:
    if not isinstance(data, dict):
        raise CatalogError(f"{origin}: a catalog must be a JSON object")
    if data.get("format") == FORMAT_NAME and data.get("schema_version") in SUPPORTED_VERSIONS:
        _check_schema(data, origin, data["schema_version"])
    fmt = _req(data, "format", origin)
    if fmt != FORMAT_NAME:
        raise CatalogError(f"{origin}: field 'format' is {fmt!r}, expected {FORMAT_NAME!r}")
    ver = _req(data, "schema_version", origin)
    if isinstance(ver, bool) or ver not in SUPPORTED_VERSIONS:
        raise CatalogError(f"{origin}: schema_version {ver!r} is not supported (this package reads "
                           f"{list(SUPPORTED_VERSIONS)})")
    desc = _req(data, "descriptor", origin)
    if _req(desc, "name", f"{origin}: descriptor") != DESCRIPTOR_NAME or desc.get("version") != DESCRIPTOR_VERSION:
        raise CatalogError(
            f"{origin}: descriptor {desc.get('name')!r} v{desc.get('version')} does not match this package's "
            f"environment definition {DESCRIPTOR_NAME!r} v{DESCRIPTOR_VERSION}"
        )
    law = _req(data, "rate_law", origin)
    if _req(law, "name", f"{origin}: rate_law") != RATE_LAW_NAME:
        raise CatalogError(f"{origin}: rate_law {law.get('name')!r} unknown; valid: [{RATE_LAW_NAME!r}]")
    units = _req(data, "units", origin)
    for k, v in UNITS.items():
        if units.get(k) != v:
            raise CatalogError(f"{origin}: units.{k} is {units.get(k)!r}, expected {v!r}")
    trange = _req(data, "temperature_range_K", origin)
    if not (isinstance(trange, list) and len(trange) == 2):
        raise CatalogError(f"{origin}: temperature_range_K must be [low, high]")
    lo, hi = (_float(v, f"{origin}: temperature_range_K") for v in trange)
    if not 0 < lo <= hi:
        raise CatalogError(f"{origin}: temperature_range_K {trange} must satisfy 0 < low <= high")
    lat = _req(data, "lattice_constant_A", origin)
    for sp in HALIDES:
        a = _float(_req(lat, sp, f"{origin}: lattice_constant_A"), f"{origin}: lattice_constant_A.{sp}")
        if a <= 0:
            raise CatalogError(f"{origin}: lattice_constant_A.{sp} must be > 0, got {a}")
    extra = set(lat) - {"I", "Br", "mixing_rule", "source"}
    if extra:
        raise CatalogError(f"{origin}: lattice_constant_A has unknown species {sorted(extra)}; valid: ['I', 'Br']")
    if lat.get("mixing_rule", "vegard") != "vegard":
        raise CatalogError(f"{origin}: lattice_constant_A.mixing_rule {lat.get('mixing_rule')!r} unknown; valid: ['vegard']")

    # energy model
    em = _req(data, "energy_model", origin)
    pair = np.zeros((N_STATES, N_STATES))
    pair_err = np.full((N_STATES, N_STATES), np.nan)
    pair_src: dict = {}
    for n, entry in enumerate(_req(em, "pair_eV", f"{origin}: energy_model")):
        where = f"{origin}: energy_model.pair_eV[{n}]"
        states = _req(entry, "states", where)
        if not (isinstance(states, list) and len(states) == 2):
            raise CatalogError(f"{where}: 'states' must be a list of two site states")
        idx = []
        for st in states:
            if st not in STATE_NAMES:
                raise CatalogError(f"{where}: unknown site state {st!r}; valid states are {list(STATE_NAMES)}")
            idx.append(STATE_NAMES.index(st))
        a, b = sorted(idx)
        key = (STATE_NAMES[a], STATE_NAMES[b])
        if key in pair_src:
            raise CatalogError(f"{where}: pair {list(key)} listed twice")
        v = _float(_req(entry, "value", where), f"{where}.value")
        if abs(v) > MAX_ENERGY_EV:
            raise CatalogError(f"{where}.value = {v} eV is beyond +-{MAX_ENERGY_EV} eV")
        e = _float(entry.get("error"), f"{where}.error", allow_none=True)
        pair[a, b] = pair[b, a] = v
        pair_err[a, b] = pair_err[b, a] = e
        pair_src[key] = str(entry.get("source", ""))
    bridge = np.full(3, np.nan)
    bridge_err = np.full(3, np.nan)
    bridge_src = [""] * 3
    for n, entry in enumerate(_req(em, "bridge_eV", f"{origin}: energy_model")):
        where = f"{origin}: energy_model.bridge_eV[{n}]"
        try:
            nb = bridge_code(_req(entry, "bridge", where))
        except ValueError as exc:
            raise CatalogError(f"{where}: {exc}") from None
        if not math.isnan(bridge[nb]):
            raise CatalogError(f"{where}: bridge {BRIDGE_NAMES[nb]} listed twice")
        bridge[nb] = _float(_req(entry, "value", where), f"{where}.value")
        if abs(bridge[nb]) > MAX_ENERGY_EV:
            raise CatalogError(f"{where}.value = {bridge[nb]} eV is beyond +-{MAX_ENERGY_EV} eV")
        bridge_err[nb] = _float(entry.get("error"), f"{where}.error", allow_none=True)
        bridge_src[nb] = str(entry.get("source", ""))
    if np.isnan(bridge).any():
        missing = [BRIDGE_NAMES[n] for n in range(3) if math.isnan(bridge[n])]
        raise CatalogError(f"{origin}: energy_model.bridge_eV lacks bridge(s) {missing}")

    # classes
    e_kra = np.full(N_CLASSES, np.nan)
    e_err = np.full(N_CLASSES, np.nan)
    nu = np.full(N_CLASSES, np.nan)
    nu_err = np.full(N_CLASSES, np.nan)
    src = [""] * N_CLASSES
    entries = _req(data, "classes", origin)
    if not isinstance(entries, list):
        raise CatalogError(f"{origin}: 'classes' must be a list")
    for n, entry in enumerate(entries):
        where = f"{origin}: classes[{n}]"
        cid = _req(entry, "id", where)
        if isinstance(cid, bool) or not isinstance(cid, int) or not 0 <= cid < N_CLASSES:
            raise CatalogError(f"{where}: id {cid!r} is not a class of {DESCRIPTOR_NAME!r} (0..{N_CLASSES - 1})")
        expect = decode_class(cid)
        for key in ("defect", "mover", "pair_nI", "shell_nI"):
            if key in entry and entry[key] != expect[key]:
                if key == "mover" and entry[key] not in HALIDES:
                    raise CatalogError(f"{where}: unknown species {entry[key]!r}; valid species are {list(HALIDES)}")
                raise CatalogError(f"{where}: field {key!r} = {entry[key]!r} contradicts class id {cid} ({class_label(cid)})")
        if not math.isnan(e_kra[cid]):
            raise CatalogError(f"{where}: class {cid} ({class_label(cid)}) listed twice")
        e = _float(_req(entry, "E_KRA_eV", where), f"{where}.E_KRA_eV")
        if e < 0:
            raise CatalogError(f"{where}: negative barrier E_KRA_eV = {e} for class {class_label(cid)}")
        p = _float(_req(entry, "prefactor_Hz", where), f"{where}.prefactor_Hz")
        if not 0 < p <= MAX_PREFACTOR_HZ:
            raise CatalogError(f"{where}: prefactor_Hz must lie in (0, {MAX_PREFACTOR_HZ:g}] Hz, got {p} for class "
                               f"{class_label(cid)}")
        if e > MAX_ENERGY_EV:
            raise CatalogError(f"{where}: E_KRA_eV = {e} is beyond {MAX_ENERGY_EV} eV for class {class_label(cid)}")
        e_kra[cid] = e
        nu[cid] = p
        e_err[cid] = _float(entry.get("E_KRA_err_eV"), f"{where}.E_KRA_err_eV", allow_none=True)
        nu_err[cid] = _float(entry.get("prefactor_err_Hz"), f"{where}.prefactor_err_Hz", allow_none=True)
        src[cid] = str(entry.get("source", ""))
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise CatalogError(f"{origin}: field 'name' must be a non-empty string")
    model, rot = _parse_rotations(data, ver, origin)
    ce = None
    if "cluster_expansion" in data:
        if ver < 3:
            raise CatalogError(f"{origin}: field 'cluster_expansion' needs schema_version 3")
        try:
            ce = ClusterExpansion.from_dict(data["cluster_expansion"], "cluster_expansion")
        except ClusterExpansionError as exc:
            raise CatalogError(f"{origin}: {exc}") from None
    return RateCatalog(
        name=name,
        E_KRA_eV=e_kra,
        E_KRA_err_eV=e_err,
        prefactor_Hz=nu,
        prefactor_err_Hz=nu_err,
        class_source=src,
        pair_eV=pair,
        pair_err_eV=pair_err,
        pair_source=pair_src,
        bridge_eV=bridge,
        bridge_err_eV=bridge_err,
        bridge_source=bridge_src,
        lattice_constant_A={k: lat[k] for k in lat},
        temperature_range_K=(lo, hi),
        description=str(data.get("description", "")),
        sources=dict(data.get("sources", {})),
        assumptions=list(data.get("assumptions", [])),
        provenance=dict(data.get("provenance", {})),
        interstitial_model=model,
        cluster_expansion=ce,
        **rot,
    )


def _parse_rotations(data: dict, ver: int, origin: str) -> tuple[str, dict]:
    """Interstitial model and rotation arrays of a catalog document."""
    rot = {"rotation_E_eV": _nan6(), "rotation_E_err_eV": _nan6(), "rotation_prefactor_Hz": _nan6(),
           "rotation_prefactor_err_Hz": _nan6(), "rotation_source": [""] * N_ROTATION_CLASSES}
    if ver == 1:
        for key in ("interstitial_model", "rotations"):
            if key in data:
                raise CatalogError(f"{origin}: field {key!r} needs schema_version 2")
        return "orientation-free", rot
    model = _req(data, "interstitial_model", origin)
    if model not in INTERSTITIAL_MODELS:
        raise CatalogError(f"{origin}: interstitial_model {model!r} unknown; valid: {list(INTERSTITIAL_MODELS)}")
    entries = data.get("rotations", [])
    if model == "orientation-free" and entries:
        raise CatalogError(f"{origin}: 'rotations' given for the orientation-free interstitial model")
    for n, entry in enumerate(entries):
        where = f"{origin}: rotations[{n}]"
        kind = _req(entry, "kind", where)
        if kind not in ROTATION_KINDS:
            raise CatalogError(f"{where}: kind {kind!r} unknown; valid: {list(ROTATION_KINDS)}")
        try:
            nb = bridge_code(_req(entry, "bridge", where))
        except ValueError as exc:
            raise CatalogError(f"{where}: {exc}") from None
        i = ROTATION_KINDS.index(kind) * 3 + nb
        if "id" in entry and entry["id"] != rotation_class(ROTATION_KINDS.index(kind), nb):
            raise CatalogError(f"{where}: id {entry['id']!r} contradicts {kind} {BRIDGE_NAMES[nb]} "
                               f"({rotation_class(ROTATION_KINDS.index(kind), nb)})")
        if not math.isnan(rot["rotation_E_eV"][i]):
            raise CatalogError(f"{where}: rotation {kind} {BRIDGE_NAMES[nb]} listed twice")
        e = _float(_req(entry, "E_eV", where), f"{where}.E_eV")
        if not 0 <= e <= MAX_ENERGY_EV:
            raise CatalogError(f"{where}: E_eV = {e} must lie in [0, {MAX_ENERGY_EV}] eV")
        p = _float(_req(entry, "prefactor_Hz", where), f"{where}.prefactor_Hz")
        if not 0 < p <= MAX_PREFACTOR_HZ:
            raise CatalogError(f"{where}: prefactor_Hz must lie in (0, {MAX_PREFACTOR_HZ:g}] Hz, got {p}")
        rot["rotation_E_eV"][i] = e
        rot["rotation_prefactor_Hz"][i] = p
        rot["rotation_E_err_eV"][i] = _float(entry.get("E_err_eV"), f"{where}.E_err_eV", allow_none=True)
        rot["rotation_prefactor_err_Hz"][i] = _float(entry.get("prefactor_err_Hz"), f"{where}.prefactor_err_Hz",
                                                     allow_none=True)
        rot["rotation_source"][i] = str(entry.get("source", ""))
    return model, rot


__all__ = [
    "CatalogError",
    "DEFAULT_CATALOG",
    "EMBEDDED_CATALOGS",
    "FORMAT_NAME",
    "MissingRateError",
    "RateCatalog",
    "SCHEMA_VERSION",
    "SUPPORTED_VERSIONS",
    "event_label",
    "load_catalog",
]
