"""A kernel's own check of its hyper-parameters, for callers that bypass the settings schema."""

from __future__ import annotations


def require(kind: str, config: object, checks: dict[str, bool]) -> None:
    """Raise for the first field whose check fails: "invalid <kind> setting <name>=<value>"."""
    for name, ok in checks.items():
        if not ok:
            raise ValueError(f"invalid {kind} setting {name}={getattr(config, name)!r}")
