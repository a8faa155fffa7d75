"""Chrome trace JSON in the PyTorch profiler's layout (opens in Perfetto).

One ``pid`` per device (plus one for the fabric's links), one ``tid`` per stream, both named
with ``process_name``/``thread_name`` metadata and ordered with sort indices; complete ("X")
events in microseconds; memory and other counters as "C" events; transfers as flow arrows
("s"/"f"). Spans that overlap on one stream without nesting (possible for dynamic workloads)
are moved to extra lanes ``stream#2``..., because Perfetto requires strict nesting per track.

Counters (memory, link utilisation) are most of a trace's events (a TP step logs a rate change
per link per ring step), so they are kept as rows and written as JSON text directly
(:func:`chrome_trace_text`, :func:`write_chrome_trace`); :func:`chrome_trace_events` gives the
same events as dicts. The spans of a trace that holds only a program's tasks are read from the
task records (``_program_spans``), not from the span DataFrame (``_table_spans``, for dynamic
workloads): the same text, without building a table of every task.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Iterator
from typing import TextIO

import numpy as np

from clustersim.gc_pause import gc_paused

_US = 1e6


def _jsonable(value):
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if value.is_integer():  # labels like microbatch come back as floats from pandas
            return int(value)
    return value


def _label_values(column) -> list:
    """A label column as JSON-ready values, ``None`` where missing (column-wise: a trace has
    hundreds of thousands of label cells). Integral floats become ints, as ``_jsonable`` does."""
    values = column.tolist()
    missing = column.isna().to_numpy()
    if column.dtype.kind == "f":
        return [None if gone else (int(v) if v.is_integer() else v)
                for v, gone in zip(values, missing)]
    if not missing.any() and column.dtype.kind in "iub":
        return values
    if str(column.dtype) in ("str", "string"):  # text labels need no conversion
        return [None if gone else v for v, gone in zip(values, missing)]
    return [None if gone else _jsonable(v) for v, gone in zip(values, missing)]


def _rows(frame, columns):
    """Rows as tuples from column lists (row iteration of arrow-backed frames is slow)."""
    return zip(*(frame[c].tolist() for c in columns))


_CORE = frozenset(("device", "stream", "name", "category", "start_s", "end_s", "task_id"))


def _program_spans(trace):
    """The spans of a trace that holds only a program's tasks, read from the task records
    instead of the span table (a DataFrame of every task costs more than writing the file):
    (devices in order of first start, rows in file order, transfers), or None when the trace
    is not of that kind. Rows and args are those of the table path below."""
    program, recorder = getattr(trace, "_program", None), getattr(trace, "_recorder", None)
    if program is None or recorder is None or recorder.extra_spans:
        return None
    records, names = program.records, trace._device_names
    keyed, transfers, first_start = [], [], {}
    column_of: dict[str, int] = {}  # label columns in the table's order (first appearance)
    for index, (task_id, start, end) in enumerate(recorder.spans):
        record = records[task_id]
        labels = record[10]
        if labels:
            if not _CORE.isdisjoint(labels):
                return None  # a label that shadows a column: leave it to the table's rules
            for key in labels:
                if key not in column_of:
                    column_of[key] = len(column_of)
        device = names[record[1]]
        keyed.append((device, record[2], start, -end, index, record))
        if first_start.get(device, math.inf) > start:
            first_start[device] = start
        if record[11] >= 0:
            transfers.append((device, names[record[11]], record[2], record[3], start, end))
    keyed.sort()  # the index is unique: records are never compared
    # The span table is sorted by (start_s, device, stream): a device first appears at its
    # earliest start, ties between devices broken by name.
    devices = sorted(first_start, key=lambda device: (first_start[device], device))
    rows, ordered_keys, converted = [], {}, {}
    for device, stream, start, neg_end, _, record in keyed:
        args = {"task_id": record[0]}
        labels = record[10]
        if labels:
            # A compiler shares one labels dict among the tasks of an op (its TP ranks): each
            # dict is converted once.
            items = converted.get(id(labels))
            if items is None:
                items = converted[id(labels)] = _label_items(labels, ordered_keys, column_of)
            args.update(items)
        args["deps"] = list(record[7])
        if record[13] is not None:
            args["collective_id"] = record[13].members[0]
        rows.append((device, stream, start, -neg_end, record[3], record[4], args))
    return devices, rows, transfers


def _label_items(labels, ordered_keys: dict, column_of: dict) -> list[tuple[str, object]]:
    """A task's labels as the table path writes them: in the table's column order, missing
    (None, NaN) left out, integral floats as ints, numpy scalars as Python numbers."""
    keys = tuple(labels)
    in_order = ordered_keys.get(keys)
    if in_order is None:
        in_order = ordered_keys[keys] = sorted(keys, key=column_of.__getitem__)
    items = []
    for key in in_order:
        value = labels[key]
        kind = type(value)
        if kind is float:
            if value != value:
                continue
            if value.is_integer():  # as the table path: integral floats become ints
                value = int(value)
        elif value is None:
            continue
        elif kind is not int and kind is not str and kind is not bool:
            value = _jsonable(value)
            if value is None:
                continue
        items.append((key, value))
    return items


def _table_spans(trace):
    """(devices, rows, transfers) as ``_program_spans`` gives them, from the span table."""
    spans = trace.spans
    devices = list(dict.fromkeys(list(spans["device"]) if not spans.empty else []))
    has_program = getattr(trace, "_program", None) is not None
    label_columns = [c for c in spans.columns
                     if c not in ("device", "stream", "name", "category", "start_s", "end_s")]
    rows = []
    if not spans.empty:
        # Column lists, not row objects: iterating arrow-backed frames row by row is slow.
        ordered = spans.sort_values(["device", "stream", "start_s", "end_s"],
                                    ascending=[True, True, True, False], kind="stable")
        columns = {c: ordered[c].tolist() for c in ordered.columns}
        labels = [_label_values(ordered[c]) for c in label_columns]
        label_rows = list(zip(*labels)) if labels else None
        for i, row in enumerate(zip(columns["device"], columns["stream"], columns["start_s"],
                                    columns["end_s"], columns["name"], columns["category"])):
            args = {c: v for c, v in zip(label_columns, label_rows[i]) if v is not None} \
                if label_rows else {}
            if "task_id" in args and has_program:  # optional: lets analysis find critical paths
                deps, collective_id = trace.task_dependencies(args["task_id"])
                args["deps"] = list(deps)
                if collective_id is not None:
                    args["collective_id"] = collective_id
            rows.append((*row, args))
    transfers = list(_rows(trace.transfers, ["src", "dst", "stream", "name", "start_s", "end_s"])) \
        if not trace.transfers.empty else []
    return devices, rows, transfers


def _sections(trace) -> list[tuple[str, list]]:
    """The trace's events in order, as sections: ("dicts", [event dict]), ("counters",
    (names, pids, ts_us, arg, values): columns of one counter argument) or ("flows",
    [(ph, id, name, pid, tid, ts_us)])."""
    events: list[dict] = []
    sections: list[tuple[str, list]] = [("dicts", events)]
    devices, rows, transfers = _program_spans(trace) or _table_spans(trace)
    for device in trace.memory["device"].unique() if not trace.memory.empty else []:
        if device not in devices:
            devices.append(device)
    pid_of = {device: pid for pid, device in enumerate(devices, start=1)}
    tid_of: dict[tuple[str, str], int] = {}

    def tid(device: str, stream: str) -> int:
        key = (device, stream)
        if key not in tid_of:
            tid_of[key] = len(tid_of) + 1
            events.append({"ph": "M", "name": "thread_name", "pid": pid_of[device],
                           "tid": tid_of[key], "args": {"name": stream}})
            events.append({"ph": "M", "name": "thread_sort_index", "pid": pid_of[device],
                           "tid": tid_of[key], "args": {"sort_index": tid_of[key]}})
        return tid_of[key]

    for device, pid in pid_of.items():
        events.append({"ph": "M", "name": "process_name", "pid": pid, "args": {"name": device}})
        events.append({"ph": "M", "name": "process_sort_index", "pid": pid,
                       "args": {"sort_index": pid}})

    # Rows come grouped by (device, stream): the lanes and ids of a stream are looked up once.
    current: tuple | None = None
    for device, stream, start, end, name, category, args in rows:
        if current is None or stream != current[1] or device != current[0]:
            current, ends, pid, first_tid = (device, stream), [], pid_of[device], None
        if ends and start >= ends[0] - 1e-15:  # the common case: after the stream's last span
            ends[0] = end
            lane = 0
        else:
            for lane, lane_end in enumerate(ends):
                if start >= lane_end - 1e-15:
                    ends[lane] = end
                    break
            else:
                ends.append(end)
                lane = len(ends) - 1
        if lane:
            track_tid = tid(device, f"{stream}#{lane + 1}")
        else:
            if first_tid is None:
                first_tid = tid(device, stream)
            track_tid = first_tid
        events.append({"ph": "X", "name": name, "cat": category, "pid": pid,
                       "tid": track_tid, "ts": start * _US, "dur": (end - start) * _US,
                       "args": args})

    if not trace.memory.empty:
        memory = trace.memory
        names = {tier: f"memory {tier}" for tier in memory["tier"].unique()}
        sections.append(("counters", (
            [names[tier] for tier in memory["tier"].tolist()],
            [pid_of[device] for device in memory["device"].tolist()],
            (memory["time_s"].to_numpy(dtype=float) * _US).tolist(), "GiB",
            (memory["used_bytes"].to_numpy(dtype=float) / 2**30).tolist())))
    if not trace.counters.empty:
        for device, name, time_s, value in _rows(trace.counters, ["device", "name", "time_s", "value"]):
            if device not in pid_of:
                pid_of[device] = len(pid_of) + 1
                sections.append(("dicts", [{"ph": "M", "name": "process_name", "pid": pid_of[device],
                                            "args": {"name": device}}]))
            sections.append(("counters", ([name], [pid_of[device]], [time_s * _US], name, [value])))

    link_index, link_time_s, _, link_names = trace.link_columns
    if len(link_index):
        fabric_pid = len(pid_of) + 1
        sections.append(("dicts", [{"ph": "M", "name": "process_name", "pid": fabric_pid,
                                    "args": {"name": "fabric links"}}]))
        counter_names = [f"util {link}" for link in link_names]
        sections.append(("counters", (
            [counter_names[i] for i in link_index.tolist()], [fabric_pid] * len(link_index),
            (link_time_s * _US).tolist(), "utilisation", trace.link_utilisation().tolist())))

    if transfers:
        flows: list[tuple] = []
        sections.append(("flows", flows))
        for flow_id, (src, dst, stream, name, start_s, end_s) in enumerate(transfers, start=1):
            if src not in pid_of or dst not in pid_of:
                continue
            # The arrow leaves the send's own track and lands on the receiver's compute track.
            src_tid = tid_of.get((src, stream), 1)
            dst_tid = tid_of.get((dst, "compute")) or next(
                (t for (d, _), t in tid_of.items() if d == dst), 1)
            flows.append(("s", flow_id, name, pid_of[src], src_tid, start_s * _US))
            flows.append(("f", flow_id, name, pid_of[dst], dst_tid, end_s * _US))
    return sections


def chrome_trace_events(trace) -> list[dict]:
    """Every event of the trace as a dict, in file order."""
    events: list[dict] = []
    for kind, rows in _sections(trace):
        if kind == "dicts":
            events.extend(rows)
        elif kind == "counters":
            names, pids, stamps, arg, values = rows
            events.extend({"ph": "C", "name": name, "pid": pid, "ts": ts, "args": {arg: value}}
                          for name, pid, ts, value in zip(names, pids, stamps, values))
        else:
            for ph, flow_id, name, pid, tid, ts in rows:
                event = {"ph": ph, "id": flow_id, "name": name, "cat": "transfer", "pid": pid,
                         "tid": tid, "ts": ts}
                if ph == "f":
                    event = {"ph": ph, "bp": "e", **{k: v for k, v in event.items() if k != "ph"}}
                events.append(event)
    return events


def _number(value) -> str:
    """A number as ``json.dumps`` writes it (finite floats and ints by repr)."""
    kind = type(value)
    if (kind is float and value - value == 0.0) or kind is int:
        return repr(value)
    return json.dumps(value.item() if hasattr(value, "item") else value)


def _reprs(numbers: list) -> Iterable[str]:
    """Each number as ``json.dumps`` writes it. Floats only: each distinct value is formatted
    once (a link log repeats its times and rates, and float repr is most of a trace's cost)."""
    kinds = set(map(type, numbers))
    if kinds == {float} and math.isfinite(math.fsum(numbers)):
        array = np.asarray(numbers)
        # -0.0 and 0.0 are one key of a dict but print differently: format those one by one.
        if not np.any(np.signbit(array) & (array == 0.0)):
            text = {x: repr(x) for x in set(numbers)}
            return map(text.__getitem__, numbers)
    if kinds <= {float, int} and math.isfinite(math.fsum(numbers)):
        return map(repr, numbers)
    return map(_number, numbers)


def _counter_texts(names, pids, stamps, arg, values):
    """One JSON object per counter sample, built with C-level joins (most of a trace)."""
    encode = json.dumps
    heads = {}
    for name, pid in dict.fromkeys(zip(names, pids)):
        heads[(name, pid)] = f'{{"ph": "C", "name": {encode(name)}, "pid": {pid}, "ts": '
    middle, tail = f', "args": {{{encode(arg)}: ', "}}"
    return map("".join, zip(map(heads.__getitem__, zip(names, pids)), _reprs(stamps),
                            itertools.repeat(middle), _reprs(values), itertools.repeat(tail)))


def chrome_trace_text(trace) -> str:
    """The Chrome trace JSON document (the same events as :func:`chrome_trace_events`)."""
    with gc_paused():  # hundreds of thousands of event dicts and strings, no cycles
        return _HEAD + ", ".join(_pieces(trace)) + _TAIL


def write_chrome_trace(trace, file: TextIO) -> None:
    """Write :func:`chrome_trace_text` to an open text file piece by piece, without holding
    the whole document (tens of MB for a TP step) in memory."""
    with gc_paused():
        file.write(_HEAD)
        for number, piece in enumerate(_pieces(trace)):
            file.write(", " + piece if number else piece)
        file.write(_TAIL)


_HEAD, _TAIL = '{"traceEvents": [', '], "displayTimeUnit": "ms"}'
_EVENTS_PER_PIECE = 20_000


def _pieces(trace) -> Iterator[str]:
    """The events' JSON text in file order, as non-empty runs of ", "-separated events."""
    encode = json.dumps
    for kind, rows in _sections(trace):
        if kind == "dicts":
            if rows:
                yield encode(rows)[1:-1]
        elif kind == "counters":
            texts = _counter_texts(*rows)
            while piece := ", ".join(itertools.islice(texts, _EVENTS_PER_PIECE)):
                yield piece
        elif rows:
            yield ", ".join(_flow_text(*row) for row in rows)


def _flow_text(ph: str, flow_id: int, name: str, pid: int, tid: int, ts: float) -> str:
    bp = '"bp": "e", ' if ph == "f" else ""
    return (f'{{"ph": "{ph}", {bp}"id": {flow_id}, "name": {json.dumps(name)}, '
            f'"cat": "transfer", "pid": {pid}, "tid": {tid}, "ts": {_number(ts)}}}')
