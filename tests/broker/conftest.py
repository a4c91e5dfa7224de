import pytest

from infra.broker import EmbeddedBroker, installed_kinds

KINDS = installed_kinds()


@pytest.fixture(scope="module", params=KINDS)
def broker(request, tmp_path_factory):
    b = EmbeddedBroker(kind=request.param, log_path=str(tmp_path_factory.mktemp("log") / "broker.log")).start()
    yield b
    b.stop()
