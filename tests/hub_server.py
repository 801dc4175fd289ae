"""A loopback Hugging Face Hub, in memory, that the unmodified ``huggingface_hub`` client pushes to and pulls from.

It speaks the classic (non-Xet) protocol: create_repo/create_branch, preupload, the LFS batch API and PUTs, NDJSON
commits (also as PRs), repo info, tree and commit listings, resolve (HEAD/GET) with the headers the client reads.
So HfApi, snapshot_download, hf_hub_download, transformers' from_pretrained/push_to_hub and peft round-trip for real.
The client reads ``HF_ENDPOINT`` at import: run it in a subprocess with :meth:`HubServer.client_env`.

Example:
    >>> with HubServer(tokens={"hf_testtoken": "alice"}, orgs={"acme": ["alice"]}) as hub:  # doctest: +SKIP
    ...     subprocess.run([sys.executable, "push.py"], env=hub.client_env(home=tmp_path), check=True)
    ...     assert hub.commit_count("alice/tiny") == 2  # the repo's initial commit + the push
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import os
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = tuple(
    ".safetensors .bin .pt .pth .ckpt .h5 .onnx .msgpack .npz .npy .parquet .arrow .png .jpg "
    ".jpeg .wav .flac .mp3 .gz .zip .model".split()
)  # the Hub's default .gitattributes, abridged
LFS_MIN_SIZE = 10 * 1024 * 1024  # the Hub stores any file of 10 MB or more in LFS
GITATTRIBUTES = "".join(f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_SUFFIXES).encode()
INHERIT_NOT = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_OFFLINE", "TRANSFORMERS_CACHE")
CLIENT_ENV = {"HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
REPO_KINDS = {"models": "model", "datasets": "dataset", "spaces": "space"}


class HubError(Exception):
    """An HTTP error answer; ``code`` becomes ``X-Error-Code``, the message ``X-Error-Message`` and the body."""

    def __init__(
        self, status: int, message: str, code: str | None = None, headers: dict | None = None, body: dict | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}
        self.body = {"error": message, **(body or {})}


@dataclass(frozen=True)
class Blob:
    """One file version. LFS files are listed by the git id of their pointer and carry their sha256."""

    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def pointer(self) -> bytes:
        return (
            f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {len(self.data)}\n".encode()
        )

    @property
    def git_oid(self) -> str:
        data = self.pointer if self.lfs else self.data  # git's blob id: what the Hub lists as a file's "oid"
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()

    def tree_entry(self, path: str) -> dict:
        entry = {"type": "file", "oid": self.git_oid, "size": len(self.data), "path": path}
        if self.lfs:
            entry["lfs"] = {"oid": self.sha256, "size": len(self.data), "pointerSize": len(self.pointer)}
        return entry


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    message: str
    author: str
    date: str
    files: dict[str, Blob]


@dataclass
class Repo:
    repo_id: str
    kind: str
    private: bool
    created: str
    commits: dict[str, Commit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)  # "main", "my-branch", "refs/pr/1" -> commit oid
    lfs: dict[str, bytes] = field(default_factory=dict)  # sha256 -> content
    preuploads: dict[tuple[int, bytes], str] = field(default_factory=dict)  # (size, first 512 bytes) -> path

    def resolve(self, rev: str) -> Commit:
        oid = self.refs.get(rev, rev if rev in self.commits else None)
        if oid is None:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return self.commits[oid]

    def ancestry(self, rev: str) -> Iterator[Commit]:
        """The commit ``rev`` points at, then its parents."""
        commit: Commit | None = self.resolve(rev)
        while commit is not None:
            yield commit
            commit = self.commits.get(commit.parent) if commit.parent else None


@dataclass
class Fault:
    pattern: str
    remaining: int
    skip: int
    status: int
    retry_after: float | None
    repo_id: str | None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


class HubServer:
    """An in-memory Hub on ``127.0.0.1`` (free port), started by ``with`` or :meth:`start`.

    Args:
        tokens: token -> user name. Writes need ``Authorization: Bearer <token>`` (401 when missing or unknown).
        orgs: organization -> member user names; members may write to the organization's namespace.
        roles: token -> ``"write"`` (default), ``"read"`` (every write answers 403) or ``"fineGrained"``.
        scopes: fine-grained token -> the namespaces it may write (default: its user's own).

    Example:
        >>> hub.fail_uploads("*.safetensors", times=6)  # the client tries 6 times: the push fails  # doctest: +SKIP
    """

    def __init__(
        self,
        tokens: dict[str, str] | None = None,
        orgs: dict[str, list[str]] | None = None,
        roles: dict[str, str] | None = None,
        scopes: dict[str, list[str]] | None = None,
    ):
        self.tokens, self.orgs = dict(tokens or {}), {k: list(v) for k, v in (orgs or {}).items()}
        self.roles, self.scopes = dict(roles or {}), dict(scopes or {})
        self.repos: dict[str, Repo] = {}
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, for assertions
        self.lfs_uploads: list[tuple[str, str, int]] = []  # (repo id, path, status) of every LFS PUT
        self.lock = threading.RLock()
        self._uploads: dict[str, tuple[str, str, int]] = {}  # nonce -> (repo key, sha256, size)
        self._counter = 0
        self._httpd: ThreadingHTTPServer | None = None

    # -- lifecycle -----------------------------------------------------------------------------------------------
    def start(self) -> HubServer:
        handler = type("Handler", (_Handler,), {"hub": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        threading.Thread(target=self._httpd.serve_forever, daemon=True, name="hub-server").start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._httpd is not None, "start the server first"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def client_env(self, home: str | os.PathLike | None = None, token: str | None = None) -> dict[str, str]:
        """Environment for a client subprocess: this endpoint, no Xet, online (no ``HF_*`` variable of ours is
        inherited), a private ``HF_HOME``, and no token unless ``token`` (as ``HF_TOKEN``)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(INHERIT_NOT)}
        env.update(HF_ENDPOINT=self.url, **CLIENT_ENV)
        if home is not None:
            env["HF_HOME"] = str(home)
        if token is not None:
            env["HF_TOKEN"] = token
        return env

    # -- test knobs and inspection -------------------------------------------------------------------------------
    def fail_uploads(
        self,
        pattern: str,
        times: int = 1,
        *,
        skip: int = 0,
        repo_id: str | None = None,
        status: int = 500,
        retry_after: float | None = 0,
    ) -> None:
        """Answer ``status`` to ``times`` uploads of a file whose path matches ``pattern`` (fnmatch), after
        letting ``skip`` matching uploads through; ``repo_id`` limits the fault to one repo.

        LFS files fail at their PUT: the client retries 408/429/5xx five times, sleeping ``Retry-After`` + 1 s
        (without the header 1, 2, 4, 8, 8 s), so ``times=6`` fails the push in about 5 s. Regular files travel
        inside the commit, which the client never retries: a fault there fails the whole commit.
        """
        with self.lock:
            self.faults.append(Fault(pattern, times, skip, status, retry_after, repo_id))

    def commit_count(self, repo_id: str, kind: str = "model") -> int:
        """Number of commits in the repo, on every branch (the repo's creation makes the first)."""
        with self.lock:
            return len(self.repos[f"{kind}/{repo_id}"].commits)

    def history(self, repo_id: str, revision: str = "main", kind: str = "model") -> list[str]:
        """Commit titles reachable from ``revision``, newest first."""
        with self.lock:
            return [commit.title for commit in self.repos[f"{kind}/{repo_id}"].ancestry(revision)]

    def files(self, repo_id: str, revision: str = "main", kind: str = "model") -> dict[str, bytes]:
        """Path -> content of every file at ``revision``."""
        with self.lock:
            return {p: b.data for p, b in self.repos[f"{kind}/{repo_id}"].resolve(revision).files.items()}

    # -- auth ----------------------------------------------------------------------------------------------------
    def user_of(self, token: str | None, required: bool) -> str | None:
        if token is None:
            if required:
                raise HubError(401, "You must be authenticated to do this: pass a token.", "Unauthorized")
            return None
        if token not in self.tokens:
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.tokens[token]

    def may_read(self, user: str | None, namespace: str) -> bool:
        return user is not None and (user == namespace or user in self.orgs.get(namespace, []))

    def check_write(self, token: str | None, namespace: str) -> str:
        user = self.user_of(token, required=True)
        role = self.roles.get(token, "write")
        allowed = {"read": False, "fineGrained": namespace in self.scopes.get(token, [user])}.get(
            role, self.may_read(user, namespace)
        )
        if not allowed:
            raise HubError(
                403, f"You don't have the rights to write to the namespace '{namespace}' with this token", "Forbidden"
            )
        return user

    def whoami(self, token: str | None) -> dict:
        user = self.user_of(token, required=True)
        orgs = [
            {"type": "org", "name": org, "roleInOrg": "write"} for org, members in self.orgs.items() if user in members
        ]
        role = self.roles.get(token, "write")
        auth = {"type": "access_token", "accessToken": {"displayName": "test", "role": role}}
        return {
            "type": "user",
            "id": hashlib.sha1(user.encode()).hexdigest()[:24],
            "name": user,
            "orgs": orgs,
            "auth": auth,
        }

    # -- repo state ----------------------------------------------------------------------------------------------
    def get_repo(self, key: str, token: str | None) -> Repo:
        repo, user = self.repos.get(key), self.user_of(token, False)  # a bad token is a 401 even on a public repo
        if repo is None or (repo.private and not self.may_read(user, key.split("/")[1])):
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def new_commit(
        self, repo: Repo, parent: Commit | None, files: dict[str, Blob], summary: str, description: str, author: str
    ) -> Commit:
        self._counter += 1
        digest = hashlib.sha1(f"{repo.repo_id}\n{parent and parent.oid}\n{summary}\n{self._counter}".encode())
        for path in sorted(files):
            digest.update(f"{path}\0{files[path].git_oid}\n".encode())
        message = summary + (f"\n\n{description}" if description else "")
        commit = Commit(digest.hexdigest(), parent and parent.oid, summary, message, author, _now(), files)
        repo.commits[commit.oid] = commit
        return commit

    def take_fault(self, repo_id: str, path: str) -> Fault | None:
        for fault in self.faults:
            if fault.remaining > 0 and fault.repo_id in (None, repo_id) and fnmatch.fnmatch(path, fault.pattern):
                if fault.skip > 0:
                    fault.skip -= 1
                    continue
                fault.remaining -= 1
                return fault
        return None

    def raise_fault(self, repo_id: str, path: str) -> None:
        fault = self.take_fault(repo_id, path)
        if fault is not None:
            headers = {} if fault.retry_after is None else {"Retry-After": str(fault.retry_after)}
            raise HubError(fault.status, f"Injected fault while uploading '{path}'", headers=headers)


