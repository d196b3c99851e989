"""Print the potentials' comparison against experiment (markdown) from one or more workflow directories.

    python benchmarks/potentials/table.py DIR [DIR ...]

Each DIR is a working directory of ``snakemake --configfile benchmarks/potentials/config.yaml`` (README.md
here); a unit is read from the first DIR that has it. Per crystal and potential: a at 0 K from the E(V)
third-order Birch-Murnaghan fit of the relax stage (a = V0^(1/3): cubic conventional cells only), B0 from
the same fit, a at 293 K and alpha_L = (da/dT)/a from the window-mean NPT volumes at 300 and 600 K (the
straight line through the two), B_iso from the QC table, and the wall time per MD step from the MD log.
The noise of a mean lattice constant is the larger of the standard error of 5 block means and half the
difference of the window's two halves (a drift the window still holds).
"""
import glob
import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOTS = [Path(d) for d in sys.argv[1:]]
POTS = ["chgnet", "chgnet-r2scan", "sevennet-0", "sevennet-l3i5", "sevennet-mf-0", "sevennet-mf-0-r2scan"]
XTALS = ["Si", "NaCl", "Cu", "Al", "Au", "KCl"]
sheet = pd.read_csv(Path(__file__).with_name("crystals.tsv"), sep="\t", comment="#").set_index("name")


def unit(x, p):
    return x if p == "chgnet" else f"{x}@{p}"


def find(rel):
    for r in ROOTS:
        if (r / rel).exists():
            return r / rel
    return None


MD = yaml.safe_load(Path(__file__).with_name("config.yaml").read_text())["md"]


def md_a(x, u, T):
    f = find(f"results/md/{u}/npt_berendsen/{T}K/r0/thermo.csv")
    if f is None:
        return None
    d = np.loadtxt(f, delimiter=",", skiprows=1)
    if len(d) < MD["n_steps"] + 1:
        return None  # unfinished
    cells = np.prod([int(n) for n in sheet.loc[x, "supercell"].split("x")])  # conventional cells in the supercell
    a = (d[MD["n_equil"]:, 7] / cells) ** (1 / 3)
    means = np.array([b.mean() for b in np.array_split(a, 5)])
    se = max(means.std(ddof=1) / np.sqrt(5), abs(a[: len(a) // 2].mean() - a[len(a) // 2:].mean()) / 2)
    return a.mean(), se


rows = {}
for x in XTALS:
    for p in POTS:
        u = unit(x, p)
        v = {}
        ref = find(f"results/reference/{u}/reference.json")
        if ref:
            r = json.loads(ref.read_text())
            v["a0"] = (r["eos"]["V0_A3"] ** (1 / 3), sheet.loc[x, "a_exp_A"])  # cubic conventional cells: a = V0^(1/3)
            v["B0"] = (r["eos"]["B0_GPa"], sheet.loc[x, "bulk_modulus_exp_GPa"])
        qc = find(f"results/qc/{u}/qc.parquet")
        if qc:
            t = pd.read_parquet(qc).set_index("check")
            for check in t.index:
                if re.match(r"B_iso_\w+_vs_experiment", check):
                    v["B " + check.split("_")[2]] = (t.loc[check, "value"], t.loc[check, "reference"])
        a3, a6 = md_a(x, u, 300), md_a(x, u, 600)
        if a3 and a6:
            slope = (a6[0] - a3[0]) / 300
            v["aT"] = (a3[0] + (293 - 300) * slope, sheet.loc[x, "a_exp_A"])
            v["alpha"] = (slope / v["aT"][0], sheet.loc[x, "alpha_exp_per_K"])
            v["alpha_noise"] = np.hypot(a3[1], a6[1]) / (a3[0] * 300)
            v["aT_noise"] = a3[1]
        log = None
        for r in ROOTS:
            for f in glob.glob(str(r / "logs/md/*.log")):
                for line in Path(f).read_text().splitlines():
                    m = re.search(rf"\[results/md/{re.escape(u)}/npt_berendsen/300K/r0\] .*: (\d+) steps of (\d+) atoms in ([\d.]+) s", line)
                    if m:
                        log = (float(m.group(3)) / int(m.group(1)) / 2, int(m.group(2)))  # a lockstep batch of 2 runs
        if log:
            v["step"] = log
        rows[(x, p)] = v

fmt = {"a0": ("$a$ 0 K, E(V) fit (Å)", "{:.4f}", 1), "aT": ("$a$ NPT 293 K (Å)", "{:.4f}", 1),
       "alpha": ("$\\alpha_L$ 300–600 K (10⁻⁶/K)", "{:.1f}", 1e6), "B0": ("$B_0$ (GPa)", "{:.1f}", 1)}
hdr = "| | experiment | " + " | ".join(POTS) + " |"
print(hdr); print("|" + "---|" * (len(POTS) + 2))
for x in XTALS:
    keys = ["a0", "aT", "alpha", "B0"] + sorted({k for p in POTS for k in rows[(x, p)] if k.startswith("B ")})
    for k in keys:
        name, f, scale = fmt.get(k, (f"$B$({k[2:]}) 293 K (Å²)", "{:.3f}", 1))
        refs = [rows[(x, p)][k][1] for p in POTS if k in rows[(x, p)]]
        if not refs:
            continue
        cells = []
        for p in POTS:
            if k not in rows[(x, p)]:
                cells.append("–"); continue
            val, ref = rows[(x, p)][k]
            s = f.format(val * scale) + f" ({100 * (val / ref - 1):+.{1 if k in ('alpha',) else 2 if k in ('a0', 'aT') else 1}f} %)"
            if k == "alpha" and "alpha_noise" in rows[(x, p)]:
                s = f.format(val * scale) + f" ± {rows[(x, p)]['alpha_noise'] * 1e6:.1f}"
            if k == "aT" and "aT_noise" in rows[(x, p)]:
                s = s.replace(" (", f" ± {rows[(x, p)]['aT_noise']:.4f} (")
            cells.append(s)
        print(f"| {x} {name} | {(f if k in ('a0', 'aT') else '{:.3g}').format(refs[0] * scale)} | " + " | ".join(cells) + " |")
print()
print("wall s per MD step per run (atoms) as logged, under the machine's load at the time (cost.py: CPU time):")
print("| | " + " | ".join(POTS) + " |")
print("|" + "---|" * (len(POTS) + 1))
print("| s per MD step per run (atoms) | " + " | ".join(
    ", ".join(f"{x} {rows[(x, p)]['step'][0]:.3f} ({rows[(x, p)]['step'][1]})" for x in XTALS if "step" in rows[(x, p)]) or "–"
    for p in POTS) + " |")
