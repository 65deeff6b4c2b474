"""Barriers and the energy model from NEB records, and a rate catalog built from them.

Input: the JSON record files of ``kmc rates neb`` (:mod:`md_reference.neb_cli`,
schema ``halide-kmc/neb-records`` v1), one record per hop with its environment
class (:mod:`lattice.environment`), forward/backward barriers and endpoint
energies. Two quantities of each hop are used:

* the kinetically-resolved barrier ``E_KRA = E_fwd - dE/2 = (E_fwd + E_bwd)/2``,
* the endpoint energy difference ``dE = E(final) - E(initial)``.

Records of bands that did not converge, of endpoints that did not relax, or
with an image below an endpoint (no defined barrier) are skipped and counted
(:class:`NEBRecordSet`); malformed or self-contradictory ones raise ``ValueError``.

Barriers
--------
Per *family* of hop classes -- ``(vacancy, mover)`` or ``(interstitial, mover,
pair_nI)`` -- E_KRA is modelled as linear in the shell descriptor,

.. math::  E_{KRA}(n_I) = a_f + b_f\\, n_I,

fitted by weighted least squares (weights ``1/sigma_i^2``; ``sigma_i = 1``
unless a record carries ``kra_err_eV``). Modes (:data:`SLOPE_MODES`):
``"per-family"`` (own slope where the family has at least ``min_records_linear``
records at two or more ``shell_nI`` values, else a constant), ``"pooled"`` (one
slope per defect kind shared by its families, one intercept per family) and
``"constant"``. Parameter covariance ``s^2 (X^T W X)^{-1}``: with relative
weights (``absolute_sigma=False``, as in :func:`scipy.optimize.curve_fit`)
``s^2`` is the reduced chi-square pooled over all families of the same defect
kind (vacancy and kick-out barriers scatter differently; families are too
small for their own variance); with no residual degree of freedom in a kind,
``s = prior_sigma_eV`` and the fit says so.

Energy model
------------
``dE`` of the lattice Hamiltonian is linear in the pair energies ``J`` and the
bridge energies: ``dE_i = X_i . theta`` where column ``p`` of ``X`` is the
rate law's own :func:`rates.ratelaw.delta_energy_vacancy` /
:func:`rates.ratelaw.delta_energy_kickout` evaluated with parameter ``p`` set
to 1 and all others to 0, on the record's pre-hop state counts (so the fit
uses exactly the KMC's Hamiltonian). Those counts need the occupancy of the
cell, which records do not store: it is rebuilt with
:func:`lattice.build_configuration` from the file's ``request`` (structure,
shape, species, x_I, structure_seed, ...) or, for pure / heterojunction /
nanodomain cells, from the record's ``provenance.configuration``; every record
is checked against it (its class and species must come out again). Records
whose cell cannot be rebuilt enter the E_KRA fit only; without any, the
energy model is the base catalog's and the fit says so.

Many parameters are not separable with single-defect data (e.g. with one
vacancy, only ``J[m,I] - J[m,Br] - J[V,I] + J[V,Br]`` per mover ``m`` enters
``dE``). Only the parameters of ``energy_parameters`` are free (default
:data:`DEFAULT_ENERGY_PARAMETERS`: each with a reference partner kept at the
base value), taken in that order and kept only if their column raises the rank
of ``X`` (so a parameter without data, or aliased with an earlier one, keeps the
base value and is listed with the reason; so does one that enters the dE of
fewer than ``min_records_per_parameter`` records). The free ones are fitted to
``dE - X theta_base`` by ordinary least squares, covariance
``s^2 (X^T X)^{-1}`` with ``s^2 = RSS / (n - p)``. Hops in a single-species
environment (one halide on every site of ``N(A) | N(B)`` and in every hop
atom, e.g. all hops in a pure cell) have ``dE = 0`` by symmetry in the model
and in the NEB (mirror endpoints) and are left out; every other record counts,
also one whose dE the model cannot vary (it measures the model's error).

Cross-validation
----------------
Leave-one-out (default) or seeded k-fold over the records: every fold is
refitted with the same rules and predicts its held-out records; the RMSE of
E_KRA per family (and pooled) and of dE (per family and pooled, records of
mixed environments only) are reported. A family with one record has no CV error.

Catalog
-------
:func:`build_catalog_from_neb` writes a :class:`rates.catalog.RateCatalog`:
every class of a fitted family gets the family's E_KRA at its ``shell_nI``,
``class_source`` ``"neb-fit"`` inside the range of fitted ``shell_nI`` values and
``"neb-fit-extrapolated"`` outside it (``extrapolate=False`` keeps the base
values there); other classes keep the base values (``"fallback:<source>"``).
NEB has no prefactor: it is one value given by the caller, the base catalog's
per-class value, or the mean of an MD-fitted catalog's
(:func:`prefactor_from_md_catalog`). :func:`overlay_md_fit` puts MD-fitted
classes over a NEB catalog.
"""

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import json
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lattice.environment import (
    N_CLASSES,
    N_SHELL_VALUES,
    class_label,
    decode_class,
    hop_counts,
    interstitial_class,
    neighbour_site,
    site_coords,
    vacancy_class,
)
from lattice.species import (
    BR,
    BRIDGE,
    BRIDGE_NAMES,
    DEFECT_KINDS,
    HALIDES,
    N_STATES,
    STATE_NAMES,
    VACANCY,
    I,
)
from rates.catalog import RateCatalog, load_catalog
from rates.fit import _package_version
from rates.ratelaw import delta_energy_kickout, delta_energy_vacancy

log = logging.getLogger(__name__)

RECORDS_SCHEMA = "halide-kmc/neb-records"
RECORD_SCHEMA = "halide-kmc/neb-record"
SCHEMA_VERSION = 1

#: E_KRA models -> description (the keys are the valid ``slope_mode`` values).
SLOPE_MODES = {
    "per-family": "E_KRA = a + b shell_nI per family (a constant where a family has too few records or one shell_nI)",
    "pooled": "one slope per defect kind shared by its families, one intercept per family",
    "constant": "one E_KRA per family, independent of shell_nI",
}

#: The energy-model parameters, in the order of the design matrix: the 10 distinct pair
#: energies ``pair:<a>-<b>`` (states in :data:`lattice.species.STATE_NAMES` order) and the
#: three bridge energies ``bridge:<II|IBr|BrBr>``.
ENERGY_PARAMETERS = tuple(
    [f"pair:{STATE_NAMES[a]}-{STATE_NAMES[b]}" for a in range(N_STATES) for b in range(a, N_STATES)]
    + [f"bridge:{name}" for name in BRIDGE_NAMES]
)
#: Free by default; each has a reference partner kept at the base value (V-Br for I-V,
#: I-I/Br-Br for I-Br, Br-B for I-B, BrBr for the bridges), which fixes the gauge of what
#: single-defect hops can determine.
DEFAULT_ENERGY_PARAMETERS = ("pair:I-V", "pair:I-Br", "pair:I-B", "bridge:II", "bridge:IBr")
#: Class sources written by :func:`build_catalog_from_neb`.
SOURCE_FIT = "neb-fit"
SOURCE_EXTRAPOLATED = "neb-fit-extrapolated"
SOURCE_ENERGY = "neb-fit-dE"
#: Tolerance (eV) of an image below an endpoint when a record does not state its own (as md_reference.neb).
DEFAULT_REFINE_TOLERANCE_EV = 0.005
#: Fewest records whose dE depends on a parameter for that parameter to be fitted.
MIN_RECORDS_PER_PARAMETER = 5
#: Default noise level (eV) when a fit has no residual degree of freedom.
PRIOR_SIGMA_EV = 0.05
_RANK_RTOL = 1e-9
_HALIDE_CODES = (I, BR)
_CONSISTENCY_TOL_EV = 1e-6


# --------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------
@dataclass
class NEBRecord:
    """One converged NEB hop, reduced to what the fits use.

    Attributes
    ----------
    source : str
        File (or ``"<dict>"``) and record index, e.g. ``"recs.json[3]"``.
    defect : {"vacancy", "interstitial"}
    mover, other, target : int
        Species codes; ``other`` (remaining atom) and ``target`` are -1 for vacancies.
    env_class : int
        Hop class (:mod:`lattice.environment`).
    kra_eV : float
        ``barrier_forward - dE/2``.
    delta_E_eV : float
        ``E(final) - E(initial)``.
    sigma_eV : float
        Uncertainty of ``kra_eV`` (a relative weight unless ``absolute_sigma``).
    cA, cB : (4,) int64 or None
        Pre-hop state counts over ``N(A) - {B}`` and ``N(B) - {A}``
        (:func:`lattice.environment.hop_counts`); None when the cell could not be rebuilt.
    """

    source: str
    defect: str
    mover: int
    other: int
    target: int
    env_class: int
    kra_eV: float
    delta_E_eV: float
    sigma_eV: float = 1.0
    cA: np.ndarray | None = None
    cB: np.ndarray | None = None
    _design_row: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def shell_nI(self) -> int:
        return int(decode_class(self.env_class)["shell_nI"])

    @property
    def pair_nI(self) -> int | None:
        return decode_class(self.env_class)["pair_nI"]

    @property
    def family(self) -> str:
        return family_of_class(self.env_class)

    @property
    def has_counts(self) -> bool:
        return self.cA is not None


