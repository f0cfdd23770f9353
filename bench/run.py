"""FineTune Studio performance suite: ``python -m bench`` (or ``python bench/run.py``).

Every measurement runs in its own subprocess (``--worker``), so peak memory (RSS) of one contender
never mixes with another's and each starts from a cold process. Results: ``bench/results/latest.json``
and ``bench/results/latest.md`` (the table published in docs/PERFORMANCE.md). ``--quick`` uses a few
examples and short caps (seconds to a few minutes) to check the suite itself; numbers from it mean little.
Not part of the unit tests. On a shared machine run it as ``flock /tmp/torch.lock python -m bench``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"

TARGETS = {
    "app_vs_tutorial": 3.0,  # app tokens/s >= 3x the tutorials' recipe
    "app_vs_padded": 1.3,  # >= 1.3x plain Trainer padded to max_length
    "ttq_fraction": 1 / 3,  # app time to quality <= 1/3 of the tutorials'
    "mfu_lora": 0.35,
    "launch_seconds": 1.5,
    "stall_max_ms": 100.0,
    "stall_p99_ms": 30.0,
    "redraw_ms": 20.0,
    "ttft_seconds": 0.5,
}


# ------------------------------------------------------------------------------------------ workers
def _worker_main(name: str, kwargs_json: str, out: str) -> int:
    module_name, func_name = name.split(":")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    func = getattr(importlib.import_module(f"bench.{module_name}"), func_name)
    result = func(**json.loads(kwargs_json))
    Path(out).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0


def run_worker(name: str, timeout: float = 900, **kwargs) -> dict:
    """Run ``bench.<module>.<function>(**kwargs)`` in a fresh Python process; its JSON result or an error."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        out = handle.name
    started = time.perf_counter()
    print(f"  - {name} {kwargs} ...", end="", flush=True)
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore")
    try:
        proc = subprocess.run([sys.executable, "-m", "bench.run", "--worker", name, "--kwargs", json.dumps(kwargs),
                               "--out", out], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(" TIMEOUT")
        return {"error": f"timed out after {timeout} s"}
    seconds = time.perf_counter() - started
    try:
        if proc.returncode != 0:
            print(f" FAILED ({seconds:.0f} s)")
            return {"error": proc.stderr[-3000:]}
        result = json.loads(Path(out).read_text())
        print(f" {seconds:.0f} s")
        result["process_seconds"] = round(seconds, 1)
        return result
    finally:
        Path(out).unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------ machine
def machine_info() -> dict:
    """CPU model, cores, RAM and library versions (without importing torch in this process)."""
    from importlib import metadata

    from core.devices import cpu_model  # no torch

    cpu = cpu_model()
    ram = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": ram, "python": platform.python_version(),
            "platform": platform.platform()}
    for package in ("torch", "transformers", "peft", "datasets", "accelerate", "PySide6", "pyqtgraph"):
        info[package] = None
        # PySide6 is often installed as its PySide6-Essentials wheel only.
        for distribution in (package, package + "-Essentials"):
            try:
                info[package] = metadata.version(distribution)
                break
            except metadata.PackageNotFoundError:
                continue
    try:
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


