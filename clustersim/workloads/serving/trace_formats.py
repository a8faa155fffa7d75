"""Published LLM request traces, read with their own column names.

* ``azure``: the Azure LLM inference traces (AzurePublicDataset, as published with Splitwise,
  Patel et al., ISCA '24: ``AzureLLMInferenceTrace_conv.csv`` and ``..._code.csv``; the 2024
  week-long traces of DynamoLLM use the same columns). CSV with ``TIMESTAMP`` (a wall-clock
  date-time such as ``2023-11-16 18:15:46.6805900``), ``ContextTokens`` and ``GeneratedTokens``.
* ``burstgpt``: BurstGPT (Wang et al., 2024; github.com/HPMLL/BurstGPT). CSV with ``Timestamp``
  (seconds from the trace start), ``Model``, ``Request tokens``, ``Response tokens``, ``Total
  tokens`` and ``Log Type``. Rows with 0 response tokens are failed requests (the trace's
  README says so); they are skipped, since they generated nothing.
* ``mooncake``: the Mooncake traces (Qin et al., FAST '25; github.com/kvcache-ai/Mooncake).
  JSON lines of ``{"timestamp": ms, "input_length": n, "output_length": m, "hash_ids": [...]}``,
  one hash id per block of ``hash_block_tokens`` prompt tokens (512 in the published traces):
  two requests with the same leading hash ids share that prompt prefix, so real prefix reuse
  drives the radix prefix cache (``radix_cache.py``).

Arrival times are seconds from the first request, times ``time_scale`` (0.5 replays the trace
at twice its rate). Every bad row is a ``ConfigError`` naming the file and the line.
"""

from __future__ import annotations

import csv
import json
import math
import re
from datetime import datetime
from pathlib import Path

import numpy as np

from clustersim.errors import ConfigError
from clustersim.input_files import open_text

FORMATS = ("csv", "azure", "burstgpt", "mooncake")
AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
BURSTGPT_COLUMNS = ("Timestamp", "Model", "Request tokens", "Response tokens", "Total tokens",
                    "Log Type")
MOONCAKE_KEYS = ("timestamp", "input_length", "output_length")


def sniff_format(path: Path) -> str:
    """The format of a trace file from its suffix and first line."""
    if path.suffix in (".jsonl", ".json"):
        return "mooncake"
    if not path.is_file():  # a folder or a device (/dev/zero): the reader says what is wrong
        return "csv"
    try:
        with path.open(newline="") as handle:
            header = next(csv.reader([handle.readline(1 << 16)]), [])
    except (OSError, UnicodeDecodeError):  # the reader then says what is wrong with the file
        return "csv"
    names = {name.strip() for name in header}
    if set(AZURE_COLUMNS) <= names:
        return "azure"
    if {"Timestamp", "Request tokens", "Response tokens"} <= names:
        return "burstgpt"
    return "csv"


class _Rows:
    """Collects parsed rows and raises errors naming the file and line."""

    def __init__(self, file: str):
        self.file = file
        self.arrival: list[float] = []
        self.prompt: list[int] = []
        self.output: list[int] = []
        self.hashes: list[tuple[int, ...]] = []
        self.previous = -math.inf

    def fail(self, line: int, message: str) -> ConfigError:
        return ConfigError(f"line {line}: {message}", file=self.file)

    def count(self, line: int, name: str, text, minimum: int = 1) -> int:
        try:
            value = int(text) if not isinstance(text, float) or text.is_integer() else None
        except (TypeError, ValueError):
            value = None
        if value is None or isinstance(text, bool):
            raise self.fail(line, f"{name} {text!r} is not an integer")
        if value < minimum:
            raise self.fail(line, f"{name} must be >= {minimum}, got {value}")
        return value

    def add(self, line: int, time_s: float, prompt: int, output: int,
            hashes: tuple[int, ...] = ()) -> None:
        if not math.isfinite(time_s):
            raise self.fail(line, f"timestamp {time_s!r} is not finite")
        if time_s < self.previous:
            raise self.fail(line, f"timestamp {time_s:.9g} s is earlier than the previous "
                                  f"line's {self.previous:.9g} s; the trace must be sorted by time")
        self.previous = time_s
        self.arrival.append(time_s)
        self.prompt.append(prompt)
        self.output.append(output)
        self.hashes.append(hashes)


