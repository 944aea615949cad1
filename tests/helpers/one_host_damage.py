"""A prorank command in which one checkpoint step reads as damaged to this process only.

    python -m tests.helpers.one_host_damage [--arrays] STEP COMMAND ARGS...

On one machine every process reads the same files, so "a checkpoint damaged on one host"
is simulated: checkpoint.step_problem reports folder STEP's params metadata unreadable
here (what a host with a damaged copy or a stale cache of a shared file system sees).
With --arrays the metadata reads fine and the restore of STEP's arrays fails here instead
(a truncated array file that only this host's shards come from).
"""

from __future__ import annotations

import sys
from pathlib import Path

from prorank_jax import checkpoint


def main(step: str, argv: list[str], arrays: bool = False) -> int:
    if arrays:
        from orbax.checkpoint._src.checkpointers import checkpointer as orbax_checkpointer

        read = orbax_checkpointer.Checkpointer._restore

        def failing_read(self, directory, args):
            # Where a damaged array file fails in orbax: before the barrier that ends its restore.
            if Path(directory).name == step:
                raise ValueError(f"OUT_OF_RANGE: a truncated array file in {directory} (simulated, this host only)")
            return read(self, directory, args)

        orbax_checkpointer.Checkpointer._restore = failing_read
        from launch.cli import main as cli

        return cli(argv)
    intact = checkpoint.step_problem

    def step_problem(step_dir: Path) -> str | None:
        if step_dir.name == step:
            return f"item 'params': {step_dir / 'params' / '_METADATA'} is unreadable (simulated, this host only)"
        return intact(step_dir)

    checkpoint.step_problem = step_problem
    from launch.cli import main as cli

    return cli(argv)


if __name__ == "__main__":
    if sys.argv[1] == "--arrays":
        sys.exit(main(sys.argv[2], sys.argv[3:], arrays=True))
    sys.exit(main(sys.argv[1], sys.argv[2:]))
