"""The roll call's verdict on the processes that reported (launch/rollcall.py)."""

from __future__ import annotations

from launch.rollcall import verdict


def _report(process_id: int, host: str = "h", pid: int = 1) -> dict:
    return {"id": process_id, "host": host, "pid": pid}


def test_every_id_once_is_a_full_roll():
    assert verdict([_report(0), _report(2), _report(1)], 3) is None


def test_an_id_claimed_twice_is_named_with_both_claimants():
    problem = verdict([_report(0), _report(1, "a", 11), _report(1, "b", 12)], 3)
    assert problem == ("2 processes were started with PRORANK_PROCESS_ID=1 (host a pid 11 and host b pid 12); "
                       "give each of the 3 processes its own id in 0..2")


def test_missing_ids_are_listed():
    assert verdict([_report(0), _report(2)], 4) == "process(es) 1, 3 of 4 did not report"