# ------------------------------------------------------------------------------------------ suite
def run_suite(quick: bool, only: set[str] | None) -> dict:
    """Run every section (or those in ``only``) and return the results dict."""
    n_examples = 12 if quick else 64
    ttq_cap = 40.0 if quick else 240.0
    results: dict = {"quick": quick, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine_info(),
                     "targets": TARGETS}
    work = Path(tempfile.mkdtemp(prefix="studio-bench-"))

    def wanted(section: str) -> bool:
        return only is None or section in only

    if wanted("throughput") or wanted("ablations") or wanted("throughput_update"):
        data_file = str(work / f"trivia-{n_examples}.jsonl")
        run_worker("train_bench:write_subset_json", path=data_file, n=n_examples)
    if wanted("throughput"):
        print("training throughput")
        results["matmul"] = run_worker("train_bench:matmul_benchmark", threads=2)
        results["flops"] = {m: run_worker("train_bench:model_flops_per_token", method=m) for m in ("lora",)}
        rows = []
        for method in ("lora", "full"):
            for contender in ("app", "tutorial", "padded"):
                rows.append(run_worker("train_bench:throughput", contender=contender, method=method,
                                       data_file=data_file, workdir=str(work / f"{contender}-{method}")))
        results["throughput"] = rows
    if wanted("throughput_update"):
        # The app after an optimisation and "before" variants (same code, the optimisation switched off),
        # plus the tutorials' recipe for the ratio; the padded contender is not re-run.
        print("training throughput: app before/after (logits at trained positions, fused AdamW)")
        variants = [
            ("lora", "app", "current", {}),
            ("lora", "app", "logits at every position", dict(trained_positions_only=False)),
            ("lora", "tutorial", "tutorials' recipe", {}),
            ("full", "app", "current", {}),
            ("full", "app", "logits at every position", dict(trained_positions_only=False)),
            ("full", "app", "logits at every position, AdamW foreach",
             dict(trained_positions_only=False, optim="adamw_torch")),
            ("full", "tutorial", "tutorials' recipe", {}),
        ]
        update = []
        for method, contender, label, kwargs in variants:
            row = run_worker("train_bench:throughput", contender=contender, method=method, data_file=data_file,
                             workdir=str(work / f"update-{contender}-{method}-{len(update)}"), **kwargs)
            row.setdefault("method", method)
            row.setdefault("contender", contender)
            row["variant"] = label
            update.append(row)
        results["throughput_update"] = update
    if wanted("ablations"):
        print("ablations (app, LoRA)")
        ablations = {
            "group_by_length_off": dict(group_by_length=False),
            "torch_threads_1": dict(threads=1),
            "pad_to_max_length": dict(pad_to_max_length=True),
        }
        results["ablations"] = {
            name: run_worker("train_bench:throughput", contender="app", method="lora", data_file=data_file,
                             workdir=str(work / f"ablation-{name}"), **kwargs)
            for name, kwargs in ablations.items()}
        results["dataset_cache"] = run_worker("train_bench:dataset_cache", cache_dir=str(work / "cache-data"))
        results["model_cache"] = run_worker("train_bench:model_cache", cache_dir=str(work / "cache-model"))
    if wanted("profile"):
        print("profile (one app LoRA step; full fine-tuning optimizer step)")
        results["profile"] = run_worker("train_bench:profile_step", workdir=str(work / "profile"))
    if wanted("quality"):
        print("time to quality")
        results["time_to_quality"] = {
            contender: run_worker("train_bench:time_to_quality", timeout=ttq_cap + 600, contender=contender,
                                  workdir=str(work / f"ttq-{contender}"), cap_seconds=ttq_cap)
            for contender in ("app", "tutorial")}
    if wanted("gui"):
        print("GUI")
        results["launch"] = run_worker("gui_bench:launch", python=sys.executable, repeats=2 if quick else 3)
        results["launch_torch_preimported"] = run_worker("gui_bench:launch", python=sys.executable,
                                                         preimport_torch=True, repeats=1 if quick else 2)
        results["plot_redraw"] = run_worker("gui_bench:plot_redraw")
        results["plot_redraw_grid_off"] = run_worker("gui_bench:plot_redraw", grid=False)
        results["plot_redraw_empty"] = run_worker("gui_bench:plot_redraw", n_points=0)
        results["stalls_tiny"] = run_worker("gui_bench:training_stalls", model="tiny", workdir=str(work / "gui-tiny"),
                                            max_steps=10 if quick else 40, eval_steps=5 if quick else 10)
        results["stalls_smollm2"] = run_worker("gui_bench:training_stalls", model="smollm2",
                                               workdir=str(work / "gui-smol"), max_steps=2 if quick else 6,
                                               eval_steps=2 if quick else 3)
        # Alternatives, to find what the stalls come from: plots without grid lines, torch on 1 thread
        # (a core left for the GUI thread), Python's default 5 ms GIL switch interval.
        for key, extra in (("stalls_tiny_grid_off", dict(plot_grid=False)),
                           ("stalls_tiny_torch_1_thread", dict(torch_threads=1))):
            results[key] = run_worker("gui_bench:training_stalls", model="tiny", workdir=str(work / key),
                                      max_steps=10 if quick else 40, eval_steps=5 if quick else 10, **extra)
        if not quick:
            results["stalls_smollm2_grid_off"] = run_worker(
                "gui_bench:training_stalls", model="smollm2", workdir=str(work / "gui-smol-nogrid"), max_steps=6,
                eval_steps=3, plot_grid=False)
            results["stalls_smollm2_switch_5ms"] = run_worker(
                "gui_bench:training_stalls", model="smollm2", workdir=str(work / "gui-smol-5ms"), max_steps=6,
                eval_steps=3, switch_interval=0.005)
    if wanted("chat") or wanted("evaluate"):
        print("chat / evaluate answers")
        new_tokens = 16 if quick else 48
        adapter = run_worker("chat_bench:make_adapter")["folder"]
        if wanted("chat"):
            for key, mode, extra in (("chat_paired", "paired", {}), ("chat", "separate", {}),
                                     ("chat_shared", "shared", {}), ("chat_threads_1", "separate", {"threads": 1})):
                results[key] = run_worker("chat_bench:chat", adapter=adapter, mode=mode, max_new_tokens=new_tokens,
                                          **extra)
        if wanted("evaluate"):
            print("evaluate: 26 questions, base and fine-tuned: one by one, generate() batches, rows leaving, both sides")
            n = 6 if quick else 26
            run = run_worker("eval_bench:make_run", timeout=1800, workdir=str(work / "evaluate"),
                             max_steps=4 if quick else 60)
            modes = ("one_by_one", "generate_batches", "batched", "both")
            runs = {mode: run_worker("eval_bench:answers", adapter=run.get("folder", adapter), mode=mode, n=n)
                    for mode in modes}
            runs["run_steps"] = run.get("max_steps")
            one = runs["one_by_one"]
            if all("seconds" in runs[m] for m in modes):
                runs["speedup"] = round(one["seconds"] / runs["both"]["seconds"], 2)
                runs["speedups"] = {m: round(one["seconds"] / runs[m]["seconds"], 2) for m in modes}
                texts = [runs[m].pop("texts") for m in modes]
                runs["identical_answers"] = all(t == texts[0] for t in texts)
            results["evaluate_answers"] = runs
        import shutil

        shutil.rmtree(adapter, ignore_errors=True)
    if wanted("memory"):
        print("memory by phase (quickstart settings, 4 steps; gradient checkpointing off / on)")
        results["memory"] = {
            "default": run_worker("memory_bench:breakdown", timeout=1800, workdir=str(work / "memory")),
            "gradient_checkpointing": run_worker("memory_bench:breakdown", timeout=1800, workdir=str(work / "memory"),
                                                 overrides={"training.gradient_checkpointing": True})}
    if wanted("padding"):
        print("padding the batches carry (what packing could save)")
        results["padding"] = run_worker("padding:padding_share")
    if wanted("eval_share"):
        print("evaluations' share of a run: before (every held-out example, split order) / after (cap, sorted)")
        steps = 6 if quick else 60
        # The quickstart as it is (26 held-out questions), and every sample topic (2,145 pairs) with the app's
        # default of at most 200 held-out examples per evaluation.
        results["eval_share"] = {
            f"{name}_{mode}": run_worker("eval_share:share", timeout=1800, mode=mode, source=source, max_steps=steps,
                                         workdir=str(work / "eval-share"), max_eval_examples=cap)
            for name, source, cap in (("quickstart", "sample:trivia", None), ("all_topics", "sample:all", 200))
            for mode in ("before", "after")}
    if wanted("peer"):
        print("against LLaMA-Factory")
        from bench.peer_bench import section as peer_section

        try:
            results["peer"] = peer_section(run_worker, work)
        except (OSError, subprocess.CalledProcessError) as exc:  # no venv could be made: say so in the report
            results["peer"] = {"error": f"LLaMA-Factory's environment: {exc}"}
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    return results


