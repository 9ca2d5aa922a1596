"""Line ranges of a window: what is left after a consumed line, and dealing ranges over
another number of ranks (every line exactly once, shares even)."""

from __future__ import annotations

import itertools

import pytest

from recs_core.data.units import LineRange, RankUnits, redistribute, remaining, split


def lines(ranges) -> list[tuple[int, int]]:  # noqa: ANN001
    return [(r.file, i) for r in ranges for i in range(r.first, r.end)]


def test_remaining_after_a_consumed_line() -> None:
    u = RankUnits((LineRange(0, 50, 100), LineRange(1, 0, 40)), (LineRange(1, 40, 50),))
    assert remaining(u, None) == list(u.train)
    assert remaining(u, (0, 60)) == [LineRange(0, 61, 100), LineRange(1, 0, 40)]
    assert remaining(u, (0, 99)) == [LineRange(1, 0, 40)]
    assert remaining(u, (1, 39)) == []
    with pytest.raises(ValueError, match="in none of the rank's ranges"):
        remaining(u, (1, 45))  # a held-out line is never consumed


@pytest.mark.parametrize("parts", [1, 2, 3, 7])
def test_split_deals_every_line_once_in_even_shares(parts: int) -> None:
    ranges = [LineRange(2, 0, 13), LineRange(0, 5, 9), LineRange(1, 0, 0), LineRange(0, 20, 31)]
    got = split(ranges, parts)
    flat = [ln for share in got for ln in lines(share)]
    assert flat == sorted(lines(ranges))  # window order, each line once
    sizes = [sum(len(r) for r in share) for share in got]
    assert max(sizes) - min(sizes) <= 1


def test_redistribute_over_changes_of_ranks() -> None:
    """3 ranks -> 2 -> 3: trained lines never dealt again, every untrained line dealt once,
    the held-out lines kept."""
    old = [RankUnits((LineRange(0, 0, 30),), (LineRange(0, 30, 33),)),
           RankUnits((LineRange(0, 33, 60), LineRange(1, 0, 5)), (LineRange(1, 5, 8),)),
           RankUnits((LineRange(1, 8, 40),), (LineRange(1, 40, 44),))]
    consumed = [(0, 9), None, (1, 20)]
    trained = set(lines([LineRange(0, 0, 10), LineRange(1, 8, 21)]))
    two = redistribute(old, consumed, 2)
    held = sorted(lines(r for u in old for r in u.held))
    assert sorted(lines(r for u in two for r in u.held)) == held
    left = [ln for u in two for ln in lines(u.train)]
    every = set(lines(r for u in old for r in u.train))
    assert sorted(left) == sorted(every - trained) and len(left) == len(set(left))
    # the 2-rank job trains some more, then 3 ranks continue
    consumed2 = [(u.train[0].file, u.train[0].first + 4) for u in two]
    trained |= {ln for u, c in zip(two, consumed2) for ln in lines(u.train)
                if ln <= c and ln[0] == c[0] and ln >= (u.train[0].file, u.train[0].first)}
    three = redistribute(two, consumed2, 3)
    left3 = [ln for u in three for ln in lines(u.train)]
    assert sorted(left3) == sorted(every - trained) and len(left3) == len(set(left3))
    assert sorted(lines(r for u in three for r in u.held)) == held
    assert RankUnits.from_json(three[1].as_json()) == three[1]
    assert not set(itertools.chain(left3)) & trained
