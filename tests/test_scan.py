"""data/scan.py: the pre-scan finds every bad file, one sentence each; converted modes and zero-POI tiles are fine."""

import numpy as np
import pytest
import torch
from PIL import Image

from data.scan import apply_bad_samples_policy, scan_pretrain
from tests.conftest import make_layout
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
    "image without POI files": (lambda r: (r / "sub_shanghai_emb" / "t002.tensor").unlink(), "t002.png has no POI file"),
    "POI files without image": (lambda r: torch.save(torch.zeros(1, 8), r / "sub_shanghai_emb" / "extra.tensor"),
                                "extra.tensor has no image tile"),
    "truncated PNG": (lambda r: _truncate(r / "sub_shanghai_img" / "t003.png"),
                      "t003.png is a damaged image"),
    "not an image": (lambda r: (r / "sub_shanghai_img" / "t004.png").write_text("<html>not a tile</html>"), "t004.png is not an image"),
    "embedding rank": (lambda r: torch.save(torch.zeros(8), r / "sub_shanghai_emb" / "t006.tensor"), "t006.tensor should hold a rank-2"),
    "embedding width": (lambda r: torch.save(torch.zeros(3, 5), r / "sub_shanghai_emb" / "t006.tensor"), "t006.tensor has embeddings of width 5"),
    "embedding NaN": (lambda r: _fill(r / "sub_shanghai_emb" / "t007.tensor", float("nan")), "t007.tensor contains NaN or Inf"),
    "embedding Inf": (lambda r: _fill(r / "sub_shanghai_emb" / "t007.tensor", float("inf")), "t007.tensor contains NaN or Inf"),
    "edge out of range": (lambda r: torch.save(torch.tensor([[0], [99]]), r / "sub_shanghai_edge" / "t008.tensor"), "t008.tensor refers to POI nodes outside"),
    "edge shape": (lambda r: torch.save(torch.zeros(3, 3, dtype=torch.long), r / "sub_shanghai_edge" / "t008.tensor"), r"t008.tensor should hold a [2, n_edge]"),
    "weights length": (lambda r: torch.save(torch.ones(1000), r / "sub_shanghai_weight" / "t009.tensor"), "t009.tensor has 1000 edge weights"),
    "garbage tensor": (lambda r: (r / "sub_shanghai_edge" / "t010.tensor").write_bytes(b"\x00garbage"), "t010.tensor is not a readable torch file"),
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
    with pytest.raises(UserError, match=r"6 problems in the data \(all listed above.*the first: .*t002.png has no POI file"):
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
