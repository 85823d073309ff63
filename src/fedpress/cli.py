"""The `fedpress` command.

    fedpress run CONFIG.toml [--set dotted.key=value ...] [--out DIR] [--resume | --overwrite]
                 [--engine sim|flower [--ray-address HOST:PORT]] [--tensorboard] [--quiet]
    fedpress compare DIR ... [--target-accuracy A] [--plot PATH]
    fedpress sweep CONFIG.toml --seeds 0,1,2 [--grid KEY=V1,V2 ...] [--set ...] --out DIR
    fedpress reproduce PAPER [--quick] [--seeds N] [--studies A,B] [--out DIR] [--record DIR] [--page-only]
    fedpress datasets list | verify [NAME ...] | fetch NAME ...
    fedpress partition CONFIG.toml [--set ...] [--plot PATH]
    fedpress algorithms
    fedpress --version

docs/outputs.md describes the run directory `fedpress run` writes.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
from pathlib import Path

from fedpress import __version__, sweep
from fedpress.errors import CheckpointError, ConfigError, RunDirectoryError
from fedpress.report import target_fraction


def _run(args) -> int:
    from fedpress.config import load
    from fedpress.sim import asynchronous, run

    if args.ray_address is not None and args.engine != "flower":
        print("fedpress: --ray-address needs --engine flower (the simulator does not use Ray)", file=sys.stderr)
        return 2
    if args.tensorboard and args.engine == "flower":  # run_flower takes no round callback
        print("fedpress: --tensorboard needs --engine sim", file=sys.stderr)
        return 2
    cfg = load(args.config, args.set)
    out = Path(args.out) if args.out else Path("runs") / cfg.name
    engine = asynchronous.run if cfg.is_async else run  # fedbuff, qafel, naive: the virtual-clock engine
    address = None
    if args.engine == "flower":  # asynchronous algorithms too: then on the Grid, in real time
        from fedpress.flower import run_flower  # needs the `flower` extra

        # an existing Ray cluster: --ray-address, else $RAY_ADDRESS as for any Ray driver; neither: a local Ray
        address = args.ray_address or os.environ.get("RAY_ADDRESS") or None
        if address is not None and not args.ray_address:
            print(f"fedpress: Flower on the Ray cluster at RAY_ADDRESS={address}", file=sys.stderr)
        engine = functools.partial(run_flower, ray_address=address)
    board = contextlib.nullcontext()
    if args.tensorboard:
        from fedpress.runtime.outputs import TENSORBOARD, TensorBoard

        try:
            board = TensorBoard(out / TENSORBOARD)  # before any data is loaded
        except ImportError as e:
            print(f"fedpress: {e}", file=sys.stderr)
            return 2
        engine = functools.partial(engine, on_round_end=board)
    try:
        with board:
            summary = engine(cfg, out, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
    except ConnectionError as e:  # run_flower: nothing listens at the Ray address
        if address is None:
            raise
        print(f"fedpress: {e}", file=sys.stderr)
        return 2
    mb = (summary["uplink_bytes"] + summary["downlink_bytes"]) / 1e6
    print(f"{cfg.name}: final accuracy {100 * summary['final_accuracy']:.2f}%, "
          f"best {100 * summary['best_accuracy']:.2f}%, sent {mb:,.2f} MB "
          f"(uplink {summary['uplink_compression']:.1f}x smaller than fp32) -> {out}")
    rejected = summary["rejected_updates"]
    if rejected:
        reasons = ", ".join(f"{reason} {n}" for reason, n in summary["rejections"].items())
        total = rejected + summary["accepted_updates"]
        print(f"  {rejected} of {total} updates rejected ({reasons})"
              + (f"; {summary['rounds_without_updates']} rounds aggregated none"
                 if summary["rounds_without_updates"] else ""))
    if cfg.is_async:
        objective = f", training objective {summary['final_train_objective']:.10g}" \
            if "final_train_objective" in summary else ""
        clock = "virtual time" if summary["clock"] == "virtual" else "seconds"
        print(f"  {summary['server_steps']} server steps, {summary['uploads']} uploads, {clock} "
              f"{summary['virtual_time']:.1f}, mean staleness {summary['mean_staleness']:.2f}{objective}")
    return 0


def _compare(args) -> int:
    from fedpress.report import compare, plot_compare

    print(compare(args.runs, args.target_accuracy))
    first = Path(args.runs[0])
    # a sweep's root holds its own compare.png; a run directory's goes beside it
    beside = first if (first / "sweep.json").is_file() else first.parent
    plot = Path(args.plot) if args.plot else beside / "compare.png"
    plot_compare(args.runs, plot, f_star=args.f_star)
    print(f"plot: {plot}")
    return 0


def _sweep(args) -> int:
    return sweep.main(args)


def _datasets(args) -> int:
    from fedpress import data

    if args.action == "list":
        for name in data.list_datasets():
            print(name)
        return 0
    names = args.names or data.list_datasets()
    status = 0
    for name in names:
        if args.action == "fetch":
            for path in data.fetch(name):
                print(f"{name}: {path}")
            continue
        for check in data.verify(name):
            mark = {True: "ok", False: "BAD", None: "unverified"}[check.ok]
            print(f"{name:14} {check.file:32} {mark:10} {check.path or '-'} {check.note or ''}")
            status |= check.ok is False
    return status


def _partition(args) -> int:
    from fedpress.config import load
    from fedpress.data import load as load_data
    from fedpress.data import plot_summary, summary
    from fedpress.runtime.experiment import client_partition

    cfg = load(args.config, args.set)
    ds = load_data(cfg.data.dataset)
    parts = client_partition(cfg, ds.y_train)
    print(summary(parts, ds.y_train, ds.num_classes))
    if args.plot:
        print(f"plot: {plot_summary(parts, ds.y_train, ds.num_classes, args.plot)}")
    return 0


def _algorithms(args) -> int:
    from fedpress.algorithms.registry import REGISTRY

    for name, spec in sorted(REGISTRY.items()):
        print(f"{name}: {spec.doc}")
        for key, p in spec.params.items():
            allowed = f" one of {list(p.choices)}" if p.choices else (f" {p.rule}" if p.rule else "")
            print(f"    {key} = {p.default!r}  ({p.doc};{allowed})")
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fedpress", description="Communication-efficient federated learning.")
    ap.add_argument("--version", action="version", version=f"fedpress {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="train a config and write its run directory (docs/outputs.md)")
    r.add_argument("config")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    r.add_argument("--out", help="run directory (default runs/<name>)")
    r.add_argument("--resume", action="store_true",
                   help="continue from DIR/checkpoint.pt, or extend a finished run to more rounds")
    r.add_argument("--overwrite", action="store_true", help="replace the run DIR holds (refused without it)")
    r.add_argument("--quiet", action="store_true",
                   help="no progress (a bar on a terminal, otherwise one line per round or server step)")
    r.add_argument("--tensorboard", action="store_true",
                   help="also write each row's scalars to DIR/tensorboard/ "
                        "(needs: pip install 'fedpress[tensorboard]')")
    r.add_argument("--engine", choices=("sim", "flower"), default="sim",
                   help="fedpress's simulator, or Flower's simulation engine (Ray): the same bytes and model")
    r.add_argument("--ray-address", metavar="ADDRESS",
                   help="with --engine flower: run the ClientApps on the existing Ray cluster whose head is at "
                        "ADDRESS (host:port, as `ray start --address` takes; default $RAY_ADDRESS, else a Ray "
                        "of its own on this machine)")
    r.set_defaults(func=_run)

    c = sub.add_parser("compare", help="table and plot of several runs")
    c.add_argument("runs", nargs="+")
    c.add_argument("--target-accuracy", type=target_fraction, help="also report MB and rounds to reach it (0-1)")
    c.add_argument("--plot", help="PNG path (default: compare.png beside the first run)")
    c.add_argument("--f-star", type=float, help="the optimum f* of the objective: runs without accuracy plot f - f*")
    c.set_defaults(func=_compare)

    w = sub.add_parser("sweep", help="every combination of --grid values times every seed, into one resumable "
                                     "tree, then compared with seeds grouped (docs/sweeps.md)")
    sweep.add_arguments(w)
    w.set_defaults(func=_sweep)

    from fedpress import reproduce

    r2 = sub.add_parser("reproduce", help="a paper's experiments and its page of claims beside ours "
                                          "(docs/reproductions/)")
    reproduce.add_arguments(r2)
    r2.set_defaults(func=lambda args: reproduce.main(args))

    d = sub.add_parser("datasets", help="list, verify or fetch datasets")
    d.add_argument("action", choices=["list", "verify", "fetch"])
    d.add_argument("names", nargs="*")
    d.set_defaults(func=_datasets)

    p = sub.add_parser("partition", help="print (and plot) how a config splits its data over clients")
    p.add_argument("config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--plot", help="PNG path")
    p.set_defaults(func=_partition)

    a = sub.add_parser("algorithms", help="list algorithms and their hyperparameters")
    a.set_defaults(func=_algorithms)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"fedpress: config error: {e}", file=sys.stderr)
        return 2
    except (RunDirectoryError, CheckpointError) as e:
        print(f"fedpress: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a clear one-line reason for the errors users can act on
        from fedpress.data import DatasetError

        if isinstance(e, DatasetError):
            print(f"fedpress: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
