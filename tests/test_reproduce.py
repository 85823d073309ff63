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


def _tiny_paper(monkeypatch):
    """A two-arm paper on the FedComLoc MLP, 2 rounds a run: the record's code path at test size."""
    arms = (reproduce.Arm("scaffnew"), reproduce._fedcomloc_arm("com_topk10", "com"))
    study = reproduce.Study("s", "configs/fedcomloc/mnist_mlp.toml", arms, 0.5,
                            ("rounds=2", "eval_every=2", "checkpoint_every=1"), None, "two rounds")
    claim = reproduce.Claim("com within 4 points", "≈ −4", lambda r, q: reproduce.ahead(r, q, "s", "com_topk10",
                                                                                         ("scaffnew",), 2))
    paper = reproduce.Paper("tiny", "a tiny paper", "a test", (study,), (claim,))
    monkeypatch.setitem(reproduce.PAPERS, "tiny", lambda: paper)
    return paper


def _engine_calls(monkeypatch, fail_on: str | None = None) -> list[str]:
    """Count the runs the sweeps start (and fail the ones whose name is `fail_on`)."""
    from fedpress import sweep

    calls, real = [], sweep._engine

    def engine(cfg):
        def go(cfg, path, **kw):
            calls.append(f"{cfg.name}/seed{cfg.seed}")
            if cfg.name == fail_on:
                raise RuntimeError("killed")
            return real(cfg)(cfg, path, **kw)
        return go
    monkeypatch.setattr(sweep, "_engine", engine)
    return calls


def test_finished_runs_are_recorded_and_a_fresh_checkout_reruns_none_of_them(tmp_path, monkeypatch):
    """The record (docs/reproductions/runs/PAPER) outlives the runs directory: a fresh
    runs directory gets the recorded runs back, runs only the seeds the record lacks, and
    the page built from the record is the same."""
    pytest.importorskip("matplotlib")
    _tiny_paper(monkeypatch)
    record, page = tmp_path / "record", tmp_path / "docs" / "tiny.md"
    calls = _engine_calls(monkeypatch)
    reproduce.reproduce("tiny", tmp_path / "runs1", seeds=1, record=record, page=page, log=lambda _: None)
    assert sorted(calls) == ["com_topk10/seed0", "scaffnew/seed0"]
    for arm in ("scaffnew", "com_topk10"):
        kept = record / "s" / arm / "base" / "seed0"
        assert sorted(p.name for p in kept.iterdir()) == sorted(reproduce.RECORDED)  # no checkpoint, no model
        for name in reproduce.RECORDED:
            assert (kept / name).read_bytes() == (tmp_path / "runs1" / "s" / arm / "base" / "seed0" / name).read_bytes()
    first = page.read_text()
    assert "| 1 |" in first and "(1 seed)" in first

    calls.clear()  # a fresh checkout: an empty runs directory, the record committed
    reproduce.reproduce("tiny", tmp_path / "runs2", seeds=2, record=record, page=page, log=lambda _: None)
    assert sorted(calls) == ["com_topk10/seed1", "scaffnew/seed1"]  # seed 0 of each came back from the record
    assert (record / "s" / "scaffnew" / "base" / "seed1" / "summary.json").is_file()
    assert "(2 seeds)" in page.read_text()

    calls.clear()  # --page-only: the page from the record, nothing run
    again = tmp_path / "again.md"
    reproduce.reproduce("tiny", tmp_path / "runs3", record=record, page=again, run=False, log=lambda _: None)
    assert calls == [] and not (tmp_path / "runs3").exists()
    assert [ln for ln in again.read_text().splitlines() if "min" not in ln] == \
        [ln for ln in page.read_text().splitlines() if "min" not in ln]


def test_a_failed_arm_keeps_the_runs_recorded_before_it(tmp_path, monkeypatch):
    _tiny_paper(monkeypatch)
    _engine_calls(monkeypatch, fail_on="com_topk10")
    record = tmp_path / "record"
    with pytest.raises(RuntimeError, match="killed"):
        reproduce.reproduce("tiny", tmp_path / "runs", seeds=1, record=record, page=tmp_path / "p.md",
                            log=lambda _: None)
    assert (record / "s" / "scaffnew" / "base" / "seed0" / "metrics.csv").is_file()
    assert not (record / "s" / "com_topk10").exists()


