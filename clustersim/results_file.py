"""Reading a results table (``results.csv`` from ``clustersim run``) given on the command line.

Through the one file reader (``input_files``): a folder, a binary or non-UTF-8 file, an empty
file, text that is not CSV or a header without rows is one ConfigError naming the file.
"""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from clustersim.errors import ConfigError
from clustersim.input_files import read_text


def read_results(path: str | Path) -> pd.DataFrame:
    file = str(path)
    text = read_text(path, what="results table (CSV)")
    if not text.strip():
        raise ConfigError("the file is empty; expected a results.csv written by `clustersim run`",
                          file=file)
    try:
        table = pd.read_csv(io.StringIO(text))
    except (pd.errors.ParserError, ValueError) as exc:
        raise ConfigError(f"not a CSV table ({' '.join(str(exc).split())[:200]})",
                          file=file) from None
    if table.empty:
        raise ConfigError("the table has a header but no rows", file=file)
    return table


def is_numeric(column: pd.Series) -> bool:
    """Numbers a plot can draw on an axis (not text, not true/false)."""
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)
