"""Test configuration. With AION_GEVENT_PATCH=1 the whole suite runs under
``gevent.monkey.patch_all()``, called here before anything else is imported."""
import os

PATCHED = os.environ.get("AION_GEVENT_PATCH") == "1"
if PATCHED:
    from gevent import monkey

    monkey.patch_all()

import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

import aion_green as aion  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def pytest_report_header(config):
    return f"aion_green gevent mode: {'patched (patch_all)' if PATCHED else 'plain'}"


def open_test_store(url):
    """A store over the same database as an engine of the test (SQLite or
    PostgreSQL), to read or prepare histories directly."""
    from aion_green.stores import open_store

    return open_store(url)


SQLITE_ONLY = pytest.mark.skipif(
    os.environ.get("AION_TEST_STORE", "sqlite") != "sqlite",
    reason="SQLite semantics (one engine drives every run of a file); on PostgreSQL, and on "
           "SQLite with ?leases=on, runs are leased to engines that know their type")

# AION_TEST_STORE=postgres runs the engine-level tests on PostgreSQL (a
# fresh schema per test) instead of a SQLite file; AION_TEST_STORE=sqlite-leases
# on a SQLite file opened with ?leases=on (runs leased, as on PostgreSQL).
STORE = os.environ.get("AION_TEST_STORE", "sqlite")
# Runs leased to engines (PostgreSQL, SQLite with ?leases=on), not driven by
# one driver per file.
LEASED = STORE in ("postgres", "sqlite-leases")


@pytest.fixture
def db_url(tmp_path, request):
    if STORE == "postgres":
        return request.getfixturevalue("pg_url")
    if STORE == "sqlite-leases":
        return f"sqlite:///{tmp_path / 'aion.db'}?leases=on"
    return f"sqlite:///{tmp_path / 'aion.db'}"


@pytest.fixture
def built_engines():
    """The engines ``make_engine`` built in this test: ``pg_url`` shuts
    them down before it drops their schema (its teardown may come first)."""
    return []


@pytest.fixture
def make_engine(db_url, built_engines):
    """Engines built here are shut down at the end of the test."""
    engines = built_engines

    def make(*workflows, url=None, **kwargs):
        engine = aion.Engine(url or db_url, workflows=list(workflows), **kwargs)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.shutdown()


def run_python(code_or_args, env_extra=None, timeout=120, check=True, patched=False):
    """Run a Python child process (a real process, for crash and gevent tests)."""
    from crash_campaign import worker_env  # the environment of a child process

    env = worker_env(patched)
    env.update(env_extra or {})
    args = ["-c", code_or_args] if isinstance(code_or_args, str) else list(code_or_args)
    proc = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"child failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


class NativeGate:
    """A thread-safe gate in both gevent modes (under patch_all,
    threading.Event is gevent's and does not cross native threads)."""

    def __init__(self):
        from gevent import monkey

        self._lock = monkey.get_original("_thread", "allocate_lock")()
        self._lock.acquire()
        self._open = False
        self.entered = 0  # calls of wait() so far (a step held here has begun)

    def set(self):
        if not self._open:
            self._open = True
            self._lock.release()

    def is_set(self):
        return self._open

    def wait(self, timeout=None):
        self.entered += 1
        if self._open:
            return True
        got = self._lock.acquire(True, -1 if timeout is None else timeout)
        if got:
            self._lock.release()
        return got


def wait_until(predicate, timeout=10.0, interval=0.01, what="the condition"):
    """Poll ``predicate`` until true; fail after ``timeout`` seconds."""
    import time

    from aion_green.core.clock import monotonic  # not frozen by freezegun

    deadline = monotonic() + timeout
    while not predicate():
        if monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def stop_with_runs_parked(engine, workflow_ids, gate, events=2, holding=0):
    """Wait until each run recorded ``events`` events (so it is parked in a
    later step held by ``gate``) and ``holding`` steps wait at the gate
    (begun: a step still queued when the engine stops never runs there),
    shut the engine down, then open the gate: the runs stay unfinished in
    the store, as after a clean stop."""
    wait_until(lambda: all(len(engine.history(wid)) >= events for wid in workflow_ids),
               what=f"runs {workflow_ids} to record {events} events")
    wait_until(lambda: gate.entered >= holding, what=f"{holding} step(s) held at the gate")
    engine.step_grace = 0  # the held step is abandoned unrecorded, as a crash would leave it
    engine.shutdown()
    gate.set()


