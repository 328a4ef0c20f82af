"""Packed pretraining data: a few memory-mapped shards instead of three files per tile.

    python -m data.pack --data_path DATA --out DATA_packed [--shard_size 65536] [--workers 4]
    python mmgr.py --data_path DATA_packed ...          # recognised by its mmgr_pack.json

A million-tile data set in the published layout is three million small files: every epoch opens
each of them, which is slow on network and parallel file systems. The packed form holds the same
data in ``ceil(n / shard_size)`` shards of plain ``.npy`` arrays, read through ``numpy`` memory maps
(the OS page cache does the rest), so an item costs two slices and no file open.

Layout of ``--out`` (every array little-endian ``.npy``; shard ``k`` has ``n_k`` tiles):

* ``mmgr_pack.json`` — format tag, tile count, tile shape ``[3, H, W]``, POI width, whether edge
  weights exist, and the shards' tile counts. Written last: its presence marks a complete pack.
* ``names.txt`` — the tiles' image file names in dataset order (the folder dataset's sorted order).
* ``shard_K.images.npy`` uint8 ``[n_k, 3, H, W]`` — decoded RGB tiles (tiles must share one size).
* ``shard_K.node_ptr.npy`` int64 ``[n_k + 1]`` and ``shard_K.x.npy`` float32 ``[N_k, F]`` — CSR rows:
  the POIs of tile ``t`` are ``x[node_ptr[t]:node_ptr[t + 1]]``.
* ``shard_K.edge_ptr.npy`` int64 ``[n_k + 1]`` and ``shard_K.edges.npy`` int64 ``[2, E_k]`` — the
  tile's edges (node indices local to the tile) are ``edges[:, edge_ptr[t]:edge_ptr[t + 1]]``.
* ``shard_K.weights.npy`` float32 ``[E_k]`` — edge weights, when the source had them.
* ``category_embeddings.csv`` — the source's category table, when it had one (so that a run on
  several roots can check that they share one vocabulary, data/roots.py).

Packing validates every tile's files as the folder dataset does, so training from a pack never
meets a malformed item. Items read back are equal, element for element, to the folder dataset's.
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torch_geometric.data import Data
from tqdm import tqdm

from data.layout import CATEGORY_TABLE, PretrainLayout, add_layout_flags
from data.raw import RawPretrainDataset
from utils.errors import UserError, run_main
from utils.fileio import atomic_path, atomic_save_npy, atomic_write_text, write_advice
from utils.runlock import FolderLock

__all__ = ["PACK_META", "is_packed", "pack", "PackedPretrainDataset", "main"]

PACK_META = "mmgr_pack.json"
FORMAT = "mmgr-packed-1"


def is_packed(root: str | Path) -> bool:
    """True if ``root`` holds a complete pack (its ``mmgr_pack.json``)."""
    return (Path(root) / PACK_META).is_file()


def pack(
    layout: PretrainLayout | str | Path,
    out: str | Path,
    shard_size: int = 65536,
    workers: int = 0,
    progress: bool = True,
) -> dict:
    """Pack a pretraining layout (or the published one under a root) into shards in ``out``; returns the metadata."""
    if shard_size < 1:
        raise UserError(f"--shard_size must be at least 1, got {shard_size}")
    layout = PretrainLayout.of(layout)
    src = RawPretrainDataset(layout)
    out = Path(out)
    # One writer per output folder (docs/run_folder.md); a failed write names --out.
    with FolderLock(out, purpose="packing", flag="--out"), write_advice("another --out", "run the command again"):
        if is_packed(out):
            (out / PACK_META).unlink()  # re-packing: the old pack is incomplete until the new metadata lands
        n = len(src)
        # Workers decode in parallel; batch_size=None keeps items whole and in order.
        loader = DataLoader(src, batch_size=None, shuffle=False, num_workers=workers)
        items = iter(tqdm(loader, total=n, desc="packing", disable=not progress or None, mininterval=1.0))
        first_img, first_graph = next(items)
        shape = tuple(first_img.shape)
        items = itertools.chain([(first_img, first_graph)], items)
        shards = []
        for k, start in enumerate(range(0, n, shard_size)):
            m = min(shard_size, n - start)
            shards.append({"name": _write_shard(out, f"shard_{k:05d}", items, src, start, m, shape), "n": m})
        atomic_write_text("".join(p.name + "\n" for p in src.images), out / "names.txt", durable=False)
        if (layout.root / CATEGORY_TABLE).is_file():  # the vocabulary travels with the tensors (data/roots.py)
            atomic_write_text((layout.root / CATEGORY_TABLE).read_text(encoding="utf-8"), out / CATEGORY_TABLE)
        elif (out / CATEGORY_TABLE).is_file():  # an earlier pack's, not this source's
            (out / CATEGORY_TABLE).unlink()
        meta = {
            "format": FORMAT,
            "n_tiles": n,
            "tile_shape": list(shape),
            "poi_dim": src.poi_dim,
            "has_weights": src.weight_dir is not None,
            "shards": shards,
            "source": str(layout.root.resolve()),
        }
        atomic_write_text(json.dumps(meta, indent=2) + "\n", out / PACK_META)  # last: marks the pack complete
    return meta


def _write_shard(
    out: Path,
    name: str,
    items: Iterator[tuple[torch.Tensor, Data]],
    src: RawPretrainDataset,
    start: int,
    m: int,
    shape: tuple[int, ...],
) -> str:
    """Write the next ``m`` items of ``items`` (tiles ``start..start+m`` of ``src``) as shard ``name``."""
    xs, eis, ws = [], [], []
    node_ptr, edge_ptr = np.zeros(m + 1, np.int64), np.zeros(m + 1, np.int64)
    with atomic_path(out / f"{name}.images.npy", durable=False) as tmp:
        images = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(m, *shape))
        for t in range(m):
            img, g = next(items)
            if tuple(img.shape) != shape:
                raise UserError(
                    f"{src.images[start + t]} is {tuple(img.shape)[1:]} px but the first tile is {shape[1:]}; "
                    "a pack holds tiles of one size: resize the tiles or train from the folder layout"
                )
            images[t] = img.numpy()
            xs.append(g.x.numpy().astype(np.float32))
            eis.append(g.edge_index.numpy().astype(np.int64))
            if src.weight_dir is not None:
                ws.append(g.edge_weight.numpy().astype(np.float32))
            node_ptr[t + 1] = node_ptr[t] + g.x.shape[0]
            edge_ptr[t + 1] = edge_ptr[t] + g.edge_index.shape[1]
        images.flush()
        del images
    atomic_save_npy(np.concatenate(xs, axis=0).reshape(-1, src.poi_dim), out / f"{name}.x.npy")
    atomic_save_npy(node_ptr, out / f"{name}.node_ptr.npy")
    atomic_save_npy(np.concatenate(eis, axis=1).reshape(2, -1), out / f"{name}.edges.npy")
    atomic_save_npy(edge_ptr, out / f"{name}.edge_ptr.npy")
    if src.weight_dir is not None:
        atomic_save_npy(np.concatenate(ws), out / f"{name}.weights.npy")
    return name


class PackedPretrainDataset(Dataset):
    """A pack written by :func:`pack`, item for item equal to the folder dataset it came from.

    Args:
        root: the pack directory (holds ``mmgr_pack.json``).
        transform: None -> items ``(uint8 [3, H, W], graph)`` like :class:`data.raw.RawPretrainDataset`;
            a PIL transform -> ``(view1, view2, graph)`` like :class:`data.pretrain.PretrainDataset`.

    The memory maps are opened lazily in each process (DataLoader workers included) and never pickled.
    """

    def __init__(self, root: str | Path, transform: Callable | None = None):
        self.root = Path(root)
        meta_path = self.root / PACK_META
        if not meta_path.is_file():
            raise UserError(
                f"{meta_path} does not exist; create the pack with `python -m data.pack --data_path DATA --out {self.root}`"
            )
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError:
            raise UserError(f"{meta_path} is not valid JSON; re-create the pack with python -m data.pack") from None
        if meta.get("format") != FORMAT:
            raise UserError(f"{meta_path} is not an {FORMAT} pack; re-create it with python -m data.pack")
        self.meta = meta
        self.transform = transform
        self.poi_dim: int = int(meta["poi_dim"])
        self.names = (self.root / "names.txt").read_text().splitlines()
        counts = [s["n"] for s in meta["shards"]]
        self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)  # [n_shards + 1]
        if len(self.names) != meta["n_tiles"] or self._starts[-1] != meta["n_tiles"]:
            raise UserError(
                f"{self.root} is an incomplete pack (names.txt or shards disagree with {PACK_META}); re-create it"
            )
        self._open: dict[int, dict[str, np.ndarray]] = {}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_open"] = {}  # each worker maps the files itself (pickling a memmap would copy it)
        return state

    def __len__(self) -> int:
        return int(self.meta["n_tiles"])

    def _shard(self, k: int) -> dict[str, np.ndarray]:
        if k not in self._open:
            name = self.meta["shards"][k]["name"]
            keys = ["images", "x", "node_ptr", "edges", "edge_ptr"] + (["weights"] if self.meta["has_weights"] else [])
            try:
                self._open[k] = {key: np.load(self.root / f"{name}.{key}.npy", mmap_mode="r") for key in keys}
            except (OSError, ValueError) as exc:
                raise UserError(
                    f"{self.root} has a missing or unreadable shard file of {name} ({exc}); re-create the pack"
                ) from None
        return self._open[k]

    @property
    def without_pois(self) -> int:
        """How many tiles of the pack have no POI (read from the shards' node pointers: 8 bytes per tile)."""
        if not hasattr(self, "_without_pois"):
            n = 0
            for k in range(len(self.meta["shards"])):
                ptr = np.asarray(self._shard(k)["node_ptr"])
                n += int((ptr[1:] == ptr[:-1]).sum())
            self._without_pois = n
        return self._without_pois

    def graph(self, index: int) -> Data:
        """The POI graph of tile ``index``: ``Data(x [n_poi, F], edge_index [2, n_edge][, edge_weight])``."""
        k = int(np.searchsorted(self._starts, index, side="right")) - 1
        s, t = self._shard(k), index - int(self._starts[k])
        a, b = int(s["node_ptr"][t]), int(s["node_ptr"][t + 1])
        e0, e1 = int(s["edge_ptr"][t]), int(s["edge_ptr"][t + 1])
        data = Data(
            x=torch.from_numpy(np.array(s["x"][a:b])),
            edge_index=torch.from_numpy(np.array(s["edges"][:, e0:e1])),
            num_nodes=b - a,
        )
        if "weights" in s:
            data.edge_weight = torch.from_numpy(np.array(s["weights"][e0:e1]))
        return data

    def image(self, index: int) -> torch.Tensor:
        """Tile ``index`` as ``uint8 [3, H, W]``."""
        k = int(np.searchsorted(self._starts, index, side="right")) - 1
        return torch.from_numpy(np.array(self._shard(k)["images"][index - int(self._starts[k])]))

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(index)
        img, g = self.image(index), self.graph(index)
        if self.transform is None:
            return img, g
        pil = Image.fromarray(img.permute(1, 2, 0).numpy())
        return self.transform(pil), self.transform(pil), g


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Pack the MMGR pretraining folder layout into memory-mapped shards.")
    p.add_argument(
        "--data_path", required=True, help="data root in the published layout (sub_shanghai_img/, ..._emb/, ..._edge/)"
    )
    p.add_argument("--out", required=True, help="output directory of the pack (pass it as mmgr.py --data_path)")
    p.add_argument(
        "--shard_size", type=int, default=65536, help="tiles per shard (default 65536: ~13 GB of 256 px tiles)"
    )
    p.add_argument("--workers", type=int, default=0, help="decoding worker processes (default 0: in the main process)")
    add_layout_flags(p)
    args = p.parse_args(argv)
    meta = pack(PretrainLayout.from_args(args), args.out, args.shard_size, args.workers)
    print(
        f"packed {meta['n_tiles']} tiles of {meta['tile_shape'][1]}x{meta['tile_shape'][2]} px into "
        f"{len(meta['shards'])} shard(s) in {args.out}",
        flush=True,
    )


if __name__ == "__main__":
    run_main(main)
