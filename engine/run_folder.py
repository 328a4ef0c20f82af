"""One run, one folder: what a pretraining run folder (``--model_path``) holds, who may write to it,
how much it will take, and which image checkpoint in it belongs to its run (docs/run_folder.md).

Files the tool writes in the folder (names unchanged from docs/reliability.md, plus two):

* ``checkpoint_last.pt`` — the resumable checkpoint;
* ``<prefix>_img_<E>.tar``, ``<prefix>_poi_<E>.tar`` — bare state dicts, the published layout;
* ``args.json``, ``train_log.jsonl`` — the run's arguments and per-epoch log;
* ``mmgr_run.json`` — the run's id and which epoch files it wrote (a sidecar, so that the bare ``.tar``
  files stay plain state dicts that the published scripts load);
* ``scan_cache.json`` — the tiles found good (describes the data, not the run: kept by --overwrite);
* ``.NAME.*.tmp`` — temporary files of an interrupted atomic write;
* ``.mmgr.lock`` — the lock file (utils/runlock.py; never deleted).

The per-step record lives outside the folder, in ``./train-records/<--train_record>``.
"""

from __future__ import annotations

import json
import re
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from data.scan_cache import CACHE_NAME
from engine.checkpoints import RESUME_NAME
from models.image_encoder import infer_resnet
from utils.diskspace import (
    adam_state_nbytes,
    check_free_space,
    existing_parent,
    human_bytes,
    state_nbytes,
)
from utils.errors import UserError
from utils.fileio import atomic_write_bytes, atomic_write_text, load_file
from utils.runlock import FolderLock

__all__ = [
    "RunFolder",
    "RunContents",
    "Claimed",
    "SpaceEstimate",
    "estimate_pretrain_space",
    "new_run_id",
    "consistent_image_checkpoint",
    "RESUME_NAME",
    "ARGS_NAME",
    "LOG_NAME",
    "MANIFEST_NAME",
    "MANIFEST_FORMAT",
]

ARGS_NAME = "args.json"
LOG_NAME = "train_log.jsonl"
MANIFEST_NAME = "mmgr_run.json"
MANIFEST_FORMAT = "mmgr-run-1"

_EPOCH_FILE = re.compile(r"^(?P<prefix>.+)_(?P<kind>img|poi)_(?P<epoch>\d+)\.tar$")
# tempfile.mkstemp's names as utils/fileio.py makes them: ".NAME.<8 chars>.tmp" (atomic_write) and
# ".STEM.<8 chars>.tmp.SUFFIX" (atomic_path).
_TEMP_FILE = re.compile(r"^\.(?P<base>.+)\.[a-z0-9_]{8}\.tmp(?P<suffix>\.[^.]+)?$")
_LOGS = (ARGS_NAME, LOG_NAME)

Mode = Literal["fresh", "resume", "auto", "overwrite"]

# Estimates for the space check (docs/run_folder.md): a per-step record line ("Step [123/4567]\t
# Loss1: ...\t Loss2: ...") is about 70 bytes, a train_log line about 300; RNG states, arguments and
# progress of a resumable checkpoint stay under 64 KiB per process.
RECORD_LINE_BYTES = 96
LOG_LINE_BYTES = 512
RESUME_EXTRA_BYTES = 64 * 1024


def new_run_id() -> str:
    """A random 16-hex-digit id for a new run (written into mmgr_run.json, args.json and the checkpoint)."""
    return secrets.token_hex(8)


def _tool_kind(name: str) -> str | None:
    """Which of the tool's files ``name`` is: 'resumable', 'epoch', 'log', 'manifest', 'temp' or None."""
    if name == RESUME_NAME:
        return "resumable"
    if _EPOCH_FILE.match(name):
        return "epoch"
    if name in _LOGS:
        return "log"
    if name == MANIFEST_NAME:
        return "manifest"
    m = _TEMP_FILE.match(name)
    if m:
        base = m.group("base")
        # A scan-cache write may be in flight from a --check_data that holds no lock: leave its temp file.
        if base not in (CACHE_NAME, "scan_cache") and (
            _tool_kind(base) or _tool_kind(base + (m.group("suffix") or ""))
        ):
            return "temp"
    return None


