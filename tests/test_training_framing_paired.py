"""The exact binomial tail behind training/framing_paired.py's paired test."""

import math

import pytest

from training.framing_paired import binomial_tail


@pytest.mark.parametrize(
    ("successes", "trials", "expected"),
    [
        (0, 0, 1.0),  # no film tells the models apart: no evidence either way
        (0, 7, 1.0),
        (5, 5, 1 / 32),
        (8, 10, (45 + 10 + 1) / 1024),
        (12, 16, sum(math.comb(16, k) for k in range(12, 17)) / 2**16),
    ],
)
def test_binomial_tail_matches_the_hand_count(successes, trials, expected):
    assert binomial_tail(successes, trials) == pytest.approx(expected)


def test_more_films_flagged_by_the_candidate_alone_give_a_smaller_p():
    tails = [binomial_tail(k, 16) for k in range(17)]
    assert all(a > b for a, b in zip(tails[:-1], tails[1:], strict=True))
