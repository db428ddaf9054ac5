"""Names that come from files (a model's metadata, a profile's `name`) made safe as path parts.

A crafted `.onnx` with `edgefold.model = "../../x/victim"` must not write outside the
cache, so every such name goes through `safe_name` before it becomes part of a path.
"""

from __future__ import annotations

import hashlib
import re

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")
MAX_LENGTH = 64


def safe_name(text: object, fallback: str = "model") -> str:
    """One path component made of letters, digits and `._+-`, never empty, `.` or `..`.

    Other characters (slashes, spaces, control characters) become `-`; leading dots and
    dashes are dropped (no hidden files, no option-like names). A name that had to be
    changed or shortened gets 8 hex digits of its hash, so two different names never map
    to the same folder.
    """
    original = "" if text is None else str(text)
    cleaned = _UNSAFE.sub("-", original).lstrip(".-").rstrip(".")
    cleaned = re.sub(r"-{2,}", "-", cleaned)
    if not cleaned:
        cleaned = fallback
    if cleaned != original or len(cleaned) > MAX_LENGTH:
        digest = hashlib.sha256(original.encode("utf-8", "surrogateescape")).hexdigest()[:8]
        cleaned = f"{cleaned[:MAX_LENGTH - 9].rstrip('.-') or fallback}-{digest}"
    return cleaned
