"""Machine-learned potentials: Allegro/NequIP models, their datasets, training and validation.

Owns: :mod:`allegro` (model loading, AOTInductor compilation, ``fix
external`` driver), :mod:`dataset` (sampled, FPS-selected, labelled frames),
:mod:`training` (``kmc md train``), :mod:`validation` (``kmc md validate``).
May import ``common``, ``lattice``, ``md_reference.md``, ``.analysis``, ``.neb``;
torch and nequip only here. Never ``kmc``.
"""