def _route(parts: list[str]) -> tuple[str, str, str, list[str]]:
    """Split ``[kind-prefix] ns name action rest...`` of a non-API URL into (kind, repo_id, action, rest)."""
    kind = "model"
    if parts and parts[0] in REPO_KINDS and len(parts) > 3:
        kind, parts = REPO_KINDS[parts[0]], parts[1:]
    if len(parts) < 3:
        raise HubError(404, "Not found")
    return kind, f"{parts[0]}/{parts[1]}", parts[2], parts[3:]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: HubServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep tests quiet
        pass

    # -- plumbing ------------------------------------------------------------------------------------------------
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        chunks = []
        while size := int(self.rfile.readline().split(b";")[0], 16):
            chunks.append(self.rfile.read(size + 2)[:-2])
        self.rfile.readline()  # the empty trailer
        return b"".join(chunks)

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return auth[7:].strip() or None if auth.lower().startswith("bearer ") else None

    def _send(self, status: int, body: Any = None, headers: dict | None = None, head_only: bool = False) -> None:
        data = body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        if not isinstance(body, bytes):
            self.send_header("Content-Type", "application/json")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head_only:
            self.wfile.write(data)

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        parts = [unquote(p) for p in split.path.strip("/").split("/")]
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        body = self._body() if method in ("POST", "PUT") else b""
        hub = self.hub
        try:
            with hub.lock:
                hub.requests.append((method, split.path))
                status, payload, headers = _api(hub, self, method, parts, query, body)
        except HubError as err:
            headers = {"X-Error-Message": err.message, **err.headers}
            if err.code:
                headers["X-Error-Code"] = err.code
            status, payload = err.status, err.body
        except Exception as err:  # a bug in this server must surface as a 500, not hang the client
            status, payload, headers = 500, {"error": f"{type(err).__name__}: {err}"}, {}
        self._send(status, payload, headers, head_only=method == "HEAD")

    def __getattr__(self, name: str) -> Any:
        # BaseHTTPRequestHandler looks up ``do_<METHOD>``: every method goes through _dispatch.
        if name in ("do_GET", "do_HEAD", "do_POST", "do_PUT"):
            return lambda: self._dispatch(name[3:])
        raise AttributeError(name)


