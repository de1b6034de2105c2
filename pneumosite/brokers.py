"""The embedded broker: kombu's filesystem transport, plain folders and no server."""

from __future__ import annotations

from pathlib import Path

FILESYSTEM_BROKER_URL = "filesystem://localhost//"


def filesystem_broker_options(base: Path) -> dict:
    """Create the broker's folders under `base` and return kombu's transport options."""
    for sub in ("in", "processed", "control"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    return {
        "data_folder_in": str(base / "in"),
        "data_folder_out": str(base / "in"),
        # Claiming a message is an atomic rename into processed/ (same filesystem), so
        # two workers never take the same message.
        "processed_folder": str(base / "processed"),
        "store_processed": True,
        "control_folder": str(base / "control"),
    }
