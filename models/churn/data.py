"""The churn task on any purchase log: cut-off, horizon, labels and a seeded user split.

For a cut-off ``c`` and a horizon ``h``:

* features (event sequences) use only events with ``ts < c``;
* ``churn = 1`` when the user makes no purchase in ``[c, c + h)``;
* ``count`` = number of purchases (distinct purchase timestamps, i.e. baskets) in ``[c, c + h)``,
  the target of the forecast head and of BG/NBD's expected-purchases forecast;
* only users with at least one event before ``c`` are in the task;
* users are split into train / validation / test with a fixed seed.

The CDNOW standard (Fader, Hardie & Lee 2005): calibration weeks 1-39 (cut-off 1997-10-01),
holdout weeks 40-78 (horizon 273 days).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from models.logs import read_log_csv
from models.timestamps import to_epoch_seconds
from tidewater.errors import UserError
from tidewater.profile import ProfileConfig

from .features import DAY, OPTIONAL_FIELDS, normalize_events

CDNOW_CUTOFF = "1997-10-01"
CDNOW_HORIZON_DAYS = 273
SPLIT_FRACTIONS = (0.55, 0.15, 0.30)  # train, validation, test
CSV_COLUMNS = ("amount", "quantity", "type", "item", "category")  # optional, besides user_id,ts
RING_EVENTS = ProfileConfig().recent_events  # what the stream keeps per user (TIDEWATER_RECENT_EVENTS' default)


# what parse_time accepts: pandas alone also read "01/09/2023" month-first (after a day-first log too) and "now"
# as the clock (found by review)
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?")


def parse_time(value: str) -> float:
    """'YYYY-MM-DD' (or any ISO date-time, UTC unless it says otherwise) -> epoch seconds."""
    if not _ISO_DATE.fullmatch(value.strip()):
        raise UserError(f"cannot parse date {value!r}: expected a date YYYY-MM-DD (or an ISO date-time)")
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise UserError(f"cannot parse date {value!r}: use YYYY-MM-DD") from exc
    if stamp is pd.NaT:
        raise UserError(f"cannot parse date {value!r}: use YYYY-MM-DD")
    if stamp.tzinfo is None:
        stamp = stamp.tz_localize("UTC")
    return float(stamp.timestamp())


def load_purchases_csv(path: str | Path) -> pd.DataFrame:
    """Read a purchase log: columns ``user_id,ts`` (ISO dates, ``YYYYMMDD`` or ``YYYYMMDDHHMM[SS]`` integers, dates
    written numbers first, or epoch seconds, milliseconds, microseconds or nanoseconds: ``models.timestamps``) and
    optional ``amount,quantity`` (and ``type``, ``item``, ``category``). Rows without a user_id (guest checkouts)
    and returns (a negative amount or quantity) are skipped. Returns the standard frame; ``frame.attrs`` says how
    ``ts`` was read (``ts_unit``) and how many rows were skipped (``rows_without_user``, ``returns_dropped``)."""
    path = Path(path)
    raw, skipped = read_log_csv(path, required=("user_id", "ts"), known=CSV_COLUMNS, names=("item", "category"),
                                aliases={"item_id": "item"})
    try:
        ts, ts_unit = to_epoch_seconds(raw["ts"])
    except ValueError as exc:
        raise UserError(f"{path}: {exc}") from exc
    frame = pd.DataFrame({"user_id": raw["user_id"], "ts": ts})
    for col in OPTIONAL_FIELDS:  # empty cells (e.g. on clicks) mean "absent"
        if col in raw.columns:
            num = pd.to_numeric(raw[col], errors="coerce")
            bad = num.isna() & raw[col].notna()
            if bad.any():
                comma = raw[col][bad].astype(str).str.fullmatch(r"\s*-?\d+,\d+\s*").iloc[0]
                raise UserError(f"{path}: non-numeric {col} {_first(raw[col], bad)}"
                                + (" (a decimal or thousands comma? write numbers with digits and a point "
                                   "only: 12.50, 1250)" if comma else ""))
            # infinite or too large to add up (an `inf` amount made the features infinite: a traceback, or a
            # published model that answered NaN; found by review); a quantity is a whole number
            limit = 1e12 if col == "amount" else 1e9
            bad = num.notna() & ~(num.abs() <= limit)
            if col == "quantity":
                bad |= num.notna() & (num != num.round())
            if bad.any():
                what = f"a whole number up to {limit:g}" if col == "quantity" else f"a finite number up to {limit:g}"
                raise UserError(f"{path}: {col} {_first(raw[col], bad)} is not {what}")
            frame[col] = num.astype(float) if num.isna().any() or col == "amount" else num.astype(int)
    for col in ("type", "item", "category"):
        if col in raw.columns:
            frame[col] = raw[col].fillna("purchase" if col == "type" else "").astype(str)
    if "type" in frame.columns:
        bad = ~frame["type"].isin(["click", "purchase"])
        if bad.any():
            raise UserError(f"{path}: type must be 'click' or 'purchase', got {frame['type'][bad].iloc[0]!r}")
    # returns and cancellations (a negative amount or quantity: how retail exports write them) are not purchases:
    # counted as such, a refund in the horizon made its customer a non-churner and added a purchase to the features
    returned = pd.Series(False, index=frame.index)
    for col in OPTIONAL_FIELDS:
        if col in frame.columns:
            returned |= frame[col] < 0
    frame = frame[~returned]
    if frame.empty:
        raise UserError(f"{path}: every row is a return (negative amount or quantity)")
    frame = frame.sort_values(["ts", "user_id"], kind="stable").reset_index(drop=True)
    frame.attrs["ts_unit"] = ts_unit  # how the ts column was read (models/timestamps.py)
    frame.attrs["rows_without_user"] = skipped
    frame.attrs["returns_dropped"] = int(returned.sum())
    return frame


def _first(values: pd.Series, bad: pd.Series) -> str:
    """The first bad value and its row in the file (the header is row 1; the index is the data row from 0)."""
    return f"{values[bad].iloc[0]!r} in row {int(bad.idxmax()) + 2}"


def frame_to_sequences(frame: pd.DataFrame) -> dict[str, list[dict]]:
    """Raw (unnormalised) event dicts per user, in time order."""
    cols = [c for c in ("ts", "type", "item", "category", "amount", "quantity") if c in frame.columns]
    ordered = frame.sort_values(["user_id", "ts"], kind="stable")
    out: dict[str, list[dict]] = {}
    users = ordered["user_id"].to_numpy()
    values = {c: ordered[c].to_numpy() for c in cols}
    for i, u in enumerate(users):
        ev = {c: values[c][i] for c in cols}
        ev["ts"] = float(ev["ts"])
        ev.setdefault("type", "purchase")
        out.setdefault(u, []).append(ev)
    return out


@dataclass
class ChurnTask:
    users: np.ndarray  # str [n]
    sequences: list[list[dict]]  # normalised events with ts < cutoff, per user (the whole history: baselines)
    # the model's input: the same from the user's last ``ring_events`` raw events before the cut-off, the view the
    # stream's ring of recent events gives the served model (the same list where the history is that short)
    churn: np.ndarray  # int [n]: 1 = no purchase in the horizon
    count: np.ndarray  # int [n]: purchases (baskets) in the horizon
    split: np.ndarray  # str [n]: train | val | test
    cutoff: float
    horizon_days: float
    seed: int
    meta: dict = field(default_factory=dict)
    ring_sequences: list[list[dict]] = field(default_factory=list)
    ring_events: int = 0

    @property
    def as_of(self) -> np.ndarray:
        return np.full(len(self.users), self.cutoff)

    def idx(self, part: str) -> np.ndarray:
        return np.flatnonzero(self.split == part)

    def check_splits(self) -> None:
        """Training needs churners and buyers among the training users; early stopping and calibration among
        the validation users; AUC among the test users. A log too small for that gets a clear error instead of
        a scikit-learn traceback from deep inside a baseline."""
        for part in ("train", "val", "test"):
            labels = self.churn[self.split == part]
            if len(labels) == 0 or labels.min() == labels.max():
                raise UserError(
                    f"the {part} split has {len(labels)} users and {int(labels.sum())} churners: each split needs "
                    f"both churners and buyers in the horizon ({len(self.churn)} users in the task, "
                    f"{int(self.churn.sum())} churn). Use a longer log (more users), or another "
                    "--cutoff/--horizon-days")
        # enough to run, few to trust: calibration and AUCs resting on a handful of one class ran without a word
        # (found by review: 1 buyer among 450 validation users); the CLI warns, the JSON says it
        fewest = {part: int(min(labels.sum(), len(labels) - labels.sum()))
                  for part in ("val", "test") for labels in [self.churn[self.split == part]]}
        thin = {part: n for part, n in fewest.items() if n < FEW_OF_A_CLASS}
        if thin:
            self.meta["thin_splits"] = thin


FEW_OF_A_CLASS = 30  # churners or buyers in the validation or test split under which the CLI warns


def split_users(users: np.ndarray, seed: int, fractions: tuple[float, float, float] = SPLIT_FRACTIONS) -> np.ndarray:
    """Seeded train/val/test assignment, independent of the input order of users."""
    order = np.argsort(users, kind="stable")
    rng = np.random.default_rng(seed)
    perm = order[rng.permutation(len(users))]
    n = len(users)
    n_train = int(round(fractions[0] * n))
    n_val = int(round(fractions[1] * n))
    split = np.empty(n, dtype=object)
    split[perm[:n_train]] = "train"
    split[perm[n_train:n_train + n_val]] = "val"
    split[perm[n_train + n_val:]] = "test"
    return split.astype(str)


LATER_CUTOFF_HINT = "; choose a later --cutoff"


def check_calibration(frame: pd.DataFrame, cutoff: float, hint: str = LATER_CUTOFF_HINT) -> None:
    """A clear error when no event lies before the cut-off (the features would be built from nothing)."""
    if not (frame["ts"] < cutoff).any():
        first = pd.Timestamp(float(frame["ts"].min()), unit="s", tz="UTC").date() if len(frame) else None
        raise UserError(f"no event before the cut-off {pd.Timestamp(cutoff, unit='s', tz='UTC').date()} "
                        f"(the log starts on {first}): the calibration set is empty{hint}")


def event_types(frame: pd.DataFrame, cutoff: float) -> list[str]:
    """The event types of the calibration period, what a model trained on the log learns from ("purchase" alone
    for a log without a ``type`` column); saved with the model, which ignores other types when it serves."""
    if "type" not in frame.columns:
        return ["purchase"]
    return sorted(set(frame.loc[frame["ts"] < cutoff, "type"].astype(str)))


def event_fields(frame: pd.DataFrame, cutoff: float) -> list[str]:
    """The optional fields (amount, quantity) that the calibration period has values for: what a model trained on
    the log learns from; saved with the model, which ignores the others when it serves."""
    before = frame.loc[frame["ts"] < cutoff]
    return [c for c in OPTIONAL_FIELDS if c in before.columns and bool(before[c].notna().any())]


TS_RESOLUTIONS = (86400.0, 3600.0, 60.0)  # whole days, hours, minutes (UTC)


def ts_resolution(frame: pd.DataFrame, cutoff: float) -> float:
    """The coarsest of whole days, hours or minutes that every event time of the calibration period is a multiple
    of (0.0: finer). Saved with the model, which floors served event times to it: CDNOW records dates, so two
    orders of one day are one line-date in training but two orders in a stream of seconds (skew review)."""
    ts = frame.loc[frame["ts"] < cutoff, "ts"].to_numpy(np.float64)
    for resolution in TS_RESOLUTIONS:
        if len(ts) and bool((ts % resolution == 0).all()):
            return resolution
    return 0.0


ID_FIELDS = ("item", "category")  # an event's optional ids, hashed into the encoder's embedding buckets


def id_fields(frame: pd.DataFrame, cutoff: float) -> list[str]:
    """The optional ids (item, category) that the calibration period has values for; saved with the model, which
    ignores the others when it serves: an id it never saw in training lands in an embedding bucket that training
    never moved from its random start (CDNOW's replay sends category "music"; found by a train/serve skew review)."""
    before = frame.loc[frame["ts"] < cutoff]
    return [c for c in ID_FIELDS if c in before.columns and bool(before[c].notna().any())]


def sample_users(frame: pd.DataFrame, max_users: int | None) -> tuple[pd.DataFrame, int]:
    """At most ``max_users`` users of the log with all their rows, and how many users the log had.

    The sample is the users with the smallest stable hash (crc32 of the id, ties by id): the same users on every
    run and machine whatever the row order, and a larger cap keeps every user of a smaller one. Training time and
    memory grow with the users; this bounds them on logs far larger than the model needs."""
    import zlib

    users = pd.unique(frame["user_id"])
    if max_users is None or len(users) <= max_users:
        return frame, len(users)
    if max_users < 1:
        raise UserError(f"--max-users must be at least 1, got {max_users}")
    ids = [str(u) for u in users]
    ranked = sorted(range(len(ids)), key=lambda i: (zlib.crc32(ids[i].encode()), ids[i]))
    kept = users[np.sort(np.asarray(ranked[:max_users]))]
    sample = frame[frame["user_id"].isin(kept)]
    sample.attrs["log_end"] = float(frame["ts"].max())  # whether the horizon is covered is the whole log's question
    return sample, len(users)


def log_end(frame: pd.DataFrame) -> float:
    """The last event time of the log (of the whole log when ``frame`` is a ``sample_users`` sample)."""
    return float(frame.attrs.get("log_end", frame["ts"].max()))


def covered_horizon_days(frame: pd.DataFrame, cutoff: float, horizon_days: float) -> float:
    """``horizon_days``, or fewer when the log ends before the horizon does: the whole days from the cut-off through
    the day of the log's last event. Past the log's end nobody buys, so every user would look like a churner there
    and BG/NBD's forecast for the whole horizon would be compared with counts of a part of it."""
    end = log_end(frame)
    if end < cutoff:
        return 0.0
    if end >= cutoff + (horizon_days - 1) * DAY:
        return horizon_days
    return float(math.floor((end - cutoff) / DAY) + 1)


def build_task(frame: pd.DataFrame, cutoff: float, horizon_days: float, *, seed: int = 0,
               fractions: tuple[float, float, float] = SPLIT_FRACTIONS, ring_events: int = RING_EVENTS) -> ChurnTask:
    """Cut a purchase log into the churn task (see the module docstring)."""
    if horizon_days <= 0:
        raise UserError(f"horizon must be positive, got {horizon_days} days")
    horizon_end = cutoff + horizon_days * DAY
    check_calibration(frame, cutoff)
    calib = frame[frame["ts"] < cutoff]
    hold = frame[(frame["ts"] >= cutoff) & (frame["ts"] < horizon_end)]
    if "type" in hold.columns:
        hold = hold[hold["type"] == "purchase"]
    seqs = frame_to_sequences(calib)
    users = np.array(sorted(seqs), dtype=object)
    counts = hold.drop_duplicates(["user_id", "ts"]).groupby("user_id").size()
    count = counts.reindex(users).fillna(0).to_numpy().astype(np.int64)
    churn = (count == 0).astype(np.int64)
    if churn.min() == churn.max():
        raise UserError("every user has the same label in the horizon (all churn or none): "
                        "choose another --cutoff/--horizon-days")
    sequences = [normalize_events(seqs[u], cutoff) for u in users]
    ring_sequences = [seq if len(seqs[u]) <= ring_events else normalize_events(seqs[u][-ring_events:], cutoff)
                      for u, seq in zip(users, sequences)]
    data_end = log_end(frame)
    meta = {
        "n_users": int(len(users)),
        "n_calibration_events": int(len(calib)),
        "n_horizon_purchase_rows": int(len(hold)),
        "churn_rate": float(churn.mean()),
        "cutoff_iso": pd.Timestamp(cutoff, unit="s", tz="UTC").isoformat(),
        "horizon_days": float(horizon_days),
        "horizon_covered_by_data": bool(data_end >= horizon_end - DAY),
        "users_beyond_ring": int(sum(len(seqs[u]) > ring_events for u in users)),
    }
    return ChurnTask(users=users.astype(str), sequences=sequences, churn=churn, count=count,
                     split=split_users(users.astype(str), seed, fractions), cutoff=float(cutoff),
                     horizon_days=float(horizon_days), seed=seed, meta=meta, ring_sequences=ring_sequences,
                     ring_events=ring_events)
