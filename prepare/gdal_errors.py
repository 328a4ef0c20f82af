"""The short reason of a GDAL / pyogrio / rasterio exception, for one-sentence user errors."""

from __future__ import annotations

import re

__all__ = ["reason"]


def reason(exc: BaseException) -> str:
    """First clause of an exception's message: GDAL's messages run to several sentences and hints.

    ``"'x.pbf' not recognized as being in a supported file format.; It might help..."`` ->
    ``"'x.pbf' not recognized as being in a supported file format"``.
    """
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.split(r"\.?;\s|\.\s", text, maxsplit=1)[0]
    return text.rstrip(". ")
