"""The documentation site (docs/, mkdocs.yml) keeps working: the tutorial
runs as written, and the command-line reference covers every command
(issue 20)."""
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
FENCE = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def blocks(page):
    """(language, title, body) of each fenced block of ``page``, in order."""
    for lang, info, body in FENCE.findall(page.read_text()):
        title = re.search(r'title="([^"]+)"', info)
        yield lang, title.group(1) if title else None, body


def test_the_tutorial_runs_as_written(tmp_path):
    """Failure window: a change to the API (or to the tutorial) leaves a
    reader of docs/tutorial.md with code that does not run. Each file block
    (```python title="shop.py"```) is written in turn, each shell block
    is run by bash where the reader would run it; installing is skipped."""
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    env.pop("AION_GREEN_DB", None)
    env.pop("PYTEST_ADDOPTS", None)
    ran = 0
    for lang, title, body in blocks(DOCS / "tutorial.md"):
        if title is not None:
            (tmp_path / title).write_text(body)
        elif lang == "sh" and "pip install" not in body:
            script = body.replace("python ", f"{sys.executable} ")
            done = subprocess.run(["bash", "-e", "-c", script], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, f"{script}\n{done.stdout}\n{done.stderr}"
            ran += 1
    assert ran >= 5
    assert (tmp_path / "shop.db").exists()


def test_every_command_is_in_the_command_line_reference():
    """The reference renders each command's --help from the parser at build
    time (docs/gen_cli.py, a MkDocs hook); here, that it finds them all and
    that the page's table lists every exit code."""
    sys.path.insert(0, str(DOCS))
    try:
        import gen_cli
    finally:
        sys.path.remove(str(DOCS))
    page = (DOCS / "reference" / "cli.md").read_text()
    assert gen_cli.MARKER in page
    assert gen_cli.missing_exit_codes(page) == []
    rendered = gen_cli.render()
    names = gen_cli.command_names()
    assert {"aion-green worker", "aion-green start", "aion-green schedule create"} <= set(names)
    for name in names:
        assert f"`{name}`" in rendered, name