@dataclass(frozen=True)
class RunContents:
    """The tool's files found in a run folder, by kind (the lock file and the scan cache are not listed)."""

    resumable: Path | None = None
    epoch_files: tuple[Path, ...] = ()
    logs: tuple[Path, ...] = ()
    manifest: Path | None = None
    temp: tuple[Path, ...] = ()

    def __bool__(self) -> bool:
        """True when the folder holds a run: a resumable checkpoint, epoch files or logs."""
        return bool(self.resumable or self.epoch_files or self.logs)

    @property
    def kinds(self) -> list[str]:
        return [
            k
            for k, v in (
                ("resumable checkpoint", self.resumable),
                ("epoch files", self.epoch_files),
                ("logs", self.logs),
            )
            if v
        ]

    def files(self) -> list[Path]:
        """Every file of the tool found (what --overwrite removes)."""
        out = [self.resumable] if self.resumable else []
        return (
            out
            + list(self.epoch_files)
            + list(self.logs)
            + ([self.manifest] if self.manifest else [])
            + list(self.temp)
        )

    def nbytes(self) -> int:
        total = 0
        for p in self.files():
            try:
                total += p.stat().st_size
            except OSError:
                pass
        return total

    def describe(self) -> str:
        """``'a resumable checkpoint (checkpoint_last.pt), 4 epoch files (up to epoch 3), logs (args.json)'``."""
        parts = []
        if self.resumable:
            parts.append(f"a resumable checkpoint ({self.resumable.name})")
        if self.epoch_files:
            top = max(int(_EPOCH_FILE.match(p.name).group("epoch")) for p in self.epoch_files)  # type: ignore[union-attr]
            parts.append(
                f"{len(self.epoch_files)} epoch file{'s' if len(self.epoch_files) > 1 else ''} (up to epoch {top})"
            )
        if self.logs:
            parts.append(f"logs ({', '.join(p.name for p in self.logs)})")
        return ", ".join(parts) if parts else "none of this tool's files"


@dataclass(frozen=True)
class Claimed:
    """What :meth:`RunFolder.claim` decided: start ``'fresh'`` or ``'resume'``; the run's id (new for a
    fresh start; a resumed run keeps its own, or gets one if its folder predates run ids); the files
    of an earlier run removed (``--overwrite``, or leftovers of a start that never checkpointed)."""

    start: Literal["fresh", "resume"]
    run_id: str
    removed: tuple[Path, ...] = ()


@dataclass(frozen=True)
class SpaceEstimate:
    """Bytes a pretraining run will occupy at its peak (see :func:`estimate_pretrain_space`)."""

    resumable: int  # one checkpoint_last.pt
    epoch_pair: int  # one <prefix>_img_<E>.tar + <prefix>_poi_<E>.tar
    epochs_held: int  # epoch pairs on disk at once (--keep_last + 1 while saving, or every saved epoch)
    log: int  # train_log.jsonl + args.json + mmgr_run.json
    record: int  # ./train-records/<--train_record>, outside the folder

    @property
    def folder(self) -> int:
        """Peak bytes in the run folder: the epoch files held, two resumable checkpoints (the previous
        one stays until its replacement is complete), the logs."""
        return self.epochs_held * self.epoch_pair + 2 * self.resumable + self.log


