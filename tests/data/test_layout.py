"""Folder layouts as values, and the one function that picks the pretraining data set."""

from __future__ import annotations

import argparse

import pytest

from data.datasets import build_pretrain_dataset, collate_for
from data.layout import PUBLISHED_PRETRAIN_DIRS, PretrainLayout, add_layout_flags, tensor_name
from data.pack import PackedPretrainDataset, pack
from data.pretrain import PretrainDataset, collate_pretrain
from data.raw import RawPretrainDataset, collate_raw
from tests.conftest import make_layout


def test_published_defaults_flags_and_paths(tmp_path):
    p = argparse.ArgumentParser()
    add_layout_flags(p)
    args = p.parse_args(["--emb_dir", "e"])
    args.data_path = str(tmp_path)
    layout = PretrainLayout.from_args(args)
    assert layout == PretrainLayout(tmp_path, emb_dir="e")
    assert PretrainLayout.of(str(tmp_path)) == PretrainLayout(tmp_path, **PUBLISHED_PRETRAIN_DIRS)
    assert PretrainLayout.of(layout) is layout
    assert layout.emb == tmp_path / "e" and layout.img == tmp_path / "sub_shanghai_img"
    assert tensor_name("a/b/t001.png") == "t001.tensor"


@pytest.mark.parametrize("weights", [True, False])
def test_poi_files_follow_the_weight_folder(tmp_path, weights):
    layout = PretrainLayout(make_layout(tmp_path / "d", n_tiles=2, size=8, weights=weights))
    emb, edge, w = layout.poi_files("t001.png")
    assert emb == layout.emb / "t001.tensor" and edge == layout.edge / "t001.tensor"
    assert w == (layout.weight / "t001.tensor" if weights else None)


def test_build_pretrain_dataset_for_each_source_and_mode(tmp_path):
    layout = PretrainLayout(make_layout(tmp_path / "d", n_tiles=4, size=8))
    assert type(build_pretrain_dataset(layout, "cpu", 8)) is PretrainDataset
    assert type(build_pretrain_dataset(layout, "gpu", 8)) is RawPretrainDataset
    pack(layout, tmp_path / "p", progress=False)
    packed = PretrainLayout(tmp_path / "p")
    cpu, gpu = build_pretrain_dataset(packed, "cpu", 8), build_pretrain_dataset(packed, "gpu", 8)
    assert isinstance(cpu, PackedPretrainDataset) and cpu.transform is not None and gpu.transform is None
    assert len(cpu[0]) == 3 and len(gpu[0]) == 2  # (view1, view2, graph) / (uint8 tile, graph)
    assert collate_for("cpu") is collate_pretrain and collate_for("gpu") is collate_raw
    with pytest.raises(ValueError):
        build_pretrain_dataset(layout, "tpu", 8)
