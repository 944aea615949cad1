"""Status lines ("preemption signal: saved step 40, stopping", "exported ... to ...") as log records.

Library code does not print. What a user of the CLI should see it logs at INFO on one logger,
STATUS ("prorank"), and launch/cli.py installs the handler that prints each record as
"[prorank] <message>" on stdout. The name stands apart from the module loggers
(prorank_jax.*, scoring.*, rl.*), so installing that handler changes nothing about where
their warnings go; without it (the library used from Python) status lines stay silent
unless the application configures logging.
"""

from __future__ import annotations

import logging
import sys

STATUS = logging.getLogger("prorank")
STATUS_FORMAT = "[prorank] %(message)s"


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever sys.stdout is when a record arrives (a redirected or captured one too)."""

    def __init__(self):
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ assigns it; the property always reads sys.stdout
        pass


def install_cli_handler() -> None:
    """Print status lines as "[prorank] ..." on stdout (once, however often it is called)."""
    if any(isinstance(h, _StdoutHandler) for h in STATUS.handlers):
        return
    handler = _StdoutHandler()
    handler.setFormatter(logging.Formatter(STATUS_FORMAT))
    STATUS.addHandler(handler)
    STATUS.setLevel(logging.INFO)
    STATUS.propagate = False  # an application's root handler (serve's basicConfig) would print it twice
