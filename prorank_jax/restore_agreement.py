"""Which checkpoint step every process resumes from, agreed before any array is read.

Each process scans the checkpoints folder itself, and a folder can read differently on one
host (a damaged copy, a stale cache of a shared file system). Had each process restored its
own newest step, they would meet in orbax's restore barriers for different steps: the one
with the intact step timed out and blamed it, then a hang. So every process reports its own
view (complete steps, the damaged ones with why, an error of its own), the views are
all-gathered, and every process takes the same verdict: the steps all of them can read,
newest last; the ones some cannot, with which process and why.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

from prorank_jax.multihost import allgather_json


@dataclasses.dataclass(frozen=True)
class Agreement:
    steps: list[int]  # complete on every process, ascending
    unreadable: dict[int, str]  # complete on some processes only: which cannot read it, and why
    problem: str | None  # a process's own error when no step is readable everywhere (raise it on all)


def local_view(complete: list[int], broken: Mapping[str, str], problem: str | None) -> dict:
    """This process's view: its complete steps, {folder name: why} of the damaged ones, and its
    own error (none complete but damaged folders present), as JSON for the gather."""
    return {"complete": sorted(int(s) for s in complete), "broken": dict(broken), "problem": problem}


def agree(views: list[dict]) -> Agreement:
    """The one verdict of all processes' views (in process order); the same on every process."""
    complete = [set(v["complete"]) for v in views]
    common = set.intersection(*complete)
    unreadable = {}
    for step in sorted(set.union(*complete) - common):
        where = [f"process {i} ({v['broken'].get(str(step), 'no such folder there')})"
                 for i, v in enumerate(views) if step not in complete[i]]
        unreadable[step] = "unreadable on " + ", ".join(where)
    problem = None
    if not common:
        own = [f"process {i}: {v['problem']}" for i, v in enumerate(views) if v.get("problem")]
        partial = [f"step {step}: {why}" for step, why in unreadable.items()]
        if own or partial:
            problem = "no checkpoint step is complete on every process; " + "; ".join(own + partial)
    return Agreement(sorted(common), unreadable, problem)


def agreed(view: dict) -> Agreement:
    """agree() over every process's view (a collective: every process calls it, once per scan)."""
    return agree(allgather_json(view))
