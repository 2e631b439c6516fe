"""A truthound ``ValidationStore`` that writes through a walship sidecar.

Importing this module registers the store under the name ``"walship"`` (truthound
registers stores by import, with ``truthound.stores.register_store``)::

    import walship.truthound  # noqa: F401
    from truthound.stores import get_store

    store = get_store("walship", addr="127.0.0.1:7600", mode="semi_sync",
                      read_preference="nearest")
    run_id = store.save(result)

Objects are laid out as truthound's own S3 store lays them out, under walship
keys::

    {prefix}{namespace}/results/{run_id}.json.gz   # gzip of the result's JSON
    {prefix}{namespace}/_index.json                # {run_id: {data_asset, run_time, status, key, tags}}

so a replica bucket (``s3://bucket`` with no key prefix of its own) stays
readable by ``get_store("s3", bucket=..., prefix=...)`` while the sidecar or
its primary is down. The index is read back from the sidecar before each
change and each listing, so several writers sharing a sidecar see each
other's results.

truthound is an optional dependency: ``pip install './python[truthound]'``.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Optional

try:
    from truthound.stores.base import (
        StoreConfig,
        StoreNotFoundError,
        StoreQuery,
        StoreReadError,
        StoreWriteError,
        ValidationStore,
    )
    from truthound.stores.factory import register_store
    from truthound.stores.results import ValidationResult
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "walship.truthound needs truthound: pip install 'walship[truthound]' "
        f"(or pip install truthound): {e}"
    ) from e

from .client import Client, NotFound, QuorumTimeout, WalshipError
from .config import ReadPreference, ReplicationMode

__all__ = ["WalshipConfig", "WalshipStore"]


@dataclass
class WalshipConfig(StoreConfig):
    """Configuration of the walship store.

    Attributes:
        addr: ``host:port`` of the sidecar. Default: ``127.0.0.1:7600``.
        prefix: Key prefix, as in truthound's S3 store. Default: ``truthound/``.
        token: Bearer token (default: ``token_file``, else ``WALSHIP_TOKEN``).
        token_file: File holding the token.
        mode: Mode of this store's writes (``sync``, ``semi_sync``,
            ``async``); default: the sidecar's.
        read_preference: Where this store's reads go; default: the sidecar's.
        use_compression: gzip stored results (``.json.gz``), as the S3 store
            does by default. Default: True.
        timeout: Seconds per request. Default: 60.
    """

    addr: str = "127.0.0.1:7600"
    prefix: str = "truthound/"
    token: Optional[str] = None
    token_file: Optional[str] = None
    mode: Optional[str] = None
    read_preference: Optional[str] = None
    use_compression: bool = True
    timeout: float = 60.0

    def get_full_prefix(self) -> str:
        """The key prefix including the namespace (the S3 store's rule)."""
        parts = [p for p in [self.prefix.rstrip("/"), self.namespace] if p]
        return "/".join(parts) + "/"


@register_store("walship")
class WalshipStore(ValidationStore["WalshipConfig"]):
    """Validation results stored through a walship sidecar.

    Example:
        >>> store = WalshipStore(addr="127.0.0.1:7600", mode="sync")
        >>> run_id = store.save(result)
        >>> store.get(run_id).status
    """

    def __init__(
        self,
        addr: str = "127.0.0.1:7600",
        prefix: str = "truthound/",
        namespace: str = "default",
        compression: bool = True,
        mode: Optional[ReplicationMode | str] = None,
        read_preference: Optional[ReadPreference | str] = None,
        token: Optional[str] = None,
        token_file: Optional[str] = None,
        timeout: float = 60.0,
        **kwargs: Any,
    ) -> None:
        """Initialize the store.

        Args:
            addr: ``host:port`` of the sidecar.
            prefix: Key prefix for stored objects.
            namespace: Namespace for organizing data.
            compression: Whether to gzip stored results.
            mode: Replication mode of writes (``ReplicationMode`` or its value).
            read_preference: Read preference of reads (``ReadPreference`` or its value).
            token: Bearer token.
            token_file: File holding the bearer token.
            timeout: Seconds per request.
            **kwargs: Other ``WalshipConfig`` fields; unknown ones are ignored,
                as the S3 store does.
        """
        config = WalshipConfig(
            addr=addr,
            prefix=prefix,
            namespace=namespace,
            use_compression=compression,
            mode=ReplicationMode(mode).value if mode is not None else None,
            read_preference=(
                ReadPreference(read_preference).value if read_preference is not None else None
            ),
            token=token,
            token_file=token_file,
            timeout=timeout,
            **{k: v for k, v in kwargs.items() if hasattr(WalshipConfig, k)},
        )
        super().__init__(config)
        self._client: Optional[Client] = None
        self._index: dict[str, dict[str, Any]] = {}

    @classmethod
    def _default_config(cls) -> "WalshipConfig":
        return WalshipConfig()

    @property
    def client(self) -> Client:
        """The walship client (opened on first use)."""
        self.initialize()
        assert self._client is not None
        return self._client

    def _do_initialize(self) -> None:
        c = self._config
        self._client = Client(
            c.addr,
            c.token,
            token_file=c.token_file,
            timeout=c.timeout,
            mode=c.mode,
            read_preference=c.read_preference,
        )
        try:
            self._load_index()
        except WalshipError as e:
            self._client.close()
            self._client = None
            from truthound.stores.base import StoreConnectionError

            raise StoreConnectionError("walship", str(e)) from e

    # ----------------------------------------------------------------- layout

    def _index_key(self) -> str:
        return f"{self._config.get_full_prefix()}_index.json"

    def _get_key(self, item_id: str) -> str:
        ext = ".json.gz" if self._config.use_compression else ".json"
        return f"{self._config.get_full_prefix()}results/{item_id}{ext}"

    def _serialize(self, data: dict[str, Any]) -> bytes:
        content = json.dumps(data, indent=2, default=str).encode("utf-8")
        if self._config.use_compression:
            content = gzip.compress(content)
        return content

    def _deserialize(self, content: bytes) -> dict[str, Any]:
        if self._config.use_compression:
            content = gzip.decompress(content)
        return json.loads(content.decode("utf-8"))

    def _load_index(self) -> None:
        assert self._client is not None
        try:
            raw = self._client.get(self._index_key()).data
        except NotFound:
            self._index = {}
            return
        try:
            self._index = json.loads(raw.decode("utf-8"))
        except ValueError as e:
            raise StoreReadError(f"Failed to load index {self._index_key()}: {e}") from e

    def _save_index(self) -> None:
        content = json.dumps(self._index, indent=2, default=str).encode("utf-8")
        try:
            self.client.put(self._index_key(), content)
        except QuorumTimeout as e:
            raise StoreWriteError(f"Failed to save index (quorum): {e}") from e
        except WalshipError as e:
            raise StoreWriteError(f"Failed to save index: {e}") from e

    # ------------------------------------------------------------------- CRUD

    def save(self, item: ValidationResult) -> str:
        """Saves a validation result; returns its run id.

        Raises:
            StoreWriteError: the write failed, or missed its quorum (then it is
                durable in the sidecar's log and will still be replicated; the
                cause is a :class:`walship.QuorumTimeout`).
        """
        self.initialize()
        item_id = item.run_id
        key = self._get_key(item_id)
        try:
            self.client.put(key, self._serialize(item.to_dict()))
        except QuorumTimeout as e:
            raise StoreWriteError(f"Failed to replicate {key}: {e}") from e
        except WalshipError as e:
            raise StoreWriteError(f"Failed to write to walship: {e}") from e
        self._reload_index()
        self._index[item_id] = {
            "data_asset": item.data_asset,
            "run_time": item.run_time.isoformat(),
            "status": item.status.value,
            "key": key,
            "tags": item.tags,
        }
        self._save_index()
        return item_id

    def get(self, item_id: str) -> ValidationResult:
        """Reads a validation result.

        Raises:
            StoreNotFoundError: no result with that run id.
            StoreReadError: reading failed.
        """
        self.initialize()
        key = self._get_key(item_id)
        try:
            content = self.client.get(key).data
        except NotFound:
            raise StoreNotFoundError("ValidationResult", item_id)
        except WalshipError as e:
            raise StoreReadError(f"Failed to read from walship: {e}") from e
        try:
            return ValidationResult.from_dict(self._deserialize(content))
        except (OSError, ValueError, KeyError) as e:
            raise StoreReadError(f"Failed to decode {key}: {e}") from e

    def exists(self, item_id: str) -> bool:
        """Whether a result with that run id is stored."""
        self.initialize()
        if item_id in self._index:
            return True
        try:
            return self.client.exists(self._get_key(item_id))
        except WalshipError:
            return False

    def delete(self, item_id: str) -> bool:
        """Deletes a result; False when there was none.

        Raises:
            StoreWriteError: the delete failed.
        """
        self.initialize()
        if not self.exists(item_id):
            return False
        key = self._get_key(item_id)
        try:
            self.client.delete(key)
        except WalshipError as e:
            raise StoreWriteError(f"Failed to delete from walship: {e}") from e
        self._reload_index()
        if item_id in self._index:
            del self._index[item_id]
            self._save_index()
        return True

    def list_ids(self, query: Optional[StoreQuery] = None) -> list[str]:
        """Run ids matching ``query`` (all of them without one), as the S3
        store orders them: by run time, newest first unless ``ascending``."""
        self.initialize()
        self._reload_index()
        if not query:
            return list(self._index.keys())
        matching: list[tuple[str, datetime]] = []
        for item_id, meta in self._index.items():
            if query.matches(meta):
                matching.append((item_id, datetime.fromisoformat(meta["run_time"])))
        matching.sort(key=lambda x: x[1], reverse=not query.ascending)
        ids = [item_id for item_id, _ in matching]
        if query.offset:
            ids = ids[query.offset :]
        if query.limit:
            ids = ids[: query.limit]
        return ids

    def query(self, query: StoreQuery) -> list[ValidationResult]:
        """Results matching ``query``."""
        results: list[ValidationResult] = []
        for item_id in self.list_ids(query):
            try:
                results.append(self.get(item_id))
            except (StoreNotFoundError, StoreReadError):
                continue
        return results

    def close(self) -> None:
        """Closes the client's connections."""
        if self._client is not None:
            self._client.close()
        self._client = None
        self._initialized = False

    def _reload_index(self) -> None:
        try:
            self._load_index()
        except WalshipError as e:
            raise StoreReadError(f"Failed to load index: {e}") from e
