"""Fast pre-scan of the pretraining layout: every bad file found before training starts.

A broken tile found at step 40 000 of a multi-day run is a lost day; the scan finds all of them in
one pass, so the user sees the full list at once (``--check_data`` runs only the scan).

Per tile it checks what training will need, at header level for images (PIL ``verify``: format,
chunk structure and checksums, without decoding pixels) and fully for the small POI tensors (the
same validation the data set applies: rank, width, NaN/Inf, edge shape and range, weight count).
Tiles are split into chunks checked by a thread pool. Not a forked process pool: a child forked
from a parent whose torch threads are running can deadlock inside ``torch.load`` (seen here after
the demo city was generated in the same process), and spawning fresh interpreters re-imports torch
per worker. File reads, zip parsing and PIL's checks release the GIL in part.

Not bad: tiles with zero POIs, grayscale/RGBA/palette/16-bit tiles (converted to RGB when loaded).

With a cache file (``--model_path/scan_cache.json``, :mod:`data.scan_cache`), tiles found good by an
earlier scan whose files kept their size and mtime are not read again: a relaunch on unchanged data
costs one ``os.stat`` per file instead of ~1 ms per POI tensor. Bad tiles are never cached.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from data.layout import PretrainLayout, tensor_name
from data.pretrain import check_tensor, list_images, load_graph
from data.scan_cache import RACY_SECONDS, Entry, load_cache, load_sections, save_cache, save_sections, signature
from utils.errors import UserError
from utils.fileio import load_file

__all__ = ["BadFile", "ScanReport", "scan_pretrain", "scan_roots", "merge_reports"]

_CHUNK = 64


@dataclass(frozen=True)
class BadFile:
    """A file that training cannot use and why, in one sentence."""

    path: Path
    reason: str


@dataclass
class ScanReport:
    """Outcome of :func:`scan_pretrain`."""

    good: list[Path]  # image tiles whose files are all usable, sorted by name
    bad_tiles: list[Path]  # image tiles left out (their own or their POI files are bad or missing)
    bad: list[BadFile]  # every problem found, including POI files without an image
    poi_dim: int | None
    zero_poi: int = 0
    seconds: float = 0.0
    n_files: int = 0  # files read
    checked: int = 0  # tiles whose files were read and checked
    cached: int = 0  # tiles taken as good from the scan cache, unread (their files' size and mtime unchanged)
    extra: dict = field(default_factory=dict)

    def lines(self) -> list[str]:
        return [f"bad: {b.reason}" for b in self.bad]

    def summary(self) -> str:
        return (
            f"scan: {len(self.good)} good tiles, {len(self.bad_tiles)} bad tiles, {len(self.bad)} problems, "
            f"{self.zero_poi} tiles with zero POIs (fine); {self.checked} tiles checked ({self.n_files} files read), "
            f"{self.cached} unchanged tiles from the scan cache; {self.seconds:.2f}s"
        )


def _check_image(path: Path) -> str | None:
    try:
        with Image.open(path) as im:
            im.verify()  # structure and checksums, no pixel decoding
        return None
    except Exception as exc:  # UnidentifiedImageError, SyntaxError (bad chunk), OSError (truncated), ...
        what = "is not an image" if "cannot identify" in str(exc) else f"is a damaged image ({exc})"
        return f"{path} {what}; replace or remove this tile"


def _check_tiles(
    job: tuple[list[tuple[Path, Path, Path, Path | None]], int | None],
) -> list[tuple[int, list[str], int]]:
    """For each tile: (index in the chunk, problems, number of POIs)."""
    tiles, poi_dim = job
    out = []
    for i, (img, emb, edge, w) in enumerate(tiles):
        problems = []
        if (msg := _check_image(img)) is not None:
            problems.append(msg)
        n_poi = -1
        try:
            n_poi = int(load_graph(emb, edge, w, poi_dim).num_nodes)
        except UserError as exc:
            problems.append(str(exc))
        out.append((i, problems, n_poi))
    return out


def _first_width(paths: Iterable[Path]) -> int | None:
    """Embedding width of the first readable rank-2 embedding file (the reference for the others)."""
    for p in paths:
        try:
            return int(check_tensor(load_file(p, "POI embedding file"), p, dtype_kind="float", rank=2).shape[1])
        except UserError:
            continue
    return None


@dataclass
class _Listing:
    """The layout's folders listed: tiles whose POI files all exist (``candidates``) and what is missing."""

    dirs: list[Path]  # the POI folders: embeddings, edges and, when present, weights
    candidates: list[tuple[Path, str]]  # (image, name of its POI files)
    bad: list[BadFile]
    bad_tiles: set[Path]

    def files(self, i: int) -> tuple[Path, Path, Path, Path | None]:
        img, name = self.candidates[i]
        return img, self.dirs[0] / name, self.dirs[1] / name, self.dirs[2] / name if len(self.dirs) > 2 else None


