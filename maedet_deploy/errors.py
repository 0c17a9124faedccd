"""One exception type for every problem the user can fix.

The CLI prints its message on one line and exits with code 2; anything else that
escapes is a bug and keeps its traceback. The library speaks in its own terms:
an error about one setting names it by its library name (`setting="latency_ms"`),
and the CLI shows the flag of that name (`--latency-ms`), since a value keeps one
name from the command line to the code that uses it.
"""

from __future__ import annotations


class MaedetError(Exception):
    """Bad input, a missing optional dependency or an unusable environment."""

    def __init__(self, message: str, setting: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.setting = setting

    def __str__(self) -> str:
        return f"{self.setting}: {self.message}" if self.setting else self.message

    def for_cli(self) -> str:
        """The message with the setting named by its command-line flag."""
        return f"--{self.setting.replace('_', '-')}: {self.message}" if self.setting else self.message


def first_line(exc: BaseException) -> str:
    """A third-party exception in one line (its own messages can run to pages)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
