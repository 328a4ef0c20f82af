"""MMGR pretraining: an image encoder and a POI-graph encoder trained with two NT-Xent losses.

    python mmgr.py --data_path DATA --model_path ckpt            # published defaults
    python mmgr.py --demo                                        # built-in synthetic city, CPU-sized
    torchrun --nproc_per_node 4 mmgr.py --precision bf16 --augment gpu ...   # DDP (docs/speed.md)

Each step: two augmented views of every tile -> image encoder -> z1, z2; the tile's POI graph ->
POI encoder -> zp; loss = (1 - λ) * NTXent(z1, zp) + λ * NTXent(z1, z2); two Adam optimisers step.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from data.gpu_augment import GPUAugment
from data.pack import PackedPretrainDataset, is_packed
from data.pretrain import PretrainBatch, PretrainDataset, collate_pretrain
from data.raw import RawBatch, RawPretrainDataset, collate_raw
from data.resumable import EpochBatchSampler, SeededSamples, epoch_seed
from data.scan import apply_bad_samples_policy, scan_pretrain
from data.scan_cache import CACHE_NAME
from data.synthetic import ensure_city
from data.transforms import pretrain_transform
from models.image_encoder import RESNETS, ImageEncoder
from models.loss import nt_xent_gathered
from models.poi_encoder import POI_ENCODERS, build_poi_encoder
from utils.args import common_parser, parse_with_demo, resolve_device
from engine.checkpoints import ResumePoint, load_resume, resume_checkpoint_path, save_checkpoints, save_resumable
from utils.fileio import atomic_write_text
from utils.errors import UserError, run_main
from utils.distributed import (DistInfo, NullRecord, RankSlice, all_reduce_mean, barrier, cleanup, gather_objects, init_from_env,
                               max_over_ranks)
from utils.records import RecordFile
from utils.reproducibility import enable_determinism, rng_state, seed_everything, set_rng_state, worker_init
from utils.signals import StopOnSignal
from utils.schedule import lr_at, set_lr
from utils.speed import add_speed_flags, autocast, convert_before_optim, make_scaler, prepare_models

# --demo: a configuration that pretrains on 2 CPU cores in a few minutes. Flags given on the
# command line still win over these.
DEMO_CITY = {"tile_size": 128, "seed": 0}  # n_tiles: --demo_tiles (default 400)
DEMO_DEFAULTS = {"resnet": "resnet18", "img_size": 64, "batch_size": 32, "total_epoch": 8, "lr": 1e-3,
                 "schedule": [6], "workers": 2, "train_record": "demo_pretrain.txt", "save_every": 4}


def build_parser() -> argparse.ArgumentParser:
    common = common_parser(data_path="./DATA", model_path="./checkpoints", batch_size=128, lr=1e-2,
                           total_epoch=120, schedule=[90, 110], img_size=224, origin="published")
    p = argparse.ArgumentParser(description="MMGR multi-modal contrastive pretraining (Bai et al., 2023).",
                                parents=[common])
    p.add_argument("--resnet", default="resnet50", choices=RESNETS, help="image backbone (default resnet50, published)")
    p.add_argument("--projection_dim", type=int, default=128, help="projection width of both encoders (default 128, published)")
    p.add_argument("--temperature", type=float, default=0.5, help="NT-Xent temperature (default 0.5, published)")
    p.add_argument("--img_lmd", type=float, default=0.5,
                   help="λ: loss = (1-λ)·NTXent(image, POI) + λ·NTXent(image, image) (default 0.5, published)")
    p.add_argument("--poi_encoder", default="set2set", choices=POI_ENCODERS,
                   help="set2set = released encoder (default); gcn = GCN layers over the POI graph (paper's description)")
    p.add_argument("--world_size", type=int, default=1,
                   help="published flag, ignored: the number of processes is taken from torchrun's environment "
                        "(torchrun --nproc_per_node N mmgr.py ...); default 1")
    p.add_argument("--train_record", default="mmgr_pretrain.txt",
                   help="per-step record file name under ./train-records/ (default 'mmgr_pretrain.txt')")
    p.add_argument("--ckpt_prefix", default="wuhan", help="checkpoint names <prefix>_img_<epoch>.tar (default 'wuhan', published)")
    p.add_argument("--save_every", type=int, default=20, help="write the bare state dicts every N epochs and at the end (default 20, published)")
    p.add_argument("--resume", default=None, nargs="?", const="last",
                   help="continue a run: a checkpoint path, 'last' (the flag alone: MODEL_PATH/checkpoint_last.pt, must exist) "
                        "or 'auto' (resume if it exists, else start fresh); default: start fresh")
    p.add_argument("--save_every_steps", type=int, default=0,
                   help="also write the resumable checkpoint every N steps within an epoch (default 0: only after each epoch)")
    p.add_argument("--keep_last", type=int, default=0,
                   help="keep only the K newest epochs of bare state dicts (default 0: keep all, as published)")
    p.add_argument("--bad_samples", default="error", choices=("error", "skip"),
                   help="bad or missing tile files found by the pre-scan: error = stop and list them all (default); "
                        "skip = train on the other tiles")
    p.add_argument("--check_data", action="store_true", help="only scan the data, list every bad file and exit (2 if any)")
    p.add_argument("--rescan", action="store_true",
                   help="ignore the pre-scan cache (MODEL_PATH/scan_cache.json) and check every file again, for files "
                        "edited in a way that kept their size and modification time (default off: tiles found good "
                        "before, with unchanged files, are not read again)")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic kernels and no cuDNN autotuning, for bit-identical reruns on GPU (default off; "
                        "CPU runs are deterministic already)")
    p.add_argument("--backbone_weights", default=None,
                   help="local torchvision ResNet state dict to start the image backbone from (default: random init, published)")
    p.add_argument("--demo_tiles", type=int, default=400,
                   help="with --demo: tiles of the synthetic city (default 400, generated once into DEMO_DIR/city)")
    p.add_argument("--img_dir", default="sub_shanghai_img", help="tile directory under --data_path (default published)")
    p.add_argument("--emb_dir", default="sub_shanghai_emb", help="POI embedding directory (default published)")
    p.add_argument("--edge_dir", default="sub_shanghai_edge", help="POI edge directory (default published)")
    p.add_argument("--weight_dir", default="sub_shanghai_weight", help="optional edge-weight directory, used when present (default 'sub_shanghai_weight')")
    add_speed_flags(p)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return parse_with_demo(build_parser(), argv, DEMO_DEFAULTS)


def training_step(batch: PretrainBatch | RawBatch, img_model: torch.nn.Module, poi_model: torch.nn.Module,
                  args: argparse.Namespace, device: torch.device,
                  augment: GPUAugment | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The MMGR objective on one batch -> ``(loss, loss_inter, loss_intra, z_img1 [B, P])``.

    A :class:`RawBatch` (``--augment gpu``) holds decoded uint8 tiles: both views are drawn here, on
    ``device``, by ``augment``. Under torchrun the losses use every process's negatives.
    """
    memory = torch.channels_last if args.channels_last else torch.contiguous_format
    if isinstance(batch, RawBatch):
        images = batch.images.to(device, non_blocking=True)  # uint8 [B, 3, H, W]
        v1 = augment(images, channels_last=args.channels_last)
        v2 = augment(images, channels_last=args.channels_last)
    else:
        v1 = batch.view1.to(device, non_blocking=True).contiguous(memory_format=memory)
        v2 = batch.view2.to(device, non_blocking=True).contiguous(memory_format=memory)
    g = batch.graphs.to(device, non_blocking=True)
    with autocast(device, args.precision):
        z1, z2 = img_model(v1), img_model(v2)  # [B, P] each
    # The POI encoder is tiny next to the ResNet and its LSTM has no CPU bf16 kernel: always fp32.
    zp = poi_model(g.x, g.edge_index, g.batch, g.num_graphs, getattr(g, "edge_weight", None))  # [B, P]
    # Both terms use view 1's image embedding, as published. In fp32 (the loss casts), with the
    # negatives of all processes under torchrun (plain nt_xent in a single process).
    loss_inter = nt_xent_gathered(z1, zp, args.temperature)
    loss_intra = nt_xent_gathered(z1, z2, args.temperature)
    loss = (1 - args.img_lmd) * loss_inter + args.img_lmd * loss_intra
    return loss, loss_inter, loss_intra, z1


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    info, device = init_from_env(resolve_device(args.device))
    try:
        train(args, info, device)
    finally:
        cleanup()


