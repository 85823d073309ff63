"""Compressing both directions (issue 18): a hidden-state compressed downlink with
catch-up beside the dense fp32 downlink, on the default experiment (FedAvg, Top-k 1% EF)
and on FedSparQ's and FLARE's MNIST setups. Total bytes (uplink + downlink per receiving
client, first downloads included) to the targets.

    FEDPRESS_MIRROR=../shared/datasets .venv/bin/python benchmarks/study_downlink.py [--report-only]
"""

import argparse
from pathlib import Path

from fedpress.report import compare_rows, markdown_table
from study import run_grid

TOPK_EF = ["algorithm.name=topk_ef", "algorithm.ratio=0.01", "algorithm.precision=fp16"]
SEEDED = "downlink.init=seeded"


def hidden(codec: str, **keys) -> list[str]:
    return [f"downlink.codec={codec}", SEEDED, *(f"downlink.{k}={v}" for k, v in keys.items())]


QUICKSTART = {
    "fedavg": [],
    "topk_ef": TOPK_EF,
    "topk_ef_down_topk1_fp16": [*TOPK_EF, *hidden("top_k+fp16", ratio=0.01)],
    "topk_ef_down_topk2_fp16": [*TOPK_EF, *hidden("top_k+fp16", ratio=0.02)],
    "topk_ef_down_topk3_fp16": [*TOPK_EF, *hidden("top_k+fp16", ratio=0.03)],
    "topk_ef_down_topk5_fp16": [*TOPK_EF, *hidden("top_k+fp16", ratio=0.05)],
    "topk_ef_down_topk10_fp16": [*TOPK_EF, *hidden("top_k+fp16", ratio=0.1)],
    "topk_ef_down_qsgd15": [*TOPK_EF, *hidden("qsgd", levels=15)],
    "topk_ef_down_affine8": [*TOPK_EF, *hidden("minmax_affine", bits=8)],
    "topk_ef_down_topk5_fp16_whole": [*TOPK_EF, "downlink.codec=top_k+fp16", "downlink.ratio=0.05"],
}
FEDSPARQ = {"fedsparq": [], "fedsparq_down_topk5_fp16": hidden("top_k+fp16", ratio=0.05),
            "fedsparq_down_topk20_fp16": hidden("top_k+fp16", ratio=0.2), "fedsparq_down_qsgd15": hidden("qsgd"),
            "fedsparq_down_affine8": hidden("minmax_affine", bits=8)}
FLARE = {"flare": [], "flare_down_topk1_fp16": hidden("top_k+fp16", ratio=0.01),
         "flare_down_topk5_fp16": hidden("top_k+fp16", ratio=0.05)}

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="runs/study_downlink")
    ap.add_argument("--report-only", action="store_true", help="only write the tables of finished runs")
    args = ap.parse_args()
    out, figures = Path(args.out), Path("docs/figures/downlink")
    text = run_grid("configs/quickstart.toml", {"quickstart": []}, QUICKSTART, out, 0.97, figures, args.report_only)
    quick = [str(out / "quickstart" / v) for v in QUICKSTART]
    if all((Path(d) / "summary.json").exists() for d in quick):
        text += "\n### quickstart, to 98%\n\n" + markdown_table(compare_rows(quick, 0.98)) + "\n"
    text += run_grid("configs/fedsparq/mnist.toml", {"fedsparq_mnist": ["rounds=40"]}, FEDSPARQ, out, 0.95,
                     figures, args.report_only)
    text += run_grid("configs/flare/mnist_cnn.toml", {"flare_mnist_cnn_all10": ["rounds=80"]}, FLARE, out, 0.7,
                     figures, args.report_only)
    (out / "report.md").write_text(text)
    print(text)
