"""Experiment loggers: Lightning's own ``WandbLogger`` that never blocks a run for lack of network."""
from __future__ import annotations

import netrc
import os
import subprocess
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

from pytorch_lightning.loggers import WandbLogger as _LightningWandbLogger
from pytorch_lightning.utilities import rank_zero_info

import segexpr


def wandb_api_key_configured() -> bool:
    """True when W&B credentials are configured the documented ways: ``WANDB_API_KEY`` or a netrc entry
    for the W&B host (``WANDB_BASE_URL``, default ``api.wandb.ai``), as written by ``wandb login``."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    path = os.environ.get("NETRC", str(Path.home() / ".netrc"))
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def code_version() -> dict[str, str]:
    """segexpr's version and, when run from a git checkout, the commit (with ``-dirty`` if modified)."""
    info = {"segexpr_version": segexpr.__version__}
    repo = Path(segexpr.__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(repo), "describe", "--always", "--dirty", "--abbrev=12"],
                             capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        if sha:
            info["git_commit"] = sha
    except (OSError, subprocess.SubprocessError):
        pass
    return info


class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger`` with two additions:

    * ``offline=None`` (the default) chooses offline mode automatically when no API key is configured
      (and ``WANDB_MODE`` is unset), so a run never blocks or fails for lack of credentials or network;
      sync later with ``wandb sync <save_dir>/wandb/offline-run-*``.
    * the hyperparameters logged include segexpr's version and git commit (``code_version``).

    Every other argument is Lightning's (``project``, ``name``, ``save_dir``, ``log_model``, ...).
    """

    def __init__(self, *args: Any, offline: Optional[bool] = None, project: Optional[str] = "segexpr",
                 **kwargs: Any) -> None:
        if offline is None:
            mode = os.environ.get("WANDB_MODE", "").lower()
            offline = mode in ("offline", "dryrun") or (mode != "online" and not wandb_api_key_configured())
            if offline:
                rank_zero_info("segexpr: no W&B API key configured; logging to W&B in offline mode.")
        super().__init__(*args, offline=offline, project=project, **kwargs)

    def log_hyperparams(self, params: Any) -> None:
        params = dict(params) if isinstance(params, dict) else dict(vars(params)) if params is not None else {}
        super().log_hyperparams({**params, "code_version": code_version()})
