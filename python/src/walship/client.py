"""A client of the sidecar's HTTP API (SPEC.md "HTTP API").

One :class:`Client` keeps one HTTP/1.1 keep-alive connection per thread
(``http.client``), so a loop of writes reuses its connection; a connection
the sidecar closed meanwhile is reopened once, transparently. Every call has
a timeout (the client's, or ``timeout=`` per call): a ``sync`` write waits up
to its targets' ``sync_timeout_seconds`` on the sidecar, so keep the client's
above that.

Errors are exceptions carrying the sidecar's ``{"error": …}`` message:
:class:`BadRequest` (400), :class:`Unauthorized` (401), :class:`NotFound`
(404), :class:`Conflict` (409), :class:`TooLarge` (413),
:class:`Unavailable` (503), :class:`QuorumTimeout` (504: the write is
durable locally and will still be replicated), :class:`InsufficientStorage`
(507); all are :class:`APIError`, itself a :class:`WalshipError`.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator, List, Optional, Union
from urllib.parse import quote, urlencode, urlsplit

from .config import ReadPreference, ReplicationMode
from .metrics import ReplicationMetrics

__all__ = [
    "APIError",
    "BadRequest",
    "Client",
    "Conflict",
    "InsufficientStorage",
    "KeyInfo",
    "NotFound",
    "Object",
    "QuorumTimeout",
    "ServerError",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
    "WalshipConnectionError",
    "WalshipError",
    "WalshipTimeout",
    "WriteAck",
]

Mode = Union[ReplicationMode, str]
Preference = Union[ReadPreference, str]
Data = Union[bytes, bytearray, memoryview, str]


# ------------------------------------------------------------------- answers


@dataclass(frozen=True)
class WriteAck:
    """The answer to a put or delete.

    Attributes:
        seq: The entry's sequence number in the log.
        acked_by: Every target that had applied it when the write was answered.
        mode: The mode the write waited for.
    """

    seq: int
    acked_by: list[str]
    mode: str


@dataclass(frozen=True)
class Object:
    """The answer to a get.

    Attributes:
        data: The value.
        seq: The seq of the entry that wrote it (None when the sidecar did not say).
        served_by: The target the value was read from.
    """

    data: bytes
    seq: Optional[int]
    served_by: str


@dataclass(frozen=True)
class KeyInfo:
    """One key of a listing, with its latest ``seq`` and size in bytes."""

    key: str
    seq: int
    size: int


# -------------------------------------------------------------------- errors


class WalshipError(Exception):
    """Anything that went wrong talking to a sidecar."""


class WalshipConnectionError(WalshipError, ConnectionError):
    """No sidecar answers at the address."""


class WalshipTimeout(WalshipError, TimeoutError):
    """The sidecar did not answer within the timeout."""


class APIError(WalshipError):
    """The sidecar answered with an error status.

    Attributes:
        status: The HTTP status.
        message: The sidecar's ``error`` message (or the raw body).
        body: The decoded JSON body, when it was JSON.
    """

    def __init__(self, status: int, message: str, body: Any = None) -> None:
        self.status = status
        self.message = message
        self.body = body
        super().__init__(f"{status}: {message}")


class BadRequest(APIError):
    """400: a bad key, a malformed query; nothing was changed."""


class Unauthorized(APIError):
    """401: the token is missing or wrong."""


class NotFound(APIError):
    """404: no such object, target, conflict or endpoint."""


class Conflict(APIError):
    """409: the request conflicts with what a target holds (a key refused by a
    ``file://`` target, pausing the acting primary, …)."""


class TooLarge(APIError):
    """413: the body is over ``max_object_bytes``."""


class Unavailable(APIError):
    """503: the sidecar is draining, or no target is fresh enough to read."""


class InsufficientStorage(APIError):
    """507: ``data_dir`` is full; writes resume by themselves once space is freed."""


class ServerError(APIError):
    """Another 5xx."""


class QuorumTimeout(APIError):
    """504: a write missed its quorum in time (SPEC guarantee 3).

    The entry is durable in the local log at ``seq`` and will still be
    replicated; nothing is rolled back. Retrying appends the same bytes again,
    which is harmless.

    Attributes:
        seq: The seq of the durable entry.
        acked: Required targets that acknowledged in time.
        required: Targets the mode required.
        acked_by: Every target whose cursor had passed ``seq`` when the wait ended.
    """

    def __init__(
        self,
        seq: int,
        acked: int,
        required: int,
        acked_by: list[str],
        message: Optional[str] = None,
    ) -> None:
        self.seq = seq
        self.acked = acked
        self.required = required
        self.acked_by = list(acked_by)
        if message is None:
            message = (
                f"replication timed out: the entry is durable locally at seq {seq}, "
                f"acknowledged by {acked} of {required} required targets "
                f"({', '.join(acked_by) or 'none'}), and will still be replicated"
            )
        super().__init__(504, message, None)


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequest,
    401: Unauthorized,
    404: NotFound,
    409: Conflict,
    413: TooLarge,
    503: Unavailable,
    507: InsufficientStorage,
}


