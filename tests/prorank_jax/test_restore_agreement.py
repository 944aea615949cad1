"""The one verdict of every process's view of the checkpoints folder (restore_agreement.agree)."""

from __future__ import annotations

from prorank_jax.restore_agreement import agree, local_view


def test_the_newest_step_every_process_reads_wins():
    views = [local_view([2, 4, 6], {}, None),
             local_view([2, 4], {"6": "item 'params': 6/params/_METADATA is unreadable"}, None)]
    verdict = agree(views)
    assert verdict.steps == [2, 4]
    assert verdict.unreadable == {6: "unreadable on process 1 (item 'params': 6/params/_METADATA is unreadable)"}
    assert verdict.problem is None


def test_no_step_readable_everywhere_is_a_problem_naming_the_process():
    verdict = agree([local_view([6], {}, None), local_view([], {"6": "no commit_success.txt"}, "no complete checkpoint")])
    assert verdict.steps == []
    assert verdict.problem == ("no checkpoint step is complete on every process; process 1: no complete checkpoint; "
                               "step 6: unreadable on process 1 (no commit_success.txt)")


def test_a_fresh_folder_everywhere_starts_afresh():
    verdict = agree([local_view([], {}, None), local_view([], {}, None)])
    assert verdict.steps == [] and verdict.problem is None and verdict.unreadable == {}