def _api(hub: HubServer, req: _Handler, method: str, parts: list[str], query: dict, body: bytes) -> tuple:
    token = req._token()
    if parts[:2] == ["api", "whoami-v2"]:
        return 200, hub.whoami(token), {}
    if parts[:2] == ["api", "validate-yaml"]:
        return 200, {"errors": [], "warnings": []}, {}
    if parts[:3] == ["api", "repos", "create"] and method == "POST":
        return _create_repo(hub, token, json.loads(body or b"{}"), req)
    if len(parts) >= 4 and parts[0] == "api" and parts[1] in REPO_KINDS:
        key = f"{REPO_KINDS[parts[1]]}/{parts[2]}/{parts[3]}"
        return _repo_api(hub, req, method, key, parts[4:], query, body, token)
    if parts[0] == "_lfs":
        return _lfs_object(hub, method, parts[1:], body, token)
    kind, repo_id, action, rest = _route(parts)
    if repo_id.endswith(".git") and action == "info" and rest == ["lfs", "objects", "batch"]:
        return _lfs_batch(hub, req, f"{kind}/{repo_id[:-4]}", json.loads(body), token)
    if action == "resolve" and len(rest) >= 2 and method in ("GET", "HEAD"):
        repo = hub.get_repo(f"{kind}/{repo_id}", token)
        return _resolve(repo, rest[0], "/".join(rest[1:]))
    raise HubError(404, f"No route for {method} /{'/'.join(parts)}")


