"""Tests for limsync.pipeline.tries: when an optimistic attempt is tried again."""

from __future__ import annotations

from limsync.pipeline.tries import Tries


def pattern(tries: Tries, outcomes: list[bool], chances: int) -> str:
    """'T' for a chance tried (taking the next outcome), '.' for one skipped."""
    out = []
    results = iter(outcomes)
    for _ in range(chances):
        if tries.due():
            out.append("T")
            if next(results):
                tries.succeeded()
            else:
                tries.failed()
        else:
            out.append(".")
    return "".join(out)


def test_every_chance_is_tried_while_attempts_work() -> None:
    assert pattern(Tries(), [True] * 8, 8) == "TTTTTTTT"


def test_failures_in_a_row_skip_1_3_7_chances_up_to_the_most() -> None:
    assert pattern(Tries(most=5), [False] * 5, 18) == "T.T...T.....T....."


def test_a_success_starts_afresh() -> None:
    assert pattern(Tries(), [False, True, False, True], 6) == "T.TT.T"


def test_skipping_tells_the_next_chance_without_counting_it() -> None:
    tries = Tries()
    assert not tries.skipping
    tries.failed()
    assert tries.skipping and tries.skipping  # asking twice changes nothing
    assert not tries.due()  # the skipped chance
    assert not tries.skipping and tries.due()
