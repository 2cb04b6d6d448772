"""Value lists of the contract, read from the Avro schemas that define them: one truth, derived here."""

from __future__ import annotations

from suanwang.schemas.codec import schema_sources


def enum_symbols(schema: str, field: str) -> tuple[str, ...]:
    """The symbols of an enum field (alone or in a union with null) of a contract schema."""
    for f in schema_sources()[schema]["fields"]:
        if f["name"] == field:
            branches = f["type"] if isinstance(f["type"], list) else [f["type"]]
            return tuple(next(b for b in branches if isinstance(b, dict) and b["type"] == "enum")["symbols"])
    raise KeyError(f"{schema}.{field}")


PRIORITY_CLASSES = enum_symbols("TaskRequest", "priority")  # highest first
TASK_STATES = enum_symbols("TaskLifecycle", "state")
STARTED = TASK_STATES[0]
TASK_ENDS = TASK_STATES[1:]  # every state after STARTED ends the task and frees what it held
COMPUTE_CLASSES = enum_symbols("NodeRegistration", "compute_class")
GREEDY, PREEMPTION, BATCH = DECISION_PATHS = enum_symbols("Placement", "decided_by")
NODE_OFFLINE, COLLECTOR_SILENT = "node_offline", "collector_silent"  # the Alert kinds the dispatcher reads as health
