"""Checks of sweep points memoised by the workload fields they actually read.

A sweep of 120,000 points mostly varies fields that a workload's ``check(cluster)`` and the
resource guard never look at (a seed, a bucket size), or varies them over a few values. Running
both once per point costs most of a sweep's validation time; this module runs them once per
distinct (values of the fields they read, cluster).

Which fields a check reads is recorded, not declared: the check runs on a copy of the workload
whose class records every field read. Since a check is a deterministic function of what it
reads, a later point whose values agree on every field of a recorded read set takes the same
path and passes the same way (memoisation by dynamic dependencies). Anything that reads the
model as a whole (``model_dump``, ``__dict__``, ``==``, ``hash``...) counts as reading every field.
Only passing checks are remembered; a failing one raises each time, naming its point.
"""

from __future__ import annotations

import pickle
from typing import Any, Callable

from pydantic import BaseModel

# Attributes through which a check could see fields without naming them one by one.
_WHOLE_MODEL = frozenset({
    "__dict__", "model_dump", "model_dump_json", "model_copy", "model_fields_set",
    "__pydantic_fields_set__", "__pydantic_extra__", "__pydantic_private__", "model_extra",
    "__getstate__", "__reduce__", "__reduce_ex__", "__iter__", "__repr_args__", "copy", "dict",
    "json", "__copy__", "__deepcopy__"})
_ALL = "*"
_recorders: dict[type, type] = {}


def _recorder(cls: type[BaseModel]) -> type:
    """A subclass of ``cls`` that adds the name of each field read to ``self._reads``."""
    if cls in _recorders:
        return _recorders[cls]
    fields = frozenset(cls.model_fields)

    def __getattribute__(self, name):  # noqa: N807 — the hook being overridden
        if name in fields:
            object.__getattribute__(self, "__dict__")["_reads_"].add(name)
        elif name in _WHOLE_MODEL:
            object.__getattribute__(self, "__dict__")["_reads_"].add(_ALL)
        return cls.__getattribute__(self, name)

    def whole(method: str) -> Callable:
        def wrapper(self, *args, **kwargs):
            object.__getattribute__(self, "__dict__")["_reads_"].add(_ALL)
            return getattr(cls, method)(self, *args, **kwargs)
        return wrapper

    # Defined with type() rather than as a pydantic subclass: no schema is rebuilt, and the
    # instance layout is the parent's, so a copy can take this class by __class__ assignment.
    namespace = {"__getattribute__": __getattribute__,
                 **{m: whole(m) for m in ("__eq__", "__hash__", "__repr__", "__str__")}}
    recorder = _recorders[cls] = type(cls.__name__, (cls,), namespace)
    return recorder


def _value_key(value: Any) -> Any:
    """A key equal for equal values, fields-set included (a check may read which were given)."""
    if value is None or isinstance(value, (bool, int, str)):
        return (type(value), value)
    if isinstance(value, float):  # -0.0 == 0.0, yet a check could tell them apart
        return (float, repr(value))
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


class CheckMemo:
    """Pass/fail of ``check(workload)`` per cluster key, reused by the fields it read."""

    def __init__(self):
        self._read_sets: dict[Any, list[tuple[str, ...]]] = {}  # cluster key -> read sets
        self._passed: set[tuple] = set()

    def _key(self, workload: BaseModel, fields: tuple[str, ...]) -> tuple:
        if fields == (_ALL,):
            return (fields, _value_key(workload))
        return (fields, type(workload)) + tuple(_value_key(workload.__dict__.get(f)) for f in fields)

    def run(self, workload: BaseModel, cluster_key: Any, check: Callable[[Any], None]) -> None:
        """Run ``check(workload)`` unless a point agreeing on what it reads passed before."""
        read_sets = self._read_sets.setdefault(cluster_key, [])
        for fields in read_sets:
            if (cluster_key, self._key(workload, fields)) in self._passed:
                return
        probe = self._probe(workload)
        if probe is None:  # cannot record reads: check this point on its own
            check(workload)
            return
        check(probe)  # a ConfigError propagates: nothing is remembered
        reads = object.__getattribute__(probe, "__dict__").pop("_reads_")
        fields = (_ALL,) if _ALL in reads else tuple(sorted(reads))
        if fields not in read_sets:
            read_sets.append(fields)
        self._passed.add((cluster_key, self._key(workload, fields)))

    @staticmethod
    def _probe(workload: BaseModel) -> Any | None:
        try:
            probe = workload.model_copy()
            names = type(workload).model_fields
            state = object.__getattribute__(probe, "__dict__")
            # Drop cached derived values: recomputing them reads the fields they come from.
            for name in [n for n in state if n not in names]:
                del state[name]
            state["_reads_"] = set()
            object.__setattr__(probe, "__class__", _recorder(type(workload)))
        except (TypeError, AttributeError):
            return None
        return probe
