"""CPU seconds per energy-force-stress evaluation (one MD step) of each built-in potential, one thread.

    OMP_NUM_THREADS=1 python benchmarks/potentials/cost.py

Process CPU time (time.process_time), not wall time, so that other jobs on a shared machine change it little;
on an idle machine with one thread the two agree. Si (diamond, 64 atoms) and Cu (fcc, 32 atoms): 2x2x2 conventional
cells rattled by 0.05 A; one warm-up evaluation, then the mean of three.
"""
import time

import torch
from ase.build import bulk
from mdxrd.potentials import BUILTIN, make_potential, resolve_potential

torch.set_num_threads(1)
cells = {"Si": bulk("Si", "diamond", a=5.43, cubic=True).repeat(2), "Cu": bulk("Cu", "fcc", a=3.615, cubic=True).repeat(2)}
print("| potential | " + " | ".join(f"{x} ({len(a)} atoms), CPU s/step" for x, a in cells.items()) + " |")
print("|---|" + "---|" * len(cells))
for name in BUILTIN:
    calc = make_potential(resolve_potential(name), "cpu")
    row = []
    for atoms in cells.values():
        atoms = atoms.copy()
        atoms.rattle(0.05, seed=1)
        atoms.calc = calc
        atoms.get_forces()  # warm-up
        t = time.process_time()
        for i in range(3):
            atoms.positions[0, 0] += 1e-3  # a new configuration each time: no cached result
            atoms.get_forces(), atoms.get_stress()
        row.append(f"{(time.process_time() - t) / 3:.3f}")
    print(f"| `{name}` | " + " | ".join(row) + " |", flush=True)
