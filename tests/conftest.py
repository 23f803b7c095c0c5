"""Shared test set-up: no network, no files outside tmp, small thread pools."""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
# the measured CPU peak (MFU's denominator) is cached here, not in the home folder
os.environ.setdefault("PLAIT_CACHE_DIR", tempfile.mkdtemp(prefix="plait-cache-"))


@pytest.fixture
def one_thread():
    """One intra-op thread: the CI machine is shared, and tests that use it measure bytes, not
    speed (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    import torch  # deferred: the environment above is set before torch loads

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
