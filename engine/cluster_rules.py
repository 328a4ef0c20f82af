"""Which tiles the k-means of the embedding map clusters (``embed.py --clusters``; docs/downstream.md).

K-means spends its K clusters on whatever varies most among the tiles it is given. A mosaic with the sea
in it gives it open-water tiles, and several of the K clusters can go to shades of water.
A rule leaves such tiles out of the clustering: they keep their principal components in the map and
get cluster -1 ("left out"), drawn in grey. :func:`labelled_domain_rule` keeps only the tiles inside the
labelled domain of the training list's tiles (engine/domain.py: the sea, clouds and land unlike any
labelled tile are left out), so that the clusters describe the part of the mosaic a downstream head
learnt from.

A rule is a function of the tiles' :class:`TileFacts` that returns the tiles it keeps, ``[N]`` bool. The
rules given are all applied (a tile is clustered when every rule keeps it). To add a rule, e.g. the
labelled-domain test of a future ``engine/domain.py``: write one more ``TileFacts -> [N] bool`` function
(adding to :class:`TileFacts` what it needs, e.g. the labelled tiles' embeddings), and one more entry in
``embed.py``'s ``cluster_rules``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from engine.domain import labelled_domain
from utils.errors import UserError

__all__ = ["TileFacts", "Rule", "min_poi_rule", "min_brightness_rule", "labelled_domain_rule", "apply_rules"]


@dataclass(frozen=True)
class TileFacts:
    """What the rules can look at, one row per exported tile.

    Attributes:
        names: ``[N]`` tile file names.
        embeddings: ``[N, D]`` the embeddings being clustered.
        brightness: ``[N]`` the mean of each tile's darkest channel, 0..255.
        n_poi: ``[N]`` POIs in each tile, or None when the data folder does not say.
        train_rows: ``[M]`` rows of the training list's (labelled) tiles, or None when there is no list.
    """

    names: list[str]
    embeddings: np.ndarray
    brightness: np.ndarray
    n_poi: np.ndarray | None = None
    train_rows: np.ndarray | None = None


# A rule: its name as printed (e.g. "fewer than 3 POIs") and the tiles it keeps.
Rule = tuple[str, Callable[[TileFacts], np.ndarray]]


def min_poi_rule(n: int) -> Rule:
    """Keep tiles with at least ``n`` POIs (``--cluster_min_poi``)."""

    def keep(facts: TileFacts) -> np.ndarray:
        if facts.n_poi is None:
            raise UserError(
                "--cluster_min_poi needs each tile's POI count, which the data folder does not give (no n_poi "
                "column in its tile index and no sub_shanghai_emb/ tensors); drop the flag"
            )
        return facts.n_poi >= n

    return f"fewer than {n} POIs", keep


def min_brightness_rule(value: float) -> Rule:
    """Keep tiles whose darkest channel's mean is at least ``value`` (0..255; ``--cluster_min_brightness``).
    Open water is dark in near-infrared and red, not in blue: on the Olinda mosaic cut with ``--bands
    4,3,2`` (near-infrared as red), 144 of 1,089 tiles of 300 m have a darkest channel under 20, the sea;
    with bands 1,2,3 (blue, green, red) no threshold separates it (docs/downstream.md)."""
    return f"a darkest channel under {value:g}", lambda facts: facts.brightness >= value


def labelled_domain_rule() -> Rule:
    """Keep tiles inside the labelled domain of the training tiles (``--cluster_in_domain``): their embedding
    within the training tiles' own kNN distances, their darkest channel's mean within the training tiles'
    range (engine/domain.py)."""

    def keep(facts: TileFacts) -> np.ndarray:
        rows = facts.train_rows
        if rows is None or len(rows) < 2:
            raise UserError(
                "--cluster_in_domain needs the training list's tiles among the exported ones (at least 2); "
                "pass --train_list, or drop the flag"
            )
        own = np.full(len(facts.names), -1)
        own[rows] = np.arange(len(rows))
        b = np.asarray(facts.brightness, np.float64).reshape(-1, 1)
        return labelled_domain(facts.embeddings[rows], facts.embeddings, b[rows], b, self_index=own).in_domain

    return "outside the labelled domain", keep


def apply_rules(facts: TileFacts, rules: list[Rule]) -> tuple[np.ndarray, dict[str, int]]:
    """The tiles every rule keeps, ``[N]`` bool, and how many tiles each rule leaves out (a tile left out by
    two rules counts in both).

    Raises:
        UserError: the rules leave no tile, or fewer tiles than needed for two clusters.
    """
    keep = np.ones(len(facts.names), dtype=bool)
    left_out: dict[str, int] = {}
    for name, rule in rules:
        kept = np.asarray(rule(facts), dtype=bool)
        left_out[name] = int((~kept).sum())
        keep &= kept
    if rules and keep.sum() < 2:
        raise UserError(
            f"the clustering rules ({', '.join(left_out)}) leave {int(keep.sum())} of {len(keep)} tiles to "
            "cluster; loosen --cluster_min_poi / --cluster_min_brightness"
        )
    return keep, left_out
