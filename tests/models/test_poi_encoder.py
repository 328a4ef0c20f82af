"""POI encoders: published keys, batch invariance, zero-POI tiles, edge weights in the GCN variant."""

import pytest
import torch
from torch_geometric.data import Batch, Data

from models.poi_encoder import GCNPOIEncoder, Set2SetPOIEncoder, build_poi_encoder


def graphs(sizes, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in sizes:
        ei = torch.stack([torch.arange(n), (torch.arange(n) + 1) % n]) if n > 1 else torch.zeros(2, 0, dtype=torch.long)
        out.append(
            Data(
                x=torch.randn(n, dim, generator=g),
                edge_index=ei,
                edge_weight=torch.rand(ei.shape[1], generator=g),
                num_nodes=n,
            )
        )
    return out


def encode(model, data_list):
    b = Batch.from_data_list(data_list)
    return model(b.x, b.edge_index, b.batch, b.num_graphs, b.edge_weight)


def test_published_keys():
    keys = set(Set2SetPOIEncoder(64, 128).state_dict())
    assert keys == {
        "set2set.lstm.weight_ih_l0",
        "set2set.lstm.weight_hh_l0",
        "set2set.lstm.bias_ih_l0",
        "set2set.lstm.bias_hh_l0",
        "linear1.weight",
        "linear1.bias",
        "projector.1.weight",
        "projector.1.bias",
    }
    m = Set2SetPOIEncoder(64, 128)
    assert (m.linear1.in_features, m.linear1.out_features, m.projector[1].out_features) == (128, 256, 128)
    assert m.set2set.processing_steps == 5
    assert {k for k in GCNPOIEncoder(64, 128).state_dict() if k.startswith("convs.")}


@pytest.mark.parametrize("kind", ["set2set", "gcn"])
def test_batch_invariance_with_empty_graphs(kind):
    torch.manual_seed(0)
    model = build_poi_encoder(kind, 8, 16).eval()
    data = graphs([3, 0, 5, 1, 2, 0])  # empty graphs inside and at the end of the batch
    together = encode(model, data)
    assert together.shape == (6, 16) and torch.isfinite(together).all()
    one_by_one = torch.cat([encode(model, [d]) for d in data])
    assert torch.allclose(together, one_by_one, atol=1e-5)


@pytest.mark.parametrize("kind", ["set2set", "gcn"])
def test_all_empty_batch_trains(kind):
    model = build_poi_encoder(kind, 8, 16)
    out = encode(model, graphs([0, 0, 0]))
    assert out.shape == (3, 16)
    out.sum().backward()  # gradients flow through the readout's LSTM even with no nodes


def test_gcn_uses_edges_and_weights_set2set_does_not():
    torch.manual_seed(0)
    d = graphs([6])[0]
    rewired = Data(x=d.x, edge_index=torch.tensor([[0, 2], [2, 0]]), edge_weight=torch.ones(2), num_nodes=6)
    s2s, gcn = build_poi_encoder("set2set", 8, 16).eval(), build_poi_encoder("gcn", 8, 16).eval()
    assert torch.allclose(encode(s2s, [d]), encode(s2s, [rewired]))
    assert not torch.allclose(encode(gcn, [d]), encode(gcn, [rewired]))
    reweighted = Data(x=d.x, edge_index=d.edge_index, edge_weight=d.edge_weight * 5, num_nodes=6)
    assert not torch.allclose(encode(gcn, [d]), encode(gcn, [reweighted]))


def test_unknown_kind():
    with pytest.raises(ValueError):
        build_poi_encoder("transformer", 8)
