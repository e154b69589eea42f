"""Test-only front door to the GCS emulator: plain HTTP, CONNECT + TLS, fake OAuth.

One threaded loopback server plays three roles, because the three kinds of
client reach GCS differently and none of them may be changed for tests:

1. google-cloud-storage and Beam's GcsIO follow `STORAGE_EMULATOR_HOST` over plain
   HTTP. Requests are forwarded to fake-gcs-server byte for byte, except that batch
   requests get a `Content-ID` header on every part: google-cloud-storage 3.x omits
   it and fake-gcs-server silently skips parts without one, so Beam's batched
   deletes/copies (its file-sink finalize) would do nothing. Real GCS accepts
   parts without Content-ID, so adding one only undoes an emulator quirk.
2. TensorFlow's gs:// filesystem has hard-coded https://storage.googleapis.com and
   https://www.googleapis.com endpoints but honours HTTPS_PROXY: it sends
   `CONNECT host:443` here, the server answers 200, terminates TLS with a leaf
   certificate from the session's throwaway CA (trusted via CURL_CA_BUNDLE) and
   forwards the decrypted requests to the emulator. fake-gcs-server already serves
   Google's path layout (/storage/v1, /upload/storage/v1, and /<bucket>/<object>
   when the Host header is storage.googleapis.com), so only upload `Location`
   headers are rewritten back to https://www.googleapis.com.
3. OAuth: every client is given a fake `authorized_user` credentials file.
   TensorFlow refreshes it at its hard-coded www.googleapis.com/oauth2/v3/token,
   a real round trip through this proxy answered with a fixed bearer token, so
   nothing waits on a missing metadata server.

The server records every request (`requests`) so tests can prove traffic went
through it, and every forwarding error (`errors`) so a failing test can say why.

Fault injection (`refuse`): tests can make the front answer matching requests with
an error status instead of forwarding them, for a window they control, e.g. every
upload of a checkpoint's files, or every write to a bucket after the first N. The
emulator keeps its state, so nothing written before the window is lost.
"""
from __future__ import annotations

import http.client
import json
import re
import socket
import socketserver
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import NamedTuple
from urllib.parse import urlsplit

GOOGLE_HOSTS = ("storage.googleapis.com", "www.googleapis.com", "oauth2.googleapis.com")
FAKE_TOKEN = "seqrec-fake-token"
_HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade", "expect", "host",
    "content-length",
}


def add_batch_content_ids(body: bytes, content_type: str) -> bytes:
    """Gives each part of a multipart/mixed batch body a Content-ID if it has none.

    Args:
      body: the batch request body, parts separated by `--boundary` lines.
      content_type: its Content-Type header, which names the boundary.
    Returns:
      The body with `Content-ID: <seqrec+i>` as the first header of each part
      lacking one; other bytes are unchanged.
    """
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not match:
        return body
    delimiter = b"--" + match.group(1).encode()
    pieces = body.split(delimiter)
    # pieces[0] is the preamble; a piece starting with "--" is the close delimiter.
    for i in range(1, len(pieces)):
        part = pieces[i]
        if part.startswith(b"--"):
            continue
        newline = b"\r\n" if part.startswith(b"\r\n") else b"\n"
        end = part.find(newline + newline)
        headers = part[: end if end >= 0 else len(part)]
        if re.search(rb"(?im)^content-id:", headers):
            continue
        pieces[i] = newline + b"Content-ID: <seqrec+%d>" % i + part
    return delimiter.join(pieces)


class Request(NamedTuple):
    """One request seen by the front; host is "plain" for non-TLS clients."""

    host: str
    method: str
    path: str
    authorization: str


