"""The README's headline: `make run`'s three runs (FedAvg; Top-k 1% + fp16 EF with the dense
downlink; the same with a hidden-state Top-k 1% + fp16 downlink, seeded init) over seeds,
mean ± std of final accuracy and of uplink, downlink and total MB (to 97% and in all).

    FEDPRESS_MIRROR=../shared/datasets .venv/bin/python benchmarks/study_headline.py [--seeds 0 1 2]
"""

import argparse
import statistics
from pathlib import Path

from fedpress.report import compare_rows
from study import run_grid

TOPK_EF = ["algorithm.name=topk_ef", "algorithm.ratio=0.01", "algorithm.precision=fp16"]
VARIANTS = {
    "fedavg": [],
    "topk_ef": TOPK_EF,
    "topk_ef_down": [*TOPK_EF, "downlink.codec=top_k+fp16", "downlink.ratio=0.01", "downlink.init=seeded"],
}


def mean_std(values: list) -> str:
    """mean ± sample std of the seeds that have a value; "(k of n)" when some have none
    (a run that never reached the target)."""
    known = [v for v in values if v is not None]
    if not known:
        return "—"
    text = f"{known[0]:.2f}" if len(known) == 1 else f"{statistics.mean(known):.2f} ± {statistics.stdev(known):.2f}"
    return text if len(known) == len(values) else f"{text} ({len(known)} of {len(values)})"


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="runs/study_headline")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    settings = {f"seed{s}": [f"seed={s}"] for s in args.seeds}
    run_grid("configs/quickstart.toml", settings, VARIANTS, out, 0.97, None, args.report_only)
    keys = [("final_accuracy", 100), ("uplink_mb", 1), ("downlink_mb", 1), ("total_mb", 1),
            ("total_mb_to_target", 1), ("rounds_to_target", 1)]
    lines = ["| Run | Final acc. (%) | up MB | down MB | total MB | total MB to 97% | rounds to 97% | seeds |",
             "|:---|---:|---:|---:|---:|---:|---:|---:|"]
    for variant in VARIANTS:
        dirs = [d for d in (out / f"seed{s}" / variant for s in args.seeds) if (d / "summary.json").exists()]
        rows = compare_rows([str(d) for d in dirs], 0.97) if dirs else []
        cells = [mean_std([r[k] * scale if r[k] is not None else None for r in rows]) for k, scale in keys]
        lines.append(f"| {variant} | " + " | ".join(cells) + f" | {len(rows)} |")
    text = "\n".join(lines) + "\n"
    (out / "headline.md").write_text(text)
    print(text)
