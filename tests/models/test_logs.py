"""Reading event logs from CSV (models/logs.py), shared by the churn task and the recommender."""
from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.logs import read_log_csv
from models.recs.pipeline import load_log
from tidewater.errors import UserError


def test_ids_stay_as_written_headers_match_in_any_case_and_guest_rows_are_skipped(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text(" User_ID ,Item_Id,TS\n007,7,1\n,8,2\n9,,3\n010,7.50,4\n")
    raw, skipped = read_log_csv(path, required=("user_id", "item_id", "ts"), ids=("user_id", "item_id"))
    assert skipped == 2
    assert raw["user_id"].tolist() == ["007", "010"] and raw["item_id"].tolist() == ["7", "7.50"]
    assert raw.index.tolist() == [0, 3]  # the file's data rows, for error messages


def test_na_strings_are_ids_in_id_columns_and_missing_elsewhere(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user_id,ts,amount,item\nNA,1,NA,None\nnull,2,3.5,i1\n")  # R writes NA for a missing amount
    raw, skipped = read_log_csv(path, required=("user_id", "ts"), known=("amount", "item"), names=("item",))
    assert skipped == 0 and raw["user_id"].tolist() == ["NA", "null"] and raw["item"].tolist() == ["None", "i1"]
    assert raw["amount"].isna().tolist() == [True, False]


def test_recs_log_reads_the_same_way_and_says_what_it_skipped(tmp_path):
    path = tmp_path / "interactions.csv"
    path.write_text("user_id,item_id,ts\nu1,i1,20200101\nu1,i2,20200102\n,i3,20200103\n")
    notes: list[str] = []
    name, df, texts = load_log(path, notes.append)
    assert name == "interactions" and texts is None and len(df) == 2
    assert notes == ["note: skipped 1 rows without a user_id or item_id"]


def test_regression_an_item_text_of_na_or_none_is_a_name(tmp_path):
    """Item texts "NA", "None", "null" were read as missing, and those items got no text embedding (review)."""
    path = tmp_path / "interactions.csv"
    path.write_text("user_id,item_id,ts,item_text\nu1,i1,1,NA\nu1,i2,2,None\nu2,i3,3,\nu2,i4,4,Gone Girl\n")
    _, _, texts = load_log(path)
    assert texts == {"i1": "NA", "i2": "None", "i4": "Gone Girl"}  # an empty field is still no text


def test_regression_spaces_around_values_are_layout_not_part_of_the_id(tmp_path):
    """"u0, i97" made item " i97", another item than "i97" in the same log, and a recs model published ids
    with a leading space that the stream's events never match (found by review). A trailing delimiter on every
    row (some exporters write one) reads as it did."""
    path = tmp_path / "log.csv"
    path.write_text("user_id, item_id, ts\nu0, i97, 1\nu0,i97,2\nu1 ,i5 ,  \n")
    raw, skipped = read_log_csv(path, required=("user_id", "item_id", "ts"), ids=("user_id", "item_id"))
    assert skipped == 0 and raw["user_id"].tolist() == ["u0", "u0", "u1"]
    assert raw["item_id"].tolist() == ["i97", "i97", "i5"]
    assert raw["ts"].isna().tolist() == [False, False, True]  # blank is missing, as empty is
    path.write_text("user_id,item_id,ts\nu0,i97,1,\nu2,i6,3,\n")
    raw, _ = read_log_csv(path, required=("user_id", "item_id", "ts"), ids=("user_id", "item_id"))
    assert raw[["user_id", "item_id", "ts"]].values.tolist() == [["u0", "i97", "1"], ["u2", "i6", "3"]]


@pytest.mark.parametrize("content,message", [
    ("user,item_id,ts\nu1,i1,1\n", "missing column(s) user_id; need user_id,item_id,ts (its columns: user, item_id, ts)"),
    ("user_id,item_id,ts,ts\nu1,i1,1,2\n", "column(s) ts appear more than once in the header"),
    ("user_id,item_id,ts,TS\nu1,i1,1,2\n", "column(s) ts appear more than once in the header"),
    ("user_id,item_id,ts\n,i1,1\n", "has no rows with user_id and item_id"),
    # every row one field longer than the header: pandas took the first column for the index and shifted the
    # others (users read as items, items as times), and training went ahead on that (found by review)
    ("user_id,item_id,ts\nu0,i53,1600796894,5\nu0,i56,1600800212,2\n", "more fields than its header"),
])
def test_unusable_logs_are_user_errors(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_log_csv(path, required=("user_id", "item_id", "ts"), ids=("user_id", "item_id"))
    with pytest.raises(UserError, match="does not exist"):
        read_log_csv(tmp_path / "missing.csv", required=("user_id",))


# pandas reads NA, nan, null, None and N/A as missing by default: as ids they are ids
ids = st.one_of(st.just(""), st.just("  "), st.sampled_from(["NA", "nan", "null", "None", "N/A", "007"]),
                st.from_regex(r"[0-9A-Za-z_.\-]{1,8}", fullmatch=True))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(ids, ids), min_size=1, max_size=30), upper=st.booleans())
def test_every_non_empty_id_comes_back_as_written_and_every_empty_one_is_counted(tmp_path, rows, upper):
    path = tmp_path / "log.csv"
    header = "USER_ID,Item_ID,ts" if upper else "user_id,item_id,ts"
    path.write_text(header + "\n" + "".join(f"{u},{i},{n}\n" for n, (u, i) in enumerate(rows)))
    kept = [(u, i, str(n)) for n, (u, i) in enumerate(rows) if u.strip() and i.strip()]
    if not kept:
        with pytest.raises(UserError, match="has no rows"):
            read_log_csv(path, required=("user_id", "item_id", "ts"), ids=("user_id", "item_id"))
        return
    raw, skipped = read_log_csv(path, required=("user_id", "item_id", "ts"), ids=("user_id", "item_id"))
    assert list(zip(raw["user_id"], raw["item_id"], raw["ts"])) == kept
    assert skipped == len(rows) - len(kept)
    assert raw.index.tolist() == [n for n, (u, i) in enumerate(rows) if u.strip() and i.strip()]


def test_regression_a_log_that_is_not_utf8_says_how_to_convert_it(tmp_path):
    """A Latin-1 export (Excel) failed with the codec's message only (review)."""
    path = tmp_path / "latin1.csv"
    path.write_bytes("user_id,item_id,ts\nJosé,i1,1\n".encode("latin-1"))
    with pytest.raises(UserError, match="it is not UTF-8 .*save it as UTF-8"):
        read_log_csv(path, required=("user_id", "item_id", "ts"), ids=("user_id", "item_id"))


def test_a_utf16_log_is_told_to_convert_from_utf16():
    """Excel's "Unicode text" is UTF-16 with a byte order mark: the advice named latin1 (final review)."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "utf16.csv"
        path.write_bytes("user_id,item_id,ts\nu1,i1,1\n".encode("utf-16"))
        with pytest.raises(UserError, match=r"it is not UTF-8 \(UTF-16\); save it as UTF-8, e.g. `iconv -f utf-16"):
            read_log_csv(path, required=("user_id", "item_id", "ts"), ids=("user_id", "item_id"))


def test_regression_a_column_named_like_pandas_renames_a_repeat_is_not_a_repeat(tmp_path):
    # "ts.1" as written is its own column (a second "ts" is renamed so by pandas, and only that is refused)
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,ts,ts.1\nu1,i1,1,x\n")
    raw, _ = read_log_csv(path, required=("user_id", "item_id", "ts"), ids=("user_id", "item_id"))
    assert raw["ts"].tolist() == ["1"] and raw["ts.1"].tolist() == ["x"]


@pytest.mark.parametrize("sep", ["\t", ";", "|"])
def test_tab_semicolon_and_bar_separated_logs_are_read(tmp_path, sep):
    """Such exports were refused with a hint to convert them (a semicolon or tab export first said only that
    user_id and ts were missing, though its header named them; reviews)."""
    path = tmp_path / "log.csv"
    path.write_text(sep.join(["user_id", "item_id", "ts", "note"]) + "\n" + sep.join(["u1", "i 1", "1", "a,b"]) + "\n")
    raw, _ = read_log_csv(path, required=("user_id", "item_id", "ts"), ids=("user_id", "item_id"))
    assert raw[["user_id", "item_id", "ts", "note"]].values.tolist() == [["u1", "i 1", "1", "a,b"]]


@pytest.mark.parametrize("content", [
    "\nuser_id;item_id;ts\nu1;i 1;1\n",  # a blank line before the header
    "user_id;item_id;ts;price, EUR\nu1;i 1;1;2,50\n",  # a comma inside a semicolon header's name
    'user_id,item_id,ts,"a;b;c;d;e"\nu1,i 1,1,x\n',  # separators of another kind inside quotes do not count
    "user_id\titem_id\tts\tnote, a, b, c\nu1\ti 1\t1\tx\n",  # nor commas outnumbering the tabs in a name
    "\ufeff\nuser_id;item_id;ts\nu1;i 1;1\n",  # a byte-order mark on a blank first line
])
def test_regression_the_separator_is_the_headers_most_frequent(tmp_path, content):
    """The first version looked at the first line only, and took any comma in it for the separator (review)."""
    path = tmp_path / "log.csv"
    path.write_text(content)
    raw, _ = read_log_csv(path, required=("user_id", "item_id", "ts"), ids=("user_id", "item_id"))
    assert raw[["user_id", "item_id", "ts"]].values.tolist() == [["u1", "i 1", "1"]]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sep=st.sampled_from([",", "\t", ";", "|"]), extra=st.booleans(), data=st.data())
def test_any_separator_gives_back_every_id_as_written(tmp_path, sep, extra, data):
    """A log written with a comma, tab, semicolon or bar reads back the same, whatever the other separators inside
    its ids (a comma in a semicolon file's ids or names is data)."""
    others = "".join(s for s in ",\t;|" if s != sep and s != "\t")
    field = st.from_regex(rf"[0-9A-Za-z_.\-{re.escape(others)}]{{1,8}}", fullmatch=True)
    rows = data.draw(st.lists(st.tuples(field, field), min_size=1, max_size=20))
    header = ["user_id", "item_id", "ts"] + (["note, with a comma" if sep != "," else "note"] if extra else [])
    lines = [sep.join(header)] + [sep.join([u, i, str(n)] + (["x"] if extra else [])) for n, (u, i) in enumerate(rows)]
    path = tmp_path / "log.csv"
    path.write_text("\n".join(lines) + "\n")
    raw, skipped = read_log_csv(path, required=("user_id", "item_id", "ts"), ids=("user_id", "item_id"))
    assert skipped == 0
    assert list(zip(raw["user_id"], raw["item_id"], raw["ts"])) == [(u.strip(), i.strip(), str(n))
                                                                  for n, (u, i) in enumerate(rows)]
