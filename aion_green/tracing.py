"""Optional OpenTelemetry tracing, where users switch it on
(``aion_green.tracing.enable()``). The spans are made by
:mod:`aion_green.runtime.tracing`; this module re-exports its switches."""
from aion_green.runtime.tracing import available, disable, enable, is_enabled

__all__ = ["available", "disable", "enable", "is_enabled"]
