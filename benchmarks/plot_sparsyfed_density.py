"""Global-model density and regrowth over rounds for the SparsyFed study's runs.

    .venv/bin/python benchmarks/plot_sparsyfed_density.py runs/study_sparsyfed docs/figures/sparsyfed
"""

import sys
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fedpress.report import read_summary


def column(run: Path, name: str) -> np.ndarray:
    import csv

    with open(run / "metrics.csv") as f:
        return np.array([float(r[name]) for r in csv.DictReader(f)])


def main(study: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for setting in sorted(p for p in study.iterdir() if p.is_dir()):
        for sparsity in ("0.9", "0.95", "0.99"):
            runs = [setting / f"{m}_{sparsity}" for m in ("sparsyfed", "topk", "zerofl", "flash")]
            runs = [r for r in runs if (r / "summary.json").exists()]
            if not runs:
                continue
            fig = Figure(figsize=(11, 4))
            density_ax, regrowth_ax = fig.subplots(1, 2)
            for run in runs:
                label = read_summary(run)["algorithm"]
                density_ax.plot(column(run, "round"), column(run, "global_density"), label=label)
                regrowth_ax.plot(column(run, "round"), column(run, "regrowth"), label=label)
            density_ax.axhline(1 - float(sparsity), color="grey", linestyle=":", label="target")
            density_ax.set(xlabel="Round", ylabel="Global-model density (conv/linear weights)",
                           title=f"{setting.name}, sparsity {sparsity}")
            regrowth_ax.set(xlabel="Round", ylabel="Regrowth (weights zero before, non-zero after)",
                            title="Regrowth per round")
            density_ax.legend()
            regrowth_ax.legend()
            fig.tight_layout()
            FigureCanvasAgg(fig).print_png(out / f"{setting.name}_density_{sparsity}.png")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
