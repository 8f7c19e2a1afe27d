"""A loopback stand-in for the Hugging Face Hub: just the endpoints ``huggingface_hub`` calls for a push.

It keeps what it receives in memory so a test compares it byte for byte with what was pushed: repositories
(``/api/repos/create``), branches, the pre-upload query (files at or above ``lfs_threshold`` bytes are told to go
by LFS), the LFS batch API with "basic" transfers (the client PUTs the bytes here; their sha256 is checked),
README metadata validation and the NDJSON commit. Every call needs ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse


@dataclass
class Repo:
    private: bool
    branches: dict[str, dict[str, bytes]] = field(default_factory=lambda: {"main": {}})
    commits: list[str] = field(default_factory=list)


class FakeHub:
    """``with FakeHub(token) as hub:`` serves on ``hub.endpoint`` until the block ends."""

    def __init__(self, token: str, lfs_threshold: int = 1024):
        self.token, self.lfs_threshold = token, lfs_threshold
        self.repos: dict[str, Repo] = {}
        self.blobs: dict[str, bytes] = {}
        self.calls: list[str] = []        # "METHOD path" of every request, in order
        self.lfs_uploads: list[str] = []  # oids received through LFS
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "FakeHub":
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        return self.repos[repo_id].branches[revision]

    # ------------------------------------------------------------------ the endpoints
    def route(self, method: str, path: str, body: bytes) -> tuple[int, dict]:
        if method == "POST" and path == "/api/validate-yaml":
            return 200, {"errors": [], "warnings": []}
        if method == "POST" and path == "/api/repos/create":
            data = json.loads(body)
            repo_id = f"{data['organization']}/{data['name']}" if data.get("organization") else data["name"]
            if repo_id in self.repos:
                return 409, {"error": "You already created this model repo", "url": f"{self.endpoint}/{repo_id}"}
            self.repos[repo_id] = Repo(private=bool(data.get("private") or data.get("visibility") == "private"))
            return 200, {"url": f"{self.endpoint}/{repo_id}", "name": repo_id}
        if method == "PUT" and path.startswith("/_lfs/"):
            oid = path.rsplit("/", 1)[1]
            if hashlib.sha256(body).hexdigest() != oid:
                return 400, {"error": "sha256 mismatch"}
            self.blobs[oid] = body
            self.lfs_uploads.append(oid)
            return 200, {}
        match = re.fullmatch(r"/([^/]+/[^/]+)\.git/info/lfs/objects/batch", path)
        if method == "POST" and match:
            objects = json.loads(body)["objects"]
            return 200, {"transfer": "basic", "objects": [
                {"oid": o["oid"], "size": o["size"], "authenticated": True,
                 "actions": {"upload": {"href": f"{self.endpoint}/_lfs/{o['oid']}"}}} for o in objects]}
        match = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(preupload|commit|branch)/(.+)", path)
        if method == "POST" and match:
            repo_id, action, revision = match.group(1), match.group(2), unquote(match.group(3))
            repo = self.repos.get(repo_id)
            if repo is None:
                return 404, {"error": f"Repository {repo_id} not found"}
            return getattr(self, f"_{action}")(repo, repo_id, revision, body)
        return 404, {"error": f"fake hub: no route for {method} {path}"}

    def _preupload(self, repo, repo_id, revision, body):
        files = json.loads(body)["files"]
        return 200, {"files": [{"path": f["path"], "shouldIgnore": False, "oid": None,
                                "uploadMode": "lfs" if f["size"] >= self.lfs_threshold else "regular"} for f in files]}

    def _branch(self, repo, repo_id, revision, body):
        if revision in repo.branches:
            return 409, {"error": "Reference already exists"}
        repo.branches[revision] = dict(repo.branches["main"])
        return 200, {}

    def _commit(self, repo, repo_id, revision, body):
        if revision not in repo.branches:
            return 404, {"error": f"Revision {revision} not found"}
        staged = dict(repo.branches[revision])
        for line in body.decode().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            value = item["value"]
            if item["key"] == "file":
                staged[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] == "lfsFile":
                if value["oid"] not in self.blobs:
                    return 422, {"error": f"LFS object {value['oid']} was never uploaded"}
                staged[value["path"]] = self.blobs[value["oid"]]
        repo.branches[revision] = staged
        oid = hashlib.sha1(json.dumps(sorted(staged)).encode() + str(len(repo.commits)).encode()).hexdigest()
        repo.commits.append(oid)
        return 200, {"commitUrl": f"{self.endpoint}/{repo_id}/commit/{oid}", "commitOid": oid, "success": True}


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):   # quiet
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                out = b""
                while True:
                    size = int(self.rfile.readline().strip().split(b";")[0], 16)
                    if size == 0:
                        self.rfile.readline()
                        return out
                    out += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _serve(self, method: str) -> None:
            body = self._body()
            path = urlparse(self.path).path
            hub.calls.append(f"{method} {path}")
            if not path.startswith("/_lfs/") and self.headers.get("Authorization") != f"Bearer {hub.token}":
                status, payload = 401, {"error": "Invalid credentials in Authorization header"}
            else:
                status, payload = hub.route(method, path, body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            self._serve("POST")

        def do_PUT(self):
            self._serve("PUT")

        def do_GET(self):
            self._serve("GET")

        def do_HEAD(self):
            self._serve("HEAD")

    return Handler
