"""Content hashes: what decides whether a file, a setting or a result is "the same" (engine
sidecars, stage reuse in the pipeline)."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from .errors import MaedetError

CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    """The file's sha256 (hex), read in chunks so a large engine never sits in memory twice."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(CHUNK), b""):
                digest.update(chunk)
    except OSError as exc:
        raise MaedetError(f"cannot read {path}: {exc.strerror or exc}") from None
    return digest.hexdigest()


def sha256_json(data: Any) -> str:
    """A hash of JSON-able data that does not depend on key order."""
    text = json.dumps(data, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
