"""Reading YAML strictly and turning pydantic errors into one-line ConfigErrors.

Duplicate keys are errors (PyYAML silently keeps the last one). A pydantic error becomes
"file: key.path: what was expected, what was given (did you mean X?)". Every number in a
validated section must be finite: no key of clustersim documents infinity, and a NaN or an
infinity (".nan", ".inf", "inf", "1e400") would make a run that never ends or costs nothing.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from clustersim.errors import ConfigError
from clustersim.input_files import check_yaml_depth, read_text


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False):
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {seen[key].start_mark.line + 1})",
                key_node.start_mark)
        seen[key] = key_node
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(path: str | Path) -> Any:
    path = Path(path)
    text = read_text(path, what="YAML file")
    check_yaml_depth(text, file=str(path))
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except RecursionError:  # check_yaml_depth stops this first; kept as a last line of defence
        raise ConfigError("nesting too deep", file=str(path)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else None
        problem = (getattr(exc, "problem", None) or str(exc)).replace("\n", " ")
        raise ConfigError(f"invalid YAML: {problem}", file=str(path), key=where) from None


def short_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters: a message stays one readable line."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The pydantic model class that owns the last element of ``loc`` (best effort)."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int) or not (isinstance(current, type) and issubclass(current, BaseModel)):
            continue
        field = current.model_fields.get(part)
        if field is None:
            return None
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        current = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)),
                       None)
        if current is None:
            return None
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def config_error(exc: ValidationError, model: type[BaseModel], *, file: str | None,
                 prefix: tuple = ()) -> ConfigError:
    """The most telling pydantic error as a ConfigError naming file, key path and the fix.

    An unknown key comes first: a misspelt key also makes the intended one "missing", and the
    misspelling is what the user has to fix."""
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    error = errors[0]
    loc = tuple(str(p) for p in error["loc"] if not str(p).startswith("function-"))
    key = ".".join(map(str, prefix + loc)) or "(top level)"
    given = error.get("input")
    if error["type"] == "extra_forbidden":
        owner = _model_at(model, tuple(error["loc"]))
        valid = sorted(owner.model_fields) if owner else []
        nearest = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        hint = f"; did you mean {nearest[0]!r}? " if nearest else "; "
        message = f"unknown key{hint}valid keys here: {', '.join(valid)}"
    elif error["type"] == "missing":
        message = "required key is missing"
    else:
        shown = short_repr(given)
        msg = error["msg"].removeprefix("Value error, ")  # pydantic's wrapper of our ValueErrors
        message = msg if shown in msg else f"{msg}; got {shown}"
    more = len(errors) - 1
    if more:
        message += f" (and {more} more error{'s' if more > 1 else ''})"
    return ConfigError(message, file=file, key=key)


def non_finite(value: Any, path: tuple = ()) -> tuple | None:
    """The key path of the first NaN, infinite or beyond-1e30 float, or int beyond 64 bits,
    in ``value`` (mappings, lists, pydantic models), or None when every number is finite."""
    if isinstance(value, float):
        return None if math.isfinite(value) and abs(value) <= MAX_FLOAT else path
    if isinstance(value, int) and not isinstance(value, bool):
        # Beyond 64 bits an int overflows floats and numpy: no clustersim figure is that large.
        return None if abs(value) <= MAX_INT else path
    if isinstance(value, BaseModel):
        items = ((name, getattr(value, name, None)) for name in type(value).model_fields)
    elif isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = non_finite(item, path + (key,))
        if found is not None:
            return found
    return None


MAX_INT = 2**63 - 1
# Larger floats are refused like infinities: no figure is that large, and event times near
# 1e308 overflow to inf, after which a simulation never ends.
MAX_FLOAT = 1e30


def _refuse_non_finite(value: Any, *, file: str | None, prefix: tuple) -> None:
    where = non_finite(value)
    if where is None:
        return
    item = value
    for part in where:
        item = getattr(item, part) if isinstance(item, BaseModel) else item[part]
    key = ".".join(str(p) for p in prefix + where) or "(top level)"
    if isinstance(item, int):
        raise ConfigError(f"number too large: {short_repr(item, 40)} has {len(str(abs(item)))} "
                          f"digits; at most {MAX_INT:,} (2^63 - 1)", file=file, key=key)
    if isinstance(item, float) and math.isfinite(item):
        raise ConfigError(f"number too large: {item!r}; at most {MAX_FLOAT:g}", file=file, key=key)
    raise ConfigError(f"expected a finite number, got {item!r} (NaN and infinity are refused: "
                      "give a number)", file=file, key=key)


def validate(model: type[BaseModel], data: Any, *, file: str | None, prefix: tuple = ()):
    _refuse_non_finite(data, file=file, prefix=prefix)
    try:
        validated = model.model_validate(data)
    except ValidationError as exc:
        raise config_error(exc, model, file=file, prefix=prefix) from None
    # Text such as "inf" or "1e400" becomes an infinite float only during validation.
    _refuse_non_finite(validated, file=file, prefix=prefix)
    return validated
