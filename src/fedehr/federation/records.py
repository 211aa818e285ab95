"""Task / Reply  <->  Flower ``RecordDict``, and the size of what actually travels.

A Task becomes three records: ``fedehr-task`` (ConfigRecord: action, label), ``fedehr-config``
(ConfigRecord: the task's scalar settings) and ``fedehr-arrays`` (ArrayRecord: the arrays, already merged
with the receiving site's own ``per_site`` payload by :meth:`Task.for_site`). A Reply becomes
``fedehr-reply`` (ConfigRecord: site, num_examples), ``fedehr-metrics`` (MetricRecord: int / float values
and lists of them), ``fedehr-labels`` (ConfigRecord: str / bool metrics) and ``fedehr-arrays``.

Arrays travel as ``np.save`` bytes without pickle (Flower's ``Array``), so dtype and shape round-trip
exactly; object arrays are refused. Numpy scalars in configs / metrics are turned into Python scalars.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from fedehr.algorithms.protocol import Payload, Reply, Task

MESSAGE_TYPE = "train.fedehr"   # one custom ClientApp action carries every fedehr task
HANDSHAKE = "fedehr_handshake"  # reserved Task.action answered by the runtime itself (site name, sizes)

TASK, CONFIG, ARRAYS = "fedehr-task", "fedehr-config", "fedehr-arrays"
REPLY, METRICS, LABELS = "fedehr-reply", "fedehr-metrics", "fedehr-labels"


# ---- scalars ---------------------------------------------------------------------------------------------
def _python(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _flat_list(key: str, values: Any, where: str) -> list:
    items = [_python(v) for v in (values.tolist() if isinstance(values, np.ndarray) else values)]
    kinds = {type(v) for v in items}
    if kinds <= {int, float} and float in kinds:
        return [float(v) for v in items]  # a mixed numeric list travels as floats
    if len(kinds) > 1 or not kinds <= {int, float, str, bool}:
        raise TypeError(f"{where} {key!r}: lists must hold one scalar type (int, float, str or bool), "
                        f"got {sorted(k.__name__ for k in kinds)}")
    return items


def to_scalar(key: str, v: Any, where: str) -> Any:
    v = _python(v)
    if isinstance(v, bool | int | float | str):
        return v
    if isinstance(v, list | tuple | np.ndarray):
        if isinstance(v, np.ndarray) and v.ndim != 1:
            raise TypeError(f"{where} {key!r}: only flat lists are allowed, got an array of shape {v.shape}; "
                            "send arrays in the arrays payload")
        return _flat_list(key, v, where)
    raise TypeError(f"{where} {key!r}: {type(v).__name__} is not a scalar (int, float, str, bool) "
                    "or a flat list of one of them")


def is_numeric(v: Any) -> bool:
    if isinstance(v, list):
        return all(isinstance(x, int | float) and not isinstance(x, bool) for x in v)
    return isinstance(v, int | float) and not isinstance(v, bool)


# ---- arrays ----------------------------------------------------------------------------------------------
def arrays_to_record(arrays: Payload) -> ArrayRecord:
    record = ArrayRecord()
    for name, a in arrays.items():
        if not isinstance(a, np.ndarray):
            raise TypeError(f"array payload {name!r}: expected a numpy array, got {type(a).__name__}")
        if a.dtype == object:
            raise TypeError(f"array payload {name!r}: object arrays cannot be sent (no pickles)")
        record[name] = Array(np.ascontiguousarray(a))
    return record


def record_to_arrays(record: ArrayRecord | None, zero_d: list[str] | tuple[str, ...] = ()) -> Payload:
    """Arrays back from a record; ``zero_d`` names the 0-d arrays (Flower returns those with shape (1,))."""
    if record is None:
        return {}
    out = {name: arr.numpy() for name, arr in record.items()}
    for name in zero_d:
        out[name] = out[name].reshape(())
    return out


def zero_d_names(arrays: Payload) -> list[str]:
    return [name for name, a in arrays.items() if isinstance(a, np.ndarray) and a.ndim == 0]


# ---- Task ------------------------------------------------------------------------------------------------
def task_to_content(task: Task) -> RecordDict:
    """The records of one task as a site receives it (call ``task.for_site(site)`` first)."""
    if task.per_site:
        raise ValueError("task still holds per-site payloads; send task.for_site(site) instead")
    config = {k: to_scalar(k, v, "task config") for k, v in task.config.items()}
    return RecordDict({
        TASK: ConfigRecord({"action": task.action, "label": task.label, "zero_d": zero_d_names(task.arrays)}),
        CONFIG: ConfigRecord(config),
        ARRAYS: arrays_to_record(task.arrays),
    })


def content_to_task(content: RecordDict) -> Task:
    head = content[TASK]
    return Task(action=str(head["action"]), config=dict(content[CONFIG]),
                arrays=record_to_arrays(content.get(ARRAYS), list(head.get("zero_d", []))), label=str(head["label"]))


# ---- Reply -----------------------------------------------------------------------------------------------
def reply_to_content(reply: Reply) -> RecordDict:
    metrics = {k: to_scalar(k, v, "reply metric") for k, v in reply.metrics.items()}
    return RecordDict({
        REPLY: ConfigRecord({"site": str(reply.site), "num_examples": int(reply.num_examples),
                             "zero_d": zero_d_names(reply.arrays)}),
        METRICS: MetricRecord({k: v for k, v in metrics.items() if is_numeric(v)}),
        LABELS: ConfigRecord({k: v for k, v in metrics.items() if not is_numeric(v)}),
        ARRAYS: arrays_to_record(reply.arrays),
    })


def content_to_reply(content: RecordDict) -> Reply:
    head = content[REPLY]
    metrics: dict[str, Any] = {**dict(content.get(METRICS) or {}), **dict(content.get(LABELS) or {})}
    arrays = record_to_arrays(content.get(ARRAYS), list(head.get("zero_d", [])))
    return Reply(site=str(head["site"]), arrays=arrays, metrics=metrics,
                 num_examples=int(head["num_examples"]))


# ---- accounting ------------------------------------------------------------------------------------------
def payload_bytes(content: RecordDict) -> int:
    """Bytes of the serialised objects Flower uploads for this content (records, arrays, array chunks).

    This is what the object store receives, deduplicated by object id as Flower does; HTTP / TLS framing
    and message metadata (a few hundred bytes) are not included.
    """
    return sum(len(obj.deflate()) for obj in get_all_nested_objects(content).values())
