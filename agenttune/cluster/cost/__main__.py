"""CLI: `python -m agenttune.cluster.cost --help`. Estimate hours, GPU-hours and per-GPU memory of a ZeRO-3
fine-tune; refuse (exit 3) a plan that does not fit and name the nearest that does; or print the seed table.

Takes: a preset or config.json, GPUs, tokens (or a shards manifest), flags, an optional measured metrics.json.
Gives: the verdict on stdout (refusals on stderr), the memory breakdown, and the table as Markdown / CSV on request.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import replace
from pathlib import Path

from agenttune.cluster.cost.adapters import LoraSpec
from agenttune.cluster.cost.devices import GPUS, GiB, get_gpu
from agenttune.cluster.cost.fit import DEFAULT_NODE_MEMORY_BYTES, Plan, preflight
from agenttune.cluster.cost.flops import DEFAULT_MAX_LEN, DEFAULT_MFU, SeqLens, read_measured_mfu
from agenttune.cluster.cost.seed import seed_table
from agenttune.cluster.cost.shapes import PRESETS, load_shape
from agenttune.cluster.cost.tables import format_markdown, plan_rows, write_csv
from agenttune.common.atomic import write_text
from agenttune.common.config import section_with_defaults

EXIT_FITS, EXIT_USAGE, EXIT_REFUSED = 0, 2, 3


def _read_manifest(path: str) -> tuple[float, SeqLens | None]:
    manifest = json.loads(Path(path).read_text())
    if not manifest.get("total_tokens"):
        raise ValueError(f"{path}: no positive 'total_tokens'")
    return float(manifest["total_tokens"]), manifest.get("row_lengths") or None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m agenttune.cluster.cost",
                                 description="Estimate hours, GPU-hours and per-GPU memory of a ZeRO-3 fine-tune; "
                                             "refuse (exit 3) a plan that does not fit and name the nearest that does.")
    ap.add_argument("--model", help=f"preset ({', '.join(PRESETS)}) or path to config.json")
    ap.add_argument("--gpus", type=int, default=1, help="GPUs in total (all nodes)")
    ap.add_argument("--gpu", default="a100-80g", help=f"one of {', '.join(GPUS)}")
    ap.add_argument("--nodes", type=int, default=None, help="nodes (default: as few as hold --gpus)")
    ap.add_argument("--epochs", type=float, default=1)
    ap.add_argument("--tokens", type=float, help="tokens per epoch, e.g. 470e6")
    ap.add_argument("--manifest", help="shards manifest.json: tokens from 'total_tokens', row lengths from 'row_lengths'")
    ap.add_argument("--metrics", help="an epoch's metrics.json: measured MFU from 'mfu'")
    ap.add_argument("--mfu", type=float, help=f"assumed MFU (default {DEFAULT_MFU})")
    ap.add_argument("--max-len", type=int, default=DEFAULT_MAX_LEN)
    ap.add_argument("--grad-checkpointing", action="store_true")
    ap.add_argument("--offload-optimizer", action="store_true")
    ap.add_argument("--offload-params", action="store_true", help="also offload parameters (implies --offload-optimizer)")
    ap.add_argument("--time-limit-hours", type=float, help="partition time limit for one epoch's job")
    ap.add_argument("--node-memory-gib", type=float, default=DEFAULT_NODE_MEMORY_BYTES / GiB)
    ap.add_argument("--peak-flops", type=float, help="override the device's peak FLOP/s (needed for --gpu cpu)")
    ap.add_argument("--gpu-memory-gib", type=float, help="override the device's memory")
    ap.add_argument("--tuning", default="full",
                    help="full, lora or qlora for a plan (adapters on all linear layers of the decoder); with "
                         "--seed-table a comma list, e.g. lora,qlora: a column set per LoRA method beside full tuning")
    ap.add_argument("--lora-rank", type=int, default=section_with_defaults({}, "train", "lora")["rank"],
                    help="LoRA / QLoRA rank (default: train.lora.rank's)")
    ap.add_argument("--seed-table", action="store_true", help="print the seed table reproduction")
    ap.add_argument("--out-md", help="write the table (seed table, or the plan's breakdown) as Markdown")
    ap.add_argument("--out-csv", help="write the same table as CSV")
    args = ap.parse_args(argv)

    try:
        gpu = get_gpu(args.gpu, args.peak_flops, args.gpu_memory_gib)
        tunings = [t.strip() for t in args.tuning.split(",") if t.strip()]
        unknown = [t for t in tunings if t not in ("full", "lora", "qlora")]
        if unknown or not tunings:
            ap.error(f"--tuning: {args.tuning!r}: give full, lora or qlora (a comma list with --seed-table)")
        if args.lora_rank < 1:
            ap.error("--lora-rank must be at least 1")
        adapters = tuple(LoraSpec(t, rank=args.lora_rank) for t in tunings if t != "full")
        rows: list[dict] = []
        if args.seed_table:
            rows = seed_table(args.mfu or DEFAULT_MFU, gpu=gpu, adapters=adapters)
            print(format_markdown(rows))
        if not args.model:
            if not args.seed_table:
                ap.error("--model is required (or --seed-table alone)")
            _write_tables(rows, args)
            return EXIT_FITS
        if len(tunings) > 1:
            ap.error("--tuning: one of full, lora, qlora for a plan (a list only with --seed-table alone)")
        shape = load_shape(args.model)
        tokens, seq_lens = (None, None)
        if args.manifest:
            tokens, seq_lens = _read_manifest(args.manifest)
        if args.tokens:
            tokens = args.tokens
        if not tokens:
            ap.error("give --tokens or --manifest")
        nodes = args.nodes or math.ceil(args.gpus / gpu.per_node)
        plan = Plan(shape, gpu, args.gpus, nodes, args.epochs, tokens, args.max_len, seq_lens,
                    args.grad_checkpointing, args.offload_optimizer or args.offload_params, args.offload_params,
                    time_limit_hours=args.time_limit_hours, node_memory_bytes=int(args.node_memory_gib * GiB),
                    lora=adapters[0] if adapters else None)
        if args.metrics:
            mfu, source = read_measured_mfu(args.metrics, shape, plan.lengths, plan.grad_checkpointing, plan.lora)
            plan = replace(plan, mfu=mfu, mfu_source=source)
        elif args.mfu:
            plan = replace(plan, mfu=args.mfu, mfu_source="given")
        else:
            plan = replace(plan, mfu_source="default")
        verdict = preflight(plan)
    except (ValueError, OSError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE

    print(f"{shape.name}: {shape.params:,} parameters, {tokens:,.0f} tokens/epoch, "
          f"{verdict.time.flops_per_epoch:.3e} FLOPs/epoch")
    print(format_markdown([{"component": k, "GiB": round(v, 2)} for k, v in verdict.memory.breakdown_gib().items()]))
    if not args.seed_table:
        rows = plan_rows(verdict)
    _write_tables(rows, args)
    if verdict.fits:
        print(verdict.message)
        return EXIT_FITS
    print(verdict.message, file=sys.stderr)
    return EXIT_REFUSED


def _write_tables(rows: list[dict], args) -> None:
    if args.out_md:
        write_text(args.out_md, format_markdown(rows))
    if args.out_csv:
        write_csv(rows, args.out_csv)


if __name__ == "__main__":
    sys.exit(main())