@dataclass
class NEBRecordSet:
    """Records loaded from one or more files, with what was skipped.

    Attributes
    ----------
    records : list of NEBRecord
    skipped : dict
        ``{"unconverged": n, "endpoints_unconverged": n, "image_below_endpoint": n, "failed": n, "pending": n}``:
        bands that did not converge, endpoints that did not relax, bands with an image more
        than the record's ``settings.refine_tolerance_eV`` (default 5 meV) below an endpoint (the
        endpoint is not the minimum next to the saddle, so the barrier is not defined; the NEB's own
        criterion for refining endpoints), failed hops and hops not yet done.
    sources : list of dict
        Per file: ``file``, ``sha256``, ``n_records``, ``n_used``, ``configuration``
        (how the cell was rebuilt, or why not), ``potential``.
    notes : list of str
    """

    records: list
    skipped: dict = field(default_factory=lambda: {"unconverged": 0, "endpoints_unconverged": 0,
                                                   "image_below_endpoint": 0, "failed": 0, "pending": 0})
    sources: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    def __add__(self, other: NEBRecordSet) -> NEBRecordSet:
        return NEBRecordSet(self.records + other.records,
                            {k: self.skipped.get(k, 0) + other.skipped.get(k, 0)
                             for k in set(self.skipped) | set(other.skipped)},
                            self.sources + other.sources, self.notes + other.notes)


def family_of_class(cls: int) -> str:
    """Family label of a class: ``"V:I"``, ``"V:Br"`` or ``"Xi:<mover>:pI=<pair_nI>"``."""
    d = decode_class(cls)
    if d["defect"] == "vacancy":
        return f"V:{d['mover']}"
    return f"Xi:{d['mover']}:pI={d['pair_nI']}"


def _family_fields(label: str) -> dict:
    parts = label.split(":")
    if parts[0] == "V":
        return {"defect": "vacancy", "mover": parts[1], "pair_nI": None}
    return {"defect": "interstitial", "mover": parts[1], "pair_nI": int(parts[2].split("=")[1])}


def _family_classes(label: str) -> list[int]:
    f = _family_fields(label)
    m = HALIDES.index(f["mover"])
    if f["defect"] == "vacancy":
        return [int(vacancy_class(m, n)) for n in range(N_SHELL_VALUES)]
    return [int(interstitial_class(m, f["pair_nI"], n)) for n in range(N_SHELL_VALUES)]


def _number(rec: dict, key: str, where: str) -> float:
    if key not in rec:
        raise ValueError(f"{where}: missing field {key!r}")
    v = rec[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{where}: field {key!r} must be a number, got {v!r}")
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"{where}: field {key!r} must be finite, got {v}")
    return v


def _int(rec: dict, key: str, where: str, lo: int, hi: int) -> int:
    v = rec.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ValueError(f"{where}: field {key!r} must be an integer in {lo}..{hi}, got {v!r}")
    return v


def _species(rec: dict, key: str, where: str) -> int:
    v = rec.get(key)
    if v not in HALIDES:
        raise ValueError(f"{where}: field {key!r} must be one of {list(HALIDES)}, got {v!r}")
    return HALIDES.index(v)


def _configuration_from(description: dict | None, request: dict | None):
    """Rebuild the I/Br occupation of a records file; returns (Configuration or None, how/why)."""
    from lattice import HalideSublattice, build_configuration

    desc = description if isinstance(description, dict) else {}
    req = request if isinstance(request, dict) else {}
    kind = req.get("structure", desc.get("kind"))
    shape = req.get("shape", desc.get("shape"))
    if kind is None or shape is None:
        return None, "no structure kind/shape in the file"
    try:
        lat = HalideSublattice(tuple(int(v) for v in shape))
        if kind == "pure":
            species = req.get("species", desc.get("species"))
            config = build_configuration(lat, "pure", species=species)
        elif kind == "random":
            if "structure_seed" not in req or req.get("x_I") is None:
                return None, "random mix without x_I and structure_seed in 'request' (the seed is not in the record)"
            config = build_configuration(lat, "random", x_I=float(req["x_I"]), seed=int(req["structure_seed"]))
        elif kind == "heterojunction":
            src = req if req.get("thickness_I") is not None else desc
            config = build_configuration(lat, "heterojunction", thickness_I=src["thickness_I"],
                                         thickness_Br=src["thickness_Br"], interface=src["interface"],
                                         axis=src.get("axis", desc.get("axis", 0)))
        elif kind == "nanodomain":
            config = build_configuration(lat, "nanodomain", domain_species=desc["domain_species"],
                                         domain_size=desc["domain_size"], origin=tuple(desc["origin"]),
                                         axis=desc.get("axis", 0))
        else:
            return None, f"unknown structure kind {kind!r}"
    except (KeyError, TypeError, ValueError) as exc:
        return None, f"cannot rebuild the {kind!r} cell: {exc}"
    rebuilt = json.loads(json.dumps(config.describe()))
    differ = sorted(k for k in set(rebuilt) & set(desc) if rebuilt[k] != desc[k])
    if differ:
        return None, ("rebuilt cell differs from the file's configuration in "
                      + ", ".join(f"{k} ({rebuilt[k]!r} vs {desc[k]!r})" for k in differ))
    how = f"rebuilt {kind} {tuple(lat.shape)}" + (f" x_I={config.x_I:g}" if kind == "random" else "")
    if kind == "random":
        how += f" seed={req['structure_seed']}"
    return config, how


def _hop_counts_of(config, rec: NEBRecord, site_a: int, slot: int, where: str):
    """Pre-hop counts (cA, cB) of a record on the rebuilt cell; checks class and species."""
    lat = config.lattice
    dims = np.asarray(lat.dims, dtype=np.int64)
    if not 0 <= site_a < lat.n_sites:
        raise ValueError(f"{where}: site_a {site_a} outside the rebuilt {tuple(lat.shape)} cell")
    occ = np.asarray(config.occ, dtype=np.int8).copy()
    xyz = np.zeros(3, dtype=np.int64)
    s = site_coords(site_a, dims, xyz)
    site_b = int(neighbour_site(xyz[0], xyz[1], xyz[2], s, slot, dims))
    on_b = int(occ[site_b])
    occ[site_a] = VACANCY if rec.defect == "vacancy" else BRIDGE
    cA = np.zeros(N_STATES, dtype=np.int64)
    cB = np.zeros(N_STATES, dtype=np.int64)
    shell = int(hop_counts(occ, dims, xyz[0], xyz[1], xyz[2], s, slot, cA, cB))
    if rec.defect == "vacancy":
        if on_b != rec.mover:
            raise ValueError(f"{where}: record says mover {HALIDES[rec.mover]}, the rebuilt cell has "
                             f"{HALIDES[on_b]} on site {site_b}: the file's configuration does not match")
        cls = int(vacancy_class(rec.mover, shell))
    else:
        if on_b != rec.target:
            raise ValueError(f"{where}: record says target {HALIDES[rec.target]}, the rebuilt cell has "
                             f"{HALIDES[on_b]} on site {site_b}: the file's configuration does not match")
        cls = int(interstitial_class(rec.mover, int(rec.other == I) + int(rec.target == I), shell))
    if cls != rec.env_class:
        raise ValueError(f"{where}: env_class {rec.env_class} ({class_label(rec.env_class)}) but the rebuilt cell "
                         f"gives {cls} ({class_label(cls)}): the file's configuration does not match")
    return cA, cB, site_b


