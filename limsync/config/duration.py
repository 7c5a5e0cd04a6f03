"""Durations in the configuration: ``"30s"``, ``"15m"``, ``"1h30m"``, ``"2d"`` or plain seconds."""

from __future__ import annotations

import re

_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)", re.I)
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(value: object) -> float:
    """Seconds in a duration: a number (seconds) or text such as ``"15m"`` or ``"1h30m"``.

    Raises ValueError (which pydantic reports with the setting's place) for anything else,
    including zero and negative durations.
    """
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 15m, 2h or 1d")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            seconds = float(text)
        else:
            parts = _PART.findall(text)
            if not parts or "".join(n + u for n, u in parts).lower() != text.lower():
                raise ValueError("not a duration such as 30s, 15m, 2h or 1d")
            seconds = sum(float(n) * _UNITS[u.lower()] for n, u in parts)
    else:
        raise ValueError("expected a duration such as 30s, 15m, 2h or 1d")
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return seconds


def format_duration(seconds: float) -> str:
    """A short readable form: ``90`` -> ``"1m30s"``, ``0.5`` -> ``"0.5s"``."""
    if seconds < 60:
        return f"{seconds:g}s"
    out = []
    rest = round(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            out.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(out)
