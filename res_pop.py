"""Population regression from a pretrained MMGR image encoder (frozen backbone probe).

    python res_pop.py --data_path DATA --ckpt ckpt/wuhan_img_120.tar
    python res_pop.py --demo                 # after `python mmgr.py --demo`

The encoder's projection ``fc`` is replaced by ``Linear(d, d/2) -> ReLU -> Linear(d/2, 1)``; only that
head trains (the backbone stays in eval mode, BatchNorm statistics frozen); prediction =
ReLU(output); MSE loss. From epoch ``--eval_from`` on, MAE, RMSE and R² on the validation list are
printed and appended to the record file.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from data.downstream import TileTargetDataset
from data.transforms import downstream_train_transform, eval_transform
from models.heads import load_image_encoder, with_task_head
from utils.args import common_parser, resolve_device
from utils.checkpoint import newest_image_checkpoint
from utils.errors import UserError, run_main
from utils.metrics import regression_metrics
from utils.reproducibility import seed_everything, worker_init
from utils.schedule import lr_at, set_lr

DEMO_DEFAULTS = {"img_size": 64, "total_epoch": 12, "schedule": [8, 10], "workers": 2, "eval_from": 1,
                 "train_record": "demo_res_pop.txt"}


def build_parser() -> argparse.ArgumentParser:
    common = common_parser(data_path="./DATA", model_path="./checkpoints", batch_size=48, lr=5e-2, total_epoch=40,
                           schedule=[20, 30], img_size=224, origin="published res-pop")
    p = argparse.ArgumentParser(description="Population regression with a frozen MMGR image encoder.", parents=[common])
    p.add_argument("--ckpt", default=None,
                   help="image checkpoint (*_img_<epoch>.tar, ours or the published script's, or checkpoint_last.pt); "
                        "default: the newest *_img_*.tar in --model_path")
    p.add_argument("--img_dir", default="img", help="tile directory under --data_path (default 'img', published)")
    p.add_argument("--target_dir", default="pop1km", help="per-tile target directory (default 'pop1km', published)")
    p.add_argument("--train_list", default="train-wuhan.txt", help="training list file (default published)")
    p.add_argument("--val_list", default="val-wuhan.txt", help="validation list file (default published)")
    p.add_argument("--eval_from", type=int, default=5, help="first epoch evaluated on the validation list (default 5, published)")
    p.add_argument("--train_record", default="res_pop.txt", help="metrics record file under ./train-records/ (default 'res_pop.txt')")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.demo:
        demo = Path(args.demo_dir)
        parser.set_defaults(**DEMO_DEFAULTS, data_path=str(demo / "city"), model_path=str(demo / "checkpoints"))
        args = parser.parse_args(argv)
    return args


@torch.no_grad()
def predict(model: torch.nn.Module, loader: DataLoader, device: torch.device) -> np.ndarray:
    """ReLU(model(x)) over a loader -> ``[N, K]`` predictions in loader order."""
    model.eval()
    out = [F.relu(model(x.to(device, non_blocking=True))).float().cpu() for x, _, _ in loader]
    return torch.cat(out).numpy()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = resolve_device(args.device)
    seed_everything(args.seed)
    if args.demo and not Path(args.data_path).is_dir():
        raise UserError(f"{args.data_path} does not exist; run `python mmgr.py --demo` first")
    ckpt = Path(args.ckpt) if args.ckpt else newest_image_checkpoint(args.model_path)
    train_set = TileTargetDataset(args.data_path, args.train_list, downstream_train_transform(args.img_size),
                                  args.img_dir, args.target_dir)
    val_set = TileTargetDataset(args.data_path, args.val_list, eval_transform(), args.img_dir, args.target_dir)
    if len(train_set) < args.batch_size:
        raise UserError(f"{args.train_list} lists {len(train_set)} tiles, fewer than one batch of {args.batch_size}; lower --batch_size")
    loader_kw = dict(num_workers=args.workers, pin_memory=device.type == "cuda", worker_init_fn=worker_init)
    order = torch.Generator()
    # The published loader drops the incomplete last batch during training.
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, drop_last=True, generator=order, **loader_kw)
    val_loader = DataLoader(val_set, batch_size=args.batch_size, shuffle=False, **loader_kw)

    model = with_task_head(load_image_encoder(ckpt), out_dim=1, freeze_backbone=True).to(device)
    print(f"loaded {ckpt} ({model.resnet}); {len(train_set)} training and {len(val_set)} validation tiles", flush=True)
    head = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(head, lr=args.lr)
    record = Path("train-records") / args.train_record
    record.parent.mkdir(parents=True, exist_ok=True)
    y_val = val_set.targets.numpy()[:, 0]
    history = []
    for epoch in range(args.total_epoch):
        lr = lr_at(epoch, args.lr, args.total_epoch, args.schedule, args.cos)
        set_lr([opt], lr)
        seed_everything(args.seed * 1_000_003 + epoch)
        order.manual_seed(args.seed * 1_000_003 + epoch)
        model.eval()  # frozen backbone: BatchNorm keeps its pretrained statistics (published protocol)
        t0, total, n = time.time(), 0.0, 0
        for x, y, _ in train_loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.mse_loss(F.relu(model(x)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, n = total + loss.item() * len(x), n + len(x)
        line = f"epoch {epoch + 1}/{args.total_epoch}  lr {lr:.2e}  train MSE {total / n:.4f}  {time.time() - t0:.1f}s"
        if epoch + 1 >= args.eval_from:
            m = regression_metrics(y_val, predict(model, val_loader, device)[:, 0])
            history.append({"epoch": epoch + 1, **m})
            line += f"  |  val MAE {m['MAE']:.4f}  RMSE {m['RMSE']:.4f}  R2 {m['R2']:.4f}"
            with record.open("a") as rec:
                rec.write(json.dumps({"ckpt": str(ckpt), "target": args.target_dir, **history[-1]}) + "\n")
        print(line, flush=True)
    if history:
        best = max(history, key=lambda h: -np.inf if np.isnan(h["R2"]) else h["R2"])
        last = history[-1]
        for tag, h in (("best", best), ("last", last)):
            print(f"{tag} epoch {h['epoch']}: MAE {h['MAE']:.4f}  RMSE {h['RMSE']:.4f}  R2 {h['R2']:.4f}", flush=True)


if __name__ == "__main__":
    run_main(main)
