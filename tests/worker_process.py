"""``aion-green worker MODULE --http ... --json`` in a real process, for the
CLI and HTTP tests: started, read ready, and stopped by a signal (killed if
it does not stop within 30 s); and one plain HTTP request to it."""
import http.client
import json
import signal
import subprocess
import sys
from urllib.parse import urlencode


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

    def call(self, method, path, query=None, body=None, token=None):
        """One request with a plain HTTP client: ``(status, decoded JSON body)``."""
        return call(self, method, path, query, body, token)


def request(port, method, path, query=None, body=None, token=None, headers=None, timeout=30):
    """One plain HTTP request (http.client, as a client in another language
    would send it): ``(status, headers, body)``, the body parsed as JSON when
    it is JSON, else its bytes."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        data = None if body is None else json.dumps(body).encode()
        if data is not None:
            sent["Content-Type"] = "application/json"
        conn.request(method, path + ("?" + urlencode(query) if query else ""), body=data,
                     headers=sent)
        response = conn.getresponse()
        raw = response.read()
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw
        return response.status, dict(response.getheaders()), parsed
    finally:
        conn.close()


def call(worker, method, path, query=None, body=None, token=None, timeout=30):
    """:func:`request` to a :class:`WorkerProcess`: ``(status, JSON body)``."""
    status, _, parsed = request(worker.port, method, path, query, body, token, timeout=timeout)
    return status, parsed
