"""Data loading of the published layouts: shapes, zero-POI tiles, edge weights, user errors."""

import numpy as np
import pytest
import torch
from PIL import Image

from data.downstream import TileTargetDataset
from data.layout import tensor_name
from data.pretrain import PretrainDataset, collate_pretrain, open_rgb
from data.transforms import eval_transform, pretrain_transform
from tests.conftest import make_layout
from utils.errors import UserError


def test_pretrain_items_and_collate(tiny_data):
    ds = PretrainDataset(tiny_data, pretrain_transform(24))
    assert len(ds) == 12 and ds.poi_dim == 8
    v1, v2, g = ds[0]
    assert v1.shape == v2.shape == (3, 24, 24)
    assert not torch.equal(v1, v2)  # two independent augmentations
    assert g.x.shape == (0, 8) and g.edge_index.shape == (2, 0)  # tile 0 has no POI
    batch = collate_pretrain([ds[i] for i in range(4)])
    assert batch.view1.shape == (4, 3, 24, 24) and batch.graphs.num_graphs == 4
    assert batch.graphs.edge_weight.shape[0] == batch.graphs.edge_index.shape[1]
    # tiles 0 and 5 have no POI (make_layout): the batch says which tiles have any
    assert batch.has_pois.tolist() == [False, True, True, True]
    last = collate_pretrain([ds[i] for i in (4, 5, 0)])
    assert last.has_pois.tolist() == [True, False, False] and last.has_pois.dtype == torch.bool


def test_published_naming_and_order(tiny_data):
    ds = PretrainDataset(tiny_data, pretrain_transform(24))
    assert [p.name for p in ds.images] == sorted(p.name for p in ds.images)
    assert tensor_name(ds.images[3]) == "t003.tensor"
    expected = torch.load(tiny_data / "sub_shanghai_emb" / "t003.tensor", weights_only=True)
    assert torch.equal(ds.graph(3).x, expected)


def test_weights_optional(tmp_path):
    root = make_layout(tmp_path / "d", n_tiles=4, weights=False)
    g = PretrainDataset(root, pretrain_transform(24)).graph(1)
    assert getattr(g, "edge_weight", None) is None


def test_image_modes_converted(tmp_path):
    for mode, arr in (
        ("L", np.zeros((8, 8), np.uint8)),
        ("RGBA", np.zeros((8, 8, 4), np.uint8)),
        ("I;16", np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000),
    ):
        p = tmp_path / f"{mode.replace(';', '')}.png"
        Image.fromarray(arr, mode=mode if mode != "I;16" else None).save(p)
        im = open_rgb(p)
        assert im.mode == "RGB" and im.size == (8, 8)


@pytest.mark.parametrize(
    "breakage,match",
    [
        (lambda r: (r / "sub_shanghai_edge" / "t002.tensor").unlink(), "no POI tensors"),
        (lambda r: torch.save(torch.zeros(3, 5), r / "sub_shanghai_emb" / "t001.tensor"), "width 5"),
        (lambda r: torch.save(torch.tensor([[0], [99]]), r / "sub_shanghai_edge" / "t001.tensor"), "outside"),
        (
            lambda r: torch.save(torch.zeros(3, 3, dtype=torch.long), r / "sub_shanghai_edge" / "t001.tensor"),
            r"\[2, n_edge\]",
        ),
        (lambda r: torch.save(torch.full((2, 8), float("nan")), r / "sub_shanghai_emb" / "t001.tensor"), "NaN"),
        (lambda r: (r / "sub_shanghai_emb" / "t001.tensor").write_bytes(b"garbage"), "not a readable torch file"),
    ],
)
def test_bad_pretrain_files(tiny_data, breakage, match):
    breakage(tiny_data)
    with pytest.raises(UserError, match=match):
        ds = PretrainDataset(tiny_data, pretrain_transform(24))
        for i in range(len(ds)):
            ds.graph(i)


def test_missing_root(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        PretrainDataset(tmp_path / "nope", pretrain_transform(24))


def test_downstream(tiny_data):
    ds = TileTargetDataset(tiny_data, "val-wuhan.txt", eval_transform())
    assert len(ds) == 4 and ds.targets.shape == (4, 1)
    x, y, i = ds[0]
    assert x.shape == (3, 32, 32) and i == 0
    (tiny_data / "pop1km" / "t011.txt").write_text("abc")
    with pytest.raises(UserError, match="does not hold numbers"):
        TileTargetDataset(tiny_data, "val-wuhan.txt", eval_transform())
