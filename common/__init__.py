"""Helpers shared by every stage: statistics, provenance, atomic files.

``common`` imports only NumPy/SciPy (and h5py/numba for version strings);
``lattice``, ``rates``, ``kmc`` and ``md_reference`` may all import it, it
imports none of them.
"""