def _create_repo(hub: HubServer, token: str | None, payload: dict, req: _Handler) -> tuple:
    user = hub.user_of(token, required=True)
    namespace = payload.get("organization") or user
    repo_id, kind = f"{namespace}/{payload['name']}", payload.get("type") or "model"
    hub.check_write(token, namespace)
    url = f"{req.hub.url}/{'' if kind == 'model' else kind + 's/'}{repo_id}"
    key = f"{kind}/{repo_id}"
    if key in hub.repos:
        raise HubError(409, f"You already created this {kind} repo", body={"url": url})  # the client reads "url"
    private = payload.get("visibility") == "private" or bool(payload.get("private"))
    repo = hub.repos[key] = Repo(repo_id, kind, private, _now())
    first = hub.new_commit(repo, None, {".gitattributes": Blob(GITATTRIBUTES, False)}, "initial commit", "", user)
    repo.refs["main"] = first.oid
    return 200, {"url": url, "name": repo_id, "id": first.oid}, {}


def _repo_api(
    hub: HubServer, req: _Handler, method: str, key: str, rest: list[str], query: dict, body: bytes, token: str | None
) -> tuple:
    repo = hub.get_repo(key, token)
    action = rest[0] if rest else ""
    if method == "GET" and action in ("", "revision"):
        return 200, _repo_info(repo, rest[1] if action == "revision" else "main"), {}
    if method == "GET" and action == "tree":
        return 200, _tree(repo, rest[1], "/".join(rest[2:]), query.get("recursive") in ("true", "True", "1")), {}
    if method == "GET" and action == "commits":
        return 200, _commits(repo, rest[1]), {}
    if method == "GET" and action == "refs":
        return 200, _refs(repo), {}
    user = hub.check_write(token, repo.repo_id.split("/")[0])
    if method == "POST" and action == "preupload":
        return 200, _preupload(repo, rest[1], json.loads(body)), {}
    if method == "POST" and action == "commit":
        return _commit(hub, req, repo, rest[1], body, query.get("create_pr") == "1", user)
    if method == "POST" and action == "branch":
        return _branch(repo, "/".join(rest[1:]), json.loads(body or b"{}"))
    raise HubError(404, f"No route for {method} {key}/{'/'.join(rest)}")


