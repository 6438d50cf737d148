"""pg.py -- a real PostgreSQL 15 for the integration tests (stdlib only).

    import pg
    db = pg.database()      # a fresh, empty database on this process's cluster
    db.url                  # postgresql://waybill:PASSWORD@127.0.0.1:PORT/t_...
    db.sql("SELECT 1")      # rows (lists of strings, None for NULL), as superuser

One cluster per test process (run.py runs each test file in a worker
process of its own), or, under `run.py --store postgresql`, one per runner
worker slot, started by run.py before the first file and shared by every
file that slot runs (WB_PG_CLUSTER names its dir and port; serve()
below): `initdb` once (as the unprivileged `postgres` user,
into a temp dir), started on a free port of 127.0.0.1 with its unix socket
in that dir and `fsync=on`, stopped and removed when the process exits
(atexit; the postmaster is a child of this process, in its process group,
so a worker the runner kills takes it along). Each database() is a new
database `t_<random>` owned by the role `waybill`, whose password (random
per run, `pg.PASSWORD`, or WB_PG_PASSWORD's when the cluster is shared) is
asked over TCP (scram-sha-256): tests check it works from the URL,
PGPASSWORD or a pgpass file, and that it is never printed. A database is
dropped by wb.cleanup() after the test that made it (WITH (FORCE): a
gateway's sessions left over do not keep it), so a shared cluster does not
fill the disk with the suite's hundreds of databases. The superuser `postgres` connects over the unix socket (trust).

Failover and pooling (test_pg_ha.py), each test's own processes, stopped
by wb.cleanup() after the test like a gateway:

    primary = pg.Cluster(own=True)          # a cluster of this test's own
    standby = pg.standby(primary, synchronous=True)
    db = pg.Database(primary)               # replicated: standby has it too
    standby.kill(); standby.promote(); ...  # SIGKILL (a crash), pg_ctl promote
    bouncer = pg.bouncer(pg.cluster())      # PgBouncer, pool_mode = transaction
    bouncer.url(db)                         # db's URL through it

standby() is a second cluster made by `pg_basebackup -R` from the primary
over TCP (the role `wb_repl`, allowed to replicate from 127.0.0.1 only) with
a replication slot of its own, so the primary keeps the WAL it has not yet
received; synchronous=True names it in the primary's
synchronous_standby_names (set after the base backup, so the standby does
not inherit it: promoted, it would wait for a standby of its own) and
returns once pg_stat_replication says 'sync'. bouncer() is Debian's
pgbouncer run as `postgres` (it refuses root) on a free port of 127.0.0.1,
`auth_type = scram-sha-256` with the role's SCRAM secret (from pg_authid,
never the password) in its auth_file: a client's SCRAM proof lets it log in
to PostgreSQL with the same secret. None when pgbouncer is not installed.

The binaries come from Debian's postgresql-15 and pgbouncer (`make test-deps`).
"""

import atexit
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import wb

PG_BIN = "/usr/lib/postgresql/15/bin"
PGBOUNCER = "/usr/sbin/pgbouncer"
USER = "waybill"
REPL_USER = "wb_repl"
PASSWORD = os.environ.get("WB_PG_PASSWORD") or "pw-" + secrets.token_hex(12)
START_TIMEOUT = 60.0

_cluster = None


