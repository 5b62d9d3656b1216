"""Folders the `csv-drop` adapter writes orders into and reads status files from: on this machine, or over SFTP.

A new file appears whole or not at all: it is written under a temporary name starting with `.` in the
same folder, flushed to disk (fsync; over SFTP the `fsync@openssh.com` extension when the server has
it), then renamed to its final name without ever replacing a file already there, and the folder is
fsynced. A file that already exists under the final name is left alone: a resend neither overwrites
nor duplicates it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Protocol, TypeVar

import asyncssh

from adapters.csv_drop.settings import CsvDropSettings

T = TypeVar("T")


class FolderUnavailable(Exception):  # noqa: N818 -- named for what it is, like a state
    """The folder cannot be reached or written now (retryable)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DropFolder(Protocol):
    async def write_new(self, directory: str, name: str, data: bytes) -> bool:
        """Write `name` atomically; False (and nothing written) when it already exists."""
        ...

    async def list_files(self, directory: str) -> list[str]:
        """Names of the regular files in `directory` not starting with `.`, sorted."""
        ...

    async def read(self, directory: str, name: str) -> bytes: ...

    async def move(self, directory: str, name: str, subdirectory: str) -> str:
        """Move `name` into `directory/subdirectory` (made when missing) under a name not taken there;
        returns that name."""
        ...

    async def check(self, directory: str) -> None:
        """Raise `FolderUnavailable` unless `directory` can be listed."""
        ...

    async def aclose(self) -> None: ...


def temporary_name(name: str) -> str:
    return f".{name}.{uuid.uuid4().hex[:12]}.tmp"


def _free_name(taken: set[str], name: str) -> str:
    candidate, number = name, 1
    while candidate in taken:
        number += 1
        candidate = f"{name}.{number}"
    return candidate


class LocalFolder:
    """Folders on this machine (or a mounted share that honours fsync and link)."""

    async def write_new(self, directory: str, name: str, data: bytes) -> bool:
        return await self._run(_write_new_local, Path(directory), name, data)

    async def list_files(self, directory: str) -> list[str]:
        def listing() -> list[str]:
            return sorted(
                entry.name
                for entry in os.scandir(directory)
                if entry.is_file() and not entry.name.startswith(".")
            )

        return await self._run(listing)

    async def read(self, directory: str, name: str) -> bytes:
        return await self._run((Path(directory) / name).read_bytes)

    async def move(self, directory: str, name: str, subdirectory: str) -> str:
        def move() -> str:
            target = Path(directory) / subdirectory
            target.mkdir(exist_ok=True)
            final = _free_name({entry.name for entry in os.scandir(target)}, name)
            (Path(directory) / name).rename(target / final)
            _fsync_directory(target)
            _fsync_directory(Path(directory))
            return final

        return await self._run(move)

    async def check(self, directory: str) -> None:
        await self.list_files(directory)

    async def aclose(self) -> None:
        return None

    @staticmethod
    async def _run(function: Callable[..., T], *arguments: object) -> T:
        try:
            return await asyncio.to_thread(function, *arguments)
        except OSError as exc:
            raise FolderUnavailable(f"{type(exc).__name__}: {exc.strerror or exc}") from exc