def _repo_info(repo: Repo, rev: str) -> dict:
    commit = repo.resolve(rev)
    siblings = []
    for path, blob in sorted(commit.files.items()):
        siblings.append({"rfilename": path, "size": len(blob.data), "blobId": blob.git_oid})
        if blob.lfs:
            siblings[-1]["lfs"] = {"size": len(blob.data), "sha256": blob.sha256, "pointerSize": len(blob.pointer)}
    info = {"id": repo.repo_id, "modelId": repo.repo_id, "author": repo.repo_id.split("/")[0], "sha": commit.oid}
    return {
        **info,
        "lastModified": commit.date,
        "createdAt": repo.created,
        "private": repo.private,
        "siblings": siblings,
    }


def _tree(repo: Repo, rev: str, prefix: str, recursive: bool) -> list[dict]:
    files = repo.resolve(rev).files
    base = f"{prefix.rstrip('/')}/" if prefix else ""
    if prefix and prefix not in files and not any(p.startswith(base) for p in files):
        raise HubError(404, f"Entry {prefix} not found", "EntryNotFound")
    if prefix in files:
        return [files[prefix].tree_entry(prefix)]
    entries, folders = [], {}
    for path in sorted(p for p in files if p.startswith(base)):
        rel = path[len(base) :].split("/")
        for depth in range(1, len(rel) if recursive else min(len(rel), 2)):
            folder = base + "/".join(rel[:depth])
            folders.setdefault(folder, hashlib.sha1(folder.encode()))
        if recursive or len(rel) == 1:
            entries.append(files[path].tree_entry(path))
        for folder, digest in folders.items():
            if path.startswith(folder + "/"):
                digest.update(files[path].git_oid.encode())
    dirs = [{"type": "directory", "oid": d.hexdigest(), "size": 0, "path": f} for f, d in sorted(folders.items())]
    return dirs + entries


def _commits(repo: Repo, rev: str) -> list[dict]:
    keys = ("oid", "title", "message", "date")
    return [
        {**{k: getattr(c, k) for k in keys}, "id": c.oid, "authors": [{"user": c.author}]} for c in repo.ancestry(rev)
    ]


def _refs(repo: Repo) -> dict:
    def ref(name: str, oid: str) -> dict:
        return {"name": name, "ref": name if name.startswith("refs/") else f"refs/heads/{name}", "targetCommit": oid}

    branches = [ref(n, o) for n, o in repo.refs.items() if not n.startswith("refs/pr/")]
    prs = [ref(n, o) for n, o in repo.refs.items() if n.startswith("refs/pr/")]
    return {"branches": branches, "tags": [], "converts": [], "pullRequests": prs}


def _preupload(repo: Repo, rev: str, payload: dict) -> dict:
    current = repo.resolve(rev).files
    answers = []
    for item in payload["files"]:
        path, size, sample = item["path"], int(item["size"]), base64.b64decode(item.get("sample", ""))
        lfs = size > 0 and (path.lower().endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE or b"\0" in sample)
        repo.preuploads[(size, sample[:512])] = path
        existing = current.get(path)
        oid = None if existing is None else existing.sha256 if existing.lfs else existing.git_oid
        answers.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
    return {"files": answers, "commitOid": repo.resolve(rev).oid}


def _lfs_batch(hub: HubServer, req: _Handler, key: str, payload: dict, token: str | None) -> tuple:
    repo = hub.get_repo(key, token)
    hub.check_write(token, repo.repo_id.split("/")[0])
    objects = []
    for obj in payload.get("objects", []):
        oid, size = obj["oid"], int(obj["size"])
        answer: dict = {"oid": oid, "size": size, "authenticated": True}
        if oid not in repo.lfs:
            nonce = secrets.token_hex(12)
            hub._uploads[nonce] = (key, oid, size)
            href = f"{hub.url}/_lfs/{nonce}"
            answer["actions"] = {"upload": {"href": href, "header": {}}, "verify": {"href": f"{href}/verify"}}
        objects.append(answer)
    return 200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}, {"Content-Type": "application/json"}


