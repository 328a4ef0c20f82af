"""The pretraining engine: set-up, one epoch, fit, and one state dict for resume (docs/architecture.md).

``mmgr.py`` holds the method — the objective of one step (two views and the POI graph through two
encoders into two NT-Xent terms). This module runs it: the data scan, the resumable data order,
both optimisers and the lr schedule, records, checkpoints, stop signals and torchrun processes.

Life cycle::

    run = claim_run_folder(args, info)            # the folder's lock; refuses another run's folder
    dataset = prepare_data(args, info)             # checks, pre-scan; None for --check_data
    trainer = Pretrainer(args, dataset, info, device, step_fn, run)
    trainer.resume(args.resume)                    # load_state_dict of checkpoint_last.pt, if asked
    trainer.fit()                                  # train_one_epoch + end_of_epoch, until total_epoch

The resumable checkpoint *is* :meth:`Pretrainer.state_dict` (format ``mmgr-resumable-1``): models,
optimisers, AMP scaler, where the loop stands (epochs done, steps into the next one), the run's
arguments, RNG states and the record files' sizes. Everything in it is tensors and plain types, so
it loads with ``weights_only=True``. Data order and augmentation depend only on (seed, epoch,
position), which makes a resumed run end bit-identical to an uninterrupted one (docs/reliability.md).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from data.datasets import build_union, collate_for
from data.gpu_augment import GPUAugment
from data.layout import PretrainLayout
from data.pack import is_packed
from data.resumable import EpochBatchSampler, SeededSamples, epoch_seed
from data.roots import MultiRootDataset, check_roots, data_roots, describe_counts
from data.scan import apply_bad_samples_policy, merge_reports, scan_roots
from data.scan_cache import CACHE_NAME
from engine.checkpoints import (
    ARCH_FLAGS,
    RESUME_FORMAT,
    RESUME_NAME,
    assert_finite,
    changed_training_flags,
    describe_changes,
    read_resumable,
    resume_checkpoint_path,
    save_bare,
    save_resumable,
)
from engine.run_folder import RunFolder, estimate_pretrain_space
from models.image_encoder import ImageEncoder
from models.poi_encoder import build_poi_encoder
from utils.distributed import DistInfo, NullRecord, RankSlice, SharedFailure, all_reduce_mean, gather_objects
from utils.errors import UserError
from utils.fileio import atomic_write_text
from utils.records import RecordFile
from utils.reproducibility import rng_state, seed_everything, set_rng_state, worker_init
from utils.runlock import FolderLock
from utils.schedule import lr_at, set_lr
from utils.signals import StopOnSignal
from utils.speed import convert_before_optim, make_scaler, prepare_models

__all__ = ["StepFn", "check_args", "claim_run_folder", "prepare_data", "Pretrainer", "warn_collapse"]

# (batch, image module, POI module, args, device, device augmentation or None) -> (loss, inter, intra, z_img1 [B, P])
StepFn = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]
_END = object()  # the end of a loader's batches


def check_args(args: argparse.Namespace) -> None:
    """Flag values that cannot train, as one-sentence user errors."""
    if args.batch_size < 2:
        raise UserError("--batch_size must be at least 2: NT-Xent needs negatives")
    if not 0.0 <= args.img_lmd <= 1.0:
        raise UserError(f"--img_lmd must lie in [0, 1], got {args.img_lmd}")
    if args.save_every < 1 or args.save_every_steps < 0 or args.keep_last < 0:
        raise UserError("--save_every must be at least 1, --save_every_steps and --keep_last at least 0")


def claim_mode(args: argparse.Namespace) -> str:
    """``--resume``/``--overwrite`` -> how :meth:`engine.run_folder.RunFolder.claim` takes the folder."""
    if args.overwrite:
        if args.resume is not None:
            raise UserError("--overwrite replaces the run in --model_path and --resume continues it; pass one of them")
        return "overwrite"
    if args.resume is None:
        return "fresh"
    if args.resume in ("last", "auto"):
        return "resume" if args.resume == "last" else "auto"
    # --resume PATH: a file of this folder continues its run; another folder's checkpoint starts this one
    inside = Path(args.resume).resolve().parent == Path(args.model_path).resolve()
    return "auto" if inside else "fresh"


def claim_run_folder(args: argparse.Namespace, info: DistInfo) -> RunFolder | FolderLock | None:
    """Take ``--model_path`` for this run before anything is written there (docs/run_folder.md).

    The main process holds the folder's lock for the whole run (the kernel drops it even on SIGKILL)
    and refuses a folder that holds another run unless ``--resume`` or ``--overwrite`` says what to do;
    ``--check_data`` only takes the lock (it writes the scan cache). The run's id goes into ``args``
    (so into args.json and the checkpoints). Every process learns whether the claim failed: the others
    exit with the main process's status instead of waiting for it in a collective forever.
    """
    run, failure = None, SharedFailure()
    if info.is_main:
        with failure.hold():
            _check_roots(args)
            if args.check_data:
                run = FolderLock(args.model_path, purpose="data check").acquire()
            else:
                run = RunFolder(args.model_path, record=Path("train-records") / args.train_record)
                args.run_id = run.claim(claim_mode(args)).run_id
    failure.share()  # a CPU collective: gloo serves it beside NCCL (utils.distributed.backend_for)
    return run


def prepare_data(args: argparse.Namespace, info: DistInfo) -> Dataset | None:
    """The training set of ``args``: a pack as it is, a folder layout after its pre-scan (data/scan.py);
    with several ``--data_path`` roots, their union in root order (data/roots.py).

    Every bad file is found before training starts; ``--check_data`` stops after the scan (None).
    Good tiles are remembered in the run's folder (``scan_cache.json``, created by the write if needed;
    a folder that cannot be written only costs a warning), so a relaunch does not read them again.
    Under torchrun every process scans; a refusal ends them all, told once by rank 0.
    """
    failure, dataset = SharedFailure(), None
    with failure.hold():
        dataset = _prepare_data(args, info)
    failure.share()
    return dataset


def _prepare_data(args: argparse.Namespace, info: DistInfo) -> Dataset | None:
    check_args(args)
    layouts = PretrainLayout.all_from_args(args)
    folders = [lay for lay in layouts if not is_packed(lay.root)]  # a pack was validated when it was written
    if not folders:  # packs only (`python -m data.pack`)
        return None if args.check_data else build_union(layouts, args.augment, args.img_size, [None] * len(layouts))
    reports = scan_roots(
        folders,
        args.workers,
        cache=Path(args.model_path) / CACHE_NAME,
        rescan=args.rescan,
        cache_read_only=not info.is_main,
    )
    report = merge_reports(reports)
    apply_bad_samples_policy(report, args.bad_samples, check_only=args.check_data, verbose=info.is_main)
    if args.check_data:
        return None
    # zero_poi counts a root's good tiles, which are the tiles kept under either --bad_samples policy
    scanned = iter(reports)
    per_root = [None if is_packed(lay.root) else next(scanned) for lay in layouts]
    tiles = [None if r is None else r.good for r in per_root]
    empty = [None if r is None else r.zero_poi for r in per_root]
    dataset = build_union(layouts, args.augment, args.img_size, tiles, report.poi_dim, empty)
    if info.is_main and isinstance(dataset, MultiRootDataset):
        print(describe_counts(dataset.roots, dataset.counts), flush=True)
    return dataset


def _check_roots(args: argparse.Namespace) -> None:
    """Several ``--data_path`` roots: the refusals of data/roots.py (a root twice; tile sizes, bands, POI
    widths or category tables that differ), before anything is written. One root: nothing new."""
    if not isinstance(args.data_path, (str, Path)):
        check_roots(PretrainLayout.all_from_args(args))


class Pretrainer:
    """Two encoders, two Adam optimisers and the loop around ``step_fn`` (one process of a torchrun job).

    Args:
        args: the parsed ``mmgr.py`` flags.
        dataset: items of :func:`data.datasets.build_pretrain_dataset` in mode ``args.augment``.
        info: which process of a torchrun job this is (a single process by default).
        device: where the models train.
        step_fn: the method's objective on one batch (``mmgr.training_step``).
        run: the claimed run folder (main process; None in the others and in tests that need no lock),
            which checks the free space before the first step and lists the epoch files as this run's.

    Where the loop stands: ``epoch`` epochs done, then ``step`` steps of the next one.
    """

    def __init__(
        self,
        args: argparse.Namespace,
        dataset: Dataset,
        info: DistInfo,
        device: torch.device,
        step_fn: StepFn,
        run: RunFolder | None = None,
    ):
        self.args, self.dataset, self.info, self.device, self.step_fn = args, dataset, info, device, step_fn
        self.run = run
        # A failure of one process (a save, a read) is held until every process learns of it (SharedFailure).
        self.failure = SharedFailure()
        # --batch_size is per process (as MoCo/DINO): the global batch, and the NT-Xent negatives, grow with N.
        self.global_batch = args.batch_size * info.world_size
        if len(dataset) < self.global_batch:
            raise UserError(
                f"{' + '.join(map(str, data_roots(args.data_path)))} has {len(dataset)} usable tiles, fewer than one "
                f"batch of {self.global_batch}; "
                "lower --batch_size (incomplete batches are dropped, as published)"
            )
        seed_everything(args.seed)  # the models' initialisation below draws from this stream
        self.loader = self._build_loader()
        self.augment = GPUAugment(args.img_size) if args.augment == "gpu" else None
        self.img_model, self.poi_model = self._build_models()
        self.opt_img = torch.optim.Adam(self.img_model.parameters(), lr=args.lr)
        self.opt_poi = torch.optim.Adam(self.poi_model.parameters(), lr=args.lr)
        self.scaler = make_scaler(device, args.precision)  # fp16 only; a pass-through otherwise
        self.model_path = Path(args.model_path)
        self.model_path.mkdir(parents=True, exist_ok=True)
        # Only rank 0 prints, records and saves.
        self.record = RecordFile(Path("train-records") / args.train_record) if info.is_main else NullRecord()
        self.log = RecordFile(self.model_path / "train_log.jsonl") if info.is_main else NullRecord()
        self.epoch, self.step, self.global_step = 0, 0, 0
        self.loss_sums = torch.zeros(3, dtype=torch.float64)  # the epoch's sums of (loss, inter, intra)
        self.resume_rng: dict[str, Any] | None = None  # RNG streams to continue a mid-epoch checkpoint with
        self.img_train, self.poi_train = self.img_model, self.poi_model  # + DDP / compile in fit()

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.steps_per_epoch

    def _build_loader(self) -> DataLoader:
        args, info = self.args, self.info
        # Order and augmentation depend only on (seed, epoch, position): resumable mid-epoch, any --workers.
        # Under torchrun the sampler draws global batches and each process takes its slice.
        self.sampler = EpochBatchSampler(len(self.dataset), self.global_batch, args.seed)
        self.worker_seeds = torch.Generator()  # the loader draws its worker base seed from this, not the global stream
        return DataLoader(
            SeededSamples(self.dataset),
            batch_sampler=RankSlice(self.sampler, info.rank, info.world_size) if info.enabled else self.sampler,
            num_workers=args.workers,
            collate_fn=collate_for(args.augment),
            pin_memory=self.device.type == "cuda",
            worker_init_fn=worker_init,
            generator=self.worker_seeds,
            # every sample is drawn under its own seed from the sampler (SeededSamples), so the
            # workers' own random state never matters: keep them between epochs
            persistent_workers=args.workers > 0,
        )

    def _build_models(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        args, info = self.args, self.info
        if info.is_main and (info.enabled or args.precision != "fp32" or self.augment is not None or args.compile):
            print(
                f"{info.world_size} process(es) x batch {args.batch_size} = global batch {self.global_batch}; precision "
                f"{args.precision}, augmentation on {'the device' if self.augment else 'CPU workers'}, channels_last "
                f"{args.channels_last}, compile {args.compile}",
                flush=True,
            )
        try:
            img_model = ImageEncoder(args.resnet, args.projection_dim, args.backbone_weights).to(self.device)
        except ValueError as exc:
            raise UserError(f"{exc}; pass weights of the --resnet depth you chose") from None
        img_model = convert_before_optim(img_model, args, info, self.device)
        poi_model = build_poi_encoder(args.poi_encoder, self.dataset.poi_dim, args.projection_dim).to(self.device)
        return img_model, poi_model

    # ------------------------------------------------------------------------------------------ state

    def state_dict(self, rng_ranks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The resumable checkpoint: ``epoch`` epochs done plus ``step`` steps of the next one.

        ``rng_ranks``: under torchrun, every process's RNG states in rank order (this process's own go
        to ``rng`` as always), so that each process of a resumed run continues its own streams.
        """
        progress = {
            "global_step": self.global_step,
            "loss_sums": self.loss_sums.clone(),
            "n_tiles": len(self.dataset),
            "world_size": self.info.world_size,
            "record_sizes": {str(r.path): r.sync() for r in (self.record, self.log)},
        }
        if isinstance(self.dataset, MultiRootDataset):  # several roots: a mid-epoch resume needs the same ones
            progress["root_counts"] = [
                [str(r), n] for r, n in zip(self.dataset.roots, self.dataset.counts, strict=True)
            ]
        state = {
            "format": RESUME_FORMAT,
            "img": self.img_model.state_dict(),
            "poi": self.poi_model.state_dict(),
            "opt_img": self.opt_img.state_dict(),
            "opt_poi": self.opt_poi.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "args": vars(self.args),
            "rng": rng_state(),
            "progress": progress,
        }
        if self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        if rng_ranks is not None:
            state["rng_ranks"] = list(rng_ranks)
        return state

    def load_state_dict(self, ckpt: dict[str, Any], source: Path | str = "the checkpoint") -> None:
        """Continue from a resumable checkpoint (models, optimisers, scaler, position, RNG, records).

        A mid-epoch checkpoint also needs the same batch size, tiles and process count, or the
        batches skipped would not be the ones already trained on. ``source`` names it in messages.
        """
        saved = ckpt.get("args", {})
        for key in ARCH_FLAGS:
            if key in saved and saved[key] != getattr(self.args, key):
                raise UserError(
                    f"{source} was trained with --{key} {saved[key]} but this run has {getattr(self.args, key)}; "
                    "use the same flags to resume"
                )
        changed = changed_training_flags(saved, self.args)
        if changed and not getattr(self.args, "resume_anyway", False):
            raise UserError(
                f"{source} was trained with other flags: {describe_changes(changed)}; resume with the flags it was "
                "trained with (its args.json lists them), or pass --resume_anyway to continue it with the new ones"
            )
        if changed and self.info.is_main:
            print(
                f"warning: --resume_anyway: {source} continues with changed flags: {describe_changes(changed)}",
                file=sys.stderr,
                flush=True,
            )
        try:
            self.img_model.load_state_dict(ckpt["img"])
            self.poi_model.load_state_dict(ckpt["poi"])
            self.opt_img.load_state_dict(ckpt["opt_img"])
            self.opt_poi.load_state_dict(ckpt["opt_poi"])
        except (RuntimeError, ValueError, KeyError):
            raise UserError(
                f"{source} holds models of another shape than these flags and data build; "
                "resume with the flags and POI data of the original run"
            ) from None
        step, progress = int(ckpt.get("step", 0)), dict(ckpt.get("progress", {}))
        if step:
            self._check_mid_epoch(source, saved, progress)
        if self.scaler.is_enabled() and "scaler" in ckpt:
            self.scaler.load_state_dict(ckpt["scaler"])
        rng, ranks = ckpt.get("rng"), ckpt.get("rng_ranks")
        if ranks is not None and len(ranks) == self.info.world_size:
            rng = ranks[self.info.rank]  # this process's own streams (mid-epoch checkpoints of a torchrun job)
        if rng is not None:
            set_rng_state(rng)
        self.epoch, self.step, self.resume_rng = int(ckpt["epoch"]), step, rng
        self.global_step = int(progress.get("global_step", self.epoch * self.steps_per_epoch + step))
        self.loss_sums = progress["loss_sums"].clone() if step else torch.zeros(3, dtype=torch.float64)
        # Lines written after that checkpoint describe steps that are now trained again: cut them.
        sizes = progress.get("record_sizes", {})
        for rec in (self.record, self.log):
            if str(rec.path) in sizes:
                rec.rewind(int(sizes[str(rec.path)]))

    def _check_mid_epoch(self, source: Path | str, saved: dict[str, Any], progress: dict[str, Any]) -> None:
        if saved.get("batch_size") != self.args.batch_size:
            raise UserError(
                f"{source} was saved mid-epoch with --batch_size {saved.get('batch_size')} but this run has "
                f"{self.args.batch_size}; resume with the same batch size"
            )
        if progress.get("n_tiles") not in (None, len(self.dataset)):
            raise UserError(
                f"{source} was saved mid-epoch on {progress['n_tiles']} tiles but the data now has "
                f"{len(self.dataset)}; resume on the same data (or from an end-of-epoch checkpoint)"
            )
        counts = (
            [[str(r), n] for r, n in zip(self.dataset.roots, self.dataset.counts, strict=True)]
            if isinstance(self.dataset, MultiRootDataset)
            else None
        )
        if progress.get("root_counts") != counts and (counts is not None or "root_counts" in progress):
            have = "; ".join(f"{n} tiles from {r}" for r, n in progress.get("root_counts") or [])
            now = "; ".join(f"{n} tiles from {r}" for r, n in counts or [])
            raise UserError(
                f"{source} was saved mid-epoch on {have or 'one root'} but this run has {now or 'one root'}; the "
                "batches already trained would differ: resume with the same --data_path roots in the same order "
                "(or from an end-of-epoch checkpoint)"
            )
        if progress.get("world_size") not in (None, self.info.world_size):  # None: written before the count was kept
            raise UserError(
                f"{source} was saved mid-epoch by {progress['world_size']} process(es) but this run has "
                f"{self.info.world_size}; the global batch, and so the steps already trained, would differ: "
                "resume with the same number of processes (or from an end-of-epoch checkpoint)"
            )

    def resume(self, resume: str | None) -> None:
        """``--resume``: load ``checkpoint_last.pt`` (or the given file); nothing for a fresh start."""
        path = resume_checkpoint_path(resume, self.model_path)
        if path is None:
            return
        with self.failure.hold():  # every process reads it: a refusal is told once, by rank 0
            self.load_state_dict(read_resumable(path), source=path)
        self.failure.share()
        if self.info.is_main:
            print(f"resumed from {path} at epoch {self.epoch + 1}, step {self.step}", flush=True)

    def save(self, rng_ranks: list[dict[str, Any]] | None = None) -> Path:
        """Write ``checkpoint_last.pt`` from weights checked to be finite (main process only)."""
        where = f"at epoch {self.epoch + 1}, step {self.step}" if self.step else f"after epoch {self.epoch}"
        assert_finite(self.model_path, where, self.img_model, self.poi_model)
        return save_resumable(self.model_path, self.state_dict(rng_ranks))

    # ------------------------------------------------------------------------------------------ loop

    def fit(self) -> None:
        """Train from where the state stands to ``--total_epoch``, saving after every epoch."""
        args = self.args
        if self.info.is_main:
            with self.failure.hold():
                if self.run is not None:  # what the run will write must fit before the first step
                    self.run.check_space(
                        estimate_pretrain_space(
                            self.img_model, self.poi_model, args, self.steps_per_epoch, world_size=self.info.world_size
                        )
                    )
                atomic_write_text(json.dumps(vars(args), indent=2) + "\n", self.model_path / "args.json")
                if self.global_step == 0:
                    # A checkpoint before the first step: a run killed before its first save resumes from
                    # here, its record rewound, instead of leaving lines that a fresh start would repeat.
                    self.save()
        self.failure.share()  # before DDP's first broadcast
        self.img_train, self.poi_train = prepare_models(self.img_model, self.poi_model, args, self.info, self.device)
        with StopOnSignal() as stop:
            while self.epoch < args.total_epoch:
                entry = self.train_one_epoch(stop)
                self.end_of_epoch(entry, stop)
        self.record.close()
        self.log.close()
        if self.info.is_main:
            print(f"done: checkpoints in {self.model_path}", flush=True)

    def train_one_epoch(self, stop: StopOnSignal | None = None) -> dict[str, Any]:
        """Train epoch ``self.epoch`` from step ``self.step`` on; returns its log entry.

        A stop signal (``stop``) saves a resumable checkpoint at the next step boundary and exits.
        """
        args, info, epoch = self.args, self.info, self.epoch
        lr = lr_at(epoch, args.lr, args.total_epoch, args.schedule, args.cos)
        set_lr((self.opt_img, self.opt_poi), lr)
        # Under torchrun each process gets its own stream for --augment gpu (offset by rank; 0 alone).
        seed_everything(epoch_seed(args.seed, epoch) + 7_919 * info.rank)
        self.worker_seeds.manual_seed(epoch_seed(args.seed, epoch))
        first, n_steps = self.step, self.steps_per_epoch
        if not first:
            self.loss_sums = torch.zeros(3, dtype=torch.float64)
        elif self.resume_rng is not None:
            set_rng_state(self.resume_rng)  # mid-epoch: continue the main process's streams where they were
        self.sampler.set_epoch(epoch, first)
        self.img_model.train()
        self.poi_model.train()
        t0 = time.time()
        bar = tqdm(
            self._batches(),
            desc=f"epoch {epoch + 1}/{args.total_epoch}",
            disable=None if info.is_main else True,
            mininterval=1.0,
            initial=first,
            total=n_steps,
        )
        z1 = None
        for step, batch in enumerate(bar, start=first + 1):
            stats, z1 = self.optimise(batch, stop is not None and stop.requested, step)
            self.step, self.global_step = step, self.global_step + 1
            self.loss_sums += stats[:3]
            inter, intra = stats[1].item(), stats[2].item()
            with self.failure.hold():  # rank 0's append; a failure is shared before the next step
                self.record.write_line(f"Step [{step}/{n_steps}]\t Loss1: {inter}\t Loss2: {intra}")
            bar.set_postfix(inter=f"{inter:.4f}", intra=f"{intra:.4f}", refresh=False)
            periodic = args.save_every_steps > 0 and self.global_step % args.save_every_steps == 0
            stop_now = stop is not None and (bool(stats[3] > 0) if info.enabled else stop.requested)
            if step < n_steps and (periodic or stop_now):
                self._save_mid_epoch(stop if stop_now else None)
        bar.close()
        return self._epoch_entry(lr, first, time.time() - t0, z1)

    def _batches(self) -> Iterator[Any]:
        """The loader's batches for this process. Under torchrun a batch that cannot be read (a tile
        damaged since the pre-scan) ends every process before the step's collectives: each fetch is
        followed by one exchange of the failure flag (SharedFailure; a no-op in a single process)."""
        batches = iter(self.loader)
        while True:
            batch = _END
            with self.failure.hold():
                batch = next(batches, _END)
            self.failure.share()
            if batch is _END:
                return
            yield batch

    def optimise(self, batch: Any, stop_requested: bool, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step of both encoders -> ``(stats [4] float64, z_img1 [B, P])``.

        ``stats``: the global batch's (loss, inter, intra) — the mean over processes, so that every
        process sees the same value and all stop together on a non-finite one — and whether any
        process was asked to stop (the request rides on the same reduction, costing no collective).
        """
        loss, loss_inter, loss_intra, z1 = self.step_fn(
            batch, self.img_train, self.poi_train, self.args, self.device, self.augment
        )
        local = torch.stack(
            [loss.detach(), loss_inter.detach(), loss_intra.detach(), loss.new_tensor(float(stop_requested))]
        ).double()
        stats = all_reduce_mean(local).cpu()
        if not torch.isfinite(stats[0]):
            raise UserError(
                f"the loss became {stats[0].item()} at epoch {self.epoch + 1}, step {step}; the last good "
                f"checkpoint is kept in {self.model_path}; lower --lr and resume"
            )
        self.opt_img.zero_grad(set_to_none=True)
        self.opt_poi.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()  # the scaler is a pass-through except for fp16
        self.scaler.step(self.opt_img)
        self.scaler.step(self.opt_poi)
        self.scaler.update()
        return stats, z1

    def _save_mid_epoch(self, stop: StopOnSignal | None) -> None:
        """Mid-epoch checkpoint (``--save_every_steps`` or a stop signal); a stop then exits every process."""
        path = self.model_path / RESUME_NAME
        # Each process's own random state (--augment gpu draws from it), for a mid-epoch resume.
        rng_ranks = gather_objects(rng_state()) if self.info.enabled else None
        if self.info.is_main:
            with self.failure.hold():  # a failed save is shared at the next exchange, before any collective
                path = self.save(rng_ranks)
        if stop is not None:
            signum = self.failure.share(stop.signum or 0)  # also waits for rank 0's save
            stop.exit(
                f"at epoch {self.epoch + 1}, step {self.step} of {self.steps_per_epoch}",
                str(path),
                signum,
                quiet=not self.info.is_main,
            )

    def _epoch_entry(self, lr: float, first: int, seconds: float, z1: torch.Tensor | None) -> dict[str, Any]:
        mean = (self.loss_sums / self.steps_per_epoch).tolist()
        # Collapse figures: per-dimension std of normalised image embeddings (~1/sqrt(P) when spread)
        # and the loss of all-equal similarities, ln(2B - 1), at which a collapsed run gets stuck.
        emb_std = (
            torch.nn.functional.normalize(z1.detach().float(), dim=1).std(dim=0).mean().item()
            if z1 is not None
            else float("nan")
        )
        return {
            "epoch": self.epoch + 1,
            "lr": lr,
            "loss": mean[0],
            "loss_inter": mean[1],
            "loss_intra": mean[2],
            "emb_std": emb_std,
            "loss_uniform": math.log(2 * self.global_batch - 1),
            "seconds": round(seconds, 3),
            "samples_per_s": round((self.steps_per_epoch - first) * self.global_batch / seconds, 2),
        }

    def end_of_epoch(self, entry: dict[str, Any], stop: StopOnSignal) -> None:
        """Log the epoch, save its checkpoints (main process), and stop here if a signal arrived."""
        info = self.info
        self.epoch, self.step = self.epoch + 1, 0
        with self.failure.hold():  # rank 0's writes; every process learns of a failure in the exchange below
            self._end_of_epoch_main(entry)
        # One exchange per epoch: a failed write on rank 0, or a signal that arrived after the last step's
        # reduction. It also keeps every process here until rank 0 has saved.
        signum = self.failure.share(stop.signum or 0)  # this process's own one when alone
        if signum:
            stop.exit(f"after epoch {self.epoch}", str(self.model_path / RESUME_NAME), signum, quiet=not info.is_main)

    def _end_of_epoch_main(self, entry: dict[str, Any]) -> None:
        """Rank 0's part of :meth:`end_of_epoch`: the log line, the summary, the checkpoints."""
        args = self.args
        self.log.write_line(json.dumps(entry))
        if self.info.is_main:
            print(
                f"epoch {self.epoch}/{args.total_epoch}  lr {entry['lr']:.2e}  loss {entry['loss']:.4f}  inter "
                f"{entry['loss_inter']:.4f}  intra {entry['loss_intra']:.4f}  emb_std {entry['emb_std']:.4f}  "
                f"{entry['seconds']:.1f}s",
                flush=True,
            )
            warn_collapse(
                self.epoch,
                entry["emb_std"],
                entry["loss_inter"],
                entry["loss_intra"],
                entry["loss_uniform"],
                args.projection_dim,
            )
            assert_finite(self.model_path, f"after epoch {self.epoch}", self.img_model, self.poi_model)
            if self.epoch % args.save_every == 0 or self.epoch == args.total_epoch:
                files = save_bare(
                    self.model_path, args.ckpt_prefix, self.epoch, self.img_model, self.poi_model, args.keep_last
                )
                if self.run is not None:
                    self.run.note_epoch_files(self.epoch, files)
            self.save()


def warn_collapse(epoch: int, emb_std: float, loss_inter: float, loss_intra: float, uniform: float, dim: int) -> None:
    """Warn, with the figures, when the representation looks collapsed (the published lr 1e-2 with
    Adam can do that to small runs): embeddings of near-zero spread, or both losses stuck within 1 %
    of ln(2B - 1), the value when every similarity is equal."""
    spread = 1.0 / math.sqrt(dim)
    stuck = abs(loss_inter - uniform) < 0.01 * uniform and abs(loss_intra - uniform) < 0.01 * uniform
    if emb_std < 0.1 * spread or stuck:
        print(
            f"warning: epoch {epoch}: the representation looks collapsed (per-dimension std of normalised image "
            f"embeddings {emb_std:.2e}, {spread:.2e} when spread; loss inter {loss_inter:.4f} / intra {loss_intra:.4f} "
            f"vs ln(2B-1) = {uniform:.4f}); a lower --lr usually helps",
            file=sys.stderr,
            flush=True,
        )
