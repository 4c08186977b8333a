"""Pure metric functions: retrieval, escalation, answers."""