def _list_layout(layout: PretrainLayout) -> _Listing:
    """List the folders once; a missing folder raises, a missing or orphan file becomes a problem."""
    if not layout.root.is_dir():
        raise UserError(
            f"data directory {layout.root} does not exist; pass --data_path (or --demo for the built-in synthetic city)"
        )
    images = list_images(layout.img)
    for d in (layout.emb, layout.edge):
        if not d.is_dir():
            raise UserError(
                f"{d} does not exist; the pretraining layout needs {layout.emb_dir}/ and {layout.edge_dir}/ "
                f"beside {layout.img_dir}/"
            )
    dirs = [layout.emb, layout.edge] + ([layout.weight] if layout.has_weights else [])
    # Names as strings, paths built only for the tiles that are read: with a warm cache, pathlib's
    # overhead would otherwise cost more than the os.stat calls.
    present = {d: {n for n in os.listdir(d) if n.endswith(".tensor") and not n.startswith(".")} for d in dirs}
    listing = _Listing(dirs, [], [], set())
    for img in images:
        name = tensor_name(img)
        lacking = [d for d in dirs if name not in present[d]]
        if lacking:
            listing.bad.append(
                BadFile(
                    img,
                    f"{img} has no POI file {name} in {', '.join(str(d) for d in lacking)}; "
                    "run prepare_pois.py or remove this tile",
                )
            )
            listing.bad_tiles.add(img)
        else:
            listing.candidates.append((img, name))
    stems = {p.stem for p in images}
    for d in dirs:
        for name in sorted(present[d]):
            if name[: -len(".tensor")] not in stems:
                listing.bad.append(
                    BadFile(
                        d / name,
                        f"{d / name} has no image tile {name[:-7]}.* in {layout.img}; add the tile or remove this file",
                    )
                )
    return listing


def _check_all(
    listing: _Listing, todo: list[int], poi_dim: int | None, workers: int
) -> dict[int, tuple[list[str], int]]:
    """Check the tiles ``todo`` (indices of candidates) in chunks: ``{index: (problems, n_poi)}``."""
    chunks = [todo[i : i + _CHUNK] for i in range(0, len(todo), _CHUNK)]
    jobs = [([listing.files(k) for k in c], poi_dim) for c in chunks]
    if workers > 0 and len(chunks) > 1:
        with ThreadPoolExecutor(max_workers=min(workers, len(chunks))) as pool:
            results = list(pool.map(_check_tiles, jobs))
    else:
        results = [_check_tiles(j) for j in jobs]
    return {
        chunk[i]: (problems, n_poi) for chunk, res in zip(chunks, results, strict=True) for i, problems, n_poi in res
    }


def scan_pretrain(
    layout: PretrainLayout | str | Path,
    workers: int = 4,
    cache: str | Path | None = None,
    rescan: bool = False,
    cache_read_only: bool = False,
) -> ScanReport:
    """Check every tile of a pretraining layout (or of the published layout under a root); see the module docstring.

    Missing or empty directories are not per-file problems: they raise :class:`UserError` at once.
    ``workers`` threads check chunks of tiles in parallel (0: serially).

    ``cache``: path of the scan cache (:mod:`data.scan_cache`; None: no cache, every tile is read).
    Good tiles whose files kept their size and mtime are taken from it unread; the report is the
    one an uncached scan gives, plus the counts ``checked`` / ``cached``. The file is then rewritten
    with this scan's good tiles, unless nothing changed. ``rescan``: ignore its content and check
    every tile (the file is still rewritten). ``cache_read_only``: use it but never write it (the
    processes other than the main one under torchrun).
    """
    lookup = None if cache is None else (lambda key: None if rescan else load_cache(cache, key))
    report, key, entries, known = _scan_one(PretrainLayout.of(layout), workers, lookup)
    if cache is not None and not cache_read_only:
        _write_cache(cache, key, entries, known)
    return report


