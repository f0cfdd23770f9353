"""Put a model folder into a Hugging Face cache under a Hub id, as `huggingface_hub` lays it out, so that
``from_pretrained("org/name")`` finds it offline (HF_HOME=..., HF_HUB_OFFLINE=1): another machine's cache."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def populate_hub_cache(hf_home: Path, repo_id: str, folder: Path, *, link: bool = False) -> Path:
    """Write ``folder``'s files as ``hf_home/hub/models--org--name/snapshots/<hash>/`` with ``refs/main``.

    ``link``: symlink the files instead of copying them (for a large model; the cache's own blobs are
    symlinks too). Returns the snapshot folder.
    """
    repo = Path(hf_home) / "hub" / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(repo_id.encode()).hexdigest()  # any 40-hex name: offline, nobody checks it
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for item in Path(folder).iterdir():
        if item.is_file() and item.suffix in (".json", ".safetensors", ".jinja", ".txt", ".model"):
            target = snapshot / item.name
            if link:
                os.symlink(item.resolve(), target)
            else:
                target.write_bytes(item.read_bytes())
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit, encoding="utf-8")
    return snapshot