class Cluster:
    """One running PostgreSQL 15 (see the module's comment). own=True: a
    cluster of the current test's, stopped and removed by wb.cleanup()."""

    def __init__(self, own=False, _from=None, _name="primary"):
        self.dir = tempfile.mkdtemp(prefix="wb-pg-")
        self.data = os.path.join(self.dir, "data")
        self.log_path = os.path.join(self.dir, "postgres.log")
        self.proc = None
        self.port = None
        self.host = "127.0.0.1"
        self.name = _name + "_" + secrets.token_hex(3)
        ent = pwd.getpwnam("postgres")
        os.chown(self.dir, ent.pw_uid, ent.pw_gid)
        if own:
            wb._register(self)
        if _from is not None:  # a standby: the primary's files, streaming from it
            self._as_postgres([os.path.join(PG_BIN, "pg_basebackup"), "-D", self.data,
                               "-h", _from.host, "-p", str(_from.port), "-U", REPL_USER,
                               "-X", "stream", "-C", "-S", self.name, "-R", "--no-sync",
                               "-c", "fast"])
            self.start()
            return
        self._as_postgres([os.path.join(PG_BIN, "initdb"), "-D", self.data, "-U", "postgres",
                           "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"])
        with open(os.path.join(self.data, "pg_hba.conf"), "w") as f:
            f.write("local all all trust\n"
                    "host replication %s 127.0.0.1/32 trust\n"
                    "host all postgres 127.0.0.1/32 reject\n"
                    "host all all 127.0.0.1/32 scram-sha-256\n" % REPL_USER)
        self.start()
        self.sql("CREATE ROLE %s LOGIN PASSWORD '%s'" % (USER, PASSWORD))
        self.sql("CREATE ROLE %s LOGIN REPLICATION" % REPL_USER)

    @classmethod
    def attach(cls, spec):
        """The cluster another process started (spec: "DIR:PORT", as
        WB_PG_CLUSTER has it). Not this process's to stop: stop() and
        close() leave it running (a test that stops a cluster makes its
        own, own=True)."""
        d, port = spec.rsplit(":", 1)
        self = cls.__new__(cls)
        self.dir, self.data = d, os.path.join(d, "data")
        self.log_path = os.path.join(d, "postgres.log")
        self.proc, self.port, self.host = None, int(port), "127.0.0.1"
        self.name = "shared"
        self.shared = True
        return self

    shared = False

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
             "-c", "log_min_messages=warning", "-c", "cluster_name=" + self.name],
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
        assert not self.shared, "a shared cluster is not a test's to stop (use Cluster(own=True))"
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(mode)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self):
        """SIGKILL the postmaster: a crash, not a stop. Its port closes at
        once; its backends notice their parent's death and end."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def in_recovery(self):
        return self.sql("SELECT pg_is_in_recovery()") == [["t"]]

    def promote(self, timeout=30):
        """pg_ctl promote; returns once the cluster takes writes."""
        self._as_postgres([os.path.join(PG_BIN, "pg_ctl"), "promote", "-D", self.data,
                           "-w", "-t", str(int(timeout))])
        wb.wait_for(lambda: not self.in_recovery(), timeout=timeout,
                    message="%s out of recovery" % self.name)

    def make_synchronous(self, standby, timeout=30):
        """Names standby in synchronous_standby_names (then a reload): a
        COMMIT here returns once standby has flushed it."""
        self.sql("ALTER SYSTEM SET synchronous_standby_names = '\"%s\"'" % standby.name)
        self.sql("SELECT pg_reload_conf()")
        wb.wait_for(lambda: self.replication(standby) == ["streaming", "sync"], timeout=timeout,
                    message="%s a synchronous standby of %s" % (standby.name, self.name))

    def replication(self, standby):
        """[state, sync_state] of standby's walsender here, or None."""
        rows = self.sql("SELECT state, sync_state FROM pg_stat_replication"
                        " WHERE application_name = '%s'" % standby.name)
        return rows[0] if rows else None

    def _cleanup(self):
        self.close()
        return []

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
        if self.shared:
            return
        self.stop(signal.SIGQUIT)
        shutil.rmtree(self.dir, ignore_errors=True)


class Database:
    """One fresh database of the cluster, owned by the role waybill."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.name = "t_" + secrets.token_hex(6)
        cluster.sql("CREATE DATABASE %s OWNER %s" % (self.name, USER))
        self.host, self.port, self.user, self.password = "127.0.0.1", cluster.port, USER, PASSWORD
        wb._register(self)

    def _cleanup(self):
        """Dropped after its test (a cluster this test stopped or killed
        goes with its own cleanup; nothing to drop then)."""
        if self.cluster.proc is None and not self.cluster.shared:
            return []
        try:
            self.cluster.sql("DROP DATABASE IF EXISTS %s WITH (FORCE)" % self.name)
        except AssertionError as e:
            return ["dropping database %s: %s" % (self.name, e)]
        return []

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
    """This process's cluster: the runner slot's (WB_PG_CLUSTER), else one
    started on first use."""
    global _cluster
    if _cluster is None:
        spec = os.environ.get("WB_PG_CLUSTER")
        if spec:
            _cluster = Cluster.attach(spec)
        else:
            _cluster = Cluster()
            atexit.register(_cluster.close)
    return _cluster


def serve():
    """For run.py: a cluster for one runner slot, started now and kept until
    close(); its "DIR:PORT" goes to the slot's workers as WB_PG_CLUSTER (with
    WB_PG_PASSWORD, the role's password)."""
    c = Cluster()
    return c, "%s:%d" % (c.dir, c.port)


def database():
    """A new empty database on this process's cluster."""
    return Database(cluster())


def standby(primary, synchronous=False, timeout=30):
    """A streaming standby of primary (see the module's comment), this
    test's own; returns once it streams (synchronous: as the sync one)."""
    s = Cluster(own=True, _from=primary, _name="standby")
    if synchronous:
        primary.make_synchronous(s, timeout)
    else:
        wb.wait_for(lambda: (primary.replication(s) or [""])[0] == "streaming", timeout=timeout,
                    message="%s streaming from %s" % (s.name, primary.name))
    return s


def hosts_url(db, clusters, password=None, query="target_session_attrs=read-write"):
    """db's URL naming every cluster as a host, in order (libpq's multi-host
    form); password None: the one of the role."""
    return "postgresql://%s:%s@%s/%s%s" % (
        USER, PASSWORD if password is None else password,
        ",".join("%s:%d" % (c.host, c.port) for c in clusters), db.name,
        ("?" + query) if query else "")


