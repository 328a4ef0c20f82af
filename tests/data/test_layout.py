"""Folder layouts as values, the one function that picks the pretraining data set, and what a folder
without the asked target says."""

from __future__ import annotations

import argparse

import pytest

from data.datasets import build_pretrain_dataset, collate_for
from data.layout import (
    PREPARE_SUMMARY,
    PUBLISHED_PRETRAIN_DIRS,
    DownstreamLayout,
    PretrainLayout,
    add_layout_flags,
    available_targets,
    check_target,
    is_prepared_folder,
    resolve_list,
    tensor_name,
)
from data.pack import PackedPretrainDataset, pack
from data.pretrain import PretrainDataset, collate_pretrain
from data.raw import RawPretrainDataset, collate_raw
from tests.conftest import make_layout
from utils.errors import UserError


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


def test_a_missing_target_names_those_the_folder_has(tmp_path):
    root = make_layout(tmp_path / "d", n_tiles=2, size=8)  # pop1km/ and the published lists
    (root / "train-wuhan.txt").write_text("t000.png\n")
    (root / "val-wuhan.txt").write_text("t001.png\n")
    (root / "gdp1km").mkdir()
    (root / "gdp1km" / "t000.txt").write_text("1\n")
    (root / "models").mkdir()  # a run folder holds no .txt: not a target
    (root / "models" / "mmgr_img_1.tar").write_bytes(b"x")
    assert available_targets(root) == ["gdp1km", "pop1km"]
    assert DownstreamLayout.find(root, "gdp1km").targets == root / "gdp1km"
    with pytest.raises(
        UserError, match=r"has no target 'pop' \(no folder .*\); its targets are gdp1km, pop1km: pass one"
    ):
        DownstreamLayout.find(root, "pop")
    with pytest.raises(UserError, match=r"its targets are gdp1km, pop1km: pass one with --probe"):
        check_target(root, "pop", "--probe")


def test_a_prepared_folder_without_targets_says_so(tmp_path):
    root = tmp_path / "city"
    (root / "sub_shanghai_img").mkdir(parents=True)
    (root / PREPARE_SUMMARY).write_text("{}")
    assert is_prepared_folder(root) and available_targets(root) == []
    why = r"city was prepared by prepare_pois\.py without --target, so it has no target and no train/val lists"
    with pytest.raises(UserError, match=rf"has no target 'pop1km': .*{why}; prepare it again with --target"):
        DownstreamLayout.find(root, "pop1km")
    with pytest.raises(UserError, match=rf"has no train list: .*{why}"):  # what embed.py --probe meets first
        resolve_list(root, None, "train")
    (root / PREPARE_SUMMARY).unlink()  # not prepared here: the published advice stays
    with pytest.raises(UserError, match=r"holds neither train-wuhan\.txt nor train\.txt; write the train list"):
        resolve_list(root, None, "train")
