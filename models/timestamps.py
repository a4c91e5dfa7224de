"""Event times of a log file -> UTC epoch seconds, in whichever common form the file writes them.

Logs exported by shops and warehouses write time as ISO dates, epoch seconds, epoch milliseconds (JavaScript,
Kafka), microseconds or nanoseconds (pandas, Spark), or as ``YYYYMMDD`` integers (the CDNOW file itself). Read
as seconds, the last four would put every event in 1970 or thousands of years ahead, and the churn task would
silently measure gaps in the wrong unit. A numeric column is therefore read by its magnitude:

* 8-digit integers that are valid dates from 1900-01-01 to 2100-12-31 -> ``YYYYMMDD`` (as seconds they
  would all fall within August 1970), and so 12- and 14-digit ones -> ``YYYYMMDDHHMM``, ``YYYYMMDDHHMMSS``
  (warehouse exports; by magnitude they were read as milliseconds, in 1976 or the year 2600); a column of such
  dates but for a few other values is an error naming the first of those;
* otherwise by the median absolute value: below 1e11 seconds (1e11 s is the year 5138), below 1e14
  milliseconds, below 1e17 microseconds, else nanoseconds.

Text is read as dates: ISO, or with numbers first (``13/01/2010 08:26``) day first or month first, decided once
for the whole column.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

# (upper bound of the median absolute value, unit name, units per second)
NUMERIC_UNITS = ((1e11, "seconds", 1), (1e14, "milliseconds", 10**3), (1e17, "microseconds", 10**6),
                 (float("inf"), "nanoseconds", 10**9))
YYYYMMDD_RANGE = (19000101, 21001231)
NS_YEARS = (1678, 2261)  # the whole years that pandas' nanosecond timestamps hold
# integer dates and date-times: (how the column is then read, strptime format, digits after the date)
DIGIT_DATES = (("yyyymmdd", "%Y%m%d", 0), ("yyyymmddhhmm", "%Y%m%d%H%M", 4),
               ("yyyymmddhhmmss", "%Y%m%d%H%M%S", 6))
_EPOCH = pd.Timestamp(0, tz="UTC")
# spreadsheet serial dates (days since 1899-12-30, as Excel and LibreOffice store them) from 1927 to 2173: read as
# epoch seconds they put a whole log within the first 28 hours of 1970
SPREADSHEET_DAYS = (1e4, 1e5)
_SPREADSHEET_ZERO = pd.Timestamp("1899-12-30", tz="UTC")


def to_epoch_seconds(values: pd.Series) -> tuple[pd.Series, str]:
    """(float64 UTC epoch seconds, how the column was read: ``iso``, one of ``DIGIT_DATES`` or a unit of
    ``NUMERIC_UNITS``). Raises ``ValueError`` naming the first value that is none of these, with its row
    number in the file (header = row 1; from the index, which ``read_csv`` numbers from 0)."""
    numeric = pd.to_numeric(values, errors="coerce")
    if len(numeric) and numeric.notna().mean() > 0.5 and not numeric.notna().all():  # a number column, a few not
        raise _unparsable(values, numeric.isna(), "the other values are numbers")
    if numeric.notna().all():
        for read_as, form, extra_digits in DIGIT_DATES:
            dates = _digit_dates(numeric, form, extra_digits)
            if dates is not None:
                return dates, read_as
        median = float(np.median(np.abs(numeric.to_numpy(np.float64)))) if len(numeric) else 0.0
        for bound, unit, per_second in NUMERIC_UNITS:
            if median < bound:
                seconds = _divided(numeric, per_second)
                _check_one_unit(values, seconds, median / per_second, unit)
                return seconds, unit
    text = values.astype(str)
    read_as, numbers_first = _date_order(text)
    parsed = pd.to_datetime(text, utc=True, errors="coerce", format="mixed")
    if numbers_first is not None and numbers_first.any():  # only those rows: ISO rows stay year-month-day
        parsed[numbers_first] = pd.to_datetime(text[numbers_first], utc=True, errors="coerce", format="mixed",
                                               dayfirst=read_as == "day-first dates")
    bad = parsed.isna()
    if bad.any():
        raise _unparsable(values, bad, "use ISO dates, YYYYMMDD, or epoch seconds / milliseconds / microseconds / "
                                       "nanoseconds")
    years = parsed.dt.year
    beyond = (years < NS_YEARS[0]) | (years > NS_YEARS[1])  # a typo (0202-02-01): pandas' own error had no row
    if beyond.any():
        raise _unparsable(values, beyond, f"a year from {NS_YEARS[0]} to {NS_YEARS[1]}")
    return (parsed - _EPOCH).dt.total_seconds().astype("float64"), read_as


EPOCH_LIKE_S = 1e8  # seconds (3.2 years): a median from here on is far from 0, and "too large" is measured from here
TOO_LARGE = 20.0  # a value this many times max(median, EPOCH_LIKE_S) is in a coarser-reading unit (or a typo)
TOO_SMALL = 100.0  # under median / this, and cut off from every other value: another unit, or a placeholder


def _check_one_unit(values: pd.Series, seconds: pd.Series, median_s: float, unit: str) -> None:
    """Raise naming the first value that is in another unit than its column's median, or a placeholder: read in
    the median's unit without a word, milliseconds among seconds put half a log in the year 50,000, seconds among
    milliseconds in January 1970, and a 0 (or -1) at 1970-01-01 (found by review).

    * too large: over ``TOO_LARGE`` times the median (or times 1e8 s, for a column near 0);
    * too small: under a hundredth of a median from 1e8 s on, and cut off from the rest: no other value between a
      hundredth and half the median. A relative clock from 0 and dates before 1970 run through that range, so
      they are kept (the first version refused them; found by the review of the check)."""
    magnitude = seconds.abs()
    off = magnitude > max(median_s, EPOCH_LIKE_S) * TOO_LARGE
    if median_s >= EPOCH_LIKE_S:
        small = magnitude < median_s / TOO_SMALL
        if small.any():
            rest = magnitude[~small & ~off]
            if len(rest) and float(rest.min()) > median_s / 2:
                off |= small
    off = off.fillna(False)
    if off.any():
        around = pd.Timestamp(float(np.median(seconds.to_numpy(np.float64))), unit="s", tz="UTC")
        raise _unparsable(values, off, f"the column reads as epoch {unit}, around {around:%Y-%m-%d}, and this value "
                                       "is far from all the others: another unit, or a placeholder?")


def spreadsheet_days_hint(seconds: pd.Series) -> str | None:
    """A hint when a column read as epoch seconds is probably spreadsheet serial dates (``35431`` is 1997-01-01
    there, 09:50 on 1970-01-01 as seconds): every value is in ``SPREADSHEET_DAYS``. Not read so without asking:
    seconds since 1970 this small are unlikely but valid (a synthetic log), and a guess would move every event."""
    values = seconds.to_numpy(np.float64)
    lo, hi = SPREADSHEET_DAYS
    if not len(values) or not bool(((values >= lo) & (values <= hi)).all()):
        return None
    first, last = (_SPREADSHEET_ZERO + pd.Timedelta(days=float(v)) for v in (values.min(), values.max()))
    return (f"ts was read as epoch seconds, which puts the whole log within the first {hi / 3600:.0f} hours of "
            f"1970; values from {values.min():g} to {values.max():g} look like spreadsheet serial dates ({first:%Y-%m-%d} "
            f"to {last:%Y-%m-%d} as days since 1899-12-30): export the column as ISO dates")


def _unparsable(values: pd.Series, bad: pd.Series, hint: str) -> ValueError:
    """The error naming the first bad value and its row in the file (header = row 1)."""
    first = int(np.flatnonzero(bad.to_numpy())[0])
    label = values.index[first]  # a frame read from a file keeps its row numbers in the index
    row = int(label) + 2 if isinstance(label, (int, np.integer)) else first + 2
    value = values.iloc[first]
    value = value.item() if isinstance(value, np.generic) else value  # 19970229, not np.int64(19970229)
    return ValueError(f"cannot parse ts {value!r} in row {row} ({hint})")


_NUMERIC_DATE = re.compile(r"^\s*(\d{1,2})[/.-](\d{1,2})[/.-]\d{2,4}\b")


def _date_order(text: pd.Series) -> tuple[str, pd.Series | None]:
    """How to read dates written with numbers first (``13/01/2010``, ``01.02.2011``), one way for the whole column:
    day first when some first field is above 12, month first otherwise (also when every field could be either: the
    common export default). Read value by value, a day-first file was month first wherever the day was 12 or less,
    scrambling the order of its events. Raises ``ValueError`` when rows disagree (13/01 and 01/13 both present).
    ISO dates (year first) are ``iso``. Returns how the column is read and which rows are written numbers first."""
    fields = text.str.extract(_NUMERIC_DATE).dropna()
    if fields.empty:
        return "iso", None
    first, second = fields[0].astype(int), fields[1].astype(int)
    day_first, month_first = bool((first > 12).any()), bool((second > 12).any())
    if day_first and month_first:
        row = int(np.flatnonzero((second > 12).to_numpy())[0])
        raise ValueError(f"dates are written day first in some rows and month first in others "
                         f"(e.g. {text.loc[fields.index[row]]!r}): write them one way, or as ISO dates")
    rows = text.index.isin(fields.index)
    return ("day-first dates" if day_first else "month-first dates"), pd.Series(rows, index=text.index)


MOSTLY_DATES = 0.9  # a numeric column this much made of YYYYMMDD dates is one: the other values are errors


def _digit_dates(numeric: pd.Series, form: str = "%Y%m%d", extra_digits: int = 0) -> pd.Series | None:
    """Epoch seconds of ``YYYYMMDD`` integers (``form``; with ``extra_digits`` of time of day after the date:
    ``YYYYMMDDHHMM[SS]``), or None when the column is not such dates (few of its values are: another unit, where
    8-digit numbers are valid dates by chance, 4 % of them). A column of dates but for a few values
    (``19970229``, a ``0`` placeholder) raises ``ValueError`` naming the first: read by magnitude, every event had
    moved to 1970 without a word (found by review)."""
    if not len(numeric):
        return None
    lo, hi = YYYYMMDD_RANGE
    scale = 10**extra_digits
    as_float = numeric.to_numpy(np.float64)
    candidate = (as_float == np.floor(as_float)) & (as_float >= lo * scale) & (as_float < (hi + 1) * scale)
    if candidate.mean() < MOSTLY_DATES:
        return None
    parsed = pd.Series(pd.NaT, index=numeric.index, dtype="datetime64[ns, UTC]")
    parsed[candidate] = pd.to_datetime(numeric[candidate].astype(np.int64).astype(str), format=form, utc=True,
                                       errors="coerce")
    bad = parsed.isna()
    if bad.mean() > 1 - MOSTLY_DATES:  # e.g. 19971340: not dates, so a number of some unit after all
        return None
    if bad.any():
        raise _unparsable(numeric, bad, f"the other values are YYYYMMDD{'HHMMSS'[:extra_digits]} dates")
    return pd.Series((parsed - _EPOCH).dt.total_seconds().to_numpy(np.float64), index=numeric.index)


def _divided(numeric: pd.Series, per_second: int) -> pd.Series:
    """``numeric / per_second`` as float64 seconds; integers are split into whole seconds and a remainder first,
    so that whole seconds stay exact (nanoseconds since 1970 do not fit in a float64's 53 bits)."""
    if per_second == 1 or not pd.api.types.is_integer_dtype(numeric):
        return numeric.astype("float64") / per_second
    whole, rest = divmod(numeric.astype(np.int64), per_second)
    return whole.astype("float64") + rest.astype("float64") / per_second
