"""The latency floor: a process that does no work. It consumes the click and purchase topics with the worker's
fetch wait and at once produces ``{"source_event_id": ...}`` to the recommendations topic, with the worker's
linger. Run by ``bench/live.py`` beside the real worker: whatever latency this relay shows is the two broker
hops plus one Python consumer and producer on this machine, which no worker on the same broker can beat.

    python bench/apps/relay.py   (settings from the same TIDEWATER_* environment the worker reads)
"""
from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


async def relay() -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    from tidewater.settings import Settings

    s = Settings.from_env()
    if "noida-fetch-wait" in s.broker_quirks:  # the same fetch pacing as the worker (streams/broker_quirks.py)
        from streams.broker_quirks import pace_fetches

        pace_fetches()
    consumer = AIOKafkaConsumer(s.topic_clicks, s.topic_purchases, bootstrap_servers=s.bootstrap_servers,
                                group_id=f"{s.app_id}-relay", auto_offset_reset="latest",
                                enable_auto_commit=True, fetch_max_wait_ms=s.fetch_max_wait_ms)
    producer = AIOKafkaProducer(bootstrap_servers=s.bootstrap_servers, linger_ms=5)
    await consumer.start()
    await producer.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        while not consumer.assignment():  # joined the group: from here on nothing offered is missed
            await consumer.getmany(timeout_ms=100)
        print("relay ready", flush=True)
        while not stopping.is_set():
            batch = await consumer.getmany(timeout_ms=100)
            for records in batch.values():
                for r in records:
                    event_id = json.loads(r.value)["event_id"]
                    await producer.send(s.topic_recommendations, key=r.key,
                                        value=json.dumps({"source_event_id": event_id}).encode())
    finally:
        await producer.stop()
        await consumer.stop()


if __name__ == "__main__":
    asyncio.run(relay())
