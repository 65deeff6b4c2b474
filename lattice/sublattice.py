"""The halide (X) sublattice of cubic ABX3 perovskite.

Geometry
--------
Pb (B) sits at the cube corners, Cs (A) at the cube centre and the halides at
the midpoints of the cube edges: in unit cell ``(i, j, k)`` the three X sites are

* type 0 at ``(i + 1/2, j, k) a``  (the Pb-X-Pb bond along x),
* type 1 at ``(i, j + 1/2, k) a``,
* type 2 at ``(i, j, k + 1/2) a``.

Positions are handled as integer *doubled coordinates* ``(X, Y, Z)`` in units
of ``a/2``: an X site is a point with exactly one odd coordinate and the axis
of that odd coordinate is the site type. Every site has 8 nearest X neighbours
at ``a/sqrt(2)`` (doubled offset ``(+-1, +-1, 0)`` and permutations that keep
one coordinate odd); a hop between them runs along an edge of a PbX6
octahedron.

Site numbering is shared by the whole package (KMC state, MD frame mapping)::

    site = ((i * ny + j) * nz + k) * 3 + type,   i = X // 2, j = Y // 2, k = Z // 2

Along the stacking axis ``axis`` the doubled coordinate is also the index of
the halide *plane*: even planes are PbX2 planes (two X per cell), odd planes
are CsX planes (one X per cell). There are ``2 * n_axis`` planes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

N_NEIGHBOURS = 8
N_TYPES = 3


def _neighbour_offsets() -> tuple[np.ndarray, np.ndarray]:
    """Offsets of the 8 nearest neighbours of each site type.

    Returns
    -------
    offsets : (3, 8, 3) int64
        Doubled-coordinate offset of neighbour slot ``m`` of a type-``s`` site.
    types : (3, 8) int64
        Site type of that neighbour.

    Slot order for type ``s``: the 4 neighbours displaced along axis
    ``(s + 1) % 3`` first, then the 4 along ``(s + 2) % 3``; within each group
    the sign pairs (+,+), (+,-), (-,+), (-,-) of (axis s, other axis).
    """
    offsets = np.zeros((N_TYPES, N_NEIGHBOURS, 3), dtype=np.int64)
    types = np.zeros((N_TYPES, N_NEIGHBOURS), dtype=np.int64)
    for s in range(N_TYPES):
        m = 0
        for other in ((s + 1) % 3, (s + 2) % 3):
            for sa, so in ((1, 1), (1, -1), (-1, 1), (-1, -1)):
                offsets[s, m, s] = sa
                offsets[s, m, other] = so
                types[s, m] = other
                m += 1
    return offsets, types


NEIGHBOUR_OFFSETS, NEIGHBOUR_TYPES = _neighbour_offsets()


def _hop_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Static tables describing the geometry of a hop A -> B = A + offset[s, k].

    Returns
    -------
    back : (3, 8) int64
        Slot of A in the neighbour list of B.
    common : (3, 8, 2) int64
        The two slots of N(A) whose sites are also neighbours of B: the two
        X of the shared PbX6 octahedron that lie at a/sqrt(2) from both.
    """
    back = np.full((N_TYPES, N_NEIGHBOURS), -1, dtype=np.int64)
    common = np.full((N_TYPES, N_NEIGHBOURS, 2), -1, dtype=np.int64)
    for s in range(N_TYPES):
        for k in range(N_NEIGHBOURS):
            d = NEIGHBOUR_OFFSETS[s, k]
            t = NEIGHBOUR_TYPES[s, k]
            for m in range(N_NEIGHBOURS):
                if np.array_equal(NEIGHBOUR_OFFSETS[t, m], -d):
                    back[s, k] = m
            found = []
            nb_of_b = {tuple(d + NEIGHBOUR_OFFSETS[t, m]) for m in range(N_NEIGHBOURS)}
            for m in range(N_NEIGHBOURS):
                if m != k and tuple(NEIGHBOUR_OFFSETS[s, m]) in nb_of_b:
                    found.append(m)
            if len(found) != 2 or back[s, k] < 0:  # pragma: no cover - geometry invariant
                raise RuntimeError("inconsistent halide-sublattice neighbour tables")
            common[s, k] = found
    return back, common


HOP_BACK, HOP_COMMON = _hop_tables()


