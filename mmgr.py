"""MMGR pretraining: an image encoder and a POI-graph encoder trained with two NT-Xent losses.

    python mmgr.py --data_path DATA --model_path ckpt            # published defaults
    python mmgr.py --demo                                        # built-in synthetic city, CPU-sized
    torchrun --nproc_per_node 4 mmgr.py --precision bf16 --augment gpu ...   # DDP (docs/speed.md)

Each step: two augmented views of every tile -> image encoder -> z1, z2; the tile's POI graph ->
POI encoder -> zp; loss = (1 - λ) * NTXent(z1, zp) + λ * NTXent(z1, z2); two Adam optimisers step.
Tiles without POIs take part in NTXent(z1, z2) only (``--empty_poi_tiles``, docs/method.md).
"""

from __future__ import annotations

import argparse

import torch

from data.gpu_augment import GPUAugment
from data.layout import add_layout_flags
from data.pretrain import PretrainBatch
from data.raw import RawBatch
from engine.checkpoints import default_ckpt_prefix
from engine.pretrain import Pretrainer, claim_run_folder, prepare_data
from models.image_encoder import RESNETS
from models.loss import nt_xent_gathered
from models.poi_encoder import POI_ENCODERS
from synthetic.city import ensure_city
from utils.args import common_parser, parse_with_demo, resolve_device, str2bool
from utils.distributed import DistInfo, SharedFailure, cleanup, init_from_env
from utils.errors import UserError, run_main
from utils.fileio import write_advice
from utils.reproducibility import enable_determinism
from utils.speed import add_speed_flags, autocast, default_channels_last

# --demo: a configuration that pretrains on 2 CPU cores in a few minutes. Flags given on the
# command line still win over these.
DEMO_CITY = {"tile_size": 128, "seed": 0}  # n_tiles: --demo_tiles (default 400)
DEMO_DEFAULTS = {
    "resnet": "resnet18",
    "img_size": 64,
    "batch_size": 32,
    "total_epoch": 8,
    "lr": 1e-3,
    "schedule": [6],
    "workers": 2,
    "train_record": "demo_pretrain.txt",
    "save_every": 4,
}


def build_parser() -> argparse.ArgumentParser:
    """mmgr.py's flags: the shared ones (utils/args.py) at the published pretraining values, then one group per theme."""
    common = common_parser(
        data_path="./DATA",
        model_path="./checkpoints",
        batch_size=128,
        lr=1e-2,
        total_epoch=120,
        schedule=[90, 110],
        img_size=224,
        origin="published",
    )
    p = argparse.ArgumentParser(
        description="MMGR multi-modal contrastive pretraining (Bai et al., 2023).",
        parents=[common],
        conflict_handler="resolve",  # --data_path takes several roots here: it replaces the shared flag
    )
    _data_flag(p)
    _method_flags(p)
    _run_folder_flags(p)
    _data_check_flags(p)
    _start_flags(p)
    add_layout_flags(p)
    add_speed_flags(p)
    return p


def _data_flag(p: argparse.ArgumentParser) -> None:
    """``--data_path A [B ...]``: one root (the published flag) or several, pretrained on as one set."""
    g = p.add_argument_group("data")
    g.add_argument(
        "--data_path",
        nargs="+",
        default="./DATA",
        help="data root (default './DATA', published), or several roots (prepared folders or packs of tiles "
        "of one size, bands and POI vocabulary) to pretrain on their union (README, 'Two cities')",
    )


def _method_flags(p: argparse.ArgumentParser) -> None:
    """The two encoders and the loss: ``--resnet --projection_dim --temperature --img_lmd --poi_encoder`` (and the
    published ``--world_size``, kept for its scripts)."""
    g = p.add_argument_group("method (published defaults)")
    g.add_argument("--resnet", default="resnet50", choices=RESNETS, help="image backbone (default resnet50, published)")
    g.add_argument(
        "--projection_dim", type=int, default=128, help="projection width of both encoders (default 128, published)"
    )
    g.add_argument("--temperature", type=float, default=0.5, help="NT-Xent temperature (default 0.5, published)")
    g.add_argument(
        "--img_lmd",
        type=float,
        default=0.5,
        help="λ: loss = (1-λ)·NTXent(image, POI) + λ·NTXent(image, image) (default 0.5, published)",
    )
    g.add_argument(
        "--empty_poi_tiles",
        default="exclude",
        choices=("exclude", "include"),
        help="tiles without POIs: exclude = they take part in the image–image term only, never in the image–POI "
        "term, neither as pairs nor as negatives (default, ours: their empty graphs all share one embedding); "
        "include = every tile's POI graph, empty or not, enters the image–POI term (published; use it with "
        "--img_lmd 0, where exclude leaves such tiles out of training)",
    )
    g.add_argument(
        "--poi_encoder",
        default="set2set",
        choices=POI_ENCODERS,
        help="set2set = released encoder (default); gcn = GCN layers over the POI graph (paper's description)",
    )
    g.add_argument(
        "--world_size",
        type=int,
        default=1,
        help="published flag, ignored: the number of processes is taken from torchrun's environment "
        "(torchrun --nproc_per_node N mmgr.py ...); default 1",
    )