def scan_roots(
    layouts: list[PretrainLayout],
    workers: int = 4,
    cache: str | Path | None = None,
    rescan: bool = False,
    cache_read_only: bool = False,
) -> list[ScanReport]:
    """:func:`scan_pretrain` of each root of a run on several roots, one report per root, in order.

    One root is exactly :func:`scan_pretrain` (same cache file). Several share one cache file holding a
    section per root (:func:`data.scan_cache.save_sections`), rewritten when any root's good tiles changed.
    """
    if len(layouts) == 1:
        return [scan_pretrain(layouts[0], workers, cache, rescan, cache_read_only)]
    sections = [] if cache is None or rescan else load_sections(cache)

    def lookup(key: dict) -> dict[str, Entry] | None:
        return next((entries for k, entries in sections if k == key), None)

    reports, new, changed = [], [], False
    for layout in layouts:
        report, key, entries, known = _scan_one(layout, workers, lookup if cache is not None else None)
        reports.append(report)
        new.append((key, entries))
        changed |= entries != known
    if cache is not None and not cache_read_only and changed:
        try:
            save_sections(cache, new)
        except OSError as exc:  # the cache only saves time: never stop a run for it
            _cache_warning(cache, exc)
    return reports


def merge_reports(reports: list[ScanReport]) -> ScanReport:
    """Several roots' reports as one (tiles and problems in root order), for ``--bad_samples`` and ``--check_data``.

    The roots' POI width is the first one found (:func:`data.roots.check_roots` refused roots that differ).
    """
    if len(reports) == 1:
        return reports[0]
    return ScanReport(
        [p for r in reports for p in r.good],
        [p for r in reports for p in r.bad_tiles],
        [b for r in reports for b in r.bad],
        next((r.poi_dim for r in reports if r.poi_dim is not None), None),
        sum(r.zero_poi for r in reports),
        sum(r.seconds for r in reports),
        sum(r.n_files for r in reports),
        checked=sum(r.checked for r in reports),
        cached=sum(r.cached for r in reports),
    )


def _scan_one(
    layout: PretrainLayout, workers: int, lookup: Callable[[dict], dict[str, Entry] | None] | None
) -> tuple[ScanReport, dict, dict[str, Entry], dict[str, Entry] | None]:
    """Scan one root -> ``(report, cache key, entries to cache, entries the cache had)``.

    ``lookup``: the cache's entries for a key (None: no cache, every tile is read and nothing is kept).
    """
    t0 = time.perf_counter()
    # Files modified after this instant minus the mtime tick are not cached (see data/scan_cache.py).
    racy_ns = time.time_ns() - int(RACY_SECONDS * 1e9)
    listing = _list_layout(layout)
    candidates = listing.candidates
    poi_dim = _first_width(listing.dirs[0] / name for _, name in candidates)
    key = _cache_key(layout, listing, poi_dim)
    known = lookup(key) if lookup is not None else None
    sigs = _signatures(listing) if lookup is not None else []
    zero_flag, todo = _split_cached(candidates, known, sigs)
    # Tiles are checked in listing order, cached ones contribute no problem: the same list as uncached.
    checked = _check_all(listing, todo, poi_dim, workers)
    for i in todo:
        problems, n_poi = checked[i]
        img = candidates[i][0]
        if problems:
            listing.bad.extend(BadFile(img, msg) for msg in problems)
            listing.bad_tiles.add(img)
        elif n_poi == 0:
            zero_flag[i] = 1
    good_idx = [i for i in range(len(candidates)) if not checked.get(i, ((), 0))[0]]
    entries = (
        {
            candidates[i][0].name: (sigs[i][0], zero_flag[i])
            for i in good_idx
            if sigs[i] is not None and sigs[i][1] < racy_ns
        }
        if lookup is not None
        else {}
    )
    report = ScanReport(
        [candidates[i][0] for i in good_idx],
        sorted(listing.bad_tiles),
        listing.bad,
        poi_dim,
        sum(zero_flag[i] for i in good_idx),
        time.perf_counter() - t0,
        len(todo) * (1 + len(listing.dirs)),
        checked=len(todo),
        cached=len(candidates) - len(todo),
    )
    return report, key, entries, known


