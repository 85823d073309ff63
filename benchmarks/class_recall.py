"""Per-class recall of finished runs' final models on the test set.

Behind the FLARE page's plateau reading (docs/reproductions/flare.md): a run whose accuracy
sits on a plateau about one class wide predicts some classes never.

    FEDPRESS_MIRROR=../shared/datasets .venv/bin/python benchmarks/class_recall.py RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import sys

import torch
from safetensors.torch import load_file

from fedpress.config import load
from fedpress.runtime.experiment import setup


def recall(run: str) -> tuple[float, list[float], int]:
    """Test accuracy, recall of each class, and how many classes get over 1% of the predictions."""
    exp = setup(load(f"{run}/config.toml"))
    module = exp.model.module
    module.load_state_dict(load_file(f"{run}/model.safetensors"), strict=False)
    module.eval()
    x, y = exp.dataset.x_test, exp.dataset.y_test
    with torch.no_grad():
        pred = torch.cat([module(x[i : i + 1000]).argmax(1) for i in range(0, len(x), 1000)])  # (n,)
    classes = exp.dataset.num_classes
    per_class = [float((pred[y == c] == c).float().mean()) for c in range(classes)]
    predicted = torch.bincount(pred, minlength=classes)
    return float((pred == y).float().mean()), per_class, int((predicted > 0.01 * len(y)).sum())


def main() -> None:
    torch.set_num_threads(1)
    for run in sys.argv[1:]:
        accuracy, per_class, predicted = recall(run)
        print(f"{run}: accuracy {accuracy:.4f}; recall " + " ".join(f"{r:.2f}" for r in per_class)
              + f"; classes predicted (> 1%): {predicted}")


if __name__ == "__main__":
    main()
