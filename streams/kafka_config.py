"""Connection settings → Faust / aiokafka arguments (SASL, TLS). Secrets are revealed only here."""
from __future__ import annotations

import ssl
from typing import Any

from tidewater.settings import Settings


def ssl_context(s: Settings) -> ssl.SSLContext | None:
    if s.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    from aiokafka.helpers import create_ssl_context

    from tidewater.errors import InvalidSetting

    try:
        return create_ssl_context(
            cafile=s.ssl_cafile or None,
            certfile=s.ssl_certfile or None,
            keyfile=s.ssl_keyfile or None,
            password=s.ssl_key_password.reveal() or None,
        )
    except (ssl.SSLError, OSError) as exc:  # a file that is not PEM, a wrong key password: one line, not a trace
        given = [name for name, value in (("TIDEWATER_SSL_CAFILE", s.ssl_cafile),
                                          ("TIDEWATER_SSL_CERTFILE", s.ssl_certfile),
                                          ("TIDEWATER_SSL_KEYFILE", s.ssl_keyfile)) if value]
        if s.ssl_key_password.reveal():
            given.append("TIDEWATER_SSL_KEY_PASSWORD")
        raise InvalidSetting(f"cannot load the TLS files ({', '.join(given) or 'system defaults'}): {exc}") from None


def faust_credentials(s: Settings) -> Any:
    import faust

    context = ssl_context(s)
    if s.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=s.sasl_username, password=s.sasl_password.reveal(), ssl_context=context,
            mechanism=s.sasl_mechanism)
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def aiokafka_kwargs(s: Settings) -> dict[str, Any]:
    """Keyword arguments for AIOKafkaProducer / AIOKafkaConsumer / AIOKafkaAdminClient."""
    kwargs: dict[str, Any] = {"bootstrap_servers": s.bootstrap_servers, "security_protocol": s.security_protocol}
    context = ssl_context(s)
    if context is not None:
        kwargs["ssl_context"] = context
    if s.security_protocol.startswith("SASL"):
        kwargs.update(sasl_mechanism=s.sasl_mechanism, sasl_plain_username=s.sasl_username,
                      sasl_plain_password=s.sasl_password.reveal())
    return kwargs


def configure_worker_consumer(fetch_max_wait_ms: int) -> None:
    """What Faust does not let us set on the worker's consumer, set before it starts (its fetcher reads both at
    start):

    * the fetch wait: Faust hard-codes ``fetch_max_wait_ms=1500``. A broker that holds an empty fetch for the full
      wait (Tansu does, even when records arrive meanwhile) then adds up to 1.5 s between an event and its
      recommendation;
    * ``read_committed``: Faust reads uncommitted records unless the guarantee is exactly once, so the events of a
      transaction that an upstream producer aborted were applied (found by review). On noida this needs the
      ``noida-aborted-txns`` quirk (streams/broker_quirks.py): without it the next committed transaction of the
      same producer was dropped."""
    from faust.transport.drivers import aiokafka as faust_aiokafka

    thread = faust_aiokafka.AIOKafkaConsumerThread
    original = getattr(thread, "_tidewater_original_create", None) or thread._create_worker_consumer

    def create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = fetch_max_wait_ms
        consumer._isolation_level = "read_committed"
        return consumer

    thread._tidewater_original_create = original
    thread._create_worker_consumer = create_worker_consumer


def unreachable(s: Settings, exc: BaseException, tried: str = "") -> "UserError":
    """The error of a command that could not reach Kafka. aiokafka's message names the address but often no cause
    (a port that accepts connections and never answers, a TLS listener spoken to in plaintext), so say what to
    check (found by review)."""
    from tidewater.errors import UserError

    return UserError(f"cannot reach Kafka at {s.bootstrap_servers}{tried}: {str(exc).strip() or type(exc).__name__}"
                     f" (check the address and port, and that TIDEWATER_SECURITY_PROTOCOL, "
                     f"{s.security_protocol}, is what that listener speaks)")
