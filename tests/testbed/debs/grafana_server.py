#!/usr/bin/python3
"""Testbed stand-in for Grafana's server (`/usr/share/grafana/bin/grafana server ...` in Grafana's .deb).

What it does like Grafana (the parts the deploy and the e2e test rely on):
  - listens on GF_SERVER_HTTP_ADDR:GF_SERVER_HTTP_PORT (default all addresses, port 3000); grafana.ini is not read;
  - the admin user's password: GF_SECURITY_ADMIN_PASSWORD (default "admin") is taken on the FIRST start only, when the
    database (<data>/grafana.db, here a JSON file) is created; later starts keep the stored password, as Grafana does;
  - file provisioning from cfg:default.paths.provisioning: datasources/*.yaml (apiVersion 1, `datasources` list)
    and dashboards/*.yaml providers of type `file` whose options.path holds dashboard JSON files, re-read on each
    request (Grafana polls them); a dashboard without a title, with a uid over 40 characters or that is not a JSON
    object is skipped with an error in the log, as Grafana refuses it;
  - HTTP API: GET /api/health (no auth), with basic auth: /api/search, /api/dashboards/uid/<uid>, /api/datasources,
    /api/datasources/uid/<uid>; 401 without valid credentials.
What it does not do: render anything, query data sources, alerting, users beyond admin, sessions, plugins.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

VERSION = os.environ.get("GRAFANA_STANDIN_VERSION", "12.3.0")


def cfg_paths(argv: list[str]) -> dict[str, str]:
    out = {"data": "/var/lib/grafana", "provisioning": "/etc/grafana/provisioning"}
    for a in argv:
        if a.startswith("cfg:default.paths.") and "=" in a:
            key, value = a[len("cfg:default.paths."):].split("=", 1)
            out[key] = value
    return out


def log(msg: str) -> None:
    print(msg, flush=True)


class State:
    def __init__(self, paths: dict[str, str]) -> None:
        self.prov = Path(paths["provisioning"])
        db = Path(paths["data"]) / "grafana.db"
        if db.exists():
            self.user = json.loads(db.read_text())
        else:  # first start: the admin user is created with the configured password
            salt = secrets.token_hex(8)
            password = os.environ.get("GF_SECURITY_ADMIN_PASSWORD", "admin")
            self.user = {"login": os.environ.get("GF_SECURITY_ADMIN_USER", "admin"), "salt": salt,
                         "hash": hashlib.sha256((salt + password).encode()).hexdigest()}
            db.parent.mkdir(parents=True, exist_ok=True)
            db.write_text(json.dumps(self.user))
            os.chmod(db, 0o640)
            log(f'logger=sqlstore msg="Created default admin" user={self.user["login"]}')

    def auth(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        try:
            login, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return False
        return login == self.user["login"] and secrets.compare_digest(
            hashlib.sha256((self.user["salt"] + password).encode()).hexdigest(), self.user["hash"])

    def _yaml(self, kind: str) -> list[dict]:
        out = []
        for f in sorted((self.prov / kind).glob("*.y*ml")):
            try:
                doc = yaml.safe_load(f.read_text()) or {}
            except (OSError, yaml.YAMLError) as exc:
                log(f'logger=provisioning level=error msg="failed to read {f}" error="{exc}"')
                continue
            out.append(doc)
        return out

    def datasources(self) -> list[dict]:
        return [d for doc in self._yaml("datasources") for d in doc.get("datasources") or []]

    def dashboards(self) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for doc in self._yaml("dashboards"):
            for p in doc.get("providers") or []:
                if p.get("type", "file") != "file":
                    continue
                root = Path((p.get("options") or {}).get("path", ""))
                for f in sorted(root.rglob("*.json")) if root.is_dir() else []:
                    try:
                        d = json.loads(f.read_text())
                    except (OSError, ValueError) as exc:
                        log(f'logger=provisioning.dashboard level=error msg="failed to load dashboard from {f}" '
                            f'error="{exc}"')
                        continue
                    if not isinstance(d, dict) or not str(d.get("title") or "").strip():
                        log(f'logger=provisioning.dashboard level=error msg="failed to save dashboard {f}" '
                            'error="Dashboard title cannot be empty"')
                        continue
                    uid = d.get("uid") or hashlib.sha1(str(f).encode()).hexdigest()[:14]
                    if len(str(uid)) > 40:
                        log(f'logger=provisioning.dashboard level=error msg="failed to save dashboard {f}" '
                            'error="uid too long, max 40 characters"')
                        continue
                    out[str(uid)] = {"dashboard": {**d, "uid": uid}, "folder": p.get("folder", ""), "file": str(f)}
        return out


class Handler(BaseHTTPRequestHandler):
    state: State

    def log_message(self, fmt: str, *args: object) -> None:
        log(f"logger=context msg=\"Request Completed\" path={self.path} {fmt % args}")

    def _send(self, code: int, body: object) -> None:
        raw = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/api/health":
            return self._send(200, {"database": "ok", "version": VERSION, "commit": "testbed-standin"})
        if not path.startswith("/api/"):
            return self._send(200, {"message": "grafana stand-in: no UI"})
        if not self.state.auth(self.headers.get("Authorization")):
            return self._send(401, {"message": "Invalid username or password"})
        if path == "/api/search":
            return self._send(200, [{"uid": uid, "title": d["dashboard"]["title"], "type": "dash-db",
                                     "folderTitle": d["folder"], "tags": d["dashboard"].get("tags", [])}
                                    for uid, d in sorted(self.state.dashboards().items())])
        if path.startswith("/api/dashboards/uid/"):
            d = self.state.dashboards().get(path.rsplit("/", 1)[1])
            if d is None:
                return self._send(404, {"message": "Dashboard not found"})
            return self._send(200, {"dashboard": d["dashboard"], "meta": {"provisioned": True,
                                                                          "provisionedExternalId": d["file"],
                                                                          "folderTitle": d["folder"]}})
        if path == "/api/datasources":
            return self._send(200, self.state.datasources())
        if path.startswith("/api/datasources/uid/"):
            uid = path.rsplit("/", 1)[1]
            found = [d for d in self.state.datasources() if d.get("uid") == uid]
            return self._send(200, found[0]) if found else self._send(404, {"message": "Data source not found"})
        return self._send(404, {"message": "Not found"})


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "server":
        print("grafana stand-in: only `grafana server ...` is implemented", file=sys.stderr)
        return 2
    state = State(cfg_paths(argv[1:]))
    addr = os.environ.get("GF_SERVER_HTTP_ADDR", "")
    port = int(os.environ.get("GF_SERVER_HTTP_PORT", "3000"))
    handler = type("H", (Handler,), {"state": state})
    srv = ThreadingHTTPServer((addr, port), handler)
    log(f'logger=http.server msg="HTTP Server Listen" address={addr or "[::]"}:{port} protocol=http')
    srv.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
