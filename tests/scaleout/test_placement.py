"""Placement options from a template's resources, and refusals with a sentence (no Ray needed)."""

from __future__ import annotations

from typing import Any

import pytest

from actors.supervisor import placement
from schemas.errors import CannotPlace
from schemas.templates import Resources, Template, encode_spec

NODES: list[dict[str, Any]] = [
    {"NodeID": "a", "Alive": True, "Resources": {"CPU": 2.0, "memory": 8 * 2**30, "n1": 1.0}},
    {"NodeID": "b", "Alive": True, "Resources": {"CPU": 4.0, "memory": 4 * 2**30, "gpu": 2.0}},
    {"NodeID": "c", "Alive": False, "Resources": {"CPU": 64.0, "big": 1.0}},
]


def test_no_placement_asks_nothing_and_keeps_the_warm_pool() -> None:
    assert placement.ray_options(Resources()) == {}
    assert placement.ray_options(Resources(cpu=2, memory_mb=512)) == {}  # limits, not placement
    assert placement.options_of(None) == {}
    assert placement.options_of_spec("") == {}


def test_custom_resources_and_reservations_become_ray_options() -> None:
    got = placement.ray_options(Resources(cpu=1.5, memory_mb=256, ray={"n1": 1}, reserve=True))
    assert got == {"resources": {"n1": 1}, "num_cpus": 1.5, "memory": 256 * 2**20}
    assert placement.wanted(got) == {"n1": 1.0, "CPU": 1.5, "memory": 256.0 * 2**20}
    spec = encode_spec(Template(name="t", resources=Resources(ray={"gpu": 1})))
    assert placement.options_of_spec(spec) == {"resources": {"gpu": 1}}


@pytest.mark.parametrize(
    "resources",
    [
        Resources(ray={"n1": 1}),
        Resources(ray={"gpu": 2}, cpu=4, reserve=True),
        Resources(cpu=2, memory_mb=8192, reserve=True),
    ],
)
def test_requests_some_live_node_can_hold_pass(resources: Resources) -> None:
    placement.check("a1", placement.ray_options(resources), NODES)


@pytest.mark.parametrize(
    ("resources", "why"),
    [
        (Resources(ray={"n3": 1}), "no Ray node has that much (its 2 live node(s) offer"),
        (Resources(ray={"big": 1}), "no Ray node has that much"),  # only a dead node has it
        (Resources(ray={"n1": 1, "gpu": 1}), "no Ray node has that much"),  # not on one node
        (Resources(cpu=3, memory_mb=8192, reserve=True), "no Ray node has that much"),
        (Resources(ray={"gpu": 1.5}), "gpu=1.5 must be above 0, and whole when above 1"),
        (Resources(ray={"gpu": 0}), "gpu=0 must be above 0"),
    ],
)
def test_impossible_requests_are_refused_with_a_sentence(resources: Resources, why: str) -> None:
    with pytest.raises(CannotPlace) as err:
        placement.check("a1", placement.ray_options(resources), NODES)
    assert str(err.value).startswith("cannot place agent a1 (it asks Ray for ")
    assert why in str(err.value)
    assert err.value.code == "cannot_place"
