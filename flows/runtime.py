"""What every flow does first: settings, threads, the store."""

from __future__ import annotations

import torch

from schemas.params import Settings
from tasks.storage import Store, open_store


def start_run(store: str | None) -> tuple[Settings, Store]:
    """Build the settings (now, not at import) and open the store they name."""
    settings = Settings()
    # Small LSTMs on few cores: more threads only add contention.
    torch.set_num_threads(settings.torch_threads)
    return settings, open_store(store or settings.store)