def _first(x):
    return x


def park_two_step_run(make_engine, name, workflow_id):
    """Workflow ``name`` records a first step, then waits in a second one
    held by a gate; started as ``workflow_id`` in an engine that is shut
    down with the run parked there (unfinished, as after a clean stop).
    Returns the workflow, for a next engine to resume it."""
    gate = NativeGate()

    def wait_gate():
        return gate.wait(10)

    @aion.workflow(name=name)
    def two_steps(ctx):
        ctx.step(_first, "first")
        return ctx.step(wait_gate)

    first = make_engine(two_steps)
    first.start(two_steps, id=workflow_id)
    stop_with_runs_parked(first, [workflow_id], gate, holding=1)
    return two_steps


# -- PostgreSQL -----------------------------------------------------------------------------
PG_URL = os.environ.get("AION_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def _postgres_or_skip():
    """Connect to the test server; skip (or, under CI, fail) when none answers."""
    try:
        import psycopg
    except ImportError:
        reason = "psycopg is not installed: pip install -e '.[postgres]'"
    else:
        try:
            with psycopg.connect(PG_URL, connect_timeout=3, autocommit=True) as conn:
                return conn.execute("SELECT 1").fetchone()
        except psycopg.Error as exc:
            reason = (f"no PostgreSQL server at {PG_URL} ({exc}); set AION_TEST_POSTGRES to a "
                      "database URL to run these tests")
    if os.environ.get("AION_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"AION_REQUIRE_POSTGRES=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture
def pg_bystander():
    """A session on the shared test server that no test opened, named as
    another engine's would be ("aion_green"): other test runs use that
    server at the same time (issue 16), so a test that ends sessions it did
    not open, or restarts the server, fails here. None without a server."""
    try:
        import psycopg

        conn = psycopg.connect(PG_URL, connect_timeout=3, autocommit=True,
                               application_name="aion_green")
    except Exception:  # noqa: BLE001 - no shared server: nothing to disturb
        yield None
        return
    (pid,) = conn.execute("SELECT pg_backend_pid()").fetchone()
    yield conn
    try:
        alive = conn.execute("SELECT pg_backend_pid()").fetchone() == (pid,)
    except psycopg.Error:
        alive = False
    finally:
        conn.close()
    assert alive, ("a session this test did not open, on the shared PostgreSQL server, was ended "
                   "(by a pg_terminate_backend or a server restart): end only your own sessions, "
                   "and restart only a private server (tests/pg_private.py)")


def private_postgres_or_skip():
    """A private PostgreSQL server (tests/pg_private.py) not yet started;
    skips (or, under CI, fails) only when none can run on this machine."""
    from pg_private import PrivateServer, unavailable

    why = unavailable()
    if why is not None:
        if os.environ.get("AION_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"AION_REQUIRE_POSTGRES=1 but no private PostgreSQL server can run: {why}")
        pytest.skip(f"needs a private PostgreSQL server: {why}")
    return PrivateServer()


@pytest.fixture
def pg_url(pg_bystander, built_engines):
    """A fresh schema on the test server, dropped afterwards: its URL. The
    test's engines are shut down first: a DROP while one still worked in
    the schema waited on its locks, or deadlocked with it."""
    _postgres_or_skip()
    import uuid

    import psycopg

    schema = f"aion_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    for engine in built_engines:
        engine.shutdown()
    for attempt in range(5):  # (an engine the test built itself may still be closing)
        try:
            with psycopg.connect(PG_URL, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA {schema} CASCADE")
            return
        except psycopg.errors.DeadlockDetected:
            if attempt == 4:
                raise
            time.sleep(0.2)


@pytest.fixture(params=["postgres", "sqlite-leases"])
def shared_url(request, tmp_path):
    """A store that leases runs to its engines: a PostgreSQL schema, or a
    SQLite file opened with ?leases=on."""
    if request.param == "postgres":
        return request.getfixturevalue("pg_url")
    return f"sqlite:///{tmp_path / 'shared.db'}?leases=on"