def _write_new_local(directory: Path, name: str, data: bytes) -> bool:
    final = directory / name
    if final.exists():
        return False
    temporary = directory / temporary_name(name)
    with temporary.open("xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    try:
        # A hard link never replaces an existing file (rename would): the first writer wins.
        os.link(temporary, final)
    except FileExistsError:
        return False
    finally:
        temporary.unlink()
    _fsync_directory(directory)
    return True


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class _PinnedHostKey(asyncssh.SSHClient):
    """Accepts only the server host key with this SHA-256 fingerprint (asyncssh then checks the server
    holds its private key)."""

    def __init__(self, fingerprint: str) -> None:
        self._fingerprint = fingerprint

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        return bool(key.get_fingerprint("sha256") == self._fingerprint)


class SftpFolder:
    """Folders on the provider's SFTP server: key authentication, host key pinned, one reused connection."""

    def __init__(self, settings: CsvDropSettings) -> None:
        self._settings = settings
        self._connection: asyncssh.SSHClientConnection | None = None
        self._sftp: asyncssh.SFTPClient | None = None
        self._lock = asyncio.Lock()

    async def _client(self) -> asyncssh.SFTPClient:
        if self._sftp is not None and self._connection is not None and not self._connection.is_closed():
            return self._sftp
        settings = self._settings
        assert settings.sftp_host and settings.sftp_username and settings.sftp_private_key_file
        passphrase = settings.sftp_private_key_passphrase
        pinned = settings.sftp_host_key_fingerprint
        try:
            connection, _ = await asyncio.wait_for(
                asyncssh.create_connection(
                    (lambda: _PinnedHostKey(pinned)) if pinned else asyncssh.SSHClient,
                    settings.sftp_host,
                    settings.sftp_port,
                    username=settings.sftp_username,
                    client_keys=[str(settings.sftp_private_key_file)],
                    passphrase=passphrase.get_secret_value() if passphrase else None,
                    known_hosts=str(settings.sftp_known_hosts_file)
                    if settings.sftp_known_hosts_file
                    else ([], [], []),
                    agent_path=None,
                    password=None,
                    kbdint_auth=False,
                ),
                timeout=settings.connect_timeout_seconds,
            )
            self._sftp = await connection.start_sftp_client()
        except TimeoutError as exc:
            raise FolderUnavailable(
                f"SFTP server did not answer within {settings.connect_timeout_seconds:g} s"
            ) from exc
        except (OSError, asyncssh.Error) as exc:
            raise FolderUnavailable(f"SFTP server unreachable or refused us ({_describe(exc)})") from exc
        self._connection = connection
        return self._sftp

    async def _drop(self) -> None:
        connection, self._connection, self._sftp = self._connection, None, None
        if connection is not None:
            connection.close()
            with contextlib.suppress(OSError, asyncssh.Error):
                await connection.wait_closed()

    async def write_new(self, directory: str, name: str, data: bytes) -> bool:
        async with self._lock:
            sftp = await self._client()
            final = str(PurePosixPath(directory) / name)
            temporary = str(PurePosixPath(directory) / temporary_name(name))
            try:
                if await sftp.exists(final):
                    return False
                async with sftp.open(temporary, "wb") as handle:
                    await handle.write(data)
                    with contextlib.suppress(asyncssh.SFTPOpUnsupported):
                        await handle.fsync()
                try:
                    # Plain SFTP rename refuses to replace an existing file: the first writer wins.
                    await sftp.rename(temporary, final)
                except (asyncssh.SFTPFailure, asyncssh.SFTPFileAlreadyExists):
                    await sftp.remove(temporary)
                    if await sftp.exists(final):
                        return False
                    raise
                return True
            except (OSError, asyncssh.Error) as exc:
                await self._drop()
                raise FolderUnavailable(f"SFTP write failed ({_describe(exc)})") from exc

    async def list_files(self, directory: str) -> list[str]:
        async with self._lock:
            sftp = await self._client()
            try:
                entries = await sftp.readdir(directory)
            except (OSError, asyncssh.Error) as exc:
                await self._drop()
                raise FolderUnavailable(f"SFTP listing failed ({_describe(exc)})") from exc
            return sorted(
                str(entry.filename)
                for entry in entries
                if entry.attrs.type == asyncssh.FILEXFER_TYPE_REGULAR
                and not str(entry.filename).startswith(".")
            )

    async def read(self, directory: str, name: str) -> bytes:
        async with self._lock:
            sftp = await self._client()
            try:
                async with sftp.open(str(PurePosixPath(directory) / name), "rb") as handle:
                    data: bytes = await handle.read()
                    return data
            except (OSError, asyncssh.Error) as exc:
                await self._drop()
                raise FolderUnavailable(f"SFTP read failed ({_describe(exc)})") from exc

    async def move(self, directory: str, name: str, subdirectory: str) -> str:
        async with self._lock:
            sftp = await self._client()
            target = str(PurePosixPath(directory) / subdirectory)
            try:
                if not await sftp.isdir(target):
                    await sftp.mkdir(target)
                final = _free_name(set(await sftp.listdir(target)), name)
                await sftp.rename(str(PurePosixPath(directory) / name), str(PurePosixPath(target) / final))
                return final
            except (OSError, asyncssh.Error) as exc:
                await self._drop()
                raise FolderUnavailable(f"SFTP move failed ({_describe(exc)})") from exc

    async def check(self, directory: str) -> None:
        await self.list_files(directory)

    async def aclose(self) -> None:
        async with self._lock:
            await self._drop()


def _describe(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {str(reason)[:200]}"


def drop_folder(settings: CsvDropSettings) -> DropFolder:
    return SftpFolder(settings) if settings.transport == "sftp" else LocalFolder()
