"""prorank_jax.status: library status lines reach the CLI's stdout as "[prorank] ..." lines."""

from __future__ import annotations

import logging

import pytest

from prorank_jax.status import STATUS, install_cli_handler


@pytest.fixture
def cli_handler():
    before = (list(STATUS.handlers), STATUS.level, STATUS.propagate)
    install_cli_handler()
    install_cli_handler()  # a second call adds nothing
    yield
    STATUS.handlers[:] = before[0]
    STATUS.setLevel(before[1])
    STATUS.propagate = before[2]


def test_status_lines_print_as_before(cli_handler, capsys):
    STATUS.info("preemption signal: saved step %d, stopping", 40)
    captured = capsys.readouterr()
    assert captured.out == "[prorank] preemption signal: saved step 40, stopping\n" and captured.err == ""


def test_module_warnings_keep_their_way(cli_handler, capsys, caplog):
    # Not a child of the status logger: a module's warning still reaches the root handlers
    # and is not turned into a status line.
    logging.getLogger("prorank_jax.checkpoint").warning("step 3 is damaged")
    assert "[prorank]" not in capsys.readouterr().out
    assert [(r.name, r.getMessage()) for r in caplog.records] == [("prorank_jax.checkpoint", "step 3 is damaged")]


@pytest.fixture
def no_cli_handler():
    # A test that ran the CLI in this process (same xdist worker) left its handler installed.
    before = (list(STATUS.handlers), STATUS.level, STATUS.propagate)
    STATUS.handlers[:] = []
    STATUS.setLevel(logging.NOTSET)
    STATUS.propagate = True
    yield
    STATUS.handlers[:] = before[0]
    STATUS.setLevel(before[1])
    STATUS.propagate = before[2]


def test_silent_without_the_cli(no_cli_handler, capsys):
    STATUS.info("exported %s", "x")
    assert capsys.readouterr().out == ""