def test_a_recorded_run_of_another_config_is_refused_not_mixed_in(tmp_path, monkeypatch):
    """A record made with other settings is put back, and the sweep refuses to count it as
    this config's run: it names the directory and the keys that differ."""
    from fedpress.errors import RunDirectoryError

    paper = _tiny_paper(monkeypatch)
    _engine_calls(monkeypatch)
    record = tmp_path / "record"
    reproduce.reproduce("tiny", tmp_path / "runs1", seeds=1, record=record, page=tmp_path / "p.md",
                        log=lambda _: None)
    study = paper.studies[0]
    changed = reproduce.Study(study.name, study.config, study.arms, study.target, (*study.overrides, "train.lr=0.5"),
                              None, study.scale)
    monkeypatch.setitem(reproduce.PAPERS, "tiny", lambda: reproduce.Paper("tiny", "t", "t", (changed,), ()))
    with pytest.raises(RunDirectoryError, match="another config"):
        reproduce.reproduce("tiny", tmp_path / "runs2", seeds=1, record=record, page=tmp_path / "p.md",
                            log=lambda _: None)


def test_bytes_to_target_counts_a_seed_that_never_reached_it():
    from fedpress.report import SeedStat

    def group(mb, steps):
        return {"uplink_mb_to_target": SeedStat(tuple(mb)), "rounds_to_target": SeedStat(tuple(steps))}

    def check(qafel, fedbuff, quick=False):
        results = {"c": {"qafel_4bit": group(*qafel), "fedbuff": group(*fedbuff)}}
        return reproduce.fewer_bytes_to_target(results, quick, "c", "qafel_4bit", "fedbuff", 3.0, 8.0, 10)

    fedbuff = ([50.0, 60.0, 70.0], [500.0, 600.0, 700.0])
    five = check(([10.0, 12.0, 14.0], [520.0, 610.0, 720.0]), fedbuff)
    assert five.verdict == reproduce.REPRODUCED and five.ours.startswith("5.0x") and "6,000 uploads" in five.ours
    missed = check(([10.0, None, 14.0], [520.0, None, 720.0]), fedbuff)  # 5x where reached, but one seed never did
    assert missed.verdict == reproduce.PARTLY and "2 of 3 seeds" in missed.ours and "not every seed" in missed.why
    never = check(([None] * 3, [None] * 3), fedbuff)
    assert never.verdict == reproduce.NOT_REPRODUCED and "qafel_4bit 0 of 3 seeds" in never.ours
    assert check(([10.0] * 3, [500.0] * 3), fedbuff, quick=True).verdict == reproduce.NOT_RUN
    assert check(([45.0] * 3, [500.0] * 3), fedbuff).verdict == reproduce.NOT_REPRODUCED  # 1.33x: below half of 3x
    assert reproduce.fewer_bytes_to_target({}, False, "c", "qafel_4bit", "fedbuff", 3.0, 8.0, 10).verdict == \
        reproduce.NOT_RUN


def test_both_ways_counts_a_broadcast_once_as_the_qafel_authors_do():
    from fedpress.report import SeedStat

    def group(up, down, once):
        return {"uplink_mb": SeedStat((up,) * 3), "total_mb": SeedStat((up + down,) * 3),
                "downlink_mb": SeedStat((down,) * 3), "downlink_broadcast_mb": SeedStat((once,) * 3)}

    # per receiving client 2.5x (as measured on MNIST), with the broadcast counted once 10x
    results = {"m": {"qafel_4bit": group(80.0, 420.0, 45.0), "fedbuff": group(620.0, 630.0, 630.0)}}
    v = reproduce.both_ways(results, False, "m", "qafel_4bit", "fedbuff", 5.0, 20.0)
    assert v.verdict == reproduce.REPRODUCED and v.ours.startswith("10.0x") and "2.5x fewer total MB" in v.ours
    assert "per receiving client it is partly" in v.why  # 2.5x: half the low end
    results["m"]["qafel_4bit"] = group(80.0, 520.0, 520.0)  # no frame shared: both views agree, 2.1x
    assert reproduce.both_ways(results, False, "m", "qafel_4bit", "fedbuff", 5.0, 20.0).verdict == \
        reproduce.NOT_REPRODUCED
    assert reproduce.both_ways(results, True, "m", "qafel_4bit", "fedbuff", 5.0, 20.0).verdict == reproduce.NOT_RUN
    assert reproduce.both_ways({}, False, "m", "qafel_4bit", "fedbuff", 5.0, 20.0).verdict == reproduce.NOT_RUN


