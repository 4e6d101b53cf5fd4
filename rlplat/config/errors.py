"""The one error a spec problem raises, and the check every section's `__post_init__` uses."""

from __future__ import annotations


class ConfigError(ValueError):
    """A spec problem the user must fix; the message names the file and key path."""


def check(cond: bool, message: str) -> None:
    """Raise ValueError(message) unless `cond`; the loader turns it into a ConfigError naming the section."""
    if not cond:
        raise ValueError(message)
