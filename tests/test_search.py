"""The search backbone: studies, resume after kill -9, best.json schema, CLI, PostgreSQL workers, dashboard."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import optuna
import pytest
from conftest import run_cli as cli
from optuna.trial import TrialState

from autoprompt_kit import AutoPromptError, Harness, load_task
from autoprompt_kit.methods import SelectConfig, TemplateSelection
from autoprompt_kit.search import SearchContext, SearchJob, get_searcher, run_search
from autoprompt_kit.search._runner import QUEUED, fill_queue

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "search_spaces" / "select_sentiment.yaml"
SCHEMA = json.loads((ROOT / "autoprompt_kit" / "schemas" / "best.schema.json").read_text())
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def search_args(model: str, storage: str, study: str, trials: int, out: Path | None = None, *extra: str) -> list[str]:
    args = ["search", "select", "--space", str(SPACE), "--model", model, "--storage", storage, "--study", study,
            "--trials", str(trials), "--max-examples", "160", "--shots", "8", "--quiet", *extra]
    return args + (["--out", str(out)] if out else ["--test-split", "", "--out", ""])


def complete_params(storage: str, study: str) -> list[str]:
    trials = optuna.load_study(study_name=study, storage=storage).get_trials(states=(TrialState.COMPLETE,))
    return [json.dumps(t.params, sort_keys=True) for t in trials]


def test_search_writes_a_valid_best_json_and_evaluate_rescoring_it(tiny_model_dir, tmp_path):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    out = tmp_path / "best.json"
    proc = cli(*search_args(tiny_model_dir, storage, "sel", 5, out))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    jsonschema.validate(doc, SCHEMA)
    assert doc["method"] == "select" and doc["study"]["name"] == "sel" and doc["study"]["trials"]["complete"] == 5
    values = [c["value"] for c in doc["candidates"]]
    assert doc["metrics"]["dev"]["accuracy"] == max(values) and len(values) == 5
    assert doc["metrics"]["test"]["n"] == 160 and doc["model"]["kind"] == "causal"
    assert "best prompt:" in proc.stdout and "test  accuracy" in proc.stdout
    assert not list(tmp_path.glob(".best.json.*"))  # no temp file left behind

    again = cli("evaluate", "--prompt", str(out), "--max-examples", "160", "--quiet")
    assert again.returncode == 0, again.stderr
    saved = doc["metrics"]["test"]["accuracy"]
    assert f"saved    test accuracy {saved:.4f} (n=160) -> now {saved:.4f}" in again.stdout

    listing = cli("studies", "--storage", storage)
    assert listing.returncode == 0 and "sel" in listing.stdout and "select" in listing.stdout


def test_rerunning_a_study_resumes_it(tiny_model_dir, tmp_path):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    assert cli(*search_args(tiny_model_dir, storage, "res", 3)).returncode == 0
    first = complete_params(storage, "res")
    proc = cli(*search_args(tiny_model_dir, storage, "res", 6))
    assert proc.returncode == 0, proc.stderr
    after = complete_params(storage, "res")
    assert after[:3] == first and len(after) == 6 and len(set(after)) == 6
    assert cli(*search_args(tiny_model_dir, storage, "res", 6)).returncode == 0  # nothing left to do
    assert len(complete_params(storage, "res")) == 6


def test_kill_9_then_resume_loses_and_duplicates_nothing(tiny_model_dir, tmp_path):
    storage = f"sqlite:///{tmp_path / 'k.db'}"
    args = search_args(tiny_model_dir, storage, "kill", 14, None, "--heartbeat", "1")
    killed_trial = None
    deadline = time.time() + 240
    # A tiny-model trial lasts milliseconds: the trial seen running may finish before the kill lands.
    # The killed trial is the one still RUNNING after the kill; if none is, resume and try again.
    while killed_trial is None and time.time() < deadline:
        proc = subprocess.Popen([sys.executable, "-m", "autoprompt_kit.cli", *args], env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while time.time() < deadline and proc.poll() is None:
                time.sleep(0.05)
                try:
                    trials = optuna.load_study(study_name="kill", storage=storage).get_trials(deepcopy=False)
                except (KeyError, Exception):  # study not created yet
                    continue
                done = [t for t in trials if t.state == TrialState.COMPLETE]
                if len(done) >= 2 and any(t.state == TrialState.RUNNING for t in trials):
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
                    after = optuna.load_study(study_name="kill", storage=storage).get_trials(deepcopy=False)
                    running = [t for t in after if t.state == TrialState.RUNNING]
                    killed_trial = running[0] if running else None
                    break
        finally:
            proc.kill()
            proc.wait()
    assert killed_trial is not None, "never caught the job mid-trial"
    time.sleep(3)  # past the grace period (2 x heartbeat)
    again = cli(*args)
    assert again.returncode == 0, again.stderr
    trials = optuna.load_study(study_name="kill", storage=storage).get_trials()
    complete = [json.dumps(t.params, sort_keys=True) for t in trials if t.state == TrialState.COMPLETE]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(complete) == 14 and len(set(complete)) == 14
    assert [t.number for t in failed] == [killed_trial.number]
    # The kill can land before the objective has suggested every parameter, so the failed trial's
    # params may be partial; the queue key names the whole candidate, and its retry completed it.
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == killed_trial.number]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    assert retried[0].user_attrs[QUEUED] == failed[0].user_attrs[QUEUED]
    assert json.dumps(retried[0].params, sort_keys=True) == retried[0].user_attrs[QUEUED]
    assert set(failed[0].params.items()) <= set(retried[0].params.items())


def test_python_api_and_queue(tiny_models, tmp_path):
    model, tok, kind = tiny_models["gpt2"]
    harness = Harness(model, tok, kind=kind, progress=False)
    task = load_task("mr", shots=4, max_examples=80)
    config = SelectConfig(templates=["{text_a} It was {mask}.", "{text_a} Overall: {mask}"],
                          label_words=[{"negative": ["bad"], "positive": ["good"]}], calibration=["none"])
    searcher = get_searcher("select")(config)
    assert isinstance(searcher, TemplateSelection) and len(searcher.grid()) == 2
    job = SearchJob(searcher, "api", f"sqlite:///{tmp_path / 'a.db'}", n_trials=5, progress=False,
                    task_info={"name": "mr"}, model_info={"name": "tiny", "kind": kind})
    study = run_search(job, SearchContext(task, harness, 13))
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 2  # capped to the space
    best = study.best_trial
    assert best.user_attrs["template"] in config.templates
    assert fill_queue(study, searcher.grid(), 2, 13) == 0  # nothing new to enqueue


@pytest.mark.parametrize("space, message", [
    ({"templates": [], "label_words": [{"a": "x", "b": "y"}]}, "at least one template"),
    ({"templates": ["{text_a} {mask}"], "label_words": []}, "at least one label-word set"),
    ({"templates": ["{text_a} no mask"], "label_words": [{"a": "x", "b": "y"}]}, "no mask"),
    ({"templates": ["{text_a} {mask}"], "label_words": [{"a": "x", "b": "y"}], "calibration": ["odd"]}, "calibration"),
    ({"templates": ["{text_a} {mask}"], "label_words": [{"a": "x", "b": "y"}], "ensembles": ["max"]}, "ensembles"),
])
def test_bad_search_spaces(space, message):
    with pytest.raises(AutoPromptError, match=message):
        SelectConfig.from_dict(space)


def test_cli_search_bad_input(tmp_path, tiny_model_dir):
    bad = tmp_path / "bad.yaml"
    bad.write_text("templates: [\n")
    for args, message in [
        (["search", "nosuch", "--space", str(SPACE)], "unknown search method 'nosuch'"),
        (["search", "select", "--space", str(tmp_path / "missing.yaml")], "does not exist"),
        (["search", "select", "--space", str(bad)], "not valid YAML"),
        (["search", "select", "--space", str(SPACE), "--trials", "0"], "--trials must be at least 1"),
        (["search", "select", "--space", str(SPACE), "--storage", "nosuchdb://x", "--model", tiny_model_dir,
          "--max-examples", "60", "--shots", "4"], "unknown database 'nosuchdb'"),
        (["evaluate", "--prompt", str(tmp_path / "none.json")], "does not exist"),
        (["evaluate", "--prompt", str(bad)], "not JSON"),
    ]:
        proc = cli(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.services
def test_three_workers_share_one_postgresql_study(tiny_model_dir, tmp_path):
    from services import postgres_server

    with postgres_server() as url:
        proc = cli(*search_args(tiny_model_dir, url, "pg", 12, tmp_path / "best.json", "--workers", "3"), timeout=600)
        assert proc.returncode == 0, proc.stderr
        complete = complete_params(url, "pg")
        assert len(complete) == 12 and len(set(complete)) == 12
        doc = json.loads((tmp_path / "best.json").read_text())
        jsonschema.validate(doc, SCHEMA)
        assert doc["study"]["storage"].startswith("postgresql")


@pytest.mark.services
def test_dashboard_shows_a_real_search_study(tiny_model_dir, tmp_path):
    from services import chromium_dump_dom, chromium_screenshot, dashboard_server

    storage = f"sqlite:///{tmp_path / 'd.db'}"
    assert cli(*search_args(tiny_model_dir, storage, "dash-study", 3)).returncode == 0
    study = optuna.load_study(study_name="dash-study", storage=storage)
    template = study.best_trial.user_attrs["template"]
    with dashboard_server(storage) as base:
        url = f"{base}/dashboard/studies/{study._study_id}/trials"
        dom = chromium_dump_dom(url, expect=["dash-study", "template"])
        assert "dash-study" in dom
        import html

        assert html.escape(template, quote=False) in dom or template in dom
        png = tmp_path / "dashboard.png"
        chromium_screenshot(url, png)
        assert png.stat().st_size > 10_000


def test_each_check_runs_once_per_search_and_per_evaluate(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """The space is checked against the task once and against the model once per search (not again
    by the runner); an evaluate checks its template's fields once (before the model loads)."""
    from autoprompt_kit import cli
    from autoprompt_kit.prompts import Template
    from autoprompt_kit.search import SearchConfig, Searcher

    calls: dict[str, int] = {}

    def counted(cls, name):
        real = getattr(cls, name)

        def wrapper(self, *args, **kwargs):
            calls[name] = calls.get(name, 0) + 1
            return real(self, *args, **kwargs)
        monkeypatch.setattr(cls, name, wrapper)

    counted(SearchConfig, "check_task")
    counted(Searcher, "check")
    assert cli.main(search_args(tiny_model_dir, f"sqlite:///{tmp_path / 'c.db'}", "once", 2)) == 0
    assert calls == {"check_task": 1, "check": 1}
    calls.clear()
    counted(Template, "check_fields")
    assert cli.main(["evaluate", "--model", tiny_model_dir, "--max-examples", "40", "--quiet",
                     "--words", "negative=bad", "--words", "positive=good"]) == 0
    assert calls == {"check_fields": 1}


