"""A private PostgreSQL server for fault tests that need a server to die or
restart (issue 16): its own data directory in a temporary folder and its own
free port, so restarting it disturbs no one else (the shared test server on
5432 serves other test runs at the same time).

PostgreSQL refuses to run as root: as root the server runs as the ``postgres``
user (``runuser``), in a folder handed over to that user.
"""
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile

# Stops the server should the test process die without stopping it (a
# SIGKILL): polls the test's pid, then "pg_ctl stop" and removes the folder.
# Ends by itself once the folder is gone (a normal stop).
_WATCHDOG = r"""
import os, shutil, subprocess, sys, time
parent, folder, stop = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
while os.path.isdir(folder):
    try:
        os.kill(parent, 0)
    except ProcessLookupError:
        subprocess.run(stop, capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)
        break
    time.sleep(1)
"""


def _bindir():
    """The folder of initdb and pg_ctl (Debian keeps them out of PATH), or None."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return os.path.dirname(found)
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        candidate = out.stdout.strip()
        if out.returncode == 0 and os.path.exists(os.path.join(candidate, "initdb")):
            return candidate
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                      key=lambda p: int(p.split("/")[-3]) if p.split("/")[-3].isdigit() else 0)
    return os.path.dirname(versions[-1]) if versions else None


def unavailable():
    """Why no private server can run here, or None when one can."""
    if _bindir() is None:
        return "no PostgreSQL server binaries (initdb, pg_ctl) on this machine"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server as"
        if shutil.which("runuser") is None:
            return "running as root and runuser is missing (to run the server as 'postgres')"
    return None


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateServer:
    """One PostgreSQL server owned by one test: ``url`` while it runs;
    ``restart()``; ``stop()`` removes everything it made."""

    def __init__(self):
        self.bindir = _bindir()
        self.dir = tempfile.mkdtemp(prefix="aion-pg-")
        self.data = os.path.join(self.dir, "data")
        self.log = os.path.join(self.dir, "server.log")
        self.port = None
        self._watchdog = None
        self._as = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        try:
            self._run("initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync",
                      "-E", "UTF8")
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    @property
    def url(self):
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool, *args, timeout=60):
        proc = subprocess.run([*self._as, os.path.join(self.bindir, tool), *args],
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"{tool} failed ({proc.returncode}): {proc.stdout}{proc.stderr}"
                               f"{self._log_tail()}")
        return proc

    def _log_tail(self):
        try:
            with open(self.log, encoding="utf-8", errors="replace") as f:
                return "\nserver log:\n" + f.read()[-2000:]
        except OSError:
            return ""

    def _options(self):
        return f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"

    def start(self):
        # A free port can be taken between the probe and the server's bind:
        # try a few.
        for attempt in range(3):
            self.port = _free_port()
            try:
                self._run("pg_ctl", "-D", self.data, "-l", self.log, "-o", self._options(),
                          "-w", "-t", "60", "start")
                break
            except RuntimeError:
                if attempt == 2:
                    raise
        stop = [*self._as, os.path.join(self.bindir, "pg_ctl"), "-D", self.data, "-m",
                "immediate", "-w", "stop"]
        self._watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()),
                                           self.dir, *stop], start_new_session=True)
        return self

    def restart(self):
        self._run("pg_ctl", "-D", self.data, "-l", self.log, "-o", self._options(), "-m", "fast",
                  "-w", "-t", "60", "restart")

    def halt(self):
        """Stop the server, keeping its data (``stop()`` still removes it all)."""
        self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")

    def stop(self):
        try:
            if os.path.exists(os.path.join(self.data, "postmaster.pid")):
                self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
            if self._watchdog is not None:
                try:
                    self._watchdog.wait(10)  # it sees the folder gone within a second
                except subprocess.TimeoutExpired:
                    self._watchdog.kill()
                    self._watchdog.wait()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
