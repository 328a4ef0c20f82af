"""The pre-scan's cache: tiles found good, so that a relaunch on unchanged files only ``stat``\\ s them.

Checking a tile costs about 1 ms per POI tensor (``torch.load``), so scanning a million tiles takes
hours, and :func:`data.scan.scan_pretrain` runs at every launch, ``--resume`` included. The cache
remembers, per good tile, a signature of its files and whether it has POIs; a tile whose files
still have that signature is taken as good without being read.

* Signature: a 64-bit BLAKE2b digest of ``(size, st_mtime_ns)`` of each of the tile's files (image,
  embedding, edge, weight when the weight directory exists). Storing the digest instead of the 8
  numbers keeps a million tiles at about 40 MB of JSON.
* Only good tiles are stored: bad ones are checked at every launch, so the user always sees the full
  list of problems.
* The whole cache holds for one ``key`` (absolute data root, directory names, whether weights exist,
  the POI width); with another key it is ignored wholesale.
* A tile modified less than :data:`RACY_SECONDS` before the scan began is not stored: a file can be
  rewritten within the same mtime tick (1-2 s on some file systems) and keep its size, and such a
  change would go unseen. It is checked again next time instead (as git does for "racily clean"
  index entries).
* File format: one JSON object, ``{"format", "key", "names", "sig", "zero"}`` with parallel lists
  (image file name, signature, 1 when the tile has zero POIs). A file that cannot be read, is
  truncated, or is of another format or key is ignored (the scan then checks every tile) and
  replaced.
* Several roots (``mmgr.py --data_path A B``): one such object per root, each with its own key, in
  ``{"format": "mmgr-scan-cache-roots-1", "sections": [...]}``. A root's section serves it whatever
  the other roots are; a run on one root reads its section from such a file and writes the
  one-root format again.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

from utils.fileio import atomic_write_text

__all__ = [
    "CACHE_NAME",
    "CACHE_FORMAT",
    "CACHE_FORMAT_ROOTS",
    "RACY_SECONDS",
    "Entry",
    "signature",
    "load_cache",
    "load_sections",
    "save_cache",
    "save_sections",
]

CACHE_NAME = "scan_cache.json"
CACHE_FORMAT = "mmgr-scan-cache-1"
CACHE_FORMAT_ROOTS = "mmgr-scan-cache-roots-1"  # {"format", "sections": [one CACHE_FORMAT object per root]}
RACY_SECONDS = 2.0

Entry = tuple[int, int]  # (signature, 1 if the tile has zero POIs else 0)


def signature(paths: list[str]) -> tuple[int, int] | None:
    """``(digest of (size, mtime_ns) of every file, newest mtime_ns)``, or None if one cannot be stat'ed.

    A file that vanished since the directory listing makes the tile uncacheable; the check that
    follows reports it.
    """
    values: list[int] = []
    newest = 0
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            return None
        values += (st.st_size, st.st_mtime_ns)
        newest = max(newest, st.st_mtime_ns)
    digest = hashlib.blake2b(struct.pack(f"<{len(values)}q", *values), digest_size=8).digest()
    return int.from_bytes(digest, "little"), newest


def _entries(obj: Any) -> dict[str, Entry] | None:
    """The entries of one cache object (``{"key", "names", "sig", "zero"}``), or None when malformed."""
    names, sig, zero = obj["names"], obj["sig"], obj["zero"]
    if not (
        isinstance(names, list)
        and isinstance(sig, list)
        and isinstance(zero, list)
        and len(names) == len(sig) == len(zero)
    ):
        return None
    return dict(zip(names, zip(sig, zero, strict=True), strict=True))


def load_sections(path: str | Path) -> list[tuple[dict[str, Any], dict[str, Entry]]]:
    """``[(key, {image file name: (signature, zero)})]``: one section per root (several for a run on several
    roots, :data:`CACHE_FORMAT_ROOTS`); empty when the file is absent, unreadable, truncated or of another format."""
    try:
        obj = json.loads(Path(path).read_bytes())
        if not isinstance(obj, dict):
            return []
        if obj.get("format") == CACHE_FORMAT:
            parts = [obj]
        elif obj.get("format") == CACHE_FORMAT_ROOTS and isinstance(obj.get("sections"), list):
            parts = obj["sections"]
        else:
            return []
        out = []
        for part in parts:
            entries = _entries(part)
            if entries is None or not isinstance(part.get("key"), dict):
                return []
            out.append((part["key"], entries))
        return out
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # missing, not JSON / not UTF-8, odd content
        return []


def load_cache(path: str | Path, key: dict[str, Any]) -> dict[str, Entry] | None:
    """``{image file name: (signature, zero)}`` from ``path``, or None when it is absent, unreadable,
    truncated, of another format or written for another ``key`` (it is then simply not used). A file of
    several roots' sections serves the section of ``key``."""
    return next((entries for k, entries in load_sections(path) if k == key), None)


def save_cache(path: str | Path, key: dict[str, Any], entries: dict[str, Entry]) -> None:
    """Write ``entries`` for ``key`` to ``path`` atomically (a reader sees the old file or the new one),
    creating its folder if needed."""
    obj = {
        "format": CACHE_FORMAT,
        "key": key,
        "names": list(entries),
        "sig": [e[0] for e in entries.values()],
        "zero": [e[1] for e in entries.values()],
    }
    atomic_write_text(json.dumps(obj, separators=(",", ":")), path)


def save_sections(path: str | Path, sections: list[tuple[dict[str, Any], dict[str, Entry]]]) -> None:
    """Write one section per root (``(key, entries)``, in root order) to ``path`` atomically: the cache of a
    run on several roots (``mmgr.py --data_path A B``)."""
    parts = [
        {
            "key": key,
            "names": list(entries),
            "sig": [e[0] for e in entries.values()],
            "zero": [e[1] for e in entries.values()],
        }
        for key, entries in sections
    ]
    atomic_write_text(json.dumps({"format": CACHE_FORMAT_ROOTS, "sections": parts}, separators=(",", ":")), path)
