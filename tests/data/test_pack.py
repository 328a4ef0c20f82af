"""Packed shards and the decode-only dataset: item for item equal to the folder dataset."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from data.pack import PackedPretrainDataset, is_packed, pack
from data.pretrain import PretrainDataset, open_rgb
from data.raw import RawPretrainDataset, collate_raw, decode_rgb
from data.transforms import pretrain_transform
from tests.conftest import ROOT, make_layout, run_script
from utils.errors import EXIT_BUSY, UserError
from utils.runlock import FolderLock


def _same_graph(a, b):
    assert torch.equal(a.x, b.x) and a.x.dtype == b.x.dtype == torch.float32
    assert torch.equal(a.edge_index, b.edge_index) and a.edge_index.dtype == torch.long
    wa, wb = getattr(a, "edge_weight", None), getattr(b, "edge_weight", None)
    assert (wa is None) == (wb is None) and (wa is None or torch.equal(wa, wb))
    assert a.num_nodes == b.num_nodes


@pytest.mark.parametrize("weights,shard_size", [(True, 5), (False, 64)])
def test_pack_equals_folder_item_for_item(tmp_path, weights, shard_size):
    data = make_layout(tmp_path / "d", n_tiles=11, weights=weights, zero_poi=(0, 5, 10))  # last tile: no POI
    meta = pack(data, tmp_path / "p", shard_size=shard_size, progress=False)
    assert is_packed(tmp_path / "p") and meta["n_tiles"] == 11 and len(meta["shards"]) == -(-11 // shard_size)
    folder, raw = PretrainDataset(data, pretrain_transform(16)), RawPretrainDataset(data)
    packed_aug, packed_raw = (
        PackedPretrainDataset(tmp_path / "p", pretrain_transform(16)),
        PackedPretrainDataset(tmp_path / "p"),
    )
    assert len(packed_raw) == len(folder) and packed_raw.poi_dim == folder.poi_dim
    assert packed_raw.names == [p.name for p in folder.images]
    assert packed_raw.without_pois == 3  # counted from the shards' node pointers
    assert collate_raw([packed_raw[i] for i in (4, 5, 6, 10)]).has_pois.tolist() == [True, False, True, False]
    for i in range(len(folder)):
        img, g = packed_raw[i]
        ref_img, ref_g = raw[i]
        assert img.dtype == torch.uint8 and torch.equal(img, ref_img)
        _same_graph(g, ref_g)
        _same_graph(g, folder.graph(i))
        # The augmented items too: same RNG state -> the same two views.
        torch.manual_seed(i)
        a = packed_aug[i]
        torch.manual_seed(i)
        b = folder[i]
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_packed_dataset_in_a_worker_loader(tmp_path):
    data = make_layout(tmp_path / "d", n_tiles=6)
    pack(data, tmp_path / "p", shard_size=4, progress=False)
    ds = PackedPretrainDataset(tmp_path / "p")
    ds.image(0)  # opened maps in the parent must not travel to workers
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=1, collate_fn=collate_raw)
    batches = list(loader)
    assert [b.images.shape for b in batches] == [(3, 3, 32, 32)] * 2
    assert torch.equal(batches[1].images[2], RawPretrainDataset(data)[5][0])
    assert batches[0].graphs.num_graphs == 3


def test_decode_rgb_equals_pil(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    files = {
        "rgb.png": Image.fromarray(rgb),
        "l.png": Image.fromarray(rgb[..., 0]),
        "rgba.png": Image.fromarray(np.dstack([rgb, rgb[..., :1]])),
        "p.png": Image.fromarray(rgb).convert("P"),
        "g16.png": Image.fromarray(np.arange(63, dtype=np.uint16).reshape(9, 7) * 1000),
        "t.tif": Image.fromarray(rgb),
    }
    for name, im in files.items():
        im.save(tmp_path / name)
        t = decode_rgb(tmp_path / name)
        ref = torch.from_numpy(np.array(open_rgb(tmp_path / name))).permute(2, 0, 1)
        assert t.dtype == torch.uint8 and t.shape == (3, 9, 7) and torch.equal(t, ref), name
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(UserError, match="bad.png"):
        decode_rgb(tmp_path / "bad.png")


def test_pack_user_errors(tmp_path):
    data = make_layout(tmp_path / "d", n_tiles=4)
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(data / "sub_shanghai_img" / "t002.png")
    with pytest.raises(UserError, match="t002.png.*one size"):
        pack(data, tmp_path / "p", progress=False)
    assert not is_packed(tmp_path / "p")
    with pytest.raises(UserError, match="python -m data.pack"):
        PackedPretrainDataset(tmp_path / "p")
    with pytest.raises(UserError, match="one size"):
        collate_raw([RawPretrainDataset(data)[i] for i in (1, 2)])


@pytest.mark.slow
def test_pack_cli(tmp_path):
    data = make_layout(tmp_path / "d", n_tiles=5)
    r = run_script(
        ["-m", "data.pack", "--data_path", str(data), "--out", str(tmp_path / "p"), "--shard_size", "2"], cwd=ROOT
    )
    assert r.returncode == 0, r.stderr
    assert "packed 5 tiles of 32x32 px into 3 shard(s)" in r.stdout
    r = run_script(["-m", "data.pack", "--data_path", str(tmp_path / "nope"), "--out", str(tmp_path / "q")], cwd=ROOT)
    assert r.returncode == 2 and "Traceback" not in r.stderr


@pytest.mark.slow
def test_pack_refuses_an_output_folder_held_by_another_writer(tmp_path):
    data = make_layout(tmp_path / "d", n_tiles=4, size=8)
    with FolderLock(tmp_path / "p", purpose="packing", flag="--out"):
        r = run_script(["-m", "data.pack", "--data_path", str(data), "--out", str(tmp_path / "p")], cwd=ROOT)
    assert r.returncode == EXIT_BUSY and "Traceback" not in r.stderr
    assert f"pid {os.getpid()}" in r.stderr and "--out" in r.stderr
    assert not is_packed(tmp_path / "p")