def _csv_header(path: Path, required: tuple[str, ...]):
    """(open handle, csv reader, header), after checking the header has ``required``."""
    # Missing, a folder, binary or not UTF-8: one ConfigError naming the file.
    handle = open_text(path, key="workload.requests.trace", what="request trace (CSV)")
    reader = csv.reader(handle)
    header = [name.strip() for name in next(reader, [])]
    missing = [name for name in required if name not in header]
    if missing:
        handle.close()
        raise ConfigError(f"line 1: missing column(s) {', '.join(missing)}; the header has "
                          f"{header}", file=str(path))
    return handle, reader, header


def _csv_rows(path: Path, required: tuple[str, ...]):
    """(column index by name, iterator of (line number, cells)), after checking the header
    has ``required``."""
    file = str(path)
    handle, reader, header = _csv_header(path, required)

    def rows():
        with handle:
            width = len(header)
            for line, row in enumerate(reader, start=2):
                if len(row) < width:
                    if not row or all(not cell.strip() for cell in row):
                        continue
                    raise ConfigError(f"line {line}: {len(row)} fields, expected {width} (one "
                                      "per header column)", file=file)
                yield line, row

    return {name: header.index(name) for name in header}, rows()


def _csv_table(path: Path, required: tuple[str, ...]):
    """(column index by name, every row), or (columns, None) when some row is short (blank or
    not): then ``_csv_rows`` skips or names it line by line."""
    handle, reader, header = _csv_header(path, required)
    with handle:
        table = list(reader)
    columns = {name: header.index(name) for name in header}
    if min(map(len, table), default=len(header)) < len(header):
        return columns, None
    return columns, table


def _azure_time_s(text: str) -> float:
    """Seconds since the epoch of an Azure trace TIMESTAMP (7 fractional digits are cut to
    the 6 that ``datetime`` reads)."""
    head, dot, fraction = text.strip().partition(".")
    stamp = datetime.fromisoformat(head + (dot + fraction[:6] if dot else ""))
    return stamp.timestamp() if stamp.tzinfo else (stamp - _EPOCH).total_seconds()


_EPOCH = datetime(1970, 1, 1)
# Lines of TIMESTAMPs in the published form (no time zone, at most 7 fractional digits).
_PLAIN_STAMPS = re.compile(r"(?:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d{1,7})?\n)*")


def _azure_times_s(stamps: list[str]) -> list[float]:
    """``_azure_time_s`` of every stamp: all at once by numpy when each has the published form
    (numpy cuts to microseconds as ``_azure_time_s`` does, and divides the same integer
    microseconds by 1e6), else one by one."""
    if _PLAIN_STAMPS.fullmatch("\n".join(stamps) + "\n"):
        try:
            micro_s = np.array(stamps, dtype="datetime64[us]").astype(np.int64)
        except ValueError:          # a date that does not exist: named line by line
            micro_s = None
        if micro_s is not None:
            return (micro_s / 1e6).tolist()
    return [_azure_time_s(text) for text in stamps]


