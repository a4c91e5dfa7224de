"""Event times of a log file -> UTC epoch seconds, in whichever common form the file writes them.

Logs exported by shops and warehouses write time as ISO dates, epoch seconds, epoch milliseconds (JavaScript,
Kafka), microseconds or nanoseconds (pandas, Spark), or as ``YYYYMMDD`` integers (the CDNOW file itself). Read
as seconds, the last four would put every event in 1970 or thousands of years ahead, and the churn task would
silently measure gaps in the wrong unit. A numeric column is therefore read by its magnitude:

* 8-digit integers that are all valid dates from 1900-01-01 to 2100-12-31 -> ``YYYYMMDD`` (as seconds they
  would all fall within August 1970);
* otherwise by the median absolute value: below 1e11 seconds (1e11 s is the year 5138), below 1e14
  milliseconds, below 1e17 microseconds, else nanoseconds.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

# (upper bound of the median absolute value, unit name, units per second)
NUMERIC_UNITS = ((1e11, "seconds", 1), (1e14, "milliseconds", 10**3), (1e17, "microseconds", 10**6),
                 (float("inf"), "nanoseconds", 10**9))
YYYYMMDD_RANGE = (19000101, 21001231)
_EPOCH = pd.Timestamp(0, tz="UTC")


def to_epoch_seconds(values: pd.Series) -> tuple[pd.Series, str]:
    """(float64 UTC epoch seconds, how the column was read: ``iso``, ``yyyymmdd`` or a unit of
    ``NUMERIC_UNITS``). Raises ``ValueError`` naming the first value that is none of these, with its row
    number in the file (header = row 1; from the index, which ``read_csv`` numbers from 0)."""
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.notna().all():
        dates = _yyyymmdd(numeric)
        if dates is not None:
            return dates, "yyyymmdd"
        median = float(np.median(np.abs(numeric.to_numpy(np.float64)))) if len(numeric) else 0.0
        for bound, unit, per_second in NUMERIC_UNITS:
            if median < bound:
                return _divided(numeric, per_second), unit
    parsed = pd.to_datetime(values.astype(str), utc=True, errors="coerce", format="mixed")
    bad = parsed.isna()
    if bad.any():
        first = int(np.flatnonzero(bad.to_numpy())[0])
        label = values.index[first]  # a frame read from a file keeps its row numbers in the index
        row = int(label) + 2 if isinstance(label, (int, np.integer)) else first + 2
        raise ValueError(f"cannot parse ts {values.iloc[first]!r} in row {row} (use ISO dates, YYYYMMDD, "
                         "or epoch seconds / milliseconds / microseconds / nanoseconds)")
    return (parsed - _EPOCH).dt.total_seconds().astype("float64"), "iso"


def _yyyymmdd(numeric: pd.Series) -> pd.Series | None:
    """Epoch seconds of ``YYYYMMDD`` integers, or None when the column is not all such dates."""
    if not len(numeric):
        return None
    lo, hi = YYYYMMDD_RANGE
    as_float = numeric.to_numpy(np.float64)
    if not ((as_float == np.floor(as_float)) & (as_float >= lo) & (as_float <= hi)).all():
        return None
    parsed = pd.to_datetime(numeric.astype(np.int64).astype(str), format="%Y%m%d", utc=True, errors="coerce")
    if parsed.isna().any():  # e.g. 19971340: not a date, so the column is a number of some unit after all
        return None
    return pd.Series((parsed - _EPOCH).dt.total_seconds().to_numpy(np.float64), index=numeric.index)


def _divided(numeric: pd.Series, per_second: int) -> pd.Series:
    """``numeric / per_second`` as float64 seconds; integers are split into whole seconds and a remainder first,
    so that whole seconds stay exact (nanoseconds since 1970 do not fit in a float64's 53 bits)."""
    if per_second == 1 or not pd.api.types.is_integer_dtype(numeric):
        return numeric.astype("float64") / per_second
    whole, rest = divmod(numeric.astype(np.int64), per_second)
    return whole.astype("float64") + rest.astype("float64") / per_second
