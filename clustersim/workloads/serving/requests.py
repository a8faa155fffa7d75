"""Requests: when they arrive and how long they are, drawn from distributions or read from a trace.

The ``requests:`` section of a serving workload::

    requests:
      count: 1000
      arrival: {kind: poisson, rate: 8}          # requests/s; or gamma (rate, cv), burst, closed
      prompt_tokens: {kind: lognormal, mean: 1024, sigma: 0.8, min: 16, max: 8192}
      output_tokens: 256                          # a bare number is a fixed length
      prefix: {groups: 8, tokens: 2048, fraction: 0.5}   # optional shared system prompts

or, from a trace::

    requests:
      trace: traces/chat.csv      # arrival_time (s), prompt_tokens, output_tokens
                                  # [, prefix_id [, prefix_tokens]]

or a published trace read with its own columns (``trace_formats.py``): the Azure LLM inference
traces, BurstGPT, or Mooncake's JSONL with block hash ids (``trace_format`` names it, else the
file's suffix and header decide; ``time_scale`` stretches or compresses its arrivals)::

    requests:
      trace: AzureLLMInferenceTrace_conv.csv
      time_scale: 0.5             # twice the trace's rate

Arrivals: ``poisson`` (exponential gaps), ``gamma`` (gamma gaps with coefficient of variation
``cv``: cv > 1 is burstier than Poisson), ``burst`` (all at ``at``), ``closed`` (``users``
clients, each sending its next request ``think_time`` after its previous one ends, exponentially
distributed when ``think: exponential``). With a shared prefix, ``prompt_tokens`` is the part
after the prefix and the prompt is ``prefix tokens + that``. All randomness comes from the
generator passed in.
"""

from __future__ import annotations

import csv
import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Union

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from clustersim.errors import ConfigError
from clustersim.units import Seconds

_STRICT = ConfigDict(extra="forbid", frozen=True)


# -- length distributions ---------------------------------------------------------------------

class Fixed(BaseModel):
    model_config = _STRICT
    kind: Literal["fixed"] = "fixed"
    tokens: int = Field(ge=1, description="every request has this many tokens")

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.full(n, self.tokens, dtype=np.int64)


class Uniform(BaseModel):
    model_config = _STRICT
    kind: Literal["uniform"] = "uniform"
    min: int = Field(ge=1, description="smallest length (inclusive)")
    max: int = Field(ge=1, description="largest length (inclusive)")

    @model_validator(mode="after")
    def _ordered(self) -> "Uniform":
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        return self

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.integers(self.min, self.max + 1, size=n, dtype=np.int64)


class LogNormal(BaseModel):
    model_config = _STRICT
    kind: Literal["lognormal"] = "lognormal"
    mean: float = Field(gt=0, description="mean length before clipping (tokens)")
    sigma: float = Field(0.8, ge=0, description="sigma of the underlying normal (spread)")
    min: int = Field(1, ge=1, description="lengths below are clipped up to this")
    max: int | None = Field(None, ge=1, description="lengths above are clipped down to this")

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        mu = math.log(self.mean) - self.sigma ** 2 / 2
        values = np.rint(rng.lognormal(mu, self.sigma, size=n)).astype(np.int64)
        return np.clip(values, self.min, self.max if self.max is not None else None)


class Exponential(BaseModel):
    model_config = _STRICT
    kind: Literal["exponential"] = "exponential"
    mean: float = Field(gt=0, description="mean length before clipping (tokens)")
    min: int = Field(1, ge=1, description="lengths below are clipped up to this")
    max: int | None = Field(None, ge=1, description="lengths above are clipped down to this")

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        values = np.rint(rng.exponential(self.mean, size=n)).astype(np.int64)
        return np.clip(values, self.min, self.max if self.max is not None else None)


def _bare_number_is_fixed(value):
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return {"kind": "fixed", "tokens": value}
    return value


Length = Annotated[Union[Fixed, Uniform, LogNormal, Exponential], Field(discriminator="kind"),
                   BeforeValidator(_bare_number_is_fixed)]


# -- arrivals -----------------------------------------------------------------------------------

