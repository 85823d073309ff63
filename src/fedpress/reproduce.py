"""`fedpress reproduce PAPER`: a paper's experiments as shipped configs, run through the
sweep machinery (resumable, seeds grouped), and one page with the paper's claims beside
ours and a verdict for each.

    fedpress reproduce flare [--quick] [--seeds N] [--studies a,b] [--out DIR] [--page PATH]

A paper is data: its studies (a config, the arms compared, the overrides that make it the
paper's setup, what `--quick` changes) in the order they are worth the CPU time, and its
claims, each a function of the grouped results that returns what we measured and a
verdict (reproduced / partly / not reproduced / not run) with the reason. Each arm of a
study is one sweep tree, OUT/<study>/<arm>/ (`fedpress.sweep`); a run that was stopped
resumes, and the page is rewritten after every study, so it always shows what finished.
`--quick` is a CI-sized run of the same code path: its page says it is no verdict.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedpress.report import group_markdown_table, group_rows, plot_compare
from fedpress.sweep import run_sweep

REPRODUCED, PARTLY, NOT_REPRODUCED, NOT_RUN = "reproduced", "partly", "not reproduced", "not run"


@dataclass(frozen=True)
class Arm:
    """One line of a study: a label and the overrides that make it (`--set` texts)."""

    label: str
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class Study:
    """One experiment of the paper: a config, its arms, the target accuracy of its tables,
    the overrides every arm shares, and what `--quick` adds on top (fewer rounds)."""

    name: str
    config: str
    arms: tuple[Arm, ...]
    target: float | None = None
    overrides: tuple[str, ...] = ()
    quick: tuple[str, ...] | None = None  # None: not part of a --quick run
    scale: str = ""  # how it differs from the paper's setup, in words


@dataclass(frozen=True)
class Verdict:
    ours: str  # what we measured, in the claim's terms
    verdict: str  # REPRODUCED | PARTLY | NOT_REPRODUCED | NOT_RUN
    why: str  # the reason: what differs, what would be needed to know more


Results = Mapping[str, Mapping[str, Mapping[str, Any]]]  # study -> arm -> group_rows() dict


@dataclass(frozen=True)
class Claim:
    text: str  # the paper's claim, from its abstract or summary
    paper: str  # the paper's figure
    check: Callable[[Results, bool], Verdict]  # (results, quick) -> what we measured and the verdict


@dataclass(frozen=True)
class Paper:
    key: str
    title: str
    source: str  # where the claims come from
    studies: tuple[Study, ...]
    claims: tuple[Claim, ...]


# ---------------------------------------------------------------------------- measures


def stat(results: Results, study: str, arm: str, key: str = "final_accuracy"):
    """The SeedStat of `key` for one arm, or None when that arm has no finished run."""
    group = results.get(study, {}).get(arm)
    return None if group is None else group[key]


def pct(s) -> str:
    """A SeedStat of accuracies as "97.12 ± 0.31% (3 seeds)"."""
    if s is None or s.mean is None:
        return "—"
    spread = f" ± {100 * s.std:.2f}" if s.std is not None and s.count > 1 else ""
    return f"{100 * s.mean:.2f}{spread}% ({s.count} seed{'s' * (s.count != 1)})"


def rounds_of(results: Results, study: str) -> int | None:
    """The rounds the study's runs went (the smallest over its arms)."""
    counts = [g["rounds"].mean for g in results.get(study, {}).values() if g["rounds"].mean is not None]
    return int(min(counts)) if counts else None


def ahead(results: Results, quick: bool, study: str, leader: str, others: Sequence[str], paper_rounds: int
          ) -> Verdict:
    """Whether `leader` ends above each of `others` by more than the seeds' spread."""
    lead = stat(results, study, leader)
    rest = {o: stat(results, study, o) for o in others}
    if lead is None or lead.mean is None or any(s is None or s.mean is None for s in rest.values()):
        return Verdict("—", NOT_RUN, f"{study} has not run for every arm")
    ours = f"{leader} {pct(lead)}; " + "; ".join(f"{o} {pct(s)}" for o, s in rest.items())
    margin = {o: lead.mean - s.mean for o, s in rest.items()}
    noise = {o: math.hypot(lead.std or 0.0, s.std or 0.0) for o, s in rest.items()}
    clear = [o for o in others if margin[o] > noise[o]]
    behind = [o for o in others if margin[o] < -noise[o]]
    if quick:
        return Verdict(ours, NOT_RUN, "a --quick run: a check of the code path, no verdict")
    rounds = rounds_of(results, study)
    why = []
    if rounds is not None and rounds < paper_rounds:
        why.append(f"{rounds} of the paper's {paper_rounds} rounds")
    if lead.count < 3:
        why.append(f"{lead.count} seed{'s' * (lead.count != 1)}: the spread is not known well")
    if len(clear) == len(others):
        return Verdict(ours, REPRODUCED, "; ".join(why) or "ahead of each by more than the seeds' spread")
    if behind and len(behind) == len(others):
        return Verdict(ours, NOT_REPRODUCED, "; ".join([f"behind {', '.join(behind)}", *why]))
    unclear = ", ".join(o for o in others if o not in clear)
    return Verdict(ours, PARTLY, "; ".join([f"clearly ahead of {', '.join(clear) or 'none'}",
                                            f"within the spread of or behind {unclear}", *why]))


