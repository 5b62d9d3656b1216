"""Settings of the `csv-drop` adapter, one set per provider: the two folders, the format, and for SFTP how to log in."""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Literal, Self

from pydantic import Field, FilePath, SecretStr, model_validator

from adapters.base import AdapterSettings

_FINGERPRINT = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}$")


class CsvDropSettings(AdapterSettings):
    """Orders are written into `order_dir`; the provider writes status files into `status_dir`, which the
    gateway reads every `poll_interval_seconds` and empties into `status_dir/done` and `status_dir/error`.

    With `transport=sftp` both folders are on the provider's SFTP server: the gateway logs in as
    `sftp_username` with the private key in `sftp_private_key_file` (never a password), and trusts the
    server only with a pinned host key: `sftp_known_hosts_file` (OpenSSH known_hosts) or
    `sftp_host_key_fingerprint` (`SHA256:...`, as `ssh-keygen -lf` prints it).
    """

    transport: Literal["local", "sftp"] = "local"
    order_dir: str = Field(min_length=1, description="Where order files are written")
    status_dir: str = Field(min_length=1, description="Where the provider's status files are read")
    order_format: Literal["csv", "fhir-json"] = Field(
        default="csv", description="csv (homecare-order/1), or the trust's Bundle as received (fhir-json)"
    )
    poll_interval_seconds: float = Field(default=30.0, ge=0.05, le=3600)
    sftp_host: str | None = None
    sftp_port: int = Field(default=22, ge=1, le=65535)
    sftp_username: str | None = None
    sftp_private_key_file: FilePath | None = None
    sftp_private_key_passphrase: SecretStr | None = None
    sftp_known_hosts_file: FilePath | None = None
    sftp_host_key_fingerprint: str | None = None
    connect_timeout_seconds: float = Field(default=15.0, gt=0, le=120)

    @model_validator(mode="after")
    def _transport_needs(self) -> Self:
        sftp_values = (
            self.sftp_host,
            self.sftp_username,
            self.sftp_private_key_file,
            self.sftp_known_hosts_file,
            self.sftp_host_key_fingerprint,
        )
        if PurePosixPath(self.order_dir) == PurePosixPath(self.status_dir):
            raise ValueError("order_dir and status_dir must differ")
        if self.transport == "local":
            if any(value is not None for value in sftp_values):
                raise ValueError("sftp_* settings are only used with transport=sftp")
            if not (self.order_dir.startswith("/") and self.status_dir.startswith("/")):
                raise ValueError("order_dir and status_dir must be absolute paths")
            return self
        if not (self.sftp_host and self.sftp_username and self.sftp_private_key_file):
            raise ValueError("transport=sftp needs sftp_host, sftp_username and sftp_private_key_file")
        if (self.sftp_known_hosts_file is None) == (self.sftp_host_key_fingerprint is None):
            raise ValueError(
                "pin the server's host key: set sftp_known_hosts_file or sftp_host_key_fingerprint"
            )
        if self.sftp_host_key_fingerprint is not None and not _FINGERPRINT.match(
            self.sftp_host_key_fingerprint
        ):
            raise ValueError("sftp_host_key_fingerprint must look like SHA256:<43 base64 characters>")
        return self
