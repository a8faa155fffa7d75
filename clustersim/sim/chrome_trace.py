"""Chrome trace JSON in the PyTorch profiler's layout (opens in Perfetto).

One ``pid`` per device (plus one for the fabric's links), one ``tid`` per stream, both named
with ``process_name``/``thread_name`` metadata and ordered with sort indices; complete ("X")
events in microseconds; memory and other counters as "C" events; transfers as flow arrows
("s"/"f"). Spans that overlap on one stream without nesting (possible for dynamic workloads)
are moved to extra lanes ``stream#2``..., because Perfetto requires strict nesting per track.
"""

from __future__ import annotations

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


def _rows(frame, columns):
    """Rows as tuples from column lists (row iteration of arrow-backed frames is slow)."""
    return zip(*(frame[c].tolist() for c in columns))


def chrome_trace_events(trace) -> list[dict]:
    events: list[dict] = []
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
        lane_ends: dict[tuple[str, str], list[float]] = {}
        for i in range(len(ordered)):
            device, stream = columns["device"][i], columns["stream"][i]
            start, end = columns["start_s"][i], columns["end_s"][i]
            ends = lane_ends.setdefault((device, stream), [])
            for lane, lane_end in enumerate(ends):
                if start >= lane_end - 1e-15:
                    ends[lane] = end
                    break
            else:
                ends.append(end)
                lane = len(ends) - 1
            track = stream if lane == 0 else f"{stream}#{lane + 1}"
            args = {}
            for c in label_columns:
                value = columns[c][i]
                if value is not None and not (isinstance(value, float) and math.isnan(value)):
                    args[c] = _jsonable(value)
            if "task_id" in args and has_program:  # optional: lets analysis find critical paths
                deps, collective_id = trace.task_dependencies(args["task_id"])
                args["deps"] = list(deps)
                if collective_id is not None:
                    args["collective_id"] = collective_id
            events.append({"ph": "X", "name": columns["name"][i], "cat": columns["category"][i],
                           "pid": pid_of[device], "tid": tid(device, track), "ts": start * _US,
                           "dur": (end - start) * _US, "args": args})

    for device, tier, time_s, used in _rows(trace.memory, ["device", "tier", "time_s", "used_bytes"]):
        events.append({"ph": "C", "name": f"memory {tier}", "pid": pid_of[device],
                       "ts": time_s * _US, "args": {"GiB": used / 2**30}})
    if not trace.counters.empty:
        for device, name, time_s, value in _rows(trace.counters, ["device", "name", "time_s", "value"]):
            if device not in pid_of:
                pid_of[device] = len(pid_of) + 1
                events.append({"ph": "M", "name": "process_name", "pid": pid_of[device],
                               "args": {"name": device}})
            events.append({"ph": "C", "name": name, "pid": pid_of[device], "ts": time_s * _US,
                           "args": {name: value}})

    if not trace.links.empty:
        fabric_pid = len(pid_of) + 1
        events.append({"ph": "M", "name": "process_name", "pid": fabric_pid,
                       "args": {"name": "fabric links"}})
        for link, time_s, utilisation in _rows(trace.links, ["link", "time_s", "utilisation"]):
            events.append({"ph": "C", "name": f"util {link}", "pid": fabric_pid,
                           "ts": time_s * _US, "args": {"utilisation": utilisation}})

    if not trace.transfers.empty:
        columns = ["src", "dst", "stream", "name", "start_s", "end_s"]
        for flow_id, (src, dst, stream, name, start_s, end_s) in enumerate(
                _rows(trace.transfers, columns), start=1):
            if src not in pid_of or dst not in pid_of:
                continue
            # The arrow leaves the send's own track and lands on the receiver's compute track.
            src_tid = tid_of.get((src, stream), 1)
            dst_tid = tid_of.get((dst, "compute")) or next(
                (t for (d, _), t in tid_of.items() if d == dst), 1)
            events.append({"ph": "s", "id": flow_id, "name": name, "cat": "transfer",
                           "pid": pid_of[src], "tid": src_tid, "ts": start_s * _US})
            events.append({"ph": "f", "bp": "e", "id": flow_id, "name": name, "cat": "transfer",
                           "pid": pid_of[dst], "tid": dst_tid, "ts": end_s * _US})
    return events
