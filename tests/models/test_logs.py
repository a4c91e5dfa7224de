"""Reading event logs from CSV (models/logs.py), shared by the churn task and the recommender."""
from __future__ import annotations

import pytest

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


def test_recs_log_reads_the_same_way_and_says_what_it_skipped(tmp_path):
    path = tmp_path / "interactions.csv"
    path.write_text("user_id,item_id,ts\nu1,i1,20200101\nu1,i2,20200102\n,i3,20200103\n")
    notes: list[str] = []
    name, df, texts = load_log(path, notes.append)
    assert name == "interactions" and texts is None and len(df) == 2
    assert notes == ["note: skipped 1 rows without a user_id or item_id"]


@pytest.mark.parametrize("content,message", [
    ("user,item_id,ts\nu1,i1,1\n", "missing column(s) user_id"),
    ("user_id,item_id,ts\n,i1,1\n", "has no rows with user_id and item_id"),
])
def test_unusable_logs_are_user_errors(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_log_csv(path, required=("user_id", "item_id", "ts"), ids=("user_id", "item_id"))
    with pytest.raises(UserError, match="does not exist"):
        read_log_csv(tmp_path / "missing.csv", required=("user_id",))