def estimate_pretrain_space(
    img_model: torch.nn.Module, poi_model: torch.nn.Module, args: Any, steps_per_epoch: int, *, world_size: int = 1
) -> SpaceEstimate:
    """What a pretraining run with ``args`` (``total_epoch``, ``save_every``, ``keep_last``) writes.

    Sizes come from the models' tensors (any device, before the first step: Adam's moments are
    counted from the parameters, as two tensors of each one's size and dtype). ``world_size``: the
    processes of a torchrun job, whose RNG states the mid-epoch checkpoint carries.
    """
    img_sd, poi_sd = img_model.state_dict(), poi_model.state_dict()
    pair = state_nbytes(img_sd) + state_nbytes(poi_sd)
    adam = adam_state_nbytes(img_model.parameters()) + adam_state_nbytes(poi_model.parameters())
    resumable = state_nbytes({"img": img_sd, "poi": poi_sd}) + adam + RESUME_EXTRA_BYTES * max(world_size, 1)
    total, every, keep = int(args.total_epoch), max(int(args.save_every), 1), int(getattr(args, "keep_last", 0) or 0)
    saved = sum(1 for e in range(1, total + 1) if e % every == 0 or e == total)
    held = saved if keep <= 0 else min(saved, keep + 1)  # the newest is written before the oldest goes
    log = LOG_LINE_BYTES * total + 64 * 1024
    record = RECORD_LINE_BYTES * steps_per_epoch * total
    return SpaceEstimate(resumable=resumable, epoch_pair=pair, epochs_held=held, log=log, record=record)


def _same_file_system(a: Path, b: Path) -> bool:
    try:
        return existing_parent(a).stat().st_dev == existing_parent(b).stat().st_dev
    except OSError:
        return False


