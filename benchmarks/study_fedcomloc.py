"""FedComLoc study (issue 6): Scaffnew and its three compressed variants against FedAvg,
sparsified FedAvg and Scaffold, on FedMNIST (MLP) and FedCIFAR10 (LeNet-5), with a
Dirichlet alpha sweep, K in {10, 30, 50, 70, 90}% and r in {4, 8, 16} bits.

    FEDPRESS_MIRROR=../shared/datasets PYTHONPATH=benchmarks \\
        .venv/bin/python benchmarks/study_fedcomloc.py [--only mnist|cifar10] [--report-only]

Fixed-step baselines (FedAvg, Top-k FedAvg, Scaffold) run 5 local steps a round, the
mean of Scaffnew's Geometric(0.2) draws.
"""

import argparse
from pathlib import Path

from fedpress.report import plot_compare
from study import run_grid

FIXED = ["train.steps=5"]
BASELINES = {
    "fedavg": ["algorithm.name=fedavg", *FIXED],
    "fedavg_topk10": ["algorithm.name=topk", "algorithm.ratio=0.1", *FIXED],
    "scaffold": ["algorithm.name=scaffold", *FIXED],
    "scaffnew": [],
}


def fedcomloc(variant: str, compressor: str, **params) -> list[str]:
    return ["algorithm.name=fedcomloc", f"algorithm.variant={variant}", f"algorithm.compressor={compressor}",
            *(f"algorithm.{k}={v}" for k, v in params.items())]


def sweep(variant: str, label: str = "", **extra) -> dict[str, list[str]]:
    """K in {10..90}%, QSGD (bucket 512) at r in {4, 8, 16} bits, per-tensor min-max at r in {4, 8}."""
    label = label or variant
    out = {f"{label}_topk{k}": fedcomloc(variant, "topk", ratio=k / 100, **extra) for k in (10, 30, 50, 70, 90)}
    out |= {f"{label}_qsgd{r}": fedcomloc(variant, "qsgd", bits=r, bucket=512, **extra) for r in (4, 8, 16)}
    out |= {f"{label}_minmax{r}": fedcomloc(variant, "minmax", bits=r, **extra) for r in (4, 8)}
    return out


# com: Scaffnew's literal line, h_i += (p/gamma)(x_bar - x_hat_i) (cv_ref = "uncompressed", the default until
# issue 20); comc: the compressed control-variate reference, h_i += (p/gamma)(x_bar - C(x_hat_i)), the default now
MNIST_FULL = {**BASELINES, **sweep("com", cv_ref="uncompressed"), **sweep("global"), **sweep("local"),
              "com_topk30_qsgd8": fedcomloc("com", "topk_qsgd", ratio=0.3, bits=8, bucket=512, cv_ref="uncompressed"),
              **sweep("com", "comc", cv_ref="compressed")}
ALPHA_SUBSET = {k: MNIST_FULL[k] for k in ("fedavg", "scaffnew", "comc_topk30", "global_topk30")}
CIFAR = {**BASELINES, **{k: MNIST_FULL[k] for k in ("com_topk10", "comc_topk10", "comc_topk30", "global_topk30",
                                                    "local_topk30")}}

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=("mnist", "cifar10"))
    ap.add_argument("--mnist-target", type=float, default=0.9)
    ap.add_argument("--cifar-target", type=float, default=0.4)
    ap.add_argument("--out", default="runs/study_fedcomloc")
    ap.add_argument("--report-only", action="store_true", help="only write the tables of finished runs")
    args = ap.parse_args()
    out, figures, text = Path(args.out), Path("docs/figures/fedcomloc"), ""
    if args.only in (None, "mnist"):
        text += run_grid("configs/fedcomloc/mnist_mlp.toml", {"fedcomloc_mnist_alpha0.3": []}, MNIST_FULL, out,
                         args.mnist_target, figures, args.report_only)
        alphas = {f"fedcomloc_mnist_alpha{a}": [f"data.alpha={a}"] for a in (0.1, 1.0)}
        text += run_grid("configs/fedcomloc/mnist_mlp.toml", alphas, ALPHA_SUBSET, out, args.mnist_target, figures,
                         args.report_only)
    if args.only in (None, "cifar10"):
        text += run_grid("configs/fedcomloc/cifar10_cnn.toml", {"fedcomloc_cifar10_alpha0.3": []}, CIFAR, out,
                         args.cifar_target, figures, args.report_only)
    setting = out / "fedcomloc_mnist_alpha0.3"
    panels = {  # readable figures: a few curves each, for docs/results.md
        "mnist_topk": ["fedavg", "fedavg_topk10", "scaffold", "scaffnew", "com_topk90", "comc_topk10", "comc_topk30",
                       "global_topk30", "local_topk30"],
        "mnist_quantized": ["scaffnew", "com_qsgd16", "com_minmax8", "comc_qsgd8", "comc_minmax8", "global_qsgd16",
                            "local_qsgd8", "local_minmax8"],
    }
    for name, runs in panels.items():
        dirs = [setting / r for r in runs if (setting / r / "summary.json").exists()]
        if dirs:
            plot_compare(dirs, figures / f"{name}.png")
    print(text)
