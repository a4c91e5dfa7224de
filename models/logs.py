"""Reading a user's event log from CSV, the same way for the churn task and the recommender.

* Every column is read as text first, so ids stay as written (``007`` stays ``007``; an item column with
  blanks does not turn ``7`` into ``7.0``). Numbers and times are converted afterwards by the caller
  (``models.timestamps`` for ``ts``).
* Headers and values are stripped (``u0, i97`` is item ``i97``), and the known columns match in any case
  (``User_ID``, ``TS``). A header naming fewer columns than the rows hold is an error (pandas shifted the
  columns).
* Strings that pandas reads as missing by default (``NA``, ``null``, ...) are values in id and name columns
  (a user called ``NA``) and missing elsewhere (R writes ``NA`` for a missing amount).
* Rows with an empty id column (guest checkouts in many retail exports) are skipped and counted: there is no
  customer to score or to recommend to. The frame's index keeps the file's row numbers (0 = the first data row),
  so later errors can name the row in the file.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Sequence

import pandas as pd

from tidewater.errors import UserError

# what pandas reads as missing by default (R writes NA, pandas NaN, SQL exports NULL)
NA_STRINGS = frozenset({"NA", "N/A", "n/a", "#N/A", "#NA", "NaN", "nan", "-NaN", "-nan", "<NA>", "null", "NULL",
                        "None", "-1.#IND", "1.#IND", "1.#QNAN", "-1.#QNAN", "#N/A N/A"})


def read_log_csv(path: str | Path, *, required: Sequence[str], known: Sequence[str] = (),
                 ids: Sequence[str] = ("user_id",), names: Sequence[str] = (),
                 aliases: dict[str, str] | None = None) -> tuple[pd.DataFrame, int]:
    """(the log's rows as text, how many were skipped for an empty id). ``required`` and ``known`` columns are
    matched case-insensitively; ``aliases`` renames a column when its target is absent (e.g. item_id -> item).
    In ``ids`` and ``names`` (e.g. item or category), strings such as NA or null are values; elsewhere they are
    missing. Raises :class:`UserError` for a missing file, unreadable CSV, missing columns or no rows left."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} is not a file" if path.exists() else f"{path} does not exist")
    sep = _separator(path)
    try:
        with warnings.catch_warnings():
            # rows with more fields than the header: without index_col=False pandas took the first column for
            # the index and shifted every column by one (users read as items, items as times), silently
            warnings.simplefilter("error", pd.errors.ParserWarning)
            raw = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_values=[""], index_col=False)
    except pd.errors.ParserWarning:
        raise UserError(f"cannot read {path} as CSV: its rows have more fields than its header names; name every "
                        f"column in the header") from None
    except UnicodeDecodeError as exc:  # Latin-1 / UTF-16 exports (Excel): the codec's message alone said little
        with open(path, "rb") as fh:
            utf16 = fh.read(2) in (b"\xff\xfe", b"\xfe\xff")  # Excel's "Unicode text" starts with its BOM
        source = "utf-16" if utf16 else "latin1"
        what = "UTF-16" if utf16 else f"byte {exc.start}: {exc.reason}"
        raise UserError(f"cannot read {path} as CSV: it is not UTF-8 ({what}); save it as UTF-8, e.g. "
                        f"`iconv -f {source} -t utf-8`") from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise UserError(f"cannot read {path} as CSV: {exc}") from exc
    raw.columns = [str(c).strip() for c in raw.columns]
    for column in raw.columns:  # "u0, i97" is item "i97": the space is the file's layout, not the id
        stripped = raw[column].str.strip()
        raw[column] = stripped.mask(stripped == "")  # a blank field is a missing one, as an empty one is
    by_lower = {c.lower(): c for c in raw.columns}
    wanted = [*required, *known, *(aliases or {})]
    # pandas reads a second "ts" column as "ts.1", and "TS" beside "ts" is another name: one of them was used
    # without a word (found by review). The header as written tells such a "ts.1" from a column named so
    lowered = [str(c).strip().lower() for c in _header(path, sep)]
    twice = sorted({name for name in lowered if lowered.count(name) > 1 and name in wanted})
    if twice:
        raise UserError(f"{path}: column(s) {', '.join(twice)} appear more than once in the header; keep one")
    raw = raw.rename(columns={by_lower[c]: c for c in wanted if c not in raw.columns and c in by_lower})
    for source, target in (aliases or {}).items():
        if target not in raw.columns and source in raw.columns:
            raw = raw.rename(columns={source: target})
    for column in raw.columns:  # NA, null, ... are missing values, except where they can be a name
        if column not in ids and column not in names:
            raw[column] = raw[column].mask(raw[column].str.strip().isin(NA_STRINGS))
    missing = [c for c in required if c not in raw.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}; need {','.join(required)} (its columns: "
                        f"{', '.join(map(str, raw.columns[:12]))})")
    empty = pd.Series(False, index=raw.index)
    for column in ids:
        empty |= raw[column].isna() | (raw[column].str.strip() == "")
    raw = raw[~empty]
    if raw.empty:
        raise UserError(f"{path} has no rows" + (" with " + " and ".join(ids) if empty.any() else ""))
    return raw, int(empty.sum())


def _header(path: Path, sep: str = ",") -> list[str]:
    """The header's names as the file writes them (``read_csv`` renames a repeated one, ``ts`` -> ``ts.1``)."""
    return pd.read_csv(path, sep=sep, dtype=str, header=None, nrows=1, keep_default_na=False).iloc[0].tolist()


# tabs and semicolons: TSV and spreadsheet exports. On a tie the first wins: a name with commas in a TSV or a
# semicolon header ("price, EUR") is likelier than a tab or a semicolon in a comma header's name
SEPARATORS = ("\t", ";", "|", ",")


def _separator(path: Path) -> str:
    """The column separator: the one of ``SEPARATORS`` the header line (the first that is not blank, a byte-order
    mark aside) holds most often outside quotes; a comma when it holds none (tab- and semicolon-separated files were
    refused with a hint to convert them; found by review). Undecodable bytes are left to ``read_csv``'s error."""
    with open(path, "rb") as fh:
        lines = (line[3:] if n == 0 and line.startswith(b"\xef\xbb\xbf") else line for n, line in enumerate(fh))
        header = next((line for line in lines if line.strip()), b"").decode("utf-8", "replace")
    unquoted = re.sub(r'"[^"]*"', "", header)
    counts = [unquoted.count(sep) for sep in SEPARATORS]
    return SEPARATORS[counts.index(max(counts))] if max(counts) else ","
