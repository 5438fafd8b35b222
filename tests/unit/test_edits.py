"""services.edits.until_written: a lost write runs the read-and-edit again; a refusal is raised at once."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from billow.errors import Conflict, NotFound
from billow.services.edits import EDIT_ATTEMPTS, until_written


def test_a_write_lost_to_another_reads_again_and_writes_what_the_other_left() -> None:
    stored = {"v": 0}
    reads = []

    def step() -> tuple[int, Callable[[], None]]:
        seen = stored["v"]
        reads.append(seen)

        def write() -> None:
            if len(reads) < 3:  # another writer got in between this read and this write, twice
                stored["v"] += 10
                raise Conflict("changed meanwhile")
            assert stored["v"] == seen
            stored["v"] = seen + 1

        return seen + 1, write

    assert until_written(step) == 21
    assert (reads, stored["v"]) == ([0, 10, 20], 21)


def test_a_refusal_of_the_step_is_raised_at_once_not_retried() -> None:
    calls = []

    def step() -> tuple[int, Callable[[], None]]:
        calls.append(1)
        raise Conflict("only a draft can be changed")

    with pytest.raises(Conflict, match="only a draft"):
        until_written(step)
    assert len(calls) == 1


def test_nothing_to_write_returns_without_writing() -> None:
    assert until_written(lambda: ("unchanged", None)) == "unchanged"


def test_writes_that_keep_losing_give_up_after_the_attempts_with_the_conflict() -> None:
    writes = []

    def write() -> None:
        writes.append(1)
        raise Conflict("changed meanwhile")

    with pytest.raises(Conflict, match="meanwhile"):
        until_written(lambda: (None, write))
    assert len(writes) == EDIT_ATTEMPTS


def test_a_deletion_seen_on_the_read_again_is_its_404() -> None:
    state = {"deleted": False}

    def step() -> tuple[None, Callable[[], None]]:
        if state["deleted"]:
            raise NotFound("gone")

        def write() -> None:
            state["deleted"] = True  # another container deleted it first
            raise Conflict("changed meanwhile")

        return None, write

    with pytest.raises(NotFound):
        until_written(step)