def parse_record(rec, where: str) -> tuple[NEBRecord | None, str | None, dict]:
    """Validate one record dict.

    Returns
    -------
    (record, skip_reason, hop)
        ``record`` is None when the record is skipped (``skip_reason`` one of
        the keys of :attr:`NEBRecordSet.skipped`); ``hop`` holds ``site_a`` and
        ``slot`` when present.

    Raises
    ------
    ValueError
        A malformed or self-contradictory record; the message names the field.
    """
    if rec is None:
        return None, "pending", {}
    if not isinstance(rec, dict):
        raise ValueError(f"{where}: a record must be a JSON object, got {type(rec).__name__}")
    if "error" in rec and "barrier_forward_eV" not in rec:
        return None, "failed", {}
    schema = rec.get("schema", RECORD_SCHEMA)
    if schema != RECORD_SCHEMA:
        raise ValueError(f"{where}: field 'schema' is {schema!r}, expected {RECORD_SCHEMA!r}")
    ver = rec.get("schema_version", SCHEMA_VERSION)
    if ver != SCHEMA_VERSION:
        raise ValueError(f"{where}: schema_version {ver!r} is not supported (this package reads {SCHEMA_VERSION})")
    units = rec.get("units", {"energy": "eV"})
    if not isinstance(units, dict) or units.get("energy", "eV") != "eV":
        raise ValueError(f"{where}: field 'units.energy' must be 'eV', got {units!r}")
    defect = rec.get("defect")
    if defect not in DEFECT_KINDS:
        raise ValueError(f"{where}: field 'defect' must be one of {list(DEFECT_KINDS)}, got {defect!r}")
    cls = _int(rec, "env_class", where, 0, N_CLASSES - 1)
    d = decode_class(cls)
    if "env_label" in rec and rec["env_label"] != class_label(cls):
        raise ValueError(f"{where}: field 'env_label' {rec['env_label']!r} contradicts env_class {cls} "
                         f"({class_label(cls)}): was the file written with another environment descriptor?")
    if d["defect"] != defect:
        raise ValueError(f"{where}: field 'defect' {defect!r} contradicts env_class {cls} ({class_label(cls)})")
    mover = _species(rec, "mover", where)
    if HALIDES[mover] != d["mover"]:
        raise ValueError(f"{where}: field 'mover' {rec['mover']!r} contradicts env_class {cls} ({class_label(cls)})")
    other = target = -1
    if defect == "interstitial":
        other = _species(rec, "other", where)
        target = _species(rec, "target", where)
        if int(other == I) + int(target == I) != d["pair_nI"]:
            raise ValueError(f"{where}: fields 'other' {rec['other']!r} and 'target' {rec['target']!r} contradict "
                             f"pair_nI = {d['pair_nI']} of env_class {cls} ({class_label(cls)})")
    conv = rec.get("converged")
    if not isinstance(conv, bool):
        raise ValueError(f"{where}: field 'converged' must be true or false, got {conv!r}")
    fwd = _number(rec, "barrier_forward_eV", where)
    bwd = _number(rec, "barrier_backward_eV", where)
    e_i = _number(rec, "energy_initial_eV", where)
    e_f = _number(rec, "energy_final_eV", where)
    de = e_f - e_i
    tol = _CONSISTENCY_TOL_EV * max(1.0, abs(e_i))
    if abs((fwd - bwd) - de) > tol:
        raise ValueError(f"{where}: barrier_forward_eV - barrier_backward_eV = {fwd - bwd:.9g} eV contradicts "
                         f"energy_final_eV - energy_initial_eV = {de:.9g} eV")
    if "delta_E_eV" in rec and abs(_number(rec, "delta_E_eV", where) - de) > tol:
        raise ValueError(f"{where}: field 'delta_E_eV' {rec['delta_E_eV']} contradicts the endpoint energies "
                         f"({de:.9g} eV)")
    kra = fwd - 0.5 * de
    if "kra_barrier_eV" in rec and abs(_number(rec, "kra_barrier_eV", where) - kra) > tol:
        raise ValueError(f"{where}: field 'kra_barrier_eV' {rec['kra_barrier_eV']} contradicts "
                         f"barrier_forward_eV - delta_E/2 = {kra:.9g} eV")
    hop = {}
    if "site_a" in rec or "slot" in rec:
        hop = {"site_a": _int(rec, "site_a", where, 0, 2**62), "slot": _int(rec, "slot", where, 0, 7)}
        if rec.get("site_b") is not None:
            hop["site_b"] = _int(rec, "site_b", where, 0, 2**62)
    if not conv:
        return None, "unconverged", hop
    if rec.get("endpoints_converged", True) is False:
        return None, "endpoints_unconverged", hop
    images = rec.get("image_energies_eV")
    if images is not None:
        if not isinstance(images, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                   and math.isfinite(v) for v in images):
            raise ValueError(f"{where}: field 'image_energies_eV' must be a list of finite numbers")
        settings = rec.get("settings") if isinstance(rec.get("settings"), dict) else {}
        refine_tol = settings.get("refine_tolerance_eV", DEFAULT_REFINE_TOLERANCE_EV)
        if images and min(images) < min(0.0, de) - float(refine_tol):
            return None, "image_below_endpoint", hop
    if min(fwd, bwd) < -tol:
        raise ValueError(f"{where}: a converged climbing-image band has barriers >= 0, got forward {fwd:.6g} "
                         f"and backward {bwd:.6g} eV")
    sigma = 1.0
    if "kra_err_eV" in rec and rec["kra_err_eV"] is not None:
        sigma = _number(rec, "kra_err_eV", where)
        if sigma <= 0:
            raise ValueError(f"{where}: field 'kra_err_eV' must be > 0, got {sigma}")
    return NEBRecord(source=where, defect=defect, mover=mover, other=other, target=target, env_class=cls,
                     kra_eV=kra, delta_E_eV=de, sigma_eV=sigma), None, hop


def load_neb_records(path_or_data, origin: str | None = None) -> NEBRecordSet:
    """Read and validate one NEB record file (or its parsed content).

    Parameters
    ----------
    path_or_data : str, Path, dict or list
        A file written by ``kmc rates neb`` (schema ``halide-kmc/neb-records``
        v1), a list of record dicts, or one record (schema ``halide-kmc/neb-record``).
    origin : str, optional
        Name used in messages for parsed content.

    Returns
    -------
    NEBRecordSet
        Converged records; unconverged, failed and pending ones are counted in
        ``skipped``. Records get their pre-hop state counts when the cell can be
        rebuilt (see the module docstring); ``sources[0]["configuration"]`` says how,
        or why not.

    Raises
    ------
    ValueError
        Missing file, invalid JSON, wrong schema, or a malformed record (the
        message names the file, the record index and the field).
    """
    if isinstance(path_or_data, (dict, list)):
        data = path_or_data
        origin = origin or "<dict>"
        sha = hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    else:
        p = Path(path_or_data)
        if not p.is_file():
            raise ValueError(f"NEB record file {str(p)!r} does not exist")
        raw = p.read_bytes()
        origin = origin or str(p)
        sha = hashlib.sha256(raw).hexdigest()
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{origin}: not valid JSON ({exc})") from None
    header: dict = {}
    if isinstance(data, list):
        raw_records = data
    elif isinstance(data, dict) and data.get("schema") == RECORD_SCHEMA:
        raw_records = [data]
    elif isinstance(data, dict):
        schema = data.get("schema")
        if schema != RECORDS_SCHEMA:
            raise ValueError(f"{origin}: field 'schema' is {schema!r}, expected {RECORDS_SCHEMA!r} "
                             f"(or a list of {RECORD_SCHEMA!r} records)")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"{origin}: schema_version {data.get('schema_version')!r} is not supported "
                             f"(this package reads {SCHEMA_VERSION})")
        units = data.get("units", {"energy": "eV"})
        if not isinstance(units, dict) or units.get("energy") != "eV":
            raise ValueError(f"{origin}: field 'units.energy' must be 'eV', got {units!r}")
        raw_records = data.get("records")
        if not isinstance(raw_records, list):
            raise ValueError(f"{origin}: field 'records' must be a list")
        header = data
    else:
        raise ValueError(f"{origin}: expected a JSON object or list, got {type(data).__name__}")
    out = NEBRecordSet(records=[])
    parsed = []
    for i, rec in enumerate(raw_records):
        r, skip, hop = parse_record(rec, f"{origin}: records[{i}]")
        if r is None:
            out.skipped[skip] += 1
        else:
            parsed.append((r, hop, rec))
    # cell: the file header, else the record's own provenance
    configs: dict = {}
    how_all = set()
    for r, hop, rec in parsed:
        desc = header.get("configuration")
        rec_desc = rec.get("provenance", {}).get("configuration") if isinstance(rec.get("provenance"), dict) else None
        if desc is None:
            desc = rec_desc
        elif isinstance(rec_desc, dict) and isinstance(desc, dict) and \
                (rec_desc.get("kind"), rec_desc.get("shape")) != (desc.get("kind"), desc.get("shape")):
            raise ValueError(f"{r.source}: provenance.configuration {rec_desc.get('kind')!r} "
                             f"{rec_desc.get('shape')} contradicts the file's configuration "
                             f"{desc.get('kind')!r} {desc.get('shape')}")
        key = json.dumps([desc, header.get("request")], sort_keys=True, default=str)
        if key not in configs:
            configs[key] = _configuration_from(desc, header.get("request"))
        config, how = configs[key]
        if config is not None and hop:
            r.cA, r.cB, site_b = _hop_counts_of(config, r, hop["site_a"], hop["slot"], r.source)
            if "site_b" in hop and hop["site_b"] != site_b:
                raise ValueError(f"{r.source}: field 'site_b' {hop['site_b']} is not neighbour slot {hop['slot']} "
                                 f"of site_a {hop['site_a']} (that is {site_b}) in the rebuilt cell")
            how_all.add(how)
        else:
            how_all.add(how if config is None else "record has no site_a/slot")
    n_counts = sum(r.has_counts for r, _, _ in parsed)
    if parsed and n_counts < len(parsed):
        note = (f"{origin}: {len(parsed) - n_counts} of {len(parsed)} records without a rebuilt cell "
                f"({'; '.join(sorted(how_all))}): they enter the E_KRA fit only, not the energy-model fit")
        out.notes.append(note)
        log.warning(note)
    out.records = [r for r, _, _ in parsed]
    n_skip = sum(out.skipped.values())
    if n_skip:
        log.info("%s: skipped %s", origin, ", ".join(f"{v} {k}" for k, v in out.skipped.items() if v))
    out.sources.append({"file": origin, "sha256": sha, "n_records": len(raw_records), "n_used": len(out.records),
                        "skipped": dict(out.skipped), "configuration": "; ".join(sorted(how_all)),
                        "potential": header.get("potential", {}).get("sha256") if isinstance(
                            header.get("potential"), dict) else None})
    return out


