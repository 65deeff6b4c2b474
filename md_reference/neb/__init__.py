"""Climbing-image NEB of halide hops (ASE) over any package potential, and ``kmc rates neb``.

Owns: :mod:`band` (frozen far field, mirror endpoints, hop sampling, DFT
path validation), :mod:`cli`. May import ``common``, ``lattice``,
``md_reference.md``; never ``.ml`` or ``kmc``.
"""
