"""The argument parser of every ``eir-sim`` command: a bad argument is one line.

Owns only how argparse reports: ``eir-sim run: the following arguments are
required: --target (see --help)`` on stderr and exit status 2, instead of the
usage block and the error; and a help page that keeps the line breaks of its
description and examples (epilog).
"""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

USAGE_ERROR = 2


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2) and help text laid out as written."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: {message} (see --help)\n")
