#!/usr/bin/env bash
# One check of the CUDA path, for a lent GPU machine: writes one Markdown report.
#
#   bash benchmarks/gpu_check.sh            (or: make gpu-check)
#
# Steps (each under its own time limit; a failed step is reported and the next one still runs):
#   1. the CUDA-relevant fast tests (harness, shared prefix, precision, score cache) on the GPU;
#   2. bf16-vs-fp32 parity and throughput (benchmarks/precision_bench.py on the GPU);
#   3. harness vs the bare transformer body on Gemma (benchmarks/harness_throughput.py);
#   4. the shared-prefix benchmark (benchmarks/shared_prefix.py);
#   5. one `select` search and one short `auto` search end to end (the CLI).
# Without CUDA it writes a report that says so and exits 0 (nothing is run).
# Settings: REPORT (report path; default $OUT/gpu_check.md when $OUT is set, else
# benchmarks/gpu_check_report.md), PY (python; default .venv/bin/python if present),
# GEMMA_CONFIG (a folder with Gemma 3 270M's config.json + tokenizer, for machines where the
# embedded weights cannot be installed: steps 2-4 then run on seed-fixed random weights),
# STEP_TIMEOUT (seconds per step, default 300), AUTO_BUDGET (default 3m).
set -u
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3 || echo python )}
REPORT=${REPORT:-$( [ -n "${OUT:-}" ] && echo "$OUT/gpu_check.md" || echo benchmarks/gpu_check_report.md )}
STEP_TIMEOUT=${STEP_TIMEOUT:-300}
AUTO_BUDGET=${AUTO_BUDGET:-3m}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
mkdir -p "$(dirname "$REPORT")"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

{
  echo "# GPU check"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "- python: $PY"
} > "$REPORT"

device=$("$PY" - <<'EOF' 2>&1
import torch
if torch.cuda.is_available():
    print(f"{torch.cuda.get_device_name(0)}; torch {torch.__version__}; CUDA {torch.version.cuda}")
else:
    print(f"NONE; torch {torch.__version__}")
EOF
)
if [ $? -ne 0 ] || [[ "$device" == NONE* ]] || [ -z "$device" ]; then
  {
    echo "- device: no CUDA device (${device##*; })"
    echo
    echo "**skipped**: no CUDA here; nothing was run."
  } >> "$REPORT"
  echo "gpu-check: skipped (no CUDA); report in $REPORT"
  exit 0
fi
echo "- device: $device" >> "$REPORT"
[ -n "${GEMMA_CONFIG:-}" ] && echo "- Gemma: config + tokenizer from $GEMMA_CONFIG, random weights" >> "$REPORT"
GEMMA=()
[ -n "${GEMMA_CONFIG:-}" ] && GEMMA=(--gemma-config "$GEMMA_CONFIG")

failed=0
step() {  # step TITLE COMMAND...: run with a time limit, put its status and output tail in the report
  local title=$1; shift
  local start=$SECONDS
  echo "gpu-check: $title"
  timeout "$STEP_TIMEOUT" "$@" > "$WORK/out" 2>&1
  local rc=$?
  [ $rc -ne 0 ] && failed=$((failed + 1))
  {
    echo
    echo "## $title"
    echo
    echo "\`$*\` — exit $rc$( [ $rc -eq 124 ] && echo ' (time limit)'), $((SECONDS - start)) s"
    echo
    echo '```'
    tail -n 40 "$WORK/out"
    echo '```'
  } >> "$REPORT"
}

step "CUDA tests" "$PY" -m pytest -q -m "not slow and not services" -p no:cacheprovider \
  tests/test_harness.py tests/test_shared_prefix.py tests/test_precision.py tests/test_score_cache.py
step "bf16 vs fp32 parity and throughput" "$PY" benchmarks/precision_bench.py --device cuda --examples 512 \
  --batch-size 64 --precisions fp32 bf16 "${GEMMA[@]}"
step "harness vs bare body (Gemma)" "$PY" benchmarks/harness_throughput.py --device cuda --examples 2000 \
  --batch-size 64 --repeats 3 --skip-mlm "${GEMMA[@]}"
step "shared-prefix benchmark" "$PY" benchmarks/shared_prefix.py --device cuda --batch-size 64 "${GEMMA[@]}"
step "select search end to end" "$PY" -m autoprompt_kit.cli search select --task mr \
  --space search_spaces/select_sentiment.yaml --trials 6 --max-examples 200 \
  --storage "sqlite:///$WORK/gpu_check.db" --out "$WORK/select.json"
step "auto search end to end ($AUTO_BUDGET)" "$PY" -m autoprompt_kit.cli search auto --task fortunes \
  --budget "$AUTO_BUDGET" --storage "sqlite:///$WORK/gpu_check.db" --out "$WORK/auto.json"

{
  echo
  echo "**$failed step(s) failed.**"
} >> "$REPORT"
echo "gpu-check: done, $failed failed; report in $REPORT"
[ $failed -eq 0 ]
