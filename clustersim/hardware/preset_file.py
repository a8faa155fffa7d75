"""What every preset YAML file shares: sources (id -> title, url), figures that cite them,
strict parsing whose errors name the file and key path, and name matching for look-ups.

``presets.py`` (GPUs, nodes) and ``accelerator_presets.py`` (systolic arrays, PIM, RDUs) read
their own entries on top of ``SourcedReader``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import yaml

from clustersim.errors import ConfigError


@dataclass(frozen=True)
class Source:
    """A document that figures come from."""

    id: str
    title: str
    url: str


@dataclass(frozen=True)
class Figure:
    """One preset figure: its SI value, the text as written in the YAML, and its source."""

    value: Any
    written: str
    source: Source
    note: str = ""


def nearest(word: str, options) -> str:
    """' (did you mean X?)' for the closest option, or '' when none is close."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def normalise(name: str) -> str:
    """Look-up form of a preset name: case, spaces and underscores do not matter."""
    return "-".join(name.strip().lower().replace("_", " ").split())


# libyaml's parser when PyYAML has it (the same data, ten times faster: the built-in preset files
# are read on every run).
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class SourcedReader:
    """Parses a preset file's YAML and its ``sources:`` table; subclasses read the entries."""

    def __init__(self, text: str, file: str):
        self.file = file
        try:
            self.data = yaml.load(text, Loader=_LOADER)
        except yaml.YAMLError as exc:
            raise ConfigError(f"not valid YAML: {exc}", file=file) from None
        self.sources: dict[str, Source] = {}

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(message, file=self.file, key=key)

    def check_top_level(self, allowed: list[str], expected: str) -> None:
        if not isinstance(self.data, dict):
            raise self.fail("", f"expected a mapping with keys {expected}")
        for key in self.data:
            if key not in allowed:
                raise self.fail(str(key), f"unknown top-level key{nearest(str(key), allowed)}; "
                                          f"expected {expected}")
        self.sources = self._sources(self.data.get("sources") or {})

    def _sources(self, raw: Any) -> dict[str, Source]:
        if not isinstance(raw, dict):
            raise self.fail("sources", "expected a mapping of id -> {title, url}")
        sources = {}
        for sid, doc in raw.items():
            key = f"sources.{sid}"
            if not isinstance(doc, dict) or set(doc) != {"title", "url"}:
                raise self.fail(key, f"a source needs exactly 'title' and 'url', got {doc!r}")
            if not all(isinstance(doc[k], str) and doc[k].strip() for k in ("title", "url")):
                raise self.fail(key, "title and url must be non-empty strings")
            sources[str(sid)] = Source(str(sid), doc["title"].strip(), doc["url"].strip())
        return sources

    def _source(self, sid: Any, key: str) -> Source:
        if str(sid) not in self.sources:
            known = sorted(self.sources)
            raise self.fail(key, f"unknown source {sid!r}{nearest(str(sid), known)}; "
                                 f"defined sources: {known}")
        return self.sources[str(sid)]

    def _value(self, raw: Any, unit: str, key: str) -> Any:
        """The SI value of one figure's raw text; subclasses know their units."""
        raise NotImplementedError

    def _figure(self, raw: Any, unit: str, default: Source | None, key: str) -> Figure:
        """A figure written plainly or as {value, source, note}; every figure needs a source."""
        note, sid = "", None
        if isinstance(raw, dict):
            parts = ["value", "source", "note"]
            for k in raw:
                if k not in parts:
                    raise self.fail(f"{key}.{k}", f"unknown key{nearest(str(k), parts)}; "
                                                  f"a figure has {parts}")
            if "value" not in raw:
                raise self.fail(key, "a figure written as a mapping needs a 'value'")
            raw, sid, note = raw["value"], raw.get("source"), str(raw.get("note") or "")
        source = self._source(sid, key) if sid is not None else default
        if source is None:
            raise self.fail(key, "missing source: give the figure a 'source:' or its entry a "
                                 f"default 'source:' (one of {sorted(self.sources)})")
        return Figure(self._value(raw, unit, key), str(raw), source, note)


def alias_index(presets: Mapping[str, Any], file: str, section: Callable[[Any], str]) -> dict[str, str]:
    """Normalised name or alias -> preset name; a label naming two presets is an error at
    ``<section(preset)>.<name>.aliases``."""
    index: dict[str, str] = {}
    for preset in presets.values():
        for label in (preset.name, *preset.aliases):
            key = normalise(label)
            if index.get(key, preset.name) != preset.name:
                raise ConfigError(f"{label!r} names both {index[key]!r} and {preset.name!r}",
                                  file=file, key=f"{section(preset)}.{preset.name}.aliases")
            index[key] = preset.name
    return index
