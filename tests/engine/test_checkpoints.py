"""Checkpoint names: the default --ckpt_prefix follows the data folder, a resumed run keeps its own."""

import json

import mmgr
from data.layout import PREPARE_SUMMARY
from engine.checkpoints import PREPARED_PREFIX, PUBLISHED_PREFIX


def test_default_prefix_follows_the_data_folder(tmp_path):
    published, prepared = tmp_path / "published", tmp_path / "my_city"
    published.mkdir()
    prepared.mkdir()
    (prepared / PREPARE_SUMMARY).write_text("{}")
    m = str(tmp_path / "m")
    assert (
        mmgr.parse_args(["--data_path", str(published), "--model_path", m]).ckpt_prefix == PUBLISHED_PREFIX == "wuhan"
    )
    assert mmgr.parse_args(["--data_path", str(prepared), "--model_path", m]).ckpt_prefix == PREPARED_PREFIX == "mmgr"
    assert mmgr.parse_args(["--data_path", str(prepared), "--ckpt_prefix", "x"]).ckpt_prefix == "x"
    assert mmgr.parse_args(["--demo", "--demo_dir", str(tmp_path / "demo")]).ckpt_prefix == "wuhan"
    # a run started before this default (its args.json says wuhan) keeps its names when resumed
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "args.json").write_text(json.dumps({"ckpt_prefix": "wuhan"}))
    assert mmgr.parse_args(["--data_path", str(prepared), "--model_path", m, "--resume"]).ckpt_prefix == "wuhan"
    assert mmgr.parse_args(["--data_path", str(prepared), "--model_path", m]).ckpt_prefix == "mmgr"