class Bouncer:
    """Debian's pgbouncer in front of cluster (see the module's comment)."""

    def __init__(self, cluster, pool_mode="transaction", pool_size=2):
        self.cluster = cluster
        self.host = "127.0.0.1"
        self.port = wb.free_port()
        self.dir = tempfile.mkdtemp(prefix="wb-pgbouncer-")
        self.log_path = os.path.join(self.dir, "pgbouncer.log")
        self.proc = None
        ent = pwd.getpwnam("postgres")
        secret = cluster.sql("SELECT rolpassword FROM pg_authid WHERE rolname = '%s'" % USER)[0][0]
        assert secret.startswith("SCRAM-SHA-256$"), "the role's password is not a SCRAM secret"
        with open(os.path.join(self.dir, "users.txt"), "w") as f:
            f.write('"%s" "%s"\n' % (USER, secret))
        with open(os.path.join(self.dir, "pgbouncer.ini"), "w") as f:
            f.write("[databases]\n"
                    "* = host=%s port=%d\n"
                    "[pgbouncer]\n"
                    "listen_addr = %s\n"
                    "listen_port = %d\n"
                    "unix_socket_dir =\n"
                    "auth_type = scram-sha-256\n"
                    "auth_file = %s\n"
                    "pool_mode = %s\n"
                    "default_pool_size = %d\n"
                    "max_client_conn = 50\n"
                    "logfile = %s\n"
                    % (cluster.host, cluster.port, self.host, self.port,
                       os.path.join(self.dir, "users.txt"), pool_mode, pool_size, self.log_path))
        for name in os.listdir(self.dir):
            os.chown(os.path.join(self.dir, name), ent.pw_uid, ent.pw_gid)
        os.chown(self.dir, ent.pw_uid, ent.pw_gid)
        wb._register(self)
        self.proc = subprocess.Popen(
            [PGBOUNCER, os.path.join(self.dir, "pgbouncer.ini")], user=ent.pw_uid,
            group=ent.pw_gid, extra_groups=[], cwd=self.dir, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wb.wait_for(self._listening, timeout=START_TIMEOUT, message="pgbouncer listening")

    def _listening(self):
        if self.proc.poll() is not None:
            raise AssertionError("pgbouncer exited (%s):\n%s" % (self.proc.returncode,
                                                                 self.log()[-3000:]))
        import socket
        with socket.create_connection((self.host, self.port), timeout=1):
            return True

    def url(self, db, password=PASSWORD, query=""):
        """db's URL through this pgbouncer (password None: without one)."""
        auth = USER + (":" + password if password is not None else "")
        return "postgresql://%s@%s:%d/%s%s" % (auth, self.host, self.port, db.name,
                                               ("?" + query) if query else "")

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def _cleanup(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)
        return []


class ProtocolRelay:
    """A TCP relay between waybill and a database of this harness that sees
    the protocol's messages: for tests of what waybill sends and of answers
    lost on the way. A subclass overrides from_client and from_server
    (conn: that connection's own dict, new_conn; head: the type byte and
    length; body: the rest), each returning the bytes to pass on, or None
    to cut the connection there. The startup packet passes untouched."""

    def __init__(self, db):
        self.target = (db.host, db.port)
        self.lock = threading.Lock()
        self.closed = False
        self.ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(16)
        self.port = self.ls.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, db):
        return "postgresql://%s:%s@127.0.0.1:%d/%s?sslmode=disable" % (
            db.user, PASSWORD, self.port, db.name)

    def new_conn(self):
        return {}

    def from_client(self, conn, head, body):
        return head + body

    def from_server(self, conn, head, body):
        return head + body

    def close(self):
        self.closed = True
        self.ls.close()

    def _accept(self):
        while not self.closed:
            try:
                c, _ = self.ls.accept()
            except OSError:
                return
            s = socket.create_connection(self.target)
            for x in (c, s):  # one message per send: no Nagle waits
                x.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = self.new_conn()
            threading.Thread(target=self._pump, args=(c, s, conn, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(s, c, conn, False), daemon=True).start()

    @staticmethod
    def _read(sock, n):
        buf = b""
        while len(buf) < n:
            part = sock.recv(n - len(buf))
            if not part:
                raise EOFError
            buf += part
        return buf

    @staticmethod
    def _close(*socks):
        for x in socks:
            try:
                x.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            x.close()

    def _pump(self, src, dst, conn, client):
        try:
            if client:  # the startup packet, untyped
                n = int.from_bytes(self._read(src, 4), "big")
                dst.sendall(n.to_bytes(4, "big") + self._read(src, n - 4))
            while True:
                head = self._read(src, 5)
                body = self._read(src, int.from_bytes(head[1:], "big") - 4)
                out = (self.from_client if client else self.from_server)(conn, head, body)
                if out is None:
                    break
                dst.sendall(out)
        except (EOFError, OSError, ValueError):
            pass
        self._close(src, dst)


def bouncer(cluster, **kw):
    """A pgbouncer in front of cluster, this test's own; None when Debian's
    pgbouncer is not installed (`make test-deps` installs it)."""
    if not os.path.exists(PGBOUNCER):
        return None
    return Bouncer(cluster, **kw)
