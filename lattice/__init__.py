"""Halide sublattice of cubic ABX3 perovskites: geometry, configurations, defects, hop environments.

The import package shared by every stage (``md_reference``, ``rates``, ``kmc``).
"""

from lattice.configurations import (
    BUILDERS,
    INTERFACE_TYPES,
    Configuration,
    build_configuration,
    build_heterojunction,
    build_nanodomain,
    build_pure,
    build_random_mix,
    pb_coordination,
)
from lattice.defects import PLACEMENTS, DefectSet, candidate_sites, place_defects
from lattice.sublattice import HalideSublattice

__all__ = [
    "BUILDERS",
    "INTERFACE_TYPES",
    "PLACEMENTS",
    "Configuration",
    "DefectSet",
    "HalideSublattice",
    "build_configuration",
    "build_heterojunction",
    "build_nanodomain",
    "build_pure",
    "build_random_mix",
    "candidate_sites",
    "pb_coordination",
    "place_defects",
]
