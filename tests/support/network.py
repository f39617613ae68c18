"""Local HTTP servers that record what reaches them: the tests prove with them that an
offline build, a bundle's unpack or a worker without network contacted nothing."""

from __future__ import annotations

import http.server
import select
import socket
import threading

#: Every variable a client (uv, requests, rattler) takes its proxy from.
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


class Recorder(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, handler) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.seen: list[str] = []
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class TunnelHandler(http.server.BaseHTTPRequestHandler):
    """A CONNECT proxy: records the host, then relays bytes both ways."""

    def do_CONNECT(self) -> None:  # noqa: N802 (the HTTP method's name)
        self.server.seen.append(self.path)
        host, _, port = self.path.rpartition(":")
        try:
            upstream = socket.create_connection((host, int(port)), timeout=30)
        except OSError:
            self.send_error(502)
            return
        self.send_response(200, "Connection established")
        self.end_headers()
        conns = [self.connection, upstream]
        try:
            while True:
                ready, _, _ = select.select(conns, [], [], 60)
                if not ready:
                    return
                for conn in ready:
                    data = conn.recv(65536)
                    if not data:
                        return
                    (upstream if conn is self.connection else self.connection).sendall(data)
        finally:
            upstream.close()

    def log_message(self, *args) -> None:
        pass


class NotFoundHandler(http.server.BaseHTTPRequestHandler):
    """Records each request (a channel's repodata, a tool's release), answers 404."""

    def do_GET(self) -> None:  # noqa: N802
        self.server.seen.append(self.path)
        self.send_error(404)

    do_HEAD = do_GET

    def log_message(self, *args) -> None:
        pass
