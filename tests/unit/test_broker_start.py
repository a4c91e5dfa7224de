"""infra/broker.py: starting an embedded broker on a port picked for it (a real Tansu process, no Kafka client)."""
from __future__ import annotations

import socket

import pytest

import infra.broker
from infra.broker import EmbeddedBroker, api_versions_ok
from tidewater.errors import UserError


@pytest.fixture
def taken_port():
    """A port something else listens on (and never answers Kafka's ApiVersions)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_regression_a_picked_port_taken_before_the_broker_binds_it_is_replaced(monkeypatch, taken_port):
    """free_port() returns a port that was free when it looked; another process can bind it before the broker
    does, and the broker then exits at once: a test run failed on that race. Another port is tried."""
    picks = iter([taken_port])
    real = infra.broker.free_port
    monkeypatch.setattr(infra.broker, "free_port", lambda: next(picks, None) or real())
    broker = EmbeddedBroker("tansu").start(timeout=20)
    try:
        assert broker.port != taken_port and api_versions_ok(broker.host, broker.port)
    finally:
        broker.stop()


def test_a_port_given_by_the_user_is_not_replaced(taken_port):
    with pytest.raises(UserError, match=f"tansu broker on port {taken_port} exited"):
        EmbeddedBroker("tansu", port=taken_port).start(timeout=20)
