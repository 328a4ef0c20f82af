"""Image encoder: published head and key layout, every ResNet depth, depth recovered from a state dict."""

import pytest
import torch
import torchvision

from models.image_encoder import RESNETS, ImageEncoder, infer_resnet


def test_published_key_layout_and_head():
    m = ImageEncoder("resnet50", 128)
    keys = list(m.state_dict())
    assert keys[0] == "encoder.conv1.weight"
    for k in ("encoder.fc.0.weight", "encoder.fc.0.bias", "encoder.fc.2.weight", "encoder.fc.2.bias"):
        assert k in keys
    assert all(k.startswith("encoder.") for k in keys)
    fc = m.encoder.fc
    assert fc[0].in_features == fc[0].out_features == 2048 and fc[2].out_features == 128
    assert isinstance(fc[1], torch.nn.ReLU)
    assert torch.all(fc[2].bias == 0) and abs(fc[2].weight.std().item() - 0.01) < 0.001


@pytest.mark.parametrize("name", RESNETS)
def test_infer_every_depth(name):
    with torch.device("meta"):
        m = ImageEncoder(name, 64)
    assert infer_resnet(m.state_dict()) == (name, 64)


def test_forward_shapes_and_features():
    torch.manual_seed(0)
    m = ImageEncoder("resnet18", 32).eval()
    x = torch.randn(2, 3, 32, 32)
    assert m(x).shape == (2, 32)
    f = m.features(x)
    assert f.shape == (2, 512)
    # features() is the input of fc: applying fc to it gives forward().
    assert torch.allclose(m.encoder.fc(f), m(x), atol=1e-5)


def test_local_backbone_weights(tmp_path):
    torch.manual_seed(0)
    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    m = ImageEncoder("resnet18", 16, backbone_weights=str(path))
    assert torch.equal(m.encoder.conv1.weight, ref.conv1.weight)
    with pytest.raises(ValueError, match="not a torchvision resnet50"):
        ImageEncoder("resnet50", 16, backbone_weights=str(path))


def test_not_an_image_state_dict():
    with pytest.raises(ValueError):
        infer_resnet({"set2set.lstm.weight_ih_l0": torch.zeros(1)})
