"""The book's one number formatter: significant digits follow the interval's width."""

import math

import pytest

from ipcbench.numbers import interval, num


@pytest.mark.parametrize(
    "value, low, high, unit, text",
    [
        (0.8372, 0.7291, 0.9895, "x", "0.84x [0.73, 0.99]"),  # a wide interval: two digits
        (94.12, 93.66, 94.8, "%", "94.1% [93.7, 94.8]"),  # a narrow one: three, never four
        (10.77, 10.48, 11.11, "ms", "10.8 ms [10.5, 11.1]"),
        (3.038, 2.772, 3.326, "ms", "3.04 ms [2.77, 3.33]"),
        (17.13, -67.06, 52.28, "%", "17% [-67, 52]"),  # wider than the value: still two digits of it
        (12345.6, 12000.0, 12800.0, "req/s", "12 300 req/s [12 000, 12 800]"),
        (0.000123, 0.0001, 0.00015, "s", "0.000123 s [0.000100, 0.000150]"),
        (5.0, 5.0, 5.0, "", "5"),  # an exact value: no interval
        (2.0, 1.0, math.inf, "x", "2x [1, ∞]"),
        (math.nan, 9.5, 10.5, "ms", "n/a ms [9.5, 10.5]"),
    ],
)
def test_interval_precision_follows_the_interval(value, low, high, unit, text):
    assert interval(value, low, high, unit) == text


def test_interval_never_shows_more_than_three_significant_digits_of_the_value():
    import random

    rng = random.Random(1)
    for _ in range(2000):
        v = 10 ** rng.uniform(-3, 6)
        w = v * 10 ** rng.uniform(-6, 1)
        shown = interval(v, v - w / 2, v + w / 2).split(" [")[0].replace(" ", "")
        digits = shown.replace(".", "").lstrip("0").rstrip("0") or "0"
        assert len(digits) <= 3, (v, w, shown)
        assert abs(float(shown) - v) <= 0.06 * v, (v, w, shown)  # rounded, never truncated to a wrong value


@pytest.mark.parametrize(
    "x, text",
    [(10000, "10 000"), (10000.0, "10 000"), (67108864, "67 108 864"), (0.333333, "0.333"), (1.5, "1.5"),
     (2.06, "2.06"), (123.456, "123"), (1234.5, "1230"), (-22, "-22"), (0, "0"), (math.inf, "∞"), (math.nan, "n/a"),
     (None, "n/a")],
)  # fmt: skip
def test_num_writes_integers_as_integers_and_others_at_three_digits(x, text):
    assert num(x) == text