class FrontServer(ThreadingHTTPServer):
    """Loopback server in front of fake-gcs-server (see the module docstring)."""

    daemon_threads = True
    # Many short-lived connections from several clients at once.
    request_queue_size = 64

    def __init__(self, cert_file: str, key_file: str):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.upstream: tuple[str, int] | None = None
        self.ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ssl_context.load_cert_chain(cert_file, key_file)
        self._lock = threading.Lock()
        self.requests: list[Request] = []
        self.errors: list[str] = []
        self.refused: list[Request] = []
        self._refuse: tuple[Callable[[Request], bool], int] | None = None

    def refuse(self, predicate: Callable[[Request], bool] | None, status: int = 503) -> None:
        """Answers requests matching `predicate` with `status` (None: forward all again).

        503 is what GCS answers in an outage: clients retry it (within their retry
        budget), unlike a 4xx, so this exercises the clients' real retry paths.
        """
        with self._lock:
            self._refuse = None if predicate is None else (predicate, status)

    def refusal_for(self, request: Request) -> int | None:
        with self._lock:
            rule = self._refuse
        if rule is None or not rule[0](request):
            return None
        with self._lock:
            self.refused.append(request)
        return rule[1]

    def set_upstream(self, emulator_url: str) -> None:
        parts = urlsplit(emulator_url)
        self.upstream = (parts.hostname, parts.port)
        self.emulator_url = emulator_url.rstrip("/")

    def record(self, host: str, method: str, path: str, authorization: str) -> None:
        with self._lock:
            self.requests.append(Request(host, method, path, authorization))

    def record_error(self, message: str) -> None:
        with self._lock:
            self.errors.append(message)

    def handle_error(self, request, client_address):
        # Clients hanging up mid-connection is normal; keep pytest output clean.
        import sys

        self.record_error(f"{client_address}: {sys.exc_info()[1]!r}")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: TF and requests reuse connections
    timeout = 120  # a stuck client must not pin a thread forever
    server: FrontServer
    tls_host: str | None = None

    def setup(self):
        super().setup()
        # Headers and body go out in separate writes; with Nagle's algorithm and the
        # client's delayed ACK every response would stall ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format, *args):
        pass  # quiet: failures are kept in server.errors instead

    # -- CONNECT: become a TLS server for a Google host --------------------------------
    def do_CONNECT(self):
        host, _, _port = self.path.partition(":")
        self.server.record(host, "CONNECT", self.path, "")
        if host not in GOOGLE_HOSTS:
            self.send_error(403, f"test proxy only intercepts {GOOGLE_HOSTS}")
            return
        self.send_response(200, "Connection established")
        self.send_header("Content-Length", "0")
        self.end_headers()
        self.wfile.flush()
        try:
            tls = self.server.ssl_context.wrap_socket(self.connection, server_side=True)
        except (ssl.SSLError, OSError) as e:
            self.server.record_error(f"TLS handshake for {host}: {e!r}")
            self.close_connection = True
            return
        # From here on BaseHTTPRequestHandler.handle() keeps reading requests, now
        # from the decrypted stream.
        self.connection = tls
        self.rfile = tls.makefile("rb")
        self.wfile = socketserver._SocketWriter(tls)
        self.tls_host = host
        self.close_connection = False

    # -- Everything else: fake OAuth or forward to the emulator --------------------------
    def do_GET(self):
        self._forward()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _is_token_request(self) -> bool:
        if self.tls_host == "oauth2.googleapis.com":
            return True
        return self.tls_host == "www.googleapis.com" and self.path.startswith("/oauth2/")

    def _reply(self, status: int, headers: list[tuple[str, str]], data: bytes, reason=None):
        self.send_response(status, reason)
        for key, value in headers:
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD" and data:
            self.wfile.write(data)

    def _forward(self):
        body = self._read_body()
        request = Request(self.tls_host or "plain", self.command, self.path,
                          self.headers.get("Authorization", ""))
        self.server.record(*request)
        if self._is_token_request():
            data = json.dumps(
                {"access_token": FAKE_TOKEN, "token_type": "Bearer", "expires_in": 3600}
            ).encode()
            self._reply(200, [("Content-Type", "application/json"),
                              ("Content-Length", str(len(data)))], data)
            return
        if self.tls_host is not None and self.tls_host != "storage.googleapis.com" and not (
            self.path.startswith(("/storage/v1/", "/upload/storage/v1/", "/batch/storage/v1"))
        ):
            self.send_error(404, f"test proxy has no route for {self.tls_host}{self.path}")
            return
        status = self.server.refusal_for(request)
        if status is not None:
            data = json.dumps({"error": {"code": status, "message": "refused by the test proxy"}})
            self._reply(status, [("Content-Type", "application/json"),
                                 ("Content-Length", str(len(data)))], data.encode())
            return

        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        if self.path.startswith("/batch/storage/v1"):
            body = add_batch_content_ids(body, self.headers.get("Content-Type", ""))
        if body or self.command in ("POST", "PUT", "PATCH"):
            headers["Content-Length"] = str(len(body))
        upstream_host, upstream_port = self.server.upstream
        # fake-gcs-server routes /<bucket>/<object> downloads by this Host header.
        headers["Host"] = (
            "storage.googleapis.com"
            if self.tls_host == "storage.googleapis.com"
            else f"{upstream_host}:{upstream_port}"
        )
        conn = http.client.HTTPConnection(upstream_host, upstream_port, timeout=120)
        try:
            conn.request(self.command, self.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except OSError as e:
            self.server.record_error(f"{self.command} {self.path}: {e!r}")
            self.send_error(502, f"emulator unreachable: {e!r}")
            return
        finally:
            conn.close()

        out = []
        for key, value in resp.getheaders():
            lower = key.lower()
            if lower in _HOP_BY_HOP or lower in ("date", "server"):
                continue
            if lower == "location":
                # Resumable-upload sessions must come back through this server, as they
                # would to real GCS, not straight to the emulator's port (fake-gcs-server
                # builds this URL from the request, ignoring -external-url).
                public = "https://www.googleapis.com" if self.tls_host else self.server.url
                value = value.replace(self.server.emulator_url, public)
            out.append((key, value))
        if self.command == "HEAD":
            length = resp.getheader("Content-Length")
            if length is not None:
                out.append(("Content-Length", length))
        elif resp.status not in (204, 304):
            out.append(("Content-Length", str(len(data))))
        self._reply(resp.status, out, data, resp.reason)
