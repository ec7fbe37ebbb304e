"""The README's results table: the calibrated manual prompt, the best single-method row and `auto`,
test accuracy mean ± sd over seeds, from the results-table studies.

    python benchmarks/auto_summary.py --auto sqlite:///runs/rt_auto_a.db sqlite:///runs/rt_auto_b.db ...
"""

from __future__ import annotations

import argparse
import re
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("mr", "tweets", "amazon", "nyt", "fortunes", "spam")
#: The committed tables of every other method (mean ± sd over seeds 13/21/42).
TABLES = ("results.md", "results_fortunes_spam.md", "results_demos.md")


def committed_rows() -> dict[str, dict[str, float]]:
    rows: dict[str, dict[str, float]] = {}
    for name in TABLES:
        lines = (ROOT / "benchmarks" / name).read_text().splitlines()
        header = next(line for line in lines if line.startswith("| method"))
        columns = [c.strip() for c in header.strip("|").split("|")]
        start = lines.index(header) + 2
        for line in lines[start:]:
            if not line.startswith("|"):
                break
            cells = [c.strip() for c in line.strip("|").split("|")]
            for col, cell in zip(columns[1:], cells[1:]):
                m = re.match(r"([0-9.]+) ± ", cell)
                if col in TASKS and m:
                    rows.setdefault(cells[0], {})[col] = float(m.group(1))
    return rows


def corrected_estimate(url: str, task: str, seed: int) -> float | None:
    """The selection-corrected estimate of a cell's inner auto study (``<storage>-searches.db``)."""
    import optuna

    from autoprompt_kit.search import best_trial
    from autoprompt_kit.search.folds import selection_bias

    searches = url.replace(".db", "-searches.db")
    for summary in optuna.get_all_study_summaries(searches):
        if summary.study_name.startswith(f"auto-{task}-s{seed}-"):
            study = optuna.load_study(study_name=summary.study_name, storage=searches)
            best = best_trial(study)
            k = len(best.user_attrs["cv"]["fold_scores"])
            rivals = [t for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
                      if len((t.user_attrs.get("cv") or {}).get("fold_scores", [])) == k]
            winner = [t.number for t in rivals].index(best.number)
            return best.user_attrs["dev_accuracy"] - selection_bias([t.user_attrs["cv"]["fold_scores"] for t in rivals],
                                                                   winner)
    return None


def auto_cells(storages: list[str]) -> dict[str, list[tuple[int, float, float, float | None]]]:
    import optuna

    cells: dict[str, list[tuple[int, float, float, float | None]]] = {}
    for url in storages:
        study = optuna.load_study(study_name="results-table-quick", storage=url)
        for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
            if t.params.get("method") == "auto":
                task, seed = t.params["task"], t.params["seed"]
                cells.setdefault(task, []).append((seed, t.value, t.user_attrs["cv_accuracy"],
                                                   corrected_estimate(url, task, seed)))
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--auto", nargs="+", required=True, help="storages of the results-table auto cells")
    parser.add_argument("--cells", action="store_true", help="also one row per cell")
    args = parser.parse_args()
    rows, cells = committed_rows(), auto_cells(args.auto)
    best = {t: max(((r, v[t]) for r, v in rows.items() if t in v and not r.startswith("auto")), key=lambda x: x[1]) for t in TASKS}
    calibrated = rows["manual + content-free calibration"]
    print("| | " + " | ".join(TASKS) + " |")
    print("|---|" + "---:|" * len(TASKS))
    print("| manual prompt + content-free calibration | " + " | ".join(f"{calibrated[t]:.3f}" for t in TASKS) + " |")
    print("| best single method (its row) | " + " | ".join(f"{best[t][1]:.3f} ({best[t][0].split(' (')[0]})" for t in TASKS) + " |")
    out, gaps, fixed = [], [], []
    for t in TASKS:
        cs = sorted(cells.get(t, []))
        if not cs:
            out.append("–")
            continue
        test = [c[1] for c in cs]
        gaps += [c[2] - c[1] for c in cs]
        fixed += [c[3] - c[1] for c in cs if c[3] is not None]
        sd = f" ± {statistics.stdev(test):.3f}" if len(test) > 1 else ""
        out.append(f"{statistics.mean(test):.3f}{sd}" + ("" if len(cs) == 3 else f" ({len(cs)} seeds)"))
    print("| **auto**, 10 min budget | " + " | ".join(out) + " |")
    if gaps:
        print(f"\nauto's cross-validated accuracy minus its test accuracy: mean {statistics.mean(gaps):+.3f}, "
              f"mean absolute {statistics.mean(abs(g) for g in gaps):.3f} over {len(gaps)} cells")
    if args.cells:
        print("\n| task | seed | test accuracy | CV accuracy ± se | estimate for new data | search | chosen prompt |")
        print("|---|---:|---:|---:|---:|---:|---|")
        for url in args.auto:
            import optuna

            study = optuna.load_study(study_name="results-table-quick", storage=url)
            for t in sorted(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)),
                            key=lambda t: (TASKS.index(t.params["task"]), t.params["seed"])):
                a = t.user_attrs
                est = corrected_estimate(url, t.params["task"], t.params["seed"])
                print(f"| {t.params['task']} | {t.params['seed']} | {t.value:.3f} | {a['cv_accuracy']:.3f} ± {a['cv_se']:.3f} "
                      f"| {'–' if est is None else f'{est:.3f}'} | {a['search_seconds'] / 60:.1f} min | {a['prompt'][:70]} |")
    if fixed:
        print(f"the selection-corrected estimate minus test accuracy: mean {statistics.mean(fixed):+.3f}, "
              f"mean absolute {statistics.mean(abs(g) for g in fixed):.3f} over {len(fixed)} cells")


if __name__ == "__main__":
    main()
