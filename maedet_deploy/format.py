"""Human-readable numbers, shared by the CLI and the reports."""


def human(number: float) -> str:
    """12_345_678 -> '12.35M'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(number) >= scale:
            return f"{number / scale:.2f}{unit}"
    return f"{number:g}"
