"""data/scan.py: the pre-scan finds every bad file, one sentence each; converted modes and zero-POI tiles are fine;
the scan cache (data/scan_cache.py) skips unchanged good tiles and gives the same report."""

import json
import os
import shutil
import time

import numpy as np
import pytest
import torch
from PIL import Image

import mmgr
from data import scan
from data.layout import PretrainLayout
from data.scan import apply_bad_samples_policy, scan_pretrain
from tests.conftest import ROOT, make_layout, run_script
from utils.errors import UserError


def _fill(path, value):
    t = torch.load(path, weights_only=True)
    torch.save(torch.full_like(t, value), path)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _png(path, arr, mode=None):
    Image.fromarray(arr, mode=mode).save(path)


BREAKAGES = {
    "image without POI files": (
        lambda r: (r / "sub_shanghai_emb" / "t002.tensor").unlink(),
        "t002.png has no POI file",
    ),
    "POI files without image": (
        lambda r: torch.save(torch.zeros(1, 8), r / "sub_shanghai_emb" / "extra.tensor"),
        "extra.tensor has no image tile",
    ),
    "truncated PNG": (lambda r: _truncate(r / "sub_shanghai_img" / "t003.png"), "t003.png is a damaged image"),
    "not an image": (
        lambda r: (r / "sub_shanghai_img" / "t004.png").write_text("<html>not a tile</html>"),
        "t004.png is not an image",
    ),
    "embedding rank": (
        lambda r: torch.save(torch.zeros(8), r / "sub_shanghai_emb" / "t006.tensor"),
        "t006.tensor should hold a rank-2",
    ),
    "embedding width": (
        lambda r: torch.save(torch.zeros(3, 5), r / "sub_shanghai_emb" / "t006.tensor"),
        "t006.tensor has embeddings of width 5",
    ),
    "embedding NaN": (
        lambda r: _fill(r / "sub_shanghai_emb" / "t007.tensor", float("nan")),
        "t007.tensor contains NaN or Inf",
    ),
    "embedding Inf": (
        lambda r: _fill(r / "sub_shanghai_emb" / "t007.tensor", float("inf")),
        "t007.tensor contains NaN or Inf",
    ),
    "edge out of range": (
        lambda r: torch.save(torch.tensor([[0], [99]]), r / "sub_shanghai_edge" / "t008.tensor"),
        "t008.tensor refers to POI nodes outside",
    ),
    "edge shape": (
        lambda r: torch.save(torch.zeros(3, 3, dtype=torch.long), r / "sub_shanghai_edge" / "t008.tensor"),
        r"t008.tensor should hold a [2, n_edge]",
    ),
    "weights length": (
        lambda r: torch.save(torch.ones(1000), r / "sub_shanghai_weight" / "t009.tensor"),
        "t009.tensor has 1000 edge weights",
    ),
    "garbage tensor": (
        lambda r: (r / "sub_shanghai_edge" / "t010.tensor").write_bytes(b"\x00garbage"),
        "t010.tensor is not a readable torch file",
    ),
}


@pytest.mark.parametrize("case", list(BREAKAGES))
@pytest.mark.parametrize("workers", [0])
def test_each_bad_input_found_and_named(tmp_path, case, workers):
    root = make_layout(tmp_path / "d", n_tiles=12)
    breakage, match = BREAKAGES[case]
    breakage(root)
    report = scan_pretrain(root, workers=workers)
    assert len(report.bad) == 1, report.lines()
    assert match in report.bad[0].reason and str(root) in report.bad[0].reason
    assert report.bad[0].reason.count("; ") == 1  # one sentence: what is wrong; the fix
    with pytest.raises(UserError) as err:
        apply_bad_samples_policy(report, "error")
    assert str(err.value) == report.bad[0].reason
    kept = apply_bad_samples_policy(report, "skip")
    assert len(kept) == 12 - len(report.bad_tiles) and not set(kept) & set(report.bad_tiles)