def _second_shell_union() -> tuple[np.ndarray, np.ndarray]:
    """Offsets (relative to A) of every site within two hops of A or of B.

    Used to find the defects whose rates can change after a hop A <-> B.

    Returns
    -------
    offsets : (3, 8, L, 3) int64, padded with zeros
    counts : (3, 8) int64, number of valid rows
    """
    def within2(s: int) -> set[tuple[int, int, int]]:
        out = {(0, 0, 0)}
        for m in range(N_NEIGHBOURS):
            d1 = NEIGHBOUR_OFFSETS[s, m]
            out.add(tuple(d1))
            t = NEIGHBOUR_TYPES[s, m]
            for m2 in range(N_NEIGHBOURS):
                out.add(tuple(d1 + NEIGHBOUR_OFFSETS[t, m2]))
        return out

    sets = {}
    for s in range(N_TYPES):
        for k in range(N_NEIGHBOURS):
            d = NEIGHBOUR_OFFSETS[s, k]
            t = NEIGHBOUR_TYPES[s, k]
            union = within2(s) | {tuple(np.add(d, o)) for o in within2(t)}
            sets[s, k] = sorted(union)
    length = max(len(v) for v in sets.values())
    offsets = np.zeros((N_TYPES, N_NEIGHBOURS, length, 3), dtype=np.int64)
    counts = np.zeros((N_TYPES, N_NEIGHBOURS), dtype=np.int64)
    for (s, k), v in sets.items():
        offsets[s, k, : len(v)] = v
        counts[s, k] = len(v)
    return offsets, counts


REGION_OFFSETS, REGION_COUNTS = _second_shell_union()


