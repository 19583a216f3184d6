"""gunicorn's configuration for bench/http.py, with an optional profile of
the worker (``-c bench/http_server.py``; the settings come from the command
line, this file only adds hooks).

With ``AION_BENCH_PROFILE=DIR`` set, each worker starts a native sampling
thread after its init. It does nothing until the file ``DIR/on`` exists
(bench/http.py creates it for the measured 50-client window and removes it
after), and while it does it:

- reads every thread's CPU clock (``pthread_getcpuclockid``: real CPU, not
  biased by the GIL) at the window's start and end, and names each thread
  by its role (the bottom of its Python stack: gunicorn's main thread, the
  engine's hub, the store writer or reader, a step-pool thread);
- when ``AION_BENCH_CPROFILE`` is also set, profiles the main thread
  (gunicorn's HTTP parsing, the WSGI apps, JSON, the engine's caller side)
  with ``cProfile`` on that thread's CPU clock (a greenlet switched out
  costs nothing, whatever runs meanwhile), dumped to ``DIR/main.pstats``.

At the worker's exit it writes ``DIR/threads-<pid>.json``: CPU seconds by
role over the window, and the window's wall time.

With ``AION_BENCH_SWITCH_INTERVAL=S`` the worker runs with
``sys.setswitchinterval(S)`` (CPython's default: 0.005): how long a thread
that wants the GIL waits before the holder is asked to drop it.
"""
import json
import os
import sys
import time

_DIR = os.environ.get("AION_BENCH_PROFILE")


def _role(frame):
    """The thread's role, from the bottom frames of its stack."""
    names = []
    while frame is not None:
        names.append((frame.f_code.co_name, os.path.basename(frame.f_code.co_filename), frame))
        frame = frame.f_back
    for name, filename, f in reversed(names):
        if filename == "writer.py" and name == "_main":
            owner = f.f_locals.get("self")
            return getattr(owner, "name", "aion-store")
        if filename == "step_pool.py" and name == "_worker":
            return "step-pool"
        if filename == "hub_thread.py":
            return "aion-hub"
        if filename == "http_server.py":
            return "sampler"
    bottom = names[-1] if names else ("?", "?", None)
    if "gunicorn" in bottom[1] or bottom[1] in ("__main__.py", "base.py", "arbiter.py"):
        return "main"
    return f"other:{bottom[1]}:{bottom[0]}"


def _clocks(main_ident):
    out = {}
    for ident, frame in sys._current_frames().items():
        if ident == main_ident:  # gunicorn's: whichever greenlet runs there, its hub's frames
            role = "main"
        else:  # a native thread of ours: its current greenlet is its gevent hub, a run or none
            # (a greenlet's frames end at its own run: a run's or the gevent
            # hub's, so the engine's hub thread is the one left unnamed)
            role = _role(frame)
            if role.startswith("other:") or role == "main":
                role = "aion-hub"
        try:
            cpu = time.clock_gettime(time.pthread_getcpuclockid(ident))
        except OSError:
            continue
        out[ident] = (role, cpu)
    return out


class _Sampler:
    def __init__(self, main_ident):
        self.main_ident = main_ident
        self.began = None
        self.wall = 0.0
        self.start_clocks = {}
        self.by_role = {}
        self.profile = None

    def run(self):
        sleep = __import__("gevent.monkey", fromlist=["get_original"]).get_original("time", "sleep")
        flag = os.path.join(_DIR, "on")
        while True:
            sleep(0.05)
            on = os.path.exists(flag)
            if on and self.began is None:
                self.start_clocks = _clocks(self.main_ident)
                self.began = time.monotonic()
            elif not on and self.began is not None:
                self.stop()

    def stop(self):
        end = _clocks(self.main_ident)
        self.wall += time.monotonic() - self.began
        self.began = None
        for ident, (role, cpu) in end.items():
            before = self.start_clocks.get(ident, (role, 0.0))[1]
            self.by_role[role] = self.by_role.get(role, 0.0) + cpu - before
        self.start_clocks = {}


_sampler = None


def post_worker_init(worker):
    global _sampler
    if os.environ.get("AION_BENCH_SWITCH_INTERVAL"):
        sys.setswitchinterval(float(os.environ["AION_BENCH_SWITCH_INTERVAL"]))
    if not _DIR:
        return
    from gevent import monkey

    # threading.get_ident is a greenlet's id once gevent has patched it.
    _sampler = _Sampler(monkey.get_original("_thread", "get_ident")())
    monkey.get_original("_thread", "start_new_thread")(_sampler.run, ())
    if os.environ.get("AION_BENCH_CPROFILE"):
        # The main thread's own profile, on its own CPU clock, switched on
        # and off by the same flag file: a gevent timer on the worker's hub
        # looks at it every 50 ms.
        import cProfile

        import gevent
        profile = cProfile.Profile(time.thread_time)
        flag = os.path.join(_DIR, "on")
        state = {"on": False}

        def watch():
            while True:
                gevent.sleep(0.05)
                on = os.path.exists(flag)
                if on and not state["on"]:
                    profile.enable()
                    state["on"] = True
                elif not on and state["on"]:
                    profile.disable()
                    state["on"] = False
                    profile.dump_stats(os.path.join(_DIR, "main.pstats"))

        gevent.spawn(watch)


def worker_exit(server, worker):
    if _sampler is None:
        return
    if _sampler.began is not None:
        _sampler.stop()
    with open(os.path.join(_DIR, f"threads-{os.getpid()}.json"), "w") as out:
        json.dump({"wall": _sampler.wall, "cpu": _sampler.by_role}, out)
