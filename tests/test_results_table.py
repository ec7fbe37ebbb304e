"""benchmarks/results_table.py end to end on the tiny random GPT-2: cells as trials, resume, report."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from autoprompt_kit import Harness, Verbalizer, load_task
from autoprompt_kit.prompts import as_template

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "results_table.py"


@pytest.fixture(scope="module")
def table():
    spec = importlib.util.spec_from_file_location("results_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["results_table"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def _args(tiny_model_dir: str, db: Path, *extra: str) -> list[str]:
    return ["--model", tiny_model_dir, "--tasks", "mr", "--seeds", "13", "--test-examples", "24",
            "--storage", f"sqlite:///{db}", "--no-progress", *extra]


def _trials(db: Path, name: str = "results-table-quick") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{db}").get_trials()


def test_run_resume_and_report(table, tiny_model_dir, tmp_path, capsys):
    db = tmp_path / "results.db"
    methods = ["--methods", "manual", "calibrated", "protoverb", "autoprompt", "--protoverb-trials", "2",
               "--ap-iterations", "1", "--ap-candidates", "2"]
    assert table.main(_args(tiny_model_dir, db, *methods)) == 0
    trials = _trials(db)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    by_method = {t.params["method"]: t for t in trials}
    assert set(by_method) == {"manual", "calibrated", "protoverb", "autoprompt"}
    assert all(t.params["task"] == "mr" and t.params["seed"] == 13 for t in trials)
    assert all(t.user_attrs["test_n"] == 24 and t.user_attrs["seconds"] >= 0 for t in trials)
    assert (tmp_path / "results-searches.db").exists()  # ProtoVerb's inner study lives beside the table

    # The numbers are the library's: manual / calibrated equal a plain harness evaluation.
    h = Harness(tiny_model_dir, progress=False)
    test = load_task("mr", max_examples=24).test
    words = {"negative": ["terrible"], "positive": ["great"]}
    plain = h.evaluate(test, "{text_a} It was {mask}.", Verbalizer.from_words(words)).accuracy
    cal = h.evaluate(test, "{text_a} It was {mask}.", Verbalizer.from_words(words, calibration="content_free")).accuracy
    assert by_method["manual"].value == pytest.approx(plain)
    assert by_method["calibrated"].value == pytest.approx(cal)
    assert by_method["manual"].user_attrs["calibrated_accuracy"] == pytest.approx(cal)
    # AutoPrompt is scored with its found trigger tokens, not the bare trigger-slot text.
    found = as_template(by_method["autoprompt"].user_attrs["template_json"])
    assert found.num_triggers == 3 and None not in found.trigger_ids
    direct = h.evaluate(test, found, Verbalizer.from_words(words)).accuracy
    assert by_method["autoprompt"].value == pytest.approx(direct)

    # Rerun: every cell is complete, nothing runs (no model load, no new trial).
    capsys.readouterr()
    assert table.main(_args(tiny_model_dir, db, *methods)) == 0
    assert "4 already complete, 0 to run" in capsys.readouterr().out
    assert len(_trials(db)) == 4

    # Other settings are other cells: a different ProtoVerb size runs again, the frozen rows do not.
    assert table.main(_args(tiny_model_dir, db, "--methods", "manual", "protoverb", "--protoverb-trials", "1")) == 0
    assert len(_trials(db)) == 5
    # --redo runs a complete cell again (a new trial; the report reads the latest).
    assert table.main(_args(tiny_model_dir, db, "--methods", "calibrated", "--redo")) == 0
    assert [t.params["method"] for t in _trials(db)][-1] == "calibrated" and len(_trials(db)) == 6

    # Report from whatever is complete; the KPT row has no cell and is marked.
    md, png = tmp_path / "results.md", tmp_path / "results.png"
    assert table.main(_args(tiny_model_dir, db, "--methods", "manual", "calibrated", "protoverb", "autoprompt", "kpt",
                            "--protoverb-trials", "2", "--ap-iterations", "1", "--ap-candidates", "2", "--report",
                            "--out-md", str(md), "--out-png", str(png))) == 0
    text = md.read_text()
    assert f"| {table.METHODS['manual']} | {plain:.4f} |" in text  # one seed: no sd
    assert f"| {table.METHODS['kpt']} | – | – |" in text
    assert "test n = mr 24" in text and "profile `quick`" in text and "seeds 13" in text
    if importlib.util.find_spec("matplotlib") is None:  # the chart is optional: the table is still written
        assert not png.exists() and "no chart: matplotlib is not installed" in capsys.readouterr().out
    else:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "![results](results.png)" in text


def test_a_topic_task_uses_its_own_prompt_and_demonstration_rows_run(table, tiny_model_dir, tmp_path):
    """fortunes (10 topics): every row's prompt comes from the task's class names, not from
    sentiment; a demonstrations row is the demos search's best prompt scored on the same test."""
    db = tmp_path / "results.db"
    args = ["--model", tiny_model_dir, "--tasks", "fortunes", "--seeds", "13", "--test-examples", "30",
            "--storage", f"sqlite:///{db}", "--no-progress", "--methods", "manual", "demos-dev"]
    assert table.main(args) == 0
    by_method = {t.params["method"]: t for t in _trials(db)}
    assert all(t.state == TrialState.COMPLETE for t in by_method.values())
    h = Harness(tiny_model_dir, progress=False)
    task = load_task("fortunes", max_examples=30)
    words = {name: name.split("-") for name in task.label_names}  # men-women → men, women
    plain = h.evaluate(task.test, "{text_a} Category: {mask}.", Verbalizer.from_words(words)).accuracy
    assert by_method["manual"].value == pytest.approx(plain)
    demos = by_method["demos-dev"]
    assert demos.user_attrs["params"]["selection"] == "dev_selected" and 0 <= demos.value <= 1
    assert demos.user_attrs["params"]["calibration"] in ("none", "content_free")


