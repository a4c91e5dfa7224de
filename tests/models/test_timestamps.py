"""Event times read from log files: every common form gives the same epoch seconds."""
from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.timestamps import spreadsheet_days_hint, to_epoch_seconds

days = st.dates(min_value=dt.date(1990, 1, 1), max_value=dt.date(2090, 12, 31))


def _epoch(d: dt.date) -> float:
    return float(dt.datetime(d.year, d.month, d.day, tzinfo=dt.timezone.utc).timestamp())


@settings(max_examples=60, deadline=None)
@given(st.lists(days, min_size=1, max_size=20))
def test_every_form_of_the_same_dates_reads_the_same(dates):
    want = [_epoch(d) for d in dates]
    forms = {
        "iso": [d.isoformat() for d in dates],
        "yyyymmdd": [int(d.strftime("%Y%m%d")) for d in dates],
        "yyyymmddhhmmss": [int(d.strftime("%Y%m%d") + "000000") for d in dates],
        "seconds": [int(s) for s in want],
        "milliseconds": [int(s) * 1000 for s in want],
        "microseconds": [int(s) * 10**6 for s in want],
        "nanoseconds": [int(s) * 10**9 for s in want],
    }
    for unit, values in forms.items():
        got, read_as = to_epoch_seconds(pd.Series(values))
        assert got.tolist() == want, unit
        assert read_as == unit  # a skip here (for "seconds", always true from 1990 on) left it unchecked (review)


def test_numbers_that_are_not_all_dates_stay_seconds():
    # 19971340 is not a date, so these 8-digit numbers are epoch seconds (August 1970)
    got, unit = to_epoch_seconds(pd.Series([19970101, 19971340]))
    assert unit == "seconds" and got.tolist() == [19970101.0, 19971340.0]
    got, unit = to_epoch_seconds(pd.Series([1.5, 2.25]))  # fractional seconds
    assert unit == "seconds" and got.tolist() == [1.5, 2.25]


def test_a_bad_value_is_named_with_its_file_row():
    with pytest.raises(ValueError, match=r"'yesterday' in row 3"):
        to_epoch_seconds(pd.Series(["2020-01-01", "yesterday"]))


def test_regression_day_first_dates_are_read_day_first_in_every_row():
    """Parsed value by value, ``12/01/2010`` was read as 1 December and ``13/01/2010`` as 13 January: a day-first
    export (the UK's Online Retail log) had its events scrambled wherever the day was 12 or less (found by review).
    One order is decided for the whole column."""
    got, read_as = to_epoch_seconds(pd.Series(["12/01/2010 08:26", "13/01/2010 08:26", "01/02/2011 10:00"]))
    assert read_as == "day-first dates"
    assert got.tolist() == [_epoch(dt.date(2010, 1, 12)) + 8 * 3600 + 26 * 60,
                            _epoch(dt.date(2010, 1, 13)) + 8 * 3600 + 26 * 60, _epoch(dt.date(2011, 2, 1)) + 36000]
    got, read_as = to_epoch_seconds(pd.Series(["01/12/2010", "01/13/2010"]))
    assert read_as == "month-first dates" and got.tolist() == [_epoch(dt.date(2010, 1, 12)), _epoch(dt.date(2010, 1, 13))]
    assert to_epoch_seconds(pd.Series(["2010-01-12", "2010-01-13T08:00:00Z"]))[1] == "iso"
    # ISO rows in a day-first column stay year-month-day (2010-01-05 was read as 1 May)
    got, _ = to_epoch_seconds(pd.Series(["2010-01-05", "13/01/2010"]))
    assert got.tolist() == [_epoch(dt.date(2010, 1, 5)), _epoch(dt.date(2010, 1, 13))]
    with pytest.raises(ValueError, match="day first in some rows and month first in others"):
        to_epoch_seconds(pd.Series(["13/01/2010", "01/13/2010"]))


