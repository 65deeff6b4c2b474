"""Analyses of MD runs: Eq. 1 diffusion, Arrhenius fits, layer occupancy, bridges, mixing.

Pure NumPy on arrays that a trajectory reader or :func:`md_reference.analysis.tracker.track_defects`
produced; no LAMMPS needed.

* Eq. 1 of the paper, ``D = 1/6 d/dt < sum_i |r_i(t + t0) - r_i(t0)|^2 >_t0``,
  is a **sum** over the N atoms of the species passed in (not an average): with
  one defect in the cell it gives the defect-mediated diffusion coefficient.
* Figure 4: defect occupancy per halide plane of a heterojunction and the
  Boltzmann free-energy profile ``F_p = -k_B T ln(P_p / max P)``.
* SI note 7 / Figure 4d-e: II / IBr / BrBr bridge fractions against the random
  expectation, and the implied free-energy differences.
* Figure 5: nanodomain mixing counts.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from common.diffusion import (  # noqa: F401 - Eq. 1 estimators live in common, re-exported here
    DEFAULT_FIT_WINDOW,
    DEFAULT_N_LAGS,
    DEFAULT_N_ORIGINS,
    _check_traj,
    diffusion_eq1,
    fit_msd_eq1,
    msd_eq1,
)
from common.atomic import jsonable as to_jsonable  # noqa: F401 - re-exported
from common.stats import fit_arrhenius, mean_sem
from common.units import A2_PER_PS_TO_CM2_PER_S  # noqa: F401 - 1 A^2/ps = 1e-4 cm^2/s
from lattice.configurations import Configuration
from lattice.species import BR, BRIDGE_NAMES, HALIDES, I
from lattice.sublattice import HalideSublattice
from rates.ratelaw import K_B_EV

logger = logging.getLogger(__name__)



SPECIES_SELECTIONS = ("I", "Br", "X")


# --------------------------------------------------------------------------
# Eq. 1 per species (the estimators themselves are in common.diffusion)
# --------------------------------------------------------------------------
def _species_mask(symbols: np.ndarray, name: str) -> np.ndarray:
    sym = np.asarray(symbols)
    if sym.dtype.kind in "iu":
        codes = sym
    else:
        lookup = {"I": I, "Br": BR}
        codes = np.array([lookup.get(str(s), -1) for s in sym], dtype=np.int64)
    if name == "X":
        return (codes == I) | (codes == BR)
    return codes == (I if name == "I" else BR)


def diffusion_by_species(
    positions_A: np.ndarray,
    times_ps: np.ndarray,
    symbols,
    species: tuple[str, ...] = SPECIES_SELECTIONS,
    **kwargs,
) -> dict[str, float]:
    """Eq. 1 D (cm^2/s) for each selection in ``species``.

    Parameters
    ----------
    positions_A : (n_frames, n_atoms, 3) float
        Unwrapped, drift-free positions (A).
    times_ps : (n_frames,) float
    symbols : (n_atoms,) str or int
        Chemical symbols ("I", "Br", other elements ignored) or halide codes (I=0, BR=1).
    species : tuple of {"I", "Br", "X"}
        "X" selects all halides. A selection with no atom gives NaN.
    **kwargs
        Passed to :func:`diffusion_eq1`.

    Returns
    -------
    dict mapping each selection to D in cm^2/s.
    """
    pos = np.asarray(positions_A, dtype=np.float64)
    sym = np.asarray(symbols)
    if pos.ndim != 3 or sym.shape != (pos.shape[1],):
        n_atoms = pos.shape[1] if pos.ndim == 3 else "?"
        raise ValueError(f"symbols must have one entry per atom ({n_atoms}), got {sym.shape}")
    out = {}
    for name in species:
        if name not in SPECIES_SELECTIONS:
            raise ValueError(f"unknown species selection {name!r}; valid selections are {list(SPECIES_SELECTIONS)}")
        mask = _species_mask(sym, name)
        if not mask.any():
            logger.info("no %s atoms: D set to NaN", name)
            out[name] = math.nan
            continue
        out[name] = diffusion_eq1(pos[:, mask], times_ps, **kwargs)
    return out


def combine_runs(values) -> dict:
    """Mean, standard error of the mean and count of independent runs' values.

    Uses :func:`kmc.analysis.mean_sem` (non-finite values dropped).
    """
    mean, sem, n = mean_sem(values)
    return {"mean": mean, "sem": sem, "n": n}


def arrhenius(temperature_K, D, D_err=None, T_ref_K: float = 300.0) -> dict:
    """Arrhenius fit ``D = D0 exp(-E_a / k_B T)`` (Eq. 2) via :func:`kmc.analysis.fit_arrhenius`.

    Returns
    -------
    dict with ``Ea_eV``, ``Ea_err_eV``, ``D0``, ``D0_err``, ``D_ref`` (at
    ``T_ref_K``, default 300 K), ``T_ref_K``, ``n_points``; D in the unit of ``D``.
    """
    T = np.asarray(temperature_K, dtype=np.float64)
    y = np.asarray(D, dtype=np.float64)
    if T.shape != y.shape or T.ndim != 1:
        raise ValueError(f"temperature_K and D must be 1-d arrays of equal length, got {T.shape} and {y.shape}")
    if D_err is not None and np.asarray(D_err).shape != y.shape:
        raise ValueError(f"D_err must have the shape of D {y.shape}, got {np.asarray(D_err).shape}")
    return fit_arrhenius(T, y, D_err, T_ref_K=T_ref_K)


# --------------------------------------------------------------------------
# Figure 4: layer occupancy and Boltzmann profile
# --------------------------------------------------------------------------
def _free_energy(per_site: np.ndarray, n_eff: np.ndarray, kT: float) -> tuple[np.ndarray, np.ndarray]:
    """-kT ln(p / max p) and kT / sqrt(n_eff) (inf where no counts)."""
    ref = per_site.max() if per_site.size and per_site.max() > 0 else np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        F = np.where(per_site > 0, -kT * np.log(per_site / ref), np.inf)
        err = np.where(n_eff > 0, kT / np.sqrt(n_eff), np.inf)
    return F, err


def layer_occupancy(
    defect_sites: np.ndarray,
    config: Configuration,
    temperature_K: float,
    *,
    correlation_frames: float = 1.0,
    bridge_n_br: np.ndarray | None = None,
) -> dict:
    """Defect occupancy per halide plane and its Boltzmann free-energy profile (Figure 4).

    ``P_p = N_p / (N_total * sites_p)`` is the time fraction of the defect in
    plane ``p`` per site (PbX2 planes hold twice as many X sites as CsX
    planes); ``F_p = -k_B T ln(P_p / max_q P_q)`` (eV). Frames are assumed
    evenly spaced, so frame counts are time fractions.

    Errors are Poisson-type: the count of plane ``p`` is treated as
    ``N_p / correlation_frames`` independent samples, so
    ``F_err_p = k_B T / sqrt(N_p / correlation_frames)``, the error of
    ``-k_B T ln N_p`` up to the common reference; for a difference of two
    planes add both in quadrature. Consecutive frames are strongly correlated
    (a defect stays tens of ps at a site): pass the number of frames per
    independent sample, e.g. the mean residence time in frames, or use the
    spread of independent runs.

    Parameters
    ----------
    defect_sites : (n_frames,) or (n_frames, n_defects) int
        Defect site per frame (e.g. ``DefectTrack.defect_site``); negative
        entries (unknown) are ignored.
    config : Configuration
        Supplies the lattice, the axis, and (heterojunctions) ``plane_region``
        and ``interface_planes``.
    temperature_K : float
    correlation_frames : float
        Frames per independent sample (>= 1).
    bridge_n_br : same shape as defect_sites, optional
        Bridge composition per entry (0, 1, 2; -1 ignored): adds counts per
        plane and composition.

    Returns
    -------
    dict with
        ``plane`` (n_planes,), ``sites_per_plane``, ``counts`` (frames),
        ``fraction`` (N_p / N_total), ``per_site`` (P_p), ``F_eV``, ``F_err_eV``,
        ``region`` (species code per plane or None), ``distance`` (plane
        distance to the nearest interface or None), ``groups`` (list of dicts
        pooled by (region, distance): ``region``, ``distance``, ``n_sites``,
        ``counts``, ``per_site``, ``F_eV``, ``F_err_eV``), ``n_total``,
        ``temperature_K``, and ``counts_by_bridge`` (3, n_planes) when
        ``bridge_n_br`` is given.
    """
    lat = config.lattice
    sites = np.asarray(defect_sites)
    if sites.dtype.kind not in "iu":
        raise ValueError(f"defect_sites must be an integer array, got dtype {sites.dtype}")
    if not (np.isfinite(temperature_K) and temperature_K > 0):
        raise ValueError(f"temperature_K must be positive, got {temperature_K}")
    if not correlation_frames >= 1.0:
        raise ValueError(f"correlation_frames must be >= 1, got {correlation_frames}")
    flat = sites.ravel()
    ok = flat >= 0
    if np.any(flat[ok] >= lat.n_sites):
        raise ValueError(f"defect_sites has entries outside [0, {lat.n_sites})")
    kT = K_B_EV * float(temperature_K)
    axis = config.axis
    n_planes = lat.n_planes(axis)
    plane_of_site = lat.plane_index(axis)
    planes = plane_of_site[flat[ok]]
    counts = np.bincount(planes, minlength=n_planes).astype(np.int64)
    n_total = int(counts.sum())
    spp = lat.sites_per_plane(axis)
    frac = counts / n_total if n_total else np.full(n_planes, np.nan)
    per_site = frac / spp
    F, F_err = _free_energy(per_site, counts / correlation_frames, kT)
    out = {
        "plane": np.arange(n_planes),
        "sites_per_plane": spp,
        "counts": counts,
        "fraction": frac,
        "per_site": per_site,
        "F_eV": F,
        "F_err_eV": F_err,
        "n_total": n_total,
        "temperature_K": float(temperature_K),
        "region": None if config.plane_region is None else np.asarray(config.plane_region),
        "distance": None,
        "groups": [],
    }
    region = out["region"] if out["region"] is not None else np.full(n_planes, -1)
    if config.interface_planes is not None:
        distance = config.plane_distance_to_interface()
        out["distance"] = distance
        keys = sorted({(int(r), int(d)) for r, d in zip(region, distance)})
        g_counts = np.array([counts[(region == r) & (distance == d)].sum() for r, d in keys], dtype=np.int64)
        g_sites = np.array([spp[(region == r) & (distance == d)].sum() for r, d in keys], dtype=np.int64)
        g_per_site = (g_counts / n_total if n_total else np.full(len(keys), np.nan)) / g_sites
        gF, gErr = _free_energy(g_per_site, g_counts / correlation_frames, kT)
        for n, (r, d) in enumerate(keys):
            out["groups"].append({
                "region": HALIDES[r] if r >= 0 else None,
                "distance": d,
                "n_sites": int(g_sites[n]),
                "counts": int(g_counts[n]),
                "per_site": float(g_per_site[n]),
                "F_eV": float(gF[n]),
                "F_err_eV": float(gErr[n]),
            })
    if bridge_n_br is not None:
        comp = np.asarray(bridge_n_br).ravel()
        if comp.shape != flat.shape:
            raise ValueError(
                f"bridge_n_br must have the shape of defect_sites {sites.shape}, got {np.asarray(bridge_n_br).shape}"
            )
        by = np.zeros((3, n_planes), dtype=np.int64)
        for k in range(3):
            sel = ok & (comp == k)
            by[k] = np.bincount(plane_of_site[flat[sel]], minlength=n_planes)
        out["counts_by_bridge"] = by
    return out


# --------------------------------------------------------------------------
# Bridge composition statistics
# --------------------------------------------------------------------------
def _runs(labels: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lengths (in used frames) and labels of maximal runs of constant key and label.

    Only frames with ``label >= 0`` count; a gap of unused frames does not end a
    run whose key and label are the same on both sides.
    """
    used = labels >= 0
    idx = np.flatnonzero(used)
    if idx.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    brk = (keys[idx[1:]] != keys[idx[:-1]]) | (labels[idx[1:]] != labels[idx[:-1]])
    starts = np.concatenate([[0], np.flatnonzero(brk) + 1])
    lengths = np.diff(np.append(starts, idx.size))
    return lengths, labels[idx[starts]]


