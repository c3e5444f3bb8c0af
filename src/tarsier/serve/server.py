"""Running an ASGI app with uvicorn so that SIGTERM and Ctrl-C drain rather than cut requests off."""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tarsier.errors import TarsierError


def check_port_free(host: str, port: int) -> None:
    """One clear line for a bad, taken or foreign address, before minutes of loading a model."""
    if not 0 < port < 65536:
        raise TarsierError(f"--port must be between 1 and 65535, got {port}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise TarsierError(f"cannot listen on {host}:{port} ({reason}); choose another --port or --host") from None


def run_server(app: Any, host: str, port: int) -> int:
    """Serve until SIGTERM/Ctrl-C, then drain: the server keeps listening and answers new requests
    503 (``Retry-After``) and /health ``draining``, so a load balancer sees it go, until the requests
    in progress have ended; then it exits 0. A second signal stops it at once."""
    import asyncio

    import uvicorn

    class DrainingServer(uvicorn.Server):
        loop: asyncio.AbstractEventLoop | None = None

        async def startup(self, sockets: Any = None) -> None:
            self.loop = asyncio.get_running_loop()
            await super().startup(sockets)

        def handle_exit(self, sig: int, frame: Any) -> None:
            state = app.state.tarsier
            if state["draining"] or self.loop is None or not self.started:
                super().handle_exit(sig, frame)
                return
            state["draining"] = True  # refuse new requests while the others finish
            self.loop.call_soon_threadsafe(lambda: self.loop.create_task(self.exit_when_idle(sig)))

        async def exit_when_idle(self, sig: int) -> None:
            while any(not task.done() for task in list(self.server_state.tasks)):
                await asyncio.sleep(0.05)
            super().handle_exit(sig, None)

        @contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn re-raises the signal after shutting down; a drained server exits 0 instead
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    config = uvicorn.Config(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=None)
    DrainingServer(config).run()
    return 0
