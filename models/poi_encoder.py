"""POI encoders: a tile's POIs (nodes with category embeddings, Delaunay edges) -> one vector.

Two variants (docs/method.md §1):

* :class:`Set2SetPOIEncoder` — the released one: a Set2Set readout over the POI nodes (the edges
  are ignored), then ``Linear(2F, 256) -> ReLU -> Linear(256, projection_dim)``. Keys
  ``set2set.lstm.*``, ``linear1.*``, ``projector.1.*`` as published.
* :class:`GCNPOIEncoder` — the paper's description: GCN layers over the POI graph (using the edge
  weights when the batch has them) before the same readout and head. Extra keys ``convs.*``.

A tile with no POI is valid (rural, water): its readout is computed over an empty set, which
Set2Set defines (the attention read is zero), so it still gets an embedding.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch_geometric.nn import GCNConv, Set2Set

__all__ = ["POI_ENCODERS", "Set2SetPOIEncoder", "GCNPOIEncoder", "build_poi_encoder"]

POI_ENCODERS = ("set2set", "gcn")


class Set2SetPOIEncoder(nn.Module):
    """Released POI encoder.

    Args:
        in_dim: width F of the POI category embeddings (published 64; read from the data).
        projection_dim: output width (published 128).
        processing_steps: Set2Set iterations (published 5).
    """

    def __init__(self, in_dim: int = 64, projection_dim: int = 128, processing_steps: int = 5):
        super().__init__()
        self.in_dim = in_dim
        self.set2set = Set2Set(in_dim, processing_steps=processing_steps)
        self.linear1 = nn.Linear(2 * in_dim, 256)
        self.projector = nn.Sequential(nn.ReLU(), nn.Linear(256, projection_dim))

    def node_features(
        self, x: torch.Tensor, edge_index: torch.Tensor, edge_weight: torch.Tensor | None
    ) -> torch.Tensor:
        """``[N, F]`` node features before the readout; the released encoder uses them as they are."""
        return x

    def embed(
        self,
        x: torch.Tensor,
        edge_index: torch.Tensor,
        batch: torch.Tensor,
        num_graphs: int,
        edge_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Readout only: ``[N, F]`` nodes of ``num_graphs`` graphs -> ``[num_graphs, 2F]``."""
        h = self.node_features(x, edge_index, edge_weight)
        # dim_size: a batch whose last tiles have no POI still gets one row per tile.
        return self.set2set(h, batch, dim_size=num_graphs)

    def forward(
        self,
        x: torch.Tensor,
        edge_index: torch.Tensor,
        batch: torch.Tensor,
        num_graphs: int,
        edge_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Encode a batch of POI graphs.

        Args:
            x: ``[N, F]`` node features of all graphs.
            edge_index: ``[2, E]`` edges (global node indices).
            batch: ``[N]`` graph id of each node, in ``[0, num_graphs)``.
            num_graphs: number of graphs B (tiles), including those without nodes.
            edge_weight: optional ``[E]`` edge weights.

        Returns:
            ``[B, projection_dim]`` embeddings.
        """
        return self.projector(self.linear1(self.embed(x, edge_index, batch, num_graphs, edge_weight)))


class GCNPOIEncoder(Set2SetPOIEncoder):
    """GCN layers over the POI graph, then the released readout and head.

    Args:
        in_dim: width F of the POI category embeddings.
        projection_dim: output width.
        hidden_dim: width of the GCN layers (default: ``in_dim``).
        num_layers: number of GCN layers (default 2).
        processing_steps: Set2Set iterations.
    """

    def __init__(
        self,
        in_dim: int = 64,
        projection_dim: int = 128,
        hidden_dim: int | None = None,
        num_layers: int = 2,
        processing_steps: int = 5,
    ):
        hidden_dim = hidden_dim or in_dim
        super().__init__(hidden_dim, projection_dim, processing_steps)
        self.in_dim = in_dim
        dims = [in_dim] + [hidden_dim] * num_layers
        self.convs = nn.ModuleList(GCNConv(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))

    def node_features(
        self, x: torch.Tensor, edge_index: torch.Tensor, edge_weight: torch.Tensor | None
    ) -> torch.Tensor:
        for conv in self.convs:
            x = torch.relu(conv(x, edge_index, edge_weight))
        return x


def build_poi_encoder(kind: str, in_dim: int, projection_dim: int = 128) -> Set2SetPOIEncoder:
    """The POI encoder named ``kind`` (one of :data:`POI_ENCODERS`)."""
    if kind == "set2set":
        return Set2SetPOIEncoder(in_dim, projection_dim)
    if kind == "gcn":
        return GCNPOIEncoder(in_dim, projection_dim)
    raise ValueError(f"unknown POI encoder {kind!r}; choose one of {', '.join(POI_ENCODERS)}")
