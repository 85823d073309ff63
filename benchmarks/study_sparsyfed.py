"""SparsyFed study (issue 5, CPU-sized): Fashion-MNIST and CIFAR-10 with LeNet-5, equal-size
LDA alpha 1.0 and 0.1, target sparsity 0.9 / 0.95 / 0.99: SparsyFed vs Top-K vs ZeroFL vs
FLASH vs dense FedAvg. Per-round global density, regrowth and mask IoU are in each run's
metrics.csv.

    FEDPRESS_MIRROR=../shared/datasets .venv/bin/python benchmarks/study_sparsyfed.py [--rounds 60]
"""

import argparse
from pathlib import Path

from study import run_grid

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--out", default="runs/study_sparsyfed")
    ap.add_argument("--datasets", default="fashion_mnist,cifar10")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    text = ""
    for ds in args.datasets.split(","):
        for alpha in ("1.0", "0.1"):
            base = [f"data.dataset={ds}", f"data.alpha={alpha}", f"rounds={args.rounds}"]
            variants = {"dense": ["algorithm.name=fedavg"]}
            for s in ("0.9", "0.95", "0.99"):
                sp = f"algorithm.sparsity={s}"
                variants |= {f"sparsyfed_{s}": [sp], f"topk_{s}": ["algorithm.name=topk_prune", sp],
                             f"zerofl_{s}": ["algorithm.name=zerofl", sp], f"flash_{s}": ["algorithm.name=flash", sp]}
            text += run_grid("configs/sparsyfed/fashion_mnist_lenet5.toml", {f"{ds}_alpha{alpha}": base}, variants,
                             Path(args.out), None, Path("docs/figures/sparsyfed"), args.report_only)
    print(text)
