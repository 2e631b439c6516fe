"""walship: the Python package for the walship write-ahead-log replicator.

The seed's replication names (truthound's ``truthound.stores.replication``),
member for member, for a walship sidecar:

* :class:`ReplicationMode`, :class:`ReadPreference`,
  :class:`ConflictResolution`, :class:`ReplicaHealth`, :class:`ReplicaState`;
* :class:`ReplicaTarget` and :class:`ReplicationConfig`, with
  :meth:`ReplicationConfig.validate` (the rules of ``walship check-config``)
  and :meth:`ReplicationConfig.to_toml` (the file ``walship serve`` runs);
* :class:`Client` for the sidecar's HTTP API, and :class:`ReplicationMetrics`
  from :meth:`Client.metrics`.

``import walship.truthound`` registers the truthound store ``"walship"``.

Standard library only.
"""

from .client import (
    APIError,
    BadRequest,
    Client,
    Conflict,
    InsufficientStorage,
    KeyInfo,
    NotFound,
    Object,
    QuorumTimeout,
    ServerError,
    TooLarge,
    Unauthorized,
    Unavailable,
    WalshipConnectionError,
    WalshipError,
    WalshipTimeout,
    WriteAck,
)
from .config import (
    ConfigError,
    ConflictResolution,
    ReadPreference,
    ReplicaHealth,
    ReplicaState,
    ReplicaTarget,
    ReplicationConfig,
    ReplicationMode,
)
from .metrics import ReplicationMetrics

__version__ = "0.1.0"

__all__ = [
    "APIError",
    "BadRequest",
    "Client",
    "ConfigError",
    "Conflict",
    "ConflictResolution",
    "InsufficientStorage",
    "KeyInfo",
    "NotFound",
    "Object",
    "QuorumTimeout",
    "ReadPreference",
    "ReplicaHealth",
    "ReplicaState",
    "ReplicaTarget",
    "ReplicationConfig",
    "ReplicationMetrics",
    "ReplicationMode",
    "ServerError",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
    "WalshipConnectionError",
    "WalshipError",
    "WalshipTimeout",
    "WriteAck",
]
