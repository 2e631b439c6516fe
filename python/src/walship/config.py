"""The seed's replication configuration, for a walship sidecar.

The enums and dataclasses here are truthound's
``truthound.stores.replication.base`` names, member for member and default
for default, so configuration code written for the seed keeps working. Two
things differ, both because walship is a sidecar and not an in-process
wrapper:

* a :class:`ReplicaTarget` names its store by ``url`` (``s3://bucket/prefix``,
  ``gs://…``, ``az://container/prefix``, ``file:///abs/path``, ``memory://``)
  with ``options`` for the object_store builder, instead of holding a
  ``store`` object;
* :class:`ReplicationConfig` carries, after the seed's fields, what a sidecar
  needs (``primary``, ``data_dir``, ``listen``, ``auth_token_file``, …), each
  with the default ``walship serve`` uses.

:meth:`ReplicationConfig.validate` applies the rules of ``walship
check-config`` and raises one :class:`ConfigError` (a ``ValueError``) listing
every problem, one line each, naming the field as check-config does
(``targets[1].sync_timeout_seconds: …``). :meth:`ReplicationConfig.to_toml`
writes the config file that ``walship check-config`` accepts and ``walship
serve --config`` runs.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Any, Iterator, Optional, Union

from ._options import _debug_str, option_problem

__all__ = [
    "ConfigError",
    "ConflictResolution",
    "ReadPreference",
    "ReplicaHealth",
    "ReplicaState",
    "ReplicaTarget",
    "ReplicationConfig",
    "ReplicationMode",
]


class ReplicationMode(str, Enum):
    """How many targets a write waits for (SPEC guarantee 2)."""

    SYNC = "sync"  # every replica that is not paused or removed
    ASYNC = "async"  # no replica: the durable append and the acting primary
    SEMI_SYNC = "semi_sync"  # min_sync_replicas replicas


class ReadPreference(str, Enum):
    """Where reads go."""

    PRIMARY = "primary"  # the acting primary
    SECONDARY = "secondary"  # a healthy replica, read replicas first, else the primary
    NEAREST = "nearest"  # a healthy target within 15 ms of the fastest
    ANY = "any"  # any healthy target


class ConflictResolution(str, Enum):
    """What to do when a target holds a version this log did not write."""

    LAST_WRITE_WINS = "last_write_wins"  # the newer timestamp wins
    FIRST_WRITE_WINS = "first_write_wins"  # the version already there wins
    PRIMARY_WINS = "primary_wins"  # the acting primary's version wins
    MERGE = "merge"  # JSON deep merge in the sidecar
    MANUAL = "manual"  # queued for `walship conflicts resolve`


class ReplicaHealth(str, Enum):
    """How a target is doing."""

    HEALTHY = "healthy"  # requests succeed and lag is within bounds
    DEGRADED = "degraded"  # lag is over max_replication_lag_ms
    UNHEALTHY = "unhealthy"  # probes or shipping keep failing
    UNKNOWN = "unknown"  # nothing known yet


class ReplicaState(str, Enum):
    """What walship does with a target."""

    ACTIVE = "active"  # shipping
    PAUSED = "paused"  # not shipping, by request; keeps its cursor
    SYNCING = "syncing"  # being copied from the acting primary
    FAILED = "failed"  # shipping stopped on an error that needs a person
    REMOVED = "removed"  # no longer configured


@dataclass
class ReplicaTarget:
    """A target: the primary store or a replica (the seed's ``ReplicaTarget``).

    Attributes:
        name: Unique name: letters, digits, ``.``, ``_``, ``-``.
        url: The store: ``s3://bucket/prefix``, ``gs://bucket/prefix``,
            ``az://container/prefix``, ``file:///abs/path`` or ``memory://``
            (the seed's ``store``).
        region: Free text, shown in ``walship cursors``.
        priority: Failover order, lower first. Default: 1.
        is_read_replica: Serves reads, never promoted. Default: False.
        sync_timeout_seconds: Bound of one request to the store and of a
            write's wait for this target. Default: 30.0. Between 1 ms and 1 year.
        max_retry_attempts: Failures in a row before the target is marked
            unhealthy (shipping keeps retrying with capped backoff). Default: 3.
        retry_delay_seconds: Base of the exponential backoff. Default: 1.0.
            0, or between 1 ms and 1 year.
        health: The seed's client-side health mark (not sent to walship;
            :meth:`walship.Client.cursors` reports the sidecar's).
        state: The seed's client-side state mark (likewise).
        last_sync_time: Set by :meth:`mark_healthy`.
        replication_lag_ms: Set by :meth:`mark_degraded`.
        options: Handed to the object_store builder of the URL's scheme
            (``endpoint``, ``allow_http``, ``region``, ``access_key_id``, …;
            ``fsync`` for ``file://``). Values are written as strings.
    """

    name: str
    url: str
    region: str
    priority: int = 1
    is_read_replica: bool = False
    sync_timeout_seconds: float = 30.0
    max_retry_attempts: int = 3
    retry_delay_seconds: float = 1.0
    health: ReplicaHealth = ReplicaHealth.UNKNOWN
    state: ReplicaState = ReplicaState.ACTIVE
    last_sync_time: Optional[datetime] = None
    replication_lag_ms: float = 0.0
    options: dict[str, Any] = field(default_factory=dict)

    def mark_healthy(self) -> None:
        """Mark replica as healthy."""
        self.health = ReplicaHealth.HEALTHY
        self.state = ReplicaState.ACTIVE
        self.last_sync_time = datetime.now()

    def mark_degraded(self, lag_ms: float) -> None:
        """Mark replica as degraded."""
        self.health = ReplicaHealth.DEGRADED
        self.replication_lag_ms = lag_ms

    def mark_unhealthy(self) -> None:
        """Mark replica as unhealthy."""
        self.health = ReplicaHealth.UNHEALTHY
        self.state = ReplicaState.FAILED

    def mark_syncing(self) -> None:
        """Mark replica as syncing."""
        self.state = ReplicaState.SYNCING

    def pause(self) -> None:
        """Pause replication to this replica (locally; see :meth:`walship.Client.pause`)."""
        self.state = ReplicaState.PAUSED

    def resume(self) -> None:
        """Resume replication to this replica (locally; see :meth:`walship.Client.resume`)."""
        if self.state == ReplicaState.PAUSED:
            self.state = ReplicaState.ACTIVE


class ConfigError(ValueError):
    """A config that ``walship check-config`` would refuse.

    ``problems`` holds one line per problem, each starting with the field it
    names (``replication.min_sync_replicas: …``); ``str(err)`` is those
    lines joined by newlines.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))

    @property
    def fields(self) -> list[str]:
        """The field each problem names, in order."""
        return [p.split(": ", 1)[0] for p in self.problems]


PathLike = Union[str, "os.PathLike[str]"]

_YEAR_SECONDS = 365.0 * 86400.0

# Defaults of the sidecar's own settings (src/config.rs).
_SIDECAR_DEFAULTS: dict[str, Any] = {
    "auth_token_file": None,
    "max_object_bytes": 16 * 1024 * 1024,
    "retention_seconds": 86400.0,
    "max_log_bytes": 10 * 1024 * 1024 * 1024,
    "shutdown_grace_seconds": 30.0,
    "log_cache_bytes": 32 * 1024 * 1024,
    "allow_unauthenticated": False,
    "max_connections": 1024,
    "request_header_timeout_seconds": 10.0,
}


@dataclass
class ReplicationConfig:
    """Configuration for replication (the seed's ``ReplicationConfig``), plus
    what a sidecar needs.

    The seed's fields, in its order and with its defaults:

    Attributes:
        mode: Replication mode (sync, async, semi_sync). Default: ASYNC.
        targets: The replicas. Default: none (check-config wants at least one).
        read_preference: Where reads go. Default: PRIMARY.
        conflict_resolution: How conflicts resolve. Default: LAST_WRITE_WINS.
        min_sync_replicas: Replicas a ``semi_sync`` write waits for. Default: 1.
        enable_health_checks: Probe targets. Default: True.
        health_check_interval_seconds: Probe interval. Default: 30.0.
        max_replication_lag_ms: Lag past which a target is degraded. Default: 5000.0.
        enable_failover: Promote a replica when the primary is unhealthy. Default: True.
        enable_metrics: Serve ``/metrics``. Default: True.

    Then the sidecar's, each with ``walship serve``'s default:

    Attributes:
        primary: The primary store (may instead be given to :meth:`to_toml`).
        data_dir: The log, cursors, conflict records. Default: ``./walship-data``,
            relative to the config file's directory.
        listen: HTTP API address. Default: ``127.0.0.1:7600``.
        auth_token_file: When set, every request needs ``Authorization: Bearer``
            with the token in this file. Default: None.
        max_object_bytes: Larger bodies get 413. Default: 16 MiB.
        retention_seconds: Entries are kept at least this long. Default: 86400.
        max_log_bytes: Past this the target holding truncation back is resynced.
            Default: 10 GiB.
        shutdown_grace_seconds: On SIGTERM, how long shipping may drain. Default: 30.
        log_cache_bytes: sled's page cache. Default: 32 MiB.
        allow_unauthenticated: Allow a non-loopback ``listen`` without a token.
            Default: False.
        max_connections: HTTP connections at once. Default: 1024.
        request_header_timeout_seconds: A client that has not sent its headers
            this long is cut off. Default: 10.
    """

    mode: ReplicationMode = ReplicationMode.ASYNC
    targets: list[ReplicaTarget] = field(default_factory=list)
    read_preference: ReadPreference = ReadPreference.PRIMARY
    conflict_resolution: ConflictResolution = ConflictResolution.LAST_WRITE_WINS
    min_sync_replicas: int = 1
    enable_health_checks: bool = True
    health_check_interval_seconds: float = 30.0
    max_replication_lag_ms: float = 5000.0
    enable_failover: bool = True
    enable_metrics: bool = True
    # --- the sidecar's own settings (not in the seed) ---
    primary: Optional[ReplicaTarget] = None
    data_dir: PathLike = "./walship-data"
    listen: str = "127.0.0.1:7600"
    auth_token_file: Optional[PathLike] = None
    max_object_bytes: int = 16 * 1024 * 1024
    retention_seconds: float = 86400.0
    max_log_bytes: int = 10 * 1024 * 1024 * 1024
    shutdown_grace_seconds: float = 30.0
    log_cache_bytes: int = 32 * 1024 * 1024
    allow_unauthenticated: bool = False
    max_connections: int = 1024
    request_header_timeout_seconds: float = 10.0

    # ------------------------------------------------------------------ validate

    def problems(
        self,
        primary: Optional[ReplicaTarget] = None,
        *,
        base_dir: Optional[PathLike] = None,
    ) -> list[str]:
        """Every problem ``walship check-config`` would report, one line each.

        Args:
            primary: The primary store; defaults to ``self.primary``. Without
                either, the primary's own checks are skipped (so a seed config
                without one still validates its replicas and settings).
            base_dir: Directory relative ``auth_token_file`` paths are taken
                from (check-config takes the config file's). Default: the
                current directory.
        """
        primary = primary if primary is not None else self.primary
        p: list[str] = []
        if _socket_addr(self.listen) is None:
            p.append(f"listen: {_debug(self.listen)} is not an address like 127.0.0.1:7600")
        _count("max_object_bytes", self.max_object_bytes, p)
        _count("max_log_bytes", self.max_log_bytes, p)
        _count("log_cache_bytes", self.log_cache_bytes, p, minimum=0)
        _duration("retention_seconds", self.retention_seconds, True, p)
        _duration("shutdown_grace_seconds", self.shutdown_grace_seconds, True, p)
        _duration("request_header_timeout_seconds", self.request_header_timeout_seconds, False, p)
        _count("max_connections", self.max_connections, p)
        _flag("allow_unauthenticated", self.allow_unauthenticated, p)
        addr = _socket_addr(self.listen)
        if (
            addr is not None
            and not _is_loopback(addr[0])
            and self.auth_token_file is None
            and not self.allow_unauthenticated
        ):
            p.append(
                f"listen: {_addr_str(addr)} is reachable from other hosts but no auth_token_file "
                "is set; set auth_token_file, listen on 127.0.0.1, or set "
                "allow_unauthenticated = true"
            )
        _enum("replication.mode", self.mode, ReplicationMode, p)
        _enum("replication.read_preference", self.read_preference, ReadPreference, p)
        _enum("replication.conflict_resolution", self.conflict_resolution, ConflictResolution, p)
        for name in ("enable_health_checks", "enable_failover", "enable_metrics"):
            _flag(f"replication.{name}", getattr(self, name), p)
        _duration(
            "replication.health_check_interval_seconds", self.health_check_interval_seconds, False, p
        )
        lag = self.max_replication_lag_ms
        if not _is_number(lag) or not (1.0 <= float(lag) <= _YEAR_SECONDS * 1000.0):
            p.append(
                "replication.max_replication_lag_ms: must be between 1 ms and 1 year, got "
                f"{_fmt(lag)}"
            )
        msr = self.min_sync_replicas
        msr_ok = _is_int(msr) and msr >= 0
        if not msr_ok:
            p.append(f"replication.min_sync_replicas: must be a whole number, got {msr!r}")
        elif msr == 0:
            p.append("replication.min_sync_replicas: must be at least 1")
        targets = list(self.targets or [])
        if not targets:
            p.append("targets: no replica is configured; add at least one [[targets]] table")
        elif msr_ok and msr > len(targets):
            p.append(
                f"replication.min_sync_replicas: {msr} is more than the {len(targets)} "
                "configured replica(s)"
            )
        seen_names: dict[str, str] = {}
        seen_urls: dict[str, str] = {}
        for fld, t in _all_targets(primary, targets):
            if not isinstance(t, ReplicaTarget):
                p.append(f"{fld}: must be a ReplicaTarget, got {type(t).__name__}")
                continue
            _target_problems(fld, t, p)
            url = t.url.rstrip("/") if isinstance(t.url, str) else t.url
            if isinstance(url, str) and url != "memory:":
                if url in seen_urls:
                    p.append(
                        f"{fld}.url: {_debug(t.url)} is also the url of {seen_urls[url]}; "
                        "two targets must be two stores"
                    )
                else:
                    seen_urls[url] = fld
            if isinstance(t.name, str):
                if t.name in seen_names:
                    p.append(
                        f"{fld}.name: duplicate target name {_debug(t.name)} "
                        f"(also used by {seen_names[t.name]})"
                    )
                else:
                    seen_names[t.name] = fld
        # What only hurts a sidecar (check-config and serve refuse it).
        if isinstance(primary, ReplicaTarget) and _url_kind(primary.url)[0] == "memory":
            p.append(
                "primary.url: a memory:// primary forgets every acknowledged write when the "
                "sidecar restarts; use a file://, s3://, gs:// or az:// store"
            )
        if self.auth_token_file is not None:
            token = Path(self.auth_token_file)
            if not token.is_absolute():
                token = Path(base_dir if base_dir is not None else os.getcwd()) / token
            token = Path(os.path.abspath(token))
            if not token.is_file():
                p.append(
                    f"auth_token_file: {token} does not exist (or is not a file); create it "
                    "with the token, or remove auth_token_file"
                )
        return p

    def validate(
        self,
        primary: Optional[ReplicaTarget] = None,
        *,
        base_dir: Optional[PathLike] = None,
    ) -> None:
        """Validate configuration values as ``walship check-config`` does.

        Raises:
            ConfigError: (a ``ValueError``) listing every problem, one line
                each, naming the field as check-config does.
        """
        problems = self.problems(primary, base_dir=base_dir)
        if problems:
            raise ConfigError(problems)

    # ------------------------------------------------------------------- to_toml

    def to_toml(
        self,
        primary: Optional[ReplicaTarget] = None,
        data_dir: Optional[PathLike] = None,
        *,
        listen: Optional[str] = None,
        path: Optional[PathLike] = None,
        validate: bool = True,
    ) -> str:
        """The config file for ``walship serve --config``.

        Args:
            primary: The primary store; defaults to ``self.primary`` (one of
                them is required).
            data_dir: Where the sidecar keeps its log; defaults to
                ``self.data_dir``. A relative path is taken from the config
                file's directory.
            listen: Overrides ``self.listen``.
            path: When given, the text is also written there.
            validate: Run :meth:`validate` first (relative ``auth_token_file``
                taken from ``path``'s directory). Default: True.

        Returns:
            The TOML text. Sidecar settings left at their defaults are not
            written (so the file works with sidecars that predate them).

        Raises:
            ConfigError: when ``validate`` and the config has problems.
            ValueError: when there is no primary.
        """
        primary = primary if primary is not None else self.primary
        if primary is None:
            raise ValueError(
                "primary: no primary store; pass to_toml(primary=ReplicaTarget(...)) or set "
                "ReplicationConfig.primary"
            )
        data_dir = data_dir if data_dir is not None else self.data_dir
        listen = listen if listen is not None else self.listen
        if validate:
            base = Path(path).parent if path is not None else None
            cfg = _replace(self, listen=listen, data_dir=data_dir)
            cfg.validate(primary, base_dir=base)
        lines = [
            "# walship config written by the walship Python package.",
            "# Check it with: walship check-config FILE",
            "",
            f"data_dir = {_toml_str(os.fspath(data_dir))}",
            f"listen = {_toml_str(listen)}",
        ]
        for key, default in _SIDECAR_DEFAULTS.items():
            value = getattr(self, key)
            if value is None or (value == default and type(value) is type(default)):
                continue
            if key == "auth_token_file":
                value = os.fspath(value)
            lines.append(f"{key} = {_toml_value(value)}")
        lines += [
            "",
            "[replication]",
            f"mode = {_toml_value(self.mode)}",
            f"min_sync_replicas = {_toml_value(self.min_sync_replicas)}",
            f"read_preference = {_toml_value(self.read_preference)}",
            f"conflict_resolution = {_toml_value(self.conflict_resolution)}",
            f"enable_health_checks = {_toml_value(self.enable_health_checks)}",
            f"health_check_interval_seconds = {_toml_value(self.health_check_interval_seconds)}",
            f"max_replication_lag_ms = {_toml_value(self.max_replication_lag_ms)}",
            f"enable_failover = {_toml_value(self.enable_failover)}",
            f"enable_metrics = {_toml_value(self.enable_metrics)}",
        ]
        lines += _target_toml("primary", primary)
        for t in self.targets:
            lines += _target_toml("targets", t)
        text = "\n".join(lines) + "\n"
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text


# ---------------------------------------------------------------------- helpers


def _replace(cfg: ReplicationConfig, **changes: Any) -> ReplicationConfig:
    import dataclasses

    return dataclasses.replace(cfg, **changes)


def _all_targets(
    primary: Optional[ReplicaTarget], targets: list[ReplicaTarget]
) -> Iterator[tuple[str, ReplicaTarget]]:
    if primary is not None:
        yield "primary", primary
    for i, t in enumerate(targets):
        yield f"targets[{i}]", t


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _fmt(v: Any) -> str:
    """A number as Rust's ``{}`` prints an f64 (``30``, ``0.000000001``, ``inf``, ``NaN``)."""
    if not _is_number(v):
        return repr(v)
    f = float(v)
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "inf" if f > 0 else "-inf"
    return format(Decimal(repr(f)).normalize(), "f")


def _debug(v: Any) -> str:
    return _debug_str(v) if isinstance(v, str) else repr(v)


def _duration(fld: str, v: Any, zero_ok: bool, p: list[str]) -> None:
    """Between 1 ms and 1 year (``zero_ok``: or exactly 0, meaning none);
    NaN and infinities are refused."""
    if _is_number(v):
        f = float(v)
        if (zero_ok and f == 0.0) or (0.001 <= f <= _YEAR_SECONDS):
            return
    rng = (
        "0 or between 0.001 (1 ms) and 31536000 (1 year)"
        if zero_ok
        else "between 0.001 (1 ms) and 31536000 (1 year)"
    )
    p.append(f"{fld}: must be {rng} seconds, got {_fmt(v)}")


def _count(fld: str, v: Any, p: list[str], minimum: int = 1) -> None:
    if not _is_int(v):
        p.append(f"{fld}: must be a whole number, got {v!r}")
    elif v < minimum:
        p.append(f"{fld}: must be at least {minimum}")


def _flag(fld: str, v: Any, p: list[str]) -> None:
    if not isinstance(v, bool):
        p.append(f"{fld}: must be true or false, got {v!r}")


def _enum(fld: str, v: Any, enum: type[Enum], p: list[str]) -> None:
    values = [m.value for m in enum]
    if isinstance(v, enum) or (isinstance(v, str) and v in values):
        return
    p.append(f"{fld}: unknown value {v!r}; use {', '.join(values)}")


def _socket_addr(s: Any) -> Optional[tuple[Any, int]]:
    """Parses ``IPv4:port`` or ``[IPv6]:port`` as Rust's SocketAddr does."""
    if not isinstance(s, str):
        return None
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:([0-9]{1,5})", s) or re.fullmatch(
        r"([0-9.]+):([0-9]{1,5})", s
    )
    if not m:
        return None
    try:
        ip = ipaddress.ip_address(m.group(1))
    except ValueError:
        return None
    if s.startswith("[") != (ip.version == 6):
        return None
    port = int(m.group(2))
    if port > 65535:
        return None
    return ip, port


