"""The package is typed for its users (issue 20): it ships its ``py.typed``
marker, every public callable is annotated, and the handles are generic at
run time as well (``WorkflowHandle[int]`` in an annotation that is
evaluated). What the annotations say is checked by ``mypy --strict
tests/typecheck`` in the lint environment."""
import configparser
import importlib.metadata
import inspect
from pathlib import Path

import pytest

import aion_green as aion
from aion_green import testing
from aion_green.transport.client import Client, RemoteHandle

ROOT = Path(__file__).resolve().parent.parent


def test_the_package_ships_its_py_typed_marker():
    """Failure window: without the marker (or with it left out of the built
    package) a type checker treats an installed aion_green as untyped, and
    with ``ignore_missing_imports`` every ``ctx.step`` result becomes
    ``Any`` without a word."""
    assert (ROOT / "aion_green" / "py.typed").is_file()
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    assert "py.typed" in setup["options.package_data"]["aion_green"].split()
    installed = {str(f) for f in importlib.metadata.files("aion-green") or ()}
    if "aion_green/__init__.py" in installed:  # a built install (tox), not an editable one
        assert "aion_green/py.typed" in installed


def _public_callables():
    for name in aion.__all__:
        value = getattr(aion, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            yield f"aion.{name}", value
    for name in ("TimeTravel", "check_replay", "aion_engine", "aion_time"):
        yield f"aion_green.testing.{name}", getattr(testing, name)
    yield "Client", Client
    yield "RemoteHandle", RemoteHandle


def _functions(owner, value):
    if inspect.isfunction(value):
        yield owner, getattr(value, "__wrapped__", value)
        return
    for name, member in vars(value).items():
        if name.startswith("_") and name != "__init__":
            continue
        if isinstance(member, property):
            member = member.fget
        elif isinstance(member, (staticmethod, classmethod)):
            member = member.__func__
        if inspect.isfunction(member):
            yield f"{owner}.{name}", getattr(member, "__wrapped__", member)


@pytest.mark.parametrize("owner,value", list(_public_callables()), ids=lambda v: str(v))
def test_every_public_callable_is_annotated(owner, value):
    missing = []
    for where, fn in _functions(owner, value):
        if fn.__module__ == "typing":  # (NamedTuple's and Generic's own)
            continue
        for param in inspect.signature(fn).parameters.values():
            if param.name in ("self", "cls"):
                continue
            if param.annotation is inspect.Parameter.empty:
                missing.append(f"{where}({param.name})")
        if "return" not in fn.__annotations__:
            missing.append(f"{where} -> ?")
    assert not missing, f"public callables without annotations: {missing}"


def test_the_handles_and_steps_are_generic_at_run_time():
    assert aion.WorkflowHandle[int].__origin__ is aion.WorkflowHandle
    assert aion.ChildHandle[str].__origin__ is aion.ChildHandle
    assert aion.Step[float].__origin__ is aion.Step
    assert RemoteHandle[dict].__origin__ is RemoteHandle
