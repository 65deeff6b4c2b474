"""NEB record files of ``kmc rates neb``: schema, parsing, checks, the record set.

See :mod:`rates.neb_fit` for how the records are used. Records of bands that did not converge, of
endpoints that did not relax, or with an image below an endpoint are skipped and counted
(:class:`NEBRecordSet`); malformed or self-contradictory ones raise ``ValueError``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
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
#: Tolerance (eV) of an image below an endpoint when a record does not state its own (as md_reference.neb.band).
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