def _is_loopback(ip: Any) -> bool:
    if ip.version == 4:
        return ip.is_loopback
    return ip == ipaddress.IPv6Address("::1")


def _addr_str(addr: tuple[Any, int]) -> str:
    ip, port = addr
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


_SCHEMES = {
    "memory": "memory",
    "file": "file",
    "s3": "s3",
    "s3a": "s3",
    "gs": "gs",
    "az": "az",
    "azure": "az",
    "abfs": "az",
}


def _url_kind(url: Any) -> tuple[Optional[str], Optional[str]]:
    """(kind, None) for a URL walship understands, (None, problem) otherwise."""
    if not isinstance(url, str):
        return None, f"must be a string, got {url!r}"
    m = re.match(r"([A-Za-z][A-Za-z0-9+.\-]*):(.*)\Z", url, re.S)
    if not m:
        return None, f"not a URL (relative URL without a base): {_debug(url)}"
    scheme = m.group(1).lower()
    rest = m.group(2)
    kind = _SCHEMES.get(scheme)
    if kind is None:
        return None, (
            f"unknown scheme {_debug(scheme)}; use s3://, gs://, az://, file:///abs/path "
            "or memory://"
        )
    if kind == "memory":
        return kind, None
    host = ""
    if rest.startswith("//"):
        host = re.split(r"[/?#]", rest[2:], maxsplit=1)[0]
    if kind == "file":
        if host:
            return None, f"{_debug(url)} has a host; write file:///absolute/path"
        return kind, None
    if not host:
        return None, f"{_debug(url)} names no bucket; write {scheme}://BUCKET/PREFIX"
    return kind, None


