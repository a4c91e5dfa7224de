"""Tidewater: real-time retention and recommendation engine for e-commerce.

Package map (the data flow reads top to bottom):

- ``tidewater``  pure domain logic: event schemas, profile state and its idempotent ``apply``,
  windowed activity, the event-time clock, offer policy, settings and the CLI. No Kafka, no asyncio.
- ``streams``    everything that touches Kafka: the Faust app, topics, agents, dead-letter, replay/record, web.
- ``models``     pure ML (no Kafka): churn scorer, recommender, FAISS index, model registry, datasets.
- ``infra``      embedded brokers, topic provisioning, deployment files.
"""
__version__ = "0.1.0"
