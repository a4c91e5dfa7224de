"""A worker's ``Pipeline`` without a broker (nothing connects until the worker starts), for tests of its parts."""
from __future__ import annotations

from typing import Any

from streams.app import create_app
from tidewater.settings import Settings


def offline_pipeline(tmp_path, store: str = "memory://", **env: str) -> Any:
    """``create_app(...).tidewater`` with its tables in ``store`` under ``tmp_path`` and 4 partitions."""
    settings = Settings.from_env(environ={"TIDEWATER_STORE": store, "TIDEWATER_DATA_DIR": str(tmp_path / "data"),
                                          "TIDEWATER_REGISTRY_DIR": str(tmp_path / "registry"),
                                          "TIDEWATER_PARTITIONS": "4", "TIDEWATER_BOOTSTRAP_SERVERS": "127.0.0.1:1",
                                          **env})
    return create_app(settings).tidewater
