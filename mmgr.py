"""MMGR pretraining: an image encoder and a POI-graph encoder trained with two NT-Xent losses.

    python mmgr.py --data_path DATA --model_path ckpt            # published defaults
    python mmgr.py --demo                                        # built-in synthetic city, CPU-sized

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

from data.pretrain import PretrainBatch, PretrainDataset, collate_pretrain
from data.transforms import pretrain_transform
from models.image_encoder import RESNETS, ImageEncoder
from models.loss import nt_xent
from models.poi_encoder import POI_ENCODERS, build_poi_encoder
from utils.args import common_parser, resolve_device
from utils.checkpoint import atomic_write_text, load_training_state, resume_checkpoint_path, save_checkpoints
from utils.errors import UserError, run_main
from utils.reproducibility import seed_everything, worker_init
from utils.schedule import lr_at, set_lr

# --demo: a configuration that pretrains on 2 CPU cores in a few minutes. Flags given on the
# command line still win over these.
DEMO_CITY = {"n_tiles": 400, "tile_size": 128, "seed": 0}
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
                   help="published flag; the number of processes is taken from torchrun's environment (default 1)")
    p.add_argument("--train_record", default="mmgr_pretrain.txt",
                   help="per-step record file name under ./train-records/ (default 'mmgr_pretrain.txt')")
    p.add_argument("--ckpt_prefix", default="wuhan", help="checkpoint names <prefix>_img_<epoch>.tar (default 'wuhan', published)")
    p.add_argument("--save_every", type=int, default=20, help="write the bare state dicts every N epochs and at the end (default 20, published)")
    p.add_argument("--resume", default=None, nargs="?", const="last",
                   help="continue a run: a checkpoint path, 'last' (the flag alone: MODEL_PATH/checkpoint_last.pt, must exist) "
                        "or 'auto' (resume if it exists, else start fresh); default: start fresh")
    p.add_argument("--backbone_weights", default=None,
                   help="local torchvision ResNet state dict to start the image backbone from (default: random init, published)")
    p.add_argument("--img_dir", default="sub_shanghai_img", help="tile directory under --data_path (default published)")
    p.add_argument("--emb_dir", default="sub_shanghai_emb", help="POI embedding directory (default published)")
    p.add_argument("--edge_dir", default="sub_shanghai_edge", help="POI edge directory (default published)")
    p.add_argument("--weight_dir", default="sub_shanghai_weight", help="optional edge-weight directory, used when present (default 'sub_shanghai_weight')")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.demo:
        demo = Path(args.demo_dir)
        parser.set_defaults(**DEMO_DEFAULTS, data_path=str(demo / "city"), model_path=str(demo / "checkpoints"))
        args = parser.parse_args(argv)
    return args


def training_step(batch: PretrainBatch, img_model: torch.nn.Module, poi_model: torch.nn.Module,
                  args: argparse.Namespace, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The MMGR objective on one batch -> ``(loss, loss_inter, loss_intra, z_img1 [B, P])``."""
    v1 = batch.view1.to(device, non_blocking=True)
    v2 = batch.view2.to(device, non_blocking=True)
    g = batch.graphs.to(device, non_blocking=True)
    z1, z2 = img_model(v1), img_model(v2)  # [B, P] each
    zp = poi_model(g.x, g.edge_index, g.batch, g.num_graphs, getattr(g, "edge_weight", None))  # [B, P]
    # Both terms use view 1's image embedding, as published.
    loss_inter = nt_xent(z1, zp, args.temperature)
    loss_intra = nt_xent(z1, z2, args.temperature)
    loss = (1 - args.img_lmd) * loss_inter + args.img_lmd * loss_intra
    return loss, loss_inter, loss_intra, z1


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.demo:
        from data.synthetic import ensure_city

        print(f"demo: synthetic city of {DEMO_CITY['n_tiles']} tiles ({DEMO_CITY['tile_size']} px) in {args.data_path}; "
              f"{args.resnet}, {args.img_size} px crops, batch {args.batch_size}, {args.total_epoch} epochs, lr {args.lr:g} "
              f"(not the published configuration: sized for a CPU)", flush=True)
        ensure_city(args.data_path, **DEMO_CITY)
    if args.batch_size < 2:
        raise UserError("--batch_size must be at least 2: NT-Xent needs negatives")
    if not 0.0 <= args.img_lmd <= 1.0:
        raise UserError(f"--img_lmd must lie in [0, 1], got {args.img_lmd}")
    device = resolve_device(args.device)
    seed_everything(args.seed)

    dataset = PretrainDataset(args.data_path, pretrain_transform(args.img_size), args.img_dir, args.emb_dir,
                              args.edge_dir, args.weight_dir)
    if len(dataset) < args.batch_size:
        raise UserError(f"{args.data_path} has {len(dataset)} tiles, fewer than one batch of {args.batch_size}; "
                        "lower --batch_size (incomplete batches are dropped, as published)")
    order = torch.Generator()
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True, num_workers=args.workers,
                        collate_fn=collate_pretrain, pin_memory=device.type == "cuda", generator=order,
                        worker_init_fn=worker_init)

    try:
        img_model = ImageEncoder(args.resnet, args.projection_dim, args.backbone_weights).to(device)
    except ValueError as exc:
        raise UserError(f"{exc}; pass weights of the --resnet depth you chose") from None
    poi_model = build_poi_encoder(args.poi_encoder, dataset.poi_dim, args.projection_dim).to(device)
    opt_img = torch.optim.Adam(img_model.parameters(), lr=args.lr)
    opt_poi = torch.optim.Adam(poi_model.parameters(), lr=args.lr)

    model_path = Path(args.model_path)
    model_path.mkdir(parents=True, exist_ok=True)
    start_epoch = 0
    resume_path = resume_checkpoint_path(args.resume, model_path)
    if resume_path is not None:
        start_epoch = load_training_state(resume_path, img_model, poi_model, opt_img, opt_poi, args)
        print(f"resumed from {resume_path} after epoch {start_epoch}", flush=True)
    atomic_write_text(json.dumps(vars(args), indent=2) + "\n", model_path / "args.json")

    record = Path("train-records") / args.train_record
    record.parent.mkdir(parents=True, exist_ok=True)
    n_steps = len(loader)
    for epoch in range(start_epoch, args.total_epoch):
        lr = lr_at(epoch, args.lr, args.total_epoch, args.schedule, args.cos)
        set_lr((opt_img, opt_poi), lr)
        # Data order and augmentation depend only on (seed, epoch): a resumed run sees the same samples.
        seed_everything(args.seed * 1_000_003 + epoch)
        order.manual_seed(args.seed * 1_000_003 + epoch)
        img_model.train()
        poi_model.train()
        sums = torch.zeros(3, dtype=torch.float64)
        t0 = time.time()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{args.total_epoch}", disable=None, mininterval=1.0)
        with record.open("a") as rec:
            for step, batch in enumerate(bar, start=1):
                loss, loss_inter, loss_intra, z1 = training_step(batch, img_model, poi_model, args, device)
                if not torch.isfinite(loss):
                    raise UserError(f"the loss became {loss.item()} at epoch {epoch + 1}, step {step}; the last good checkpoint "
                                    f"is kept in {model_path}; lower --lr and resume")
                opt_img.zero_grad(set_to_none=True)
                opt_poi.zero_grad(set_to_none=True)
                loss.backward()
                opt_img.step()
                opt_poi.step()
                inter, intra = loss_inter.item(), loss_intra.item()
                sums += torch.tensor([loss.item(), inter, intra], dtype=torch.float64)
                rec.write(f"Step [{step}/{n_steps}]\t Loss1: {inter}\t Loss2: {intra}\n")
                bar.set_postfix(inter=f"{inter:.4f}", intra=f"{intra:.4f}", refresh=False)
            rec.flush()
        mean = (sums / n_steps).tolist()
        # Collapse check: per-dimension std of normalised image embeddings (~1/sqrt(P) when spread).
        emb_std = torch.nn.functional.normalize(z1.detach().float(), dim=1).std(dim=0).mean().item()
        seconds = time.time() - t0
        entry = {"epoch": epoch + 1, "lr": lr, "loss": mean[0], "loss_inter": mean[1], "loss_intra": mean[2],
                 "emb_std": emb_std, "seconds": round(seconds, 3), "samples_per_s": round(n_steps * args.batch_size / seconds, 2)}
        with (model_path / "train_log.jsonl").open("a") as log:
            log.write(json.dumps(entry) + "\n")
        print(f"epoch {epoch + 1}/{args.total_epoch}  lr {lr:.2e}  loss {mean[0]:.4f}  inter {mean[1]:.4f}  "
              f"intra {mean[2]:.4f}  emb_std {emb_std:.4f}  {seconds:.1f}s", flush=True)
        if emb_std < 0.1 / math.sqrt(args.projection_dim):
            print(f"warning: image embeddings look collapsed (per-dimension std {emb_std:.2e}); "
                  "a lower --lr usually helps", file=sys.stderr, flush=True)

        save_checkpoints(model_path, epoch + 1, img_model, poi_model, opt_img, opt_poi, args)
    print(f"done: checkpoints in {model_path}", flush=True)


if __name__ == "__main__":
    run_main(main)