def _lfs_object(hub: HubServer, method: str, rest: list[str], body: bytes, token: str | None) -> tuple:
    if not rest or rest[0] not in hub._uploads:
        raise HubError(404, "Unknown upload URL")
    key, oid, size = hub._uploads[rest[0]]
    repo = hub.repos[key]
    if method == "POST" and rest[1:] == ["verify"]:
        if oid not in repo.lfs:
            raise HubError(404, f"LFS object {oid} not found")
        return 200, {"success": True}, {}
    if method != "PUT":
        raise HubError(405, "Method not allowed")
    path = repo.preuploads.get((len(body), body[:512]), oid)
    try:
        hub.raise_fault(repo.repo_id, path)
        if len(body) != size or hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, f"Uploaded content does not match oid {oid} / size {size}")
    except HubError as err:
        hub.lfs_uploads.append((repo.repo_id, path, err.status))
        raise
    hub.lfs_uploads.append((repo.repo_id, path, 200))
    repo.lfs[oid] = body
    return 200, b"", {"ETag": f'"{oid[:32]}"'}


def _commit(hub: HubServer, req: _Handler, repo: Repo, rev: str, body: bytes, create_pr: bool, user: str) -> tuple:
    lines = [json.loads(line) for line in body.splitlines() if line.strip()]
    header = next((line["value"] for line in lines if line["key"] == "header"), None)
    if header is None or not header.get("summary"):
        raise HubError(400, "A commit needs a header line with a summary")
    base = repo.resolve(rev)
    if header.get("parentCommit") and header["parentCommit"] != base.oid and not create_pr:
        raise HubError(412, f"Parent commit {header['parentCommit']} is not the head of {rev}")
    files = dict(base.files)
    for line in lines:
        key, value = line["key"], line["value"]
        if key == "file":
            hub.raise_fault(repo.repo_id, value["path"])
            files[value["path"]] = Blob(base64.b64decode(value["content"]), False)
        elif key == "lfsFile":
            if value["oid"] not in repo.lfs:
                raise HubError(422, f"LFS object {value['oid']} for '{value['path']}' was never uploaded")
            files[value["path"]] = Blob(repo.lfs[value["oid"]], True)
        elif key == "deletedFile":
            if files.pop(value["path"], None) is None:
                raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
        elif key == "deletedFolder":
            prefix = value["path"].rstrip("/") + "/"
            files = {p: b for p, b in files.items() if not p.startswith(prefix)}
    target = rev if not create_pr else f"refs/pr/{1 + sum(r.startswith('refs/pr/') for r in repo.refs)}"
    commit = hub.new_commit(repo, base, files, header["summary"], header.get("description", ""), user)
    repo.refs[target] = commit.oid
    url = f"{hub.url}/{repo.repo_id}"
    answer = {"success": True, "commitOid": commit.oid, "commitUrl": f"{url}/commit/{commit.oid}", "hookOutput": ""}
    answer["pullRequestUrl"] = f"{url}/discussions/{target.rsplit('/', 1)[1]}" if create_pr else None
    return 200, answer, {}


def _branch(repo: Repo, branch: str, payload: dict) -> tuple:
    if branch in repo.refs:
        raise HubError(409, f"Reference already exists: {branch}")
    repo.refs[branch] = repo.resolve(payload.get("startingPoint") or "main").oid
    return 200, {}, {}


def _resolve(repo: Repo, rev: str, path: str) -> tuple:
    commit = repo.resolve(rev)
    blob = commit.files.get(path)
    if blob is None:
        raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.oid})
    headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{blob.git_oid}"', "Content-Type": "application/octet-stream"}
    if blob.lfs:
        headers.update({"X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": str(len(blob.data))})
    return 200, blob.data, headers