def _dF_from_fractions(f: np.ndarray, p_rand: np.ndarray, kT: float) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return -kT * np.log((f[1:] / f[0]) / (p_rand[1:] / p_rand[0]))


def _err_residences(comp, keys, x, kT, n_blocks):
    """Delta-method error from independent residences of random length.

    With residences drawn independently (composition k with probability p_k,
    length L_k), ``var ln(T_k / T_0) = <L_k^2>/(n_k <L_k>^2) + <L_0^2>/(n_0 <L_0>^2)``.
    """
    lengths, labels = _runs(comp, keys)
    var = np.full(3, np.inf)
    n_res = np.zeros(3, dtype=np.int64)
    for k in range(3):
        L = lengths[labels == k].astype(np.float64)
        n_res[k] = L.size
        if L.size:
            var[k] = np.mean(L * L) / (L.size * np.mean(L) ** 2)
    err = kT * np.sqrt(var[1:] + var[0])
    return err, {"n_residences": n_res}


def _err_blocks(comp, keys, x, kT, n_blocks):
    """Standard error of dF over contiguous blocks of the used frames."""
    idx = np.flatnonzero(comp >= 0)
    blocks = np.array_split(idx, int(n_blocks))
    vals = []
    for b in blocks:
        f = np.bincount(comp[b], minlength=3) / max(b.size, 1)
        p = _random_bridge_probabilities(x[b])
        vals.append(_dF_from_fractions(f, p, kT))
    v = np.asarray(vals)
    good = np.all(np.isfinite(v), axis=1)
    if good.sum() < 2:
        return np.full(2, np.nan), {"n_blocks_used": int(good.sum())}
    err = v[good].std(axis=0, ddof=1) / math.sqrt(good.sum())
    return err, {"n_blocks_used": int(good.sum())}


