"""A throwaway PostgreSQL cluster for the tests (fleet mode, issue 14).

Debian's `postgresql` package ships initdb/pg_ctl in /usr/lib/postgresql/<major>/bin. The
cluster lives in a temporary directory, listens only on 127.0.0.1 on a port from
`tests.ports.free_port` (no Unix socket), trusts loopback, and is run by an unprivileged user:
PostgreSQL refuses to run as root, so when the tests run as root the server commands go
through `runuser -u postgres` (or `nobody`). Each test gets its own database (`fresh_url`).
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.ports import free_port

_counter = itertools.count(1)


def pg_bin() -> Path | None:
    """The newest installed server's bin directory, or None when PostgreSQL is not installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def _server_user() -> str | None:
    """Who runs the server: ourselves unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root and no unprivileged user (postgres, nobody) to run PostgreSQL")


class PgCluster:
    def __init__(self) -> None:
        bindir = pg_bin()
        if bindir is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
        self.bindir = bindir
        self.user = _server_user()
        self.root = Path(tempfile.mkdtemp(prefix="greyproxy-pg-"))
        self.datadir = self.root / "data"
        self.logfile = self.root / "server.log"
        self.port = free_port("127.0.0.1")
        if self.user:
            info = pwd.getpwnam(self.user)
            os.chown(self.root, info.pw_uid, info.pw_gid)
        os.chmod(self.root, 0o700)

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        # cwd: the server user may not be able to read ours
        return subprocess.run(cmd, check=True, capture_output=True, timeout=timeout, cwd=str(self.root))

    def init(self) -> PgCluster:
        self._run("initdb", "-D", str(self.datadir), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--no-sync", "--locale=C")
        with open(self.datadir / "postgresql.conf", "a") as conf:
            conf.write(f"listen_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = ''\n"
                       "fsync = off\nmax_connections = 200\nshared_buffers = 32MB\n")
        return self.start()

    def start(self) -> PgCluster:
        self._run("pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile), "-w", "-t", "30", "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "-t", "30", "stop")

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def sql(self, statement: str, dbname: str = "postgres") -> str:
        out = subprocess.run([str(self.bindir / "psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                              "-d", self.url(dbname), "-c", statement],
                             check=True, capture_output=True, text=True, timeout=30)
        return out.stdout.strip()

    def fresh_url(self) -> str:
        """A new, empty database (one per test: tests never see each other's rows)."""
        name = f"t{os.getpid()}_{next(_counter)}_{int(time.time() * 1000) % 100000}"
        self.sql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except (subprocess.SubprocessError, OSError):
            pass
        shutil.rmtree(self.root, ignore_errors=True)
