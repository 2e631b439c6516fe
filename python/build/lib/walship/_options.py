"""The store options each URL scheme accepts, as ``walship check-config`` does.

A target's ``options`` table is handed to the object_store builder of its
scheme; check-config refuses a key that builder does not know. These are
object_store 0.14's ``AmazonS3ConfigKey``, ``GoogleConfigKey`` and
``AzureConfigKey`` names (with their ``aws_``/``google_``/``azure_``
prefixed forms), plus the HTTP client keys every one of them takes.
``file://`` takes only ``fsync``; ``memory://`` takes none.
"""

from __future__ import annotations

CLIENT_KEYS = frozenset(
    {
        "allow_http",
        "allow_invalid_certificates",
        "disable_system_certificates",
        "connect_timeout",
        "default_content_type",
        "http1_only",
        "http2_only",
        "http2_keep_alive_interval",
        "http2_keep_alive_timeout",
        "http2_keep_alive_while_idle",
        "http2_max_frame_size",
        "pool_idle_timeout",
        "pool_max_idle_per_host",
        "proxy_url",
        "proxy_ca_certificate",
        "proxy_excludes",
        "randomize_addresses",
        "read_timeout",
        "timeout",
        "user_agent",
    }
)

S3_KEYS = frozenset(
    {
        "aws_access_key_id", "access_key_id",
        "aws_secret_access_key", "secret_access_key",
        "aws_default_region", "default_region",
        "aws_region", "region",
        "aws_bucket", "aws_bucket_name", "bucket_name", "bucket",
        "aws_endpoint_url", "aws_endpoint", "endpoint_url", "endpoint",
        "aws_endpoint_url_s3",
        "aws_session_token", "aws_token", "session_token", "token",
        "aws_virtual_hosted_style_request", "virtual_hosted_style_request",
        "aws_s3_express", "s3_express",
        "aws_imdsv1_fallback", "imdsv1_fallback",
        "aws_metadata_endpoint", "metadata_endpoint",
        "aws_unsigned_payload", "unsigned_payload",
        "aws_checksum_algorithm", "checksum_algorithm",
        "aws_container_credentials_relative_uri", "container_credentials_relative_uri",
        "aws_container_credentials_full_uri", "container_credentials_full_uri",
        "aws_container_authorization_token_file", "container_authorization_token_file",
        "aws_web_identity_token_file", "web_identity_token_file",
        "aws_role_arn", "role_arn",
        "aws_role_session_name", "role_session_name",
        "aws_endpoint_url_sts", "endpoint_url_sts",
        "aws_skip_signature", "skip_signature",
        "aws_copy_if_not_exists", "copy_if_not_exists",
        "aws_conditional_put", "conditional_put",
        "aws_disable_tagging", "disable_tagging",
        "aws_disable_bulk_delete", "disable_bulk_delete",
        "aws_request_payer", "request_payer",
        "aws_allow_http",
        "aws_server_side_encryption", "server_side_encryption",
        "aws_sse_kms_key_id", "sse_kms_key_id",
        "aws_sse_bucket_key_enabled", "sse_bucket_key_enabled",
        "aws_sse_customer_key_base64", "sse_customer_key_base64",
    }
)

GCS_KEYS = frozenset(
    {
        "google_service_account", "service_account",
        "google_service_account_path", "service_account_path",
        "google_service_account_key", "service_account_key",
        "google_bucket", "google_bucket_name", "bucket", "bucket_name",
        "google_base_url", "base_url",
        "google_application_credentials", "application_credentials",
        "google_bearer_token", "bearer_token",
        "google_skip_signature", "skip_signature",
    }
)

AZURE_KEYS = frozenset(
    {
        "azure_storage_account_key", "azure_storage_access_key",
        "azure_storage_master_key", "master_key", "account_key", "access_key",
        "azure_storage_account_name", "account_name",
        "azure_storage_client_id", "azure_client_id", "client_id",
        "azure_storage_client_secret", "azure_client_secret", "client_secret",
        "azure_storage_tenant_id", "azure_storage_authority_id", "azure_tenant_id",
        "azure_authority_id", "tenant_id", "authority_id",
        "azure_storage_authority_host", "azure_authority_host", "authority_host",
        "azure_storage_sas_key", "azure_storage_sas_token", "sas_key", "sas_token",
        "azure_storage_token", "bearer_token", "token",
        "azure_storage_use_emulator", "use_emulator",
        "azure_storage_endpoint", "azure_endpoint", "endpoint",
        "azure_msi_endpoint", "azure_identity_endpoint", "identity_endpoint", "msi_endpoint",
        "azure_object_id", "object_id",
        "azure_msi_resource_id", "msi_resource_id",
        "azure_federated_token_file", "federated_token_file",
        "azure_use_fabric_endpoint", "use_fabric_endpoint",
        "azure_use_azure_cli", "use_azure_cli",
        "azure_skip_signature", "skip_signature",
        "azure_container_name", "container_name",
        "azure_disable_tagging", "disable_tagging",
        "azure_fabric_token_service_url", "fabric_token_service_url",
        "azure_fabric_workload_host", "fabric_workload_host",
        "azure_fabric_session_token", "fabric_session_token",
        "azure_fabric_cluster_identifier", "fabric_cluster_identifier",
        "azure_credential_type", "credential_type",
        "azure_storage_encryption_key", "encryption_key",
        "azure_allow_http",
    }
)


def _known(key: str, own: frozenset[str], prefix: str) -> bool:
    if key in own:
        return True
    bare = key[len(prefix):] if key.startswith(prefix) else key
    return bare in CLIENT_KEYS


_BOOLS = {"true", "1", "yes", "false", "0", "no"}


def option_problem(kind: str, key: str, value: str) -> str | None:
    """What check-config says of option ``key = value`` for a URL of ``kind``
    (``memory``, ``file``, ``s3``, ``gs``, ``az``), or None when it is fine."""
    if kind == "memory":
        return "memory:// takes no options"
    if kind == "file":
        if key != "fsync":
            return 'unknown option for file:// (the only one is fsync = "true" | "false")'
        if value not in _BOOLS:
            return f"{_debug_str(value)} is not true or false"
        return None
    if kind == "s3":
        if _known(key, S3_KEYS, "aws_"):
            return None
        return (
            "unknown option for s3:// (see object_store's AmazonS3ConfigKey: "
            "endpoint, region, allow_http, access_key_id, …)"
        )
    if kind == "gs":
        if _known(key, GCS_KEYS, "google_"):
            return None
        return "unknown option for gs:// (see object_store's GoogleConfigKey)"
    if kind == "az":
        if _known(key, AZURE_KEYS, "azure_"):
            return None
        return (
            "unknown option for az:// (see object_store's AzureConfigKey: "
            "account_name, access_key, use_emulator, …)"
        )
    return None


def _debug_str(s: str) -> str:
    """A string quoted roughly as Rust's ``{:?}`` does."""
    out = ['"']
    for ch in s:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{{{ord(ch):x}}}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)