BRIDGE_ERROR_METHODS = {"residences": _err_residences, "blocks": _err_blocks}


def _random_bridge_probabilities(x_br: np.ndarray) -> np.ndarray:
    """Mean binomial probabilities of 0, 1, 2 Br in a bridge at Br fractions ``x_br``."""
    x = np.asarray(x_br, dtype=np.float64)
    return np.array([np.mean((1 - x) ** 2), np.mean(2 * x * (1 - x)), np.mean(x * x)])


def bridge_statistics(
    bridge_n_br: np.ndarray,
    x_Br,
    temperature_K: float,
    *,
    defect_site: np.ndarray | None = None,
    error_method: str = "residences",
    n_blocks: int = 10,
) -> dict:
    """II / IBr / BrBr bridge time fractions against a random mixture.

    With the Br fraction ``x`` of the surroundings, a bridge formed at random
    is II, IBr, BrBr with probabilities ``(1-x)^2, 2x(1-x), x^2`` (averaged
    over frames when ``x_Br`` is per frame). Assuming Boltzmann occupation,
    ``F(IBr) - F(II) = -k_B T ln[(f_IBr/f_II) / (p_IBr/p_II)]`` and likewise
    for BrBr (eV).

    Errors. Frames are correlated, so counting frames would underestimate
    the error. ``error_method="residences"`` (default) counts independent
    residences: maximal runs of constant composition (and site, when
    ``defect_site`` is given); with residences of random length the delta
    method gives ``var = sum_k <L_k^2>/(n_k <L_k>^2)`` over the two
    compositions of the ratio. ``"blocks"``: standard error of the values of
    ``n_blocks`` contiguous blocks.

    Parameters
    ----------
    bridge_n_br : (n_frames,) int
        Number of Br in the bridge per frame (0, 1, 2); negative = no bridge, ignored.
    x_Br : float or (n_frames,) float
        Br fraction of the reference composition (global or local, per frame).
    temperature_K : float
    defect_site : (n_frames,) int, optional
        Bridge site per frame; a site change starts a new residence.
    error_method : {"residences", "blocks"}
    n_blocks : int
        Number of blocks for ``"blocks"`` (>= 2).

    Returns
    -------
    dict with ``names`` (II, IBr, BrBr), ``frames`` (3,) counts,
    ``fraction`` (3,), ``random_fraction`` (3,), ``dF_eV`` (2,) for IBr and
    BrBr relative to II, ``dF_err_eV`` (2,), ``error_method`` and method details.
    """
    if error_method not in BRIDGE_ERROR_METHODS:
        raise ValueError(f"unknown error_method {error_method!r}; valid methods are {sorted(BRIDGE_ERROR_METHODS)}")
    comp = np.asarray(bridge_n_br).astype(np.int64)
    if comp.ndim != 1:
        raise ValueError(f"bridge_n_br must be 1-d (one defect), got shape {comp.shape}")
    if np.any(comp > 2):
        raise ValueError("bridge_n_br entries must be 0, 1, 2 (or negative for no bridge)")
    x = np.broadcast_to(np.asarray(x_Br, dtype=np.float64), comp.shape)
    if np.any((x < 0) | (x > 1)):
        raise ValueError("x_Br must lie in [0, 1]")
    if not (np.isfinite(temperature_K) and temperature_K > 0):
        raise ValueError(f"temperature_K must be positive, got {temperature_K}")
    if error_method == "blocks" and int(n_blocks) < 2:
        raise ValueError(f"n_blocks must be >= 2, got {n_blocks}")
    keys = np.zeros_like(comp) if defect_site is None else np.asarray(defect_site).astype(np.int64)
    if keys.shape != comp.shape:
        raise ValueError(f"defect_site must have the shape of bridge_n_br {comp.shape}, got {keys.shape}")
    kT = K_B_EV * float(temperature_K)
    used = comp >= 0
    frames = np.bincount(comp[used], minlength=3)
    n = int(frames.sum())
    if n == 0:
        raise ValueError("bridge_n_br has no frame with a bridge")
    f = frames / n
    p = _random_bridge_probabilities(x[used])
    dF = _dF_from_fractions(f, p, kT)
    err, details = BRIDGE_ERROR_METHODS[error_method](comp, keys, x, kT, n_blocks)
    return {
        "names": list(BRIDGE_NAMES),
        "frames": frames,
        "fraction": f,
        "random_fraction": p,
        "dF_eV": dF,
        "dF_err_eV": np.asarray(err, dtype=np.float64),
        "temperature_K": float(temperature_K),
        "error_method": error_method,
        **details,
    }


