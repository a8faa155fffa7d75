"""Chrome trace JSON in the PyTorch profiler's layout (opens in Perfetto).

One ``pid`` per device (plus one for the fabric's links), one ``tid`` per stream, both named
with ``process_name``/``thread_name`` metadata and ordered with sort indices; complete ("X")
events in microseconds; memory and other counters as "C" events; transfers as flow arrows
("s"/"f"). Spans that overlap on one stream without nesting (possible for dynamic workloads)
are moved to extra lanes ``stream#2``..., because Perfetto requires strict nesting per track.

Counters (memory, link utilisation) are most of a trace's events (a TP step logs a rate change
per link per ring step), so they are kept as rows and written as JSON text directly
(:func:`chrome_trace_text`); :func:`chrome_trace_events` gives the same events as dicts.
"""

from __future__ import annotations

import itertools
import json
import math

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


def _sections(trace) -> list[tuple[str, list]]:
    """The trace's events in order, as sections: ("dicts", [event dict]), ("counters",
    (names, pids, ts_us, arg, values): columns of one counter argument) or ("flows",
    [(ph, id, name, pid, tid, ts_us)])."""
    events: list[dict] = []
    sections: list[tuple[str, list]] = [("dicts", events)]
    spans = trace.spans
    devices = list(dict.fromkeys(list(spans["device"]) if not spans.empty else []))
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

    has_program = getattr(trace, "_program", None) is not None
    label_columns = [c for c in spans.columns
                     if c not in ("device", "stream", "name", "category", "start_s", "end_s")]
    if not spans.empty:
        # Column lists, not row objects: iterating arrow-backed frames row by row is slow.
        ordered = spans.sort_values(["device", "stream", "start_s", "end_s"],
                                    ascending=[True, True, True, False], kind="stable")
        columns = {c: ordered[c].tolist() for c in ordered.columns}
        labels = [_label_values(ordered[c]) for c in label_columns]
        rows = list(zip(*labels)) if labels else None
        lane_ends: dict[tuple[str, str], list[float]] = {}
        for i, (device, stream, start, end, name, category) in enumerate(zip(
                columns["device"], columns["stream"], columns["start_s"], columns["end_s"],
                columns["name"], columns["category"])):
            ends = lane_ends.setdefault((device, stream), [])
            for lane, lane_end in enumerate(ends):
                if start >= lane_end - 1e-15:
                    ends[lane] = end
                    break
            else:
                ends.append(end)
                lane = len(ends) - 1
            track = stream if lane == 0 else f"{stream}#{lane + 1}"
            args = {c: v for c, v in zip(label_columns, rows[i]) if v is not None} if rows else {}
            if "task_id" in args and has_program:  # optional: lets analysis find critical paths
                deps, collective_id = trace.task_dependencies(args["task_id"])
                args["deps"] = list(deps)
                if collective_id is not None:
                    args["collective_id"] = collective_id
            events.append({"ph": "X", "name": name, "cat": category, "pid": pid_of[device],
                           "tid": tid(device, track), "ts": start * _US,
                           "dur": (end - start) * _US, "args": args})

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

    if not trace.links.empty:
        fabric_pid = len(pid_of) + 1
        sections.append(("dicts", [{"ph": "M", "name": "process_name", "pid": fabric_pid,
                                    "args": {"name": "fabric links"}}]))
        links = trace.links
        names = {link: f"util {link}" for link in links["link"].unique()}
        sections.append(("counters", (
            [names[link] for link in links["link"].tolist()], [fabric_pid] * len(links),
            (links["time_s"].to_numpy(dtype=float) * _US).tolist(), "utilisation",
            links["utilisation"].to_numpy(dtype=float).tolist())))

    if not trace.transfers.empty:
        flows: list[tuple] = []
        sections.append(("flows", flows))
        columns = ["src", "dst", "stream", "name", "start_s", "end_s"]
        for flow_id, (src, dst, stream, name, start_s, end_s) in enumerate(
                _rows(trace.transfers, columns), start=1):
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


def _counter_texts(names, pids, stamps, arg, values):
    """One JSON object per counter sample, built with C-level joins (most of a trace)."""
    encode = json.dumps
    heads = {}
    for name, pid in dict.fromkeys(zip(names, pids)):
        heads[(name, pid)] = f'{{"ph": "C", "name": {encode(name)}, "pid": {pid}, "ts": '
    middle, tail = f', "args": {{{encode(arg)}: ', "}}"
    numbers = (float, int)
    if all(type(x) in numbers for x in stamps) and all(type(x) in numbers for x in values) \
            and math.isfinite(math.fsum(stamps)) and math.isfinite(math.fsum(values)):
        texts = map(repr, stamps), map(repr, values)
    else:
        texts = map(_number, stamps), map(_number, values)
    return map("".join, zip([heads[key] for key in zip(names, pids)], texts[0],
                            itertools.repeat(middle), texts[1], itertools.repeat(tail)))


def chrome_trace_text(trace) -> str:
    """The Chrome trace JSON document (the same events as :func:`chrome_trace_events`)."""
    parts: list[str] = []
    encode = json.dumps
    for kind, rows in _sections(trace):
        if kind == "dicts":
            if rows:
                parts.append(encode(rows)[1:-1])
        elif kind == "counters":
            parts.extend(_counter_texts(*rows))
        else:
            for ph, flow_id, name, pid, tid, ts in rows:
                bp = '"bp": "e", ' if ph == "f" else ""
                parts.append(f'{{"ph": "{ph}", {bp}"id": {flow_id}, "name": {encode(name)}, '
                             f'"cat": "transfer", "pid": {pid}, "tid": {tid}, "ts": {_number(ts)}}}')
    return '{"traceEvents": [' + ", ".join(parts) + '], "displayTimeUnit": "ms"}'
