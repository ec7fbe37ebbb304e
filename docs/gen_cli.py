"""Write docs/cli.md from the CLI's own argparse help (run after changing a command):

    python docs/gen_cli.py
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from autoprompt_kit.cli import build_parser


def main() -> None:
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal: keep the page stable
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    lines = ["# Command line", "", "Generated from `autoprompt-kit --help` by `docs/gen_cli.py`; every command "
             "prints the same with `--help`. Bad input is one line `error: …` and exit code 2.", "",
             "```", parser.format_help().rstrip(), "```", ""]
    for name, command in sub.choices.items():
        lines += [f"## `{name}`", "", "```", command.format_help().rstrip(), "```", ""]
    Path(__file__).with_name("cli.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
