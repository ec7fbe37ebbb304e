"""A study reads like a report: metric names, readable attributes and parameters, notes, artifacts,
dead trials shown failed, and the terminal views ``studies`` / ``trials`` (issue 25)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from autoprompt_kit.cli import main
from autoprompt_kit.search import report
from autoprompt_kit.search._storage import OWNER
from autoprompt_kit.search.base import _encode, readable

ARGS = ["--max-examples", "160", "--shots", "8", "--quiet", "--task", "mr"]


def _notes(study: optuna.Study) -> tuple[str, dict[int, str]]:
    """The study's note and each trial's (by trial number), as optuna-dashboard stores them."""
    from optuna_dashboard._note import get_note_from_system_attrs

    attrs = study._storage.get_study_system_attrs(study._study_id)
    study_note = (get_note_from_system_attrs(attrs, None) or {}).get("body", "")
    trials = {t.number: (get_note_from_system_attrs(attrs, t._trial_id) or {}).get("body", "") for t in study.trials}
    return study_note, trials


def _artifacts(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> list[str]:
    from optuna.artifacts import get_all_artifact_meta

    return sorted(m.filename for m in get_all_artifact_meta(trial, storage=study._storage))


@pytest.fixture(scope="module")
def searched(tiny_model_dir, tmp_path_factory):
    """A finished select search (3 trials) on the tiny model: (storage URL, folder, best.json)."""
    folder = tmp_path_factory.mktemp("inspect")
    url = f"sqlite:///{folder / 's.db'}"
    out = folder / "best.json"
    assert main(["search", "select", "--model", tiny_model_dir, "--storage", url, "--study", "demo", "--trials", "3",
                 "--out", str(out), *ARGS]) == 0
    return url, folder, out


def test_names_a_reader_understands(searched):
    url, _, _ = searched
    study = optuna.load_study(study_name="demo", storage=url)
    assert study.metric_names == ["dev accuracy"]
    attrs = study.user_attrs
    assert attrs["Method"] == "select" and attrs["Metric"] == "dev accuracy"
    assert attrs["Task"].startswith("mr: 2 labels [negative, positive]")
    assert "(causal, fp32, sha256:" in attrs["Model"]  # name and the hash of its weights
    assert attrs["Space"] == "template ×5 · label_words ×1 · calibration ×2 (10 candidates)"
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        assert "{mask}" in t.params["template"] or t.params["template"].startswith("ensemble of 4")
        assert t.params["label_words"] == "negative/positive"  # the words, not an index
        keys = sorted(t.user_attrs)
        bookkeeping = [k for k in keys if k.startswith("~")]
        assert set(bookkeeping) >= {"~autoprompt.queued", "~autoprompt.owner", "~candidate", "~dev_predictions"}
        assert keys[-len(bookkeeping):] == bookkeeping  # after everything a reader looks for
        assert not any(k.startswith("autoprompt.") or k == "candidate" for k in keys)


def test_readable_parameter_values_and_index_fallback():
    words = [{"negative": ["terrible"], "positive": ["great"]}, {"negative": ["bad", "awful"], "positive": ["good"]}]
    assert _encode(words) == ["terrible/great", "bad,awful/good"]
    assert readable(["a", "b"]) == "a,b"
    # Two values that read alike keep their index (the value then goes beside it as <name>_value).
    assert _encode([{"a": ["x"]}, {"b": ["x"]}]) == ["0", "1"]
    trial = optuna.create_study().ask()
    from autoprompt_kit.search.base import suggest

    chosen = suggest(trial, "words", [{"a": ["x"]}, {"b": ["x"]}])
    assert trial.user_attrs["words_value"] == "x" and chosen in ({"a": ["x"]}, {"b": ["x"]})


def test_every_finished_trial_and_the_study_have_a_note(searched, tiny_model_dir):
    url, _, out = searched
    study = optuna.load_study(study_name="demo", storage=url)
    study_note, notes = _notes(study)
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        note = notes[t.number]
        assert f"## Trial {t.number}: " in note
        assert f"**dev accuracy {t.value:.4f}** ± " in note and "(n=16)" in note
        assert "Rendered on a dev example" in note and "[mask]" in note  # the prompt as the model reads it
        assert "| class | label words |" in note and "| negative | negative |" in note
        assert "- calibration: **" in note and "- demonstrations: none" in note and "- trained state: none" in note
        table = note.split("| # | text | gold | predicted | p |")[1].strip().splitlines()[1:]
        marks = ["✗" in row for row in table]
        assert marks == sorted(marks, reverse=True)  # errors first
    assert "# demo" in study_note and "- **model**: " in study_note and "## Best so far: trial" in study_note
    assert f"autoprompt-kit search select --task mr --shots 8 --seed 13 --study demo --trials 3 --model {tiny_model_dir}" \
        in study_note
    assert f"autoprompt-kit predict --prompt {out} --input texts.txt" in study_note


def test_artifacts_of_the_best_trial(searched):
    url, folder, _ = searched
    study = optuna.load_study(study_name="demo", storage=url)
    best = optuna.load_study(study_name="demo", storage=url).trials[json.loads(searched[2].read_text())["study"]["best_trial"]]
    names = _artifacts(study, best)
    assert names == sorted([f"trial-{best.number}-confusion-matrix.png", f"trial-{best.number}-dev-predictions.csv",
                            f"trial-{best.number}-prompt.zip"])
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        assert f"trial-{t.number}-dev-predictions.csv" in _artifacts(study, t)
    stored = list((folder / "artifacts").iterdir())
    assert any(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in stored)
    assert any(p.read_bytes()[:2] == b"PK" for p in stored)  # the prompt folder, zipped
    assert any(p.read_bytes().startswith(b"index,text,gold,predicted,probability,correct") for p in stored)


def test_matplotlib_missing_skips_the_png_with_a_note(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    url = f"sqlite:///{tmp_path / 's.db'}"
    assert main(["search", "select", "--model", tiny_model_dir, "--storage", url, "--study", "nompl", "--trials", "2",
                 "--out", str(tmp_path / "best.json"), *ARGS]) == 0
    study = optuna.load_study(study_name="nompl", storage=url)
    best = study.trials[json.loads((tmp_path / "best.json").read_text())["study"]["best_trial"]]
    assert not any(n.endswith(".png") for n in _artifacts(study, best))
    assert any(n.endswith("prompt.zip") for n in _artifacts(study, best))
    assert "matplotlib is not installed" in _notes(study)[0]


def test_cv_selection_names_the_folds(tiny_model_dir, tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    assert main(["search", "select", "--model", tiny_model_dir, "--storage", url, "--study", "cv", "--trials", "2",
                 "--selection", "cv", "--folds", "2", "--test-split", "", "--out", "", *ARGS]) == 0
    study = optuna.load_study(study_name="cv", storage=url)
    assert study.metric_names == ["CV accuracy (2 folds)"] and study.user_attrs["Metric"] == "CV accuracy (2 folds)"
    _, notes = _notes(study)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert done and all("2-fold cross-validation over train + dev" in notes[t.number] for t in done)
    assert all("Out-of-fold predictions" in notes[t.number] and "(n=32," in notes[t.number] for t in done)
    assert report.metric_name("macro_f1", {"mode": "dev"}) == "dev macro-F1"


def test_trials_and_studies_in_the_terminal(searched, capsys):
    url, _, _ = searched
    capsys.readouterr()
    assert main(["studies", "--storage", url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["study", "method", "task", "model", "trials", "best"]
    row = next(line for line in lines if line.startswith("demo "))
    assert " select " in row and " mr " in row and "sha256:" in row and "dev accuracy (#" in row

    assert main(["trials", "demo", "--storage", url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["#", "state", "dev", "accuracy"] and len(lines) == 4
    assert all("label_words=negative/positive" in line for line in lines[1:])

    assert main(["trials", "demo", "--storage", url, "--sort", "value", "--top", "2", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 2 and rows[0]["value"] >= rows[1]["value"]
    assert set(rows[0]) >= {"number", "state", "value", "params", "seconds"} and rows[0]["state"] == "complete"


def test_views_create_no_file_and_errors_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["studies"]) == 0
    assert capsys.readouterr().out.startswith("no studies")
    assert main(["trials", "demo"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no storage at sqlite:///runs/autoprompt.db")
    assert list(tmp_path.iterdir()) == []  # no runs/, no database, no lock file
    optuna.create_study(storage=f"sqlite:///{tmp_path / 'x.db'}", study_name="one")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["trials", "other", "--storage", f"sqlite:///{tmp_path / 'x.db'}"]) == 2
    assert capsys.readouterr().err.strip() == f"error: no study named 'other' in sqlite:///{tmp_path / 'x.db'} (studies: one)"
    assert main(["trials", "one", "--storage", f"sqlite:///{tmp_path / 'x.db'}", "--top", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --top must be at least 1, got 0"
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_trial_whose_process_died_shows_failed_with_its_reason(searched, capsys):
    url, _, _ = searched
    study = optuna.load_study(study_name="demo", storage=url)
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that no longer runs
    template = optuna.trial.FrozenTrial(
        number=-1, state=TrialState.RUNNING, value=None, datetime_start=None, datetime_complete=None, params={},
        distributions={}, user_attrs={OWNER: {"host": socket.gethostname(), "pid": gone.pid, "start": "0"}},
        system_attrs={}, intermediate_values={}, trial_id=-1)
    trial_id = study._storage.create_new_trial(study._study_id, template_trial=template)
    number = study._storage.get_trial(trial_id).number
    capsys.readouterr()
    assert main(["trials", "demo", "--storage", url, "--json"]) == 0
    rows = {r["number"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows[number]["state"] == "fail"
    _, notes = _notes(optuna.load_study(study_name="demo", storage=url))
    assert f"process {gone.pid} on {socket.gethostname()} stopped while running it" in notes[number]


def test_confusion_png_and_predictions_csv(tmp_path):
    path = tmp_path / "cm.png"
    assert report.confusion_png([0, 1, 1], [0, 1, 0], ["neg", "pos"], "t", path)
    assert path.read_bytes()[:4] == b"\x89PNG"
    rows = [{"index": 0, "text": "a, b", "gold": "neg", "predicted": "pos", "probability": 0.5, "correct": False}]
    assert report.predictions_csv(rows).splitlines()[1] == '0,"a, b",neg,pos,0.5000,False'
    assert Path(report.artifact_dir("sqlite:////x/y/s.db")) == Path("/x/y/artifacts")


def test_a_select_study_with_index_parameters_is_refused(tiny_model_dir, tmp_path, capsys):
    """A study an older version filled with index parameters ("0", "ensemble-uniform") cannot be
    resumed: its candidates would run again under their readable names."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    assert main(["search", "select", "--model", tiny_model_dir, "--storage", url, "--study", "old", "--trials", "1",
                 "--test-split", "", "--out", "", *ARGS]) == 0
    study = optuna.load_study(study_name="old", storage=url)
    study.enqueue_trial({"template": "0", "label_words": "0", "calibration": "none"})
    capsys.readouterr()
    assert main(["search", "select", "--model", tiny_model_dir, "--storage", url, "--study", "old", "--trials", "2",
                 "--test-split", "", "--out", "", *ARGS]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stored templates and label words by index" in err[0]


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_trial_on_another_host_without_heartbeat_shows_failed(tmp_path, capsys):
    """Elsewhere (its pid unknowable from here) a trial is failed once its heartbeat is older than
    twice the interval the study recorded — by ``trials`` as by a rerun of the search."""
    import time

    from autoprompt_kit.search.runner import open_storage

    url = f"sqlite:///{tmp_path / 's.db'}"
    storage = open_storage(url, heartbeat=1)
    study = optuna.create_study(storage=storage, study_name="hb", direction="maximize")
    study.set_user_attr("heartbeat", 1)
    trial = study.ask()
    trial.set_user_attr(OWNER, {"host": "another-host", "pid": 1, "start": "0", "trial": trial.number})
    storage.record_heartbeat(trial._trial_id)
    time.sleep(3.5)  # past the 2 s grace period on SQLite's whole-second clock (func.now())
    capsys.readouterr()
    assert main(["trials", "hb", "--storage", url, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["state"] == "fail"
    _, notes = _notes(optuna.load_study(study_name="hb", storage=url))
    assert "process 1 on another-host stopped while running it" in notes[0]


def test_find_prompt_notes_the_call_that_resumes_it(tiny_models, tmp_path):
    from autoprompt_kit import Harness, find_prompt, load_task

    task = load_task("mr", shots=2, seed=13, max_examples=40)
    space = {"templates": ["{text_a} It was {mask}."], "label_words": [{"negative": ["bad"], "positive": ["good"]}],
             "calibration": ["none"]}
    model, tok, kind = tiny_models["gpt2"]
    url = f"sqlite:///{tmp_path / 'api.db'}"
    found = find_prompt("select", task, space, harness=Harness(model, tok, kind=kind, progress=False), trials=1,
                        storage=url, study="api", test_split=None)
    study_note, notes = _notes(found.study)
    assert f"autoprompt_kit.find_prompt('select', task, trials=1, study='api', seed=13, storage='{url}'" in study_note
    assert "```python" in study_note and "bad/good" in found.study.trials[0].params["label_words"]
    assert "| negative | bad |" in notes[0]
