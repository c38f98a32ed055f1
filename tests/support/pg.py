"""A private, throwaway PostgreSQL cluster for tests: initdb into a temp dir, start, stop, remove.

The server listens on 127.0.0.1 at a free port, with its unix socket inside the temp dir, so it
touches nothing outside that dir and several test runs can coexist. As root, the server runs as
the ``postgres`` user (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg
from psycopg import sql

DATABASE = "cnnsearch"
ROLE = "cnn"
_SUPERUSER = "postgres"
_BINDIR_ENV = "PG_BINDIR"


def find_pg_bindir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``: ``$PG_BINDIR``, ``PATH``, or the newest Debian one."""
    candidates: list[Path] = []
    if os.environ.get(_BINDIR_ENV):
        candidates.append(Path(os.environ[_BINDIR_ENV]))
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    debian = Path("/usr/lib/postgresql")
    if debian.is_dir():
        versions = [d for d in debian.iterdir() if re.fullmatch(r"\d+", d.name)]
        candidates += [d / "bin" for d in sorted(versions, key=lambda d: int(d.name), reverse=True)]
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir
    return None


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PgCluster:
    """One running PostgreSQL server with database ``cnnsearch`` owned by role ``cnn`` (password auth)."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.base = Path(tempfile.mkdtemp(prefix="cnnsearch-pg-"))
        self.port = free_port()
        # Distinctive, so a test can search any output for it; URL-safe, so it needs no escaping.
        self.password = "pw" + secrets.token_hex(10)
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            entry = pwd.getpwnam(_SUPERUSER)
            os.chown(self.base, entry.pw_uid, entry.pw_gid)
        try:
            self._initialize()
        except BaseException:
            self.destroy()
            raise

    def _initialize(self) -> None:
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            _SUPERUSER,
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
        )
        self.start()
        with self._admin() as admin:
            admin.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(ROLE), sql.Literal(self.password))
            )
        self.create_database(DATABASE)

    def _admin(self) -> psycopg.Connection:
        # The superuser over the unix socket, where authentication is "trust".
        return psycopg.connect(host=str(self.base), port=self.port, user=_SUPERUSER, dbname="postgres", autocommit=True)

    def create_database(self, name: str) -> None:
        """Create an empty database ``name`` owned by role ``cnn``."""
        with self._admin() as admin:
            admin.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(ROLE)))

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def log(self) -> Path:
        return self.base / "server.log"

    @property
    def url(self) -> str:
        """``postgresql+psycopg://cnn:PASSWORD@127.0.0.1:PORT/cnnsearch``."""
        return self.url_for(password=self.password)

    def url_for(self, password: str | None = None, database: str = DATABASE, port: int | None = None) -> str:
        """A URL to this server with another password (None: none in the URL), database or port."""
        user = ROLE if password is None else f"{ROLE}:{password}"
        return f"postgresql+psycopg://{user}@127.0.0.1:{port or self.port}/{database}"

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = (
            f"-c port={self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.base}"
            " -c fsync=off -c full_page_writes=off"  # a test database: speed over durability
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")

    def stop(self) -> None:
        """Stop the server, closing every client connection (as a crash or restart would)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def restart(self) -> None:
        """Stop and start again on the same port and data: clients' open connections die."""
        self.stop()
        self.start()

    def destroy(self) -> None:
        """Stop the server if it runs and delete everything it wrote."""
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.base, ignore_errors=True)

    def _run(self, program: str, *args: str, check: bool = True) -> None:
        # Output goes to a file, not a pipe: the server pg_ctl starts would inherit the pipe and
        # keep it open, and reading it would never end.
        with tempfile.TemporaryFile() as output:
            result = subprocess.run(
                [str(self.bindir / program), *args],
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.base,
                user=_SUPERUSER if self._as_postgres else None,
                group=_SUPERUSER if self._as_postgres else None,
                extra_groups=[] if self._as_postgres else None,
                env={**os.environ, "LC_ALL": "C"},
                timeout=120,
                check=False,
            )
            if check and result.returncode != 0:
                output.seek(0)
                server_log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
                raise RuntimeError(
                    f"{program} {' '.join(args)} exited with {result.returncode}:\n"
                    f"{output.read().decode(errors='replace')}\n{server_log}"
                )
