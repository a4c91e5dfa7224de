"""Subprocess for the group tests: join a group, print ASSIGNED <partitions> when assigned, then idle."""
import asyncio
import sys

from aiokafka import AIOKafkaConsumer
from aiokafka.abc import ConsumerRebalanceListener


async def main(bootstrap: str, topic: str, group: str, instance: str) -> None:
    class Listener(ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked):
            pass

        def on_partitions_assigned(self, assigned):
            print("ASSIGNED", sorted(tp.partition for tp in assigned), flush=True)

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                group_instance_id=instance or None, session_timeout_ms=6000,
                                heartbeat_interval_ms=500, rebalance_timeout_ms=6000)
    consumer.subscribe([topic], listener=Listener())
    await consumer.start()
    try:
        while True:
            await consumer.getmany(timeout_ms=500)
    finally:
        await consumer.stop()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