@dataclass(frozen=True)
class HalideSublattice:
    """Periodic halide sublattice of an ``nx x ny x nz`` cubic ABX3 supercell.

    Parameters
    ----------
    shape : tuple of int
        Number of unit cells along x, y, z (each >= 2: with one cell a site
        would be its own neighbour's neighbour through the boundary).

    Attributes
    ----------
    n_sites : int
        ``3 * nx * ny * nz``.
    """

    shape: tuple[int, int, int]

    def __post_init__(self) -> None:
        shape = tuple(int(n) for n in np.atleast_1d(self.shape))
        if len(shape) != 3:
            raise ValueError(f"lattice shape must have 3 entries (nx, ny, nz), got {self.shape!r}")
        if min(shape) < 2:
            raise ValueError(
                f"impossible lattice shape {shape}: every periodic dimension needs at least 2 "
                "unit cells so that the 8 halide neighbours of a site are distinct"
            )
        if 3 * shape[0] * shape[1] * shape[2] >= 2**62:
            raise ValueError(f"lattice shape {shape} has too many sites")
        object.__setattr__(self, "shape", shape)

    @property
    def n_sites(self) -> int:
        nx, ny, nz = self.shape
        return 3 * nx * ny * nz

    @property
    def dims(self) -> np.ndarray:
        """(3,) int64: cell counts, the form the kernels take."""
        return np.asarray(self.shape, dtype=np.int64)

    # -- index <-> coordinates ------------------------------------------------
    def coords(self, sites: np.ndarray | int | None = None) -> np.ndarray:
        """Doubled coordinates of ``sites`` (all sites if None).

        Returns
        -------
        (n, 3) int64 array, in units of a/2, each in ``[0, 2 * n_axis)``.
        """
        if sites is None:
            sites = np.arange(self.n_sites, dtype=np.int64)
        sites = np.asarray(sites, dtype=np.int64)
        if np.any((sites < 0) | (sites >= self.n_sites)):
            raise ValueError(f"site index out of range [0, {self.n_sites})")
        nx, ny, nz = self.shape
        s = sites % 3
        cell = sites // 3
        k = cell % nz
        j = (cell // nz) % ny
        i = cell // (nz * ny)
        out = np.stack([2 * i, 2 * j, 2 * k], axis=-1)
        odd = np.zeros_like(out)
        np.put_along_axis(odd, s[..., None], 1, axis=-1)
        out = out + odd
        return out

    def site_index(self, coords: np.ndarray) -> np.ndarray:
        """Site index of doubled coordinates (wrapped periodically).

        Raises
        ------
        ValueError
            If a coordinate triple is not a halide site (not exactly one odd entry).
        """
        c = np.asarray(coords, dtype=np.int64)
        two_n = 2 * self.dims
        c = np.mod(c, two_n)
        odd = c % 2
        if np.any(odd.sum(axis=-1) != 1):
            raise ValueError("coordinates are not halide sites (need exactly one odd doubled coordinate)")
        s = np.argmax(odd, axis=-1)
        ny, nz = self.shape[1], self.shape[2]
        return (((c[..., 0] // 2) * ny + c[..., 1] // 2) * nz + c[..., 2] // 2) * 3 + s

    def displacement(self, from_sites, to_sites) -> np.ndarray:
        """(n, 3) int64: minimum-image vector (doubled coordinates, units of a/2) from each site to the other."""
        d = self.coords(np.atleast_1d(to_sites)).astype(np.int64) - self.coords(np.atleast_1d(from_sites))
        return (d + self.dims) % (2 * self.dims) - self.dims

    def positions_A(self, lattice_constant_A: float) -> np.ndarray:
        """Cartesian positions in angstrom, (n_sites, 3) float64."""
        return self.coords().astype(np.float64) * (0.5 * float(lattice_constant_A))

    # -- neighbours -----------------------------------------------------------
    @cached_property
    def neighbour_table(self) -> np.ndarray:
        """(n_sites, 8) int64 neighbour table, in the kernels' slot order.

        Built for analysis and tests; the KMC kernels compute neighbours from
        coordinates instead and never hold this table (it costs 64 B/site).
        """
        c = self.coords()
        s = np.argmax(c % 2, axis=1)
        nb = c[:, None, :] + NEIGHBOUR_OFFSETS[s]
        return self.site_index(nb)

    def neighbours(self, site: int) -> np.ndarray:
        """The 8 nearest-neighbour sites of ``site`` (slot order)."""
        c = self.coords(int(site))
        s = int(np.argmax(c % 2))
        return self.site_index(c[None, :] + NEIGHBOUR_OFFSETS[s])

    def site_type(self, sites: np.ndarray | int) -> np.ndarray:
        """Bond axis (0, 1, 2) of ``sites``."""
        return np.asarray(sites, dtype=np.int64) % 3

    def plane_index(self, axis: int = 0, sites: np.ndarray | None = None) -> np.ndarray:
        """Halide plane index along ``axis`` (0 .. 2 n_axis - 1) of ``sites``.

        Even planes are PbX2 planes, odd planes CsX planes. For all sites this is
        :meth:`axis_coordinate` (int32, 4 B/site, no full coordinate array).
        """
        if sites is None:
            return self.axis_coordinate(axis)
        return self.coords(sites)[:, _check_axis(axis)]

    def axis_coordinate(self, axis: int | str) -> np.ndarray:
        """(n_sites,) int32: the doubled coordinate of every site along ``axis``, built by broadcasting.

        Equal to ``coords()[:, axis]`` without its 24 B/site (and ~100 B/site of temporaries).
        """
        axis = _check_axis(axis)
        n = self.shape
        shp = [1, 1, 1, 1]
        shp[axis] = n[axis]
        base = (2 * np.arange(n[axis], dtype=np.int32)).reshape(shp)
        odd = np.zeros((1, 1, 1, 3), dtype=np.int32)
        odd[..., axis] = 1
        out = np.empty((*n, 3), dtype=np.int32)
        np.add(base, odd, out=out)
        return out.reshape(-1)

    def box_mask(self, box: np.ndarray) -> np.ndarray:
        """(n_sites,) bool: doubled coordinates inside ``box`` ((3, 2): low, high per axis), 1 B/site."""
        box = np.asarray(box, dtype=np.int64)
        n = self.shape
        out = np.ones((*n, 3), dtype=bool)
        for axis in range(3):
            c = 2 * np.arange(n[axis])[:, None] + (np.arange(3)[None, :] == axis)  # (n_axis, 3) small
            inside = (c >= box[axis, 0]) & (c <= box[axis, 1])
            shp = [1, 1, 1, 3]
            shp[axis] = n[axis]
            out &= inside.reshape(shp)
        return out.reshape(-1)

    def n_planes(self, axis: int = 0) -> int:
        return 2 * self.shape[_check_axis(axis)]

    def sites_per_plane(self, axis: int = 0) -> np.ndarray:
        """(2 n_axis,) int64: number of halide sites in each plane."""
        axis = _check_axis(axis)
        others = [self.shape[a] for a in range(3) if a != axis]
        area = others[0] * others[1]
        out = np.empty(self.n_planes(axis), dtype=np.int64)
        out[0::2] = 2 * area
        out[1::2] = area
        return out


def _check_axis(axis: int | str) -> int:
    names = {"x": 0, "y": 1, "z": 2}
    if isinstance(axis, str):
        if axis not in names:
            raise ValueError(f"unknown axis {axis!r}; valid axes are {list(names)} or 0, 1, 2")
        return names[axis]
    if axis not in (0, 1, 2):
        raise ValueError(f"unknown axis {axis!r}; valid axes are 0, 1, 2 or {list(names)}")
    return int(axis)


check_axis = _check_axis