def test_only_the_main_process_prints_the_list(tmp_path, capsys):
    """Under torchrun every process scans the same files: the others decide the same, silently."""
    root = make_layout(tmp_path / "d", n_tiles=6)
    BREAKAGES["truncated PNG"][0](root)
    report = scan_pretrain(root, workers=0)
    capsys.readouterr()
    for policy, check in (("error", False), ("error", True)):
        with pytest.raises(UserError) as quiet:
            apply_bad_samples_policy(report, policy, check_only=check, verbose=False)
        assert capsys.readouterr() == ("", "")
        with pytest.raises(UserError) as loud:
            apply_bad_samples_policy(report, policy, check_only=check)
        assert str(quiet.value) == str(loud.value) and report.bad[0].reason in "".join(capsys.readouterr())
    assert apply_bad_samples_policy(report, "skip", verbose=False) == apply_bad_samples_policy(report, "skip")


def test_all_bad_files_listed_at_once_with_thread_pool(tmp_path, capsys):
    root = make_layout(tmp_path / "d", n_tiles=150, size=8, zero_poi=(0, 5, 140))
    for case in ("image without POI files", "truncated PNG", "embedding width", "edge out of range", "weights length"):
        BREAKAGES[case][0](root)
    _fill(root / "sub_shanghai_emb" / "t130.tensor", float("nan"))  # in another chunk
    serial = scan_pretrain(root, workers=0)
    pooled = scan_pretrain(root, workers=2)
    assert [b.reason for b in pooled.bad] == [b.reason for b in serial.bad]
    assert len(pooled.bad) == 6 and len(pooled.bad_tiles) == 6 and len(pooled.good) == 144
    assert pooled.zero_poi == 3  # zero-POI tiles are not bad
    with pytest.raises(
        UserError, match=r"6 problems in the data \(all listed above.*the first: .*t002.png has no POI file"
    ):
        apply_bad_samples_policy(pooled, "error")
    assert capsys.readouterr().err.count("bad: ") == 6


def test_converted_modes_are_not_bad(tmp_path):
    root = make_layout(tmp_path / "d", n_tiles=6, size=8)
    img = root / "sub_shanghai_img"
    _png(img / "t001.png", np.zeros((8, 8), np.uint8))  # grayscale
    _png(img / "t002.png", np.zeros((8, 8, 4), np.uint8))  # RGBA
    _png(img / "t003.png", (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000))  # 16-bit
    report = scan_pretrain(root, workers=0)
    assert report.bad == [] and len(report.good) == 6


