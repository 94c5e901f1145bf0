"""torch.distributed helpers that are no-ops when the process runs alone (``sftctl run``)."""

from __future__ import annotations

import os


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def barrier() -> None:
    """Wait for every rank of the process group; nothing to wait for outside one."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
    except Exception:  # noqa: BLE001 - a lost peer surfaces in the next collective, with its own error
        pass
