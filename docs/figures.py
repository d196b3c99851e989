"""The figures of README.md and the documentation, from a finished default dataset.

Usage (after ``make dataset``)::

    python docs/figures.py [--dataset results/dataset] [--out docs/_static]

Writes ``front_page.png``: Cu's averaged NPT-Berendsen patterns at 300 and 600 K (CHGNet, the
default instrument condition) beside the static pattern of its relaxed 0 K cell, with a zoom on
the strongest reflection: the thermal shift (expansion), the Debye-Waller decay of the peak and
the diffuse background that takes its intensity.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))

from mdxrd.dataset import read_dataset  # noqa: E402


def front_page(dataset: Path, out: Path, crystal: str = "Cu") -> Path:
    df, grid, _ = read_dataset(dataset, filters=[("crystal", "=", crystal), ("instrument", "=", "default")])
    static = df[(df.kind == "static") & (df.static_cell == "relaxed")].iloc[0]
    runs = df[(df.kind == "average") & (df.ensemble == "npt_berendsen")].sort_values("temperature_K")
    fig, (ax, zoom) = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [2.2, 1]})
    y0 = np.asarray(static.intensity, float)
    peak = grid[int(np.argmax(y0))]
    window = np.abs(grid - peak) < 1.2
    for a in (ax, zoom):
        a.plot(grid if a is ax else grid[window], y0 if a is ax else y0[window], color="0.4", ls="--", lw=1.0,
               label="0 K, relaxed cell (atoms at rest)")
    colours = {300.0: "tab:blue", 600.0: "tab:red"}
    for _, run in runs.iterrows():
        y = np.asarray(run.intensity, float)
        label = f"{run.temperature_K:g} K, NPT-Berendsen (mean T {run.T_K:.0f} K)"
        ax.plot(grid, y, color=colours.get(run.temperature_K, "k"), lw=0.9, label=label)
        zoom.plot(grid[window], y[window], color=colours.get(run.temperature_K, "k"), lw=1.2)
    ax.set_xlabel("2θ (degrees, Cu Kα1)")
    ax.set_ylabel("intensity per degree, per cell")
    ax.set_title(f"{crystal}: averaged powder patterns (CHGNet MD, {int(runs.n_snapshots.iloc[0])} snapshots a run)",
                 fontsize=10)
    ax.legend(fontsize=8)
    zoom.set_xlabel("2θ (degrees)")
    zoom.set_title("strongest peak: shift, Debye–Waller decay", fontsize=9)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "front_page.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", type=Path, default=REPO / "results" / "dataset")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "_static")
    args = ap.parse_args()
    print(front_page(args.dataset, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
