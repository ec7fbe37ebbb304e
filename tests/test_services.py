"""Self-tests of the service helpers in ``tests/services.py`` (PostgreSQL, optuna-dashboard, headless Chromium).

Marked ``services``: as root they install Debian's postgresql / chromium on first use (apt-get).
"""

from __future__ import annotations

import os

import optuna
import pytest
from services import chromium_dump_dom, chromium_screenshot, dashboard_server, postgres_server

TEMPLATE = "{text_a} It was {mask}."


@pytest.fixture(autouse=True)
def _quiet_optuna():
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    yield
    optuna.logging.set_verbosity(before)


@pytest.mark.services
def test_postgres_server_holds_an_optuna_study():
    with postgres_server() as url:
        assert url.startswith("postgresql+psycopg2://postgres@127.0.0.1:") and url.endswith("/optuna")
        storage = optuna.storages.RDBStorage(url)
        try:
            study = optuna.create_study(storage=storage, study_name="svc")
            study.optimize(lambda t: t.suggest_int("x", 0, 10) ** 2, n_trials=3)
            # Read back through a second, independent connection pool.
            reader = optuna.storages.RDBStorage(url)
            try:
                trials = optuna.load_study(study_name="svc", storage=reader).get_trials(deepcopy=False)
            finally:
                reader.engine.dispose()
            assert len(trials) == 3
            assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
            assert [t.value for t in trials] == [t.params["x"] ** 2 for t in trials]
        finally:
            storage.engine.dispose()


@pytest.mark.services
def test_dashboard_renders_study_in_headless_chromium(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(storage=url, study_name="svc-dashboard")

    def objective(trial):
        trial.set_user_attr("template", TEMPLATE)
        return trial.suggest_float("x", 0.0, 1.0)

    study.optimize(objective, n_trials=1)
    study_id = study._study_id  # type: ignore[attr-defined]

    with dashboard_server(url) as base:
        page = f"{base}/dashboard/studies/{study_id}/trials"
        dom = chromium_dump_dom(page, expect=["svc-dashboard", TEMPLATE])
        assert "svc-dashboard" in dom
        assert TEMPLATE in dom

        png = chromium_screenshot(page, tmp_path / "trials.png", width=1400, height=900)
        assert png.exists()
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert os.path.getsize(png) > 10_000  # a rendered page, not a blank one (~60 KB seen)


@pytest.mark.services
def test_autoprompt_dashboard_shows_the_study_as_a_report(tiny_model_dir, tmp_path):
    """``autoprompt-kit dashboard`` on a tiny search, seen in headless Chromium: the metric's name on
    the study page; on the best trial's page its note (the rendered prompt) and its artifacts. The
    two screenshots are the manual's: ``AUTOPROMPT_KIT_SCREENSHOTS=docs make test-services`` writes
    them to docs/ (a plain test run leaves the checkout as it was)."""
    import json
    import sys
    from pathlib import Path

    from autoprompt_kit.cli import main

    url = f"sqlite:///{tmp_path / 'runs' / 'autoprompt.db'}"
    out = tmp_path / "best.json"
    assert main(["search", "select", "--model", tiny_model_dir, "--storage", url, "--study", "select-mr-demo",
                 "--trials", "6", "--max-examples", "160", "--shots", "8", "--quiet", "--task", "mr",
                 "--out", str(out)]) == 0
    best = json.loads(out.read_text())["study"]["best_trial"]
    study = optuna.load_study(study_name="select-mr-demo", storage=url)
    shots = os.environ.get("AUTOPROMPT_KIT_SCREENSHOTS")

    def command(port: int) -> list[str]:
        return [sys.executable, "-m", "autoprompt_kit.cli", "dashboard", "--storage", url, "--port", str(port)]

    with dashboard_server(url, command=command) as base:
        study_page = f"{base}/dashboard/studies/{study._study_id}"
        dom = chromium_dump_dom(study_page, expect=["dev accuracy", "select-mr-demo"])
        assert "dev accuracy" in dom  # the objective's name, not "Objective 0"
        assert "Objective 0" not in dom
        assert "template ×5 · label_words ×1 · calibration ×2" in dom and "sha256:" in dom  # readable study attributes

        trial_page = f"{study_page}/trials?numbers={best}"
        note = f"Trial {best}: "
        dom = chromium_dump_dom(trial_page, expect=[note, "Rendered on a dev example", "confusion-matrix.png"])
        assert note in dom and "Rendered on a dev example" in dom and "[mask]" in dom  # the trial's note
        assert "label_words" in dom and "negative/positive" in dom  # readable parameters
        assert f"trial-{best}-confusion-matrix.png" in dom and f"trial-{best}-prompt.zip" in dom  # artifacts listed

        for page, name, height in ((study_page, "dashboard-study.png", 1900), (trial_page, "dashboard-trial.png", 1500)):
            png = chromium_screenshot(page, tmp_path / name, width=1400, height=height)
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and os.path.getsize(png) > 10_000
            if shots:  # the manual's screenshots come from this run
                (Path(shots) / name).write_bytes(png.read_bytes())