def test_sparsity_held_reads_the_global_density_of_the_second_half(tmp_path):
    from fedpress.report import SeedStat

    def arm(name, densities_per_seed):
        dirs = []
        for seed, densities in enumerate(densities_per_seed):
            run = tmp_path / name / f"seed{seed}"
            run.mkdir(parents=True)
            rows = "".join(f"{r + 1},{d}\n" for r, d in enumerate(densities))
            (run / "metrics.csv").write_text("round,global_density\n" + rows)
            dirs.append(str(run))
        return {"run_dirs": dirs, "final_accuracy": SeedStat((0.7,) * len(dirs))}

    # first half ignored: a dense warm-up does not count against what training settles to
    sparse = arm("sparsyfed", [[1.0, 1.0, 0.06, 0.06], [1.0, 1.0, 0.04, 0.04]])
    regrow = arm("topk_prune", [[0.05, 0.1, 0.3, 0.4], [0.05, 0.1, 0.3, 0.4]])
    level = arm("zerofl", [[0.05, 0.05, 0.05, 0.05], [0.06, 0.06, 0.04, 0.06]])
    stat = reproduce.global_sparsity({"s": {"sparsyfed": sparse}}, "s", "sparsyfed")
    assert stat.values == pytest.approx((0.94, 0.96))
    results = {"s": {"sparsyfed": sparse, "topk_prune": regrow, "zerofl": level}}
    v = reproduce.sparsity_held(results, False, "s", "sparsyfed", ("topk_prune",), 0.85)
    assert v.verdict == reproduce.REPRODUCED and "95.00 ± 1.41% (2 seeds)" in v.ours
    v = reproduce.sparsity_held(results, False, "s", "sparsyfed", ("topk_prune", "zerofl"), 0.85)
    assert v.verdict == reproduce.PARTLY and "zerofl do not regrow" in v.why
    assert reproduce.sparsity_held(results, False, "s", "sparsyfed", ("topk_prune",), 0.97).verdict == \
        reproduce.PARTLY  # regrowth seen, but 95% is short of the bar
    assert reproduce.sparsity_held(results, False, "s", "sparsyfed", ("ef",), 0.85).verdict == reproduce.NOT_RUN


@pytest.mark.parametrize("key", sorted(reproduce.PAPERS))
def test_every_arm_of_every_study_is_a_valid_config(key, tmp_path):
    """Each arm's overrides on its study's config pass the config checks (a dry-run sweep
    plans and checks every run without running one), GPU studies included."""
    from fedpress.sweep import run_sweep

    for study in reproduce.PAPERS[key]().studies:
        for arm in study.arms:
            overrides = [f"name={arm.label}", *study.overrides, *arm.overrides]
            result = run_sweep(study.config, tmp_path / study.name / arm.label, seeds=[0, 1, 2], overrides=overrides,
                               dry_run=True, log=lambda _: None)
            assert len(result.runs) == 3


def test_a_gpu_study_is_skipped_without_a_gpu_and_its_page_says_so(tmp_path, monkeypatch):
    paper = _tiny_paper(monkeypatch)
    (study,) = paper.studies
    gpu = reproduce.Study("on_gpu", study.config, study.arms, study.target, (*study.overrides, "device=cuda"), None,
                          "a GPU study", needs_gpu=True)
    monkeypatch.setitem(reproduce.PAPERS, "tiny", lambda: reproduce.Paper("tiny", "t", "t", (study, gpu), ()))
    monkeypatch.setattr(reproduce, "_has_gpu", lambda: False)
    calls, logged = _engine_calls(monkeypatch), []
    page = reproduce.reproduce("tiny", tmp_path / "runs", seeds=1, record=tmp_path / "record",
                               page=tmp_path / "tiny.md", log=logged.append)
    assert sorted(calls) == ["com_topk10/seed0", "scaffnew/seed0"]  # the CPU study only
    assert "on_gpu: skipped, it needs a GPU (torch sees no CUDA device)" in logged
    assert not (tmp_path / "runs" / "on_gpu").exists()
    assert "## on_gpu" in page.read_text() and "Not run yet: it needs a GPU" in page.read_text()