def test_regression_a_word_among_numbers_is_the_value_named():
    """A column of epoch seconds with one bad value was read as dates, so the error named its first number, in
    the wrong row, as if numbers were not accepted (found by review)."""
    with pytest.raises(ValueError, match=r"cannot parse ts 'oops' in row 5 \(the other values are numbers\)"):
        to_epoch_seconds(pd.Series(["1", "2", "1", "oops"]))


def test_regression_a_column_of_dates_but_one_names_that_value():
    """One invalid YYYYMMDD value (19970229, a 0 placeholder) made the column epoch seconds: every event moved to
    1970 without a word, and the error that followed blamed the cut-off (found by review)."""
    dates = [int(d.strftime("%Y%m%d")) for d in pd.date_range("1997-01-01", periods=40, freq="7D")]
    for bad in (19970229, 0):
        with pytest.raises(ValueError, match=rf"cannot parse ts '?{bad}'? in row 7 \(the other values are YYYYMMDD"):
            to_epoch_seconds(pd.Series(dates[:5] + [bad] + dates[5:]))
    # 8-digit seconds that are dates by chance only now and then stay seconds
    seconds = list(range(19_000_000, 19_000_000 + 40 * 86_400, 86_400))
    assert to_epoch_seconds(pd.Series(seconds))[1] == "seconds"


def test_regression_integer_date_times_are_read_as_dates():
    """``YYYYMMDDHHMMSS`` and ``YYYYMMDDHHMM`` integers (warehouse exports) were read by magnitude as milliseconds:
    every event in the year 2600 or in 1976, and the error that followed blamed the cut-off (found by review)."""
    base = dt.datetime(1997, 3, 4, 13, 5, 9, tzinfo=dt.timezone.utc)
    times = [base + dt.timedelta(hours=37 * k, seconds=k) for k in range(30)]
    got, read_as = to_epoch_seconds(pd.Series([int(t.strftime("%Y%m%d%H%M%S")) for t in times]))
    assert read_as == "yyyymmddhhmmss" and got.tolist() == [t.timestamp() for t in times]
    got, read_as = to_epoch_seconds(pd.Series([int(t.strftime("%Y%m%d%H%M")) for t in times]))
    assert read_as == "yyyymmddhhmm" and got.tolist() == [t.replace(second=0).timestamp() for t in times]
    # a 14-digit column of such date-times but one (hour 25) names that value
    values = [int(t.strftime("%Y%m%d%H%M%S")) for t in times] + [19970304250000]
    with pytest.raises(ValueError, match=r"19970304250000 in row 32 \(the other values are YYYYMMDDHHMMSS dates"):
        to_epoch_seconds(pd.Series(values))
    # epoch milliseconds of today (13 digits) are still milliseconds
    assert to_epoch_seconds(pd.Series([1_700_000_000_000, 1_700_000_100_000]))[1] == "milliseconds"


def test_spreadsheet_serial_dates_read_as_seconds_get_a_hint():
    seconds, unit = to_epoch_seconds(pd.Series([35431, 35795, 45292.5]))
    assert unit == "seconds"  # read as asked: a guess would move every event
    hint = spreadsheet_days_hint(seconds)
    assert hint is not None and "1997-01-01 to 2024-01-01" in hint and "ISO dates" in hint


@pytest.mark.parametrize("values", [[0, 35431], [35431, 100_001], [1_700_000_000], []])
def test_no_spreadsheet_hint_for_other_seconds(values):
    # 0 and 100,001 are outside the 1927-2173 serial range; real epoch seconds are far above it
    assert spreadsheet_days_hint(pd.Series(values, dtype="float64")) is None


@pytest.mark.parametrize("typo", ["0202-02-01", "3000-02-01"])
def test_regression_a_date_beyond_pandas_range_is_named_with_its_row(typo):
    # pandas' own "Out of bounds nanosecond timestamp: 202-02-01" reached the user, without the row
    with pytest.raises(ValueError, match=rf"cannot parse ts '{typo}' in row 3 \(a year from 1678 to 2261\)"):
        to_epoch_seconds(pd.Series(["2020-01-01", typo, "2020-03-01"]))


