"""HTTPS server for the fake vendor repos (bridge IP:443), plain HTTP on :80 for Ubuntu's archive stand-in (same
root), plus plain HTTP for the wheel directory.

Run: python3 -m tests.testbed.vendor_server BIND WWW_DIR HTTP_DIR HTTP_PORT CERT KEY DISABLED_FILE
Path prefixes listed in DISABLED_FILE (one a line, re-read per request) answer 404: a "broken" vendor repo.
The standard library's server is enough for a handful of apt/pip clients.
"""

from __future__ import annotations

import functools
import http.server
import ssl
import sys
import threading
from pathlib import Path


class Handler(http.server.SimpleHTTPRequestHandler):
    """Static files; paths under a disabled prefix are 404 ("this repo is gone")."""

    disabled_file: Path

    def _disabled(self) -> bool:
        if not self.disabled_file.exists():
            return False
        return any(self.path.startswith(p) for p in self.disabled_file.read_text().split())

    def do_GET(self) -> None:
        if self._disabled():
            self.send_error(404, "repository disabled by the testbed")
            return
        super().do_GET()

    def do_HEAD(self) -> None:
        if self._disabled():
            self.send_error(404, "repository disabled by the testbed")
            return
        super().do_HEAD()


def serve(bind: str, port: int, root: str, disabled: Path, ctx: ssl.SSLContext | None) -> http.server.HTTPServer:
    handler = type("H", (Handler,), {"disabled_file": disabled})
    srv = http.server.ThreadingHTTPServer((bind, port), functools.partial(handler, directory=root))
    if ctx is not None:
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    return srv


def main(argv: list[str]) -> None:
    bind, www, http_dir, http_port, cert, key, disabled = argv
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    https = serve(bind, 443, www, Path(disabled), ctx)
    plain = serve(bind, int(http_port), http_dir, Path(disabled), None)
    threading.Thread(target=plain.serve_forever, daemon=True).start()
    archive = serve(bind, 80, www, Path(disabled), None)  # http://archive.ubuntu.com/ubuntu (ubuntu_archive.py)
    threading.Thread(target=archive.serve_forever, daemon=True).start()
    print(f"serving https://{bind}:443 and http://{bind}:80 from {www}, http://{bind}:{http_port} from {http_dir}",
          flush=True)
    https.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
