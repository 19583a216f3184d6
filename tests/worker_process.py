"""``aion-green worker MODULE --http ... --json`` in a real process, for the
CLI and HTTP tests: started, read ready, and stopped by a signal (killed if
it does not stop within 30 s)."""
import json
import signal
import subprocess
import sys


def worker_env():
    from crash_campaign import worker_env as env

    return env(False)  # the worker process runs unpatched


class WorkerProcess:
    def __init__(self, directory, db_url, module, *extra, address="127.0.0.1:0"):
        self.directory = directory
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aion_green", "--db", db_url, "worker", module,
             "--http", address, "--json", *extra],
            cwd=directory, env=worker_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"the worker did not start: {self.proc.communicate()}")
        self.ready = json.loads(line)
        self.http = self.ready["http"]
        self.port = int(self.http.rsplit(":", 1)[1])

    def stop(self, signum=signal.SIGTERM):
        """Signal the worker and wait for it; its (stdout, stderr)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        try:
            out, err = self.proc.communicate(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.communicate()
        return out, err
