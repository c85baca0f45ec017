"""Can the Hugging Face Hub serve a model or dataset? Asked once, quickly (3 s), and never when told offline.

Offline is the default way to run here (README, "Command line"): a name that is not a local folder, a
file or a built-in alias is only tried on the hub when this says it can be reached.
"""

from __future__ import annotations

import os

# The variables that switch each kind of repository off: huggingface_hub's own, and the library's.
OFFLINE_VARIABLES = {"model": ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"),
                     "dataset": ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}


def hub_unreachable(repo_id: str, repo_type: str = "model") -> str | None:
    """Why the hub cannot serve `repo_id` (an offline variable, no network, no such repository), or None."""
    variables = OFFLINE_VARIABLES[repo_type]
    if any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in variables):
        return f"offline: {' or '.join(variables)} is set"
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import RepositoryNotFoundError
    except ImportError:  # pragma: no cover - transformers always brings huggingface_hub
        return "offline: huggingface_hub is not installed"
    try:
        # A 3 s timeout: a machine without network must fail fast, not hang in retries.
        HfApi().repo_info(repo_id, repo_type=repo_type, timeout=3)
    except RepositoryNotFoundError:
        return "not found on the hub (check the name, or log in for a private repo)"
    except Exception as e:  # noqa: BLE001 - any network failure means "unreachable"
        return f"offline: {type(e).__name__}"
    return None
