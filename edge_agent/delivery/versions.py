"""Comparing model versions, so a push cannot go back to an older model by accident.

The rule (no dependency; documented in the README under "No downgrade by accident"):

  VERSION = [v] NUMBERS [SUFFIX]      NUMBERS = digits separated by dots: 3, 3.1, 2025.11.25
  - NUMBERS compare as numbers, part by part, missing parts count as 0: 1.10 > 1.9, 1.0 == 1.0.0.
  - With equal NUMBERS, a version with a SUFFIX is older than one without (a pre-release):
    1.0-rc1 < 1.0; two SUFFIXes compare piece by piece, digit runs as numbers: rc2 < rc10.
  - A version that does not start with a number ("unversioned", "old") cannot be compared;
    equal strings are equal.

This is close to semantic versioning and to PEP 440's ordering for the common cases (1.2.3,
1.2.3-rc1, dates), and it accepts every string a manifest may hold.
"""

from __future__ import annotations

import re

_VERSION = re.compile(r"^[vV]?(\d{1,18}(?:\.\d{1,18})*)(.*)$")
_PIECES = re.compile(r"\d+|[A-Za-z]+")


def parse_version(text: str) -> tuple[tuple[int, ...], tuple[tuple[int, int | str], ...]] | None:
    """(numbers, suffix pieces) or None when the version does not start with a number."""
    match = _VERSION.match(text.strip())
    if match is None:
        return None
    numbers = tuple(int(part) for part in match.group(1).split("."))
    while len(numbers) > 1 and numbers[-1] == 0:
        numbers = numbers[:-1]
    suffix = tuple((0, int(p)) if p.isdigit() else (1, p.lower()) for p in _PIECES.findall(match.group(2)))
    return numbers, suffix


def compare_versions(a: str, b: str) -> int | None:
    """-1, 0 or 1 as `a` is older than, equal to or newer than `b`; None when they cannot be compared."""
    if a == b:
        return 0
    pa, pb = parse_version(a), parse_version(b)
    if pa is None or pb is None:
        return None
    (na, sa), (nb, sb) = pa, pb
    if na != nb:
        return -1 if _pad(na, len(nb)) < _pad(nb, len(na)) else 1
    if sa == sb:
        return 0
    if not sa or not sb:  # a release is newer than its pre-releases
        return 1 if not sa else -1
    return -1 if sa < sb else 1


def _pad(numbers: tuple[int, ...], length: int) -> tuple[int, ...]:
    return numbers + (0,) * max(0, length - len(numbers))


def downgrade_problem(active: str, new: str) -> str | None:
    """Why installing version `new` over `active` would be a downgrade (None when it is not).
    A board whose active version cannot be compared (none, or not numeric) takes any version."""
    if not active or parse_version(active) is None:
        return None
    order = compare_versions(new, active)
    if order is None:
        return (f"version {new!r} cannot be compared with the active version {active!r} (versions start with a "
                "number: 3.1, 2025.11.25, 1.0-rc1): give the bundle a version (bundle create --version) or push "
                "with --allow-downgrade")
    if order < 0:
        return (f"version {new} is older than the active version {active}: push with --allow-downgrade to go back "
                "on purpose (or use `edge-agent models rollback`)")
    return None