@pytest.mark.parametrize("values, named", [
    ([1.6e9, 1.6e12, 1.6e9], "1600000000000.0"),  # milliseconds among seconds: the year 52,673
    ([1.6e12, 1.6e9, 1.6e12], "1600000000.0"),  # seconds among milliseconds: January 1970
    ([1.6e12, 0, 1.6e12], "0.0"),  # a placeholder among milliseconds: 1970-01-01
    ([1.6e9, 0, 1.6e9, 1.61e9], "0.0"),  # and among seconds (the second version let it through; review)
    ([1.6e9, -1, 1.6e9, 1.61e9], "-1.0"),
    ([1.6e9, 1.61e9, 1.62e9, 157766400000], "157766400000.0"),  # milliseconds of 1975: under 100x the median
    ([0, 60, 120, 1.6e12], "1600000000000.0"),  # a relative clock's column is checked for values too large too
])
def test_regression_a_value_in_another_unit_than_the_columns_is_named(values, named):
    """Read by the median's unit without a word, half of a log of mixed seconds and milliseconds moved to the year
    50,000 (or to 1970), which scrambled each user's order (found by the recs CLI review)."""
    row = 2 + [float(v) for v in values].index(float(named))  # the file's row: the header is row 1
    with pytest.raises(ValueError, match=rf"cannot parse ts {named} in row {row} \(the column reads as epoch"):
        to_epoch_seconds(pd.Series(values))


@pytest.mark.parametrize("values", [
    [0, 60, 86_400, 3_000_000],  # a synthetic log's clock from 0
    list(range(0, int(6.4 * 365 * 86400), 86400)),  # the same over 6.4 years: its median is past 1e8 s
    list(range(-2_208_988_800, 0, 30 * 86400)),  # 1900 to 1969: the last months are small numbers
    list(range(0, 365 * 86400 * 1000, 86400 * 1000)),  # a year of milliseconds from 0 (read as seconds: in order)
    [0] + list(range(160_000_000, 1_700_000_000, 30_000_000)),  # 1975 to 2023 with a first event at 0: no gap
])
def test_regression_relative_and_pre_1970_times_are_not_taken_for_mixed_units(values):
    """The first version of the unit check refused these (found by the review of the check)."""
    seconds, unit = to_epoch_seconds(pd.Series(values))
    assert unit == "seconds" and seconds.tolist() == [float(v) for v in values]


@pytest.mark.parametrize("values", [
    list(range(0, 7 * 365 * 86400 * 1000, 86400 * 1000)),  # seven years of milliseconds from 0
    list(range(-946_771_200_000, 946_684_800_001, 1_893_456_000)),  # milliseconds from 1940 to 2000
])
def test_regression_relative_and_pre_1970_milliseconds_are_kept(values):
    """The second version refused every small value of a column read as milliseconds (found by review)."""
    seconds, unit = to_epoch_seconds(pd.Series(values))
    assert unit == "milliseconds" and seconds.tolist() == [v / 1000 for v in values]


@settings(max_examples=60, deadline=None)
@given(st.lists(days, min_size=3, max_size=30), st.data())
def test_one_time_in_milliseconds_among_seconds_is_named_with_its_row(dates, data):
    seconds = [_epoch(d) for d in dates]
    assert to_epoch_seconds(pd.Series(seconds))[1] == "seconds"  # the column alone is fine
    at = data.draw(st.integers(0, len(seconds) - 1))
    mixed = seconds[:at] + [seconds[at] * 1000] + seconds[at + 1:]
    with pytest.raises(ValueError, match=rf"in row {at + 2} \(the column reads as epoch seconds"):
        to_epoch_seconds(pd.Series(mixed))
