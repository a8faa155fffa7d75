"""Readers of measurements taken elsewhere: kernel-timing tables, PyTorch profiler (Kineto)
traces, and NCCL timings (nccl-tests output or a CSV).

Every reader returns plain records and checks its file before anything is fitted: a missing
column, a zero or negative time, an unknown op kind or dtype is one :class:`ConfigError` naming
the file, the line and the column (``path:line 7, column 'time_us': ...``).

Kernel table (CSV, ``#`` lines are comments), one row per kernel::

    kind,dtype,m,n,k,batch,elements,inputs,outputs,time_us,name
    matmul,bf16,4096,12288,4096,1,,,,1911.0,qkv
    elementwise,bf16,,,,,16777216,2,1,95.0,residual

``kind`` is an op kind (matmul, attention, elementwise, norm, softmax, ...); ``dtype`` one of
clustersim's dtypes (fp16, bf16, fp32, ...; ``float16``/``half`` and ``bfloat16`` are accepted);
the time is one of ``time_s``, ``time_ms`` or ``time_us``; shape columns by kind: matmul
``m, n, k`` (``batch`` optional), attention ``batch, heads, q_len, kv_len, head_dim``
(``kv_heads``, ``causal`` optional), every other kind ``elements`` (``inputs``, ``outputs``
optional, default 1). Other columns are ignored.

NCCL CSV: ``collective,gpus,size_bytes`` and a time column. nccl-tests output: the
out-of-place time of each row, the collective from its ``Collective test starting:`` line or the
file name, the GPU count from its ``Rank`` lines (or ``gpus=``).
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path

from clustersim import ops
from clustersim.errors import ConfigError
from clustersim.ops import DTYPE_BYTES, Op, OpKind

DTYPE_ALIASES = {"float16": "fp16", "half": "fp16", "bfloat16": "bf16", "float32": "fp32",
                 "float": "fp32", "float64": "fp64", "double": "fp64", "float8": "fp8"}
TIME_COLUMNS = {"time_s": 1.0, "time_ms": 1e-3, "time_us": 1e-6}
COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "broadcast", "reduce", "all_to_all")


@dataclass(frozen=True)
class KernelRecord:
    op: Op
    time_s: float
    name: str = ""
    split: str | None = None      # "fit" | "held_out" when the file says; else the fitter picks


@dataclass(frozen=True)
class CollectiveRecord:
    collective: str
    gpus: int
    size_bytes: float
    time_s: float
    split: str | None = None


def _fail(path: Path, line: int, column: str | None, message: str) -> ConfigError:
    key = f"line {line}" + (f", column {column!r}" if column else "")
    return ConfigError(message, file=str(path), key=key)


def _rows(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header and (line number, row) of a CSV whose ``#`` lines are comments."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read measurements ({exc.strerror or exc})", file=str(path)) from None
    numbered = [(i + 1, line) for i, line in enumerate(text.splitlines())
                if line.strip() and not line.lstrip().startswith("#")]
    if not numbered:
        raise ConfigError("no rows (only comments or empty lines)", file=str(path))
    header_line, header = numbered[0]
    columns = [c.strip() for c in next(csv.reader([header]))]
    rows = []
    for number, line in numbered[1:]:
        values = next(csv.reader([line]))
        if len(values) != len(columns):
            raise _fail(path, number, None, f"{len(values)} values but the header (line "
                                            f"{header_line}) has {len(columns)} columns")
        rows.append((number, {c: v.strip() for c, v in zip(columns, values)}))
    return columns, rows


def _require(path: Path, columns: list[str], needed: tuple[str, ...]) -> None:
    for column in needed:
        if column not in columns:
            raise _fail(path, 1, column, f"missing column; the header has {columns}")


def _time_column(path: Path, columns: list[str]) -> str:
    found = [c for c in TIME_COLUMNS if c in columns]
    if not found:
        raise _fail(path, 1, "time_us", f"missing column: give one of {list(TIME_COLUMNS)}; "
                                         f"the header has {columns}")
    return found[0]


def _number(path: Path, line: int, row: dict, column: str, *, positive: bool = True,
            default: float | None = None) -> float:
    raw = row.get(column, "")
    if raw == "":
        if default is not None:
            return default
        raise _fail(path, line, column, "missing value")
    try:
        value = float(raw)
    except ValueError:
        raise _fail(path, line, column, f"expected a number, got {raw!r}") from None
    if positive and not value > 0:
        raise _fail(path, line, column, f"must be > 0, got {raw}")
    return value


def _integer(path: Path, line: int, row: dict, column: str, default: int | None = None) -> int:
    value = _number(path, line, row, column, default=default)
    if value != int(value):
        raise _fail(path, line, column, f"expected a whole number, got {row[column]!r}")
    return int(value)


def normalise_dtype(raw: str) -> str | None:
    name = raw.strip().lower()
    name = DTYPE_ALIASES.get(name, name)
    return name if name in DTYPE_BYTES else None


def _dtype(path: Path, line: int, row: dict) -> str:
    dtype = normalise_dtype(row.get("dtype", ""))
    if dtype is None:
        raise _fail(path, line, "dtype", f"unknown dtype {row.get('dtype')!r}; expected one of "
                                         f"{sorted(DTYPE_BYTES)}")
    return dtype


def _kind(path: Path, line: int, row: dict) -> OpKind:
    raw = row.get("kind", "").strip().lower()
    try:
        kind = OpKind(raw)
    except ValueError:
        kind = None
    if kind is None or kind.is_communication:
        valid = [k.value for k in OpKind if k.is_compute]
        raise _fail(path, line, "kind", f"unknown op kind {raw!r}; expected one of {valid} "
                                        "(collectives go in an NCCL file)")
    return kind


def _kernel_op(path: Path, line: int, row: dict, kind: OpKind, dtype: str) -> Op:
    if kind is OpKind.MATMUL:
        m, n, k = (_integer(path, line, row, c) for c in ("m", "n", "k"))
        return ops.matmul(m, n, k, batch=_integer(path, line, row, "batch", 1), dtype=dtype)
    if kind is OpKind.ATTENTION:
        batch, heads, q_len, kv_len, d = (_integer(path, line, row, c) for c in
                                          ("batch", "heads", "q_len", "kv_len", "head_dim"))
        kv_heads = _integer(path, line, row, "kv_heads", heads)
        causal = row.get("causal", "true").strip().lower() in ("1", "true", "yes")
        return ops.attention(batch, heads, kv_heads, q_len, kv_len, d, dtype=dtype, causal=causal)
    elements = _integer(path, line, row, "elements")
    inputs = _integer(path, line, row, "inputs", 1)
    outputs = int(_number(path, line, row, "outputs", positive=False, default=1))
    return ops.elementwise(elements, inputs=inputs, outputs=outputs, dtype=dtype, kind=kind)


def read_kernel_table(path: str | Path) -> list[KernelRecord]:
    path = Path(path)
    columns, rows = _rows(path)
    _require(path, columns, ("kind", "dtype"))
    time_column = _time_column(path, columns)
    records = []
    for line, row in rows:
        kind, dtype = _kind(path, line, row), _dtype(path, line, row)
        time_s = _number(path, line, row, time_column) * TIME_COLUMNS[time_column]
        records.append(KernelRecord(_kernel_op(path, line, row, kind, dtype), time_s,
                                    row.get("name", ""), _split(path, line, row)))
    return records


def _split(path: Path, line: int, row: dict) -> str | None:
    value = row.get("split", "").strip().lower()
    if value in ("", "fit", "held_out"):
        return value or None
    raise _fail(path, line, "split", f"expected fit or held_out, got {value!r}")


def read_nccl_csv(path: str | Path) -> list[CollectiveRecord]:
    path = Path(path)
    columns, rows = _rows(path)
    _require(path, columns, ("collective", "gpus", "size_bytes"))
    time_column = _time_column(path, columns)
    records = []
    for line, row in rows:
        collective = row["collective"].strip().lower()
        if collective not in COLLECTIVES:
            raise _fail(path, line, "collective", f"unknown collective {collective!r}; expected "
                                                  f"one of {list(COLLECTIVES)}")
        gpus = _integer(path, line, row, "gpus")
        if gpus < 2:
            raise _fail(path, line, "gpus", f"a collective needs at least 2 GPUs, got {gpus}")
        records.append(CollectiveRecord(collective, gpus, _number(path, line, row, "size_bytes"),
                                        _number(path, line, row, time_column)
                                        * TIME_COLUMNS[time_column]))
    return records


_TEST_NAME = re.compile(r"Collective test starting:\s*(\w+?)_perf")
_RANK = re.compile(r"^#\s*Rank\s+\d+")


def read_nccl_tests(path: str | Path, *, gpus: int | None = None,
                    collective: str | None = None) -> list[CollectiveRecord]:
    """Rows of an nccl-tests ``*_perf`` output (out-of-place time, us)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read measurements ({exc.strerror or exc})", file=str(path)) from None
    ranks = sum(1 for line in lines if _RANK.match(line))
    for line in lines:
        found = _TEST_NAME.search(line)
        if found and collective is None:
            collective = found.group(1)
    if collective is None:
        collective = next((c for c in COLLECTIVES if c in path.name.replace("-", "_")), None)
    if collective not in COLLECTIVES:
        raise ConfigError("cannot tell which collective this nccl-tests output measured (no "
                          "'Collective test starting' line, no collective in the file name); "
                          "rename it e.g. all_reduce_perf.txt or convert it to a CSV",
                          file=str(path))
    gpus = gpus or ranks
    if not gpus or gpus < 2:
        raise ConfigError("no '#  Rank' lines to count the GPUs; give the count (gpus=N)",
                          file=str(path))
    records = []
    for number, line in enumerate(lines, start=1):
        tokens = line.split()
        if not tokens or line.lstrip().startswith("#") or not tokens[0].isdigit():
            continue
        # size count type redop [root] time algbw busbw #wrong ...
        offset = 5 if len(tokens) >= 5 and re.fullmatch(r"-?\d+", tokens[4]) else 4
        if len(tokens) <= offset:
            raise _fail(path, number, "time", "row has no out-of-place time")
        try:
            time_us = float(tokens[offset])
        except ValueError:
            raise _fail(path, number, "time", f"expected a time in us, got {tokens[offset]!r}") from None
        if not time_us > 0:
            raise _fail(path, number, "time", f"must be > 0, got {tokens[offset]}")
        size = float(tokens[0])
        if size > 0:
            records.append(CollectiveRecord(collective, gpus, size, time_us * 1e-6))
    if not records:
        raise ConfigError("no result rows found", file=str(path))
    return records


def is_kineto(path: Path) -> bool:
    return path.suffix == ".json"


def is_nccl_csv(path: Path) -> bool:
    if path.suffix != ".csv":
        return False
    columns, _ = _rows(path)
    return "collective" in columns


def read_kineto(path: str | Path) -> list[KernelRecord]:
    """GEMM and elementwise kernels of a PyTorch profiler trace recorded with shapes."""
    from clustersim.validate.kineto import kernel_records

    path = Path(path)
    try:
        trace = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"not a readable Kineto JSON trace ({exc})", file=str(path)) from None
    return kernel_records(trace, str(path))
