"""A Chrome trace JSON written by clustersim, read back into the tables ``sim.trace`` holds.

Inverse of ``sim/chrome_trace.py``: "X" events -> spans (device from the process name, stream
from the thread name without Perfetto's extra-lane suffix ``#2``, labels from ``args``), "C"
events named ``memory <tier>`` -> memory in bytes, ``util <link>`` on the fabric process ->
link utilisation, other "C" events -> counters, flow arrows -> transfers. Times in seconds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

_US = 1e-6
FABRIC_PROCESS = "fabric links"


@dataclass(frozen=True)
class TraceTables:
    """One run's trace as DataFrames (the columns of ``clustersim.sim.trace.Trace``)."""

    spans: pd.DataFrame      # device, stream, track, name, category, start_s, end_s, labels...
    memory: pd.DataFrame     # device, tier, time_s, used_bytes
    counters: pd.DataFrame   # device, name, time_s, value
    links: pd.DataFrame      # link, time_s, utilisation
    transfers: pd.DataFrame  # src, dst, name, start_s, end_s

    @property
    def makespan_s(self) -> float:
        return float(self.spans["end_s"].max()) if not self.spans.empty else 0.0


def read_chrome_trace(path: str | Path) -> TraceTables:
    events = json.loads(Path(path).read_text())["traceEvents"]
    process = {e["pid"]: e["args"]["name"] for e in events
               if e["ph"] == "M" and e["name"] == "process_name"}
    thread = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
              if e["ph"] == "M" and e["name"] == "thread_name"}
    spans, memory, counters, links, flows = [], [], [], [], {}
    for e in events:
        ph = e["ph"]
        if ph == "X":
            track = thread.get((e["pid"], e["tid"]), str(e["tid"]))
            start = e["ts"] * _US
            spans.append({"device": process.get(e["pid"], str(e["pid"])),
                          "stream": track.split("#", 1)[0], "track": track, "name": e["name"],
                          "category": e.get("cat", ""), "start_s": start,
                          "end_s": start + e["dur"] * _US, **e.get("args", {})})
        elif ph == "C":
            owner = process.get(e["pid"], str(e["pid"]))
            time_s = e["ts"] * _US
            if owner == FABRIC_PROCESS and e["name"].startswith("util "):
                links.append((e["name"][5:], time_s, e["args"]["utilisation"]))
            elif e["name"].startswith("memory "):
                memory.append((owner, e["name"][7:], time_s, e["args"]["GiB"] * 2**30))
            else:
                counters.append((owner, e["name"], time_s, next(iter(e["args"].values()))))
        elif ph in ("s", "f"):
            flows.setdefault(e["id"], {})[ph] = e
    transfers = [(process.get(f["s"]["pid"]), process.get(f["f"]["pid"]), f["s"]["name"],
                  f["s"]["ts"] * _US, f["f"]["ts"] * _US) for f in flows.values()
                 if "s" in f and "f" in f]
    span_table = pd.DataFrame(spans)
    if span_table.empty:
        span_table = pd.DataFrame(columns=["device", "stream", "track", "name", "category",
                                           "start_s", "end_s"])
    else:
        span_table = span_table.sort_values(["start_s", "device", "stream"], kind="stable",
                                            ignore_index=True)
    return TraceTables(
        spans=span_table,
        memory=pd.DataFrame(memory, columns=["device", "tier", "time_s", "used_bytes"]),
        counters=pd.DataFrame(counters, columns=["device", "name", "time_s", "value"]),
        links=pd.DataFrame(links, columns=["link", "time_s", "utilisation"]),
        transfers=pd.DataFrame(transfers, columns=["src", "dst", "name", "start_s", "end_s"]))
