"""How the Python client reaches the API: HTTPS with certificate checks, a path prefix behind a
reverse proxy, the environment's proxy, and any answer that is not the API's JSON as ApiError.

The TLS endpoint and the proxies are small servers this file starts on loopback, in front of the
session's real API; the certificate is made here with the openssl command.
"""

import http.client
import http.server
import socket
import ssl
import subprocess
import threading
import urllib.parse
from pathlib import Path

import pytest

from taskkernel import ApiError, Client
from tests.conftest import free_port

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (as an IP subjectAltName) and its key."""
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True, timeout=30)
    return cert, key


class TlsRelay:
    """Accepts TLS on a loopback port and relays the bytes to a plain TCP address (TLS termination)."""

    def __init__(self, target: tuple[str, int], cert: Path, key: Path):
        self.target = target
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            tls = self.context.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):  # a client that refused our certificate
            raw.close()
            return
        upstream = socket.create_connection(self.target)
        self.sockets += [tls, upstream]
        threading.Thread(target=self._pump, args=(upstream, tls), daemon=True).start()
        self._pump(tls, upstream)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()
        for s in self.sockets:
            s.close()


def start_proxy(api_url: str, prefix: str = "", seen: list | None = None, answer_502: bool = False, port: int = 0):
    """An HTTP proxy on loopback in front of the API: as a reverse proxy it strips `prefix` from the
    path; as a forward proxy it takes absolute request targets. Records each request target in `seen`."""
    upstream = urllib.parse.urlsplit(api_url)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _forward(self):
            if seen is not None:
                seen.append(self.path)
            if answer_502:
                page = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
                self.send_response(502)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)
                return
            target = urllib.parse.urlsplit(self.path)
            path = target.path
            if not path.startswith(prefix + "/"):
                self.send_error(404)
                return
            path = path[len(prefix):] + (f"?{target.query}" if target.query else "")
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
            conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=30)
            conn.request(self.command, path, body=body or None, headers=headers)
            response = conn.getresponse()
            self.send_response(response.status)
            for name, value in response.getheaders():
                if name.lower() not in ("connection", "transfer-encoding", "content-length"):
                    self.send_header(name, value)
            self.send_header("Connection", "close")
            self.end_headers()
            while chunk := response.read1(65536):
                self.wfile.write(chunk)
                self.wfile.flush()
            conn.close()
            self.close_connection = True

        do_GET = do_POST = do_PUT = do_DELETE = _forward

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def tls_url(service, certificate):
    api = urllib.parse.urlsplit(service.api_url)
    relay = TlsRelay((api.hostname, api.port), *certificate)
    try:
        yield f"https://127.0.0.1:{relay.port}"
    finally:
        relay.close()


def test_https_checks_the_certificate_against_the_given_ca_bundle(tls_url, certificate):
    client = Client(tls_url, ca_bundle=str(certificate[0]))
    with client.start("python") as nb:
        assert nb.evaluate("6 * 7")["outputs"][0]["data"]["text/plain"] == "42"
        assert nb.evaluate("7 * 7")["outputs"][0]["data"]["text/plain"] == "49", "over the kept connection"
        kinds = [m["header"]["msg_type"] for m in nb.feed(timeout=1)]
        assert kinds.count("execute_reply") == 2, "the feed streams over TLS too"
        nb.write_file("data/in.bin", bytes(range(256)) * 64)  # files stream over TLS too
        assert nb.read_file("data/in.bin") == bytes(range(256)) * 64


def test_https_refuses_a_certificate_it_cannot_verify(tls_url):
    with pytest.raises(ssl.SSLCertVerificationError):
        Client(tls_url).engines()


def test_a_path_prefix_in_the_url_is_kept(service):
    seen: list[str] = []
    proxy = start_proxy(service.api_url, prefix="/taskkernel", seen=seen)
    try:
        client = Client(f"http://127.0.0.1:{proxy.server_port}/taskkernel/")
        with client.start("python") as nb:
            assert nb.evaluate("1 + 1")["outputs"][0]["data"]["text/plain"] == "2"
            assert [m["header"]["msg_type"] for m in nb.feed(timeout=1)][-1] == "status"
            nb.write_file("note.txt", b"behind a proxy")
            assert nb.read_file("note.txt") == b"behind a proxy"
        assert seen and all(path.startswith("/taskkernel/api/") for path in seen), seen
    finally:
        proxy.shutdown()
        proxy.server_close()


def test_the_environments_proxy_is_used_for_a_remote_host(service, monkeypatch):
    seen: list[str] = []
    proxy = start_proxy(service.api_url, seen=seen)
    try:
        monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{proxy.server_port}")
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        # a name only the proxy resolves (it sends everything to the API): the client never looks it up
        engines = Client("http://notebooks.example:8123").engines()
        assert {e["name"] for e in engines} >= {"python"}
        assert seen == ["http://notebooks.example:8123/api/engines"], "an absolute target, to the proxy"
        monkeypatch.setenv("no_proxy", "notebooks.example")
        with pytest.raises(OSError):  # bypassed: the name does not resolve
            Client("http://notebooks.example:8123").engines()
    finally:
        proxy.shutdown()
        proxy.server_close()


def test_a_proxys_html_error_page_is_an_api_error(service):
    proxy = start_proxy(service.api_url, answer_502=True)
    try:
        with pytest.raises(ApiError) as info:
            Client(f"http://127.0.0.1:{proxy.server_port}").engines()
        assert info.value.status == 502 and info.value.code == "http_error"
        assert "502 Bad Gateway" in info.value.message
    finally:
        proxy.shutdown()
        proxy.server_close()


def test_an_api_error_keeps_its_code_and_fields(client):
    with pytest.raises(ApiError) as info:
        client.request("POST", "/notebooks", {"engine": 5})
    assert (info.value.status, info.value.code) == (400, "invalid_field")
    assert info.value.details["field"] == "engine"


def test_a_client_works_again_once_a_refusing_server_is_up(service):
    port = free_port()
    client = Client(f"http://127.0.0.1:{port}")
    with pytest.raises(ConnectionRefusedError):
        client.engines()
    proxy = start_proxy(service.api_url, port=port)
    try:
        assert {e["name"] for e in client.engines()} >= {"python"}, "the failed connection is not reused"
    finally:
        proxy.shutdown()
        proxy.server_close()