def neighbour_x_Br(occupancy: np.ndarray, lattice: HalideSublattice, sites: np.ndarray) -> np.ndarray:
    """Br fraction among the single halides on the 8 neighbours of ``sites[f]`` in each frame.

    Parameters
    ----------
    occupancy : (n_frames, n_sites) int8
        Site states per frame (e.g. ``DefectTrack.occupancy()``).
    lattice : HalideSublattice
    sites : (n_frames,) int
        Site per frame (negative: NaN result).

    Returns
    -------
    (n_frames,) float64, NaN where no neighbour holds a single halide.
    """
    occ = np.asarray(occupancy)
    s = np.asarray(sites, dtype=np.int64)
    if occ.ndim != 2 or occ.shape[1] != lattice.n_sites or s.shape != (occ.shape[0],):
        raise ValueError(
            f"occupancy must be (n_frames, {lattice.n_sites}) and sites (n_frames,), got {occ.shape}, {s.shape}"
        )
    out = np.full(s.size, np.nan)
    ok = s >= 0
    nb = occ[np.flatnonzero(ok)[:, None], lattice.neighbour_table[s[ok]]]
    n_br = np.sum(nb == BR, axis=1)
    n_x = np.sum((nb == BR) | (nb == I), axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out[ok] = np.where(n_x > 0, n_br / n_x, np.nan)
    return out


# --------------------------------------------------------------------------
# Figure 5: nanodomain mixing
# --------------------------------------------------------------------------
def _mixing_result(domain_out: np.ndarray, matrix_in: np.ndarray) -> dict:
    n_mixed = domain_out + matrix_in
    return {
        "domain_out": domain_out,
        "matrix_in": matrix_in,
        "n_mixed": n_mixed,
        "events": n_mixed - n_mixed[0],
    }


def mixing_counts(config: Configuration, site_assignment: np.ndarray, atom_species: np.ndarray) -> dict:
    """Nanodomain mixing counts per frame from the atom -> site assignment.

    Parameters
    ----------
    config : Configuration
        A nanodomain configuration (``box`` and ``domain_species`` set).
    site_assignment : (n_frames, n_atoms) or (n_atoms,) int
        Site of every halide per frame (``DefectTrack.site_assignment``).
    atom_species : (n_atoms,) int
        Species code of every halide.

    Returns
    -------
    dict of (n_frames,) int64 arrays: ``domain_out`` (domain-species atoms
    on sites outside the domain box), ``matrix_in`` (other atoms on sites
    inside it), ``n_mixed`` (their sum) and ``events`` (``n_mixed - n_mixed[0]``).
    """
    if config.box is None or config.domain_species is None:
        raise ValueError(f"mixing counts need a nanodomain configuration, got a {config.kind!r} one")
    assign = np.atleast_2d(np.asarray(site_assignment, dtype=np.int64))
    sp = np.asarray(atom_species)
    if sp.shape != (assign.shape[1],):
        raise ValueError(f"atom_species must have shape ({assign.shape[1]},), got {sp.shape}")
    if np.any((assign < 0) | (assign >= config.lattice.n_sites)):
        raise ValueError(f"site_assignment has entries outside [0, {config.lattice.n_sites})")
    inside = config.domain_mask()[assign]
    dom = (sp == config.domain_species)[None, :]
    domain_out = np.sum(dom & ~inside, axis=1).astype(np.int64)
    matrix_in = np.sum(~dom & inside, axis=1).astype(np.int64)
    return _mixing_result(domain_out, matrix_in)


def mixing_counts_from_occupancy(config: Configuration, occupancy: np.ndarray) -> dict:
    """Nanodomain mixing counts from site states (bridges and vacancies not counted).

    Parameters
    ----------
    config : Configuration
        A nanodomain configuration.
    occupancy : (n_frames, n_sites) or (n_sites,) int8
        Site states; only sites holding a single I or Br are counted, so a
        bridge's atoms are invisible (use :func:`mixing_counts` when the
        assignment is available).

    Returns
    -------
    dict as :func:`mixing_counts`.
    """
    if config.box is None or config.domain_species is None:
        raise ValueError(f"mixing counts need a nanodomain configuration, got a {config.kind!r} one")
    occ = np.atleast_2d(np.asarray(occupancy))
    if occ.shape[1] != config.lattice.n_sites:
        raise ValueError(f"occupancy must have {config.lattice.n_sites} sites per frame, got {occ.shape[1]}")
    inside = config.domain_mask()[None, :]
    other = BR if config.domain_species == I else I
    domain_out = np.sum((occ == config.domain_species) & ~inside, axis=1).astype(np.int64)
    matrix_in = np.sum((occ == other) & inside, axis=1).astype(np.int64)
    return _mixing_result(domain_out, matrix_in)


__all__ = [
    "A2_PER_PS_TO_CM2_PER_S",
    "BRIDGE_ERROR_METHODS",
    "DEFAULT_FIT_WINDOW",
    "arrhenius",
    "bridge_statistics",
    "combine_runs",
    "diffusion_by_species",
    "diffusion_eq1",
    "fit_msd_eq1",
    "layer_occupancy",
    "mixing_counts",
    "mixing_counts_from_occupancy",
    "msd_eq1",
    "neighbour_x_Br",
    "to_jsonable",
]
