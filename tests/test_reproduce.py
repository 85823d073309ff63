"""`fedpress reproduce`: the --quick run of a paper through the same code path as the full one."""

import json

import pytest

from fedpress import reproduce
from fedpress.cli import main


def test_flare_quick_runs_every_arm_and_writes_its_page(tmp_path):
    """The CI-sized FLARE run: the quick study's arms run (a sweep each), the page has every
    claim with a verdict line, the study's table and figure, and says it is no verdict."""
    pytest.importorskip("matplotlib")
    assert main(["reproduce", "flare", "--quick", "--out", str(tmp_path / "runs")]) == 0
    page = (tmp_path / "runs" / "flare.md").read_text()
    paper = reproduce.PAPERS["flare"]()
    (quick,) = [s for s in paper.studies if s.quick is not None]
    for arm in quick.arms:
        run_dir = tmp_path / "runs" / quick.name / arm.label / "base" / "seed0"
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["rounds"] == 6 and summary["name"] == arm.label
    for claim in paper.claims:
        assert claim.text in page
    assert "**A --quick run**" in page and "**reproduced**" not in page
    assert page.count("**not run**") == len(paper.claims)  # a quick run gives no verdict
    assert (tmp_path / "runs" / "figures" / f"flare_{quick.name}.png").stat().st_size > 0
    # run again: every run is finished, nothing reruns, the page is the same but for the times
    before = [line for line in page.splitlines() if "min" not in line]
    assert main(["reproduce", "flare", "--quick", "--out", str(tmp_path / "runs")]) == 0
    again = (tmp_path / "runs" / "flare.md").read_text()
    assert [line for line in again.splitlines() if "min" not in line] == before


def test_verdicts_follow_the_numbers():
    from fedpress.report import SeedStat

    def group(accs):
        return {"final_accuracy": SeedStat(tuple(accs)), "rounds": SeedStat((1001.0,) * len(accs))}

    results = {"s": {"flare": group([0.80, 0.81, 0.79]), "ec": group([0.70, 0.71, 0.69]),
                     "ef21": group([0.80, 0.82, 0.79])}}
    clear = reproduce.ahead(results, False, "s", "flare", ("ec",), 1001)
    assert clear.verdict == reproduce.REPRODUCED
    within = reproduce.ahead(results, False, "s", "flare", ("ec", "ef21"), 1001)
    assert within.verdict == reproduce.PARTLY and "ef21" in within.why
    behind = reproduce.ahead(results, False, "s", "ec", ("flare", "ef21"), 1001)
    assert behind.verdict == reproduce.NOT_REPRODUCED
    short = {"s": {k: {**v, "rounds": SeedStat((80.0,) * 3)} for k, v in results["s"].items()}}
    assert "80 of the paper's 1001 rounds" in reproduce.ahead(short, False, "s", "flare", ("ec",), 1001).why
    assert reproduce.ahead(results, True, "s", "flare", ("ec",), 1001).verdict == reproduce.NOT_RUN
    assert reproduce.ahead(results, False, "t", "flare", ("ec",), 1001).verdict == reproduce.NOT_RUN
    # ahead of none, within the spread of one: the claim does not hold
    level = reproduce.ahead(results, False, "s", "ef21", ("flare",), 1001)
    assert level.verdict == reproduce.NOT_REPRODUCED and "within the seeds' spread of flare" in level.why


def test_a_claim_short_of_reproduced_says_what_would_tell_more():
    claim = reproduce.Claim("x", "y", lambda r, q: None, needed="more seeds")
    for verdict, shown in [(reproduce.PARTLY, True), (reproduce.NOT_REPRODUCED, True), (reproduce.REPRODUCED, False),
                           (reproduce.NOT_RUN, False)]:
        why = reproduce._why(claim, reproduce.Verdict("ours", verdict, "because"))
        assert why.startswith("because") and ("To know more: more seeds" in why) == shown


def test_a_rewritten_page_keeps_what_was_written_below_the_mark(tmp_path):
    page = tmp_path / "fedcomloc.md"
    page.write_text("an old table\n" + reproduce.NOTES_MARK + "\n## What we make of it\n\nhand-written\n")
    for _ in range(2):
        reproduce.write_page(reproduce.PAPERS["fedcomloc"](), tmp_path / "runs", page, False)
    text = page.read_text()
    assert "an old table" not in text and text.startswith("# Reproducing FedComLoc")
    assert text.count(reproduce.NOTES_MARK) == 1 and text.endswith("## What we make of it\n\nhand-written\n")
