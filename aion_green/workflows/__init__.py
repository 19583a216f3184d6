"""What a workflow body touches: its context (``ctx``), the replay cursor,
steps and their retry policy, messages, children (the handle side), fan-out,
supervision and versioning. Runs on the engine's hub thread, inside the run's
greenlet. Never imports the runtime or a store: the context reaches its
engine through one Protocol, :class:`~aion_green.workflows.host.Host`."""
