"""The fleet's camera assignment (service/_coordinator.py): least loaded, sticky, fail-over that
moves only what it must, even shares, clear errors. Pure Python: no Ray, no model."""

from __future__ import annotations

import math
import random

import pytest

from xinfer_stream.service import Coordinator, Move


def fleet(actors: int, cameras: int, capacity: int | None = None) -> Coordinator:
    c = Coordinator()
    for i in range(actors):
        c.actor_joined(f"a{i:02d}", capacity)
    c.assign(f"cam{j:04d}" for j in range(cameras))
    return c


def test_even_spread_least_loaded_ties_by_name() -> None:
    c = fleet(3, 10)
    assert c.loads() == {"a00": 4, "a01": 3, "a02": 3}
    # Round robin by (load, name): the first three go to a00, a01, a02 in that order.
    assert [c.actor_of(f"cam{j:04d}") for j in range(4)] == ["a00", "a01", "a02", "a00"]
    assert c.cameras_of("a01") == ("cam0001", "cam0004", "cam0007")


def test_same_calls_same_placement() -> None:
    assert fleet(7, 100).placement() == fleet(7, 100).placement()


def test_assign_is_sticky_and_fills_the_least_loaded() -> None:
    c = fleet(2, 4)
    before = c.placement()
    c.actor_joined("a02")
    assert c.placement() == before            # a new actor takes nothing by itself
    moves = c.assign(["x", "y", "z"])
    assert [m.target for m in moves] == ["a02", "a02", "a00"]
    assert all(m.source is None for m in moves)
    assert {k: v for k, v in c.placement().items() if k in before} == before


def test_fail_over_moves_only_the_lost_actors_cameras() -> None:
    c = fleet(4, 22)
    before = c.placement()
    lost = c.cameras_of("a01")
    moves = c.actor_lost("a01")
    assert [m.camera for m in moves] == list(lost)  # in the order they were placed on it
    assert all(m.source == "a01" and m.target != "a01" for m in moves)
    after = c.placement()
    assert set(after) == set(before)                 # no camera lost
    assert {k: after[k] for k in before if k not in lost} == {
        k: v for k, v in before.items() if k not in lost}
    assert "a01" not in c.actors
    assert max(c.loads().values()) <= math.ceil(22 / 3)


@pytest.mark.parametrize(("actors", "cameras", "kills"), [(3, 10, 1), (10, 97, 4), (100, 10_000, 10)])
def test_no_actor_above_its_share_after_fail_over(actors: int, cameras: int, kills: int) -> None:
    c = fleet(actors, cameras)
    rng = random.Random(actors)
    for name in rng.sample(list(c.actors), kills):
        c.actor_lost(name)
        loads = c.loads()
        assert max(loads.values()) <= math.ceil(cameras / len(loads))
        assert max(loads.values()) - min(loads.values()) <= 1
    assert len(c.placement()) == cameras and not c.waiting


def test_capacity_full_cameras_wait_and_are_placed_when_an_actor_joins() -> None:
    c = fleet(2, 4, capacity=3)
    assert c.loads() == {"a00": 2, "a01": 2}
    moves = c.actor_lost("a00")
    assert [m.target for m in moves] == ["a01"]      # a01 had room for one
    assert len(c.waiting) == 1
    assert c.actor_of(c.waiting[0]) is None
    c.assign(["late"])                               # waits behind it
    assert c.waiting[-1] == "late"
    joined = c.actor_joined("a00", capacity=3)       # Ray restarted it: it joins empty
    assert [m.camera for m in joined] == ["cam0002", "late"]
    assert all(m.source is None and m.target == "a00" for m in joined)
    assert not c.waiting


def test_last_actor_lost_everything_waits_in_order() -> None:
    c = fleet(1, 3)
    assert c.actor_lost("a00") == []
    assert c.waiting == ("cam0000", "cam0001", "cam0002")
    assert [m.camera for m in c.actor_joined("b")] == ["cam0000", "cam0001", "cam0002"]


def test_rebalance_moves_the_fewest_to_even_shares() -> None:
    c = fleet(3, 9)
    c.actor_lost("a02")
    c.actor_joined("a02")                            # back, empty: loads 5, 4, 0
    assert c.loads() == {"a00": 5, "a01": 4, "a02": 0}
    moves = c.rebalance()
    assert len(moves) == 3                           # 2 from a00, 1 from a01
    assert {m.target for m in moves} == {"a02"}
    assert c.loads() == {"a00": 3, "a01": 3, "a02": 3}
    assert c.rebalance() == []                       # already even: nothing moves


def test_rebalance_keeps_uneven_remainder_on_the_most_loaded() -> None:
    c = fleet(2, 5)
    c.actor_joined("a02")
    c.actor_joined("a03")                            # loads 3, 2, 0, 0
    moves = c.rebalance()
    assert sorted(c.loads().values()) == [1, 1, 1, 2]
    assert len(moves) == 2


def test_remove_frees_room() -> None:
    c = fleet(2, 4, capacity=2)
    c.assign(["w"])
    assert c.waiting == ("w",)
    assert c.remove("cam0001") == "a01"
    assert c.remove("w") is None
    assert c.assign(["v"]) == [Move("v", None, "a01")]
    for _ in range(200):                             # stale heap entries are compacted
        c.assign(["t"])
        c.remove("t")
    assert c.loads() == {"a00": 2, "a01": 2}


def test_errors_name_what_was_wrong() -> None:
    c = fleet(2, 2)
    with pytest.raises(ValueError, match="'cam0000' is already in this fleet"):
        c.assign(["cam0000"])
    with pytest.raises(ValueError, match="'n' is already in this fleet"):
        c.assign(["m", "n", "n"])
    assert "m" not in c.placement()                  # nothing placed on an error
    with pytest.raises(ValueError, match="no actor named 'zz'.*'a00', 'a01'"):
        c.actor_lost("zz")
    with pytest.raises(ValueError, match="no actor named 'zz'"):
        c.cameras_of("zz")
    with pytest.raises(ValueError, match="actor 'a00' is already"):
        c.actor_joined("a00")
    with pytest.raises(ValueError, match="capacity must be a positive int"):
        c.actor_joined("b", 0)
    with pytest.raises(ValueError, match="no camera named 'nope'"):
        c.remove("nope")
    with pytest.raises(ValueError, match="no camera named 'nope'"):
        c.actor_of("nope")
    with pytest.raises(ValueError, match="non-empty str"):
        c.assign([""])
