"""The core: what every layer shares and that imports nothing of the package
above it. Errors, events and their JSON form, what a history says
(:mod:`~aion_green.core.history`), the engine's monotonic clock, workflow
registration, structured logs. Pure Python; no hub, no store, no thread."""