def _cache_key(layout: PretrainLayout, listing: _Listing, poi_dim: int | None) -> dict:
    """What a tile's verdict depends on besides its own files: with any of it changed, no cache entry holds."""
    return {
        "root": str(layout.root.resolve()),
        "img_dir": layout.img_dir,
        "emb_dir": layout.emb_dir,
        "edge_dir": layout.edge_dir,
        "weight_dir": layout.weight_dir,
        "weights": len(listing.dirs) > 2,
        "poi_dim": poi_dim,
    }


def _signatures(listing: _Listing) -> list[tuple[int, int] | None]:
    """The scan-cache signature of each candidate's files (data.scan_cache.signature; None where one is missing).

    Taken before reading: a file changed after its stat gets a new signature, so it is checked next time.
    Serially: in threads it was slower on this machine's local disk (the GIL; measured, 2 cores).
    """
    folders = [os.fspath(d) for d in listing.dirs]
    return [signature([os.fspath(img)] + [os.path.join(f, name) for f in folders]) for img, name in listing.candidates]


def _split_cached(
    candidates: list[tuple[Path, str]], known: dict[str, Entry] | None, sigs: list[tuple[int, int] | None]
) -> tuple[list[int], list[int]]:
    """``(zero_flag, todo)``: per candidate, 1 where the cache says it has zero POIs; the indices not in the
    cache with an unchanged signature, which must be read and checked (every index without a cache)."""
    zero_flag = [0] * len(candidates)
    todo: list[int] = []
    for i, (img, _) in enumerate(candidates):
        hit = known.get(img.name) if known is not None and sigs[i] is not None else None
        if hit is not None and hit[0] == sigs[i][0]:
            zero_flag[i] = int(bool(hit[1]))
        else:
            todo.append(i)
    return zero_flag, todo


def _write_cache(cache: str | Path, key: dict, entries: dict[str, Entry], known: dict[str, Entry] | None) -> None:
    if entries == known:  # unchanged data: no rewrite (tens of MB for a million tiles)
        return
    try:
        save_cache(cache, key, entries)
    except OSError as exc:  # the cache only saves time: never stop a run for it
        _cache_warning(cache, exc)


def _cache_warning(cache: str | Path, exc: OSError) -> None:
    print(
        f"warning: could not write the scan cache {cache} ({exc}); the next launch checks every tile again",
        file=sys.stderr,
        flush=True,
    )


def apply_bad_samples_policy(
    report: ScanReport, policy: str, check_only: bool = False, verbose: bool = True
) -> list[Path]:
    """``--bad_samples`` / ``--check_data`` on a scan: the tiles to train on, or a :class:`UserError`.

    ``error``: any problem stops the run with the full list (on stderr) and one sentence naming the
    first; ``skip``: train on the good tiles and report the counts. ``check_only`` prints the list and
    the summary on stdout and raises when anything is bad (exit 2), so scripts can test it. ``verbose``
    False prints nothing and decides the same (the processes other than rank 0 under torchrun, which
    scan the same files: the list is printed once).
    """
    out = sys.stdout if check_only else sys.stderr
    for line in report.lines() if verbose else []:
        print(line, file=out)
    if check_only and verbose:
        print(report.summary(), flush=True)
    if not report.bad:
        return report.good
    if check_only:
        raise UserError(
            f"{len(report.bad)} problems in {len(report.bad_tiles)} tiles (listed above); "
            "fix or remove those files, or train with --bad_samples skip"
        )
    if policy == "skip":
        if verbose:
            print(
                f"--bad_samples skip: training on {len(report.good)} tiles, leaving out {len(report.bad_tiles)} "
                f"({len(report.bad)} problems listed above)",
                file=sys.stderr,
                flush=True,
            )
        return report.good
    first = report.bad[0].reason
    if len(report.bad) == 1:
        raise UserError(first)
    raise UserError(
        f"{len(report.bad)} problems in the data (all listed above; python mmgr.py --check_data lists them again), "
        f"the first: {first.rstrip('.')}; or pass --bad_samples skip to train on the other tiles"
    )