def _run_folder_flags(p: argparse.ArgumentParser) -> None:
    """What the run writes into --model_path and ./train-records/, and how it continues or replaces a run
    (docs/run_folder.md, docs/reliability.md)."""
    g = p.add_argument_group("run folder, checkpoints and resume")
    g.add_argument(
        "--train_record",
        default="mmgr_pretrain.txt",
        help="per-step record file name under ./train-records/ (default 'mmgr_pretrain.txt')",
    )
    g.add_argument(
        "--ckpt_prefix",
        default=None,
        help="checkpoint names <prefix>_img_<epoch>.tar (default 'wuhan', published, for the published layout and "
        "the synthetic city; 'mmgr' for a folder prepared by prepare_pois.py; a resumed run keeps its own)",
    )
    g.add_argument(
        "--save_every",
        type=int,
        default=20,
        help="write the bare state dicts every N epochs and at the end (default 20, published)",
    )
    g.add_argument(
        "--resume",
        default=None,
        nargs="?",
        const="last",
        help="continue a run: a checkpoint path, 'last' (the flag alone: MODEL_PATH/checkpoint_last.pt, must exist) "
        "or 'auto' (resume if it exists, else start fresh); default: start fresh",
    )
    g.add_argument(
        "--resume_anyway",
        action="store_true",
        help="continue a checkpoint even though training flags differ from the ones it was trained with (--lr, "
        "--schedule, --cos, --batch_size, --img_size, --augment, --precision, --img_lmd, --temperature, --seed, "
        "--sync_bn), with a warning naming them (default off: --resume refuses such a checkpoint, naming them)",
    )
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in --model_path: its checkpoints, logs and per-step record are removed "
        "before anything new is written (default off: a folder holding a run is refused unless --resume)",
    )
    g.add_argument(
        "--save_every_steps",
        type=int,
        default=0,
        help="also write the resumable checkpoint every N steps within an epoch (default 0: only after each epoch)",
    )
    g.add_argument(
        "--keep_last",
        type=int,
        default=0,
        help="keep only the K newest epochs of bare state dicts (default 0: keep all, as published)",
    )


def _data_check_flags(p: argparse.ArgumentParser) -> None:
    """``--bad_samples --check_data --rescan``: the pre-scan of every tile before training (data/scan.py)."""
    g = p.add_argument_group("data checks (the pre-scan of every file)")
    g.add_argument(
        "--bad_samples",
        default="error",
        choices=("error", "skip"),
        help="bad or missing tile files found by the pre-scan: error = stop and list them all (default); "
        "skip = train on the other tiles",
    )
    g.add_argument(
        "--check_data", action="store_true", help="only scan the data, list every bad file and exit (2 if any)"
    )
    g.add_argument(
        "--rescan",
        action="store_true",
        help="ignore the pre-scan cache (MODEL_PATH/scan_cache.json) and check every file again, for files "
        "edited in a way that kept their size and modification time (default off: tiles found good "
        "before, with unchanged files, are not read again)",
    )


