"""Retention policies: which snapshots ``restic forget`` keeps.

A policy is stored on a plan as a small JSON object (``Plan.retention``) and synced to peers, so
it must round-trip through ``to_dict``/``from_dict`` without loss and reject anything it does not
understand: a typo such as ``keep_dayly`` silently ignored would make ``forget`` keep far fewer
snapshots than the person asked for, and that loses data.

A policy with no rule at all is *empty*. The restic wrapper refuses to run ``forget`` with an
empty policy, because "keep nothing in particular" is never what a person meant.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

# restic's duration syntax for --keep-within: any of years, months, days, hours, in that order,
# e.g. "30d", "1y6m", "2d12h". restic itself rejects anything else, but only when forget runs;
# we want the error when the plan is saved.
_WITHIN_RE = re.compile(r"^(?:\d+y)?(?:\d+m)?(?:\d+d)?(?:\d+h)?$")

_COUNT_FIELDS = (
    "keep_last",
    "keep_hourly",
    "keep_daily",
    "keep_weekly",
    "keep_monthly",
    "keep_yearly",
)


@dataclass(frozen=True)
class RetentionPolicy:
    """Which snapshots to keep; every rule left at ``None`` is not applied.

    Counts must be positive integers. ``0`` is read as "rule off" (``None``) because settings
    forms commonly store an untouched number field as 0, and "keep 0 daily" can only mean that.
    Negative counts are refused: restic 0.14 does not know the "-1 = unlimited" convention of
    later versions, and we support 0.14.
    """

    keep_last: int | None = None
    keep_hourly: int | None = None
    keep_daily: int | None = None
    keep_weekly: int | None = None
    keep_monthly: int | None = None
    keep_yearly: int | None = None
    keep_within: str | None = None

    def __post_init__(self) -> None:
        for name in _COUNT_FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            # bool is an int subclass; True as a count is surely a bug upstream.
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be a whole number, got {value!r}")
            if value < 0:
                raise ValueError(f"{name} must not be negative, got {value}")
            if value == 0:
                object.__setattr__(self, name, None)
        within = self.keep_within
        if within is not None:
            if not isinstance(within, str):
                raise ValueError(f"keep_within must be a string like '30d', got {within!r}")
            within = within.strip()
            if not within:
                object.__setattr__(self, "keep_within", None)
            elif not _WITHIN_RE.match(within) or not any(ch.isdigit() for ch in within):
                raise ValueError(
                    f"keep_within must look like '30d', '1y6m' or '2d12h' "
                    f"(years, months, days, hours), got {self.keep_within!r}"
                )
            else:
                object.__setattr__(self, "keep_within", within)

    def is_empty(self) -> bool:
        """True when no rule is set, i.e. ``forget`` would have nothing to keep by."""
        return all(getattr(self, f.name) is None for f in fields(self))

    def to_args(self) -> list[str]:
        """The ``restic forget`` flags for this policy, in a stable order."""
        args: list[str] = []
        for name in _COUNT_FIELDS:
            value = getattr(self, name)
            if value is not None:
                args += ["--" + name.replace("_", "-"), str(value)]
        if self.keep_within is not None:
            args += ["--keep-within", self.keep_within]
        return args

    def to_dict(self) -> dict[str, Any]:
        """Only the rules that are set, so stored plans stay small and readable."""
        return {
            f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> RetentionPolicy:
        """Read a stored policy; ``None`` values mean "off", unknown keys are an error.

        Unknown keys are refused rather than ignored: a misspelt rule would otherwise make
        ``forget`` delete snapshots the person meant to keep.
        """
        if not data:
            return cls()
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown retention rule(s): {', '.join(unknown)}; known rules are "
                f"{', '.join(sorted(known))}"
            )
        return cls(**{key: value for key, value in data.items() if value is not None})

    def describe(self) -> str:
        """A short human summary, e.g. ``last 3, daily 7, within 30d``."""
        parts = [
            f"{name.removeprefix('keep_')} {getattr(self, name)}"
            for name in _COUNT_FIELDS
            if getattr(self, name) is not None
        ]
        if self.keep_within is not None:
            parts.append(f"within {self.keep_within}")
        return ", ".join(parts) if parts else "no rules"
