"""Task / Reply <-> Flower records: exact round trips over the wire format, refusals, byte accounting."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

from fedehr.algorithms.protocol import Reply, Task
from fedehr.federation.records import (
    content_to_reply,
    content_to_task,
    payload_bytes,
    reply_to_content,
    task_to_content,
)


def over_the_wire(content: RecordDict) -> RecordDict:
    """Deflate every object as Flower uploads it and inflate the tree back, as the receiver does."""
    objects = {oid: obj.deflate() for oid, obj in get_all_nested_objects(content).items()}
    back = inflate_object_from_contents(content.object_id, objects)
    assert isinstance(back, RecordDict)
    return back


ARRAYS = {
    "w": np.arange(12, dtype=np.float32).reshape(3, 4),
    "idx": np.array([3, -1, 7], dtype=np.int64),
    "mask": np.array([[True, False]]),
    "counts": np.zeros((0, 5), dtype=np.uint16),
    "scalar": np.array(2.5),
    "names": np.array(["a", "bc"]),
}


def test_task_round_trip_is_exact_and_merges_the_site_payload():
    task = Task("train", config={"lr": 0.01, "epochs": 3, "name": "x", "flag": True, "ints": [1, 2],
                                 "floats": [0.5, 1], "np_int": np.int64(4), "np_float": np.float32(0.25)},
                arrays=ARRAYS, per_site={"A": {"own": np.ones(2)}, "B": {"own": np.zeros(2)}}, label="round 1")
    back = content_to_task(over_the_wire(task_to_content(task.for_site("B"))))
    assert back.action == "train" and back.label == "round 1" and back.per_site == {}
    assert back.config == {"lr": 0.01, "epochs": 3, "name": "x", "flag": True, "ints": [1, 2], "floats": [0.5, 1.0],
                           "np_int": 4, "np_float": 0.25}
    assert type(back.config["epochs"]) is int and type(back.config["flag"]) is bool
    assert set(back.arrays) == {*ARRAYS, "own"}
    np.testing.assert_array_equal(back.arrays["own"], np.zeros(2))
    for name, a in ARRAYS.items():
        assert back.arrays[name].dtype == a.dtype and back.arrays[name].shape == a.shape
        np.testing.assert_array_equal(back.arrays[name], a)


def test_a_task_with_unresolved_per_site_payloads_is_refused():
    with pytest.raises(ValueError, match="for_site"):
        task_to_content(Task("train", per_site={"A": {"x": np.ones(1)}}))


def test_reply_round_trip_splits_numeric_and_label_metrics():
    reply = Reply("site-7", arrays={"g": np.linspace(0, 1, 5)},
                  metrics={"loss": 0.5, "steps": 10, "hist": [1, 2, 3], "curve": [0.1, 0.2], "schema": "{}",
                           "ok": True, "empty": ""}, num_examples=42)
    content = reply_to_content(reply)
    assert set(content["fedehr-metrics"]) == {"loss", "steps", "hist", "curve"}
    assert set(content["fedehr-labels"]) == {"schema", "ok", "empty"}
    back = content_to_reply(over_the_wire(content))
    assert back.site == "site-7" and back.num_examples == 42
    assert back.metrics == reply.metrics
    np.testing.assert_array_equal(back.arrays["g"], reply.arrays["g"])


@pytest.mark.parametrize("bad", [{"k": {"nested": 1}}, {"k": [[1, 2]]}, {"k": np.ones((2, 2))}, {"k": [1, "a"]},
                                 {"k": None}])
def test_non_scalar_config_values_are_refused_with_the_key(bad):
    with pytest.raises(TypeError, match="'k'"):
        task_to_content(Task("train", config=bad))


def test_object_arrays_are_refused():
    with pytest.raises(TypeError, match="object arrays"):
        task_to_content(Task("train", arrays={"o": np.array([{"a": 1}], dtype=object)}))


def test_payload_bytes_track_the_array_bytes():
    empty = payload_bytes(task_to_content(Task("train")))
    big = np.random.default_rng(0).random(250_000).astype(np.float32)  # 1 MB, incompressible
    full = payload_bytes(task_to_content(Task("train", arrays={"w": big})))
    assert 0 < empty < 2_000
    assert big.nbytes <= full - empty <= big.nbytes + 2_000
    two = payload_bytes(task_to_content(Task("train", arrays={"w": big, "v": big[::-1].copy()})))
    assert 2 * big.nbytes <= two - empty <= 2 * big.nbytes + 4_000