_NAME = re.compile(r"[A-Za-z0-9._\-]+\Z")


def _target_problems(fld: str, t: ReplicaTarget, p: list[str]) -> None:
    if not isinstance(t.name, str) or not _NAME.match(t.name) or not t.name.isascii():
        p.append(
            f"{fld}.name: {_debug(t.name)} must be non-empty and use only letters, digits, "
            "'.', '_' and '-'"
        )
    if not isinstance(t.region, str):
        p.append(f"{fld}.region: must be a string, got {t.region!r}")
    if not _is_int(t.priority) or t.priority < 0:
        p.append(f"{fld}.priority: must be a whole number, 0 or more, got {t.priority!r}")
    _flag(f"{fld}.is_read_replica", t.is_read_replica, p)
    _duration(f"{fld}.sync_timeout_seconds", t.sync_timeout_seconds, False, p)
    _duration(f"{fld}.retry_delay_seconds", t.retry_delay_seconds, True, p)
    if not _is_int(t.max_retry_attempts):
        p.append(f"{fld}.max_retry_attempts: must be a whole number, got {t.max_retry_attempts!r}")
    elif t.max_retry_attempts < 1:
        p.append(f"{fld}.max_retry_attempts: must be at least 1")
    kind, problem = _url_kind(t.url)
    if problem is not None:
        p.append(f"{fld}.url: {problem}")
        return
    for k, v in sorted((t.options or {}).items()):
        err = option_problem(kind or "", str(k), _option_str(v))
        if err is not None:
            p.append(f"{fld}.options.{k}: {err}")


def _option_str(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _toml_str(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def _toml_value(v: Any) -> str:
    if isinstance(v, Enum):
        return _toml_str(v.value)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, (str, os.PathLike)):
        return _toml_str(os.fspath(v))
    raise TypeError(f"cannot write {v!r} to TOML")


def _target_toml(table: str, t: ReplicaTarget) -> list[str]:
    header = "[primary]" if table == "primary" else "[[targets]]"
    lines = [
        "",
        header,
        f"name = {_toml_value(t.name)}",
        f"url = {_toml_value(t.url)}",
        f"region = {_toml_value(t.region)}",
        f"priority = {_toml_value(t.priority)}",
        f"is_read_replica = {_toml_value(t.is_read_replica)}",
        f"sync_timeout_seconds = {_toml_value(t.sync_timeout_seconds)}",
        f"max_retry_attempts = {_toml_value(t.max_retry_attempts)}",
        f"retry_delay_seconds = {_toml_value(t.retry_delay_seconds)}",
    ]
    if t.options:
        lines.append(f"[{table}.options]")
        for k, v in t.options.items():
            lines.append(f"{_toml_str(str(k))} = {_toml_str(_option_str(v))}")
    return lines