def load_neb_record_files(paths) -> NEBRecordSet:
    """:func:`load_neb_records` of several files, combined."""
    paths = [paths] if isinstance(paths, (str, Path, dict)) else list(paths)
    if not paths:
        raise ValueError("no NEB record files given")
    out = NEBRecordSet(records=[])
    for p in paths:
        out = out + load_neb_records(p)
    return out


# --------------------------------------------------------------------------
# E_KRA(shell_nI) per family
# --------------------------------------------------------------------------
@dataclass
class FamilyFit:
    """E_KRA model of one family: ``E(n) = intercept_eV + slope_eV * n`` (n = shell_nI).

    Attributes
    ----------
    label : str
        ``"V:I"``, ``"Xi:Br:pI=1"``, ...
    model : {"linear", "linear-pooled", "constant"}
    intercept_eV, slope_eV : float
        Value at shell_nI = 0 and change per shell iodide (0 for a constant).
    cov : (2, 2) float64
        Covariance of (intercept, slope), eV^2 (zeros in the slope row of a constant).
    n_records : int
    shell_values : list of int
        Distinct fitted shell_nI values (the range of validity is their min..max).
    sigma_eV : float
        Scale ``s`` of the covariance (see the module docstring).
    sigma_source : str
        ``"residuals"`` (pooled reduced chi-square), ``"absolute"`` (given errors) or ``"prior"``.
    rmse_eV : float
        Root-mean-square residual of the fit.
    cv_rmse_eV : float
        Cross-validated RMSE (NaN without held-out predictions); ``cv_n`` predictions.
    """

    label: str
    model: str
    intercept_eV: float
    slope_eV: float
    cov: np.ndarray
    n_records: int
    shell_values: list
    sigma_eV: float = math.nan
    sigma_source: str = ""
    rmse_eV: float = math.nan
    cv_rmse_eV: float = math.nan
    cv_n: int = 0

    @property
    def intercept_err_eV(self) -> float:
        return float(math.sqrt(max(self.cov[0, 0], 0.0)))

    @property
    def slope_err_eV(self) -> float:
        return float(math.sqrt(max(self.cov[1, 1], 0.0)))

    def predict(self, shell_nI) -> tuple[np.ndarray, np.ndarray]:
        """(value, standard error) of E_KRA at ``shell_nI`` (scalar or array), eV."""
        n = np.asarray(shell_nI, dtype=np.float64)
        v = self.intercept_eV + self.slope_eV * n
        var = self.cov[0, 0] + 2.0 * n * self.cov[0, 1] + n * n * self.cov[1, 1]
        return v, np.sqrt(np.maximum(var, 0.0))

    def in_range(self, shell_nI: int) -> bool:
        return min(self.shell_values) <= shell_nI <= max(self.shell_values)

    def to_dict(self) -> dict:
        return {"family": self.label, **_family_fields(self.label), "model": self.model,
                "intercept_eV": self.intercept_eV, "intercept_err_eV": self.intercept_err_eV,
                "slope_eV_per_I": self.slope_eV, "slope_err_eV_per_I": self.slope_err_eV,
                "cov_intercept_slope_eV2": float(self.cov[0, 1]),
                "n_records": self.n_records, "shell_nI_values": list(self.shell_values),
                "sigma_eV": _json(self.sigma_eV), "sigma_source": self.sigma_source,
                "rmse_eV": _json(self.rmse_eV), "cv_rmse_eV": _json(self.cv_rmse_eV), "cv_n": self.cv_n}


def _wls(X: np.ndarray, y: np.ndarray, w: np.ndarray):
    """Weighted least squares: (coef, unscaled covariance (X^T W X)^-1, weighted RSS)."""
    sw = np.sqrt(w)
    A = X * sw[:, None]
    coef, *_ = np.linalg.lstsq(A, y * sw, rcond=None)
    cov = np.linalg.pinv(A.T @ A)
    r = (y - X @ coef) * sw
    return coef, cov, float(r @ r)


def fit_kra(records, slope_mode: str = "per-family", min_records_linear: int = 3, absolute_sigma: bool = False,
            prior_sigma_eV: float = PRIOR_SIGMA_EV) -> dict[str, FamilyFit]:
    """E_KRA(shell_nI) per family by weighted least squares (see the module docstring).

    Parameters
    ----------
    records : sequence of NEBRecord
    slope_mode : {"per-family", "pooled", "constant"}
        See :data:`SLOPE_MODES`.
    min_records_linear : int
        ``"per-family"``: fewest records for a family's own slope (>= 3 leaves a
        residual degree of freedom).
    absolute_sigma : bool
        Treat the records' ``sigma_eV`` as absolute errors (no rescaling).
    prior_sigma_eV : float
        Noise level used where a defect kind has no residual degree of freedom.

    Returns
    -------
    dict
        ``family label -> FamilyFit``, families sorted by label.
    """
    if slope_mode not in SLOPE_MODES:
        raise ValueError(f"unknown slope_mode {slope_mode!r}; valid modes are {list(SLOPE_MODES)}")
    if int(min_records_linear) < 2:
        raise ValueError(f"min_records_linear must be >= 2, got {min_records_linear}")
    if not prior_sigma_eV > 0:
        raise ValueError(f"prior_sigma_eV must be > 0, got {prior_sigma_eV}")
    records = list(records)
    fams: dict[str, list] = {}
    for r in records:
        fams.setdefault(r.family, []).append(r)
    out: dict[str, FamilyFit] = {}
    for kind in DEFECT_KINDS:
        labels = sorted(lb for lb in fams if _family_fields(lb)["defect"] == kind)
        if not labels:
            continue
        raw = {}  # label -> (intercept, slope, unscaled cov, rss, dof, model)
        if slope_mode == "pooled":
            rows = [r for lb in labels for r in fams[lb]]
            n_vals = np.array([r.shell_nI for r in rows], dtype=np.float64)
            X = np.zeros((len(rows), len(labels) + 1))
            for i, r in enumerate(rows):
                X[i, labels.index(r.family)] = 1.0
            X[:, -1] = n_vals
            has_slope = any(len({r.shell_nI for r in fams[lb]}) >= 2 for lb in labels)
            if not has_slope:
                X = X[:, :-1]
            y = np.array([r.kra_eV for r in rows])
            w = np.array([1.0 / r.sigma_eV ** 2 for r in rows])
            coef, cu, rss = _wls(X, y, w)
            dof = len(rows) - X.shape[1]
            for j, lb in enumerate(labels):
                c2 = np.zeros((2, 2))
                c2[0, 0] = cu[j, j]
                b = 0.0
                if has_slope:
                    b = coef[-1]
                    c2[0, 1] = c2[1, 0] = cu[j, -1]
                    c2[1, 1] = cu[-1, -1]
                raw[lb] = (coef[j], b, c2, "linear-pooled" if has_slope else "constant")
            rss_kind, dof_kind = rss, dof
        else:
            rss_kind, dof_kind = 0.0, 0
            for lb in labels:
                rows = fams[lb]
                n_vals = np.array([r.shell_nI for r in rows], dtype=np.float64)
                linear = (slope_mode == "per-family" and len(rows) >= int(min_records_linear)
                          and np.unique(n_vals).size >= 2)
                X = np.column_stack([np.ones(len(rows)), n_vals]) if linear else np.ones((len(rows), 1))
                y = np.array([r.kra_eV for r in rows])
                w = np.array([1.0 / r.sigma_eV ** 2 for r in rows])
                coef, cu, rss = _wls(X, y, w)
                c2 = np.zeros((2, 2))
                c2[: cu.shape[0], : cu.shape[1]] = cu
                raw[lb] = (coef[0], coef[1] if linear else 0.0, c2, "linear" if linear else "constant")
                rss_kind += rss
                dof_kind += len(rows) - X.shape[1]
        if absolute_sigma:
            s2, src = 1.0, "absolute"
        elif dof_kind > 0:
            s2, src = rss_kind / dof_kind, "residuals"
        else:
            s2, src = prior_sigma_eV ** 2, "prior"
            log.warning("%s barriers: no residual degree of freedom (%d records in %d families); E_KRA errors use "
                        "prior_sigma_eV = %g eV", kind, sum(len(fams[lb]) for lb in labels), len(labels),
                        prior_sigma_eV)
        for lb in labels:
            a, b, c2, model = raw[lb]
            rows = fams[lb]
            res = np.array([r.kra_eV - (a + b * r.shell_nI) for r in rows])
            out[lb] = FamilyFit(label=lb, model=model, intercept_eV=float(a), slope_eV=float(b), cov=c2 * s2,
                                n_records=len(rows), shell_values=sorted({r.shell_nI for r in rows}),
                                sigma_eV=math.sqrt(s2), sigma_source=src,
                                rmse_eV=float(np.sqrt(np.mean(res ** 2))))
    return dict(sorted(out.items()))


