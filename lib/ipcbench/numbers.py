"""The book's one number formatter: 2-3 significant digits, never more than an interval's width supports.

``num(x)`` writes a number on its own (3 significant digits, integers as integers, thousands grouped by a space:
"10 000"); ``interval(value, low, high, unit)`` writes a median with its interval at one decimal place chosen by the
interval's width (its first two digits), then held between 2 and 3 significant digits of the median:
``interval(0.8372, 0.7291, 0.9895, "x")`` is "0.84x [0.73, 0.99]".
"""

from __future__ import annotations

import math

__all__ = ["num", "interval", "place_for", "at_place", "unit_suffix"]

_TIGHT_UNITS = ("%", "x", "×")  # written without a space after the number


def _finite(x) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _special(x) -> str | None:
    if x is None:
        return "n/a"
    try:
        f = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isnan(f):
        return "n/a"
    if math.isinf(f):
        return "∞" if f > 0 else "-∞"
    return None


def _group(digits: str) -> str:
    """Group an integer's digits by three with spaces ("1234567" -> "1 234 567"); four digits stay together."""
    if len(digits) <= 4:
        return digits
    out = []
    while digits:
        out.append(digits[-3:])
        digits = digits[:-3]
    return " ".join(reversed(out))


def at_place(x: float, place: int) -> str:
    """Write ``x`` rounded to the decimal ``place`` (10**place): place -2 gives two decimals, place 2 hundreds."""
    s = _special(x)
    if s is not None:
        return s
    x = float(x)
    if place >= 0:
        r = int(round(x / 10**place)) * 10**place
        text = _group(str(abs(r)))
        return ("-" if r < 0 else "") + text
    text = f"{abs(x):.{-place}f}"
    if float(text) == 0:
        return "0" if x == 0 or place < -12 else f"{x:.1g}"
    whole, frac = text.split(".")
    return ("-" if x < 0 else "") + _group(whole) + "." + frac


def place_for(value: float, low: float | None = None, high: float | None = None, digits: int = 3) -> int:
    """Return the decimal place to write ``value`` (and its interval) at.

    Without a usable interval: ``digits`` significant digits of the value. With one: two significant digits of its
    width, held between 2 and 3 significant digits of the value (and of the larger bound when the value is 0).
    """
    ref = abs(float(value)) if _finite(value) and float(value) != 0 else 0.0
    if not ref and _finite(low) and _finite(high):
        ref = max(abs(float(low)), abs(float(high)))
    if not ref:
        return 0
    mag = math.floor(math.log10(ref))
    if not (_finite(low) and _finite(high)) or float(high) == float(low):
        place = mag - (digits - 1)
    else:
        width = abs(float(high) - float(low))
        place = math.floor(math.log10(width)) - 1
        place = min(max(place, mag - 2), mag - 1)
    return place


def num(x, digits: int = 3) -> str:
    """Write one number at ``digits`` significant digits (no trailing zeros); an integral value as the integer it is,
    grouped by thousands ("10 000", "67 108 864")."""
    s = _special(x)
    if s is not None:
        return s
    f = float(x)
    if f == 0:
        return "0"
    if f.is_integer() and abs(f) < 1e15:  # a count or an exact size: every digit
        return ("-" if f < 0 else "") + _group(str(int(abs(f))))
    if abs(f) < 1e-4:
        return f"{f:.{digits - 1}e}"
    mag = math.floor(math.log10(abs(f)))
    text = at_place(f, mag - (digits - 1))
    return text.rstrip("0").rstrip(".") if "." in text else text


def unit_suffix(unit: str) -> str:
    """Return a unit as written after a number: "%" and "x" close up, any other after a space."""
    if not unit:
        return ""
    return unit if unit in _TIGHT_UNITS else f" {unit}"


def interval(value, low=None, high=None, unit: str = "") -> str:
    """Write 'value unit [low, high]' at the precision the interval supports (no brackets for an exact value)."""
    s = _special(value)
    if s is not None:
        if _finite(low) and _finite(high):
            p = place_for(0.0, low, high)
            return f"n/a{unit_suffix(unit)} [{at_place(float(low), p)}, {at_place(float(high), p)}]"
        return f"n/a{unit_suffix(unit)}"
    v = float(value)
    if low is None or high is None or (_finite(low) and _finite(high) and float(low) == float(high) == v):
        return f"{num(v)}{unit_suffix(unit)}"
    if not (_finite(low) and _finite(high)):  # an unbounded or missing side: each bound on its own
        return f"{num(v)}{unit_suffix(unit)} [{num(low)}, {num(high)}]"
    p = place_for(v, low, high)
    return f"{at_place(v, p)}{unit_suffix(unit)} [{at_place(float(low), p)}, {at_place(float(high), p)}]"
