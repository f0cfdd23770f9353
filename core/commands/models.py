"""`python main.py models [list|info|convert|devices]`: which base models there are and what training them costs."""

from __future__ import annotations

import json
import sys

from core.config import MethodConfig, ModelConfig
from core.consent import add_consent_arguments, record_cli_consent


def register(subparsers) -> None:
    """Add the ``models`` command: list (default), info MODEL, convert, devices."""
    parser = subparsers.add_parser("models", help="list base models, or show a model's size and training cost",
                                   description="Base models: the bundled one, converted ones, and the Hub cache.")
    parser.set_defaults(func=run_list, json=False)
    actions = parser.add_subparsers(dest="models_command", metavar="ACTION")

    listing = actions.add_parser("list", help="list bundled and cached models (the default action)")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(func=run_list)

    info = actions.add_parser("info", help="parameters, memory and FLOPs of training a model")
    info.add_argument("model", metavar="MODEL",
                      help="bundled:SmolLM2-135M-Instruct, a model folder, or a Hub id (e.g. EleutherAI/pythia-70m)")
    info.add_argument("--method", choices=("lora", "full", "prefix", "qlora"), default="lora",
                      help="fine-tuning method the trainable parameters are counted for (default lora)")
    info.add_argument("--lora-r", type=int, default=MethodConfig.lora_r, help="LoRA rank (default 16)")
    info.add_argument("--target-modules", default="auto", help="LoRA target layers (default auto)")
    info.add_argument("--batch-size", type=int, default=8, help="batch size for the estimates (default 8)")
    info.add_argument("--seq-len", type=int, default=256, help="sequence length for the estimates (default 256)")
    info.add_argument("--tree", action="store_true", help="also print the module tree")
    info.add_argument("--json", action="store_true", help="print JSON")
    add_consent_arguments(info)
    info.set_defaults(func=run_info)

    convert = actions.add_parser("convert", help="convert the bundled GGUF model into a plain folder now")
    convert.set_defaults(func=run_convert)

    devices = actions.add_parser("devices", help="list the CPU/GPUs training can use")
    devices.set_defaults(func=run_devices)


def human_bytes(count: float | None) -> str:
    """1536 -> '1.5 KiB'."""
    if count is None:
        return "?"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def human_count(count: float) -> str:
    """134515008 -> '134.5M'."""
    for threshold, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(count) >= threshold:
            return f"{count / threshold:.1f}{suffix}"
    return f"{count:.0f}"


def _progress(fraction, message) -> None:
    percent = f"{fraction * 100:3.0f}% " if fraction is not None else ""
    print(f"{percent}{message}", file=sys.stderr, flush=True)


def run_list(args) -> int:
    from core.models import list_models

    entries = list_models()
    if getattr(args, "json", False):
        print(json.dumps(entries, indent=2))
        return 0
    if not entries:
        print("no models found; use a model folder or a Hub id such as EleutherAI/pythia-70m")
        return 0
    width = max(len(entry["name"]) for entry in entries)
    print(f"{'NAME':<{width}}  {'KIND':<8} {'SIZE':>10}  {'STATE':<13} WHERE")
    for entry in entries:
        state = "ready" if entry["converted"] else "not converted"
        print(f"{entry['name']:<{width}}  {entry['kind']:<8} {human_bytes(entry['size_bytes']):>10}  {state:<13} "
              f"{entry['where']}")
    return 0


def _print_tree(node: dict, depth: int = 0, max_depth: int = 4) -> None:
    shape = f" {node['shape']}" if node.get("shape") else ""
    print(f"{'  ' * depth}{node['name']} ({node['type']}) {human_count(node['params'])}{shape}")
    if depth >= max_depth:
        return
    children = node["children"]
    # Repeated blocks (30 identical decoder layers) are shown once, with a count.
    if len(children) > 3 and len({child["type"] for child in children}) == 1:
        _print_tree(children[0], depth + 1, max_depth)
        print(f"{'  ' * (depth + 1)}... and {len(children) - 1} more {children[0]['type']}")
        return
    for child in children:
        _print_tree(child, depth + 1, max_depth)


def run_info(args) -> int:
    import textwrap

    from core.glossary import explain_module, legend
    from core.models import architecture_tree, load_model, load_tokenizer, model_info

    record_cli_consent(args, args.model)
    model_cfg = ModelConfig(name_or_path=args.model, trust_remote_code=args.trust_remote_code,
                            allow_pickle=args.allow_pickle)
    method_cfg = MethodConfig(method=args.method, lora_r=args.lora_r, lora_alpha=2 * args.lora_r,
                              target_modules=args.target_modules)
    tokenizer = load_tokenizer(model_cfg, progress=_progress)
    model = load_model(model_cfg, device="cpu")
    info = model_info(model, method_cfg, batch_size=args.batch_size, seq_len=args.seq_len, tokenizer=tokenizer)
    if args.json:
        payload = info.to_dict()
        if args.tree:
            payload["tree"] = architecture_tree(model)
        print(json.dumps(payload, indent=2))
        return 0
    share = info.trainable_params / info.total_params * 100 if info.total_params else 0.0
    rows = [
        ("model", args.model),
        ("architecture", f"{info.architecture} ({info.model_type})"),
        ("layers / hidden / vocab", f"{info.num_layers} / {info.hidden_size} / {info.vocab_size}"),
        ("context length", str(info.max_position_embeddings)),
        ("chat template", "yes" if info.has_chat_template else "no"),
        ("parameters", f"{info.total_params:,} ({human_count(info.total_params)})"),
        (f"trainable ({args.method})", f"{info.trainable_params:,} ({share:.2f}%)"),
        ("weights", human_bytes(info.weights_bytes)),
        (f"training memory (batch {args.batch_size} x {args.seq_len})", f"~{human_bytes(info.training_memory_bytes)}"),
        ("FLOPs per token", f"{info.flops_per_token:.3g}"),
        ("FLOPs per step", f"{info.flops_per_step:.3g}"),
    ]
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    print()
    print("What these mean:")
    print(legend([f"fact.{key}" for key in ("architecture", "shape", "vocab", "context", "chat", "total",
                                             "trainable", "weights", "memory", "flops_token", "flops_step")]))
    if args.tree:
        tree = architecture_tree(model)
        print()
        _print_tree(tree)
        print()
        print("Module kinds:")
        for kind in _module_types(tree):
            meaning = explain_module(kind)
            if meaning:
                print(textwrap.fill(f"{kind}: {meaning}", width=100, subsequent_indent="    "))
    return 0


def _module_types(node: dict) -> list[str]:
    """Every module class in the tree, outermost first, each once."""
    found = [node["type"]]
    for child in node.get("children", []):
        found += _module_types(child)
    return list(dict.fromkeys(found))


def run_convert(args) -> int:
    from core.models import ensure_bundled_model

    folder = ensure_bundled_model(progress=_progress)
    print(folder)
    return 0


def run_devices(args) -> int:
    from core.devices import list_devices, pick_device

    chosen = pick_device("auto")
    for device in list_devices():
        flags = [name for name, ok in (("bf16", device.supports_bf16), ("fp16", device.supports_fp16)) if ok]
        mark = "*" if device.spec == chosen.spec else " "
        print(f"{mark} {device.spec:<8} {device.name}  memory {human_bytes(device.total_memory)}  "
              f"precisions fp32{''.join(', ' + f for f in flags)}")
    print("(* = what training.device auto picks)")
    return 0
