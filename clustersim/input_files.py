"""One reader for every file a user hands to clustersim: experiments, profiles, request traces.

Whatever is wrong with the file itself (missing, a directory, unreadable, binary, not UTF-8,
too large, YAML nested too deep) becomes one ``ConfigError`` naming the file, the key that named
it and what to do, instead of a Python traceback. Paths written inside a YAML file are read
relative to that file's folder (as docker-compose, GitHub Actions and most tools do), so an
experiment runs the same from any working directory.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import yaml

from clustersim.errors import ConfigError

# Larger inputs are refused rather than read: an experiment or profile is kilobytes, a request
# trace a few megabytes; a gigabyte would exhaust memory long before it said anything useful.
MAX_FILE_BYTES = 256 * 2**20
# Deeper YAML is refused: PyYAML's composer recurses once per level and overflows the stack at
# about a thousand; no clustersim file needs more than a handful.
MAX_YAML_DEPTH = 64
# Keys whose values are paths, resolved against the folder of the YAML file that holds them.
# The profile is resolved against the same folder by ClusterConfig.build (its base_dir), so
# only the other path keys are rewritten here (rewriting both would join the folder twice).
PATH_KEYS = ("workload.requests.trace",)
# libyaml's event parser when present: the depth check then costs a fraction of the load.
_EVENT_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_text(path: str | Path, *, key: str | None = None, what: str = "file") -> str:
    """The file's text (UTF-8), or a ConfigError naming the file (and ``key``, the YAML key that
    named it) and the problem."""
    path = Path(path)
    file = str(path)

    def fail(problem: str) -> ConfigError:
        if key:  # named by a key of another file, which is what the error will point at
            return ConfigError(f"{what} {file}: {problem}", key=key)
        return ConfigError(problem, file=file)

    try:
        if path.is_dir():
            raise fail(f"is a folder; expected a {what}")
        if path.is_char_device():  # /dev/zero never ends, /dev/stdin waits on the terminal
            raise fail(f"is a device, not a file; expected a {what}")
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise fail(f"{what} not found") from None
    except PermissionError:
        raise fail(f"cannot read the {what}: permission denied") from None
    except OSError as exc:
        raise fail(f"cannot read the {what}: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise fail(f"larger than {MAX_FILE_BYTES // 2**20} MiB; expected a {what} of text")
    if b"\x00" in data:
        raise fail(f"is a binary file (it holds NUL bytes); expected a {what} of UTF-8 text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise fail(f"line {line}: byte 0x{data[exc.start]:02x} is not UTF-8; save the {what} "
                   "as UTF-8") from None


def open_text(path: str | Path, *, key: str | None = None, what: str = "file") -> io.StringIO:
    """The file as a text stream (for csv readers), checked like :func:`read_text`."""
    return io.StringIO(read_text(path, key=key, what=what), newline="")


def check_yaml_depth(text: str, *, file: str | None, limit: int = MAX_YAML_DEPTH) -> None:
    """Refuse YAML nested deeper than ``limit``, before PyYAML's recursive composer sees it."""
    depth = 0
    try:
        for event in yaml.parse(text, Loader=_EVENT_LOADER):
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > limit:
                    line = event.start_mark.line + 1 if event.start_mark else "?"
                    raise ConfigError(f"nesting deeper than {limit} levels; clustersim files "
                                      "need only a few", file=file, key=f"line {line}")
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
    except yaml.YAMLError as exc:
        if "nesting depth" in str(exc):  # libyaml's own limit (1000 levels)
            mark = getattr(exc, "problem_mark", None)
            raise ConfigError(f"nesting deeper than {limit} levels; clustersim files need only "
                              "a few", file=file,
                              key=f"line {mark.line + 1}" if mark else None) from None
        return  # the loader reports other syntax errors with their line


def resolve_paths(raw: dict[str, Any], base_dir: str | Path) -> dict[str, Any]:
    """``raw`` with every relative path under :data:`PATH_KEYS` (and sweeps over them) made
    relative to ``base_dir``, the folder of the YAML file. Absolute paths are kept."""
    base = Path(base_dir)

    def resolve(value: Any) -> Any:
        if not isinstance(value, str) or not value:
            return value
        expanded = os.path.expanduser(value)
        return expanded if os.path.isabs(expanded) else str(base / expanded)

    for key in PATH_KEYS:
        *parents, leaf = key.split(".")
        node: Any = raw
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node:
            node[leaf] = resolve(node[leaf])
        sweep = raw.get("sweep")
        if isinstance(sweep, dict) and isinstance(sweep.get(key), list):
            sweep[key] = [resolve(v) for v in sweep[key]]
    return raw


def check_run_name(name: str) -> str:
    """An experiment name that is a plain folder name, so that ``runs/<name>`` stays in runs/
    (a pydantic validator: raises ValueError naming what to change)."""
    bad = [c for c in ("/", "\\") if c in name]
    if bad or name.strip() in ("", ".", "..") or any(ord(c) < 32 for c in name) or len(name) > 128:
        raise ValueError(f"{name!r:.80} is not a plain folder name: the default output is "
                         "runs/<name>; use letters, digits, '-', '_' and '.' (no '/' or '..'), "
                         "or pass --out to choose a folder")
    return name