# ------------------------------------------------------------------------------------------ report
def _fmt_bytes(n) -> str:
    return f"{n / 2**30:.2f} GiB" if isinstance(n, (int, float)) else "?"


def _ok(passed: bool | None) -> str:
    return "n/a" if passed is None else ("met" if passed else "**missed**")


def derive(results: dict) -> dict:
    """Ratios, MFU and target verdicts computed from the raw measurements."""
    d: dict = {}
    rows = [r for r in results.get("throughput", []) if "error" not in r]
    by = {(r["contender"], r["method"]): r for r in rows}
    for method in ("lora", "full"):
        app = by.get(("app", method))
        if not app:
            continue
        for contender in ("tutorial", "padded"):
            other = by.get((contender, method))
            if other:
                d[f"{method}_app_vs_{contender}"] = round(app["tokens_per_second"] / other["tokens_per_second"], 2)
    flops = results.get("flops", {}).get("lora", {})
    peak = results.get("matmul", {}).get("peak_gflops")
    if flops and "error" not in flops and peak:
        for method in ("lora", "full"):
            app = by.get(("app", method))
            if app:
                per_token = flops[f"flops_per_token_{method}"]
                achieved = per_token * app["tokens_per_second"] / 1e9
                d[f"{method}_achieved_gflops"] = round(achieved, 2)
                d[f"{method}_mfu"] = round(achieved / peak, 3)
    ttq = results.get("time_to_quality", {})
    a, t = ttq.get("app", {}), ttq.get("tutorial", {})
    if a.get("seconds_to_target") is not None and t.get("seconds_to_target") is not None:
        d["ttq_fraction"] = round(a["seconds_to_target"] / t["seconds_to_target"], 3)
    elif a.get("seconds_to_target") is not None and t and "error" not in t:
        d["ttq_fraction_upper_bound"] = round(a["seconds_to_target"] / t["cap_seconds"], 3)
    return d