# --------------------------------------------------------------------------
# Energy model from dE
# --------------------------------------------------------------------------
def energy_parameters_of(catalog: RateCatalog) -> np.ndarray:
    """(13,) float64: the catalog's energy model in the order of :data:`ENERGY_PARAMETERS`."""
    J = catalog.pair_eV
    return np.array([J[a, b] for a in range(N_STATES) for b in range(a, N_STATES)] + list(catalog.bridge_eV))


def _unpack(theta: np.ndarray):
    J = np.zeros((N_STATES, N_STATES))
    k = 0
    for a in range(N_STATES):
        for b in range(a, N_STATES):
            J[a, b] = J[b, a] = theta[k]
            k += 1
    return J, np.ascontiguousarray(theta[k:k + 3], dtype=np.float64)


def predict_delta_energy(rec: NEBRecord, theta: np.ndarray) -> float:
    """dE (eV) of a record's hop under energy parameters ``theta`` (rate-law functions)."""
    if not rec.has_counts:
        raise ValueError(f"{rec.source}: no pre-hop state counts (the cell was not rebuilt)")
    J, eb = _unpack(np.asarray(theta, dtype=np.float64))
    if rec.defect == "vacancy":
        return float(delta_energy_vacancy(rec.cA, rec.cB, rec.mover, J))
    return float(delta_energy_kickout(rec.cA, rec.cB, rec.mover, rec.other, rec.target, J, eb))


def design_matrix(records) -> np.ndarray:
    """(n_records, 13) float64: d dE / d parameter of each record.

    dE is linear and homogeneous in the parameters, so column ``p`` is dE with
    parameter ``p`` set to 1 and all others 0 (computed once per record).
    """
    eye = np.eye(len(ENERGY_PARAMETERS))
    rows = []
    for r in records:
        if r._design_row is None:
            r._design_row = np.array([predict_delta_energy(r, eye[p]) for p in range(eye.shape[0])])
        rows.append(r._design_row)
    return np.array(rows).reshape(len(rows), eye.shape[0])


@dataclass
class EnergyModelFit:
    """Least-squares fit of energy-model parameters to NEB endpoint energy differences.

    Attributes
    ----------
    theta_eV, theta_err_eV : (13,) float64
        All parameters (:data:`ENERGY_PARAMETERS`): fitted ones and the base
        values of the rest; errors NaN where not fitted (base errors are kept by the catalog).
    fitted : list of str
        Names of the fitted parameters.
    cov : (n_fitted, n_fitted) float64
    not_fitted : dict
        ``name -> reason`` for requested parameters that were not fitted.
    n_records : int
        Records used (mixed environments with a rebuilt cell).
    sigma_eV, sigma_source, dof, rmse_eV, rmse_base_eV :
        Residual scale, its origin, degrees of freedom, RMS residual of the fit
        and of the base catalog's energy model on the same records.
    status : str
        ``"fitted"`` or why nothing was fitted.
    cv_rmse_eV, cv_n, cv_by_family :
        Cross-validated RMSE of dE overall and ``{family: {"rmse_eV", "n"}}``.
    """

    theta_eV: np.ndarray
    theta_err_eV: np.ndarray
    fitted: list
    cov: np.ndarray
    not_fitted: dict
    n_records: int
    sigma_eV: float = math.nan
    sigma_source: str = ""
    dof: int = 0
    rmse_eV: float = math.nan
    rmse_base_eV: float = math.nan
    status: str = "fitted"
    cv_rmse_eV: float = math.nan
    cv_n: int = 0
    cv_by_family: dict = field(default_factory=dict)

    def value(self, name: str) -> tuple[float, float]:
        """(value, error) of parameter ``name`` (e.g. ``"pair:I-V"``), eV."""
        k = _param_index(name)
        return float(self.theta_eV[k]), float(self.theta_err_eV[k])

    def to_dict(self) -> dict:
        return {"status": self.status,
                "parameters": {n: {"value_eV": float(self.theta_eV[_param_index(n)]),
                                   "error_eV": _json(self.theta_err_eV[_param_index(n)])} for n in self.fitted},
                "correlation": _json_matrix(_corr(self.cov)), "not_fitted": dict(self.not_fitted),
                "n_records": self.n_records, "dof": self.dof, "sigma_eV": _json(self.sigma_eV),
                "sigma_source": self.sigma_source, "rmse_eV": _json(self.rmse_eV),
                "rmse_base_eV": _json(self.rmse_base_eV), "cv_rmse_eV": _json(self.cv_rmse_eV), "cv_n": self.cv_n,
                "cv_by_family": copy.deepcopy(self.cv_by_family)}


def _param_index(name: str) -> int:
    if name not in ENERGY_PARAMETERS:
        raise ValueError(f"unknown energy-model parameter {name!r}; valid names are {list(ENERGY_PARAMETERS)}")
    return ENERGY_PARAMETERS.index(name)


def _rank(A: np.ndarray) -> int:
    if A.size == 0:
        return 0
    s = np.linalg.svd(A, compute_uv=False)
    return int(np.count_nonzero(s > _RANK_RTOL * max(1.0, s[0]) * max(A.shape)))


def _mixed_environment(rec: NEBRecord) -> bool:
    """True unless every neighbour of A and B and every hop atom is the same halide (dE = 0 by symmetry)."""
    present = {t for t in _HALIDE_CODES if rec.cA[t] > 0 or rec.cB[t] > 0}
    present |= {s for s in (rec.mover, rec.other, rec.target) if s >= 0}
    return len(present) > 1 or bool(rec.cA[VACANCY] + rec.cB[VACANCY] + rec.cA[BRIDGE] + rec.cB[BRIDGE])


