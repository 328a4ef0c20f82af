"""The rules that keep tiles out of the embedding map's k-means."""

import numpy as np
import pytest

from engine.cluster_rules import TileFacts, apply_rules, min_brightness_rule, min_poi_rule
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
