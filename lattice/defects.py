"""Placing halide vacancies and split interstitials on a configuration.

* A **vacancy** empties an X site (the halide is removed).
* A **split interstitial** adds one halide to an X site, which then holds a
  Pb-XX-Pb bridge of two halides: the site's own atom and the added one. The
  bridge composition (II, IBr, BrBr) follows from the two species.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lattice.configurations import Configuration
from lattice.species import BR, I, KIND_INTERSTITIAL, KIND_VACANCY, species_code

PLACEMENTS = ("random", "domain", "matrix", "interface", "region:I", "region:Br")


@dataclass
class DefectSet:
    """Defects to put on a configuration.

    Attributes
    ----------
    kinds : (n,) int8
        ``KIND_VACANCY`` or ``KIND_INTERSTITIAL``.
    sites : (n,) int64
        Distinct site indices.
    bridge : (n, 2) int8
        Species of the two bridge atoms (site atom first); -1 for vacancies.
    """

    kinds: np.ndarray
    sites: np.ndarray
    bridge: np.ndarray

    def __len__(self) -> int:
        return int(self.sites.size)

    @property
    def n_vacancies(self) -> int:
        return int(np.count_nonzero(self.kinds == KIND_VACANCY))

    @property
    def n_interstitials(self) -> int:
        return int(np.count_nonzero(self.kinds == KIND_INTERSTITIAL))


def candidate_sites(config: Configuration, where: str) -> np.ndarray:
    """Sites allowed by placement rule ``where`` (see :data:`PLACEMENTS`)."""
    lat = config.lattice
    if where == "random":
        return np.arange(lat.n_sites, dtype=np.int64)
    if where in ("domain", "matrix"):
        inside = config.domain_mask()
        return np.flatnonzero(inside if where == "domain" else ~inside)
    if where == "interface":
        if config.interface_planes is None:
            raise ValueError(f"placement 'interface' needs a heterojunction, not a {config.kind!r} configuration")
        planes = lat.plane_index(config.axis)
        return np.flatnonzero(np.isin(planes, config.interface_planes))
    if where.startswith("region:"):
        code = species_code(where.split(":", 1)[1])
        return np.flatnonzero(config.occ == code)
    raise ValueError(f"unknown defect placement {where!r}; valid placements are {list(PLACEMENTS)} or a list of sites")


def place_defects(
    config: Configuration,
    vacancies: int = 0,
    interstitials: int = 0,
    where: str | list | tuple = "random",
    added_species: str = "same",
    seed: int | np.random.Generator = 0,
) -> DefectSet:
    """Choose distinct sites for ``vacancies`` + ``interstitials`` defects.

    Parameters
    ----------
    vacancies, interstitials : int
        Number of each defect.
    where : str or sequence of int
        A placement rule from :data:`PLACEMENTS`, or explicit sites (vacancies
        first, then interstitials).
    added_species : {"same", "I", "Br"}
        Species of the halide added for each interstitial; "same" adds one of
        the site's own species (II in CsPbI3, BrBr in CsPbBr3).
    seed : int or Generator
        Random choice of sites.
    """
    n_v, n_i = int(vacancies), int(interstitials)
    if n_v < 0 or n_i < 0:
        raise ValueError(f"defect counts must be >= 0, got vacancies={n_v}, interstitials={n_i}")
    n = n_v + n_i
    if isinstance(where, str):
        pool = None if where == "random" else candidate_sites(config, where)
        n_pool = config.lattice.n_sites if pool is None else pool.size
        if n > n_pool:
            raise ValueError(f"cannot place {n} defects on the {n_pool} sites allowed by placement {where!r}")
        rng = np.random.default_rng(seed)
        # "random": the pool is every site; choosing indices draws the same numbers without an arange
        pick = (lambda: rng.choice(config.lattice.n_sites, size=n, replace=False)) if pool is None else \
            (lambda: rng.choice(pool, size=n, replace=False))
        sites = np.sort(pick()) if n else np.zeros(0, np.int64)
        rng.shuffle(sites)
    else:
        sites = np.asarray(list(where), dtype=np.int64)
        if sites.size != n:
            raise ValueError(f"{sites.size} explicit defect sites given for {n} defects")
        if np.any((sites < 0) | (sites >= config.lattice.n_sites)):
            raise ValueError(f"defect site out of range [0, {config.lattice.n_sites})")
    if np.unique(sites).size != sites.size:
        raise ValueError("defect sites must be distinct")
    kinds = np.array([KIND_VACANCY] * n_v + [KIND_INTERSTITIAL] * n_i, dtype=np.int8)
    bridge = np.full((n, 2), -1, dtype=np.int8)
    if added_species not in ("same", "I", "Br"):
        raise ValueError(f"unknown added_species {added_species!r}; valid values are ['same', 'I', 'Br']")
    for d in range(n_v, n):
        own = config.occ[sites[d]]
        add = own if added_species == "same" else species_code(added_species)
        bridge[d] = (own, add)
    return DefectSet(kinds=kinds, sites=sites.astype(np.int64), bridge=bridge)


__all__ = ["DefectSet", "PLACEMENTS", "candidate_sites", "place_defects", "I", "BR"]
