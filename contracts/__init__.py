"""infoscore wire format: pydantic job specs, records and task names (no torch)."""
