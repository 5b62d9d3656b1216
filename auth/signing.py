"""The gateway's own signing keys: they sign access tokens and are published at /.well-known/jwks.json.

Keys are PEM files in one folder, readable by the owner only. The newest file signs; every file's
public key is published and accepted, so rotating (`homecare-gateway keys rotate`) adds a key and
keeps the previous one until the tokens it signed have expired. Processes notice a rotation by the
folder's modification time and reload.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from joserfc.jwk import ECKey, Key, KeySet

ACCESS_TOKEN_ALGORITHM = "ES256"  # noqa: S105  (an algorithm name)
_CURVE = "P-256"
_RELOAD_CHECK_SECONDS = 5.0


class SigningKeyError(Exception):
    """The key folder is missing, empty, unreadable or not private enough."""


class MissingSigningKeyError(SigningKeyError):
    """The key folder holds no key yet (`homecare-gateway keys rotate` makes one)."""


@dataclass(frozen=True, slots=True)
class _Loaded:
    signing: ECKey
    public: KeySet
    folder_mtime: float


def generate_signing_key(folder: Path, *, now: datetime) -> Path:
    """Write a new private key into `folder` (created owner-only), named so the newest sorts last."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ECKey.generate_key(_CURVE)  # no kid: a PEM file cannot hold one; reading sets the thumbprint
    path = folder / f"signing-{now.strftime('%Y%m%dT%H%M%S%fZ')}.pem"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(key.as_pem(private=True))
    return path


def key_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("signing-*.pem")) if folder.is_dir() else []


def ensure_signing_key(folder: Path, *, now: datetime) -> Path:
    """The newest key in `folder`, generating the first one on first run."""
    files = key_files(folder)
    return files[-1] if files else generate_signing_key(folder, now=now)


def rotate_signing_keys(folder: Path, *, now: datetime, keep: int = 2) -> Path:
    """Add a new signing key and delete all but the `keep` newest (the new one and its predecessor)."""
    path = generate_signing_key(folder, now=now)
    for old in key_files(folder)[:-keep]:
        old.unlink()
    return path


def _read_private_key(path: Path, *, require_private_file: bool) -> ECKey:
    mode = path.stat().st_mode
    if require_private_file and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SigningKeyError(f"{path.name} is readable by others; make it owner-only (chmod 600)")
    key = ECKey.import_key(path.read_bytes())
    if not key.is_private or key.curve_name != _CURVE:
        raise SigningKeyError(f"{path.name} is not a {_CURVE} private key")
    key.ensure_kid()
    return key


class SigningKeys:
    """The key ring of one process: sign with the newest key, publish and accept all of them."""

    def __init__(self, folder: Path, *, require_private_files: bool = True) -> None:
        self.folder = folder
        self._require_private_files = require_private_files
        self._lock = threading.Lock()
        self._checked_at = 0.0
        self._loaded = self._load()

    def _load(self) -> _Loaded:
        files = key_files(self.folder)
        if not files:
            raise MissingSigningKeyError(f"no signing key (signing-*.pem) in {self.folder}")
        keys = [_read_private_key(path, require_private_file=self._require_private_files) for path in files]
        return _Loaded(
            signing=keys[-1], public=KeySet(list[Key](keys)), folder_mtime=self.folder.stat().st_mtime
        )

    def _current(self, *, check_now: bool = False) -> _Loaded:
        now = time.monotonic()
        if check_now or now - self._checked_at >= _RELOAD_CHECK_SECONDS:
            with self._lock:
                self._checked_at = now
                if self.folder.stat().st_mtime != self._loaded.folder_mtime:
                    self._loaded = self._load()
        return self._loaded

    def refresh(self) -> bool:
        """Reload now if the folder changed (a rotation); whether the keys are new. One stat if not."""
        before = self._loaded
        return self._current(check_now=True) is not before

    @property
    def signing_key(self) -> ECKey:
        return self._current().signing

    @property
    def verification_keys(self) -> KeySet:
        return self._current().public

    @property
    def generation(self) -> object:
        """Changes whenever the key ring does (a rotation): what was checked against it is stale."""
        return self._current()

    def jwks(self) -> dict[str, Any]:
        """The public keys, as published at /.well-known/jwks.json."""
        keys = [
            {**key.as_dict(private=False), "use": "sig", "alg": ACCESS_TOKEN_ALGORITHM}
            for key in self._current().public
        ]
        return {"keys": keys}
