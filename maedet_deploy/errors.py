"""One exception type for every problem the user can fix.

The CLI prints its message on one line and exits with code 2; anything else that
escapes is a bug and keeps its traceback.
"""


class MaedetError(Exception):
    """Bad input, a missing optional dependency or an unusable environment."""