def fit_energy_model(records, base_catalog="default", parameters=DEFAULT_ENERGY_PARAMETERS,
                     prior_sigma_eV: float = PRIOR_SIGMA_EV,
                     min_records_per_parameter: int = MIN_RECORDS_PER_PARAMETER) -> EnergyModelFit:
    """Fit energy-model parameters to the records' dE (see the module docstring).

    Parameters
    ----------
    records : sequence of NEBRecord
        Records without pre-hop counts are ignored.
    base_catalog : RateCatalog, str or Path
        Values of every parameter not fitted.
    parameters : sequence of str
        Free parameters, in order of preference (names of :data:`ENERGY_PARAMETERS`).
    prior_sigma_eV : float
        Error scale when the fit has no residual degree of freedom.
    min_records_per_parameter : int
        A parameter is fitted only if the dE of at least this many records
        depends on it (fewer would be fixed by one or two hops, noise included).

    Returns
    -------
    EnergyModelFit
    """
    base = base_catalog if isinstance(base_catalog, RateCatalog) else load_catalog(base_catalog)
    idx = [_param_index(p) for p in parameters]
    if len(set(idx)) != len(idx):
        raise ValueError(f"energy parameters listed twice: {list(parameters)}")
    theta0 = energy_parameters_of(base)
    nan = np.full(theta0.size, np.nan)
    rows = [r for r in records if r.has_counts]
    X = design_matrix(rows) if rows else np.zeros((0, theta0.size))
    informative = np.array([_mixed_environment(r) for r in rows], dtype=bool)
    rows = [r for r, keep in zip(rows, informative) if keep]
    X = X[informative]
    if not rows:
        why = "no record with a rebuilt cell and a mixed environment (e.g. only pure cells)"
        return EnergyModelFit(theta0.copy(), nan, [], np.zeros((0, 0)), {p: why for p in parameters}, 0,
                              status=f"not fitted: {why}; energy model of base catalog {base.name!r}")
    y = np.array([r.delta_E_eV for r in rows]) - X @ theta0
    chosen: list[int] = []
    not_fitted = {}
    for p, k in zip(parameters, idx):
        n_dep = int(np.count_nonzero(X[:, k]))
        if n_dep == 0:
            not_fitted[p] = "does not enter dE of any record"
            continue
        if n_dep < int(min_records_per_parameter):
            not_fitted[p] = f"enters dE of {n_dep} record(s) only (< {int(min_records_per_parameter)})"
            continue
        if _rank(X[:, chosen + [k]]) <= len(chosen):
            aliased = ", ".join(ENERGY_PARAMETERS[j] for j in chosen)
            not_fitted[p] = f"not separable from {aliased} with these records"
            continue
        chosen.append(k)
    theta = theta0.copy()
    err = nan.copy()
    base_rmse = float(np.sqrt(np.mean(y ** 2)))
    if not chosen:
        return EnergyModelFit(theta, err, [], np.zeros((0, 0)), not_fitted, len(rows), rmse_base_eV=base_rmse,
                              status=f"not fitted: no free parameter enters dE; energy model of {base.name!r}")
    Xc = X[:, chosen]
    coef, cu, rss = _wls(Xc, y, np.ones(len(rows)))
    dof = len(rows) - len(chosen)
    if dof > 0:
        s2, src = rss / dof, "residuals"
    else:
        s2, src = prior_sigma_eV ** 2, "prior"
        log.warning("energy-model fit: %d parameters from %d records leaves no residual degree of freedom; errors "
                    "use prior_sigma_eV = %g eV", len(chosen), len(rows), prior_sigma_eV)
    cov = cu * s2
    theta[chosen] = theta0[chosen] + coef
    err[chosen] = np.sqrt(np.diag(cov))
    return EnergyModelFit(theta, err, [ENERGY_PARAMETERS[k] for k in chosen], cov, not_fitted, len(rows),
                          sigma_eV=math.sqrt(s2), sigma_source=src, dof=dof,
                          rmse_eV=math.sqrt(rss / len(rows)), rmse_base_eV=base_rmse)


# --------------------------------------------------------------------------
# Both fits with cross-validation
# --------------------------------------------------------------------------
@dataclass
class NEBFit:
    """E_KRA families, energy model and cross-validation of one record set."""

    families: dict
    energy: EnergyModelFit
    slope_mode: str
    cv: str
    record_set: NEBRecordSet
    cv_rmse_kra_eV: float = math.nan

    def summary(self) -> dict:
        """JSON-ready summary (stored as ``provenance["fit"]`` of the catalog)."""
        return {"slope_mode": self.slope_mode, "cross_validation": self.cv,
                "n_records": len(self.record_set.records), "skipped": dict(self.record_set.skipped),
                "notes": list(self.record_set.notes),
                "families": [f.to_dict() for f in self.families.values()],
                "cv_rmse_kra_eV": _json(self.cv_rmse_kra_eV),
                "energy_model": self.energy.to_dict()}


def _folds(n: int, cv_folds: int | None, seed: int) -> list[np.ndarray]:
    if cv_folds is None or int(cv_folds) >= n:
        return [np.array([i]) for i in range(n)]
    k = int(cv_folds)
    if k < 2:
        raise ValueError(f"cv_folds must be >= 2 or None (leave-one-out), got {cv_folds}")
    perm = np.random.default_rng(seed).permutation(n)
    return [np.sort(perm[j::k]) for j in range(k)]


def fit_neb(record_set: NEBRecordSet, base_catalog="default", slope_mode: str = "per-family",
            energy_parameters=DEFAULT_ENERGY_PARAMETERS, fit_energy: bool = True, min_records_linear: int = 3,
            absolute_sigma: bool = False, prior_sigma_eV: float = PRIOR_SIGMA_EV, cv_folds: int | None = None,
            cv_seed: int = 0, min_records_per_parameter: int = MIN_RECORDS_PER_PARAMETER) -> NEBFit:
    """Fit E_KRA families and the energy model, and cross-validate both.

    Parameters
    ----------
    record_set : NEBRecordSet
        From :func:`load_neb_records` / :func:`load_neb_record_files`.
    base_catalog : RateCatalog, str or Path
        Energy-model values of parameters that are not fitted.
    slope_mode, min_records_linear, absolute_sigma, prior_sigma_eV :
        See :func:`fit_kra`.
    energy_parameters, min_records_per_parameter :
        See :func:`fit_energy_model`.
    fit_energy : bool
        False: keep the base catalog's energy model.
    cv_folds : int or None
        None: leave-one-out; k: k folds drawn with ``default_rng(cv_seed)``.

    Returns
    -------
    NEBFit
    """
    records = list(record_set.records)
    if not records:
        raise ValueError("no converged NEB records to fit (skipped: "
                         + ", ".join(f"{v} {k}" for k, v in record_set.skipped.items() if v) + ")")
    base = base_catalog if isinstance(base_catalog, RateCatalog) else load_catalog(base_catalog)
    kw = {"slope_mode": slope_mode, "min_records_linear": min_records_linear, "absolute_sigma": absolute_sigma,
          "prior_sigma_eV": prior_sigma_eV}
    families = fit_kra(records, **kw)
    if fit_energy:
        energy = fit_energy_model(records, base, energy_parameters, prior_sigma_eV, min_records_per_parameter)
    else:
        theta0 = energy_parameters_of(base)
        energy = EnergyModelFit(theta0, np.full(theta0.size, np.nan), [], np.zeros((0, 0)), {}, 0,
                                status=f"not fitted (fit_energy=False): energy model of base catalog {base.name!r}")
    # cross-validation
    kra_err: dict[str, list] = {}
    de_err: dict[str, list] = {}
    folds = _folds(len(records), cv_folds, cv_seed)
    for test in folds:
        held = set(test.tolist())
        train = [r for i, r in enumerate(records) if i not in held]
        fam_cv = fit_kra(train, **kw) if train else {}
        en_cv = None
        if energy.fitted:
            en_cv = fit_energy_model(train, base, energy_parameters, prior_sigma_eV, min_records_per_parameter)
        for i in test:
            r = records[i]
            if r.family in fam_cv:
                kra_err.setdefault(r.family, []).append(r.kra_eV - float(fam_cv[r.family].predict(r.shell_nI)[0]))
            if en_cv is not None and r.has_counts and _mixed_environment(r):
                de_err.setdefault(r.family, []).append(r.delta_E_eV - predict_delta_energy(r, en_cv.theta_eV))
    for lb, f in families.items():
        e = np.asarray(kra_err.get(lb, []))
        f.cv_n = int(e.size)
        f.cv_rmse_eV = float(np.sqrt(np.mean(e ** 2))) if e.size else math.nan
    all_kra = np.concatenate([np.asarray(v) for v in kra_err.values()]) if kra_err else np.zeros(0)
    if de_err:
        all_de = np.concatenate([np.asarray(v) for v in de_err.values()])
        energy.cv_rmse_eV = float(np.sqrt(np.mean(all_de ** 2)))
        energy.cv_n = int(all_de.size)
        energy.cv_by_family = {lb: {"rmse_eV": float(np.sqrt(np.mean(np.square(v)))), "n": len(v)}
                               for lb, v in sorted(de_err.items())}
    cv = "leave-one-out" if len(folds) == len(records) else f"{len(folds)}-fold (seed {cv_seed})"
    return NEBFit(families=families, energy=energy, slope_mode=slope_mode, cv=cv, record_set=record_set,
                  cv_rmse_kra_eV=float(np.sqrt(np.mean(all_kra ** 2))) if all_kra.size else math.nan)


