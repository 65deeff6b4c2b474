"""Halide configurations on the sublattice: pure, random mix, heterojunction, nanodomain.

A :class:`Configuration` is the I/Br occupation of every X site plus the labels
that observers need (stacking axis, plane regions, nanodomain box). Defects are
added afterwards with :func:`lattice.defects.place_defects`.

Heterojunction geometry (paper, Figure 4a)
------------------------------------------
Layers of CsPbI3 and CsPbBr3 alternate along ``axis`` with thicknesses given in
unit cells (CsPbX3 sublayers). In doubled coordinates along the axis, even
planes are PbX2 planes and odd planes CsX planes. The Pb plane at an interface
is coordinated by its 4 in-plane X, one apical X from each side. An **I-rich**
interface has an I in-plane layer (Pb sees 5 I + 1 Br), a **Br-rich** one a Br
in-plane layer (5 Br + 1 I). Both interfaces of a period are of the chosen type,
so with equal thicknesses the layer of the interface species holds one PbX2
plane more than the other.

Nanodomain geometry (paper, Figure 5)
-------------------------------------
A cube of ``m`` cells of one halide inside a matrix of the other: the domain
holds every X site inside the *closed* box ``[2 o, 2 (o + m)]`` of doubled
coordinates on each axis, so its six faces are PbX2 planes of the domain
species and every interface Pb sees 5 domain halides + 1 matrix halide, i.e.
I-rich interfaces for an I domain and Br-rich ones for a Br domain, as in the
paper.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lattice.species import BR, HALIDES, I, species_code
from lattice.sublattice import HalideSublattice, check_axis

INTERFACE_TYPES = ("I-rich", "Br-rich")


@dataclass
class Configuration:
    """I/Br occupation of a halide sublattice with its labels.

    Attributes
    ----------
    lattice : HalideSublattice
    occ : (n_sites,) int8
        Species code per site (0 = I, 1 = Br) before defects are placed.
    kind : str
        "pure", "random", "heterojunction" or "nanodomain".
    axis : int
        Axis for plane-resolved observables (stacking axis of a heterojunction).
    box : (3, 2) int64 or None
        Closed doubled-coordinate box of a nanodomain.
    domain_species : int or None
        Species code filling the nanodomain.
    plane_region : (2 n_axis,) int8 or None
        Species code of each halide plane of a heterojunction.
    interface_planes : (n,) int64 or None
        Plane indices of the interface PbX2 planes.
    params : dict
        The arguments the builder was called with (for provenance).
    """

    lattice: HalideSublattice
    occ: np.ndarray
    kind: str
    axis: int = 0
    box: np.ndarray | None = None
    domain_species: int | None = None
    plane_region: np.ndarray | None = None
    interface_planes: np.ndarray | None = None
    params: dict = field(default_factory=dict)

    @property
    def x_I(self) -> float:
        """Iodide fraction of the halide sites."""
        return float(np.count_nonzero(self.occ == I)) / self.occ.size

    def domain_mask(self, sites: np.ndarray | None = None) -> np.ndarray:
        """Boolean mask: site inside the nanodomain box."""
        if self.box is None:
            raise ValueError(f"a {self.kind!r} configuration has no nanodomain")
        if sites is None:
            return self.lattice.box_mask(self.box)
        c = self.lattice.coords(sites)
        return np.all((c >= self.box[:, 0]) & (c <= self.box[:, 1]), axis=1)

    def plane_distance_to_interface(self) -> np.ndarray:
        """(2 n_axis,) int64: plane distance to the nearest interface plane (periodic)."""
        if self.interface_planes is None:
            raise ValueError(f"a {self.kind!r} configuration has no interfaces")
        n = self.lattice.n_planes(self.axis)
        p = np.arange(n)[:, None]
        d = np.abs(p - self.interface_planes[None, :])
        return np.min(np.minimum(d, n - d), axis=1)

    def describe(self) -> dict:
        """JSON-ready description (provenance)."""
        return {
            "kind": self.kind,
            "shape": list(self.lattice.shape),
            "n_sites": self.lattice.n_sites,
            "x_I": self.x_I,
            "axis": self.axis,
            **{k: v for k, v in self.params.items()},
        }


def build_pure(lattice: HalideSublattice, species: str) -> Configuration:
    """CsPbI3 or CsPbBr3: every site holds ``species``."""
    code = species_code(species)
    occ = np.full(lattice.n_sites, code, dtype=np.int8)
    return Configuration(lattice, occ, "pure", params={"species": species})


def build_random_mix(lattice: HalideSublattice, x_I: float, seed: int | np.random.Generator) -> Configuration:
    """Random CsPb(I_x Br_1-x)3 with exactly ``round(x_I * n_sites)`` iodides.

    Parameters
    ----------
    x_I : float
        Iodide fraction in [0, 1].
    seed : int or numpy Generator
        Seed of the random arrangement.
    """
    x_I = float(x_I)
    if not 0.0 <= x_I <= 1.0:
        raise ValueError(f"composition x_I must lie in [0, 1], got {x_I}")
    rng = np.random.default_rng(seed)
    n_i = int(round(x_I * lattice.n_sites))
    occ = np.full(lattice.n_sites, BR, dtype=np.int8)
    occ[rng.choice(lattice.n_sites, size=n_i, replace=False)] = I
    return Configuration(lattice, occ, "random", params={"x_I": x_I})


def build_heterojunction(
    lattice: HalideSublattice,
    thickness_I: int,
    thickness_Br: int,
    interface: str = "I-rich",
    axis: int | str = 0,
) -> Configuration:
    """Alternating CsPbI3 / CsPbBr3 layers with I-rich or Br-rich interfaces.

    Parameters
    ----------
    thickness_I, thickness_Br : int
        Layer thicknesses in unit cells (CsPbX3 sublayers), each >= 1.
    interface : {"I-rich", "Br-rich"}
        Species of the in-plane halides of every interface Pb plane.
    axis : int or {"x", "y", "z"}
        Stacking axis. ``shape[axis]`` must be a multiple of the period
        ``thickness_I + thickness_Br``.
    """
    axis = check_axis(axis)
    if interface not in INTERFACE_TYPES:
        raise ValueError(f"unknown interface type {interface!r}; valid types are {list(INTERFACE_TYPES)}")
    t_i, t_br = int(thickness_I), int(thickness_Br)
    if t_i < 1 or t_br < 1:
        raise ValueError(f"layer thicknesses must be >= 1 cell, got I={t_i}, Br={t_br}")
    period = t_i + t_br
    n_axis = lattice.shape[axis]
    if n_axis % period:
        raise ValueError(
            f"impossible heterojunction: lattice length {n_axis} along axis {axis} is not a multiple "
            f"of the layer period {period} (= {t_i} I + {t_br} Br cells)"
        )
    n_planes = 2 * n_axis
    q = np.arange(n_planes) % (2 * period)
    if interface == "I-rich":
        is_i = q <= 2 * t_i  # PbX2 planes 0 and 2 t_I belong to the I layer
    else:
        is_i = (q >= 1) & (q <= 2 * t_i - 1)
    plane_region = np.where(is_i, I, BR).astype(np.int8)
    starts = np.arange(0, n_planes, 2 * period)
    interface_planes = np.sort(np.concatenate([starts, starts + 2 * t_i]))
    planes = lattice.plane_index(axis)
    occ = plane_region[planes].astype(np.int8)
    return Configuration(
        lattice,
        occ,
        "heterojunction",
        axis=axis,
        plane_region=plane_region,
        interface_planes=interface_planes,
        params={"thickness_I": t_i, "thickness_Br": t_br, "interface": interface},
    )


def build_nanodomain(
    lattice: HalideSublattice,
    domain_species: str,
    domain_size: int,
    origin: tuple[int, int, int] | None = None,
    axis: int | str = 0,
) -> Configuration:
    """A cubic nanodomain of ``domain_species`` in a matrix of the other halide.

    Parameters
    ----------
    domain_species : {"I", "Br"}
    domain_size : int
        Edge of the domain in unit cells (the paper uses 4 in an 8^3 cell).
    origin : (3,) int, optional
        Cell of the domain's lower corner Pb; centred by default.
    axis : int
        Axis of the composition profiles.
    """
    code = species_code(domain_species)
    m = int(domain_size)
    shape = np.asarray(lattice.shape)
    if m < 1 or np.any(m > shape - 1):
        raise ValueError(
            f"impossible nanodomain: size {m} cells needs 1 <= size <= n - 1 on every axis of "
            f"the {tuple(shape)} lattice (the matrix must separate periodic images)"
        )
    if origin is None:
        o = (shape - m) // 2
    else:
        o = np.asarray(origin, dtype=np.int64)
        if o.shape != (3,):
            raise ValueError(f"nanodomain origin must have 3 entries, got {origin!r}")
    if np.any(o < 0) or np.any(o + m > shape - 1):
        raise ValueError(
            f"nanodomain at origin {tuple(int(v) for v in o)} with size {m} does not fit inside the "
            f"{tuple(int(v) for v in shape)} lattice without wrapping around the periodic boundary"
        )
    box = np.stack([2 * o, 2 * (o + m)], axis=1).astype(np.int64)
    inside = lattice.box_mask(box)
    other = BR if code == I else I
    occ = np.full(lattice.n_sites, other, dtype=np.int8)
    occ[inside] = code
    return Configuration(
        lattice,
        occ,
        "nanodomain",
        axis=check_axis(axis),
        box=box,
        domain_species=code,
        params={"domain_species": domain_species, "domain_size": m, "origin": [int(v) for v in o]},
    )


BUILDERS = {
    "pure": build_pure,
    "random": build_random_mix,
    "heterojunction": build_heterojunction,
    "nanodomain": build_nanodomain,
}


def build_configuration(lattice: HalideSublattice, kind: str, **kwargs) -> Configuration:
    """Dispatch to the builder named ``kind`` (see :data:`BUILDERS`)."""
    if kind not in BUILDERS:
        raise ValueError(f"unknown configuration kind {kind!r}; valid kinds are {sorted(BUILDERS)}")
    try:
        return BUILDERS[kind](lattice, **kwargs)
    except TypeError as exc:
        raise ValueError(f"bad arguments for configuration {kind!r}: {exc}") from None


def pb_coordination(config: Configuration, occ: np.ndarray | None = None) -> np.ndarray:
    """(n_cells, 2) int64: number of I and Br among the 6 X around each Pb.

    Pb of cell (i, j, k) sits at doubled coordinates (2i, 2j, 2k); its six X are
    at +-1 along each axis. Used to check interface coordination.
    """
    lat = config.lattice
    occ = config.occ if occ is None else occ
    nx, ny, nz = lat.shape
    ii, jj, kk = np.meshgrid(np.arange(nx), np.arange(ny), np.arange(nz), indexing="ij")
    pb = np.stack([2 * ii.ravel(), 2 * jj.ravel(), 2 * kk.ravel()], axis=1)
    counts = np.zeros((pb.shape[0], 2), dtype=np.int64)
    for ax in range(3):
        for sign in (-1, 1):
            c = pb.copy()
            c[:, ax] += sign
            st = occ[lat.site_index(c)]
            counts[:, 0] += st == I
            counts[:, 1] += st == BR
    return counts


__all__ = [
    "Configuration",
    "INTERFACE_TYPES",
    "BUILDERS",
    "build_configuration",
    "build_pure",
    "build_random_mix",
    "build_heterojunction",
    "build_nanodomain",
    "pb_coordination",
    "HALIDES",
]
