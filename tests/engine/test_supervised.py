"""engine/supervised.py, the one end-to-end trainer: fine-tuning from given weights with a backbone lr of its
own, whole tiles or batched crops, a non-finite loss refused, and res_pop.py --finetune going through it
(per-epoch validation, predictions CSV, a map of every tile)."""

import csv
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import torch

import res_pop
from engine.supervised import EndToEnd, task_for, train_supervised
from engine.tasks import regression_task
from models.image_encoder import ImageEncoder
from tests.conftest import make_layout
from tests.engine.test_downstream import add_tile_index
from utils.errors import UserError

CPU = torch.device("cpu")


def _tiles(n: int = 12, size: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    return images, images.float().mean((1, 2, 3)).unsqueeze(1)


def test_fine_tuning_moves_the_backbone_at_its_own_lr():
    """Crops (augment) or whole tiles: the head always moves, the backbone only when its own lr is not 0."""
    images, y = _tiles()
    torch.manual_seed(0)
    start = ImageEncoder("resnet18", 16)
    conv = start.encoder.conv1.weight.detach().clone()
    moved = {}
    for backbone_lr, augment in ((0.0, True), (1e-3, False)):
        torch.manual_seed(0)
        encoder = ImageEncoder("resnet18", 16)
        encoder.load_state_dict(start.state_dict())
        task = regression_task().fit(y)
        trainer = EndToEnd(
            encoder, task, images, y, img_size=16, batch_size=4, epochs=1, lr=1e-2, backbone_lr=backbone_lr, seed=0,
            device=CPU, augment=augment,
        )  # fmt: skip
        assert [g["base_lr"] for g in trainer.opt.param_groups] == [1e-2, backbone_lr]
        head = [p.detach().clone() for p in trainer.model.encoder.fc.parameters()]
        trainer.train_epoch(0)
        assert all(
            not torch.equal(a, b.detach()) for a, b in zip(head, trainer.model.encoder.fc.parameters(), strict=True)
        )
        moved[backbone_lr] = not torch.equal(trainer.model.encoder.conv1.weight.detach(), conv)
        assert trainer.predict(images[:5]).shape == (5, 1)
    assert moved == {0.0: False, 1e-3: True}


def test_train_supervised_is_seeded_and_refuses_a_non_finite_loss():
    images, y = _tiles()
    kw = dict(resnet="resnet18", img_size=16, batch_size=4, epochs=1, lr=1e-3, device=CPU, log=False)
    a = train_supervised(images[:8], y[:8], images[8:], y[8:].double().numpy(), task_for(y, "pop1km"), seed=0, **kw)
    b = train_supervised(images[:8], y[:8], images[8:], y[8:].double().numpy(), task_for(y, "pop1km"), seed=0, **kw)
    c = train_supervised(images[:8], y[:8], images[8:], y[8:].double().numpy(), task_for(y, "pop1km"), seed=1, **kw)
    assert np.array_equal(a["predictions"], b["predictions"]) and not np.array_equal(a["predictions"], c["predictions"])
    bad = y[:8].clone()
    bad[3] = float("nan")
    with pytest.raises(UserError, match="the training loss became nan at epoch 1; lower --lr"):
        train_supervised(images[:8], bad, images[8:], y[8:].double().numpy(), task_for(y, "pop1km"), seed=0, **kw)


def test_res_pop_finetune_trains_through_the_shared_trainer_and_maps_every_tile(tmp_path, monkeypatch, capsys):
    data = make_layout(tmp_path / "data")
    add_tile_index(data)
    torch.manual_seed(0)
    ckpt = tmp_path / "wuhan_img_1.tar"
    torch.save(ImageEncoder("resnet18", 16).state_dict(), ckpt)
    monkeypatch.chdir(tmp_path)
    epochs = []
    real = EndToEnd.train_epoch
    monkeypatch.setattr(EndToEnd, "train_epoch", lambda self, e: epochs.append(e) or real(self, e))
    flags = ["--batch_size", "4", "--img_size", "16", "--workers", "0", "--total_epoch", "2", "--eval_from", "1"]
    out = res_pop.main(["--data_path", str(data), "--ckpt", str(ckpt), "--device", "cpu", *flags, "--finetune"])
    text = capsys.readouterr().out
    assert epochs == [0, 1]  # every epoch through engine.supervised.EndToEnd
    assert "8 training and 4 validation tiles; fine-tuning the whole encoder" in text
    assert [h["epoch"] for h in out["results"][0].history] == [1, 2] and text.count("|  val MAE") == 2
    assert "best epoch" in text and "last epoch 2" in text
    rows = list(csv.DictReader(open("train-records/res_pop_pred.csv")))
    frame = gpd.read_file(Path("train-records") / "res_pop_map.gpkg")
    assert len(frame) == 12 and list(frame["split"]) == ["train"] * 8 + ["val"] * 4
    val_map = frame["prediction"].to_numpy()[8:]
    assert val_map == pytest.approx([float(r["pred_value"]) for r in rows], rel=1e-4)  # the same final model