def test_bad_space_fails_before_the_model_loads_and_the_study_opens(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from autoprompt_kit import cli, harness

    space = tmp_path / "space.yaml"
    space.write_text("method: select\ntemplates: ['{text_b} It was {mask}.']\n"
                     "label_words: [{negative: bad, positive: good}]\n")

    def no_model(*args, **kwargs):
        raise AssertionError("the model loaded")
    monkeypatch.setattr(harness, "Harness", no_model)
    db = tmp_path / "s.db"
    assert cli.main(["search", "select", "--space", str(space), "--model", tiny_model_dir, "--storage",
                     f"sqlite:///{db}", "--max-examples", "40", "--shots", "4", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: setting 'templates'") and "text_b" in err[0]
    assert not db.exists()


@pytest.mark.parametrize("content, message", [
    (None, "worker job file '{path}' does not exist"),
    ("{bad", "worker job: not JSON ("),
    ('{"version": 1, "x": 2}', "worker job: unknown key(s) x"),
    ('{"version": 0}', "not a worker job of version 1"),
])
def test_a_bad_worker_job_file_is_one_error_line(tmp_path, capsys, monkeypatch, content, message):
    from autoprompt_kit.search import processes, worker

    # In-process: the worker's root log handler would outlive this test's captured stderr.
    monkeypatch.setattr(processes, "quiet_logging", lambda: None)
    path = tmp_path / "job.json"
    if content is not None:
        path.write_text(content)
    assert worker.main([str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: " + message.format(path=path))


def test_workers_start_from_a_job_file_not_a_command_line(tiny_model_dir, tmp_path):
    """``--workers 2`` on SQLite: the extra process runs ``python -m autoprompt_kit.search.worker JOB``
    and the two share the study's queue (no candidate twice)."""
    from autoprompt_kit.search.worker import WorkerJob

    job = WorkerJob(method="select", space={"templates": ["{text_a} {mask}"]}, study="s", task={"source": "mr"})
    assert WorkerJob.from_json(job.to_json()) == job
    storage = f"sqlite:///{tmp_path / 'w.db'}"
    proc = cli(*search_args(tiny_model_dir, storage, "w", 6, None, "--workers", "2"))
    assert proc.returncode == 0, proc.stderr
    complete = complete_params(storage, "w")
    assert len(complete) == 6 and len(set(complete)) == 6