class Poisson(BaseModel):
    model_config = _STRICT
    kind: Literal["poisson"] = "poisson"
    rate: float = Field(gt=0, description="mean arrivals per second")

    def times(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.cumsum(rng.exponential(1.0 / self.rate, size=n))


class Gamma(BaseModel):
    model_config = _STRICT
    kind: Literal["gamma"] = "gamma"
    rate: float = Field(gt=0, description="mean arrivals per second")
    cv: float = Field(gt=0, description="coefficient of variation of the gaps (1 = Poisson; "
                                        "larger is burstier)")

    def times(self, rng: np.random.Generator, n: int) -> np.ndarray:
        shape = 1.0 / self.cv ** 2
        return np.cumsum(rng.gamma(shape, 1.0 / (self.rate * shape), size=n))


class Burst(BaseModel):
    model_config = _STRICT
    kind: Literal["burst"] = "burst"
    at: Seconds = Field(0.0, description="time at which every request arrives")

    def times(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.full(n, float(self.at))


class Closed(BaseModel):
    model_config = _STRICT
    kind: Literal["closed"] = "closed"
    users: int = Field(ge=1, description="concurrent clients; each has one request in flight")
    think_time: Seconds = Field(0.0, description="pause between a reply and the next request")
    think: Literal["fixed", "exponential"] = Field(
        "fixed", description="think time: exactly think_time, or exponential with that mean")
    ramp: Seconds = Field(0.0, description="first requests spread evenly over [0, ramp)")
    requests_per_user: int | None = Field(
        None, ge=1, description="requests in all = users x this (instead of requests.count)")

    def times(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """First request of each user; the others arrive when the engine says (NaN here)."""
        times = np.full(n, np.nan)
        first = min(n, self.users)
        times[:first] = np.arange(first) * (float(self.ramp) / first)
        return times

    def think_s(self, rng: np.random.Generator) -> float:
        if self.think == "fixed" or self.think_time == 0:
            return float(self.think_time)
        return float(rng.exponential(self.think_time))


Arrival = Annotated[Union[Poisson, Gamma, Burst, Closed], Field(discriminator="kind")]


class SharedPrefix(BaseModel):
    model_config = _STRICT
    groups: int = Field(ge=1, description="distinct shared prefixes (system prompts)")
    tokens: int = Field(ge=1, description="tokens of each shared prefix")
    fraction: float = Field(1.0, ge=0, le=1, description="fraction of requests with a prefix")


class RequestsConfig(BaseModel):
    model_config = _STRICT

    count: int | None = Field(None, ge=1, description="number of requests (synthetic); with a "
                                                      "trace, read at most this many")
    arrival: Arrival = Field(default_factory=lambda: Poisson(rate=1.0),
                             description="arrival process (kind: poisson | gamma | burst | closed)")
    prompt_tokens: Length = Field(default_factory=lambda: Fixed(tokens=512),
                                  description="prompt length (after the shared prefix, if any)")
    output_tokens: Length = Field(default_factory=lambda: Fixed(tokens=128),
                                  description="output length (tokens generated, >= 1)")
    prefix: SharedPrefix | None = Field(None, description="shared prompt prefixes (synthetic)")
    trace: str | None = Field(None, description="request trace file: our CSV (arrival_time, "
                                                "prompt_tokens, output_tokens[, prefix_id[, "
                                                "prefix_tokens]]) or a published format (see "
                                                "trace_format)")
    trace_format: Literal["csv", "azure", "burstgpt", "mooncake"] | None = Field(
        None, description="format of the trace: csv (ours), azure (AzurePublicDataset LLM "
                          "traces), burstgpt, mooncake (JSONL with hash_ids); default: from the "
                          "file's suffix and header")
    hash_block_tokens: int = Field(512, ge=1, description="mooncake: prompt tokens per hash id "
                                                          "(512 in the published traces)")
    time_scale: float = Field(1.0, gt=0, description="published traces: arrival times are "
                                                     "multiplied by this (0.5 = twice the rate)")
    prefix_tokens: int | None = Field(None, ge=1, description="shared-prefix length for a trace "
                                                              "with prefix_id but no prefix_tokens")

    @model_validator(mode="after")
    def _source(self) -> "RequestsConfig":
        per_user = isinstance(self.arrival, Closed) and self.arrival.requests_per_user
        if per_user and self.count is not None:
            raise ValueError("give either `count` or `arrival.requests_per_user`, not both")
        if self.trace is None and self.count is None and not per_user:
            raise ValueError("give either `count` (synthetic requests) or `trace` (a CSV file)")
        if self.trace is not None and isinstance(self.arrival, Closed):
            raise ValueError("a trace fixes its arrival times; closed-loop arrivals need "
                             "synthetic requests (count)")
        return self

    def load(self, rng: np.random.Generator) -> "RequestSet":
        if self.trace is not None:
            requests = self._read_trace()
            return requests.head(self.count) if self.count else requests
        return self.synthesise(rng)

    def _read_trace(self) -> "RequestSet":
        path = Path(self.trace)
        try:
            stat = path.stat()
        except OSError:
            stamp = None            # missing: the reader says so
        else:
            stamp = (stat.st_mtime_ns, stat.st_size)
        return _read_trace_cached(str(path), stamp, self.trace_format, self.prefix_tokens,
                                  self.hash_block_tokens, self.time_scale)

    @property
    def total(self) -> int | None:
        """Synthetic requests in all (None for a trace without ``count``)."""
        if isinstance(self.arrival, Closed) and self.arrival.requests_per_user:
            return self.arrival.users * self.arrival.requests_per_user
        return self.count

    def synthesise(self, rng: np.random.Generator) -> "RequestSet":
        n = int(self.total)
        arrival = self.arrival.times(rng, n)
        prompt = self.prompt_tokens.draw(rng, n)
        output = self.output_tokens.draw(rng, n)
        prefix_id = np.full(n, -1, dtype=np.int64)
        prefix_tokens = np.zeros(n, dtype=np.int64)
        if self.prefix is not None:
            shared = rng.random(n) < self.prefix.fraction
            prefix_id[shared] = rng.integers(0, self.prefix.groups, size=int(shared.sum()))
            prefix_tokens[shared] = self.prefix.tokens
            prompt = prompt + prefix_tokens
        closed = self.arrival if isinstance(self.arrival, Closed) else None
        return RequestSet(arrival, prompt, output, prefix_id, prefix_tokens, closed=closed)


@dataclass
class RequestSet:
    """Requests as columns (one entry per request, in arrival order; NaN arrival = closed loop
    decides). ``prefix_id`` is -1 for a request without a shared prefix."""

    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    prefix_id: np.ndarray
    prefix_tokens: np.ndarray
    closed: Closed | None = None
    # Per request, the hash ids of its prompt's blocks of ``hash_block_tokens`` tokens (the
    # Mooncake trace format), or None: equal leading ids mean a shared prefix.
    block_hashes: list[tuple[int, ...]] | None = None
    hash_block_tokens: int = 0

    def __len__(self) -> int:
        return len(self.prompt_tokens)

    def head(self, n: int) -> "RequestSet":
        return RequestSet(self.arrival_s[:n], self.prompt_tokens[:n], self.output_tokens[:n],
                          self.prefix_id[:n], self.prefix_tokens[:n], self.closed,
                          self.block_hashes[:n] if self.block_hashes is not None else None,
                          self.hash_block_tokens)


@functools.lru_cache(maxsize=4)
def _read_trace_cached(path: str, stamp, trace_format: str | None,
                       default_prefix_tokens: int | None, hash_block_tokens: int,
                       time_scale: float) -> RequestSet:
    """A trace file read once per (path, modification time, size, options): an experiment
    validates every run's config before running it, and large published traces take a while
    to parse. Callers must not modify the arrays (the deployment copies what it changes)."""
    from clustersim.workloads.serving.trace_formats import read_published_trace, sniff_format

    kind = trace_format or sniff_format(Path(path))
    if kind == "csv":
        return read_trace(path, default_prefix_tokens=default_prefix_tokens)
    return read_published_trace(path, kind, hash_block_tokens=hash_block_tokens,
                                time_scale=time_scale)


# -- CSV traces -------------------------------------------------------------------------------

REQUIRED_COLUMNS = ("arrival_time", "prompt_tokens", "output_tokens")
OPTIONAL_COLUMNS = ("prefix_id", "prefix_tokens")


def read_trace(path: str | Path, *, default_prefix_tokens: int | None = None) -> RequestSet:
    """Read a request trace; every problem is a ConfigError naming the file and the line.

    Columns: ``arrival_time`` in seconds, non-decreasing; ``prompt_tokens`` >= 1;
    ``output_tokens`` >= 1; optional ``prefix_id`` (any text; empty = none) and
    ``prefix_tokens`` (1..prompt_tokens, needed where prefix_id is set unless
    ``default_prefix_tokens`` is given).
    """
    path = Path(path)
    file = str(path)
    from clustersim.input_files import open_text

    # Missing, a folder, binary or not UTF-8: one ConfigError. A relative path in an experiment
    # is relative to the experiment file's folder (resolved when the experiment is loaded).
    with open_text(path, key="workload.requests.trace", what="request trace (CSV)") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise ConfigError("line 1: the trace is empty; expected a header with "
                              f"{', '.join(REQUIRED_COLUMNS)}", file=file)
        header = [name.strip() for name in header]
        missing = [name for name in REQUIRED_COLUMNS if name not in header]
        if missing:
            raise ConfigError(f"line 1: missing column(s) {', '.join(missing)}; the header has "
                              f"{header}, expected {', '.join(REQUIRED_COLUMNS)} and optionally "
                              f"{', '.join(OPTIONAL_COLUMNS)}", file=file)
        unknown = [name for name in header if name not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
        if unknown:
            raise ConfigError(f"line 1: unknown column(s) {', '.join(unknown)}; expected "
                              f"{', '.join(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)}", file=file)
        col = {name: header.index(name) for name in header}
        rows = _parse_rows(reader, col, file, default_prefix_tokens)
    if not rows[0]:
        raise ConfigError("the trace has a header but no requests", file=file)
    arrival, prompt, output, prefix_names, prefix_tokens = rows
    ids: dict[str, int] = {}
    prefix_id = np.array([-1 if name is None else ids.setdefault(name, len(ids))
                          for name in prefix_names], dtype=np.int64)
    return RequestSet(np.array(arrival, dtype=float), np.array(prompt, dtype=np.int64),
                      np.array(output, dtype=np.int64), prefix_id,
                      np.array(prefix_tokens, dtype=np.int64))


def _parse_rows(reader, col: dict[str, int], file: str, default_prefix_tokens: int | None):
    arrival: list[float] = []
    prompt: list[int] = []
    output: list[int] = []
    prefix_names: list[str | None] = []
    prefix_tokens: list[int] = []
    previous = -math.inf
    for line, row in enumerate(reader, start=2):
        if not row or all(not cell.strip() for cell in row):
            continue

        def cell(name: str) -> str:
            index = col.get(name)
            return row[index].strip() if index is not None and index < len(row) else ""

        def fail(message: str):
            return ConfigError(f"line {line}: {message}", file=file)

        if len(row) < len(col):
            raise fail(f"{len(row)} fields, expected {len(col)} (one per header column)")
        try:
            time_s = float(cell("arrival_time"))
        except ValueError:
            raise fail(f"arrival_time {cell('arrival_time')!r} is not a number") from None
        if not math.isfinite(time_s) or time_s < 0:
            raise fail(f"arrival_time must be a finite number >= 0, got {cell('arrival_time')!r}")
        if time_s < previous:
            raise fail(f"arrival_time {time_s} is earlier than the previous line's {previous}; "
                       "the trace must be sorted by arrival time")
        previous = time_s
        lengths = {}
        for name in ("prompt_tokens", "output_tokens"):
            text = cell(name)
            try:
                value = int(text)
            except ValueError:
                raise fail(f"{name} {text!r} is not an integer") from None
            if value < 1:
                raise fail(f"{name} must be >= 1, got {value}")
            lengths[name] = value
        name = cell("prefix_id") or None
        shared = 0
        if name is not None:
            text = cell("prefix_tokens")
            if text:
                try:
                    shared = int(text)
                except ValueError:
                    raise fail(f"prefix_tokens {text!r} is not an integer") from None
            elif default_prefix_tokens is not None:
                shared = default_prefix_tokens
            else:
                raise fail("prefix_id is set but prefix_tokens is not (add the column, or set "
                           "workload.requests.prefix_tokens)")
            if not 1 <= shared <= lengths["prompt_tokens"]:
                raise fail(f"prefix_tokens must be between 1 and prompt_tokens "
                           f"({lengths['prompt_tokens']}), got {shared}")
        arrival.append(time_s)
        prompt.append(lengths["prompt_tokens"])
        output.append(lengths["output_tokens"])
        prefix_names.append(name)
        prefix_tokens.append(shared)
    return arrival, prompt, output, prefix_names, prefix_tokens
