"""Checkpoints of a run: load them strictly, check them before use, rotate them safely, and tell a full disk
apart from other failures. torch/transformers are imported inside functions (the GUI imports ``core``).

Why each piece exists:

- ``load_full_weights``: ``save_pretrained`` writes the Hub's original tensor names (transformers 5 reverts its
  own renamings on save, e.g. GPT-NeoX ``lm_head`` -> ``embed_out``) and leaves out tied copies, while the
  Trainer's resume / load-best code reads the file back with a plain ``load_state_dict(strict=False)``
  that knows neither: the renamed layer silently kept its old values. We apply the model's renamings and
  refuse any key that is still missing or unexpected.
- ``check_checkpoint``: a damaged file (cut short by a kill or a full disk) becomes one message naming the
  file and the previous complete checkpoint, before anything heavy is loaded.
- ``rotate``: old checkpoints are deleted only after the new one is COMPLETE, never the best one, and the
  COMPLETE marker goes first so a kill mid-delete never leaves a "complete" half-deleted folder.
- ``is_disk_full`` / ``expected_checkpoint_bytes`` / ``free_bytes``: a full disk reaches us as OSError,
  ``SafetensorError ... No space left on device`` or torch's ``[enforce fail ...] unexpected pos``.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

from core import runs
from core.errors import TrainingError

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
TRAINER_STATE_FILE = "trainer_state.json"
# A copy of the run's config.yaml, the "last good copy" should config.yaml be damaged later.
CONFIG_COPY = runs.CONFIG_COPY


class CheckpointError(TrainingError):
    """A checkpoint file that cannot be used (damaged, cut short, keys that do not fit the model)."""

    def __init__(self, message: str, path: Path | None = None):
        super().__init__(message)
        self.path = path


class DiskFullError(TrainingError):
    """The disk filled up while (or before) writing into ``folder``."""

    def __init__(self, message: str, folder: Path, needed: int | None, free: int | None):
        super().__init__(message)
        self.folder = folder
        self.needed = needed
        self.free = free


# --------------------------------------------------------------------------------------------- disk
def is_disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an exception it was raised from) means the disk is full."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DiskFullError):
            return True
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(exc)
        if type(exc).__name__ == "SafetensorError" and ("No space left" in text or "os error 28" in text
                                                         or "StorageFull" in text):
            return True
        # torch's zip writer: "[enforce fail at inline_container.cc:...] . unexpected pos N vs M" (a short
        # write), or "PytorchStreamWriter failed writing file ...: file write failed".
        if isinstance(exc, RuntimeError) and ("unexpected pos" in text or "file write failed" in text
                                              or "No space left on device" in text):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def free_bytes(folder: Path) -> int | None:
    """Free space on the disk holding ``folder`` (its nearest existing parent), or None when unknown."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return int(shutil.disk_usage(folder).free)
    except OSError:
        return None


def folder_bytes(folder: Path) -> int:
    total = 0
    for path in Path(folder).rglob("*"):
        try:
            if path.is_file():
                total += path.stat().st_size
        except OSError:
            continue
    return total


def expected_checkpoint_bytes(run_dir: Path, model: Any, *, full: bool) -> int:
    """About how much one checkpoint takes: the newest complete one's size, else the model's numbers
    (weights saved: every parameter for a full fine-tune, the trainable ones for adapters; Adam keeps two
    fp32 values per trainable parameter)."""
    latest = runs.latest_checkpoint(run_dir)
    if latest is not None:
        size = folder_bytes(latest)
        if size > 0:
            return size
    saved = trainable = 0
    for parameter in model.parameters():
        count = parameter.numel()
        if parameter.requires_grad:
            trainable += count
            saved += count * parameter.element_size()
        elif full:
            saved += count * parameter.element_size()
    return int(saved + trainable * 8 + 2**20)


def megabytes(size: int | None) -> str:
    if size is None:
        return "an unknown amount"
    return f"{size / 2**20:,.0f} MB" if size >= 2**20 else f"{size / 2**10:,.0f} KB"