def _integer(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def read_azure(path: Path, rows: _Rows) -> None:
    col, table = _csv_table(path, AZURE_COLUMNS)
    when, context, generated = (col[name] for name in AZURE_COLUMNS)
    if table is not None and _azure_columns(table, when, context, generated, rows):
        return
    # Something is wrong with some line: read line by line to name it.
    col, lines = _csv_rows(path, AZURE_COLUMNS)
    for line, row in lines:
        try:
            time_s = _azure_time_s(row[when])
        except ValueError:
            raise rows.fail(line, f"TIMESTAMP {row[when].strip()!r} is not a date-time like "
                                  "2023-11-16 18:15:46.6805900") from None
        prompt, output = _integer(row[context]), _integer(row[generated])
        if prompt is None or prompt < 1:
            prompt = rows.count(line, "ContextTokens", row[context].strip())
        if output is None or output < 1:
            output = rows.count(line, "GeneratedTokens", row[generated].strip())
        rows.add(line, time_s, prompt, output)


def _azure_columns(table: list[list[str]], when: int, context: int, generated: int,
                   rows: _Rows) -> bool:
    """The whole table at once, as ``read_azure`` reads it line by line: False (and nothing
    added) when any line would be an error, so that the line-by-line reading names it."""
    try:
        times = _azure_times_s([row[when] for row in table])
        prompt = [int(row[context]) for row in table]
        output = [int(row[generated]) for row in table]
    except ValueError:
        return False
    arrival = np.array(times, dtype=float)
    if not (np.isfinite(arrival).all() and (np.diff(arrival) >= 0).all()
            and min(prompt, default=1) >= 1 and min(output, default=1) >= 1):
        return False
    rows.arrival, rows.prompt, rows.output = times, prompt, output
    rows.hashes = [()] * len(times)
    return True


def read_burstgpt(path: Path, rows: _Rows) -> None:
    col, lines = _csv_rows(path, BURSTGPT_COLUMNS)
    when, request, response = col["Timestamp"], col["Request tokens"], col["Response tokens"]
    for line, row in lines:
        try:
            time_s = float(row[when])
        except ValueError:
            raise rows.fail(line, f"Timestamp {row[when].strip()!r} is not a number") from None
        prompt = rows.count(line, "Request tokens", row[request].strip())
        output = rows.count(line, "Response tokens", row[response].strip(), minimum=0)
        if output == 0:          # a failed request: nothing was generated
            continue
        rows.add(line, time_s, prompt, output)


def read_mooncake(path: Path, rows: _Rows, hash_block_tokens: int) -> None:
    with open_text(path, key="workload.requests.trace", what="request trace (JSONL)") as handle:
        for line, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                entry = json.loads(text)
            except json.JSONDecodeError as exc:
                raise rows.fail(line, f"not a JSON object ({exc.msg})") from None
            if not isinstance(entry, dict):
                raise rows.fail(line, "expected a JSON object with timestamp, input_length, "
                                      "output_length and hash_ids")
            missing = [key for key in MOONCAKE_KEYS if key not in entry]
            if missing:
                raise rows.fail(line, f"missing key(s) {', '.join(missing)}")
            stamp = entry["timestamp"]
            if isinstance(stamp, bool) or not isinstance(stamp, (int, float)) or stamp < 0:
                raise rows.fail(line, f"timestamp {stamp!r} is not a number of ms >= 0")
            prompt = rows.count(line, "input_length", entry["input_length"])
            output = rows.count(line, "output_length", entry["output_length"])
            hashes = entry.get("hash_ids", [])
            if not isinstance(hashes, list) or not all(
                    isinstance(h, int) and not isinstance(h, bool) for h in hashes):
                raise rows.fail(line, f"hash_ids must be a list of integers, got {hashes!r}")
            most = -(-prompt // hash_block_tokens)
            if len(hashes) > most:
                raise rows.fail(line, f"{len(hashes)} hash_ids for {prompt} input tokens; blocks "
                                      f"of {hash_block_tokens} tokens give at most {most} (set "
                                      "workload.requests.hash_block_tokens)")
            rows.add(line, stamp / 1e3, prompt, output, tuple(hashes))


def read_published_trace(path: str | Path, trace_format: str, *, hash_block_tokens: int = 512,
                         time_scale: float = 1.0):
    """Requests of a published trace (see the module docstring) as a ``RequestSet``."""
    from clustersim.workloads.serving.requests import RequestSet

    path = Path(path)
    file = str(path)
    if not path.is_file():
        raise ConfigError("trace file not found", file=file, key="workload.requests.trace")
    rows = _Rows(file)
    if trace_format == "azure":
        read_azure(path, rows)
    elif trace_format == "burstgpt":
        read_burstgpt(path, rows)
    elif trace_format == "mooncake":
        read_mooncake(path, rows, hash_block_tokens)
    else:
        raise ConfigError(f"unknown trace format {trace_format!r}; expected one of {FORMATS}",
                          key="workload.requests.trace_format")
    if not rows.arrival:
        raise ConfigError("the trace has no requests", file=file)
    arrival = (np.array(rows.arrival, dtype=float) - rows.arrival[0]) * time_scale
    n = len(arrival)
    hashes = rows.hashes if any(rows.hashes) else None
    return RequestSet(arrival, np.array(rows.prompt, dtype=np.int64),
                      np.array(rows.output, dtype=np.int64), np.full(n, -1, dtype=np.int64),
                      np.zeros(n, dtype=np.int64), block_hashes=hashes,
                      hash_block_tokens=hash_block_tokens if hashes else 0)
