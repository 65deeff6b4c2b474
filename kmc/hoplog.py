"""Replay a KMC event log on atom identities: the lattice path of every halide and of every defect.

The engine keeps one displacement per site (it travels with the atom) and does
not number atoms. For estimators that need the path of each atom over many
time origins (:mod:`common.diffusion`), the event log (time, defect, from
site, to site, class, slot) is replayed on the starting state:

* vacancy hop A -> B: the atom on B moves to A (displacement ``-delta``);
* kick-out A -> B: bridge atom ``slot`` of the bridge on A moves to B
  (``+delta``), the other stays on A as a regular halide, and the new bridge on
  B holds the mover (slot 0) and B's atom (slot 1), as in the kernel.

Atoms are numbered: regular halides in site order, then the two atoms of each
starting bridge (the site's own atom first, the added one second).
"""

from __future__ import annotations

import numpy as np

from common.diffusion import HopLog
from lattice.configurations import Configuration
from lattice.defects import DefectSet
from lattice.species import KIND_VACANCY


def initial_atoms(config: Configuration, defects: DefectSet) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Atom numbering of the starting state.

    Returns
    -------
    site_atom : (n_sites,) int64
        Atom on each site (-1 on defect sites).
    bridge_atoms : (n_defects, 2) int64
        Atoms of each bridge in slot order (-1 for vacancies).
    species : (n_atoms,) int8
        Species code of every atom.
    """
    occ = np.asarray(config.occ)
    n_sites = occ.size
    is_def = np.zeros(n_sites, dtype=bool)
    is_def[np.asarray(defects.sites, dtype=np.int64)] = True
    regular = np.flatnonzero(~is_def)
    site_atom = np.full(n_sites, -1, dtype=np.int64)
    site_atom[regular] = np.arange(regular.size)
    species = [occ[regular].astype(np.int8)]
    bridge_atoms = np.full((len(defects), 2), -1, dtype=np.int64)
    nxt = regular.size
    for d in range(len(defects)):
        if defects.kinds[d] != KIND_VACANCY:
            bridge_atoms[d] = (nxt, nxt + 1)
            species.append(np.asarray(defects.bridge[d], dtype=np.int8))
            nxt += 2
    return site_atom, bridge_atoms, np.concatenate(species)


def replay(config: Configuration, defects: DefectSet, log: dict, lattice_constant_A: float,
           duration_s: float) -> tuple[HopLog, list[HopLog]]:
    """Hop logs of the atoms and of each defect from an engine event log.

    Parameters
    ----------
    config, defects : the starting state the run was built from.
    log : dict
        :meth:`kmc.simulation.Simulation.event_log` of a run that logged every
        event from its start.
    lattice_constant_A : float
    duration_s : float
        Simulated time of the run (s).

    Returns
    -------
    atoms : HopLog
        Times in s, steps in A, one entry per hop.
    defect_paths : list of HopLog
        The path of each defect as a one-"atom" hop log.
    """
    t = np.asarray(log["time_s"], dtype=np.float64)
    d = np.asarray(log["defect"], dtype=np.int64)
    a = np.asarray(log["from_site"], dtype=np.int64)
    b = np.asarray(log["to_site"], dtype=np.int64)
    slot = np.asarray(log["slot"], dtype=np.int64)
    if np.any(slot < 0):
        raise ValueError("the event log has no slot field (written before it existed); rerun the KMC")
    lat = config.lattice
    site_atom, bridge_atoms, species = initial_atoms(config, defects)
    site_atom = site_atom.copy()
    bridge_atoms = bridge_atoms.copy()
    kinds = np.asarray(defects.kinds)
    delta = lat.displacement(a, b) if t.size else np.zeros((0, 3), dtype=np.int64)
    atom = np.empty(t.size, dtype=np.int64)
    sign = np.empty(t.size, dtype=np.int64)
    for n in range(t.size):
        dd = d[n]
        if kinds[dd] == KIND_VACANCY:
            m = site_atom[b[n]]
            site_atom[a[n]] = m
            site_atom[b[n]] = -1
            sign[n] = -1
        else:
            m = bridge_atoms[dd, slot[n]]
            stay = bridge_atoms[dd, 1 - slot[n]]
            site_atom[a[n]] = stay
            bridge_atoms[dd, 0] = m
            bridge_atoms[dd, 1] = site_atom[b[n]]
            site_atom[b[n]] = -1
            sign[n] = 1
        atom[n] = m
    half = 0.5 * float(lattice_constant_A)
    steps = (delta * sign[:, None]) * half
    atoms = HopLog.from_arrays(t, atom, steps, species, duration_s)
    paths = []
    for k in range(len(defects)):
        sel = d == k
        paths.append(HopLog.from_arrays(t[sel], np.zeros(int(sel.sum()), dtype=np.int64), delta[sel] * half,
                                        np.zeros(1, dtype=np.int8), duration_s))
    return atoms, paths