def test_failed_and_interrupted_cells_are_retried(table, tiny_model_dir, tmp_path, monkeypatch):
    db = tmp_path / "results.db"

    def broken(self, cell, task):
        raise RuntimeError("boom")

    monkeypatch.setattr(table.Runner, "row_calibrated", broken)
    assert table.main(_args(tiny_model_dir, db, "--methods", "manual", "calibrated")) == 1
    states = {t.params["method"]: t.state for t in _trials(db)}
    assert states == {"manual": TrialState.COMPLETE, "calibrated": TrialState.FAIL}
    assert [t.user_attrs["error"] for t in _trials(db) if t.state == TrialState.FAIL] == ["RuntimeError: boom"]
    monkeypatch.undo()

    # A run killed mid-cell leaves a RUNNING trial: the next run closes it and runs the cell again.
    study = table.open_results_study(f"sqlite:///{db}", "results-table-quick")
    args = table.parse_args(_args(tiny_model_dir, db, "--methods", "calibrated"))
    table.start_trial(study, table.plan(args, tiny_model_dir)[0], "quick")
    assert table.main(_args(tiny_model_dir, db, "--methods", "manual", "calibrated")) == 0
    trials = _trials(db)
    assert [(t.params["method"], t.state) for t in trials] == [
        ("manual", TrialState.COMPLETE), ("calibrated", TrialState.FAIL), ("calibrated", TrialState.FAIL),
        ("calibrated", TrialState.COMPLETE)]


def test_parallel_workers_merge_into_one_study(table, tiny_model_dir, tmp_path, capsys):
    a, b, main = tmp_path / "a.db", tmp_path / "b.db", tmp_path / "main.db"
    base = ["--model", tiny_model_dir, "--tasks", "mr", "--test-examples", "24", "--no-progress",
            "--methods", "manual", "calibrated"]
    assert table.main([*base, "--seeds", "13", "--storage", f"sqlite:///{a}"]) == 0
    assert table.main([*base, "--seeds", "21", "--storage", f"sqlite:///{b}"]) == 0
    merge = [*base, "--seeds", "13", "21", "--storage", f"sqlite:///{main}",
             "--merge-from", f"sqlite:///{a}", f"sqlite:///{b}"]
    capsys.readouterr()
    md = tmp_path / "results.md"
    assert table.main([*merge, "--report", "--out-md", str(md), "--out-png", ""]) == 0
    assert "merged 4 finished cell trial(s)" in capsys.readouterr().out
    copied = _trials(main)
    assert sorted((t.params["seed"], t.params["method"]) for t in copied) == [
        (13, "calibrated"), (13, "manual"), (21, "calibrated"), (21, "manual")]
    by_cell = {t.user_attrs["cell"]: t.value for t in _trials(a) + _trials(b)}
    assert {t.user_attrs["cell"]: t.value for t in copied} == by_cell  # values and cell keys survive the copy
    assert "seeds 13, 21;" in md.read_text()
    # Merging again adds nothing; the run step then finds every cell complete.
    assert table.main(merge) == 0
    out = capsys.readouterr().out
    assert "merged 0 finished cell trial(s)" in out and "4 already complete, 0 to run" in out
    assert len(_trials(main)) == 4


@pytest.mark.parametrize("bad", [["--tasks", "sst2"], ["--methods", "nope"], ["--test-examples", "-1"],
                                 ["--s3-budget", "0"], ["--ap-iterations", "0"], ["--seeds", "13", "13"],
                                 ["--lmbff-top-n", "20", "--lmbff-templates", "5"]])
def test_bad_options_exit_2(table, bad, capsys):
    with pytest.raises(SystemExit) as exc:
        table.parse_args(bad)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err
