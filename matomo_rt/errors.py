"""Errors the command line maps to exit codes, kept light so `matomo-rt tail` starts fast."""

from __future__ import annotations


class ConfigError(Exception):
    """Raised with every problem found; str() is one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
