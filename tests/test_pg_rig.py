"""The test PostgreSQL of scripts/pg-up: reachable over its URL, and on 127.0.0.1 only.

Runs only where SLURMRUNNER_TEST_PG_URL is set (scripts/test exports it, as root, once
scripts/pg-up has the server up); elsewhere every test here is skipped, saying why.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

PG_URL = os.environ.get("SLURMRUNNER_TEST_PG_URL", "")
PSQL = "/usr/bin/psql"

pytestmark = [
    pytest.mark.skipif(
        not PG_URL,
        reason="SLURMRUNNER_TEST_PG_URL not set (scripts/test sets it as root after scripts/pg-up)",
    ),
    pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/net"),
]


@dataclass(frozen=True)
class Conn:
    host: str
    port: int
    user: str
    password: str
    dbname: str


def parse_url(url: str) -> Conn:
    parts = urlsplit(url)
    assert parts.scheme == "postgresql+psycopg", url.split("@")[-1]
    assert parts.hostname and parts.port and parts.username and parts.password
    return Conn(
        host=parts.hostname,
        port=parts.port,
        user=unquote(parts.username),
        password=unquote(parts.password),
        dbname=parts.path.lstrip("/"),
    )


def psql(conn: Conn, sql: str, *, password: str | None = None, dbname: str | None = None):
    """Run one statement with psql over TCP; the password goes in the environment, never argv."""
    env = {
        "PATH": "/usr/bin:/bin",
        "LC_ALL": "C",
        "PGPASSWORD": conn.password if password is None else password,
        "PGCONNECT_TIMEOUT": "10",
    }
    argv = [PSQL, "-X", "-w", "-At", "-v", "ON_ERROR_STOP=1", "-h", conn.host]
    argv += ["-p", str(conn.port), "-U", conn.user, "-d", dbname or conn.dbname, "-c", sql]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)


def query(conn: Conn, sql: str, **kwargs) -> str:
    proc = psql(conn, sql, **kwargs)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the TCP sockets listening on PORT, from /proc/net/tcp{,6}."""
    found: set[str] = set()
    for name in ("tcp", "tcp6"):
        path = Path("/proc/net") / name
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, state = fields[1], fields[3]
            addr_hex, port_hex = local.split(":")
            if state != "0A" or int(port_hex, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(addr_hex)
            # The kernel prints each 32-bit word in host (little-endian) order.
            words = [raw[i : i + 4][::-1] for i in range(0, len(raw), 4)]
            found.add(str(ipaddress.ip_address(b"".join(words))))
    return found


@pytest.fixture(scope="module")
def conn() -> Conn:
    return parse_url(PG_URL)


def test_select_1(conn: Conn):
    assert query(conn, "select 1") == "1"


def test_url_is_the_rigs_loopback_server(conn: Conn):
    assert conn.host == "127.0.0.1"
    assert conn.port != 5432  # never Debian's default cluster
    assert query(conn, "show listen_addresses") == "127.0.0.1"
    assert query(conn, "select inet_server_addr()") == "127.0.0.1"
    assert query(conn, "show port") == str(conn.port)
    assert query(conn, "select current_user") == conn.user


def test_listens_on_127_0_0_1_only(conn: Conn):
    assert listening_addresses(conn.port) == {"127.0.0.1"}


def test_wrong_password_is_refused(conn: Conn):
    proc = psql(conn, "select 1", password="not-" + conn.password)
    assert proc.returncode != 0
    assert "password authentication failed" in proc.stderr


def test_role_can_make_a_scratch_database(conn: Conn):
    name = f"t_scratch_{uuid.uuid4().hex[:12]}"
    query(conn, f"create database {name}")
    try:
        assert query(conn, "select current_database()", dbname=name) == name
    finally:
        query(conn, f"drop database {name} with (force)")


def test_sqlalchemy_url_connects():
    sqlalchemy = pytest.importorskip("sqlalchemy")
    pytest.importorskip("psycopg")
    engine = sqlalchemy.create_engine(PG_URL)
    try:
        with engine.connect() as connection:
            assert connection.execute(sqlalchemy.text("select 1")).scalar_one() == 1
    finally:
        engine.dispose()
