"""A prorank command in which one checkpoint step reads as damaged to this process only.

    python -m tests.helpers.one_host_damage STEP COMMAND ARGS...

On one machine every process reads the same files, so "a checkpoint damaged on one host"
is simulated: checkpoint.step_problem reports folder STEP's params metadata unreadable
here (what a host with a damaged copy or a stale cache of a shared file system sees).
"""

from __future__ import annotations

import sys
from pathlib import Path

from prorank_jax import checkpoint


def main(step: str, argv: list[str]) -> int:
    intact = checkpoint.step_problem

    def step_problem(step_dir: Path) -> str | None:
        if step_dir.name == step:
            return f"item 'params': {step_dir / 'params' / '_METADATA'} is unreadable (simulated, this host only)"
        return intact(step_dir)

    checkpoint.step_problem = step_problem
    from launch.cli import main as cli

    return cli(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