# --------------------------------------------------------------------------
# Catalog
# --------------------------------------------------------------------------
def prefactor_from_md_catalog(md_catalog: RateCatalog) -> tuple[float, float]:
    """One attempt frequency from an MD-fitted catalog (:func:`rates.fit.build_catalog_from_md`).

    The inverse-variance weighted mean of ``ln prefactor`` over classes whose
    prefactor was fitted (class source ``md-mle`` or ``md-mle-shared-prefactor``;
    fixed prefactors carry no information). Returns ``(prefactor_Hz,
    prefactor_err_Hz)``, the error as ``prefactor * sigma(mean ln prefactor)``.

    Raises
    ------
    ValueError
        No class with a fitted prefactor and a finite error.
    """
    use = [c for c in range(N_CLASSES) if md_catalog.class_source[c] in ("md-mle", "md-mle-shared-prefactor")
           and md_catalog.present[c] and np.isfinite(md_catalog.prefactor_err_Hz[c])
           and md_catalog.prefactor_err_Hz[c] > 0]
    if not use:
        raise ValueError(f"catalog {md_catalog.name!r} has no class with a fitted prefactor (class source md-mle or "
                         "md-mle-shared-prefactor with an error); give the prefactor explicitly")
    ln_nu = np.log(md_catalog.prefactor_Hz[use])
    s = md_catalog.prefactor_err_Hz[use] / md_catalog.prefactor_Hz[use]
    if len(set(np.round(ln_nu, 12))) == 1:  # one shared prefactor: its own error
        return float(math.exp(ln_nu[0])), float(math.exp(ln_nu[0]) * s[0])
    w = 1.0 / s ** 2
    mean = float(np.sum(w * ln_nu) / np.sum(w))
    return math.exp(mean), math.exp(mean) * float(1.0 / math.sqrt(np.sum(w)))


