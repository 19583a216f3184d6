"""The API's description against the API (issue 18): every route of the
OpenAPI document is answered by the app (not a 404 "no route", not a 405),
every route the app answers is in the document, every error code a route
lists exists in the taxonomy, and docs/http-api.md is the page the document
writes. (The document was also checked with openapi-spec-validator when it
was written; that package is not a dependency of the suite.)"""
import io
import json
import pathlib
import re
import sys

import pytest

import aion_green as aion
from aion_green.transport import openapi
from aion_green.transport.codec import ERRORS
from aion_green.transport.wsgi import WSGIApp

ROOT = pathlib.Path(__file__).resolve().parent.parent
TOKEN = "doc-token"


@aion.workflow(name="doc.wait")
def wait(ctx):
    ctx.set_query("q", lambda: 1)
    return ctx.receive("go", timeout=30)


@pytest.fixture
def app(make_engine):
    engine = make_engine(wait)
    engine.start(wait, id="order-o-1")
    return WSGIApp(engine, token=TOKEN, max_wait=0.2)


def call(app, method, path, body=None, query="", headers=None):
    data = b"" if body is None else json.dumps(body).encode()
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query,
               "CONTENT_LENGTH": str(len(data)), "CONTENT_TYPE": "application/json",
               "wsgi.input": io.BytesIO(data), "HTTP_AUTHORIZATION": f"Bearer {TOKEN}",
               **(headers or {})}
    answer = {}

    def start_response(status, response_headers):
        answer["status"] = int(status.split()[0])
        answer["type"] = dict(response_headers).get("Content-Type", "")

    chunks = app(environ, start_response)
    first = b""
    for chunk in chunks:  # a stream: its first frame is enough
        first = chunk
        break
    if hasattr(chunks, "close"):
        chunks.close()
    doc = json.loads(first) if answer["type"].startswith("application/json") else first
    return answer["status"], doc


def _concrete(path):
    if path.startswith("/v1/schedules/"):
        return path.replace("{id}", "doc-sched")
    return path.replace("{id}", "order-o-1").replace("{name}", "q")


def _bodies(route):
    if route.path.endswith("/signals/{name}"):
        return {"payload": 1}
    if route.path.endswith("/queries/{name}"):
        return {"args": [], "timeout": 5}
    if route.method == "POST" and route.path == "/v1/workflows":
        return {"workflow": "doc.wait", "id": "doc-started"}
    if route.method == "POST" and route.path == "/v1/schedules":
        return {"schedule_id": "doc-sched", "workflow": "doc.wait", "every": 3600}
    return {} if route.method == "POST" else None


def test_every_documented_route_is_served_with_its_documented_method(app):
    assert openapi.ROUTES, "no route documented"
    for route in openapi.ROUTES:
        query = "after=0" if route.path.endswith("/events") else ""
        status, doc = call(app, route.method, _concrete(route.path), _bodies(route), query)
        assert status != 405, (route.method, route.path, doc)
        if status == 404:
            assert "no route" not in doc["error"]["message"], (route.path, doc)
        # The other methods of the path are refused as not allowed.
        others = {"GET", "POST", "PUT", "DELETE"} - {r.method for r in openapi.ROUTES
                                                    if r.path == route.path}
        for method in others:
            status, doc = call(app, method, _concrete(route.path), {})
            assert status == 405, (method, route.path, status, doc)


def test_every_route_the_app_serves_is_documented(app):
    """What the app routes, read from its own tables and paths: each action
    of a run, each named action, and the top-level paths."""
    from aion_green.transport import wsgi

    documented = {(r.method, r.path) for r in openapi.ROUTES}
    for action in wsgi._ACTIONS:
        assert any(p == f"/v1/workflows/{{id}}/{action}" for _, p in documented), action
    for named in wsgi._NAMED:
        assert any(p == f"/v1/workflows/{{id}}/{named}/{{name}}" for _, p in documented), named
    source = pathlib.Path(wsgi.__file__).read_text()
    for literal in re.findall(r'segments(?:\[:2\])? == \[([^\]]*)\]', source):
        path = "/" + "/".join(part.strip().strip('"') for part in literal.split(","))
        assert any(p == path for _, p in documented), path
    # And nothing else answers: an unknown path is a 404 naming no route.
    status, doc = call(app, "GET", "/v1/nothing-here")
    assert status == 404 and "no route" in doc["error"]["message"]


def test_the_document_is_consistent_and_served_without_a_token(app):
    doc = openapi.document()
    status, served = call(app, "GET", "/v1/openapi.json", headers={"HTTP_AUTHORIZATION": ""})
    assert status == 200 and served == json.loads(json.dumps(doc))
    assert doc["openapi"].startswith("3.1")
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            assert "200" in op["responses"], (method, path)
            names = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert names == set(re.findall(r"{(\w+)}", path)), (method, path)
            for status_code, response in op["responses"].items():
                if status_code != "200":
                    assert response["content"]["application/json"]["schema"]["$ref"] == \
                        "#/components/schemas/Error"
    for route in openapi.ROUTES:
        assert set(route.errors) <= set(ERRORS), route.path
    # Every code of the taxonomy the issue names is documented.
    for code in ("not_found", "already_exists", "invalid_argument", "not_running",
                 "query_failed", "timeout", "unauthenticated", "unavailable", "internal"):
        assert code in ERRORS and code in openapi._ERROR_TEXT
    refs = set(re.findall(r'"\$ref": "#/components/schemas/(\w+)"', json.dumps(doc)))
    assert refs <= set(doc["components"]["schemas"])


def test_the_reference_page_is_the_one_the_document_writes():
    page = (ROOT / "docs" / "http-api.md").read_text()
    assert page == openapi.markdown(), (
        "docs/http-api.md is stale: run `python -m aion_green.transport.openapi > "
        "docs/http-api.md`")
    for route in openapi.ROUTES:
        assert f"## {route.method} `{route.path}`" in page


def test_the_module_prints_both_forms():
    import subprocess

    out = subprocess.run([sys.executable, "-m", "aion_green.transport.openapi", "--json"],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert json.loads(out)["paths"].keys() == openapi.document()["paths"].keys()
