"""``noida-aborted-txns`` (streams/broker_quirks.py): noida lists aborted transactions whose abort marker lies
before the fetch offset, and aiokafka's read_committed filter then dropped the producer's next committed
transaction. ``live_aborts`` takes such entries out before the filter runs. The property test plays aiokafka's
filter (``aiokafka_filter``, its rule in ``PartitionRecords._unpack_records``) over random transactional logs
and fetch windows, with the entries a correct broker sends and with noida's."""
from __future__ import annotations

from hypothesis import given, settings, strategies as st

from streams.broker_quirks import Batch, live_aborts


def data(offset: int, producer: int | None, transactional: bool = True) -> Batch:
    return Batch(offset, offset + 1, producer, transactional, None)


def marker(offset: int, producer: int, kind: str) -> Batch:
    return Batch(offset, offset + 1, producer, True, kind)


def aiokafka_filter(batches: list[Batch], aborted: list[tuple[int, int]]) -> list[int]:
    """The offsets a read_committed aiokafka consumer hands over (its rule, replayed on Batch tuples)."""
    entries = sorted(aborted, key=lambda e: e[1])
    aborted_producers: set[int] = set()
    out = []
    for batch in batches:
        if batch.producer is not None:
            while entries and entries[0][1] <= batch.base:
                aborted_producers.add(entries.pop(0)[0])
            if batch.marker == "abort":
                aborted_producers.discard(batch.producer)
            if batch.transactional and batch.producer in aborted_producers:
                continue
        if batch.marker is None:
            out.append(batch.base)
    return out


def test_regression_a_committed_transaction_after_an_aborted_one_is_not_dropped():
    # offsets: 0 a0 (committed), 1 commit, 2 a1, 3 abort, 4 a2, 5 commit; a live consumer fetches from 4
    fetch = [data(4, 1000), marker(5, 1000, "commit")]
    noida_says = [(1000, 2)]
    assert aiokafka_filter(fetch, noida_says) == []  # the defect: a2 was dropped
    kept, cut = live_aborts(fetch, noida_says, 4)
    assert (kept, cut) == ([], None)
    assert aiokafka_filter(fetch, kept) == [4]


def test_an_aborted_transaction_that_reaches_into_the_fetch_is_kept():
    fetch = [data(4, 1000), marker(5, 1000, "abort"), data(6, 1000), marker(7, 1000, "commit")]
    kept, cut = live_aborts(fetch, [(1000, 2)], 4)
    assert (kept, cut) == ([(1000, 2)], None)
    assert aiokafka_filter(fetch, kept) == [6]


def test_entries_that_begin_in_the_fetch_and_other_producers_are_left_alone():
    fetch = [marker(4, 7, "commit"), data(5, 1000), marker(6, 1000, "abort")]
    assert live_aborts(fetch, [(1000, 5)], 4) == ([(1000, 5)], None)
    assert live_aborts(fetch, [(1000, 2), (1000, 5)], 4) == ([(1000, 2), (1000, 5)], None)


def test_a_fetch_without_the_producers_marker_is_cut_before_its_batches():
    fetch = [data(4, None, transactional=False), data(5, 1000), data(6, 1000)]
    assert live_aborts(fetch, [(1000, 2)], 4) == ([(1000, 2)], 5)
    # nothing before them: Kafka's meaning (a cut would fetch the same again)
    assert live_aborts(fetch[1:], [(1000, 2)], 5) == ([(1000, 2)], None)


@st.composite
def logs(draw):
    """A partition's log of one-record batches from up to three producers (None: not transactional), every
    transaction ended, and the aborted ones as (producer, first offset, marker offset)."""
    batches: list[Batch] = []
    open_first: dict[int, int] = {}
    aborted: list[tuple[int, int, int]] = []
    for _ in range(draw(st.integers(0, 30))):
        producer = draw(st.sampled_from([None, 1, 2, 3]))
        offset = len(batches)
        if producer is None:
            batches.append(data(offset, None, transactional=False))
        elif producer in open_first and draw(st.booleans()):
            kind = draw(st.sampled_from(["commit", "abort"]))
            batches.append(marker(offset, producer, kind))
            if kind == "abort":
                aborted.append((producer, open_first[producer], offset))
            del open_first[producer]
        else:
            open_first.setdefault(producer, offset)
            batches.append(data(offset, producer))
    for producer, first in sorted(open_first.items()):  # read_committed reads below the LSO: all ended
        kind = draw(st.sampled_from(["commit", "abort"]))
        batches.append(marker(len(batches), producer, kind))
        if kind == "abort":
            aborted.append((producer, first, len(batches) - 1))
    return batches, aborted


@settings(max_examples=400, deadline=None)
@given(logs(), st.data())
def test_the_filter_hands_over_exactly_the_committed_records_of_any_fetch(log, draw):
    batches, aborted = log
    start = draw.draw(st.integers(0, len(batches)))
    end = draw.draw(st.integers(start, len(batches)))  # a response cut short by its size limit
    window = batches[start:end]
    txn_of = {}
    for producer, first, last in aborted:
        for b in batches[first:last]:
            if b.producer == producer:
                txn_of[b.base] = "aborted"
    committed = [b.base for b in window if b.marker is None and txn_of.get(b.base) != "aborted"]
    kafka_says = [(p, first) for p, first, last in aborted if last >= start and first < end]
    noida_says = [(p, first) for p, first, last in aborted if first < end]
    for says in (kafka_says, noida_says):
        kept, cut = live_aborts(window, says, start)
        assert cut is None or start < cut < end
        handed = aiokafka_filter([b for b in window if cut is None or b.base < cut], kept)
        expected = [o for o in committed if cut is None or o < cut]
        if says is noida_says and handed != expected:
            # the one case left: the fetch starts at a transaction whose marker it does not hold (Kafka's
            # meaning is kept there, see the quirk's docstring)
            first = window[0]
            assert first.transactional and first.marker is None and cut is None
            assert not any(b.producer == first.producer and b.marker for b in window)
            continue
        assert handed == expected
        if says is kafka_says:
            assert kept == says  # nothing changes on a correct broker
