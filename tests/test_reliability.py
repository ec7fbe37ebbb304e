"""Reliability: concurrent queue filling, long inputs, immediate resume, children that die with their
parent, and every bad input caught up front — one clear line, exit 2, no file and no trial left."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import optuna
import pytest
from conftest import run_cli as cli
from optuna.trial import TrialState

from autoprompt_kit import AutoPromptError, Harness, Template, Verbalizer, load_task
from autoprompt_kit.data import Example, Split
from autoprompt_kit.io import STALE_SECONDS, write_json_atomic
from autoprompt_kit.search._storage import OWNER, check_url, public_url, take_trials_atomically
from autoprompt_kit.search._runner import QUEUED, SearchJob, _recover, fill_queue, open_storage, open_study

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "search_spaces" / "select_sentiment.yaml"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
GRID = [{"template": str(i), "label_words": "0", "calibration": "none"} for i in range(8)]


# -- 1. queue filling is atomic across processes ------------------------------------------------------
def _fill(url: str, barrier, errors) -> None:
    try:
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        barrier.wait()
        study = open_study("race", open_storage(url), 13, {"method": "select"})
        fill_queue(study, GRID, 8, 13)
    except BaseException as exc:  # noqa: BLE001 — reported to the parent
        errors.put(f"{type(exc).__name__}: {exc}")


def _race(url_for_round, rounds: int, procs: int = 4) -> None:
    ctx = mp.get_context("fork")
    for r in range(rounds):
        url = url_for_round(r)
        barrier, errors = ctx.Barrier(procs), ctx.Queue()
        workers = [ctx.Process(target=_fill, args=(url, barrier, errors)) for _ in range(procs)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(120)
        problems = []
        while not errors.empty():
            problems.append(errors.get())
        assert not problems, (r, problems)
        trials = optuna.load_study(study_name="race", storage=url).get_trials()
        keys = [t.user_attrs[QUEUED] for t in trials]
        assert len(trials) == 8 and len(set(keys)) == 8, (r, len(trials))


def test_processes_filling_one_queue_at_once_never_duplicate_on_sqlite(tmp_path):
    """4 processes released by a barrier on a fresh SQLite file, 10 rounds: 8 candidates, no
    duplicates, and no 'UNIQUE constraint failed: alembic_version' while creating the tables."""
    _race(lambda r: f"sqlite:///{tmp_path / f'race{r}.db'}", rounds=10)


@pytest.mark.services
def test_processes_filling_one_queue_at_once_never_duplicate_on_postgresql():
    from services import postgres_server

    for r in range(3):  # a fresh database each time: table creation races too
        with postgres_server(dbname=f"race{r}") as url:
            _race(lambda _: url, rounds=3)


def test_two_searches_started_together_run_each_candidate_once(tiny_model_dir, tmp_path):
    for r in range(2):
        storage = f"sqlite:///{tmp_path / f'two{r}.db'}"
        args = ["search", "select", "--space", str(SPACE), "--model", tiny_model_dir, "--storage", storage,
                "--study", "two", "--trials", "8", "--max-examples", "60", "--shots", "4", "--quiet",
                "--test-split", "", "--out", ""]
        procs = [subprocess.Popen([sys.executable, "-m", "autoprompt_kit.cli", *args], env=ENV,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        outs = [p.communicate(timeout=300) for p in procs]
        assert all(p.returncode == 0 for p in procs), outs
        trials = optuna.load_study(study_name="two", storage=storage).get_trials()
        done = [json.dumps(t.params, sort_keys=True) for t in trials if t.state == TrialState.COMPLETE]
        assert len(done) == 8 and len(set(done)) == 8, (r, len(done))


def _take_all(url: str, barrier, out) -> None:
    try:
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        warnings.simplefilter("ignore")  # "heartbeat is supposed to be used with optimize": ask alone here
        study = open_study("take", open_storage(url), 13, {"method": "select"})
        take_trials_atomically(study)
        barrier.wait()
        taken = []
        while study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            taken.append(study.ask().number)
        out.put((os.getpid(), taken))
    except BaseException as exc:  # noqa: BLE001 — reported to the parent
        out.put((os.getpid(), f"{type(exc).__name__}: {exc}"))


def _take_race(url_for_round, rounds: int) -> None:
    grid = [{"template": str(i), "label_words": "0", "calibration": "none"} for i in range(40)]
    ctx = mp.get_context("fork")
    for r in range(rounds):
        url = url_for_round(r)
        fill_queue(open_study("take", open_storage(url), 13, {"method": "select"}), grid, 40, 13)
        barrier, out = ctx.Barrier(4), ctx.Queue()
        procs = [ctx.Process(target=_take_all, args=(url, barrier, out)) for _ in range(4)]
        for p in procs:
            p.start()
        results = [out.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(60)
        assert not [r for r in results if isinstance(r[1], str)], results
        queued = sorted(n for _, taken in results for n in taken if n < 40)
        assert queued == list(range(40)), (r, [n for n in set(queued) if queued.count(n) > 1])
        by_number = {t.number: t for t in optuna.load_study(study_name="take", storage=url).get_trials()}
        for pid, taken in results:
            for n in taken:
                assert by_number[n].user_attrs[OWNER]["pid"] == pid, (r, n)


def test_processes_taking_queued_trials_at_once_never_take_one_twice_on_sqlite(tmp_path):
    """4 processes released by a barrier ask a 40-trial SQLite queue dry, 3 rounds: Optuna's own take
    (read WAITING, then write RUNNING, no row lock on SQLite) handed the same trial to two processes
    in every round (Optuna #4002); each queued trial is taken once, and its owner is the taker."""
    _take_race(lambda r: f"sqlite:///{tmp_path / f'take{r}.db'}", rounds=3)


@pytest.mark.services
def test_processes_taking_queued_trials_at_once_never_take_one_twice_on_postgresql():
    from services import postgres_server

    for r in range(2):
        with postgres_server(dbname=f"take{r}") as url:
            _take_race(lambda _: url, rounds=1)


def test_three_searches_started_together_on_sqlite_all_succeed_and_run_each_candidate_once(tiny_model_dir, tmp_path):
    """Three CLI searches on one SQLite study, 3 rounds: before taking a queued trial was atomic, one
    of them now and then ran a trial another had taken and died with Optuna's 'Cannot tell a
    COMPLETE trial' (exit 1); every process exits 0 and every candidate completes exactly once."""
    for r in range(3):
        storage = f"sqlite:///{tmp_path / f'three{r}.db'}"
        args = ["search", "select", "--space", str(SPACE), "--model", tiny_model_dir, "--storage", storage,
                "--study", "three", "--trials", "24", "--max-examples", "40", "--shots", "2", "--quiet",
                "--test-split", "", "--out", ""]
        procs = [subprocess.Popen([sys.executable, "-m", "autoprompt_kit.cli", *args], env=ENV,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
        outs = [p.communicate(timeout=300) for p in procs]
        assert all(p.returncode == 0 for p in procs), (r, [o[1][-500:] for o in outs])
        trials = optuna.load_study(study_name="three", storage=storage).get_trials()
        done = [t.user_attrs[QUEUED] for t in trials if t.state == TrialState.COMPLETE]
        assert len(done) == 24 and len(set(done)) == 24, (r, len(done), len(set(done)))


# -- 2. long inputs -----------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["gpt2", "gemma3", "bert", "t5"])
def test_long_texts_and_long_label_words_fit_every_kind(tiny_models, arch):
    model, tok, kind = tiny_models[arch]
    h = Harness(model, tok, kind=kind, progress=False)  # max length 128
    long = " ".join(["the movie was great and the acting was wonderful"] * 60)
    split = Split([Example(long, 1), Example("short", 0), Example(long, 0, long)], label_names=["negative", "positive"])
    word = "wonderfulwonderfulwonderful acting great"  # > 8 tokens with these tokenizers
    verb = Verbalizer.from_words({"negative": ["bad"], "positive": [word]})
    for template in ("{text_a} It was {mask}.", "{mask} , {text_a} !", "{text_a} {mask} {text_b} ."):
        sub = split if "text_b" not in template else split[[2]]
        result = h.evaluate(sub, template, verb)
        assert result.n == len(sub) and result.extra["truncated"] >= 1
    head = Harness(model, tok, kind=kind, progress=False, truncation="head")
    assert head.evaluate(split, "{text_a} It was {mask}.", verb).n == 3
    if kind != "seq2seq":  # T5 reads the word in the decoder: no encoder length limit for it
        with pytest.raises(AutoPromptError, match="do not fit the model's maximum length"):
            h.evaluate(split, "{text_a} It was {mask}.", {"negative": ["bad"], "positive": [" ".join(["great"] * 300)]})


def test_search_and_evaluate_on_long_inputs_from_the_cli(tiny_model_dir, tmp_path):
    rows = [{"text": " ".join(["a wonderful film with great acting"] * 80), "label": i % 2} for i in range(120)]
    data = tmp_path / "long.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    space = tmp_path / "space.yaml"
    space.write_text("method: select\ntemplates: ['{text_a} It was {mask}.']\n"
                     "label_words: [{'0': [bad], '1': [wonderfulwonderfulwonderful acting great]}]\n")
    proc = cli("search", "select", "--task", str(data), "--space", str(space), "--model", tiny_model_dir, "--storage",
               f"sqlite:///{tmp_path / 's.db'}", "--trials", "1", "--shots", "2", "--quiet",
               "--out", str(tmp_path / "best.json"))
    assert proc.returncode == 0, proc.stderr
    proc = cli("evaluate", "--prompt", str(tmp_path / "best.json"), "--quiet")
    assert proc.returncode == 0, proc.stderr


# -- 3. resume at once; children die with their parent ------------------------------------------------
def _wait_for(predicate, timeout: float) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_kill_9_then_immediate_rerun_retries_the_lost_trial_at_once(tiny_model_dir, tmp_path):
    """A heartbeat of 10 minutes (grace 20 min): the rerun sees the killed process is gone and retries its
    trial now — it could not finish inside its 6-minute timeout if it waited for the grace period."""
    storage = f"sqlite:///{tmp_path / 'k.db'}"
    args = ["search", "select", "--space", str(SPACE), "--model", tiny_model_dir, "--storage", storage, "--study",
            "kill", "--trials", "14", "--max-examples", "160", "--shots", "8", "--quiet", "--heartbeat", "600",
            "--out", str(tmp_path / "best.json")]
    killed = None
    for _ in range(20):
        proc = subprocess.Popen([sys.executable, "-m", "autoprompt_kit.cli", *args], env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def running() -> bool:
            try:
                trials = optuna.load_study(study_name="kill", storage=storage).get_trials(deepcopy=False)
            except Exception:  # noqa: BLE001 — not created yet
                return False
            return sum(t.state == TrialState.COMPLETE for t in trials) >= 2 and any(
                t.state == TrialState.RUNNING for t in trials)

        if _wait_for(running, 120):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        after = optuna.load_study(study_name="kill", storage=storage).get_trials(deepcopy=False)
        left = [t for t in after if t.state == TrialState.RUNNING]
        if left:
            killed = left[0]
            break
    assert killed is not None, "never caught the job mid-trial"
    again = cli(*args, timeout=360)
    assert again.returncode == 0, again.stderr
    doc = json.loads((tmp_path / "best.json").read_text())
    assert doc["study"]["trials"].get("running", 0) == 0 and doc["study"]["trials"]["complete"] == 14
    trials = optuna.load_study(study_name="kill", storage=storage).get_trials()
    assert [t.number for t in trials if t.state == TrialState.FAIL] == [killed.number]


def _fail_stale(url: str, barrier, out) -> None:
    try:
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        warnings.simplefilter("ignore")  # heartbeats are "experimental"
        study = open_study("stale", open_storage(url, heartbeat=1), 13, {"method": "select"})
        take_trials_atomically(study)
        barrier.wait()
        optuna.storages.fail_stale_trials(study)  # what Optuna runs before every trial of every process
        out.put("")
    except BaseException as exc:  # noqa: BLE001 — reported to the parent
        out.put(f"{type(exc).__name__}: {exc}")


def test_processes_failing_the_same_stale_trials_at_once_requeue_each_once(tmp_path):
    """20 trials whose heartbeat went stale, 4 processes failing them at once, 2 rounds: on SQLite
    two of them could both fail a trial and both re-queue it (21-23 retries of 20), so a candidate
    ran twice; each stale trial is re-queued exactly once."""
    warnings.simplefilter("ignore")
    ctx = mp.get_context("fork")
    for r in range(2):
        url = f"sqlite:///{tmp_path / f'stale{r}.db'}"
        study = open_study("stale", open_storage(url, heartbeat=1), 13, {"method": "select"})
        for _ in range(20):
            study._storage.record_heartbeat(study.ask()._trial_id)
        time.sleep(3.5)  # past the grace period (2 x 1 s), with room for the clock's whole seconds
        barrier, out = ctx.Barrier(4), ctx.Queue()
        procs = [ctx.Process(target=_fail_stale, args=(url, barrier, out)) for _ in range(4)]
        for proc in procs:
            proc.start()
        problems = [m for m in (out.get(timeout=120) for _ in procs) if m]
        for proc in procs:
            proc.join(60)
        assert not problems, problems
        states = [t.state for t in study.get_trials()]
        assert states.count(TrialState.FAIL) == 20 and states.count(TrialState.WAITING) == 20, (r, states)


def _take_and_die(url: str) -> None:
    warnings.simplefilter("ignore")
    study = open_study("die", open_storage(url), 13, {"method": "select"})
    take_trials_atomically(study)
    study.ask()  # the kit's claim in the objective never runs: killed right after the take
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("queued", [8, 0], ids=["queued", "sampled"])
def test_a_kill_right_after_a_trial_is_taken_is_recovered_at_once_and_its_folder_removed(queued, tmp_path):
    """A process killed between taking a trial (queued, or new for a sampled space) and running it:
    the trial already names its owner, so the next run fails and re-queues it at once (not after the
    heartbeat's grace, which is 20 minutes here); the folders the dead trial left are removed."""
    url = f"sqlite:///{tmp_path / 'die.db'}"
    study = open_study("die", open_storage(url, heartbeat=600), 13, {"method": "select"})
    if queued:
        fill_queue(study, GRID, queued, 13)
    child = mp.get_context("fork").Process(target=_take_and_die, args=(url,))
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    [dead] = study.get_trials(states=(TrialState.RUNNING,))
    job = SearchJob(searcher=None, study_name="die", storage_url=url, progress=False)  # type: ignore[arg-type]
    left = [job.trial_root() / f"trial-{dead.number}", job.trial_root() / f".trial-{dead.number}.x1y2.tmp"]
    for folder in left:
        (folder / "sub").mkdir(parents=True)
    keep = job.trial_root() / f"trial-{dead.number + 1}"
    keep.mkdir()
    assert _recover(study, job) == [dead.number]
    assert not any(f.exists() for f in left) and keep.is_dir()
    after = study.get_trials()
    assert [t.number for t in after if t.state == TrialState.FAIL] == [dead.number]
    assert not [t for t in after if t.state == TrialState.RUNNING]
    assert sum(t.state == TrialState.WAITING for t in after) == max(queued, 1)  # the rest of the queue + the retry


def _children(pid: int) -> list[int]:
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                stat = (proc / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(proc.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_killing_the_main_process_leaves_no_worker_behind(tiny_model_dir, tmp_path):
    args = ["search", "select", "--space", str(SPACE), "--model", tiny_model_dir, "--storage",
            f"sqlite:///{tmp_path / 'w.db'}", "--trials", "48", "--workers", "3", "--max-examples", "400",
            "--shots", "16", "--quiet", "--test-split", "", "--out", ""]
    proc = subprocess.Popen([sys.executable, "-m", "autoprompt_kit.cli", *args], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    assert _wait_for(lambda: len(_children(proc.pid)) == 2, 120), "the workers never started"
    workers = _children(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _wait_for(lambda: not any(_alive(w) for w in workers), 30), "orphan workers left running"


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.services
def test_dashboard_stopped_with_sigterm_stops_its_server(tmp_path):
    from services import free_port

    port = free_port()
    storage = f"sqlite:///{tmp_path / 'd.db'}"
    open_study("d", open_storage(storage), 13, {"method": "select"})
    proc = subprocess.Popen([sys.executable, "-m", "autoprompt_kit.cli", "dashboard", "--storage", storage,
                             "--port", str(port)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def up() -> bool:
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/dashboard", timeout=2).status == 200
            except OSError:
                return False

        assert _wait_for(up, 60), "dashboard did not start"
        child = _children(proc.pid)
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        assert _wait_for(lambda: not _port_open(port), 30), "the dashboard still serves after SIGTERM"
        assert not any(_alive(c) for c in child)
    finally:
        proc.kill()


# -- 4-8. bad input: one line, exit 2, nothing written, no trial left ---------------------------------
BAD_SPACES = {
    "iterations_string": ("autoprompt", "template: '{text_a} {trigger} {mask}.'\nlabel_words: {negative: [bad], positive: [good]}\n"
                          "iterations: '15'\n", "setting 'iterations' must be an integer"),
    "candidates_scalar": ("autoprompt", "label_words: {negative: [bad], positive: [good]}\nnum_candidates: 10\n",
                          "write [10] for a single choice"),
    "batch_string": ("protoverb", "label_words: {negative: [bad], positive: [good]}\nbatch_size: x\n",
                     "setting 'batch_size' must be an integer"),
    "float_for_int": ("kpt", "seed_words: {negative: [bad], positive: [good]}\nsupport_size: 2.5\n",
                      "setting 'support_size' must be an integer"),
    "bool_string": ("autoprompt", "label_words: {negative: [bad], positive: [good]}\nlabel_search: 'no'\n",
                    "must be true or false"),
    "typo": ("select", "templates: ['{text_a} It was {mask}.']\nlabel_words: [{negative: [bad], positive: [good]}]\n"
             "calibraton: [none]\n", "did you mean 'calibration'"),
    "templates_string": ("select", "templates: '{text_a} It was {mask}.'\nlabel_words: [{negative: [bad], positive: [good]}]\n",
                         "setting 'templates' must be a list of texts"),
    "field_not_in_data": ("select", "templates: ['{text_a} {premise} {mask}.']\n"
                          "label_words: [{negative: [bad], positive: [good]}]\n", "unknown field(s) ['premise']"),
    "labels_wrong_order": ("protoverb", "label_words: {positive: [good], negative: [bad]}\n", "do not match the task's labels"),
    "labels_three": ("select", "templates: ['{text_a} It was {mask}.']\n"
                     "label_words: [{negative: [bad], neutral: [ok], positive: [good]}]\n", "has 3 classes but the task has 2"),
    "aggregation": ("select", "templates: ['{text_a} It was {mask}.']\nlabel_words: [{negative: [bad], positive: [good]}]\n"
                    "aggregation: median\n", "unknown aggregation 'median'"),
    "same_word_twice": ("select", "templates: ['{text_a} It was {mask}.']\n"
                        "label_words: [{negative: [good], positive: [good]}]\n", "given for two classes"),
    "word_number": ("select", "templates: ['{text_a} It was {mask}.']\nlabel_words: [{negative: [5], positive: [good]}]\n",
                    "not text: 5"),
    "word_null": ("protoverb", "label_words: {negative: [null], positive: [good]}\n", "not text: None"),
    "word_map": ("s3delta", "label_words: {negative: {a: 1}, positive: [good]}\n", "must be a mapping"),
    "openprompt_json": ("select", "templates: ['{text_a} It was {\"mask}.']\n"
                        "label_words: [{negative: [bad], positive: [good]}]\n", "cannot parse part"),
    "trigger_negative": ("autoprompt", "template: '{text_a} {\"trigger\": -1} {mask}.'\n"
                         "label_words: {negative: [bad], positive: [good]}\n", "positive number of trigger tokens"),
    "long_template": ("select", "templates: ['{text_a} " + "very " * 5000 + "{mask} {mask}']\n"
                      "label_words: [{negative: [bad], positive: [good]}]\n", "2 masks"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPACES))
def test_bad_search_space_is_one_clear_error_before_anything_runs(case, tiny_model_dir, tmp_path):
    method, text, message = BAD_SPACES[case]
    space = tmp_path / "space.yaml"
    space.write_text(text)
    storage = f"sqlite:///{tmp_path / 's.db'}"
    out = tmp_path / "best.json"
    proc = cli("search", method, "--space", str(space), "--model", tiny_model_dir, "--storage", storage,
               "--max-examples", "40", "--shots", "4", "--trials", "1", "--out", str(out))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert len(lines[0]) < 600
    assert not out.exists()
    if Path(tmp_path / "s.db").exists():
        assert all(not optuna.load_study(study_name=s.study_name, storage=storage).trials
                   for s in optuna.get_all_study_summaries(storage))


def test_bad_command_lines_and_files(tiny_model_dir, tmp_path):
    (tmp_path / "latin1.yaml").write_bytes("templates: ['caf\xe9 {text_a} {mask}']\n".encode("latin-1"))
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("x")
    readonly = tmp_path / "ro"
    readonly.mkdir()
    readonly.chmod(0o500)
    base = ["search", "select", "--space", str(SPACE), "--model", tiny_model_dir, "--max-examples", "40", "--shots", "4",
            "--trials", "1", "--storage", f"sqlite:///{tmp_path / 's.db'}"]
    cases = [
        (base + ["--seed", "-1"], "--seed must be a non-negative integer"),
        (base + ["--out", str(tmp_path / "folder")], "is a folder"),
        (base + ["--test-split", "nosuch"], "is not a split"),
        (base[:-2] + ["--storage", "sqlite://"], "in-memory database"),
        (base[:-2] + ["--storage", "postgresql+psycopg://u@127.0.0.1:1/x"], "needs the psycopg driver"),
        (base + ["--kind", "mlm"], "--kind mlm does not match"),
        (["search", "select", "--space", str(tmp_path / "latin1.yaml")], "not UTF-8"),
        (["search", "select", "--space", str(tmp_path / "folder")], "is a folder"),
        (["evaluate", "--prompt", str(tmp_path / "folder")], "without prompt.json"),
    ]
    if os.geteuid() != 0:  # root writes anywhere
        cases.append((base + ["--out", str(readonly / "best.json")], "cannot write into"))
    for args, message in cases:
        proc = cli(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


BAD_PROMPTS = {
    "template_number": ({"template": 5, "verbalizer": {"label_words": {"a": ["x"], "b": ["y"]}}}, "must be text"),
    "model_null": ({"templates": [{"text": "{text_a} {mask}"}], "verbalizer": {"label_words": {"a": ["x"], "b": ["y"]}},
                    "model": 5}, "'model' must be an object"),
    "member_number": ({"templates": [{"text": "{text_a} {mask}"}, 5], "verbalizer": {"label_words": {"a": ["x"], "b": ["y"]}}},
                      "must be text or"),
    "weights_text": ({"templates": [{"text": "{text_a} {mask}"}, {"text": "{mask} {text_a}"}], "weights": "abc",
                      "verbalizer": {"label_words": {"a": ["x"], "b": ["y"]}}}, "ensemble weights must be 2 numbers"),
    "bad_base64_head": ({"template": {"text": "{text_a} {mask}"}, "verbalizer": {"label_words": {"a": ["x"], "b": ["y"]}},
                         "head": {"kind": "protoverb", "config": {}, "safetensors_b64": "%%%"}}, "safetensors_b64 is not valid"),
    "future_schema": ({"schema_version": 99, "template": {"text": "{text_a} {mask}"},
                       "verbalizer": {"label_words": {"a": ["x"], "b": ["y"]}}}, "schema_version 99"),
    "trigger_ids_text": ({"template": {"text": "{text_a} {trigger} {mask}", "trigger_ids": ["x"]},
                          "verbalizer": {"label_words": {"a": ["x"], "b": ["y"]}}}, "trigger_ids must be a list of token ids"),
    "task_text": ({"template": {"text": "{text_a} {mask}"}, "verbalizer": {"label_words": {"a": ["x"], "b": ["y"]}},
                   "task": "x"}, "'task' must be an object"),
}


@pytest.mark.parametrize("case", sorted(BAD_PROMPTS))
def test_malformed_saved_prompt_is_one_clear_error(case, tmp_path):
    data, message = BAD_PROMPTS[case]
    path = tmp_path / "best.json"
    path.write_text(json.dumps(data))
    for args in (["evaluate", "--prompt", str(path)], ["predict", "--prompt", str(path), "--input", "-"]):
        proc = cli(*args, input="a text\n")
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)


def test_trigger_ids_outside_the_vocabulary_are_caught(tiny_models):
    model, tok, kind = tiny_models["gpt2"]
    h = Harness(model, tok, kind=kind, progress=False)
    template = Template("{text_a} {trigger} {mask}.").with_triggers([10**6])
    with pytest.raises(AutoPromptError, match="outside this model's vocabulary"):
        h.evaluate(load_task("mr", max_examples=20).dev, template, {"negative": ["bad"], "positive": ["good"]})


def test_a_word_unknown_to_the_tokenizer_is_an_error(tiny_models):
    model, tok, kind = tiny_models["bert"]
    h = Harness(model, tok, kind=kind, progress=False)
    with pytest.raises(AutoPromptError, match="unknown to this model's tokenizer"):
        h.evaluate(load_task("mr", max_examples=20).dev, "{text_a} It was {mask}.",
                   {"negative": ["bad"], "positive": ["\u4e2d\u6587"]})


def test_resuming_with_another_space_or_task_is_an_error(tiny_model_dir, tmp_path):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    base = ["search", "select", "--model", tiny_model_dir, "--storage", storage, "--study", "same", "--trials", "1",
            "--max-examples", "40", "--shots", "4", "--quiet", "--test-split", "", "--out", ""]
    assert cli(*base, "--space", str(SPACE)).returncode == 0
    other = tmp_path / "other.yaml"
    other.write_text("templates: ['{text_a} Overall {mask}.']\nlabel_words: [{negative: [bad], positive: [good]}]\n")
    proc = cli(*base, "--space", str(other))
    assert proc.returncode == 2 and "was run with another space" in proc.stderr and "new --study" in proc.stderr
    proc = cli(*[a if a != "4" else "8" for a in base], "--space", str(SPACE))
    assert proc.returncode == 2 and "was run with another task" in proc.stderr


@pytest.fixture(scope="module")
def other_model_dir(tiny_models, tmp_path_factory) -> str:
    """A second tiny causal LM (Gemma 3 architecture, same tokenizer) saved as a folder."""
    path = tmp_path_factory.mktemp("tiny-gemma3")
    model, tok, _ = tiny_models["gemma3"]
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def _trial_count(storage: str) -> dict[str, int]:
    return {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage)}


def test_resuming_with_another_model_or_precision_is_one_line_and_adds_nothing(tiny_model_dir, other_model_dir,
                                                                            tmp_path):
    """The same --study with another --model (or --precision) used to resume it and mix two models'
    trials; it is refused with one line naming what differs, and nothing is added or written."""
    storage = f"sqlite:///{tmp_path / 'm.db'}"
    base = ["search", "select", "--space", str(SPACE), "--storage", storage, "--study", "same", "--trials", "1",
            "--max-examples", "40", "--shots", "2", "--quiet", "--test-split", ""]
    first = cli(*base, "--model", tiny_model_dir, "--out", "")
    assert first.returncode == 0, first.stderr
    before = _trial_count(storage)
    out = tmp_path / "best.json"
    for extra, what, shown in ((["--model", other_model_dir], "another model", other_model_dir),
                               (["--model", tiny_model_dir, "--precision", "bf16"], "another precision", "bf16")):
        proc = cli(*base, *extra, "--trials", "2", "--out", str(out))
        assert proc.returncode == 2, (extra, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and what in lines[0] and shown in lines[0] and "--study" in lines[0], proc.stderr
        assert "Traceback" not in proc.stderr and not out.exists() and "weights" not in proc.stderr
        assert _trial_count(storage) == before


def test_resuming_after_the_model_files_changed_is_an_error(tiny_models, tmp_path):
    """The same folder with other weights (retrained, replaced) is another model: its sha256 differs."""
    import torch

    folder = tmp_path / "model"
    model, tok, _ = tiny_models["gpt2"]
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    args = ["search", "select", "--space", str(SPACE), "--model", str(folder), "--storage",
            f"sqlite:///{tmp_path / 'w.db'}", "--study", "w", "--max-examples", "40", "--shots", "2", "--quiet",
            "--test-split", "", "--out", ""]
    assert cli(*args, "--trials", "1").returncode == 0
    changed = type(model)(model.config)
    changed.load_state_dict({k: v + 0.01 for k, v in model.state_dict().items()})
    with torch.no_grad():
        changed.save_pretrained(folder)
    proc = cli(*args, "--trials", "2")
    assert proc.returncode == 2 and "was run with other model weights (sha256:" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_another_model_without_study_makes_its_own_study(tiny_model_dir, other_model_dir, tmp_path):
    """Without --study the default name carries a tag of the model: a plain rerun with another model
    starts a study of its own instead of failing, and a rerun with the first model resumes its one."""
    storage = f"sqlite:///{tmp_path / 'd.db'}"
    base = ["search", "select", "--space", str(SPACE), "--storage", storage, "--trials", "1", "--max-examples", "40",
            "--shots", "2", "--quiet", "--test-split", "", "--out", ""]
    for model in (tiny_model_dir, other_model_dir, tiny_model_dir):
        proc = cli(*base, "--model", model)
        assert proc.returncode == 0, proc.stderr
    names = sorted(_trial_count(storage))
    assert len(names) == 2 and all(n.startswith("select-mr-select_sentiment-s13-tiny-") for n in names), names
    assert {n.split("-s13-")[1].rsplit("-", 1)[0] for n in names} == {Path(tiny_model_dir).name,
                                                                       Path(other_model_dir).name}


def test_find_prompt_names_its_default_study_after_the_model(tiny_models, tmp_path):
    from autoprompt_kit import find_prompt

    task = load_task("mr", shots=2, seed=13, max_examples=40)
    space = {"templates": ["{text_a} It was {mask}."], "label_words": [{"negative": ["bad"], "positive": ["good"]}],
             "calibration": ["none"]}
    storage = f"sqlite:///{tmp_path / 'api.db'}"
    names = set()
    for arch in ("gpt2", "gemma3", "gpt2"):
        model, tok, kind = tiny_models[arch]
        harness = Harness(model, tok, kind=kind, progress=False)
        found = find_prompt("select", task, space, harness=harness, trials=1, storage=storage, test_split=None)
        names.add(found.study.study_name)
    assert sorted(names) == sorted(_trial_count(storage)) and len(names) == 2, names
    assert all(n.startswith("select-mr-api-s13-") for n in names)


def test_a_study_from_before_model_fingerprints_still_resumes(tiny_model_dir, other_model_dir, tmp_path):
    """A study made before the model was fingerprinted (only its name and kind recorded), under the
    untagged default name: a plain rerun with the same model resumes it; another model is refused."""
    storage = f"sqlite:///{tmp_path / 'o.db'}"
    legacy = "select-mr-select_sentiment-s13"
    base = ["search", "select", "--space", str(SPACE), "--storage", storage, "--max-examples", "40", "--shots", "2",
            "--quiet", "--test-split", "", "--out", ""]
    assert cli(*base, "--model", tiny_model_dir, "--study", legacy, "--trials", "1").returncode == 0
    old = optuna.load_study(study_name=legacy, storage=storage)
    old.set_user_attr("fingerprint", {k: v for k, v in old.user_attrs["fingerprint"].items() if k in ("space", "task")})
    old.set_user_attr("model", {"name": tiny_model_dir, "kind": "causal"})
    proc = cli(*base, "--model", tiny_model_dir, "--trials", "2")
    assert proc.returncode == 0, proc.stderr
    assert _trial_count(storage) == {legacy: 2}
    proc = cli(*base, "--model", other_model_dir, "--study", legacy, "--trials", "3")
    assert proc.returncode == 2 and "another model" in proc.stderr and _trial_count(storage) == {legacy: 2}, proc.stderr


def test_resuming_with_another_kind_is_an_error_naming_it(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'k.db'}")
    fingerprint = {"space": "s", "task": "t", "model": "/m", "weights": "sha256:ab", "kind": "mlm", "precision": "fp32"}
    open_study("k", storage, 13, {"method": "select", "fingerprint": fingerprint})
    with pytest.raises(AutoPromptError, match=r"another kind \(kind mlm, now causal\)"):
        open_study("k", storage, 13, {"method": "select", "fingerprint": {**fingerprint, "kind": "causal"}})
    with pytest.raises(AutoPromptError, match=r"other model weights \(sha256:ab, now sha256:cd\)"):
        open_study("k", storage, 13, {"method": "select", "fingerprint": {**fingerprint, "weights": "sha256:cd"}})
    open_study("k", storage, 13, {"method": "select", "fingerprint": fingerprint})  # the same: resumes


# -- 8-9. secrets and leftovers ---------------------------------------------------------------------
def test_passwords_never_show(tmp_path):
    for url, hidden in [("postgresql://u:pw@h/db", "pw"), ("postgresql://:pw@h/db", "pw"),
                        ("postgresql://u:p@ss@h:5432/db", "p@ss"), ("postgresql://u@h/db?password=sec&x=1", "sec")]:
        masked = public_url(url)
        assert hidden not in masked.replace("postgresql", "").replace("***", ""), masked
    assert check_url("postgresql://u:pw@h/db").startswith("postgresql+psycopg2://")  # psycopg2 is what is installed
    proc = cli("search", "select", "--space", str(SPACE), "--storage", "postgresql+psycopg2://u:secretpw@127.0.0.1:1/x",
               "--trials", "1", "--max-examples", "20", "--shots", "2")
    assert proc.returncode == 2 and "secretpw" not in proc.stderr + proc.stdout


def test_stale_temp_files_of_a_killed_write_are_removed(tmp_path):
    target = tmp_path / "best.json"
    stale = tmp_path / ".best.json.abc123.tmp"
    fresh = tmp_path / ".best.json.def456.tmp"
    stale.write_text("half")
    fresh.write_text("in progress")
    old = time.time() - STALE_SECONDS - 10
    os.utime(stale, (old, old))
    write_json_atomic(target, {"ok": 1})
    assert json.loads(target.read_text()) == {"ok": 1} and not stale.exists() and fresh.exists()


# -- 10. every hostile or malformed input of issue 28: one line, exit 2, no traceback, no file, no trial --
def _bomb() -> str:
    """A 'billion laughs' space: 9 levels of 9 aliases (387 million strings once expanded) in < 400 bytes."""
    lines = ["method: select", "templates:", "  - &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    prev = "a"
    for name in "bcdefgh":
        lines.append(f"  - &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
        prev = name
    return "\n".join(lines) + "\nlabel_words: [{negative: [bad], positive: [good]}]\n"


def _deep_json(depth: int = 5000) -> str:
    return "[" * depth + "]" * depth


def _write(path: Path, text: str | bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


def _rows(n: int = 60, classes: tuple[str, ...] = ("negative", "positive")) -> list[dict[str, str]]:
    words = ["great fun", "awful plot", "fine cast", "dull music", "brilliant ending", "boring start"]
    return [{"text": f"{words[i % len(words)]} number {i}", "label": classes[i % len(classes)]} for i in range(n)]


def _csv(path: Path, rows: list[dict[str, str]]) -> str:
    return _write(path, "text,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in rows))


def _saved_prompt(tmp: Path, **extra: object) -> str:
    """A prompt folder whose manifest carries ``extra`` (a head or delta naming files)."""
    doc = {"format": "autoprompt-kit.prompt", "format_version": 1, "templates": [{"text": "{text_a} It was {mask}."}],
           "verbalizer": {"label_words": {"negative": ["bad"], "positive": ["good"]}}, **extra}
    return _write(tmp / "p" / "prompt.json", json.dumps(doc))


def _delta_folder(tmp: Path, structure: str | None, weights: bytes | None) -> str:
    folder = tmp / "delta"
    folder.mkdir()
    if structure is not None:
        _write(folder / "delta.json", structure)
    if weights is not None:
        _write(folder / "delta.safetensors", weights)
    return str(folder)


_PASSWD = "root:x:0:0:secret\n"
_STRUCTURE = json.dumps({"format": "autoprompt-kit-delta", "modules": [{"kind": "lora", "target": "h.0.attn"}]})
_SEL = "templates: ['{text_a} It was {mask}.']\nlabel_words: [{negative: [bad], positive: [good]}]\n"


def _search(tmp: Path, model: str, method: str = "select", space: str | None = _SEL, *extra: str) -> list[str]:
    argv = ["search", method, "--model", model, "--storage", f"sqlite:///{tmp / 's.db'}", "--max-examples", "40",
            "--shots", "4", "--trials", "1", "--quiet", "--out", str(tmp / "out" / "best.json")]
    if space is not None:
        argv += ["--space", _write(tmp / "space.yaml", space)]
    return argv + list(extra)


# name -> (argv builder (tmp_path, tiny model folder), a part of the one-line message)
BAD_INPUTS = {
    # bounded parsing
    "yaml_billion_laughs": (lambda t, m: _search(t, m, "select", _bomb()), "expands to more than"),
    "yaml_recursive_alias": (lambda t, m: _search(t, m, "select", "templates: &a [*a]\n"), "recursive YAML alias"),
    "yaml_deep_through_aliases": (lambda t, m: _search(t, m, "select", "templates:\n" + "".join(
        f"  - &a{i} " + "[" * 40 + (f"*a{i - 1}" if i else "x") + "]" * 40 + "\n" for i in range(30))), "levels deep"),
    "yaml_deep": (lambda t, m: _search(t, m, "select", "templates: " + "[" * 3000 + "]" * 3000 + "\n"), "levels deep"),
    "yaml_syntax": (lambda t, m: _search(t, m, "select", "templates: ['{text_a} {mask}'\nlabel_words: x: y\n"),
                    "is not valid YAML: line"),
    "template_part_deep": (lambda t, m: _search(t, m, "select", "templates: ['{text_a} {\"mask\": " + "[" * 5000
                                                + "]" * 5000 + "}']\nlabel_words: [{negative: [bad], positive: [good]}]\n"),
                           "levels deep"),
    "json_task_deep": (lambda t, m: _search(t, m, "select", _SEL, "--task", _write(t / "d.json", _deep_json())),
                       "levels deep"),
    "jsonl_line_deep": (lambda t, m: _search(t, m, "select", _SEL, "--task", _write(
        t / "d.jsonl", '{"text": "a", "label": "negative"}\n{"text": ' + _deep_json() + ', "label": "positive"}\n')),
        "levels deep"),
    "prompt_json_deep": (lambda t, m: ["evaluate", "--prompt", _write(t / "best.json", _deep_json())], "levels deep"),
    "predict_input_deep": (lambda t, m: ["predict", "--prompt", _saved_prompt(t), "--input",
                                         _write(t / "in.jsonl", '{"text": ' + _deep_json() + '}\n')], "levels deep"),
    "verbalizer_deep": (lambda t, m: ["evaluate", "--verbalizer", _write(t / "v.json", _deep_json()), "--model", m],
                        "levels deep"),
    # paths a saved prompt names stay in its folder
    "head_file_absolute": (lambda t, m: ["evaluate", "--prompt", _saved_prompt(
        t, head={"kind": "protoverb", "config": {}, "file": "/etc/passwd"})], "outside the prompt folder"),
    "head_file_parent": (lambda t, m: ["evaluate", "--prompt", _saved_prompt(
        t, head={"kind": "protoverb", "config": {}, "file": "../../x.safetensors"})], "outside the prompt folder"),
    "delta_file_parent": (lambda t, m: ["evaluate", "--prompt", _saved_prompt(
        t, delta={"structure": [], "file": "../delta.safetensors"})], "outside the prompt folder"),
    "best_json_prompt_path_absolute": (lambda t, m: ["evaluate", "--prompt", _write(
        t / "best.json", json.dumps({"schema_version": 1, "prompt": {"path": "/etc"}}))], "outside"),
    "best_json_prompt_path_parent": (lambda t, m: ["evaluate", "--prompt", _write(
        t / "best.json", json.dumps({"schema_version": 1, "prompt": {"path": "../../.."}}))], "outside"),
    "old_best_json_delta_path": (lambda t, m: ["evaluate", "--prompt", _write(t / "best.json", json.dumps(
        {"template": "{text_a} {mask}", "verbalizer": {"label_words": {"a": ["x"], "b": ["y"]}},
         "delta": {"path": "/etc"}}))], "outside"),
    # tracebacks where one line is promised
    "out_under_a_file": (lambda t, m: _search(t, m, "select", _SEL, "--out", _write(t / "f", "x") + "/best.json"),
                         "cannot write"),
    "evaluate_out_under_a_file": (lambda t, m: ["evaluate", "--words", "negative=bad", "--words", "positive=good",
                                                "--model", m, "--max-examples", "20", "--out",
                                                _write(t / "f", "x") + "/r.json"], "cannot write"),
    "space_out_under_a_file": (lambda t, m: ["space", "select", "--task", "mr", "--out",
                                             _write(t / "f", "x") + "/space.yaml"], "cannot write"),
    "predict_out_under_a_file": (lambda t, m: ["predict", "--prompt", _saved_prompt(t), "--input", "-", "--out",
                                               _write(t / "f", "x") + "/p.jsonl"], "cannot write"),
    "storage_under_a_file": (lambda t, m: _search(t, m, "select", _SEL, "--storage",
                                                  f"sqlite:///{_write(t / 'f', 'x')}/s.db"), "--storage"),
    "trial_dir_is_a_file": (lambda t, m: _search(t, m, "select", _SEL, "--trial-dir", _write(t / "f", "x")),
                            "--trial-dir"),
    "trial_folder_is_a_file": (lambda t, m: _search(t, m, "select", _SEL, "--study", "st", "--trial-dir",
                                                    str(Path(_write(t / "tr" / "st", "x")).parent)), "is a file"),
    "seed_too_large": (lambda t, m: _search(t, m, "select", _SEL, "--seed", "4294967296"), "--seed must be"),
    "evaluate_seed_negative": (lambda t, m: ["evaluate", "--seed", "-1", "--words", "negative=bad", "--words",
                                             "positive=good", "--model", m], "--seed must be"),
    "verbalizer_folder": (lambda t, m: ["evaluate", "--verbalizer", str(t), "--model", m], "is a folder"),
    "verbalizer_binary": (lambda t, m: ["evaluate", "--verbalizer", _write(t / "v.json", b"\x00\x01\xff"), "--model",
                                        m], "binary"),
    "verbalizer_word_number": (lambda t, m: ["evaluate", "--verbalizer", _write(t / "v.json", '{"negative": 1}'),
                                             "--model", m], "--verbalizer"),
    "verbalizer_weight_text": (lambda t, m: ["evaluate", "--verbalizer", _write(t / "v.json", json.dumps(
        {"label_words": [["bad"], ["good"]], "weights": [["x"], [1]]})), "--model", m], "--verbalizer"),
    "words_duplicate": (lambda t, m: ["evaluate", "--words", "negative=bad,bad", "--words", "positive=good",
                                      "--model", m], "twice"),
    "dashboard_port_high": (lambda t, m: ["dashboard", "--port", "70000"], "--port"),
    "dashboard_port_negative": (lambda t, m: ["dashboard", "--port", "-1"], "--port"),
    "dashboard_public_host": (lambda t, m: ["dashboard", "--host", "0.0.0.0"], "--public"),
    "kpt_kb_binary": (lambda t, m: _search(t, m, "kpt", "seed_words: {negative: [bad], positive: [good]}\n"
                                           f"sources: [kb]\nkb_file: {_write(t / 'kb.tsv', bytes(range(256)))}\n"),
                      "binary"),
    "kpt_kb_missing": (lambda t, m: _search(t, m, "kpt", "seed_words: {negative: [bad], positive: [good]}\n"
                                            f"sources: [kb]\nkb_file: {t / 'nokb.tsv'}\n"), "does not exist"),
    "kpt_kb_not_tsv": (lambda t, m: _search(t, m, "kpt", "seed_words: {negative: [bad], positive: [good]}\n"
                                            f"sources: [kb]\nkb_file: {_write(t / 'kb.tsv', _PASSWD)}\n"),
                       "expected 'key<TAB>"),
    "delta_json_corrupt": (lambda t, m: ["delta", _delta_folder(t, "{not json", b"")], "not JSON"),
    "delta_bad_keys": (lambda t, m: ["delta", _delta_folder(t, _STRUCTURE, _safetensors({"weird": 1}))], "delta"),
    "delta_truncated_weights": (lambda t, m: ["delta", _delta_folder(
        t, _STRUCTURE, _safetensors({"deltas.0.a": 1})[:-3])], "cannot read"),
    "delta_missing_weights": (lambda t, m: ["delta", _delta_folder(t, _STRUCTURE, None)], "missing"),
    "task_tilde_nouser": (lambda t, m: _search(t, m, "select", _SEL, "--task", "~nouser_xyz/data.csv"), "~nouser"),
    "task_name_too_long": (lambda t, m: _search(t, m, "select", _SEL, "--task", "x" * 300 + ".csv"), "cannot read"),
    "input_name_too_long": (lambda t, m: ["predict", "--prompt", _saved_prompt(t), "--input", "x" * 300 + ".txt"],
                            "File name too long"),
    "prompt_name_too_long": (lambda t, m: ["evaluate", "--prompt", "x" * 300 + ".json"], "File name too long"),
    "space_name_too_long": (lambda t, m: _search(t, m, "select", None, "--space", "x" * 300 + ".yaml"),
                            "File name too long"),
    "storage_name_too_long": (lambda t, m: _search(t, m, "select", _SEL, "--storage", "sqlite:///" + "x" * 300 + ".db"),
                              "File name too long"),
    "out_name_too_long": (lambda t, m: _search(t, m, "select", _SEL, "--out", "x" * 300 + ".json"), "File name too long"),
    "task_name_empty": (lambda t, m: _search(t, m, "select", _SEL, "--task", ""), "--task"),
    # accepted silently before
    "csv_label_empty": (lambda t, m: _search(t, m, "select", _SEL, "--task", _write(
        t / "d.csv", "text,label\n" + "".join(f"text {i},{'negative' if i % 2 else 'positive'}\n" for i in range(40))
        + "text x,\n")), "label"),
    "jsonl_label_nan": (lambda t, m: _search(t, m, "select", _SEL, "--task", _write(t / "d.jsonl", "".join(
        json.dumps({"text": f"t {i}", "label": i % 2}) + "\n" for i in range(40)) + '{"text": "x", "label": NaN}\n')),
        "label"),
    "label_words_duplicate": (lambda t, m: _search(
        t, m, "select", "templates: ['{text_a} It was {mask}.']\nlabel_words: [{negative: [bad, bad], positive: [good]}]\n"),
        "twice"),
    "prompt_other_format": (lambda t, m: ["evaluate", "--prompt", _write(t / "p" / "prompt.json", json.dumps(
        {"format": "someone-elses-format", "templates": [{"text": "{text_a} {mask}"}],
         "verbalizer": {"label_words": {"a": ["x"], "b": ["y"]}}}))], "format"),
    # misleading messages
    "autoprompt_empty_space": (lambda t, m: _search(t, m, "autoprompt", "# nothing\n"), "is empty"),
    "class_key_integer": (lambda t, m: _search(t, m, "protoverb", "label_words: {0: [bad], 1: [good]}\n"),
                          "class names"),
    # found inside the first trial before: checked before the study opens
    "s3delta_pattern_no_module": (lambda t, m: _search(t, m, "s3delta", "label_words: {negative: [bad], positive: [good]}\n"
                                                       "lora_targets: [no_such_module]\nln_targets: []\nadapter_targets: []\n"),
                                  "matches no module"),
    "s3delta_invalid_regex": (lambda t, m: _search(t, m, "s3delta", "label_words: {negative: [bad], positive: [good]}\n"
                                                   "lora_targets: ['c_attn(']\nln_targets: []\nadapter_targets: []\n"),
                              "regular expression"),
    "s3delta_budget_whole_space": (lambda t, m: _search(t, m, "s3delta", "label_words: {negative: [bad], positive: [good]}\n"
                                                        "lora_targets: []\nln_targets: [ln_1]\nadapter_targets: []\n"
                                                        "budget_percent: 90\n"), "covers the whole search space"),
    "s3delta_default_space_on_gpt2": (lambda t, m: _search(t, m, "s3delta", None), "matches no module"),
    "autoprompt_init_multi_token": (lambda t, m: _search(t, m, "autoprompt", "template: '{text_a} {trigger*2} {mask}.'\n"
                                                         "label_words: {negative: [bad], positive: [good]}\n"
                                                         "init_token: [wonderfulwonderful]\n"), "single-token"),
    "demos_encoder_missing": (lambda t, m: _search(t, m, "demos", "template: '{text_a} It was {mask}.'\n"
                                                   "label_words: {negative: [bad], positive: [good]}\n"
                                                   f"selection: [similar]\nencoder: {t / 'no-encoder'}\n"), "encoder"),
    "demos_encoder_remote_code": (lambda t, m: _search(t, m, "demos", "template: '{text_a} It was {mask}.'\n"
                                                       "label_words: {negative: [bad], positive: [good]}\n"
                                                       f"selection: [similar]\nencoder: {_remote_code_model(t)}\n"),
                                  "cannot load sentence encoder"),
    "label_word_16kb": (lambda t, m: _search(t, m, "select", "templates: ['{text_a} It was {mask}.']\n"
                                             "label_words: [{negative: [bad], positive: [" + "great " * 2700 + "]}]\n"),
                        "maximum length"),
    # --shots on the CLI
    "shots_negative": (lambda t, m: _search(t, m, "select", _SEL, "--shots", "-2"), "--shots must be"),
    "max_examples_zero": (lambda t, m: _search(t, m, "select", _SEL, "--max-examples", "0"), "--max-examples must be"),
    "shots_too_many_names_the_flag": (lambda t, m: _search(t, m, "select", _SEL, "--task", _csv(t / "d.csv", _rows(30)),
                                                           "--shots", "40", "--max-examples", "1000"), "--shots"),
}


def _remote_code_model(tmp: Path) -> str:
    """A model folder whose classes live in its own Python files (it needs trust_remote_code)."""
    auto_map = {"AutoConfig": "modeling.MyConfig", "AutoModel": "modeling.MyModel", "AutoTokenizer": ["tok.MyTok", None]}
    return str(Path(_write(tmp / "remote" / "config.json", json.dumps({"model_type": "mycustom",
                                                                          "auto_map": auto_map}))).parent)


def _safetensors(tensors: dict[str, int]) -> bytes:
    import torch
    from safetensors.torch import save

    return save({k: torch.zeros(v) for k, v in tensors.items()})


def _trials_left(tmp: Path) -> int:
    db = tmp / "s.db"
    if not db.exists():
        return 0
    url = f"sqlite:///{db}"
    return sum(len(optuna.load_study(study_name=s.study_name, storage=url).trials)
               for s in optuna.get_all_study_summaries(url))


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_nothing_left(case, tiny_model_dir, tmp_path, capfd, monkeypatch):
    """In-process: ``main(argv)`` returns 2 with one ``error:`` line (no traceback, no 'Trial 0 failed'),
    writes no output file and leaves no trial in the study."""
    from autoprompt_kit.cli import main

    build, message = BAD_INPUTS[case]
    work = tmp_path / "w"
    work.mkdir()
    argv = build(work, tiny_model_dir)
    monkeypatch.chdir(work)
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO("a text\n"))
    start = time.perf_counter()
    rc = main(argv)
    seconds = time.perf_counter() - start
    err = capfd.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert rc == 2, (case, err)
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, (case, err)
    assert message in lines[0], (case, lines[0])
    assert len(lines[0]) < 600 and "root:x" not in lines[0]
    assert not (work / "out").exists() and not (work / "best.json").exists() or case.startswith(("prompt_json", "best_json", "old_best"))
    assert _trials_left(work) == 0, case
    if case == "yaml_billion_laughs":
        assert seconds < 1.0, seconds


def test_default_shots_fit_a_small_file_and_say_what_was_chosen(tiny_model_dir, tmp_path, capfd, monkeypatch):
    """A 90-row, 3-class CSV with no --shots: ``space`` and ``search`` work and say which K they chose."""
    from autoprompt_kit.cli import main

    data = _csv(tmp_path / "small.csv", _rows(90, ("sports", "politics", "science")))
    monkeypatch.chdir(tmp_path)
    assert main(["space", "select", "--task", data]) == 0
    assert "--shots" in capfd.readouterr().err
    argv = ["search", "select", "--task", data, "--model", tiny_model_dir, "--storage",
            f"sqlite:///{tmp_path / 's.db'}", "--trials", "1", "--quiet", "--test-split", "", "--out", ""]
    assert main(argv) == 0
    out = capfd.readouterr()
    assert "--shots" in out.out + out.err


def test_secrets_go_to_children_through_the_environment_not_argv(monkeypatch):
    """``--workers`` children and the dashboard get the PostgreSQL URL with its password from the
    environment: ``ps`` shows the command line of every process on the machine."""
    from autoprompt_kit import cli
    from autoprompt_kit.search.worker import WorkerJob, worker_command

    url = "postgresql+psycopg2://u:secretpw@127.0.0.1:5432/db"
    job = WorkerJob(method="select", space={}, study="study", task={"source": "mr", "shots": 4, "seed": 13},
                    harness={"batch_size": 8, "precision": "fp32"}, trials=2)
    argv = worker_command("/tmp/job.json")
    env = cli._child_env(url)
    assert "secretpw" not in " ".join(argv) and url not in argv
    assert "secretpw" not in job.to_json()  # nor in the job file the workers read
    assert env[cli.STORAGE_ENV] == url


def test_dashboard_on_a_public_host_needs_public_and_warns(tmp_path, capfd, monkeypatch):
    """``--host 0.0.0.0`` is refused without ``--public``; with it the dashboard starts with a warning,
    and its server process gets the storage URL from the environment, not its command line."""
    import subprocess as sp

    from autoprompt_kit import cli

    started = []

    class FakeServer:
        returncode = 0

        def __init__(self, argv, env=None, **kw):
            started.append((argv, env))

        def poll(self):
            return 0

    monkeypatch.setattr(sp, "Popen", FakeServer)
    monkeypatch.setattr(cli, "_forward_signals", lambda procs: None)
    url = f"sqlite:///{tmp_path / 'd.db'}"
    assert cli.main(["dashboard", "--storage", url, "--host", "0.0.0.0"]) == 2 and not started
    assert cli.main(["dashboard", "--storage", url, "--host", "0.0.0.0", "--public"]) == 0
    err = capfd.readouterr().err
    assert "warning: serving" in err and "network" in err
    argv, env = started[0]
    assert url not in " ".join(argv) and env[cli.STORAGE_ENV] == url


def test_autoprompt_default_trigger_runs_where_the_is_several_tokens(tiny_models, monkeypatch):
    """The space `autoprompt-kit space autoprompt` writes starts triggers at ``mask``; on a model with no
    mask token that was the word "the", several tokens on some BPE vocabularies — the first trial
    failed. Now a one-token neutral word (or the fallback token) is used; an explicit word is still checked."""
    from autoprompt_kit.methods.autoprompt import init_triggers

    model, tok, kind = tiny_models["gpt2"]
    h = Harness(model, tok, kind=kind, progress=False)
    real = h.encoder.word_ids
    monkeypatch.setattr(h.encoder, "word_ids", lambda w, s: (1, 2, 3, 4) if w == "the" else real(w, s))
    template = init_triggers(h, Template("{text_a} {trigger*3} {mask}."), "mask")
    assert len(set(template.trigger_ids)) == 1 and template.trigger_ids[0] is not None
    with pytest.raises(AutoPromptError, match="is 4 tokens; choose a single-token word"):
        init_triggers(h, Template("{text_a} {trigger} {mask}."), "the")


@pytest.mark.services
def test_worker_command_lines_never_show_the_postgresql_password(tiny_model_dir, tmp_path):
    """``ps`` shows every process's command line to every user: the ``--workers`` children read the
    storage URL from the environment. (The throwaway server trusts loopback, so any password works.)"""
    from services import postgres_server

    with postgres_server(dbname="pw") as url:
        secret_url = url.replace("postgres@", "postgres:secretpw@")
        args = ["search", "select", "--space", str(SPACE), "--model", tiny_model_dir, "--storage", secret_url,
                "--trials", "48", "--workers", "3", "--max-examples", "400", "--shots", "16", "--quiet",
                "--test-split", "", "--out", ""]
        proc = subprocess.Popen([sys.executable, "-m", "autoprompt_kit.cli", *args], env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        def command_lines() -> list[str]:
            out = []
            for child in _children(proc.pid):  # short-lived helpers (ldconfig…) come and go: read what is there
                try:
                    out.append(Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
                except OSError:
                    pass
            return out

        try:
            assert _wait_for(lambda: sum("autoprompt_kit.search.worker " in c for c in command_lines()) == 2, 120), \
                "no workers started"
            lines = command_lines()
            assert not any("secretpw" in c for c in lines), lines
            assert _wait_for(lambda: optuna.load_study(study_name=optuna.get_all_study_summaries(url)[0].study_name,
                                                       storage=url).trials != [], 120)
        finally:
            proc.kill()
            proc.wait()


def test_bounded_readers_refuse_oversized_files_before_reading(tmp_path, monkeypatch):
    """The size cap is checked from the file's size, before it is read: a task file over
    ``io.MAX_DATA_BYTES`` and a settings file over the given limit are one clear error each."""
    from autoprompt_kit import io as kit_io

    data = tmp_path / "big.csv"
    data.write_text("text,label\n" + "".join(f"text {i},{i % 2}\n" for i in range(200)))
    monkeypatch.setattr(kit_io, "MAX_DATA_BYTES", 1024)
    with pytest.raises(AutoPromptError, match=r"big.csv' is 2.1 KiB; at most 1 KiB is read"):
        load_task(str(data))
    space = tmp_path / "space.yaml"
    space.write_text("templates: ['{text_a} It was {mask}.']\n" * 10)
    with pytest.raises(AutoPromptError, match="at most"):
        kit_io.load_yaml(space, "search space", limit=100)
    assert kit_io.loads_yaml("a: [1, {b: 2}]", "x") == {"a": [1, {"b": 2}]}
    assert kit_io.loads_json('{"a": [1, 2]}', "x") == {"a": [1, 2]}
