"""The engine: :class:`~aion_green.runtime.engine.Engine`, a facade over the
parts one engine's life is made of (the hub, the step pool, the store
writer, the run table) and the drivers of runs, routing, residency, queries,
children, timers, sharing, leases, rewind and schedules."""
