"""Slow, obvious NumPy reference of the residence-time KMC (a test oracle).

This module runs the same algorithm as :func:`kmc._kernels.run_events`, event
for event and with the same random-number protocol, but shares none of the
kernel's bookkeeping tricks:

* atoms are tracked **by identity** in an atom table (species, site, unwrapped
  displacement in units of a/2); a bridge holds two atom ids;
* every event recomputes **every** channel of every defect from scratch;
* the hop class comes from :func:`lattice.environment.classify_hop` (the single
  definition of the environment) and the energy change from the **global**
  energy :func:`rates.ratelaw.total_energy` (plus the cluster expansion's
  :func:`lattice.cluster_expansion.total_energy_ce`) evaluated before and after the hop
  on a copy of the configuration (no local delta-energy formulas);
* event selection uses ``np.cumsum`` + ``np.searchsorted`` over the flat list
  of all channels instead of a sum tree.

Channel order (shared with the kernel): defects by index, then channel
``c = slot * 8 + k`` (``k`` the neighbour slot of the destination in
:attr:`lattice.sublattice.HalideSublattice.neighbour_table`, ``slot`` the
bridge atom that moves; vacancies use slot 0 only). A channel whose
destination holds a vacancy or a bridge is blocked (rate 0, class -1).

Random-number protocol (one event), uniforms consumed in order from a buffer:

1. ``R = np.sum(rates)``;
2. ``u1 = buf[p]; p += 1; dt = -log(1 - u1) / R``; if ``t + dt > t_stop``
   then ``t = t_stop`` and the run stops (the event is not executed);
3. ``t += dt; u2 = buf[p]; p += 1``; the event is the first channel whose
   cumulative rate exceeds ``u2 * R``.

Hops
----
* Vacancy on A, channel ``k``: the atom on ``B = N(A)[k]`` moves to A
  (displacement ``-offset``), the vacancy moves to B.
* Bridge on A holding atoms (slot 0, slot 1), channel ``slot * 8 + k``: atom
  ``slot`` (the mover) moves A -> B (displacement ``+offset``); the other atom
  stays on A as a single halide; the mover and the atom that was on B form the
  new bridge on B with slot 0 = mover, slot 1 = target.

The defect's own displacement adds ``+offset`` in both cases.

Oriented bridges (:mod:`lattice.orientation`), written here with vectors
rather than the kernel's tables: a bridge keeps its orientation axis ``w`` and
the side (+1/-1 along ``w``) of its slot-0 atom. A kick-out is open only when
the moving atom's side equals the hop's component along ``w``; afterwards the
axis is the type of the site left and the mover (new slot 0) sits on the side
of that site. Channels 16 and 17 turn the bridge to the other perpendicular
axis with the slot-0 atom on the + or - side, 18 swaps the sides; their rates
are the catalog's rotation rates. Rotations are not written to the event log.
"""

from __future__ import annotations

import math

import numpy as np

from lattice.cluster_expansion import kernel_tables, total_energy_ce
from lattice.configurations import Configuration
from lattice.defects import DefectSet
from lattice.environment import classify_hop
from lattice.orientation import initial_orientation, rotation_class
from lattice.species import BR, BRIDGE, I, KIND_INTERSTITIAL, KIND_VACANCY, VACANCY
from lattice.sublattice import NEIGHBOUR_OFFSETS
from rates.catalog import MissingRateError, RateCatalog
from rates.ratelaw import K_B_EV, total_energy

# Stop reasons (same numbering as the kernel's STOP_* codes).
STOP_TIME = 0
STOP_EVENTS = 1
STOP_BUFFER = 2
STOP_FROZEN = 3

N_CHANNELS = 20
N_KICK_CHANNELS = 16


