import pytest

from infra.broker import BROKER_KINDS, EmbeddedBroker, installed_kinds

KINDS = installed_kinds()
# both brokers come from declared dependencies: one that no longer starts must fail the run, not drop out of the
# parameters (with both gone every test here was skipped; found by review)
assert sorted(KINDS) == sorted(BROKER_KINDS), f"embedded brokers found: {KINDS}, expected {BROKER_KINDS}"


@pytest.fixture(scope="module", params=KINDS)
def broker(request, tmp_path_factory):
    b = EmbeddedBroker(kind=request.param, log_path=str(tmp_path_factory.mktemp("log") / "broker.log")).start()
    yield b
    b.stop()
