"""The ``clinicflow`` command: one entry point, subcommands registered by their owners.

Each module that offers a subcommand exposes ``add_cli(subparsers)`` which adds
its parser and sets ``func`` (taking the parsed ``argparse.Namespace`` and
returning an exit code). Imports happen lazily so ``clinicflow --help`` stays
fast and nothing connects at import time.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# module path -> registers one or more subcommands
_COMMAND_MODULES = (
    "tools.stack",  # clinicflow stack up|status|down
    "tools.devup",  # clinicflow up (make up)
    "shared.runner",  # clinicflow run checkin|flow|notifications|billing
    "shared.admin",  # clinicflow topics create|list
    "tools.replay",  # clinicflow replay LOG.jsonl
    "tools.simulate",  # clinicflow simulate
    "tools.backtest",  # clinicflow backtest
    "tools.accuracy_day",  # clinicflow accuracy-day (a played day's live accuracy vs backtest)
    "tools.asyncapi",  # clinicflow asyncapi
    "tools.digest",  # clinicflow digest (boards and checkpoints of simulated days, hashed)
    "tools.screenshots",  # clinicflow screenshots (the README's pictures, from make up)
    "services.billing.cli",  # clinicflow billing reconcile
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every available subcommand."""
    parser = argparse.ArgumentParser(
        prog="clinicflow",
        description="Event-driven patient flow for outpatient clinics.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_path in _COMMAND_MODULES:
        try:
            module = importlib.import_module(module_path)
        except ModuleNotFoundError as exc:
            # a subcommand whose module is not there yet is simply not offered
            if exc.name and module_path.startswith(exc.name):
                continue
            raise
        module.add_cli(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    code = func(args)
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
