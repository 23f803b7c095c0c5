"""Shared test set-up: no network, no files outside tmp, small thread pools."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
# the measured CPU peak (MFU's denominator) is cached here, not in the home folder
os.environ.setdefault("PLAIT_CACHE_DIR", tempfile.mkdtemp(prefix="plait-cache-"))
