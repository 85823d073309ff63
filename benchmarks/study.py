"""Run a grid of fedpress configs and write the comparison (markdown table + plot).

Each run goes to OUT/<setting>/<variant>/; a run whose summary.json exists is skipped,
so a study that was stopped continues where it left off. A run in progress holds
OUT/<setting>/<variant>.lock, so several study processes can share one grid.
"""

from __future__ import annotations

import os
from pathlib import Path

from fedpress.config import load
from fedpress.report import compare_rows, markdown_table, plot_compare
from fedpress.sim import run


def _claim(lock: Path) -> bool:
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(lock, os.O_CREAT | os.O_EXCL))
        return True
    except FileExistsError:
        return False


def run_grid(config: str, settings: dict[str, list[str]], variants: dict[str, list[str]], out: Path,
             target: float | None, figures: Path | None = None, report_only: bool = False) -> str:
    """Run every (setting, variant) pair; return the markdown tables, one per setting."""
    sections = []
    for setting, setting_overrides in settings.items():
        dirs = []
        for variant, overrides in variants.items():
            run_dir = out / setting / variant
            dirs.append(str(run_dir))
            lock = out / setting / f"{variant}.lock"
            if report_only or (run_dir / "summary.json").exists() or not _claim(lock):
                continue
            try:
                cfg = load(config, [*setting_overrides, *overrides, f"name={variant}"])
                # go on from a checkpoint if a killed study left one; else start (over) afresh
                resume = (run_dir / "checkpoint.pt").exists()
                summary = run(cfg, run_dir, resume=resume, overwrite=not resume, progress=False)
            finally:
                lock.unlink()
            print(f"{setting}/{variant}: {100 * summary['final_accuracy']:.2f}% "
                  f"up {summary['uplink_bytes'] / 1e6:.2f} MB", flush=True)
        if not all((Path(d) / "summary.json").exists() for d in dirs):
            continue  # another process is still running part of this setting
        rows = compare_rows(dirs, target)
        table = markdown_table(rows)
        if figures is not None:
            figures.mkdir(parents=True, exist_ok=True)
            plot_compare(dirs, figures / f"{setting}.png")
            table += f"\n\n![{setting}](figures/{figures.name}/{setting}.png)"  # relative to docs/
        sections.append(f"### {setting}\n\n{table}\n\n")
        Path(out / f"{setting}.md").write_text(sections[-1])
    return "\n".join(sections)