def build_catalog_from_neb(records, base_catalog="default", *, prefactor_Hz: float | None = None,
                           prefactor_err_Hz: float | None = None, prefactor_catalog: RateCatalog | None = None,
                           slope_mode: str = "per-family", energy_parameters=DEFAULT_ENERGY_PARAMETERS,
                           fit_energy: bool = True, extrapolate: bool = True, min_records_linear: int = 3,
                           absolute_sigma: bool = False, prior_sigma_eV: float = PRIOR_SIGMA_EV,
                           cv_folds: int | None = None, cv_seed: int = 0,
                           min_records_per_parameter: int = MIN_RECORDS_PER_PARAMETER, name: str | None = None,
                           description: str | None = None, extra_provenance: dict | None = None) -> RateCatalog:
    """A rate catalog from NEB records.

    Parameters
    ----------
    records : NEBRecordSet, or path(s) of record files
    base_catalog : RateCatalog, str or Path
        Fallback values of classes outside the fitted families, the energy-model
        parameters not fitted, lattice constants and temperature range.
    prefactor_Hz, prefactor_err_Hz : float, optional
        One attempt frequency for every NEB-fitted class.
    prefactor_catalog : RateCatalog, optional
        Without ``prefactor_Hz``: take it from this MD-fitted catalog
        (:func:`prefactor_from_md_catalog`). Without either, NEB-fitted classes
        keep the base catalog's per-class prefactors.
    slope_mode, energy_parameters, fit_energy, min_records_linear, absolute_sigma, prior_sigma_eV, cv_folds, cv_seed,\
    min_records_per_parameter :
        See :func:`fit_neb`.
    extrapolate : bool
        Give classes of a fitted family outside its fitted shell_nI range the
        model's value (``"neb-fit-extrapolated"``); False keeps the base values there.
    name, description : str, optional
    extra_provenance : dict, optional
        Merged into ``provenance``.

    Returns
    -------
    RateCatalog
        Validated (parsed back from its JSON form); ``provenance["fit"]`` holds
        :meth:`NEBFit.summary`.
    """
    rs = records if isinstance(records, NEBRecordSet) else load_neb_record_files(records)
    base = base_catalog if isinstance(base_catalog, RateCatalog) else load_catalog(base_catalog)
    fit = fit_neb(rs, base, slope_mode=slope_mode, energy_parameters=energy_parameters, fit_energy=fit_energy,
                  min_records_linear=min_records_linear, absolute_sigma=absolute_sigma,
                  prior_sigma_eV=prior_sigma_eV, cv_folds=cv_folds, cv_seed=cv_seed,
                  min_records_per_parameter=min_records_per_parameter)
    if prefactor_Hz is not None:
        nu_src = "given"
        nu_val = float(prefactor_Hz)
        nu_err = math.nan if prefactor_err_Hz is None else float(prefactor_err_Hz)
        if not (math.isfinite(nu_val) and nu_val > 0):
            raise ValueError(f"prefactor_Hz must be finite and > 0, got {prefactor_Hz}")
    elif prefactor_catalog is not None:
        nu_val, nu_err = prefactor_from_md_catalog(prefactor_catalog)
        nu_src = f"mean of the fitted prefactors of MD catalog {prefactor_catalog.name!r}"
    else:
        nu_val = nu_err = None
        nu_src = f"base catalog {base.name!r} (per class)"
    e_kra = base.E_KRA_eV.copy()
    e_err = base.E_KRA_err_eV.copy()
    nu = base.prefactor_Hz.copy()
    nu_e = base.prefactor_err_Hz.copy()
    src = [f"fallback:{s}" if base.present[c] else "" for c, s in enumerate(base.class_source)]
    unfitted = {}
    for lb, f in fit.families.items():
        for c in _family_classes(lb):
            n = decode_class(c)["shell_nI"]
            inside = f.in_range(n)
            if not inside and not extrapolate:
                continue
            v, se = f.predict(n)
            if v < 0:
                unfitted[class_label(c)] = f"model E_KRA {float(v):.4g} eV < 0 (family {lb}); base value kept"
                log.warning("NEB fit: class %s: model E_KRA %.4g eV < 0; keeping the base value", class_label(c), v)
                continue
            e_kra[c] = float(v)
            e_err[c] = float(se)
            if nu_val is not None:
                nu[c] = nu_val
                nu_e[c] = nu_err
            src[c] = SOURCE_FIT if inside else SOURCE_EXTRAPOLATED
    pair = base.pair_eV.copy()
    pair_err = base.pair_err_eV.copy()
    pair_src = dict(base.pair_source)
    bridge = base.bridge_eV.copy()
    bridge_err = base.bridge_err_eV.copy()
    bridge_src = list(base.bridge_source)
    for pname in fit.energy.fitted:
        v, e = fit.energy.value(pname)
        kind, what = pname.split(":")
        if kind == "pair":
            a, b = (STATE_NAMES.index(s) for s in what.split("-"))
            pair[a, b] = pair[b, a] = v
            pair_err[a, b] = pair_err[b, a] = e
            pair_src[(STATE_NAMES[min(a, b)], STATE_NAMES[max(a, b)])] = SOURCE_ENERGY
        else:
            nb = BRIDGE_NAMES.index(what)
            bridge[nb], bridge_err[nb], bridge_src[nb] = v, e, SOURCE_ENERGY
    files = [s["file"] for s in rs.sources]
    sources = dict(base.sources)
    what = (f"NEB records ({len(rs.records)} converged hops from {', '.join(files)}): E_KRA = (E_fwd + E_bwd)/2 "
            f"fitted per family as a function of shell_nI (slope mode {slope_mode!r}, weighted least squares)")
    sources[SOURCE_FIT] = what + "; class inside the fitted shell_nI range of its family"
    sources[SOURCE_EXTRAPOLATED] = what + "; class OUTSIDE the fitted shell_nI range (extrapolated)"
    sources[SOURCE_ENERGY] = ("least-squares fit of pair/bridge energies to the NEB endpoint energy differences dE, "
                              "with the rate law's dE functions on the rebuilt pre-hop configurations")
    if fit.energy.fitted:
        energy_text = ("Energy model: "
                       + ", ".join(f"{p} = {fit.energy.value(p)[0]:.4g} +- {fit.energy.value(p)[1]:.2g} eV"
                                   for p in fit.energy.fitted)
                       + f" fitted to NEB dE ({fit.energy.n_records} records of mixed environments); other terms from base "
                         f"catalog {base.name!r}")
    else:
        energy_text = f"Energy model of base catalog {base.name!r} ({fit.energy.status})."
    assumptions = [
        (f"Classes with class_source {SOURCE_FIT}/{SOURCE_EXTRAPOLATED}: E_KRA from a per-family model "
         f"({SLOPE_MODES[slope_mode]}) fitted to NEB kinetically-resolved barriers; E_KRA_err_eV is the standard "
         "error of the model at that shell_nI (parameter covariance only; the scatter of single hops about the "
         "model is in provenance.fit.families[*].sigma_eV). Extrapolated classes carry no model-error term."),
        f"Prefactor of NEB-fitted classes: {nu_src} (NEB gives no prefactor).",
        ("NEB barriers are static 0 K barriers of one cell per hop (frozen far field); the KMC applies them at "
         "every temperature of the catalog's range."),
        energy_text,
        f"Classes with class_source fallback:* keep the values of base catalog {base.name!r}.",
    ] + [f"base catalog {base.name!r}: {a}" for a in base.assumptions]
    inputs = {s["file"]: s["sha256"] for s in rs.sources}
    inputs[f"base catalog {base.name}"] = base.sha256()
    summary = fit.summary()
    summary.update({"extrapolate": extrapolate, "prefactor": {"source": nu_src, "prefactor_Hz": nu_val,
                                                              "prefactor_err_Hz": _json(nu_err) if nu_err is not None
                                                              else None},
                    "record_sources": copy.deepcopy(rs.sources), "unfitted": unfitted,
                    "base_catalog": {"name": base.name, "sha256": base.sha256()}})
    provenance = {
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "generator": "rates.neb_fit.build_catalog_from_neb",
        "package_version": _package_version(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "inputs": inputs,
        "fit": summary,
    }
    if extra_provenance:
        provenance.update(copy.deepcopy(extra_provenance))
    cat = RateCatalog(
        name=name or f"neb-fit-{slope_mode}",
        description=description if description is not None else
        f"E_KRA and energy model fitted to NEB records; other classes from {base.name!r}.",
        E_KRA_eV=e_kra, E_KRA_err_eV=e_err, prefactor_Hz=nu, prefactor_err_Hz=nu_e, class_source=src,
        pair_eV=pair, pair_err_eV=pair_err, pair_source=pair_src, bridge_eV=bridge, bridge_err_eV=bridge_err,
        bridge_source=bridge_src, lattice_constant_A=dict(base.lattice_constant_A),
        temperature_range_K=tuple(base.temperature_range_K), sources=sources, assumptions=assumptions,
        provenance=provenance,
    )
    return RateCatalog.from_dict(json.loads(json.dumps(cat.to_dict())), origin=f"fitted catalog {cat.name!r}")


def overlay_md_fit(neb_catalog: RateCatalog, md_catalog: RateCatalog, name: str | None = None) -> RateCatalog:
    """MD-fitted classes (class source ``md-mle*``) of ``md_catalog`` over ``neb_catalog``.

    Every other class, the energy model, lattice constants and temperature range
    come from ``neb_catalog``; class sources tell which fit a class came from.
    The MD barriers were fitted with the MD catalog's own energy model (they
    absorb the mean dE/2 of the class's MD hops; exact for dE = 0).
    """
    md = [c for c in range(N_CLASSES) if md_catalog.class_source[c].startswith("md-mle")]
    cat = copy.deepcopy(neb_catalog)
    for c in md:
        cat.E_KRA_eV[c] = md_catalog.E_KRA_eV[c]
        cat.E_KRA_err_eV[c] = md_catalog.E_KRA_err_eV[c]
        cat.prefactor_Hz[c] = md_catalog.prefactor_Hz[c]
        cat.prefactor_err_Hz[c] = md_catalog.prefactor_err_Hz[c]
        cat.class_source[c] = md_catalog.class_source[c]
    cat.name = name or f"md-over-{neb_catalog.name}"
    cat.description = (f"MD-fitted classes of {md_catalog.name!r} over the NEB catalog {neb_catalog.name!r} "
                       "(energy model and other classes).")
    for k, v in md_catalog.sources.items():
        if k.startswith("md-mle"):
            cat.sources[k] = v
    cat.assumptions = ([(f"Precedence: classes fitted to MD hop counts (class_source md-mle*, {len(md)} classes) "
                         f"override NEB-fitted ones (neb-fit*); MD barriers were fitted with the energy model of "
                         f"{md_catalog.name!r}, the KMC uses this catalog's.")]
                       + list(neb_catalog.assumptions)
                       + [f"MD catalog: {a}" for a in md_catalog.assumptions if not a.startswith("base catalog")])
    cat.provenance = copy.deepcopy(neb_catalog.provenance)
    cat.provenance["generator"] = "rates.neb_fit.overlay_md_fit"
    cat.provenance["md_fit"] = copy.deepcopy(md_catalog.provenance.get("fit", {}))
    cat.provenance.setdefault("inputs", {}).update(md_catalog.provenance.get("inputs", {}))
    cat.provenance["inputs"][f"MD catalog {md_catalog.name}"] = md_catalog.sha256()
    cat.provenance["md_classes"] = [class_label(c) for c in md]
    return RateCatalog.from_dict(json.loads(json.dumps(cat.to_dict())), origin=f"combined catalog {cat.name!r}")


def format_fit_table(summary: dict) -> str:
    """Text table of the fitted families and energy model (``catalog.provenance["fit"]``)."""
    head = (f"{'family':<12} {'model':<13} {'n':>3} {'nI range':>8} {'E_KRA(nI=0) eV':>16} {'slope eV/I':>17} "
            f"{'sigma':>6} {'CV RMSE':>8}")
    lines = [f"E_KRA families ({summary['slope_mode']}; CV {summary['cross_validation']}; "
             f"{summary['n_records']} records, skipped "
             + (", ".join(f"{v} {k}" for k, v in summary["skipped"].items() if v) or "none") + ")",
             head, "-" * len(head)]
    for f in summary["families"]:
        nv = f["shell_nI_values"]
        slope = "-" if f["model"] == "constant" else f"{f['slope_eV_per_I']:+.4f}+-{f['slope_err_eV_per_I']:.4f}"
        cv = "-" if f["cv_rmse_eV"] is None else f"{f['cv_rmse_eV']:.4f}"
        sig = "-" if f["sigma_eV"] is None else f"{f['sigma_eV']:.3f}"
        lines.append(f"{f['family']:<12} {f['model']:<13} {f['n_records']:>3} {f'{min(nv)}-{max(nv)}':>8} "
                     f"{f['intercept_eV']:>8.4f}+-{f['intercept_err_eV']:.4f} {slope:>17} {sig:>6} {cv:>8}")
    if summary.get("cv_rmse_kra_eV") is not None:
        lines.append(f"pooled CV RMSE of E_KRA: {summary['cv_rmse_kra_eV']:.4f} eV")
    em = summary["energy_model"]
    lines.append(f"\nenergy model: {em['status']}")
    if not em["parameters"]:
        return "\n".join(lines)
    for pname, p in em["parameters"].items():
        e = "n/a" if p["error_eV"] is None else f"{p['error_eV']:.4f}"
        lines.append(f"  {pname:<14} {p['value_eV']:+.4f} +- {e} eV")
    for pname, why in em["not_fitted"].items():
        lines.append(f"  {pname:<14} base value ({why})")
    if em["n_records"]:
        def f4(v):
            return "n/a" if v is None else f"{v:.4f}"
        lines.append(f"  dE: {em['n_records']} records of mixed environments, RMSE fit {f4(em['rmse_eV'])} eV, base model "
                     f"{f4(em['rmse_base_eV'])} eV, CV {f4(em['cv_rmse_eV'])} eV")
        for lb, v in em["cv_by_family"].items():
            lines.append(f"    CV RMSE dE {lb:<12} {v['rmse_eV']:.4f} eV (n={v['n']})")
    return "\n".join(lines)


def _json(v):
    if v is None:
        return None
    v = float(v)
    return None if not math.isfinite(v) else v


def _json_matrix(m: np.ndarray):
    return [[_json(x) for x in row] for row in np.asarray(m)]


def _corr(cov: np.ndarray) -> np.ndarray:
    if cov.size == 0:
        return cov
    d = np.sqrt(np.diag(cov))
    with np.errstate(invalid="ignore", divide="ignore"):
        return cov / np.outer(d, d)


__all__ = [
    "DEFAULT_ENERGY_PARAMETERS",
    "ENERGY_PARAMETERS",
    "SLOPE_MODES",
    "EnergyModelFit",
    "FamilyFit",
    "NEBFit",
    "NEBRecord",
    "NEBRecordSet",
    "build_catalog_from_neb",
    "design_matrix",
    "energy_parameters_of",
    "family_of_class",
    "fit_energy_model",
    "fit_kra",
    "fit_neb",
    "format_fit_table",
    "load_neb_record_files",
    "load_neb_records",
    "overlay_md_fit",
    "parse_record",
    "predict_delta_energy",
    "prefactor_from_md_catalog",
]
