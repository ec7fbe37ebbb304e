"""CLI behaviour that needs no model: help, and exit code 2 with one clear line on bad input.

In-process (``run_cli`` calls ``main(argv)``); one smoke test runs the installed ``autoprompt-kit``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli as cli

W = ["--words", "negative=terrible", "--words", "positive=great"]


def test_the_console_script_exits_2_with_one_error_line():
    """The one run of the real executable (the ``[project.scripts]`` entry, a fresh interpreter): an
    error is exit status 2 and one ``error:`` line on stderr — what every in-process test assumes."""
    exe = Path(sys.executable).with_name("autoprompt-kit")
    if not exe.exists():
        pytest.skip(f"no console script at {exe}: pip install -e .")
    proc = subprocess.run([str(exe), "evaluate", "--words", "oops"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines() == ["error: " + proc.stderr.strip().split("error: ", 1)[1]]
    assert "expected LABEL=word1,word2" in proc.stderr


def test_help_everywhere():
    assert cli("--help").returncode == 0
    assert "--template" in cli("evaluate", "--help").stdout


def test_method_help_lists_the_registry():
    """The method list in ``search`` / ``space`` help is the registry's, not a list kept by hand."""
    from autoprompt_kit import cli as cli_module
    from autoprompt_kit.search.base import REGISTRY, Searcher

    class Plugin(Searcher):  # what an entry-point method adds to the registry
        name = "zz_plugin"

    REGISTRY["zz_plugin"] = Plugin
    try:
        parser = cli_module.build_parser()
        sub = next(a for a in parser._actions if a.dest == "command").choices
        for command in ("search", "space"):
            text = " ".join(sub[command].format_help().split())
            for name in sorted(REGISTRY):
                assert name in text, (command, name)
    finally:
        del REGISTRY["zz_plugin"]


@pytest.mark.parametrize("args, message", [
    (["--template", "{text_a} great", *W], "has no mask"),
    (["--template", "{text_a} {mask} {mask}", *W], "2 masks"),
    (["--template", "{text_b} {mask}", "--task", "mr", "--max-examples", "20", *W], "unknown field"),
    (["--words", "oops"], "expected LABEL=word1,word2"),
    (["--task", "mr", "--max-examples", "20", "--words", "neg=bad", "--words", "pos=good"], "do not match"),
    (["--task", "no_such_task_anywhere", *W], "unknown task 'no_such_task_anywhere'"),
    (["--task", "missing.csv", *W], "missing.csv"),
    (["--task", "mr", "--max-examples", "20", "--model", "no/such-model", *W], "unknown model 'no/such-model'"),
])
def test_bad_input_exits_2_with_one_clear_line(args, message):
    proc = cli("evaluate", *args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")


def test_device_and_precision_options(tiny_model_dir):
    import torch

    base = ["evaluate", "--model", tiny_model_dir, "--task", "mr", "--max-examples", "20", *W, "--quiet",
            "--calibration", "none"]
    ok = cli(*base, "--device", "cpu", "--precision", "bf16")
    assert ok.returncode == 0, ok.stderr
    assert "device   cpu (bf16)" in ok.stdout
    bad = cli(*base, "--device", "gpu")
    assert bad.returncode == 2 and "unknown device 'gpu'" in bad.stderr and "Traceback" not in bad.stderr
    assert cli(*base, "--precision", "fp16").returncode == 2  # argparse choices
    if not torch.cuda.is_available():
        missing = cli(*base, "--device", "cuda")
        assert missing.returncode == 2 and "CUDA is not available" in missing.stderr
