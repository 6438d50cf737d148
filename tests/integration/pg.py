"""pg.py -- a real PostgreSQL 15 for the integration tests (stdlib only).

    import pg
    db = pg.database()      # a fresh, empty database on this process's cluster
    db.url                  # postgresql://waybill:PASSWORD@127.0.0.1:PORT/t_...
    db.sql("SELECT 1")      # rows (lists of strings, None for NULL), as superuser

One cluster per test process (run.py runs each test file in a worker
process of its own): `initdb` once (as the unprivileged `postgres` user,
into a temp dir), started on a free port of 127.0.0.1 with its unix socket
in that dir and `fsync=on`, stopped and removed when the process exits
(atexit; the postmaster is a child of this process, in its process group,
so a worker the runner kills takes it along). Each database() is a new
database `t_<random>` owned by the role `waybill`, whose password (random
per run, `pg.PASSWORD`) is asked over TCP (scram-sha-256): tests check it
works from the URL, PGPASSWORD or a pgpass file, and that it is never
printed. The superuser `postgres` connects over the unix socket (trust).

The binaries come from Debian's postgresql-15 (`make test-deps`).
"""

import atexit
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time

import wb

PG_BIN = "/usr/lib/postgresql/15/bin"
USER = "waybill"
PASSWORD = "pw-" + secrets.token_hex(12)
START_TIMEOUT = 60.0

_cluster = None


class Cluster:
    """One running PostgreSQL 15 (see the module's comment)."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="wb-pg-")
        self.data = os.path.join(self.dir, "data")
        self.log_path = os.path.join(self.dir, "postgres.log")
        self.proc = None
        self.port = None
        ent = pwd.getpwnam("postgres")
        os.chown(self.dir, ent.pw_uid, ent.pw_gid)
        self._as_postgres([os.path.join(PG_BIN, "initdb"), "-D", self.data, "-U", "postgres",
                           "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"])
        with open(os.path.join(self.data, "pg_hba.conf"), "w") as f:
            f.write("local all all trust\n"
                    "host all postgres 127.0.0.1/32 reject\n"
                    "host all all 127.0.0.1/32 scram-sha-256\n")
        self.start()
        self.sql("CREATE ROLE %s LOGIN PASSWORD '%s'" % (USER, PASSWORD))

    def _as_postgres(self, argv, **kw):
        ent = pwd.getpwnam("postgres")
        env = dict(os.environ, HOME=self.dir, LC_ALL="C")
        r = subprocess.run(argv, user=ent.pw_uid, group=ent.pw_gid, extra_groups=[],
                           cwd=self.dir, env=env, capture_output=True, timeout=120, **kw)
        if r.returncode != 0:
            raise AssertionError("%s failed (%d):\n%s" % (argv[0], r.returncode,
                                                            (r.stdout + r.stderr).decode()[-3000:]))
        return r

    def start(self):
        """Start (or restart) the postmaster; returns once it answers."""
        ent = pwd.getpwnam("postgres")
        if self.port is None:
            self.port = wb.free_port()
        logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [os.path.join(PG_BIN, "postgres"), "-D", self.data, "-p", str(self.port),
             "-k", self.dir, "-c", "listen_addresses=127.0.0.1", "-c", "fsync=on",
             "-c", "max_connections=60", "-c", "shared_buffers=16MB",
             "-c", "log_min_messages=warning"],
            user=ent.pw_uid, group=ent.pw_gid, extra_groups=[], cwd=self.dir,
            env=dict(os.environ, LC_ALL="C"), stdin=subprocess.DEVNULL, stdout=logf,
            stderr=subprocess.STDOUT)
        logf.close()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise AssertionError("postgres exited (%s):\n%s" % (self.proc.returncode,
                                                                   self.log()[-3000:]))
            r = subprocess.run(self._psql_argv("postgres", "SELECT 1"), capture_output=True)
            if r.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise AssertionError("postgres did not answer in %ds:\n%s"
                                     % (START_TIMEOUT, self.log()[-3000:]))
            time.sleep(0.05)

    def stop(self, mode=signal.SIGINT):
        """Stop the postmaster (SIGINT: fast shutdown; SIGQUIT: immediate)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(mode)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def _psql_argv(self, dbname, sql):
        return [os.path.join(PG_BIN, "psql"), "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1",
                "-F", "\x1f", "-P", "null=\x1e", "-h", self.dir, "-p", str(self.port),
                "-U", "postgres", "-d", dbname, "-c", sql]

    def sql(self, sql, dbname="postgres"):
        """Runs sql as the superuser; rows as lists of strings (None for NULL)."""
        r = subprocess.run(self._psql_argv(dbname, sql), capture_output=True, timeout=60)
        if r.returncode != 0:
            raise AssertionError("psql %r failed: %s" % (sql, r.stderr.decode()))
        rows = []
        for line in r.stdout.decode().splitlines():
            if line:
                rows.append([None if v == "\x1e" else v for v in line.split("\x1f")])
        return rows

    def close(self):
        self.stop(signal.SIGQUIT)
        shutil.rmtree(self.dir, ignore_errors=True)


class Database:
    """One fresh database of the cluster, owned by the role waybill."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.name = "t_" + secrets.token_hex(6)
        cluster.sql("CREATE DATABASE %s OWNER %s" % (self.name, USER))
        self.host, self.port, self.user, self.password = "127.0.0.1", cluster.port, USER, PASSWORD

    def url_with(self, password=None, scheme="postgresql", query=""):
        """The URL, with password (None: without one) and an optional query."""
        auth = self.user + (":" + password if password is not None else "")
        return "%s://%s@%s:%d/%s%s" % (scheme, auth, self.host, self.port, self.name,
                                       ("?" + query) if query else "")

    @property
    def url(self):
        return self.url_with(self.password)

    def sql(self, sql):
        return self.cluster.sql(sql, self.name)


def cluster():
    """This process's cluster, started on first use."""
    global _cluster
    if _cluster is None:
        _cluster = Cluster()
        atexit.register(_cluster.close)
    return _cluster


def database():
    """A new empty database on this process's cluster."""
    return Database(cluster())
