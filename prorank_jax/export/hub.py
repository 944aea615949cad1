"""Uploading an exported folder to the Hugging Face Hub.

The token comes from the environment only (HF_TOKEN, or huggingface_hub's older
HUGGING_FACE_HUB_TOKEN), so that it never lands in a config or a shell history;
export_hf checks it before writing anything.
"""

from __future__ import annotations

import os
from pathlib import Path

from prorank_jax.export.errors import ExportError
from prorank_jax.status import STATUS


def hf_token() -> str | None:
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")



def push_folder(folder: Path, repo_id: str) -> str:
    """Upload the folder to the Hub (creating the repo if needed); returns the repo URL."""
    token = hf_token()
    if not token:
        raise ExportError(f"push to {repo_id}: HF_TOKEN is not set")
    try:
        from huggingface_hub import HfApi
    except ImportError as err:
        raise ExportError(f"push to {repo_id}: huggingface_hub is not installed ({err})") from None
    api = HfApi(token=token)
    url = api.create_repo(repo_id, repo_type="model", exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                      commit_message="Upload ProRank reranker exported by prorank-jax")
    STATUS.info("pushed %s to %s", folder, url)
    return str(url)
