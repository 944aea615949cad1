"""The roll call's verdict on the processes that reported (launch/rollcall.py)."""

from __future__ import annotations

from launch.rollcall import duplicate, missing


def _report(process_id: int, host: str = "h", pid: int = 1) -> dict:
    return {"id": process_id, "host": host, "pid": pid}


def test_every_id_once_is_a_full_roll():
    reports = [_report(0), _report(2), _report(1)]
    assert duplicate(reports, 3) is None and missing(reports, 3) == []


def test_an_id_claimed_twice_is_named_with_both_claimants():
    problem = duplicate([_report(0), _report(1, "a", 11), _report(1, "b", 12)], 3)
    assert problem == ("2 processes were started with PRORANK_PROCESS_ID=1 (host a pid 11 and host b pid 12); "
                       "give each of the 3 processes its own id in 0..2")


def test_missing_ids_are_listed():
    assert missing([_report(0), _report(2)], 4) == [1, 3]