def _start_flags(p: argparse.ArgumentParser) -> None:
    """``--deterministic --backbone_weights --demo_tiles``: how the run starts (kernels, backbone, --demo's city)."""
    g = p.add_argument_group("start: reproducibility, initial weights, demo city")
    g.add_argument(
        "--deterministic",
        type=str2bool,
        nargs="?",
        const=True,
        default=None,
        help="deterministic kernels and no cuDNN autotuning, for bit-identical reruns (default: on for CPU "
        "runs, where a busy machine otherwise changes the POI encoder's gradients in the last bits, at "
        "a cost of about 5-10 %% of a demo-sized step; off on GPU: docs/reliability.md)",
    )
    g.add_argument(
        "--backbone_weights",
        default=None,
        help="local torchvision ResNet state dict to start the image backbone from (default: random init, published)",
    )
    g.add_argument(
        "--demo_tiles",
        type=int,
        default=400,
        help="with --demo: tiles of the synthetic city (default 400, generated once into DEMO_DIR/city)",
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = parse_with_demo(build_parser(), argv, DEMO_DEFAULTS)
    if isinstance(args.data_path, list) and len(args.data_path) == 1:
        args.data_path = args.data_path[0]  # one root: the published flag's value, as args.json has always held it
    args.ckpt_prefix = default_ckpt_prefix(args)
    return args


def training_step(
    batch: PretrainBatch | RawBatch,
    img_model: torch.nn.Module,
    poi_model: torch.nn.Module,
    args: argparse.Namespace,
    device: torch.device,
    augment: GPUAugment | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
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
    # bool [B], read before the graphs move (PyG moves them in place): a CPU mask costs the loss no device sync
    keep = batch.has_pois if args.empty_poi_tiles == "exclude" else None
    g = batch.graphs.to(device, non_blocking=True)
    with autocast(device, args.precision):
        z1, z2 = img_model(v1), img_model(v2)  # [B, P] each
    # The POI encoder is tiny next to the ResNet and its LSTM has no CPU bf16 kernel: always fp32.
    zp = poi_model(g.x, g.edge_index, g.batch, g.num_graphs, getattr(g, "edge_weight", None))  # [B, P]
    # Both terms use view 1's image embedding, as published. In fp32 (the loss casts), with the
    # negatives of all processes under torchrun (plain nt_xent in a single process). An empty POI graph
    # embeds to one shared vector: by default its tile is left out of the image–POI term.
    loss_inter = nt_xent_gathered(z1, zp, args.temperature, keep)
    loss_intra = nt_xent_gathered(z1, z2, args.temperature)
    loss = (1 - args.img_lmd) * loss_inter + args.img_lmd * loss_intra
    return loss, loss_inter, loss_intra, z1


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    info, device = init_from_env(resolve_device(args.device))
    if args.channels_last is None:  # the default: where it is faster (utils/speed.py)
        args.channels_last = default_channels_last(device)
    if args.deterministic is None:  # the default: on for CPU runs (utils/reproducibility.py)
        args.deterministic = device.type == "cpu"
    run = None
    try:
        with write_advice("another --model_path", "continue with the same command plus --resume"):
            if args.deterministic:
                enable_determinism()  # before CUDA is first used
            run = claim_run_folder(args, info)  # this run's folder, locked; nothing written there before
            if args.demo:
                make_demo_city(args, info)
            dataset = prepare_data(args, info)  # pre-scan of every file; None after --check_data
            if dataset is not None:
                check_poi_tiles(args, dataset, info)
                trainer = Pretrainer(args, dataset, info, device, training_step, run if info.is_main else None)
                trainer.resume(args.resume)
                trainer.fit()
    finally:
        if run is not None:
            run.release()
        cleanup()


def check_poi_tiles(args: argparse.Namespace, dataset: torch.utils.data.Dataset, info: DistInfo) -> None:
    """Before training: refuse an image–POI term without a single POI, and say so when most tiles have none.

    ``dataset.without_pois``: the tiles without POIs, counted by the pre-scan or the pack (None: not counted).
    """
    n, empty = len(dataset), getattr(dataset, "without_pois", None)
    if empty is None or args.img_lmd >= 1.0 or not empty:
        return
    if empty == n:
        raise UserError(
            f"no tile of {args.data_path} has a POI, so the image–POI term (weight 1 - λ = {1 - args.img_lmd:g}) "
            "has nothing to learn from; pass --img_lmd 1 to pretrain on the images alone, or POI files made "
            "by prepare_pois.py"
        )
    if info.is_main and args.img_lmd == 0.0 and args.empty_poi_tiles == "exclude":
        # No image–image term either: these tiles give the encoder nothing (measured on the synthetic city,
        # benchmarks/RESULTS.md "Tiles without POIs": population R² lower on every seed than with include).
        print(
            f"{empty} of {n} tiles have no POI: with --img_lmd 0 they take no part in training at all; "
            "--empty_poi_tiles include trains on them with the one empty-graph embedding (published behaviour)",
            flush=True,
        )
    elif info.is_main and empty > n / 2:
        if args.empty_poi_tiles == "exclude":
            print(
                f"{empty} of {n} tiles have no POI: they take part in the image–image term only (--empty_poi_tiles)",
                flush=True,
            )
        else:
            print(
                f"{empty} of {n} tiles have no POI: with --empty_poi_tiles include they all enter the image–POI "
                "term with one and the same empty-graph embedding (published behaviour)",
                flush=True,
            )


def make_demo_city(args: argparse.Namespace, info: DistInfo) -> None:
    """``--demo``: the synthetic city in DEMO_DIR/city, written once by the main process; under torchrun the
    others wait for it in :meth:`SharedFailure.share`, which also ends them cleanly if the writer failed."""
    failure = SharedFailure()
    if info.is_main:  # one writer (and one banner); the other processes wait for the city
        print(
            f"demo: synthetic city of {args.demo_tiles} tiles ({DEMO_CITY['tile_size']} px) in {args.data_path}; "
            f"{args.resnet}, {args.img_size} px crops, batch {args.batch_size}, {args.total_epoch} epochs, lr {args.lr:g} "
            f"(not the published configuration: sized for a CPU)",
            flush=True,
        )
        with failure.hold():
            try:
                ensure_city(args.data_path, n_tiles=args.demo_tiles, **DEMO_CITY)
            except FileExistsError as exc:  # a folder of the user's own where the demo city would go
                raise UserError(
                    f"{args.data_path} exists and is not a synthetic city, so the demo will not write over it; "
                    "pass another --demo_dir"
                ) from exc
    failure.share()


if __name__ == "__main__":
    run_main(main)
