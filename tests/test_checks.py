"""keepmix._checks: argument validation that names the argument and what was expected."""

from __future__ import annotations

import pytest

from keepmix._checks import check_int


def test_check_int_accepts_ints_in_range_and_returns_them():
    assert check_int(3, "n", low=1) == 3
    assert check_int(0, "m", 0, 5) == 0 and check_int(5, "m", 0, 5) == 5
    assert check_int(-7, "k") == -7


@pytest.mark.parametrize(
    "value, kwargs, message",
    [
        (0, {"low": 1}, "n must be a positive int, got 0"),
        (True, {"low": 1}, "n must be a positive int, got True"),  # a bool is not a count
        (2.0, {"low": 1}, "n must be a positive int, got 2.0"),
        (6, {"low": 0, "high": 5}, "n must be an int in [0, 5], got 6"),
        (1, {"low": 2}, "n must be an int >= 2, got 1"),
        ("3", {}, "n must be an int, got '3'"),
        (1, {"low": 2, "what": "an integer >= 2"}, "n must be an integer >= 2, got 1"),
    ],
)
def test_check_int_names_the_argument_and_the_expectation(value, kwargs, message):
    with pytest.raises(ValueError) as err:
        check_int(value, "n", **kwargs)
    assert str(err.value) == message
