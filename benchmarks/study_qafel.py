"""QAFeL studies (spec §5.5): logistic-regression suboptimality, and uploads/MB to a target accuracy.

    python benchmarks/study_qafel.py logreg [--steps N] [--report-only]
    python benchmarks/study_qafel.py mnist  [--concurrency 100 500 1000] [--variants ...] [--steps N] [--target A]
                                            [--report-only]

logreg: FedBuff, QAFeL (QSGD s_c = 4, s_s = 8) and Naive on LIBSVM mushrooms
(configs/qafel/logreg_mushrooms.toml); f* from a float64 full-batch solver (L-BFGS, then
Newton steps until the gradient norm is below 1e-10); f(x) - f* against server steps.
mnist: FedBuff and QAFeL with min-max b in {8, 4, 2} bits both ways
(configs/qafel/mnist_simple_convnet.toml) at the given concurrencies: uploads, server steps
and MB (up; down counted once per step and per receiving client; initial download) until
the target test accuracy.

Runs go to runs/qafel/<study>/<setting>/<variant>/ and are resumed (a run with a summary is
skipped; a lock file lets several processes share a grid); tables go to runs/qafel/*.md and
plots to docs/drafts/img/.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
from pathlib import Path

import torch

from fedpress.config import load
from fedpress.sim import asynchronous
from study import _claim

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "runs" / "qafel"
IMG = ROOT / "docs" / "drafts" / "img"
LOGREG = ROOT / "configs" / "qafel" / "logreg_mushrooms.toml"
MNIST = ROOT / "configs" / "qafel" / "mnist_simple_convnet.toml"


def run_variant(config: Path, run_dir: Path, overrides: list[str], report_only: bool) -> None:
    lock = run_dir.parent / f"{run_dir.name}.lock"
    if report_only or (run_dir / "summary.json").exists() or not _claim(lock):
        return
    try:
        cfg = load(config, [*overrides, f"name={run_dir.name}"])
        # go on from a checkpoint if a killed study left one; else start (over) afresh
        resume = (run_dir / "checkpoint.pt").exists()
        summary = asynchronous.run(cfg, run_dir, resume=resume, overwrite=not resume, progress=False)
    finally:
        lock.unlink()
    print(
        f"{run_dir.relative_to(OUT)}: {summary['server_steps']} steps, {summary['uploads']} uploads, "
        f"up {summary['uplink_bytes'] / 1e6:.2f} MB",
        flush=True,
    )


def metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------- logistic regression


def optimum(config: Path) -> dict[str, float]:
    """f* of the l2-regularised logistic loss over all rows (what QAFeL measures), and over the
    rows the clients hold (the contiguous split leaves some out), in float64."""
    from fedpress.sim.asynchronous import setup

    exp = setup(load(config))
    lam = exp.config.train.weight_decay
    a = torch.cat([exp.dataset.x_train.double(), torch.ones(len(exp.dataset.y_train), 1, dtype=torch.float64)], 1)
    y = exp.dataset.y_train.double()
    used = torch.cat(list(exp.parts))

    def solve(rows: torch.Tensor) -> tuple[float, float]:
        ar, yr = a[rows], y[rows]

        def f(w):
            z = ar @ w
            return torch.nn.functional.softplus(z).mean() - (yr * z).mean() + 0.5 * lam * w.square().sum()

        w = torch.zeros(a.shape[1], dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS(
            [w],
            lr=1,
            max_iter=5000,
            tolerance_grad=1e-12,
            tolerance_change=0,
            history_size=50,
            line_search_fn="strong_wolfe",
        )

        def closure():
            opt.zero_grad()
            value = f(w)
            value.backward()
            return value

        opt.step(closure)
        w = w.detach()
        for _ in range(20):  # Newton polish: d = 113, the Hessian is small
            g = torch.func.grad(f)(w)
            if float(g.norm()) < 1e-13:
                break
            w = w - torch.linalg.solve(torch.func.hessian(f)(w), g)
        g = float(torch.func.grad(f)(w).norm())
        if g >= 1e-10:
            raise RuntimeError(f"solver stopped at gradient norm {g:.2e}")
        return float(f(w)), g, w

    f_star, g_star, w_star = solve(torch.arange(len(y)))
    f_used, g_used, w_used = solve(used)

    def f_all(w):
        z = a @ w
        return float(torch.nn.functional.softplus(z).mean() - (y * z).mean() + 0.5 * lam * w.square().sum())

    engine = asynchronous.training_objective(exp, w_star.float())["train_objective"]
    return {
        "f_star": f_star,
        "grad_norm": g_star,
        "rows": len(y),
        "rows_used": len(used),
        "floor": f_all(w_used) - f_star,
        "engine_objective_at_w_star_fp32": engine,
    }


def logreg(args) -> str:
    settings = {
        "fedbuff": ["algorithm.name=fedbuff"],
        "qafel": ["algorithm.name=qafel"],
        "naive": ["algorithm.name=naive"],
    }
    steps = [f"rounds={args.steps}"] if args.steps else []
    for variant, overrides in settings.items():
        run_variant(LOGREG, OUT / "logreg" / variant, [*overrides, *steps], args.report_only)
    opt = optimum(LOGREG)
    lines = [
        f"f* = {opt['f_star']:.15f} (float64 L-BFGS + Newton on all {opt['rows']} rows, gradient norm "
        f"{opt['grad_norm']:.1e}); the clients hold {opt['rows_used']} rows, whose optimum is "
        f"{opt['floor']:.2e} above f* on the full objective (the floor of any method here); the engine's "
        f"objective at w* rounded to fp32: {opt['engine_objective_at_w_star_fp32']:.15f}.",
        "",
    ]
    curves = {}
    for variant in settings:
        run_dir = OUT / "logreg" / variant
        if not (run_dir / "summary.json").exists():
            continue
        rows = [r for r in metrics(run_dir) if r["train_objective"]]
        curves[variant] = (
            [int(r["round"]) for r in rows],
            [float(r["train_objective"]) - opt["f_star"] for r in rows],
            metrics(run_dir)[-1],
        )
    marks = [m for m in (100, 500, 1000, 2000, 5000, 10000, 20000) if any(m in c[0] for c in curves.values())]
    lines.append(
        "| method | "
        + " | ".join(f"f - f* @ {m}" for m in marks)
        + " | min f - f* | MB up | MB down (per client) | MB down (once) | of which initial |"
    )
    lines.append("|---" * (len(marks) + 6) + "|")
    for variant, (rounds, sub, last) in curves.items():
        at = dict(zip(rounds, sub, strict=True))
        kinds = ("uplink", "downlink", "downlink_broadcast", "initial_downlink")
        mb = [int(last[f"cum_{k}_bytes"]) / 1e6 for k in kinds]
        lines.append(
            f"| {variant} | "
            + " | ".join(f"{at[m]:.3e}" if m in at else "" for m in marks)
            + f" | {min(sub):.3e} | "
            + " | ".join(f"{v:.3f}" for v in mb)
            + " |"
        )
    if curves:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        IMG.mkdir(parents=True, exist_ok=True)
        fig, ax = plt.subplots(figsize=(6, 4))
        for variant, (rounds, sub, _) in curves.items():
            ax.plot(rounds, [max(s, 1e-12) for s in sub], label=variant)
        ax.set(xlabel="server step", ylabel="f(x) - f*", yscale="log", title="mushrooms, l2 logistic regression")
        ax.legend()
        fig.tight_layout()
        fig.savefig(IMG / "qafel_logreg_suboptimality.png", dpi=120)
        plt.close(fig)
        lines += ["", "![suboptimality](img/qafel_logreg_suboptimality.png)"]
    text = "\n".join(lines) + "\n"
    (OUT / "logreg.md").write_text(text)
    return text


# ---------------------------------------------------------------------------- neural network


MNIST_VARIANTS = {
    "fedbuff": ["algorithm.name=fedbuff"],
    **{
        f"qafel_{b}bit": [
            "algorithm.name=qafel",
            "algorithm.client_quantizer=minmax_affine",
            "algorithm.server_quantizer=minmax_affine",
            f"algorithm.client_bits={b}",
            f"algorithm.server_bits={b}",
        ]
        for b in (8, 4, 2)
    },
}


def to_target(run_dir: Path, target: float) -> dict[str, float | None]:
    rows = metrics(run_dir)
    for r in rows:
        if r["test_accuracy"] and float(r["test_accuracy"]) >= target:
            return {
                "steps": int(r["round"]),
                "uploads": int(r["uploads"]),
                "time": float(r["virtual_time"]),
                "up": int(r["cum_uplink_bytes"]) / 1e6,
                "down": int(r["cum_downlink_bytes"]) / 1e6,
                "once": int(r["cum_downlink_broadcast_bytes"]) / 1e6,
                "initial": int(r["cum_initial_downlink_bytes"]) / 1e6,
            }
    return {}


def mnist(args) -> str:
    sections = []
    for c in args.concurrency:
        setting = f"c{c}"
        for variant, overrides in MNIST_VARIANTS.items():
            if args.variants and variant not in args.variants:
                continue
            run_variant(
                MNIST,
                OUT / "mnist" / setting / variant,
                [*overrides, f"async.concurrency={c}", *([f"rounds={args.steps}"] if args.steps else [])],
                args.report_only,
            )
        dirs = {
            v: OUT / "mnist" / setting / v
            for v in MNIST_VARIANTS
            if (OUT / "mnist" / setting / v / "summary.json").exists()
        }
        if not dirs:
            continue
        lines = [
            f"### concurrency {c}, target {100 * args.target:.0f}% test accuracy",
            "",
            "| method | best acc | uploads to target | server steps | MB up | MB down, per client "
            "| MB down, broadcast once | of which initial download | uplink message B | broadcast B |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for variant, run_dir in dirs.items():
            rows = metrics(run_dir)
            best = max(float(r["test_accuracy"]) for r in rows if r["test_accuracy"])
            hit = to_target(run_dir, args.target)
            up_msg = int(rows[-1]["uplink_bytes"]) // max(int(rows[-1]["clients"]) + int(rows[-1]["dropped_stale"]), 1)
            bcast = int(rows[-1]["downlink_broadcast_bytes"]) - int(rows[-1]["initial_downlink_bytes"])
            cells = (
                [
                    str(hit["uploads"]),
                    str(hit["steps"]),
                    f"{hit['up']:.1f}",
                    f"{hit['down']:.1f}",
                    f"{hit['once']:.2f}",
                    f"{hit['initial']:.2f}",
                ]
                if hit
                else ["not reached"] + [""] * 5
            )
            broadcast = "-" if variant == "fedbuff" else f"{bcast:,}"
            lines.append(f"| {variant} | {100 * best:.2f}% | " + " | ".join(cells) + f" | {up_msg:,} | {broadcast} |")
        _plot_nn(dirs, IMG / f"qafel_mnist_{setting}.png", args.target)
        lines += ["", f"![{setting}](img/qafel_mnist_{setting}.png)", ""]
        sections.append("\n".join(lines))
    text = "\n".join(sections) + "\n"
    (OUT / "mnist.md").write_text(text)
    return text


def _plot_nn(dirs: dict[str, Path], path: Path, target: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    views = (
        ("uploads", lambda r: int(r["uploads"])),
        (
            "MB up + down, broadcast counted once",
            lambda r: (int(r["cum_uplink_bytes"]) + int(r["cum_downlink_broadcast_bytes"])) / 1e6,
        ),
        (
            "MB up + down, per receiving client",
            lambda r: (int(r["cum_uplink_bytes"]) + int(r["cum_downlink_bytes"])) / 1e6,
        ),
    )
    for variant, run_dir in dirs.items():
        rows = [r for r in metrics(run_dir) if r["test_accuracy"]]
        acc = [100 * float(r["test_accuracy"]) for r in rows]
        for ax, (_, x) in zip(axes, views, strict=True):
            ax.plot([x(r) for r in rows], acc, label=variant)
    for ax, (xlabel, _) in zip(axes, views, strict=True):
        ax.axhline(100 * target, color="gray", lw=0.5)
        ax.set(xlabel=xlabel, ylabel="test accuracy (%)")
        ax.legend()
    for ax in axes[1:]:
        ax.set_xscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("study", choices=["logreg", "mnist"])
    ap.add_argument("--steps", type=int, help="server steps (default: the config's rounds)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[100])
    ap.add_argument("--target", type=float, default=0.90)
    ap.add_argument("--variants", nargs="+", choices=list(MNIST_VARIANTS), help="mnist: run only these")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    if not math.isfinite(args.target) or not 0 < args.target <= 1:
        raise SystemExit("--target must be in (0, 1]")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    print(logreg(args) if args.study == "logreg" else mnist(args))


if __name__ == "__main__":
    main()