def markdown(results: dict) -> str:
    """The Markdown report: machine, tables and verdicts against the targets."""
    d = derive(results)
    m = results["machine"]
    out = [f"Run {results['started']} - {results.get('finished', '?')}" + (" (QUICK: not representative)"
                                                                           if results.get("quick") else ""),
           "", f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM; Python {m['python']}, "
           f"torch {m['torch']}, transformers {m['transformers']}, peft {m['peft']}, PySide6 {m['PySide6']}, "
           f"pyqtgraph {m['pyqtgraph']}; load average at start {m.get('load_average_at_start')}.", ""]
    rows = results.get("throughput")
    if rows:
        out += ["### Training throughput (SmolLM2-135M, same examples, one epoch)", "",
                "| method | contender | trained tokens | tokens/s | ratio app/this | s/step (mean) | examples/step "
                "| peak RSS |", "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if "error" in r:
                out.append(f"| ? | ? | error: {r['error'][-120:].strip()!r} | | | | | |")
                continue
            ratio = "1.00" if r["contender"] == "app" else f"{d.get(r['method'] + '_app_vs_' + r['contender'], '?')}"
            out.append(f"| {r['method']} | {r['contender']} | {r['trained_tokens']} | {r['tokens_per_second']:.1f} | "
                       f"{ratio} | {r['seconds_per_step_mean']:.3f} | {r['examples_per_step']} | "
                       f"{_fmt_bytes(r['peak_rss_bytes'])} |")
        out.append("")
        mm = results.get("matmul", {})
        fl = results.get("flops", {}).get("lora", {})
        if "peak_gflops" in mm and "flops_per_token_lora" in fl:
            out += [f"Matmul peak (fp32, 2 threads, model shapes): {mm['peak_gflops']} GFLOP/s "
                    f"({', '.join(f'{k}: {v}' for k, v in mm['gflops_by_shape'].items())}).",
                    f"FLOPs/token: LoRA {fl['flops_per_token_lora'] / 1e6:.0f} M, full {fl['flops_per_token_full'] / 1e6:.0f} M "
                    f"(N = {fl['n_matmul_weights'] / 1e6:.1f} M matmul weights incl. lm_head).",
                    f"App MFU: LoRA {d.get('lora_mfu', '?')} ({d.get('lora_achieved_gflops', '?')} GFLOP/s), "
                    f"full {d.get('full_mfu', '?')} ({d.get('full_achieved_gflops', '?')} GFLOP/s).", ""]
    update = results.get("throughput_update")
    if update:
        out += ["### Training throughput, app before/after (SmolLM2-135M, same examples, one epoch)", "",
                "| method | contender | variant | tokens/s | s/step (mean) | peak RSS |", "|---|---|---|---|---|---|"]
        for r in update:
            if "error" in r:
                out.append(f"| {r['method']} | {r['contender']} | {r['variant']} | error: "
                           f"{r['error'][-120:].strip()!r} | | |")
                continue
            out.append(f"| {r['method']} | {r['contender']} | {r['variant']} | {r['tokens_per_second']:.1f} | "
                       f"{r['seconds_per_step_mean']:.3f} | {_fmt_bytes(r['peak_rss_bytes'])} |")
        out.append("")
    ab = results.get("ablations")
    if ab:
        app_lora = next((r for r in rows or [] if r.get("contender") == "app" and r.get("method") == "lora"), None)
        out += ["### What each setting buys (app, LoRA)", "", "| variant | tokens/s | vs app default | peak RSS |",
                "|---|---|---|---|"]
        if app_lora:
            out.append(f"| app default | {app_lora['tokens_per_second']:.1f} | 1.00 | {_fmt_bytes(app_lora['peak_rss_bytes'])} |")
        for name, r in ab.items():
            if "error" in r:
                out.append(f"| {name} | error | | |")
                continue
            rel = f"{r['tokens_per_second'] / app_lora['tokens_per_second']:.2f}" if app_lora else "?"
            out.append(f"| {name} | {r['tokens_per_second']:.1f} | {rel} | {_fmt_bytes(r['peak_rss_bytes'])} |")
        dc, mc = results.get("dataset_cache", {}), results.get("model_cache", {})
        out.append("")
        if "first_seconds" in dc:
            out.append(f"Tokenized-dataset cache ({dc['source']}, {dc['examples']} examples): first prepare_dataset "
                       f"{dc['first_seconds']} s, second {dc['cached_seconds']} s.")
        if "convert_seconds" in mc:
            out.append(f"Converted-model cache: GGUF conversion {mc['convert_seconds']} s, already converted "
                       f"{mc['cached_seconds']} s.")
        out.append("")
    prof = results.get("profile", {})
    if "lora_step_seconds" in prof:
        out += ["### Profile of one app LoRA step (batch of 8, shape "
                f"{prof['padded_shape']}, {prof['tokens_in_batch']} tokens, {prof['trained_positions']} trained)", "",
                f"- forward + backward: {prof['lora_step_seconds']} s; matmul share of CPU time "
                f"{prof['profile_matmul_share']:.0%}; top ops (self ms): "
                + ", ".join(f"{k} {v}" for k, v in list(prof["profile_top_ops_ms"].items())[:6]) + ".",
                f"- alternative, logits only at trained positions: {prof['lora_step_lm_head_trained_only_seconds']} s "
                f"({prof['lm_head_trained_only_speedup']}x).",
                f"- full fine-tuning: forward + backward {prof['full_forward_backward_seconds']} s; optimizer step "
                + ", ".join(f"{k} {v} s" for k, v in prof["full_optimizer_step_seconds"].items()) + ".", ""]
    ttq = results.get("time_to_quality")
    if ttq:
        out += ["### Time to quality (held-out answer loss <= 80% of the base model's; LoRA; evals excluded)", "",
                "| contender | base eval loss | target (80%) | seconds to target | seconds to 70% / 60% / 50% "
                "| best eval loss | examples seen |", "|---|---|---|---|---|---|---|"]
        for name, r in ttq.items():
            if "error" in r:
                out.append(f"| {name} | error | | | | |")
                continue
            reached = (f"{r['seconds_to_target']}" if r["reached"]
                       else f"not reached within {r['cap_seconds']:.0f}")
            more = " / ".join(str(r.get("seconds_to_ratio", {}).get(k, "?")) for k in ("0.7", "0.6", "0.5"))
            out.append(f"| {name} | {r['base_eval_loss']} | {r['target_eval_loss']} | {reached} | {more} | "
                       f"{r['best_eval_loss']} | {r['curve'][-1]['examples']} |")
        out.append("")
    gui_rows = []
    la, lt = results.get("launch", {}), results.get("launch_torch_preimported", {})
    if "best_seconds" in la:
        gui_rows.append(("launch to first paint (best/median)", f"{la['best_seconds']} / {la['median_seconds']} s",
                         "< 1.5 s", la["median_seconds"] < TARGETS["launch_seconds"]))
    if "best_seconds" in lt:
        gui_rows.append(("... with torch+transformers imported first", f"{lt['median_seconds']} s", "", None))
    pr = results.get("plot_redraw", {})
    if "redraw_ms_median" in pr:
        gui_rows.append((f"redraw {pr['points_per_series']} points/series (median/max)",
                         f"{pr['redraw_ms_median']} / {pr['redraw_ms_max']} ms", "< 20 ms",
                         pr["redraw_ms_median"] < TARGETS["redraw_ms"]))
        gui_rows.append(("live update: append 1 point + redraw + paint", f"{pr['append_one_and_redraw_ms_median']} ms",
                         "", None))
        gui_rows.append(("... of which setData (redraw() alone)", f"{pr['setdata_only_ms_median']} ms", "", None))
    for key, label in (("plot_redraw_grid_off", "same 100k points, grid lines off (alternative)"),
                       ("plot_redraw_empty", "empty plots (paint cost alone)")):
        p2 = results.get(key, {})
        if "redraw_ms_median" in p2:
            gui_rows.append((label, f"full {p2['redraw_ms_median']} ms, live {p2['append_one_and_redraw_ms_median']} ms",
                             "", None))
    for key, label in (("stalls_tiny", "tiny model"), ("stalls_tiny_grid_off", "tiny, plots without grid"),
                       ("stalls_tiny_torch_1_thread", "tiny, torch 1 thread"), ("stalls_smollm2", "SmolLM2"),
                       ("stalls_smollm2_grid_off", "SmolLM2, plots without grid"),
                       ("stalls_smollm2_switch_5ms", "SmolLM2, GIL switch interval 5 ms")):
        s = results.get(key, {})
        if "training_phase" in s and s["training_phase"].get("ticks"):
            tp, wr = s["training_phase"], s["whole_run"]
            gui_rows.append((f"event-loop stall while training ({label}, {s['max_steps']} steps): max / p99",
                             f"{tp['max_gap_ms']} / {tp['p99_gap_ms']} ms (whole run incl. loading: "
                             f"{wr['max_gap_ms']} / {wr['p99_gap_ms']} ms)", "< 100 / < 30 ms",
                             tp["max_gap_ms"] < TARGETS["stall_max_ms"] and tp["p99_gap_ms"] < TARGETS["stall_p99_ms"]))
        elif s:
            gui_rows.append((f"stalls ({label})", f"error: {str(s.get('error', s))[-200:]!r}", "", None))
    if gui_rows:
        out += ["### GUI", "", "| measurement | result | target | verdict |", "|---|---|---|---|"]
        out += [f"| {a} | {b} | {c} | {_ok(v)} |" for a, b, c, v in gui_rows]
        out.append("")
    chat_rows = []
    for key, label in (("chat_paired", "one model, both panes in one batch (page default)"),
                       ("chat", "a model per pane"), ("chat_shared", "one shared model, answers in turn"),
                       ("chat_threads_1", "a model per pane, torch 1 thread")):
        c = results.get(key, {})
        if "panes" in c:
            panes = c["panes"]
            rss = _fmt_bytes(c.get("peak_rss_bytes")) if c.get("peak_rss_bytes") else "?"
            chat_rows.append(f"| {label} | " + " | ".join(
                f"{panes[s]['ttft_seconds']} s, {panes[s]['tokens_per_second']} tok/s" for s in ("left", "right"))
                + f" | {c['one_pane_alone']['ttft_seconds']} s, {c['one_pane_alone']['tokens_per_second']} tok/s | "
                + f"{rss} | " + _ok(c["worst_ttft_seconds"] < TARGETS["ttft_seconds"]) + " |")
        elif c:
            chat_rows.append(f"| {label} | error: {str(c.get('error', c))[-200:]!r} | | | | |")
    if chat_rows:
        out += ["### Chat (SmolLM2 + a LoRA adapter, base left, fine-tuned right, both panes at once, greedy, "
                f"{results.get('chat', {}).get('max_new_tokens', '?')} new tokens)", "",
                "| setup | left pane TTFT, tokens/s | right pane | one pane alone | peak RSS | TTFT < 0.5 s |",
                "|---|---|---|---|---|---|"] + chat_rows + [""]
    memory = results.get("memory", {})
    if memory.get("default", {}).get("phases_mib"):
        out += ["### Memory by phase (quickstart settings, 4 steps; peak RSS in MiB: anonymous + file-backed)", "",
                "| phase | default | gradient checkpointing |", "|---|---|---|"]
        other = memory.get("gradient_checkpointing", {}).get("phases_mib", {})
        def cell(p):
            return f"{p['VmRSS']} ({p['RssAnon']} + {p['RssFile']})" if p else ""

        for phase, peak in memory["default"]["phases_mib"].items():
            out.append(f"| {phase} | {cell(peak)} | {cell(other.get(phase))} |")
        out.append("")
    ev = results.get("evaluate_answers", {})
    if "speedups" in ev:
        one = ev["one_by_one"]
        labels = {"one_by_one": "one question at a time (before)", "generate_batches": "generate() batches of 8",
                  "batched": "batches, rows leave as they end", "both": "base + fine-tuned rows in one batch (now)"}
        out += [f"### Evaluate's answers ({one['questions']} questions x base and fine-tuned of the "
                f"{ev.get('run_steps', 60)}-step quickstart "
                f"run, greedy, {one['max_new_tokens']} new tokens at most; answer characters base / fine-tuned: "
                f"{one.get('answer_chars_by_side')}; identical answers in every mode: {ev.get('identical_answers')})",
                "",
                "| mode | seconds | speed-up (target ≥ 3×) |", "|---|---|---|"]
        for mode, label in labels.items():
            out.append(f"| {label} | {ev[mode]['seconds']} s | {ev['speedups'][mode]}× "
                       f"({_ok(ev['speedups'][mode] >= 3)}) |")
        out.append("")
    pad = results.get("padding", {})
    if "length_grouped" in pad:
        out += [f"### Padding in the batches ({pad['examples']} examples, mean {pad['mean_tokens']} tokens, batch "
                f"{pad['batch_size']}): what padding-free packing could save", "",
                "| batches | real tokens | computed tokens | padding |", "|---|---|---|---|"]
        for key, label in (("length_grouped", "length-grouped (the app's default)"), ("random", "random order")):
            p = pad[key]
            out.append(f"| {label} | {p['real_tokens']} | {p['computed_tokens']} | {p['padding_share']:.1%} |")
        out.append("")
    shares = results.get("eval_share", {})
    if shares:
        steps = next(iter(shares.values())).get("max_steps", "?")
        out += [f"### Evaluations' share of a run (quickstart settings, {steps} steps, held-out loss every 20 steps and "
                "at step 0; every topic: at most 200 held-out examples, the app's default)", "",
                "| data | mode | held-out examples used | evaluations | eval seconds | run seconds | share |",
                "|---|---|---|---|---|---|---|"]
        for key, r in shares.items():
            if "eval_share" in r:
                out.append(f"| {r['source']} | {r['mode']} | {r['eval_examples']} of {r['eval_examples_available']} "
                           f"| {r['evaluations']} | {r['eval_seconds']} | {r['run_seconds']} | {r['eval_share']:.0%} |")
            else:
                out.append(f"| {key} | error: {str(r.get('error', r))[-200:]!r} | | | | | |")
        out.append("")
    for key, title in (("peer", "Against LLaMA-Factory (identical work)"),
                       ("peer_bf16", "Against LLaMA-Factory, both tools in bf16 (a CPU with native bf16)")):
        if key in results:
            from bench.peer_bench import markdown as peer_markdown

            out += [f"### {title}", ""] + peer_markdown(results[key]) + [""]
    verdicts = []
    for method in ("lora", "full"):
        for contender, key in (("tutorial", "app_vs_tutorial"), ("padded", "app_vs_padded")):
            value = d.get(f"{method}_app_vs_{contender}")
            if value is not None:
                verdicts.append(f"- {method}: app / {contender} = {value}x (target >= {TARGETS[key]}x): "
                                f"{_ok(value >= TARGETS[key])}")
    if "lora_mfu" in d:
        verdicts.append(f"- LoRA MFU = {d['lora_mfu']:.1%} (target >= 35%): {_ok(d['lora_mfu'] >= TARGETS['mfu_lora'])}")
    if "ttq_fraction" in d:
        verdicts.append(f"- time to quality app/tutorial = {d['ttq_fraction']} (target <= 0.33): "
                        f"{_ok(d['ttq_fraction'] <= TARGETS['ttq_fraction'])}")
    elif "ttq_fraction_upper_bound" in d:
        verdicts.append(f"- time to quality app/tutorial < {d['ttq_fraction_upper_bound']} (tutorial did not reach "
                        f"the target within its cap): {_ok(d['ttq_fraction_upper_bound'] <= TARGETS['ttq_fraction'])}")
    if verdicts:
        out += ["### Training targets", ""] + verdicts + [""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few examples, short caps: checks the suite itself")
    parser.add_argument("--only", help="comma-separated sections: throughput,throughput_update,ablations,profile,quality,gui,chat,evaluate,eval_share,padding,memory,"
                        "peer (LLaMA-Factory on identical work; needs the peer's venv, created if missing)")
    parser.add_argument("--out", default=str(RESULTS), help="folder for latest.json / latest.md")
    parser.add_argument("--report", metavar="JSON", help="only re-render the Markdown of a saved result file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--kwargs", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return _worker_main(args.worker, args.kwargs, args.out)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.report:
        results = json.loads(Path(args.report).read_text())
    else:
        only = set(args.only.split(",")) if args.only else None
        results = run_suite(args.quick, only)
        stem = "quick" if args.quick else "latest"
        previous = out / f"{stem}.json"
        if only and previous.exists():
            # A partial run (--only) updates its sections of the last full result.
            merged = json.loads(previous.read_text())
            merged.update({k: v for k, v in results.items() if k not in ("machine", "targets", "started")})
            merged.setdefault("partial_reruns", []).append({"sections": sorted(only), "at": results["started"],
                                                            "machine": results.get("machine")})
            results = merged
        results["derived"] = derive(results)
        (out / f"{stem}.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    text = markdown(results)
    stem = "quick" if results.get("quick") else "latest"
    (out / f"{stem}.md").write_text(text + "\n", encoding="utf-8")
    print()
    print(text)
    return 0


if __name__ == "__main__":
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    sys.exit(main())