class RunFolder:
    """A pretraining run folder (``--model_path``) and, optionally, the run's per-step record file.

    ``claim(mode)`` takes the folder's lock (and the record's, so two runs never append to one record),
    then checks or clears the folder as ``mode`` asks; the locks are held until :meth:`release` or
    the end of the process. Only rank 0 of a torchrun job claims (the other processes write nothing).
    """

    def __init__(self, path: str | Path, *, record: str | Path | None = None, purpose: str = "pretraining"):
        self.path = Path(path)
        self.record = Path(record).absolute() if record is not None else None
        self.lock = FolderLock(self.path, purpose=purpose, flag="--model_path")
        self.record_lock = (
            FolderLock(
                self.record.parent,
                purpose=purpose,
                flag="--train_record",
                name=f".{self.record.name}.lock",
                resource=self.record,
            )
            if self.record is not None
            else None
        )
        self.run_id: str | None = None

    # -- what is there -------------------------------------------------------------------------
    def contents(self) -> RunContents:
        """The tool's files in the folder now, by kind (files only: subfolders are never the tool's)."""
        if not self.path.is_dir():
            return RunContents()
        found: dict[str, list[Path]] = {}
        for p in sorted(self.path.iterdir()):
            if p.is_dir() and not p.is_symlink():
                continue
            kind = _tool_kind(p.name)
            if kind:
                found.setdefault(kind, []).append(p)
        return RunContents(
            resumable=(found.get("resumable") or [None])[0],
            epoch_files=tuple(found.get("epoch", ())),
            logs=tuple(found.get("log", ())),
            manifest=(found.get("manifest") or [None])[0],
            temp=tuple(found.get("temp", ())),
        )

    def holds_run(self) -> RunContents:
        """The run held here, falsy when none (``.kinds``: resumable checkpoint / epoch files / logs)."""
        return self.contents()

    def manifest(self) -> dict[str, Any]:
        """``mmgr_run.json`` as a dict (empty when absent or unreadable)."""
        return _read_manifest(self.path)

    # -- claiming ------------------------------------------------------------------------------
    def claim(self, mode: Mode) -> Claimed:
        """Take the folder (and record) for a run, or stop with one sentence.

        ``mode``: ``'fresh'`` (no ``--resume``; also ``--resume PATH`` of a file outside this folder):
        the folder must hold no run. ``'resume'`` (``--resume``/``--resume last``): it must hold
        checkpoint_last.pt. ``'auto'`` (``--resume auto``): resume when it holds one, else start fresh,
        clearing the leftovers of a start that never reached a checkpoint (logs only); epoch files
        without a checkpoint are refused. ``'overwrite'`` (``--overwrite``): remove the tool's files
        (never other files, never subfolders; the scan cache stays) and empty the run's record file,
        before anything new is written.
        """
        if mode not in ("fresh", "resume", "auto", "overwrite"):
            raise ValueError(f"unknown claim mode {mode!r}")
        if mode == "resume" and not (self.path / RESUME_NAME).is_file():
            raise UserError(self._nothing_to_resume())  # before the lock: do not create the folder
        self.lock.acquire()
        try:
            if self.record_lock is not None:
                self.record_lock.acquire()
            return self._decide(mode)
        except BaseException:
            self.release()
            raise

    def _nothing_to_resume(self) -> str:
        held = self.contents()
        there = f"; it holds {held.describe()}" if held else ""
        return (
            f"{self.path / RESUME_NAME} does not exist, so there is no run to resume in {self.path}{there}; "
            "start without --resume (or use --resume auto)"
        )

    def _decide(self, mode: Mode) -> Claimed:
        held = self.contents()  # under the lock: no other run of ours changes it now
        if mode == "resume" or (mode == "auto" and held.resumable):
            if not held.resumable:
                raise UserError(self._nothing_to_resume())
            self.run_id = self._adopt(held)
            return Claimed("resume", self.run_id)
        removed: tuple[Path, ...] = ()
        if mode == "fresh" and held:
            raise UserError(
                f"{self.path} already holds a run ({held.describe()}); pass --resume to continue it, "
                "another --model_path, or --overwrite to replace it"
            )
        if mode == "auto" and held.epoch_files:
            raise UserError(
                f"{self.path} holds {held.describe()} but no {RESUME_NAME} to resume; pass another "
                "--model_path, or --overwrite to replace that run"
            )
        if mode == "overwrite" or (mode == "auto" and held):
            removed = self._remove(held)
            if self.record is not None and mode == "overwrite" and self.record.is_file():
                atomic_write_bytes(b"", self.record)  # a fresh run's record describes only that run
            if removed:
                what = "replaced run" if mode == "overwrite" else "start that never reached a checkpoint"
                print(
                    f"{'overwrite' if mode == 'overwrite' else 'note'}: removed {len(removed)} file(s) of the {what} "
                    f"from {self.path} ({', '.join(p.name for p in removed[:6])}{', ...' if len(removed) > 6 else ''})",
                    flush=True,
                )
        else:
            removed = self._remove(RunContents(manifest=held.manifest, temp=held.temp))  # a claim that never ran
        self.run_id = new_run_id()
        _write_manifest(
            self.path,
            {"format": MANIFEST_FORMAT, "run_id": self.run_id, "created": round(time.time(), 3), "epoch_files": {}},
        )
        return Claimed("fresh", self.run_id, removed)

    def _remove(self, held: RunContents) -> tuple[Path, ...]:
        gone = []
        for p in held.files():
            try:
                p.unlink()
                gone.append(p)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise UserError(
                    f"cannot remove {p} ({exc.strerror}) to replace the earlier run; remove it by hand or "
                    "pass another --model_path"
                ) from None
        return tuple(gone)

    def _adopt(self, held: RunContents) -> str:
        """The run id of the run being resumed; a folder written before run ids gets one, and its epoch
        files that fit its args.json (prefix, epoch <= total_epoch) are listed as the run's."""
        manifest = _read_manifest(self.path)
        if manifest.get("run_id"):
            return str(manifest["run_id"])
        run_id = new_run_id()
        args = _read_args(self.path)
        files = {}
        for p in held.epoch_files:
            m = _EPOCH_FILE.match(p.name)
            if m and _legacy_fits(args, m.group("prefix"), int(m.group("epoch"))):
                files[p.name] = {"run_id": run_id, "epoch": int(m.group("epoch")), "bytes": p.stat().st_size}
        _write_manifest(
            self.path,
            {
                "format": MANIFEST_FORMAT,
                "run_id": run_id,
                "created": round(time.time(), 3),
                "adopted": True,
                "epoch_files": files,
            },
        )
        return run_id

    def release(self) -> None:
        """Drop the locks (safe to call twice; the process's end drops them too)."""
        if self.record_lock is not None:
            self.record_lock.release()
        self.lock.release()

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # -- while the run goes on -----------------------------------------------------------------
    def note_epoch_files(self, epoch: int, files: list[Path] | tuple[Path, ...]) -> None:
        """After the bare state dicts of ``epoch`` were written: list them in mmgr_run.json as this run's
        (with their sizes), and drop entries of files no longer there (pruned by --keep_last)."""
        if self.run_id is None:
            raise RuntimeError("note_epoch_files before claim")
        manifest = _read_manifest(self.path) or {"format": MANIFEST_FORMAT, "run_id": self.run_id, "epoch_files": {}}
        entries = {k: v for k, v in manifest.get("epoch_files", {}).items() if (self.path / k).is_file()}
        for f in files:
            f = Path(f)
            entries[f.name] = {"run_id": self.run_id, "epoch": int(epoch), "bytes": f.stat().st_size}
        manifest.update(run_id=self.run_id, epoch_files=entries)
        _write_manifest(self.path, manifest)

    def check_space(self, estimate: SpaceEstimate) -> None:
        """Stop (NotEnoughSpace, exit 74) if what the run still has to write cannot fit; warn if barely.

        Files of the tool already in the folder (a resumed run's) count as room the run already has.
        The record is checked with the folder when both share a file system.
        """
        need = max(estimate.folder - self.contents().nbytes(), 0)
        record_need = 0
        if self.record is not None:
            have = self.record.stat().st_size if self.record.is_file() else 0
            record_need = max(estimate.record - have, 0)
        if self.record is not None and not _same_file_system(self.path, self.record.parent):
            check_free_space(
                self.record.parent,
                record_need,
                f"the per-step record {self.record.name}",
                another="another --train_record path",
            )
            record_need = 0
        what = (
            f"this run ({estimate.epochs_held} epoch pair(s) of {human_bytes(estimate.epoch_pair)}, two resumable "
            f"checkpoints of {human_bytes(estimate.resumable)}, logs{', per-step record' if record_need else ''})"
        )
        check_free_space(self.path, need + record_need, what, another="another --model_path")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def _read_manifest(folder: Path) -> dict[str, Any]:
    m = _read_json(Path(folder) / MANIFEST_NAME)
    return m if m.get("format") == MANIFEST_FORMAT else {}


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    atomic_write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", Path(folder) / MANIFEST_NAME)


