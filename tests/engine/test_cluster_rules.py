"""The rules that keep tiles out of the embedding map's k-means."""

import numpy as np
import pytest

from engine.cluster_rules import TileFacts, apply_rules, labelled_domain_rule, min_brightness_rule, min_poi_rule
from utils.errors import UserError


def facts(n_poi=(0, 3, 1, 7), brightness=(10.0, 90.0, 200.0, 30.0)):
    names = [f"t{k}.png" for k in range(4)]
    return TileFacts(names, np.zeros((4, 2)), np.array(brightness), None if n_poi is None else np.array(n_poi))


def test_every_rule_must_keep_a_tile():
    keep, left = apply_rules(facts(), [min_poi_rule(1), min_brightness_rule(20)])
    assert keep.tolist() == [False, True, True, True] and left == {
        "fewer than 1 POIs": 1,
        "a darkest channel under 20": 1,
    }
    keep, left = apply_rules(facts(), [min_poi_rule(1), min_brightness_rule(50)])  # t0 fails both: counted twice
    assert keep.tolist() == [False, True, True, False] and left == {
        "fewer than 1 POIs": 1,
        "a darkest channel under 50": 2,
    }
    assert apply_rules(facts(), [])[0].all()


def test_rules_that_cannot_apply_or_leave_too_little_say_so():
    with pytest.raises(UserError, match="--cluster_min_poi needs each tile's POI count"):
        apply_rules(facts(n_poi=None), [min_poi_rule(1)])
    with pytest.raises(UserError, match=r"leave 1 of 4 tiles to cluster; loosen"):
        apply_rules(facts(), [min_brightness_rule(150)])


def test_labelled_domain_rule_leaves_out_tiles_unlike_the_training_tiles():
    rng = np.random.default_rng(0)
    land = rng.normal(size=(60, 8))
    sea = rng.normal(size=(10, 8)) + 10.0
    emb = np.concatenate([land, sea])
    brightness = np.r_[rng.uniform(80, 120, 60), rng.uniform(5, 10, 10)]
    facts = TileFacts([f"t{i}.png" for i in range(70)], emb, brightness, None, np.arange(40))
    keep, left_out = apply_rules(facts, [labelled_domain_rule()])
    assert not keep[60:].any() and keep[40:60].mean() >= 0.8
    assert left_out == {"outside the labelled domain": int((~keep).sum())}
    with pytest.raises(UserError, match="--cluster_in_domain needs"):
        apply_rules(TileFacts(facts.names, emb, brightness), [labelled_domain_rule()])
