"""A Django project in one file that runs durable workflows from its views.

Run it under gunicorn's gevent worker (with or without ``--preload``)::

    AION_GREEN_DB=sqlite:///orders.db gunicorn -k gevent -w 2 -b 127.0.0.1:8000 \\
        examples.django_app:application

Views:

- ``POST /orders/<order>/`` starts the ``orders.fulfil`` workflow (idempotent:
  the order names the workflow id, so a retried request starts nothing new)
  and answers 202 with its ids, at once;
- ``POST /orders/<order>/approve/`` sends it the approval it waits for;
- ``GET /orders/<order>/`` shows its state: status, the steps recorded so
  far, its result once it completed;
- ``/aion/...``: the engine's HTTP API and its web console (``/aion/ui/``),
  with the bearer token of ``AION_GREEN_TOKEN`` when set.

As in ``flask_app.py``, the engine is built at import and starts on first
use, in each worker (never in gunicorn's master), and a view that waits on
a workflow parks its greenlet only. Django's own database is not used: the
workflows keep their state in the engine's store.
"""
import os
from typing import Any, Callable, Iterable

from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY=os.environ.get("DJANGO_SECRET_KEY", "an example, not a secret"),
    ALLOWED_HOSTS=["127.0.0.1", "localhost"],
    ROOT_URLCONF=__name__,
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
    DATABASES={},
    USE_TZ=True,
)

import django  # noqa: E402  (settings first)

django.setup()

from django.core.handlers.wsgi import WSGIHandler  # noqa: E402
from django.http import HttpRequest, JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402
from django.views.decorators.http import require_GET, require_POST  # noqa: E402

import aion_green as aion  # noqa: E402
from aion_green.transport.wsgi import WSGIApp  # noqa: E402


def reserve(order_id: str) -> dict:
    """A step: the side effect a real shop would have, keyed for retries."""
    return {"order": order_id, "reserved": True, "key": aion.step_info().idempotency_key}


def charge(order_id: str) -> dict:
    return {"order": order_id, "charged": True}


@aion.workflow(name="orders.fulfil")
def fulfil(ctx, order_id):
    reservation = ctx.step(reserve, order_id)
    approved_by = ctx.receive("approve", timeout=3600)
    payment = ctx.step(charge, order_id)
    return {"reservation": reservation, "approved_by": approved_by, "payment": payment}


engine = aion.Engine(os.environ.get("AION_GREEN_DB", "sqlite:///orders.db"), workflows=[fulfil])


def _id(order_id: str) -> str:
    return f"order-{order_id}"


@csrf_exempt
def order(request: HttpRequest, order_id: str) -> JsonResponse:
    """POST starts the order's workflow; GET shows its state."""
    if request.method == "POST":
        handle = engine.start(fulfil, order_id, id=_id(order_id))
        return JsonResponse({"workflow_id": handle.workflow_id, "run_id": handle.run_id},
                            status=202)
    return order_state(request, order_id)


@csrf_exempt
@require_POST
def approve_order(request: HttpRequest, order_id: str) -> JsonResponse:
    seq = engine.signal(_id(order_id), "approve", request.GET.get("by", "anonymous"),
                        idempotency_key=request.headers.get("Idempotency-Key"))
    return JsonResponse({"recorded_at_seq": seq})


@require_GET
def order_state(request: HttpRequest, order_id: str) -> JsonResponse:
    try:
        info = engine.describe(_id(order_id))
    except aion.WorkflowNotFound:
        return JsonResponse({"error": f"no order {order_id!r}"}, status=404)
    steps = [e.data["name"] for e in engine.history(_id(order_id)) if e.type == "StepCompleted"]
    return JsonResponse({"status": info.status, "steps": steps,
                         "result": info.result if info.status == "completed" else None})


def health(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True, "pid": os.getpid(), "driving": engine.driving})


urlpatterns = [
    path("orders/<str:order_id>/", order),
    path("orders/<str:order_id>/approve/", approve_order),
    path("health/", health),
]

_django = WSGIHandler()
_aion = WSGIApp(engine, token=os.environ.get("AION_GREEN_TOKEN"))


def application(environ: dict, start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Django's app, with the engine's API and console under /aion."""
    route = environ.get("PATH_INFO", "")
    if route == "/aion" or route.startswith("/aion/"):
        # (The raw URI stays: the API reads ids holding an encoded "/" from it.)
        environ = dict(environ, SCRIPT_NAME=environ.get("SCRIPT_NAME", "") + "/aion",
                       PATH_INFO=route[len("/aion"):])
        return _aion(environ, start_response)
    return _django(environ, start_response)