def train(args: argparse.Namespace, info: DistInfo, device: torch.device) -> None:
    """Pretrain with ``args``; ``info`` says which process of a torchrun job this is."""
    if args.deterministic:
        enable_determinism()
    if args.demo:
        if info.is_main:  # one writer (and one banner); the other processes wait for the city
            print(f"demo: synthetic city of {args.demo_tiles} tiles ({DEMO_CITY['tile_size']} px) in {args.data_path}; "
                  f"{args.resnet}, {args.img_size} px crops, batch {args.batch_size}, {args.total_epoch} epochs, lr {args.lr:g} "
                  f"(not the published configuration: sized for a CPU)", flush=True)
            ensure_city(args.data_path, n_tiles=args.demo_tiles, **DEMO_CITY)
        barrier()
    if args.batch_size < 2:
        raise UserError("--batch_size must be at least 2: NT-Xent needs negatives")
    if not 0.0 <= args.img_lmd <= 1.0:
        raise UserError(f"--img_lmd must lie in [0, 1], got {args.img_lmd}")
    if args.save_every < 1 or args.save_every_steps < 0 or args.keep_last < 0:
        raise UserError("--save_every must be at least 1, --save_every_steps and --keep_last at least 0")

    gpu_aug = args.augment == "gpu"
    packed = is_packed(args.data_path)  # a pack written by `python -m data.pack`, validated when packed
    if not packed:
        # Every bad file is found before training starts (data/scan.py); --check_data stops here. Good
        # tiles are remembered in the run's folder (created by the write if needed; a folder that
        # cannot be written only costs a warning), so a relaunch (--resume) does not read them again.
        report = scan_pretrain(args.data_path, args.img_dir, args.emb_dir, args.edge_dir, args.weight_dir, args.workers,
                               cache=Path(args.model_path) / CACHE_NAME, rescan=args.rescan,
                               cache_read_only=not info.is_main)
        tiles = apply_bad_samples_policy(report, args.bad_samples, check_only=args.check_data)
    if args.check_data:
        return
    seed_everything(args.seed)
    if args.channels_last is None:  # default: on where it is faster (CUDA), off on CPU
        args.channels_last = device.type == "cuda"
    if device.type == "cuda" and not args.deterministic:
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels

    if packed:
        dataset = PackedPretrainDataset(args.data_path, None if gpu_aug else pretrain_transform(args.img_size))
    elif gpu_aug:
        dataset = RawPretrainDataset(args.data_path, args.img_dir, args.emb_dir, args.edge_dir, args.weight_dir,
                                     images=tiles, poi_dim=report.poi_dim)
    else:
        dataset = PretrainDataset(args.data_path, pretrain_transform(args.img_size), args.img_dir, args.emb_dir,
                                  args.edge_dir, args.weight_dir, images=tiles, poi_dim=report.poi_dim)
    # --batch_size is per process (as MoCo/DINO): the global batch, and the NT-Xent negatives, grow with N.
    global_batch = args.batch_size * info.world_size
    if len(dataset) < global_batch:
        raise UserError(f"{args.data_path} has {len(dataset)} usable tiles, fewer than one batch of {global_batch}; "
                        "lower --batch_size (incomplete batches are dropped, as published)")
    # Order and augmentation depend only on (seed, epoch, position): resumable mid-epoch, any --workers.
    # Under torchrun the sampler draws global batches and each process takes its slice (a distributed
    # sampler with per-epoch shuffling that stays resumable mid-epoch).
    sampler = EpochBatchSampler(len(dataset), global_batch, args.seed)
    worker_seeds = torch.Generator()  # the loader draws its worker base seed from this, not the global stream
    loader = DataLoader(SeededSamples(dataset), batch_sampler=RankSlice(sampler, info.rank, info.world_size) if info.enabled else sampler,
                        num_workers=args.workers, collate_fn=collate_raw if gpu_aug else collate_pretrain,
                        pin_memory=device.type == "cuda", worker_init_fn=worker_init, generator=worker_seeds,
                        # every sample is drawn under its own seed from the sampler (SeededSamples), so the
                        # workers' own random state never matters: keep them between epochs
                        persistent_workers=args.workers > 0)
    augment = GPUAugment(args.img_size) if gpu_aug else None
    if info.is_main and (info.enabled or args.precision != "fp32" or gpu_aug or args.compile):
        print(f"{info.world_size} process(es) x batch {args.batch_size} = global batch {global_batch}; precision "
              f"{args.precision}, augmentation on {'the device' if gpu_aug else 'CPU workers'}, channels_last "
              f"{args.channels_last}, compile {args.compile}", flush=True)

    try:
        img_model = ImageEncoder(args.resnet, args.projection_dim, args.backbone_weights).to(device)
    except ValueError as exc:
        raise UserError(f"{exc}; pass weights of the --resnet depth you chose") from None
    img_model = convert_before_optim(img_model, args, info, device)
    poi_model = build_poi_encoder(args.poi_encoder, dataset.poi_dim, args.projection_dim).to(device)
    opt_img = torch.optim.Adam(img_model.parameters(), lr=args.lr)
    opt_poi = torch.optim.Adam(poi_model.parameters(), lr=args.lr)

    model_path = Path(args.model_path)
    model_path.mkdir(parents=True, exist_ok=True)
    # Only rank 0 prints, records and saves.
    record = RecordFile(Path("train-records") / args.train_record) if info.is_main else NullRecord()
    log = RecordFile(model_path / "train_log.jsonl") if info.is_main else NullRecord()
    scaler = make_scaler(device, args.precision)  # fp16 only; restored on resume with the rest
    start = ResumePoint()
    resume_path = resume_checkpoint_path(args.resume, model_path)
    if resume_path is not None:
        start = load_resume(resume_path, img_model, poi_model, opt_img, opt_poi, args, n_tiles=len(dataset),
                            scaler=scaler if scaler.is_enabled() else None)
        # Lines written after that checkpoint describe steps that are now trained again: cut them.
        sizes = start.progress.get("record_sizes", {})
        for rec in (record, log):
            if str(rec.path) in sizes:
                rec.rewind(int(sizes[str(rec.path)]))
        if info.is_main:
            print(f"resumed from {resume_path} at epoch {start.epoch + 1}, step {start.step}", flush=True)
    if info.is_main:
        atomic_write_text(json.dumps(vars(args), indent=2) + "\n", model_path / "args.json")
    img_train, poi_train = prepare_models(img_model, poi_model, args, info, device)  # + DDP / compile
    amp_state = scaler if scaler.is_enabled() else None

    n_steps = sampler.steps_per_epoch
    global_step = int(start.progress.get("global_step", start.epoch * n_steps + start.step))
    sums = torch.zeros(3, dtype=torch.float64)

    def progress() -> dict:
        return {"global_step": global_step, "loss_sums": sums.clone(), "n_tiles": len(dataset),
                "world_size": info.world_size, "record_sizes": {str(r.path): r.sync() for r in (record, log)}}

    with StopOnSignal() as stop:
        for epoch in range(start.epoch, args.total_epoch):
            lr = lr_at(epoch, args.lr, args.total_epoch, args.schedule, args.cos)
            set_lr((opt_img, opt_poi), lr)
            # Under torchrun each process gets its own stream for --augment gpu (offset by rank; 0 alone).
            seed_everything(epoch_seed(args.seed, epoch) + 7_919 * info.rank)
            worker_seeds.manual_seed(epoch_seed(args.seed, epoch))
            first = start.step if epoch == start.epoch else 0
            sums = start.progress["loss_sums"].clone() if first else torch.zeros(3, dtype=torch.float64)
            if first and start.rng is not None:
                set_rng_state(start.rng)  # mid-epoch: continue the main process's streams where they were
            sampler.set_epoch(epoch, first)
            img_model.train()
            poi_model.train()
            t0 = time.time()
            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{args.total_epoch}", disable=None if info.is_main else True, mininterval=1.0,
                       initial=first, total=n_steps)
            for step, batch in enumerate(bar, start=first + 1):
                loss, loss_inter, loss_intra, z1 = training_step(batch, img_train, poi_train, args, device, augment)
                # Records hold the loss of the global batch (the mean over processes); every process
                # sees the same value, so all stop together on a non-finite one. The same reduction
                # carries the stop requests: a signal that reached any process stops all of them at the
                # same step (otherwise the others would wait for it in the next collective forever).
                local = torch.stack([loss.detach(), loss_inter.detach(), loss_intra.detach(),
                                     loss.new_tensor(float(stop.requested))]).double()
                stats = all_reduce_mean(local).cpu()
                losses = stats[:3]
                if not torch.isfinite(losses[0]):
                    raise UserError(f"the loss became {losses[0].item()} at epoch {epoch + 1}, step {step}; the last good checkpoint "
                                    f"is kept in {model_path}; lower --lr and resume")
                opt_img.zero_grad(set_to_none=True)
                opt_poi.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()  # the scaler is a pass-through except for fp16
                scaler.step(opt_img)
                scaler.step(opt_poi)
                scaler.update()
                global_step += 1
                sums += losses
                inter, intra = losses[1].item(), losses[2].item()
                record.write_line(f"Step [{step}/{n_steps}]\t Loss1: {inter}\t Loss2: {intra}")
                bar.set_postfix(inter=f"{inter:.4f}", intra=f"{intra:.4f}", refresh=False)
                periodic = args.save_every_steps > 0 and global_step % args.save_every_steps == 0
                stop_now = bool(stats[3] > 0) if info.enabled else stop.requested
                if step < n_steps and (periodic or stop_now):
                    path = model_path / "checkpoint_last.pt"
                    # Each process's own random state (--augment gpu draws from it), for a mid-epoch resume.
                    rng_ranks = gather_objects(rng_state()) if info.enabled else None
                    if info.is_main:
                        path = save_resumable(model_path, img_model, poi_model, opt_img, opt_poi, args, epoch=epoch,
                                              step=step, progress=progress(), scaler=amp_state, rng_ranks=rng_ranks)
                    if stop_now:
                        signum = max_over_ranks(stop.signum or 0, device)  # also waits for rank 0's save
                        stop.exit(f"at epoch {epoch + 1}, step {step} of {n_steps}", str(path), signum, quiet=not info.is_main)
            bar.close()
            mean = (sums / n_steps).tolist()
            # Collapse figures: per-dimension std of normalised image embeddings (~1/sqrt(P) when spread)
            # and the loss of all-equal similarities, ln(2B - 1), at which a collapsed run gets stuck.
            emb_std = torch.nn.functional.normalize(z1.detach().float(), dim=1).std(dim=0).mean().item()
            uniform = math.log(2 * global_batch - 1)
            seconds = time.time() - t0
            entry = {"epoch": epoch + 1, "lr": lr, "loss": mean[0], "loss_inter": mean[1], "loss_intra": mean[2],
                     "emb_std": emb_std, "loss_uniform": uniform, "seconds": round(seconds, 3),
                     "samples_per_s": round((n_steps - first) * global_batch / seconds, 2)}
            log.write_line(json.dumps(entry))
            if info.is_main:
                print(f"epoch {epoch + 1}/{args.total_epoch}  lr {lr:.2e}  loss {mean[0]:.4f}  inter {mean[1]:.4f}  "
                      f"intra {mean[2]:.4f}  emb_std {emb_std:.4f}  {seconds:.1f}s", flush=True)
                warn_collapse(epoch + 1, emb_std, mean[1], mean[2], uniform, args.projection_dim)
                save_checkpoints(model_path, epoch + 1, img_model, poi_model, opt_img, opt_poi, args, progress=progress(),
                                 scaler=amp_state)
            # One more collective per epoch: a signal that arrived after the last step's reduction. It
            # also keeps every process here until rank 0 has saved.
            signum = max_over_ranks(stop.signum or 0, device)  # this process's own one when alone
            if signum:
                stop.exit(f"after epoch {epoch + 1}", str(model_path / "checkpoint_last.pt"), signum, quiet=not info.is_main)
    record.close()
    log.close()
    if info.is_main:
        print(f"done: checkpoints in {model_path}", flush=True)


def warn_collapse(epoch: int, emb_std: float, loss_inter: float, loss_intra: float, uniform: float, dim: int) -> None:
    """Warn, with the figures, when the representation looks collapsed (the published lr 1e-2 with
    Adam can do that to small runs): embeddings of near-zero spread, or both losses stuck within 1 %
    of ln(2B - 1), the value when every similarity is equal."""
    spread = 1.0 / math.sqrt(dim)
    stuck = abs(loss_inter - uniform) < 0.01 * uniform and abs(loss_intra - uniform) < 0.01 * uniform
    if emb_std < 0.1 * spread or stuck:
        print(f"warning: epoch {epoch}: the representation looks collapsed (per-dimension std of normalised image "
              f"embeddings {emb_std:.2e}, {spread:.2e} when spread; loss inter {loss_inter:.4f} / intra {loss_intra:.4f} "
              f"vs ln(2B-1) = {uniform:.4f}); a lower --lr usually helps", file=sys.stderr, flush=True)


if __name__ == "__main__":
    run_main(main)