def disk_full_message(folder: Path, needed: int | None, free: int | None, *, what: str) -> str:
    """The one line a full disk produces: where, how much is needed, what to do."""
    space = (f"; it needs about {megabytes(needed)} and {megabytes(free)} is free" if needed else
             (f"; {megabytes(free)} is free" if free is not None else ""))
    return (f"the disk is full: {what} could not be written into {folder}{space}. Free some space (or lower "
            "`training.save_total_limit`)")


# --------------------------------------------------------------------------------------------- cleanup
def sync_folder(folder: Path) -> int:
    """fsync every file under ``folder`` and the folders themselves: what the COMPLETE marker then promises is
    on the disk, not only in the page cache (a power cut right after a save cannot leave a "complete"
    checkpoint with empty files). Returns the number of files synced."""
    synced = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                fd = os.open(os.path.join(root, name), os.O_RDONLY)
            except OSError:  # vanished or unreadable: the checks before resume report the folder
                logger.debug("%s: cannot open %s to sync it", folder, name, exc_info=True)
                continue
            try:
                os.fsync(fd)
                synced += 1
            finally:
                os.close(fd)
        sync_directory(Path(root))
    return synced


def sync_directory(folder: Path) -> None:
    """fsync a directory (its entries: new and renamed files); a no-op where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open a directory; NTFS journals the names itself
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a directory: the files themselves were synced
        logger.debug("%s: fsync of the directory refused", folder, exc_info=True)
    finally:
        os.close(fd)


def remove_checkpoint(folder: Path) -> None:
    """Delete a checkpoint folder, its COMPLETE marker first: a kill mid-delete leaves an incomplete
    folder (ignored and cleaned later), never a complete-looking half."""
    try:
        (Path(folder) / runs.COMPLETE_MARKER).unlink(missing_ok=True)
    except OSError:
        logger.warning("%s: could not remove the COMPLETE marker", folder, exc_info=True)
    shutil.rmtree(folder, ignore_errors=True)


def remove_incomplete(run_dir: Path) -> list[Path]:
    """Delete checkpoint folders without COMPLETE (half-written by a kill or a failed save; they can never
    be resumed from), ``final.partial`` and stray ``.tmp*`` files a killed write left anywhere in the run.
    Returns what was removed."""
    removed: list[Path] = []
    folder = Path(run_dir) / runs.CHECKPOINTS_DIR
    if folder.is_dir():
        for child in folder.iterdir():
            if runs.checkpoint_step(child) is not None and not (child / runs.COMPLETE_MARKER).exists():
                shutil.rmtree(child, ignore_errors=True)
                removed.append(child)
    partial = Path(run_dir) / (runs.FINAL_DIR + ".partial")
    if partial.exists():
        shutil.rmtree(partial, ignore_errors=True)
        removed.append(partial)
    for stray in list(Path(run_dir).rglob(".tmp*")) + list(Path(run_dir).rglob("*.tmp")):
        try:
            if stray.is_dir():
                shutil.rmtree(stray, ignore_errors=True)
            else:
                stray.unlink(missing_ok=True)
            removed.append(stray)
        except OSError:
            logger.warning("%s: could not remove", stray, exc_info=True)
    for path in removed:
        logger.info("removed %s (left incomplete by an earlier failure)", path)
    return removed


def rotate(run_dir: Path, keep: int | None, best: str | os.PathLike | None) -> list[Path]:
    """Keep the newest ``keep`` complete checkpoints plus the best one; delete the other complete ones and
    any incomplete folder older than the newest complete one. Call only once the newest is COMPLETE."""
    complete = runs.list_checkpoints(run_dir)
    if not complete:
        return []
    removed: list[Path] = []
    newest_step = complete[-1][0]
    best_name = Path(best).name if best else None
    folder = Path(run_dir) / runs.CHECKPOINTS_DIR
    for child in folder.iterdir():
        step = runs.checkpoint_step(child)
        if step is not None and step < newest_step and not (child / runs.COMPLETE_MARKER).exists():
            remove_checkpoint(child)
            removed.append(child)
    if keep is None or keep <= 0:
        return removed
    protected = {complete[-1][1].name} | ({best_name} if best_name else set())
    remaining = len(complete)
    for _step, path in complete:
        if remaining <= max(keep, len(protected & {p.name for _, p in complete})):
            break
        if path.name not in protected:
            remove_checkpoint(path)
            removed.append(path)
            remaining -= 1
    return removed


# --------------------------------------------------------------------------------------------- checking
def _damaged(path: Path, reason: str, hint: str) -> CheckpointError:
    return CheckpointError(f"{path}: damaged ({reason}). {hint}".rstrip(), path)


def previous_good_checkpoint(run_dir: Path, before_step: int | None) -> Path | None:
    """The newest complete checkpoint older than ``before_step`` (any, when None) whose files check out."""
    for step, path in reversed(runs.list_checkpoints(run_dir)):
        if before_step is not None and step >= before_step:
            continue
        try:
            check_checkpoint(path, for_resume=True)
        except CheckpointError:
            continue
        return path
    return None


def damaged_hint(run_dir: Path | None, folder: Path, command: str) -> str:
    """What to do about a damaged ``folder``: the previous complete checkpoint, as a command."""
    if run_dir is None:
        return "Replace the file with an intact copy."
    step = runs.checkpoint_step(folder)
    previous = previous_good_checkpoint(run_dir, step)
    if previous is None:
        return "No earlier complete checkpoint is intact; start the run again."
    number = runs.checkpoint_step(previous)
    return f"Use the previous complete checkpoint: `{command} {run_dir} --checkpoint {number}`."


def _check_safetensors(path: Path) -> str | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
    except Exception as exc:  # noqa: BLE001 - any failure to read the header is a damaged file
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return None


def _check_zip(path: Path) -> str | None:
    # torch.save writes a zip archive whose central directory sits at the end: a cut file has none.
    try:
        with zipfile.ZipFile(path) as archive:
            archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        return str(exc) or type(exc).__name__
    return None


def _check_json(path: Path) -> str | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        return f"not valid JSON: {exc}"
    if not isinstance(value, dict):
        return "not a JSON object"
    if path.name == TRAINER_STATE_FILE and not isinstance(value.get("global_step"), int):
        return "no whole-number global_step"
    return None


def check_checkpoint(folder: Path, *, for_resume: bool, run_dir: Path | None = None,
                     command: str = "resume") -> None:
    """Raise CheckpointError naming the first damaged file of ``folder`` (a checkpoint or final/): weights
    or adapter safetensors headers, JSON files, and (``for_resume``) the optimizer / scheduler / RNG
    archives and trainer_state.json. Reads headers only, not every byte."""
    folder = Path(folder)

    def fail(path: Path, reason: str) -> None:
        raise _damaged(path, reason, damaged_hint(run_dir, folder, command))

    weights = [folder / WEIGHTS_FILE, folder / ADAPTER_WEIGHTS_FILE]
    index = folder / WEIGHTS_INDEX_FILE
    if index.is_file():
        problem = _check_json(index)
        if problem:
            fail(index, problem)
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values()))
        weights += [folder / shard for shard in shards]
        for shard in shards:
            if not (folder / shard).is_file():
                fail(folder / shard, "missing (named in the index)")
    present = [path for path in weights if path.is_file()]
    if not present and not list(folder.glob("*.safetensors")):
        fail(folder / WEIGHTS_FILE, "no weights (neither model.safetensors nor adapter_model.safetensors)")
    for path in sorted(set(present) | set(folder.glob("*.safetensors"))):
        problem = _check_safetensors(path)
        if problem:
            fail(path, problem)
    for name in ("config.json", "adapter_config.json"):
        if (folder / name).is_file():
            problem = _check_json(folder / name)
            if problem:
                fail(folder / name, problem)
    if not for_resume:
        return
    state = folder / TRAINER_STATE_FILE
    if not state.is_file():
        fail(state, "missing")
    problem = _check_json(state)
    if problem:
        fail(state, problem)
    for path in sorted(folder.glob("*.pt")) + sorted(folder.glob("*.pth")):
        problem = _check_zip(path)
        if problem:
            fail(path, problem)


# --------------------------------------------------------------------------------------------- loading
def _to_model_names(model: Any, state: dict) -> dict:
    """Checkpoint tensor names -> the model's own names, through transformers' renaming table for this
    architecture (the inverse of what save_pretrained applied)."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming, apply_renamings
    except ImportError:  # an older transformers without renamings: names are saved as they are
        return state
    renamings = [entry for entry in get_model_conversion_mapping(model) if isinstance(entry, WeightRenaming)]
    if not renamings:
        return state
    return {apply_renamings(key, renamings): tensor for key, tensor in state.items()}


