"""From trajectories to numbers: defect tracking, labelled hop events, Eq. 1, layer/bridge/mixing statistics.

Owns: :mod:`tracker` (site assignment, defect paths, hop events and exposure
per class), :mod:`observables` (Eq. 1 MSDs and fits, occupancy profiles,
bridge statistics, mixing counts), :mod:`analyze` (``kmc md analyze``). May
import ``common``, ``lattice``, ``md_reference.md``; never ``.neb``, ``.ml`` or ``kmc``.
"""