class ReferenceKMC:
    """Brute-force residence-time KMC over an explicit atom table.

    Parameters
    ----------
    config : Configuration
        I/Br occupation before defects.
    defects : DefectSet
        Vacancies and split interstitials (bridge atom 0 is the site's own atom).
    catalog : RateCatalog
        Hop barriers, prefactors and energy model.
    temperature_K : float
        Temperature (K).

    Attributes
    ----------
    occ : (n_sites,) int8
        Site states (0 I, 1 Br, 2 vacancy, 3 bridge).
    site_atom : (n_sites,) int64
        Id of the single atom on each site; -1 on vacancies and bridges.
    atom_species : (n_atoms,) int64
        Species code of each atom.
    atom_site : (n_atoms,) int64
        Site of each atom (both atoms of a bridge sit on the bridge site).
    atom_disp : (n_atoms, 3) int64
        Unwrapped displacement since the start, units of a/2.
    def_kind : (n,) int64, def_site : (n,) int64
        Defect kinds and sites.
    def_atoms : (n, 2) int64
        Atom ids of each bridge (slot 0, slot 1); -1 for vacancies.
    def_disp : (n, 3) int64
        Unwrapped displacement of each defect, units of a/2.
    time_s : float
        Simulated time (s).
    """

    def __init__(self, config: Configuration, defects: DefectSet, catalog: RateCatalog,
                 temperature_K: float) -> None:
        if not temperature_K > 0:
            raise ValueError(f"temperature_K must be > 0, got {temperature_K}")
        if len(defects) == 0:
            raise ValueError("the reference KMC needs at least one defect")
        self.lattice = config.lattice
        self.nbr = np.asarray(self.lattice.neighbour_table, dtype=np.int64)
        self.dims = self.lattice.dims
        self.catalog_name = catalog.name
        self.e_kra = np.array(catalog.E_KRA_eV, dtype=np.float64)
        self.prefactor = np.array(catalog.prefactor_Hz, dtype=np.float64)
        self.J = np.array(catalog.pair_eV, dtype=np.float64)
        self.e_bridge = np.array(catalog.bridge_eV, dtype=np.float64)
        self.ce_tables = kernel_tables(catalog.cluster_expansion)
        self.beta = 1.0 / (K_B_EV * float(temperature_K))
        self.oriented = bool(catalog.oriented)
        self.rot_rates = np.asarray(catalog.rotation_rates_Hz(temperature_K), dtype=np.float64)

        n_sites = self.lattice.n_sites
        base = np.asarray(config.occ, dtype=np.int64)
        kinds = np.asarray(defects.kinds, dtype=np.int64)
        sites = np.asarray(defects.sites, dtype=np.int64)
        n_def = sites.size
        if np.unique(sites).size != n_def:
            raise ValueError("defect sites must be distinct")

        self.occ = base.astype(np.int8).copy()
        self.site_atom = np.full(n_sites, -1, dtype=np.int64)
        species: list[int] = []
        atom_site: list[int] = []
        defect_of_site = {int(sites[d]): d for d in range(n_def)}
        self.def_kind = kinds.copy()
        self.def_site = sites.copy()
        self.def_atoms = np.full((n_def, 2), -1, dtype=np.int64)
        for site in range(n_sites):
            d = defect_of_site.get(site)
            if d is None:
                self.site_atom[site] = len(species)
                species.append(int(base[site]))
                atom_site.append(site)
            elif kinds[d] == KIND_VACANCY:
                self.occ[site] = VACANCY
            elif kinds[d] == KIND_INTERSTITIAL:
                self.occ[site] = BRIDGE
                for slot in range(2):
                    sp = int(defects.bridge[d, slot])
                    if sp not in (I, BR):
                        raise ValueError(f"bridge of defect {d} has invalid species {sp}")
                    self.def_atoms[d, slot] = len(species)
                    species.append(sp)
                    atom_site.append(site)
            else:
                raise ValueError(f"unknown defect kind {kinds[d]} for defect {d}")
        self.atom_species = np.array(species, dtype=np.int64)
        self.atom_site = np.array(atom_site, dtype=np.int64)
        self.atom_disp = np.zeros((self.atom_species.size, 3), dtype=np.int64)
        self.def_disp = np.zeros((n_def, 3), dtype=np.int64)
        self.def_axis = np.full(n_def, -1, dtype=np.int64)
        self.def_side0 = np.zeros(n_def, dtype=np.int64)
        if self.oriented:
            for d in range(n_def):
                if kinds[d] == KIND_INTERSTITIAL:
                    o = initial_orientation(int(sites[d]), d)
                    self.def_axis[d] = o // 2
                    self.def_side0[d] = 1 if o % 2 else -1
        self.rot_count = np.zeros(6, dtype=np.int64)
        self.time_s = 0.0
        self.n_events = 0
        self._log: list[tuple[float, int, int, int, int]] = []
        self._residence: list[tuple[int, int, float]] = []  # (defect-type code, site left, time spent)
        self._t_enter = np.zeros(n_def, dtype=np.float64)

    # -- queries ------------------------------------------------------------
    @property
    def n_defects(self) -> int:
        return int(self.def_kind.size)

    def bridge_n_br(self, def_atoms: np.ndarray | None = None) -> np.ndarray:
        """Number of Br atoms of each bridge (interstitials only, defect order)."""
        atoms = self.def_atoms if def_atoms is None else def_atoms
        inter = self.def_kind == KIND_INTERSTITIAL
        return (self.atom_species[atoms[inter]] == BR).sum(axis=1).astype(np.int64)

    def energy(self, occ: np.ndarray | None = None, def_atoms: np.ndarray | None = None) -> float:
        """Global configurational energy (eV) by brute force over all bonds and all CE clusters."""
        occ = self.occ if occ is None else occ
        return (total_energy(occ, self.nbr, self.bridge_n_br(def_atoms), self.J, self.e_bridge)
                + total_energy_ce(occ, self.dims, self.ce_tables))

    def species_totals(self) -> np.ndarray:
        """(2,) int64: number of I and Br atoms in the atom table."""
        return np.bincount(self.atom_species, minlength=2)[:2].astype(np.int64)

    def squared_displacements(self) -> np.ndarray:
        """(2,) int64: sum of |d|^2 over the atoms of each species, (a/2)^2."""
        d2 = np.einsum("ij,ij->i", self.atom_disp, self.atom_disp)
        return np.array([d2[self.atom_species == sp].sum() for sp in (I, BR)], dtype=np.int64)

    def site_displacements(self) -> np.ndarray:
        """(n_sites, 3) int64: displacement of the single atom on each site (0 on defect sites)."""
        out = np.zeros((self.occ.size, 3), dtype=np.int64)
        has = self.site_atom >= 0
        out[has] = self.atom_disp[self.site_atom[has]]
        return out

    def bridge_displacements(self) -> np.ndarray:
        """(n, 2, 3) int64: displacements of the bridge atoms (slot order; 0 for vacancies)."""
        out = np.zeros((self.n_defects, 2, 3), dtype=np.int64)
        for d in range(self.n_defects):
            if self.def_kind[d] == KIND_INTERSTITIAL:
                out[d] = self.atom_disp[self.def_atoms[d]]
        return out

    def bridge_species(self) -> np.ndarray:
        """(n, 2) int64: species of the bridge atoms (-1 for vacancies)."""
        out = np.full((self.n_defects, 2), -1, dtype=np.int64)
        inter = self.def_kind == KIND_INTERSTITIAL
        out[inter] = self.atom_species[self.def_atoms[inter]]
        return out

    def event_log(self) -> dict:
        """Executed events: ``time_s`` float64, ``defect``, ``from_site``, ``to_site``, ``cls`` int64."""
        rows = self._log
        return {
            "time_s": np.array([r[0] for r in rows], dtype=np.float64),
            "defect": np.array([r[1] for r in rows], dtype=np.int64),
            "from_site": np.array([r[2] for r in rows], dtype=np.int64),
            "to_site": np.array([r[3] for r in rows], dtype=np.int64),
            "cls": np.array([r[4] for r in rows], dtype=np.int64),
        }

    def defect_type_code(self, d: int) -> int:
        """0 for a vacancy, 1 + number of Br atoms for a bridge (II, IBr, BrBr)."""
        if self.def_kind[d] == KIND_VACANCY:
            return 0
        return 1 + int(np.count_nonzero(self.atom_species[self.def_atoms[d]] == BR))

    def residence_time(self, axis: int) -> np.ndarray:
        """(4, n_planes) float64: time (s) spent by vacancies / II / IBr / BrBr bridges on each plane.

        Counts only completed stays (up to each defect's last hop), like the kernel's ``occ_time``
        before a flush.
        """
        out = np.zeros((4, self.lattice.n_planes(axis)), dtype=np.float64)
        planes = self.lattice.plane_index(axis)
        for code, site, dt in self._residence:
            out[code, planes[site]] += dt
        return out

    def plane_counts(self, axis: int) -> np.ndarray:
        """(2, n_planes) int64: number of I and Br atoms (bridge atoms included) on each plane."""
        planes = self.lattice.plane_index(axis)[self.atom_site]
        out = np.zeros((2, self.lattice.n_planes(axis)), dtype=np.int64)
        for sp in (I, BR):
            out[sp] = np.bincount(planes[self.atom_species == sp], minlength=out.shape[1])
        return out

    def check_consistency(self) -> None:
        """Raise ``RuntimeError`` if the atom table, the site states and the defects disagree."""
        for site in range(self.occ.size):
            st = int(self.occ[site])
            a = int(self.site_atom[site])
            if st in (I, BR):
                if a < 0 or self.atom_species[a] != st or self.atom_site[a] != site:
                    raise RuntimeError(f"site {site}: state {st} but atom {a}")
            elif a >= 0:
                raise RuntimeError(f"defect site {site} holds single atom {a}")
        for d in range(self.n_defects):
            site = int(self.def_site[d])
            want = VACANCY if self.def_kind[d] == KIND_VACANCY else BRIDGE
            if self.occ[site] != want:
                raise RuntimeError(f"defect {d} on site {site} but the site state is {self.occ[site]}")
            if want == BRIDGE and np.any(self.atom_site[self.def_atoms[d]] != site):
                raise RuntimeError(f"bridge atoms of defect {d} are not on its site {site}")
        n_defect_sites = np.count_nonzero(self.occ >= VACANCY)
        if n_defect_sites != self.n_defects:
            raise RuntimeError(f"{n_defect_sites} defect sites for {self.n_defects} defects")

    # -- one hop ------------------------------------------------------------
    def _hop_geometry(self, d: int, c: int) -> tuple[int, int, int, int, np.ndarray]:
        slot, k = divmod(int(c), 8)
        site_a = int(self.def_site[d])
        site_b = int(self.nbr[site_a, k])
        offset = NEIGHBOUR_OFFSETS[site_a % 3, k].astype(np.int64)
        return slot, k, site_a, site_b, offset

    def _after(self, d: int, c: int) -> tuple[np.ndarray, np.ndarray]:
        """Site states and bridge atoms after hop (d, c), on copies."""
        slot, _, site_a, site_b, _ = self._hop_geometry(d, c)
        occ = self.occ.copy()
        atoms = self.def_atoms.copy()
        if self.def_kind[d] == KIND_VACANCY:
            occ[site_a] = occ[site_b]
            occ[site_b] = VACANCY
        else:
            mover = self.def_atoms[d, slot]
            remaining = self.def_atoms[d, 1 - slot]
            occ[site_a] = self.atom_species[remaining]
            atoms[d] = (mover, self.site_atom[site_b])
            occ[site_b] = BRIDGE
        return occ, atoms

    def orientation(self, d: int) -> int:
        """Orientation code ``2 w + (side of slot 0 > 0)`` of bridge ``d``, -1 when it has none."""
        if self.def_axis[d] < 0:
            return -1
        return int(2 * self.def_axis[d] + (1 if self.def_side0[d] > 0 else 0))

    def _aligned(self, d: int, slot: int, offset: np.ndarray) -> bool:
        """Whether bridge atom ``slot`` of oriented defect ``d`` kicks out along its own side for this offset."""
        w = int(self.def_axis[d])
        side = int(self.def_side0[d]) if slot == 0 else -int(self.def_side0[d])
        return int(offset[w]) == side

    def channel_class(self, d: int, c: int) -> int:
        """Class of channel ``c`` of defect ``d`` (rotations: their rotation class), or -1 when closed."""
        if c >= N_KICK_CHANNELS:
            if self.def_kind[d] != KIND_INTERSTITIAL or self.def_axis[d] < 0 or c > 18:
                return -1
            return rotation_class(0 if c < 18 else 1, int(self.bridge_species()[d].sum()))
        slot, k, site_a, site_b, offset = self._hop_geometry(d, c)
        if self.def_kind[d] == KIND_INTERSTITIAL and self.def_axis[d] >= 0 and not self._aligned(d, slot, offset):
            return -1
        dest = int(self.occ[site_b])
        if dest not in (I, BR):
            return -1
        if self.def_kind[d] == KIND_VACANCY:
            if slot != 0:
                return -1
            return classify_hop(self.occ, self.dims, site_a, k, KIND_VACANCY, dest)
        mover = int(self.atom_species[self.def_atoms[d, slot]])
        other = int(self.atom_species[self.def_atoms[d, 1 - slot]])
        return classify_hop(self.occ, self.dims, site_a, k, KIND_INTERSTITIAL, mover, other)

    def channel_delta_energy(self, d: int, c: int, e_now: float | None = None) -> float:
        """Energy change (eV) of hop (d, c) from the global energy before and after."""
        e0 = self.energy() if e_now is None else e_now
        occ, atoms = self._after(d, c)
        return self.energy(occ, atoms) - e0

    def rate_of(self, cls: int, de: float) -> float:
        """``prefactor * exp(-beta * max(E_KRA + dE/2, dE, 0))`` (Hz)."""
        e_kra = self.e_kra[cls]
        if math.isnan(e_kra) or math.isnan(self.prefactor[cls]):
            raise MissingRateError([cls], self.catalog_name)
        ea = max(e_kra + 0.5 * de, de, 0.0)
        return float(self.prefactor[cls] * math.exp(-self.beta * ea))

    def channel_rates(self) -> tuple[np.ndarray, np.ndarray]:
        """Rates (Hz) and classes of every channel, from scratch.

        Returns
        -------
        rates : (n, N_CHANNELS) float64
        classes : (n, N_CHANNELS) int64, -1 for blocked, closed or unused channels
        """
        n = self.n_defects
        rates = np.zeros((n, N_CHANNELS), dtype=np.float64)
        classes = np.full((n, N_CHANNELS), -1, dtype=np.int64)
        e0 = self.energy()
        for d in range(n):
            for c in range(N_CHANNELS):
                cls = self.channel_class(d, c)
                if cls < 0:
                    continue
                classes[d, c] = cls
                if c >= N_KICK_CHANNELS:
                    r = self.rot_rates[cls - rotation_class(0, 0)]
                    if math.isnan(r):
                        raise MissingRateError([cls], self.catalog_name)
                    rates[d, c] = r
                    continue
                rates[d, c] = self.rate_of(cls, self.channel_delta_energy(d, c, e0))
        return rates, classes

    def apply_rotation(self, d: int, c: int) -> None:
        """Execute rotation channel ``c`` (16, 17: 90 degrees to the + / - side, 18: flip) of bridge ``d``."""
        if self.def_kind[d] != KIND_INTERSTITIAL or self.def_axis[d] < 0:
            raise ValueError(f"defect {d} has no orientation to rotate")
        s = int(self.def_site[d]) % 3
        w = int(self.def_axis[d])
        if c == 18:
            self.def_side0[d] = -self.def_side0[d]
        elif c in (16, 17):
            self.def_axis[d] = 3 - s - w
            self.def_side0[d] = 1 if c == 16 else -1
        else:
            raise ValueError(f"channel {c} is not a rotation")

    def apply_hop(self, d: int, c: int) -> tuple[int, int]:
        """Execute channel ``c`` of defect ``d``; return (from_site, to_site)."""
        slot, _, site_a, site_b, offset = self._hop_geometry(d, c)
        if self.occ[site_b] not in (I, BR):
            raise ValueError(f"channel {c} of defect {d} is blocked: site {site_b} holds a defect")
        if self.def_kind[d] == KIND_VACANCY:
            if slot != 0:
                raise ValueError("vacancies have only slot-0 channels")
            atom = int(self.site_atom[site_b])
            self.atom_site[atom] = site_a
            self.atom_disp[atom] -= offset
            self.site_atom[site_a] = atom
            self.site_atom[site_b] = -1
            self.occ[site_a] = self.atom_species[atom]
            self.occ[site_b] = VACANCY
        else:
            mover = int(self.def_atoms[d, slot])
            remaining = int(self.def_atoms[d, 1 - slot])
            target = int(self.site_atom[site_b])
            self.site_atom[site_a] = remaining
            self.occ[site_a] = self.atom_species[remaining]
            self.atom_site[mover] = site_b
            self.atom_disp[mover] += offset
            self.site_atom[site_b] = -1
            self.occ[site_b] = BRIDGE
            self.def_atoms[d] = (mover, target)
            if self.def_axis[d] >= 0:
                axis_a = site_a % 3  # the new pair lies along the hop's component on A's axis
                self.def_axis[d] = axis_a
                self.def_side0[d] = -int(offset[axis_a])  # the mover on the side of A
        self.def_site[d] = site_b
        self.def_disp[d] += offset
        return site_a, site_b

    # -- the run loop ---------------------------------------------------------
    def run(self, ubuf: np.ndarray, upos: int = 0, t_stop: float = math.inf,
            max_events: int = 2**62) -> tuple[int, int]:
        """Run events until ``t_stop``, ``max_events`` events, or the buffer ends.

        Returns
        -------
        status : int
            ``STOP_TIME``, ``STOP_EVENTS``, ``STOP_BUFFER`` or ``STOP_FROZEN``.
        upos : int
            Position of the next unused uniform in ``ubuf``.
        """
        ubuf = np.asarray(ubuf, dtype=np.float64)
        done = 0
        while True:
            if done >= max_events:
                return STOP_EVENTS, upos
            if upos + 2 > ubuf.size:
                return STOP_BUFFER, upos
            rates, classes = self.channel_rates()
            flat = rates.ravel()
            total = float(np.sum(flat))
            if not total > 0.0:
                return STOP_FROZEN, upos
            u1 = ubuf[upos]
            upos += 1
            dt = -math.log(1.0 - u1) / total
            if self.time_s + dt > t_stop:
                self.time_s = float(t_stop)
                return STOP_TIME, upos
            self.time_s += dt
            u2 = ubuf[upos]
            upos += 1
            cum = np.cumsum(flat)
            j = int(np.searchsorted(cum, u2 * total, side="right"))
            if j >= flat.size:  # rounding: fall back to the last open channel
                j = int(np.flatnonzero(flat > 0.0)[-1])
            d, c = divmod(j, N_CHANNELS)
            cls = int(classes[d, c])
            if c >= N_KICK_CHANNELS:
                self.apply_rotation(d, c)
                self.rot_count[cls - rotation_class(0, 0)] += 1
                self.n_events += 1
                done += 1
                continue
            self._residence.append((self.defect_type_code(d), int(self.def_site[d]),
                                    self.time_s - self._t_enter[d]))
            self._t_enter[d] = self.time_s
            site_a, site_b = self.apply_hop(d, c)
            self._log.append((self.time_s, d, site_a, site_b, cls))
            self.n_events += 1
            done += 1


__all__ = ["ReferenceKMC", "STOP_TIME", "STOP_EVENTS", "STOP_BUFFER", "STOP_FROZEN", "N_CHANNELS"]