def _read_args(folder: Path) -> dict[str, Any]:
    return _read_json(Path(folder) / ARGS_NAME)


def _legacy_fits(args: dict[str, Any], prefix: str, epoch: int) -> bool:
    """Could ``<prefix>_img_<epoch>.tar`` have been written by the run args.json describes?"""
    if not args:
        return True
    if args.get("ckpt_prefix") not in (None, prefix):
        return False
    total = args.get("total_epoch")
    return not isinstance(total, int) or epoch <= total


def _image_files(folder: Path) -> list[tuple[int, str, Path]]:
    out = []
    for p in folder.glob("*_img_*.tar"):
        m = _EPOCH_FILE.match(p.name)
        if m and m.group("kind") == "img" and p.is_file():
            out.append((int(m.group("epoch")), m.group("prefix"), p))
    return sorted(out, key=lambda t: (t[0], t[2].name))


def consistent_image_checkpoint(model_path: str | Path) -> Path:
    """The newest ``*_img_<epoch>.tar`` in ``model_path`` that belongs to the run described there.

    With ``mmgr_run.json`` (runs since run ids): the newest image file it lists under the run's id
    (args.json's ``run_id``, else the manifest's) whose size still matches. In a folder written before
    run ids: the newest whose prefix and epoch fit args.json (``ckpt_prefix``, ``total_epoch``), and
    whose ResNet matches args.json's. Without either file (published checkpoints): the newest epoch.
    Image files of another run that would have been newer are named on stderr in one line; a folder
    with no image file of its run is a :class:`UserError`.
    """
    folder = Path(model_path)
    found = _image_files(folder)
    if not found:
        raise UserError(f"no image checkpoint (*_img_<epoch>.tar) in {folder}; pretrain with mmgr.py or pass --ckpt")
    args, manifest = _read_args(folder), _read_manifest(folder)
    if manifest:
        run_id = args.get("run_id") or manifest.get("run_id")
        if manifest.get("run_id") and args.get("run_id") and args["run_id"] != manifest["run_id"]:
            raise UserError(
                f"{folder / ARGS_NAME} describes run {args['run_id']} but {folder / MANIFEST_NAME} run "
                f"{manifest['run_id']}: the folder mixes two runs; pass --ckpt to choose a checkpoint"
            )
        listed = manifest.get("epoch_files", {})

        def ours(p: Path) -> bool:
            e = listed.get(p.name)
            return isinstance(e, dict) and e.get("run_id") == run_id and e.get("bytes") == p.stat().st_size

        mine = [t for t in found if ours(t[2])]
        why = f"not listed as run {run_id}'s in {MANIFEST_NAME}"
        if not mine:
            raise UserError(
                f"{folder} holds no image checkpoint of its run {run_id} (the *_img_*.tar files there, "
                f"{', '.join(t[2].name for t in found[-3:])}, are {why}); pass --ckpt to use one of them"
            )
    elif args:
        mine = [t for t in found if _legacy_fits(args, t[1], t[0])]
        why = (
            f"not of the run {ARGS_NAME} describes (--ckpt_prefix {args.get('ckpt_prefix')}, "
            f"{args.get('total_epoch')} epochs)"
        )
        if not mine:
            raise UserError(
                f"{folder} holds no image checkpoint of the run its {ARGS_NAME} describes (the *_img_*.tar "
                f"files there, {', '.join(t[2].name for t in found[-3:])}, are {why}); pass --ckpt to "
                "use one of them"
            )
    else:  # published checkpoints, or a folder of ours without its logs: the newest epoch, as before
        return max(found, key=lambda t: (t[0], t[2].stat().st_mtime))[2]
    pick = max(mine, key=lambda t: t[0])
    newer = [t[2].name for t in found if t[0] > pick[0] or (t[0] == pick[0] and t[2] != pick[2])]
    if newer:
        print(
            f"note: using {pick[2].name}; ignoring {', '.join(newer)} in {folder}: {why}", file=sys.stderr, flush=True
        )
    if not manifest and args.get("resnet"):
        _check_legacy_resnet(pick[2], args)
    return pick[2]


def _check_legacy_resnet(path: Path, args: dict[str, Any]) -> None:
    """In a folder written before run ids, the file's ResNet must be args.json's (files of two runs mixed)."""
    state = load_file(path, "image checkpoint")
    try:
        resnet, proj = infer_resnet(state)
    except ValueError:
        return  # not ours to judge here: the loader reports it
    want = (args.get("resnet"), args.get("projection_dim", proj))
    if (resnet, proj) != want:
        raise UserError(
            f"{path} holds {resnet} weights with projection {proj} but {path.parent / ARGS_NAME} describes "
            f"a {want[0]} run with projection {want[1]}: the folder mixes files of two runs; pass --ckpt to "
            "choose a checkpoint, or move the other run's files away"
        )