def test_missing_and_empty_directories(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        scan_pretrain(tmp_path / "nope", workers=0)
    root = make_layout(tmp_path / "d", n_tiles=2, size=8)
    for p in (root / "sub_shanghai_img").iterdir():
        p.unlink()
    with pytest.raises(UserError, match="holds no image tiles"):
        scan_pretrain(root, workers=0)
    root = make_layout(tmp_path / "e", n_tiles=2, size=8)
    for p in (root / "sub_shanghai_edge").iterdir():
        p.unlink()
    (root / "sub_shanghai_edge").rmdir()
    with pytest.raises(UserError, match="sub_shanghai_edge does not exist"):
        scan_pretrain(root, workers=0)


# --- the scan cache (data/scan_cache.py) ---------------------------------------------------------


def _age(root, seconds=3600):
    """Date every file back: files modified within the last seconds are never cached (racy mtime)."""
    t = time.time() - seconds
    for p in root.rglob("*"):
        if p.is_file():
            os.utime(p, (t, t))


def _outcome(report):
    return report.good, report.bad_tiles, [(b.path, b.reason) for b in report.bad], report.poi_dim, report.zero_poi


@pytest.fixture
def counted(monkeypatch):
    """Count the tiles whose files the scan reads (image check and POI graph load)."""
    calls = {"image": 0, "graph": 0}

    def count(name, fn):
        def wrapper(*a, **k):
            calls[name] += 1
            return fn(*a, **k)

        return wrapper

    monkeypatch.setattr(scan, "_check_image", count("image", scan._check_image))
    monkeypatch.setattr(scan, "load_graph", count("graph", scan.load_graph))
    return calls


@pytest.fixture
def aged(tmp_path):
    """12 tiles (two with zero POIs), one bad (NaN embeddings), all files an hour old."""
    root = make_layout(tmp_path / "d", n_tiles=12, size=8)
    _fill(root / "sub_shanghai_emb" / "t007.tensor", float("nan"))
    _age(root)
    return root


def test_second_scan_takes_good_tiles_from_cache_and_reads_none(aged, tmp_path, counted):
    cache = tmp_path / "m" / "scan_cache.json"
    uncached = scan_pretrain(aged, workers=0)
    first = scan_pretrain(aged, workers=0, cache=cache)
    assert (first.checked, first.cached) == (12, 0) and cache.is_file()
    counted.update(image=0, graph=0)
    second = scan_pretrain(aged, workers=2, cache=cache)
    assert (second.checked, second.cached) == (1, 11)  # the bad tile is never cached: checked again
    assert counted == {"image": 1, "graph": 1}
    assert _outcome(second) == _outcome(first) == _outcome(uncached)
    assert second.zero_poi == 2 and len(second.bad) == 1 and "t007.tensor contains NaN" in second.bad[0].reason
    assert "1 tiles checked (4 files read), 11 unchanged tiles from the scan cache" in second.summary()
    # Nothing changed: the file is not rewritten.
    mtime = cache.stat().st_mtime_ns
    scan_pretrain(aged, workers=0, cache=cache)
    assert cache.stat().st_mtime_ns == mtime


@pytest.mark.parametrize("change", ["other size", "same size, mtime + 1 ns", "same size, rewritten now"])
def test_poi_file_changed_after_the_scan_is_checked_again(aged, tmp_path, change):
    cache = tmp_path / "scan_cache.json"
    scan_pretrain(aged, workers=0, cache=cache)
    emb = aged / "sub_shanghai_emb" / "t003.tensor"
    before = emb.stat()
    if change == "other size":
        torch.save(torch.zeros(3, 5), emb)
    else:
        _fill(emb, float("inf"))  # same shape and dtype: same byte size
        assert emb.stat().st_size == before.st_size
        if change == "same size, mtime + 1 ns":
            os.utime(emb, ns=(before.st_atime_ns, before.st_mtime_ns + 1))
    report = scan_pretrain(aged, workers=0, cache=cache)
    assert (report.checked, report.cached) == (2, 10)
    assert [b.path.name for b in report.bad] == ["t003.png", "t007.png"]
    assert _outcome(report) == _outcome(scan_pretrain(aged, workers=0))


def test_recently_modified_tiles_are_not_cached(tmp_path):
    root = make_layout(tmp_path / "d", n_tiles=4, size=8)  # written just now
    cache = tmp_path / "scan_cache.json"
    scan_pretrain(root, workers=0, cache=cache)
    assert scan_pretrain(root, workers=0, cache=cache).cached == 0  # could still change within their mtime tick
    _age(root)
    assert scan_pretrain(root, workers=0, cache=cache).cached == 0  # new mtimes: checked, now cached
    assert scan_pretrain(root, workers=0, cache=cache).cached == 4


@pytest.mark.parametrize(
    "damage", ["garbage", "truncated", "empty", "json list", "other format", "lists of other lengths"]
)
def test_unreadable_or_foreign_cache_is_ignored_and_replaced(aged, tmp_path, damage):
    cache = tmp_path / "scan_cache.json"
    first = scan_pretrain(aged, workers=0, cache=cache)
    text = cache.read_text()
    obj = json.loads(text)
    broken = {
        "garbage": b"\x80\x00 not json",
        "truncated": text[: len(text) // 2].encode(),
        "empty": b"",
        "json list": b"[1, 2]",
        "other format": json.dumps({**obj, "format": "something-else"}).encode(),
        "lists of other lengths": json.dumps({**obj, "sig": obj["sig"][:3]}).encode(),
    }[damage]
    cache.write_bytes(broken)
    report = scan_pretrain(aged, workers=0, cache=cache)
    assert (report.checked, report.cached) == (12, 0) and _outcome(report) == _outcome(first)
    assert json.loads(cache.read_text()) == obj  # replaced by a good one
    assert scan_pretrain(aged, workers=0, cache=cache).cached == 11


def test_cache_of_another_layout_or_poi_width_is_ignored(aged, tmp_path):
    cache = tmp_path / "scan_cache.json"
    scan_pretrain(aged, workers=0, cache=cache)
    # Another data root with the very same files (copy2 keeps sizes and mtimes): not this cache's data.
    copy = tmp_path / "copy"
    shutil.copytree(aged, copy)
    saved = cache.read_bytes()
    assert scan_pretrain(copy, workers=0, cache=cache).cached == 0
    # The same root without its weight directory.
    cache.write_bytes(saved)
    shutil.rmtree(copy / "sub_shanghai_weight")
    shutil.copytree(aged / "sub_shanghai_weight", copy / "weights_elsewhere")
    assert scan_pretrain(PretrainLayout(aged, weight_dir="weights_elsewhere"), workers=0, cache=cache).cached == 0
    # Another POI width (the reference every embedding is checked against): signatures alone would match.
    obj = json.loads(saved)
    obj["key"]["poi_dim"] = 16
    cache.write_text(json.dumps(obj))
    assert scan_pretrain(aged, workers=0, cache=cache).cached == 0
    cache.write_bytes(saved)
    assert scan_pretrain(aged, workers=0, cache=cache).cached == 11  # the untouched cache still holds


def test_rescan_and_read_only(aged, tmp_path, counted):
    cache = tmp_path / "scan_cache.json"
    scan_pretrain(aged, workers=0, cache=cache, cache_read_only=True)
    assert not cache.exists()  # the processes other than the main one never write it
    scan_pretrain(aged, workers=0, cache=cache)
    counted.update(image=0, graph=0)
    report = scan_pretrain(aged, workers=0, cache=cache, rescan=True)
    assert (report.checked, report.cached) == (12, 0) and counted == {"image": 12, "graph": 12}
    assert scan_pretrain(aged, workers=0, cache=cache).cached == 11  # rewritten by the rescan, still usable


def test_cache_that_cannot_be_written_is_only_a_warning(aged, tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    report = scan_pretrain(aged, workers=0, cache=tmp_path / "a_file" / "scan_cache.json")
    assert len(report.good) == 11 and "warning: could not write the scan cache" in capsys.readouterr().err


@pytest.mark.slow
def test_check_data_twice_uses_the_cache_in_model_path(aged, tmp_path, capsys):
    model = tmp_path / "run"
    args = ["--data_path", str(aged), "--model_path", str(model), "--check_data", "--workers", "0"]
    # First launch in-process (quicker), the relaunch as a user would: a fresh process reads the cache.
    with pytest.raises(UserError, match="1 problems in 1 tiles"):
        mmgr.main(args)
    first = capsys.readouterr().out
    assert "12 tiles checked (48 files read), 0 unchanged tiles from the scan cache" in first
    assert sorted(p.name for p in model.iterdir()) == [".mmgr.lock", "scan_cache.json"]  # no run file in the folder
    second = run_script([str(ROOT / "mmgr.py"), *args], cwd=tmp_path)
    assert (
        second.returncode == 2
        and "1 tiles checked (4 files read), 11 unchanged tiles from the scan cache" in second.stdout
    )
    assert [line for line in second.stdout.splitlines() if line.startswith("bad: ")] == [
        line for line in first.splitlines() if line.startswith("bad: ")
    ]
    # --rescan reads every tile again.
    with pytest.raises(UserError, match="1 problems in 1 tiles"):
        mmgr.main(args + ["--rescan"])
    assert "12 tiles checked (48 files read), 0 unchanged tiles from the scan cache" in capsys.readouterr().out