# ---------------------------------------------------------------------------- FLARE


FLARE_KEEP = ("algorithm.keep_percent=0.001",)
FLARE_ARMS = (
    Arm("flare"),
    Arm("ec", ("algorithm.name=ec", *FLARE_KEEP)),
    Arm("ec_prox", ("algorithm.name=ec_prox", *FLARE_KEEP, "algorithm.tau0=0.05", "algorithm.c=1.1")),
    Arm("ef21", ("algorithm.name=ef21", *FLARE_KEEP)),
    Arm("fedavg", ("algorithm.name=fedavg",)),
)
FLARE_FEW = tuple(a for a in FLARE_ARMS if a.label in ("flare", "ec", "ef21", "fedavg"))
FLARE_QUICK = ("rounds=6", "eval_every=6", "checkpoint_every=3")
FLARE_ROUNDS = 1001


def _flare_study(model: str, working: int, quick: bool = False) -> Study:
    config = f"configs/flare/mnist_{model}.toml"
    return Study(f"{model}_{working}of10", config, FLARE_ARMS if working == 10 else FLARE_FEW, 0.7,
                 ("checkpoint_every=20", f"clients_per_round={working}"), FLARE_QUICK if quick else None,
                 "the paper's setup (spec §6.4), seed 0 as the reference code's")


def _flare_gap_grows(model: str) -> Callable[[Results, bool], Verdict]:
    def check(results: Results, quick: bool) -> Verdict:
        gaps = {}
        for working in (7, 5, 3):
            lead, ec = stat(results, f"{model}_{working}of10", "flare"), stat(results, f"{model}_{working}of10", "ec")
            if lead is not None and ec is not None and lead.mean is not None and ec.mean is not None:
                gaps[working] = lead.mean - ec.mean
        if len(gaps) < 2:
            return Verdict("—", NOT_RUN, f"fewer than two of the {model} 7/5/3-of-10 studies have run")
        ours = "; ".join(f"{w} of 10: FLARE − EC = {100 * g:+.2f} points"
                         for w, g in sorted(gaps.items(), reverse=True))
        if quick:
            return Verdict(ours, NOT_RUN, "a --quick run: a check of the code path, no verdict")
        ordered = [gaps[w] for w in sorted(gaps, reverse=True)]  # 7, 5, 3 working
        if all(g > 0 for g in ordered) and all(b >= a for a, b in zip(ordered, ordered[1:], strict=False)):
            return Verdict(ours, REPRODUCED, "the gap grows as fewer clients work")
        if any(g > 0 for g in ordered):
            return Verdict(ours, PARTLY, "FLARE ahead in some settings, but the gap does not grow steadily")
        return Verdict(ours, NOT_REPRODUCED, "FLARE is not ahead of EC with fewer clients working")
    return check


def flare() -> Paper:
    # in the order the CPU time is worth it (issue 20): 3 of 10 working first
    studies = (_flare_study("cnn", 3, quick=True), _flare_study("cnn", 7), _flare_study("cnn", 5),
               _flare_study("fc", 3), _flare_study("fc", 5), _flare_study("fc", 7), _flare_study("cnn", 10))
    claims = (
        Claim("At R = 0.001% (99.999% sparsity) per tensor on the MNIST CNN, FLARE ends ahead of EC, EC + FedProx "
              "and EF21 with all 10 clients working", "FLARE ahead",
              lambda r, q: ahead(r, q, "cnn_10of10", "flare", ("ec", "ec_prox", "ef21"), FLARE_ROUNDS)),
        Claim("With 3 of 10 clients working, FLARE ends ahead of EC and EF21 (MNIST CNN)", "FLARE ahead",
              lambda r, q: ahead(r, q, "cnn_3of10", "flare", ("ec", "ef21"), FLARE_ROUNDS)),
        Claim("FLARE's lead over EC grows as fewer clients work (7, 5, 3 of 10), MNIST CNN", "grows",
              _flare_gap_grows("cnn")),
        Claim("The same on the MNIST FC model (3 of 10 working)", "FLARE ahead",
              lambda r, q: ahead(r, q, "fc_3of10", "flare", ("ec", "ef21"), FLARE_ROUNDS)),
    )
    return Paper("flare", "FLARE: accumulated-error regularisation for extreme sparsification (spec §6)",
                 "the paper's abstract and summary, as quoted in issue 20", studies, claims)


PAPERS: dict[str, Callable[[], Paper]] = {"flare": flare}


# ---------------------------------------------------------------------------- running and the page


