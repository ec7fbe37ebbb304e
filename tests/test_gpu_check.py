"""``benchmarks/gpu_check.sh`` without a CUDA device: skips cleanly, exit 0, a report that says so."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


def test_gpu_check_skips_cleanly_without_cuda(tmp_path):
    report = tmp_path / "report.md"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "REPORT": str(report), "PY": sys.executable}
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "skipped (no CUDA)" in proc.stdout
    text = report.read_text()
    assert text.startswith("# GPU check") and "**skipped**: no CUDA here" in text
    assert "## CUDA tests" not in text  # nothing ran
