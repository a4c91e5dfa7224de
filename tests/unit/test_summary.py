"""streams/summary.py: how `tidewater up` follows the worker it started."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from streams.summary import worker_stats
from tidewater.errors import UserError


class _Stats(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.headers.get("Authorization") != "Bearer s3cret":
            self.send_response(401)
            self.end_headers()
            return
        body = json.dumps({"processed": 7}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_regression_up_reads_the_stats_of_a_worker_behind_a_read_token():
    """`up` polled GET /stats without TIDEWATER_READ_TOKEN: the worker answered 401 and `up` waited its whole
    timeout, then said the worker had processed nothing (found by review)."""
    server = HTTPServer(("127.0.0.1", 0), _Stats)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        assert worker_stats(port, "s3cret") == {"processed": 7}
        with pytest.raises(UserError, match="TIDEWATER_READ_TOKEN"):
            worker_stats(port, "")
    finally:
        server.shutdown()