def study_dirs(out: Path, study: Study) -> dict[str, Path]:
    return {arm.label: out / study.name / arm.label for arm in study.arms}


def collect(out: Path, studies: Sequence[Study]) -> dict[str, dict[str, dict[str, Any]]]:
    """The grouped results of every arm that has finished runs (seeds pooled)."""
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for study in studies:
        for label, path in study_dirs(out, study).items():
            if path.is_dir() and any(path.glob("*/seed*/summary.json")):
                (group,) = group_rows([path], study.target)
                results.setdefault(study.name, {})[label] = group
    return results


def reproduce(key: str, out: str | Path, *, quick: bool = False, seeds: int = 3, studies: Sequence[str] = (),
              page: str | Path | None = None, log: Callable[[str], None] = print) -> Path:
    """Run the paper's studies (or the named ones; --quick: the quick one) into `out`, then
    write its page (default: docs/reproductions/KEY.md, or OUT/KEY.md for --quick).
    Returns the page's path."""
    if key not in PAPERS:
        raise ValueError(f"no paper {key!r}; papers: {', '.join(PAPERS)}")
    paper, out = PAPERS[key](), Path(out)
    chosen = [s for s in paper.studies if (s.quick is not None if quick else (not studies or s.name in studies))]
    unknown = set(studies) - {s.name for s in paper.studies}
    if unknown:
        raise ValueError(f"{key}: no study {', '.join(sorted(unknown))}; studies: "
                         f"{', '.join(s.name for s in paper.studies)}")
    if page is None:  # a --quick page is no result: it stays beside its runs
        page = out / f"{key}.md" if quick else Path("docs/reproductions") / f"{key}.md"
    page = Path(page)
    started = time.perf_counter()
    for study in chosen:
        for arm in study.arms:
            overrides = [f"name={arm.label}", *study.overrides, *arm.overrides,
                         *((study.quick or ()) if quick else ())]
            run_sweep(study.config, out / study.name / arm.label, seeds=list(range(1 if quick else seeds)),
                      overrides=overrides, log=log)
        write_page(paper, out, page, quick, time.perf_counter() - started)
    return write_page(paper, out, page, quick, time.perf_counter() - started)


def write_page(paper: Paper, out: Path, page: Path, quick: bool, seconds: float) -> Path:
    results = collect(out, paper.studies)
    verdicts = [(c, c.check(results, quick)) for c in paper.claims]
    figures = page.parent / "figures"
    lines = [f"# Reproducing {paper.title}", "",
             f"Claims from {paper.source}. Command: `fedpress reproduce {paper.key}"
             f"{' --quick' if quick else ''} --out {out}`; this call took {seconds / 60:.1f} min, and the runs "
             f"themselves {_run_minutes(out, paper.studies):.1f} min of wall time in all (their summaries).", ""]
    if quick:
        lines += ["**A --quick run**: a few rounds of one study, to check the code path. No verdict.", ""]
    lines += ["| Claim | Paper | Ours (mean ± std over seeds) | Verdict | Why |", "|:---|:---|:---|:---|:---|"]
    lines += [f"| {c.text} | {c.paper} | {v.ours} | **{v.verdict}** | {v.why} |" for c, v in verdicts]
    lines.append("")
    for study in paper.studies:
        arms = results.get(study.name, {})
        lines += [f"## {study.name} (`{study.config}` {' '.join(f'--set {o}' for o in study.overrides)})", ""]
        if not arms:
            lines += ["Not run yet.", ""]
            continue
        dirs = [study_dirs(out, study)[label] for label in arms]
        lines += [study.scale + ".", "", group_markdown_table([arms[label] for label in arms]), ""]
        figure = figures / f"{paper.key}_{study.name}.png"
        plot_compare(dirs, figure)
        lines += [f"![{study.name}](figures/{figure.name})", ""]
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text("\n".join(lines) + "\n")
    return page


def _run_minutes(out: Path, studies: Sequence[Study]) -> float:
    import json

    total = 0.0
    for study in studies:
        for path in (out / study.name).glob("*/*/seed*/summary.json"):
            total += float(json.loads(path.read_text()).get("wall_seconds") or 0.0)
    return total / 60


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paper", choices=sorted(PAPERS))
    parser.add_argument("--quick", action="store_true", help="a CI-sized run of the same code path (no verdict)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per arm (default 3)")
    parser.add_argument("--studies", default="", help="comma-separated study names (default: all, in order)")
    parser.add_argument("--out", default=None, help="runs directory (default runs/reproduce/PAPER)")
    parser.add_argument("--page", default=None, help="the page to write (default docs/reproductions/PAPER.md)")


def main(args: argparse.Namespace) -> int:
    out = args.out or f"runs/reproduce/{args.paper}"
    studies = [s for s in args.studies.split(",") if s]
    page = reproduce(args.paper, out, quick=args.quick, seeds=args.seeds, studies=studies, page=args.page)
    print(f"page: {page}")
    return 0
