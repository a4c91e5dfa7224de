"""Event sources for replays: the real datasets and JSON-lines files, as ordered (topic kind, event) pairs.

Event ids are derived from the data (row positions and fields), so replaying the same input twice produces
the same events, byte for byte.
"""
from __future__ import annotations

import json
from itertools import islice
from pathlib import Path
from typing import Iterator

from tidewater.events import Click, Event, Purchase, event_type

DATASETS = ("cdnow", "cdnow-sample", "ml-100k")


def cdnow_events(sample: bool = False) -> Iterator[Event]:
    from models.datasets import load_cdnow

    frame = load_cdnow(sample=sample)
    for row in frame.itertuples(index=True):
        yield Purchase(event_id=f"cdnow-{row.Index}", user_id=row.user_id, ts=float(row.ts),
                       amount=float(row.amount), quantity=max(1, int(row.quantity)), category="music")


def ml100k_events() -> Iterator[Event]:
    """MovieLens ratings as clicks; item ids as the recommender is trained on them (``models.recs``)."""
    from models.datasets import load_ml100k, ml100k_categories

    data = load_ml100k()
    categories = ml100k_categories(data.items)
    for row in data.interactions.itertuples(index=True):
        yield Click(event_id=f"ml100k-{row.Index}", user_id=row.user_id, ts=float(row.ts),
                    item_id=row.item_id, category=categories.get(row.item_id, "unknown"))


def jsonl_events(path: str | Path) -> Iterator[bytes]:
    """The lines of a JSON-lines file, byte for byte: a replay sends exactly what was recorded, and lines that
    do not validate reach the worker's dead-letter handling as a bad producer would send them."""
    with open(path, "rb") as fh:
        for n, line in enumerate(fh):
            if n == 0 and line.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark (editors on Windows)
                line = line[3:]
            line = line.strip()
            if line:
                yield line


JSON_LINES_PROBE = 10  # lines of a file looked at before its records are sent


def _check_json_lines(path: str) -> None:
    """Refuse a file none of whose first ``JSON_LINES_PROBE`` lines is a JSON object: a CSV purchase log, a
    pretty-printed or array JSON file. Sent as it was, every line was counted as an event written, then
    dead-lettered by the workers (found by review). A bad line among good ones still goes, to the dead letters."""
    lines = list(islice(jsonl_events(path), JSON_LINES_PROBE))
    for line in lines:
        try:
            if isinstance(json.loads(line), dict):
                return
        except (ValueError, RecursionError):
            continue
    if lines:
        first = lines[0][:80].decode("utf-8", "replace")
        raise ValueError(f"{path} is not JSON lines: none of its first {len(lines)} lines is a JSON object (the "
                         f"first: {first!r}). A replay takes one event object per line, as `tidewater record` "
                         f"writes them; a CSV purchase log goes to `tidewater evaluate churn --purchases`; "
                         f"--as-is sends the lines anyway (to test the dead-letter path)")


def dataset_events(name: str, check_lines: bool = True) -> Iterator[Event | bytes]:
    """The events of a dataset, or the lines of a JSON-lines file (``check_lines`` False: sent even when none of its
    first lines is a JSON object, as a file made to test the dead-letter path is)."""
    if name == "cdnow":
        return cdnow_events()
    if name == "cdnow-sample":
        return cdnow_events(sample=True)
    if name == "ml-100k":
        return ml100k_events()
    if name.endswith(".jsonl") or name.endswith(".json") or Path(name).is_file():
        if not Path(name).is_file():  # checked now: the lines are read lazily, once the producer runs
            raise ValueError(f"no such file: {name}")
        if check_lines:
            _check_json_lines(name)
        return jsonl_events(name)
    raise ValueError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)} or a .jsonl file")


def topic_kind(item: Event | bytes) -> str:
    """'click' or 'purchase': the input topic of an event; raw lines go by their "type" field (default click).
    Erasure requests, which either input topic takes, go with the clicks."""
    if isinstance(item, bytes):
        try:
            kind = json.loads(item).get("type")
        except (ValueError, AttributeError, RecursionError):
            kind = None
    else:
        kind = event_type(item)
    return "purchase" if kind == "purchase" else "click"