def _error(status: int, raw: bytes) -> APIError:
    body: Any = None
    message = raw.decode("utf-8", "replace").strip()
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        message = body["error"]
    if not message:
        message = http.client.responses.get(status, "error")
    if status == 504 and isinstance(body, dict) and "seq" in body:
        err = QuorumTimeout(
            int(body["seq"]),
            int(body.get("acked", 0)),
            int(body.get("required", 0)),
            list(body.get("acked_by") or []),
            message,
        )
        err.body = body
        return err
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else APIError
    return cls(status, message, body)


# -------------------------------------------------------------------- client


@dataclass
class _Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes = field(repr=False)

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class Client:
    """A client of one walship sidecar.

    Args:
        addr: ``host:port`` of the sidecar (its ``listen``), or a URL
            ``http://host:port``. Default: ``127.0.0.1:7600``.
        token: The bearer token (the contents of the sidecar's
            ``auth_token_file``). Default: ``token_file``'s contents, else
            the environment's ``WALSHIP_TOKEN``, else none.
        token_file: A file holding the token.
        timeout: Seconds each request may take. Default: 60.
        mode: The mode writes use when a call gives none (default: the
            sidecar's configured mode).
        read_preference: The preference reads use when a call gives none
            (default: the sidecar's).

    A client can be shared by threads: each thread gets its own connection.
    Use it as a context manager, or call :meth:`close`, to close them.
    """

    def __init__(
        self,
        addr: str = "127.0.0.1:7600",
        token: Optional[str] = None,
        *,
        token_file: Optional[Union[str, "os.PathLike[str]"]] = None,
        timeout: float = 60.0,
        mode: Optional[Mode] = None,
        read_preference: Optional[Preference] = None,
    ) -> None:
        url = addr if "://" in addr else f"http://{addr}"
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"addr {addr!r} is not host:port or http(s)://host:port")
        self.addr = addr
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        if token is None and token_file is not None:
            with open(token_file, encoding="utf-8") as f:
                token = f.read().strip()
        if token is None:
            token = os.environ.get("WALSHIP_TOKEN") or None
        self._token = token
        self.timeout = timeout
        self.mode = _mode(mode)
        self.read_preference = _pref(read_preference)
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Client({self.addr!r})"

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Closes every connection this client opened."""
        with self._lock:
            conns, self._all = self._all, []
        for c in conns:
            c.close()
        self._local = threading.local()

    # ---------------------------------------------------------------- objects

    def put(
        self,
        key: str,
        data: Data,
        mode: Optional[Mode] = None,
        *,
        timeout: Optional[float] = None,
    ) -> WriteAck:
        """Stores ``data`` under ``key``: durable in the log, then replicated
        per ``mode`` (``sync``, ``semi_sync``, ``async``).

        Raises:
            QuorumTimeout: the write is durable locally but missed its quorum.
            TooLarge, BadRequest, Conflict, …: see the module doc.
        """
        if isinstance(data, str):
            data = data.encode("utf-8")
        q = _query(mode=_mode(mode) or self.mode)
        r = self._call("PUT", _object_path(key), q, body=bytes(data), timeout=timeout)
        return _ack(r.json())

    def delete(
        self, key: str, mode: Optional[Mode] = None, *, timeout: Optional[float] = None
    ) -> WriteAck:
        """Deletes ``key`` (a log entry like a put, replicated per ``mode``)."""
        q = _query(mode=_mode(mode) or self.mode)
        r = self._call("DELETE", _object_path(key), q, timeout=timeout)
        return _ack(r.json())

    def get(
        self,
        key: str,
        read_preference: Optional[Preference] = None,
        *,
        timeout: Optional[float] = None,
    ) -> Object:
        """Reads ``key`` from a target chosen by ``read_preference``.

        Raises:
            NotFound: there is no object under ``key``.
        """
        q = _query(read_preference=_pref(read_preference) or self.read_preference)
        r = self._call("GET", _object_path(key), q, timeout=timeout)
        seq = r.headers.get("x-walship-seq")
        return Object(
            data=r.body,
            seq=int(seq) if seq is not None else None,
            served_by=r.headers.get("x-walship-served-by", ""),
        )

    def exists(
        self,
        key: str,
        read_preference: Optional[Preference] = None,
        *,
        timeout: Optional[float] = None,
    ) -> bool:
        """Whether an object is stored under ``key`` (a HEAD request)."""
        q = _query(read_preference=_pref(read_preference) or self.read_preference)
        r = self._request("HEAD", _object_path(key), q, timeout=timeout)
        if r.status == 404:
            return False
        if r.status >= 400:
            raise _error(r.status, r.body)
        return True

    def iter_list(self, prefix: str = "", *, page_size: int = 1000) -> Iterator[KeyInfo]:
        """Every key under ``prefix`` in key order, one page at a time.

        Pages with ``after=`` (the ``next_after`` the sidecar gives, or the
        last key of a truncated page). A sidecar that does not yet take
        ``after`` is asked once for up to 100000 keys instead.
        """
        if not 1 <= page_size <= 100_000:
            raise ValueError("page_size must be between 1 and 100000")
        after: Optional[str] = None
        while True:
            q: dict[str, Any] = {"prefix": prefix, "limit": page_size}
            if after is not None:
                q["after"] = after
            try:
                page = self._call("GET", "/v1/objects", q).json()
            except BadRequest as e:
                if after is None or "after" not in e.message:
                    raise
                yield from self._list_without_after(prefix, after)
                return
            keys = page.get("keys") or []
            for k in keys:
                if after is not None and k["key"] <= after:
                    continue  # a sidecar that ignored `after`
                yield KeyInfo(k["key"], int(k["seq"]), int(k.get("size", 0)))
            nxt = page.get("next_after")
            if nxt is None and page.get("truncated") and keys:
                nxt = keys[-1]["key"]
            if nxt is None or not keys or nxt == after:
                return
            after = nxt

    def _list_without_after(self, prefix: str, after: str) -> Iterator[KeyInfo]:
        page = self._call("GET", "/v1/objects", {"prefix": prefix, "limit": 100_000}).json()
        for k in page.get("keys") or []:
            if k["key"] > after:
                yield KeyInfo(k["key"], int(k["seq"]), int(k.get("size", 0)))
        if page.get("truncated"):
            raise WalshipError(
                f"the sidecar at {self.addr} cannot page past 100000 keys (it does not take "
                "?after=); upgrade walship"
            )

    def list(self, prefix: str = "", *, page_size: int = 1000) -> List[KeyInfo]:
        """Every key under ``prefix`` (all pages), in key order."""
        return list(self.iter_list(prefix, page_size=page_size))

    def keys(self, prefix: str = "") -> List[str]:
        """The keys under ``prefix`` (all pages), in key order."""
        return [k.key for k in self.iter_list(prefix)]

    # ------------------------------------------------------------ inspection

    def cursors(self) -> dict[str, Any]:
        """``{"head": N, "targets": [{"name", "role", "region", "health",
        "state", "cursor", "lag_entries", "lag_bytes", "lag_ms"}, …]}``."""
        return self._call("GET", "/v1/cursors").json()

    def status(self) -> dict[str, Any]:
        """What ``walship status --json`` prints: the cursors, mode, failover
        state, metrics, open conflicts, ``sidecar_id``."""
        return self._call("GET", "/v1/status").json()

    def metrics(self) -> ReplicationMetrics:
        """The seed's :class:`~walship.ReplicationMetrics`, from ``/v1/status``
        (with the per-replica counts from ``/metrics`` when it is served)."""
        text: Optional[str] = None
        r = self._request("GET", "/metrics")
        if r.status == 200:
            text = r.body.decode("utf-8", "replace")
        status = self.status()
        return ReplicationMetrics.from_status(status, text)

    def metrics_text(self) -> str:
        """``/metrics``: the Prometheus series."""
        return self._call("GET", "/metrics").body.decode("utf-8")

    def log(self, from_seq: Optional[int] = None, limit: Optional[int] = None) -> dict[str, Any]:
        """``{"first", "head", "entries": [{seq, time, op, key, size, crc ok}, …]}``."""
        return self._call("GET", "/v1/log", _query(**{"from": from_seq, "limit": limit})).json()

    def verify(self, target: Optional[str] = None) -> dict[str, Any]:
        """Checks every entry's crc and compares targets with the log."""
        return self._call("GET", "/v1/verify", _query(target=target)).json()

    def conflicts(self) -> List[dict[str, Any]]:
        """The manual conflict queue."""
        return self._call("GET", "/v1/conflicts").json().get("conflicts", [])

    def resolve_conflict(self, conflict_id: int, keep: str) -> dict[str, Any]:
        """Resolves a manual conflict, keeping ``"primary"`` or ``"replica"``."""
        return self._call(
            "POST", f"/v1/conflicts/{int(conflict_id)}/resolve", _query(keep=keep)
        ).json()

    def healthy(self) -> bool:
        """``/healthz``: the process serves."""
        try:
            return self._request("GET", "/healthz", timeout=5.0).status == 200
        except WalshipError:
            return False

    def ready(self) -> bool:
        """``/readyz``: the log is open and the acting primary answers."""
        try:
            return self._request("GET", "/readyz", timeout=5.0).status == 200
        except WalshipError:
            return False

    # --------------------------------------------------------- state changes

    def pause(self, target: str) -> dict[str, Any]:
        """Stops shipping to ``target``; it keeps its cursor and ``sync`` stops waiting for it."""
        return self._target(target, "pause")

    def resume(self, target: str) -> dict[str, Any]:
        """Ships to a paused ``target`` again, from its cursor."""
        return self._target(target, "resume")

    def resync(self, target: str) -> dict[str, Any]:
        """Copies everything from the acting primary to ``target``, then ships from the log."""
        return self._target(target, "resync")

    def replay(
        self,
        target: str,
        from_seq: Optional[int] = None,
        *,
        since: Optional[str] = None,
        execute: bool = False,
    ) -> dict[str, Any]:
        """Moves ``target``'s cursor back to ``from_seq`` (or to the first entry
        ``since`` a time: RFC 3339, unix ms, or ``"10m"`` ago) and ships again.

        Like ``walship replay``, it only returns the plan (entries, bytes,
        keys) unless ``execute=True``.
        """
        if (from_seq is None) == (since is None):
            raise ValueError("replay needs exactly one of from_seq or since")
        q = _query(**{"from": from_seq, "since": since})
        q["dry_run"] = "false" if execute else "true"
        return self._target(target, "replay", q)

    def _target(self, target: str, action: str, q: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        path = f"/v1/targets/{quote(target, safe='')}/{action}"
        return self._call("POST", path, q).json()

    # -------------------------------------------------------------- transport

    def _call(
        self,
        method: str,
        path: str,
        query: Optional[dict[str, Any]] = None,
        *,
        body: Optional[bytes] = None,
        timeout: Optional[float] = None,
    ) -> _Response:
        r = self._request(method, path, query, body=body, timeout=timeout)
        if r.status >= 400:
            raise _error(r.status, r.body)
        return r

    def _conn(self) -> tuple[http.client.HTTPConnection, bool]:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn, True
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = cls(self._host, self._port, timeout=self.timeout)
        self._local.conn = conn
        with self._lock:
            self._all.append(conn)
        return conn, False

    def _drop(self, conn: http.client.HTTPConnection) -> None:
        conn.close()
        self._local.conn = None
        with self._lock:
            if conn in self._all:
                self._all.remove(conn)

    def _request(
        self,
        method: str,
        path: str,
        query: Optional[dict[str, Any]] = None,
        *,
        body: Optional[bytes] = None,
        timeout: Optional[float] = None,
    ) -> _Response:
        target = path + ("?" + urlencode(query) if query else "")
        headers = {"Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        if body is not None or method in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body or b""))
        t = self.timeout if timeout is None else timeout
        for attempt in (0, 1):
            conn, reused = self._conn()
            conn.timeout = t
            if conn.sock is not None:
                conn.sock.settimeout(t)
            try:
                conn.request(method, target, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except socket.timeout as e:
                self._drop(conn)
                raise WalshipTimeout(
                    f"{method} {path}: no answer from {self.addr} within {t} s"
                ) from e
            except (
                http.client.RemoteDisconnected,
                ConnectionResetError,
                BrokenPipeError,
                http.client.CannotSendRequest,
                http.client.BadStatusLine,
            ) as e:
                self._drop(conn)
                if reused and attempt == 0:
                    continue  # the sidecar closed an idle keep-alive connection
                raise WalshipConnectionError(f"{method} {path}: {self.addr}: {e}") from e
            except OSError as e:
                self._drop(conn)
                raise WalshipConnectionError(
                    f"{method} {path}: cannot reach a walship sidecar at {self.addr}: {e}"
                ) from e
            if resp.will_close:
                self._drop(conn)
            return _Response(resp.status, resp.headers, data)
        raise AssertionError("unreachable")


def _object_path(key: str) -> str:
    if not isinstance(key, str) or not key:
        raise ValueError("a key is a non-empty string")
    return "/v1/objects/" + quote(key, safe="/")


def _query(**kv: Any) -> dict[str, Any]:
    return {k: (v.value if hasattr(v, "value") else v) for k, v in kv.items() if v is not None}


def _mode(m: Optional[Mode]) -> Optional[str]:
    if m is None:
        return None
    return ReplicationMode(m).value


def _pref(p: Optional[Preference]) -> Optional[str]:
    if p is None:
        return None
    return ReadPreference(p).value


def _ack(body: Any) -> WriteAck:
    return WriteAck(
        seq=int(body["seq"]), acked_by=list(body.get("acked_by") or []), mode=str(body["mode"])
    )