def _tied_targets(model: Any) -> dict[str, str]:
    """{tied parameter name: the name it shares its tensor with} (save_pretrained leaves the target out)."""
    tied = getattr(model, "all_tied_weights_keys", None)
    if isinstance(tied, dict):
        return {str(k): str(v) for k, v in tied.items()}
    if callable(getattr(model, "get_expanded_tied_weights_keys", None)):
        try:
            return {str(k): str(v) for k, v in model.get_expanded_tied_weights_keys(all_submodels=True).items()}
        except Exception:  # noqa: BLE001 - no tied weights known: every key must be in the file
            return {}
    return {}


def load_full_weights(model: Any, folder: Path, *, run_dir: Path | None = None, command: str = "resume") -> None:
    """Load the full-model weights of checkpoint ``folder`` into ``model`` in place (the optimizer keeps
    its references), with the model's renamings applied; any key still missing or unexpected, or of the
    wrong shape, is a CheckpointError: never a silently reset layer."""
    import safetensors.torch

    folder = Path(folder)
    files = [folder / WEIGHTS_FILE]
    index = folder / WEIGHTS_INDEX_FILE
    if index.is_file():
        files = [folder / shard for shard in
                 sorted(set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values()))]
    state: dict = {}
    for path in files:
        try:
            state.update(safetensors.torch.load_file(str(path), device="cpu"))
        except Exception as exc:  # noqa: BLE001 - a cut or unreadable file: name it, suggest the previous one
            raise _damaged(path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                           damaged_hint(run_dir, folder, command)) from exc
    state = _to_model_names(model, state)
    expected = set(model.state_dict().keys())
    tied = _tied_targets(model)
    missing = sorted(key for key in expected if key not in state and tied.get(key) not in state)
    unexpected = sorted(key for key in state if key not in expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:5])}" + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:5])}"
                         + (f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else ""))
        raise CheckpointError(f"{folder}: its weights do not fit the model ({'; '.join(parts)}); it was saved from "
                              "another model or another version of transformers", folder)
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes that differ
        raise CheckpointError(f"{folder}: its weights do not fit the model ({str(exc).splitlines()[0]})",
                              folder) from exc


def check_adapter_load(result: Any, folder: Path, *, prompt_learning: bool = False) -> None:
    """peft's load_adapter result: any adapter key missing or unexpected is an error (peft only warns).
    Prompt learning (prefix tuning) keeps its state in the prompt encoder, which peft loads separately from
    the saved ``prompt_embeddings``: that key is expected there."""
    missing = list(getattr(result, "missing_keys", []) or [])
    unexpected = [key for key in (getattr(result, "unexpected_keys", []) or [])
                  if not (prompt_learning and key == "prompt_embeddings")]
    if missing or unexpected:
        detail = "; ".join(part for part in (
            f"missing {', '.join(missing[:5])}" if missing else "",
            f"unexpected {', '.join(unexpected[:5])}" if unexpected else "") if part)
        raise CheckpointError(f"{folder}: its adapter does not fit the model ({detail})", folder)
