"""`gpu-llm plan | verify | bench | status`: the planner without a host, and checks of a running endpoint."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from gpu_llm import bench, status, verify
from gpu_llm.plan import InstancePlan, PlanError, ServeConfig, plan_instances
from gpu_llm.plan.container import container_spec, docker_run_args
from gpu_llm.plan.gpus import parse_compact, parse_query_csv
from gpu_llm.settings import SettingsError, from_data, parse_value

EXIT_BAD_INPUT = 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu-llm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _register_plan(sub)
    verify.register(sub)
    bench.register(sub)
    status.register(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def _register_plan(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="show the vLLM container and KV-cache capacity for given GPUs (no host, no network)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--gpus", metavar="NxMEM@CC", help="e.g. 4x22528MiB@7.5:pcie:geforce, 1x80GiB@9.0, "
                     "8x40GiB@8.0:nvlink (:geforce/:titan mark consumer cards)")
    src.add_argument("--from-nvidia-smi", metavar="FILE", type=Path,
                     help="output of nvidia-smi --query-gpu=index,name,memory.total,compute_cap,driver_version "
                          "--format=csv,noheader,nounits")
    p.add_argument("--driver", metavar="VERSION", help="NVIDIA driver version (default: from the file, else "
                   "the nvidia_driver_version setting, the driver gpu-llm would install)")
    p.add_argument("--data", metavar="KEY=VALUE", action="append", default=[],
                   help="a setting, parsed like `pyinfra --data` (repeatable)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_plan)


def run_plan(args: argparse.Namespace) -> int:
    try:
        data = {}
        for item in args.data:
            key, sep, raw = item.partition("=")
            if not sep:
                raise SettingsError([(item, f"--data {item!r}: expected KEY=VALUE")])
            data[key] = parse_value(raw)
        config = ServeConfig.from_settings(from_data(data))
        if args.gpus:
            gpus = parse_compact(args.gpus, args.driver)
        else:
            gpus = parse_query_csv(args.from_nvidia_smi.read_text())
        plans = plan_instances(gpus, config, driver_version=args.driver)
    except (SettingsError, PlanError, ValueError, OSError) as exc:
        print(f"gpu-llm plan: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    specs = [container_spec(p, template_sha256="<template>") for p in plans]
    if args.json:
        out = [_plan_json(p, s) for p, s in zip(plans, specs)]
        doc: dict[str, Any] = {"layout": _layout(plans), "instances": out}
        if len(out) == 1:
            doc = {**out[0], **doc}  # one instance: its keys at the top too, as before `instances` existed
        print(json.dumps(doc, indent=2))
        return 0
    _print_human(plans, specs)
    return 0


def _layout(plans: list[InstancePlan]) -> dict[str, Any]:
    """How the host's GPUs are split: mode, replica size and count, and the total KV capacity."""
    replicas = sum(p.data_parallel_size for p in plans)
    return {
        "mode": plans[0].layout,
        "tensor_parallel_size": plans[0].tensor_parallel_size,
        "replicas": replicas,
        "containers": len(plans),
        "gpu_indices": sorted(i for p in plans for i in p.gpu_indices),
        "total_kv_cache_tokens": sum(p.capacity.kv_cache_tokens * p.data_parallel_size for p in plans),
        "total_max_concurrency": round(sum(p.capacity.max_concurrency * p.data_parallel_size for p in plans), 2),
    }


def _plan_json(plan: InstancePlan, spec: dict[str, Any]) -> dict[str, Any]:
    """One instance (container); kv_cache_tokens and max_concurrency are per replica (what each vLLM engine
    prints at start-up), total_* over its data_parallel_size replicas."""
    cap = plan.capacity
    return {
        "container_name": plan.container_name,
        "vllm_image": plan.image,
        "vllm_version": plan.vllm_version,
        "vllm_args": plan.vllm_args,
        "env": plan.env,
        "gpu_indices": plan.gpu_indices,
        "port": plan.port,
        "tensor_parallel_size": plan.tensor_parallel_size,
        "data_parallel_size": plan.data_parallel_size,
        "max_model_len": plan.max_model_len,
        "kv_cache_gib_per_gpu": round(cap.kv_cache_gib_per_gpu, 2),
        "kv_cache_tokens": cap.kv_cache_tokens,
        "max_concurrency": round(cap.max_concurrency, 2),
        "total_kv_cache_tokens": cap.kv_cache_tokens * plan.data_parallel_size,
        "total_max_concurrency": round(cap.max_concurrency * plan.data_parallel_size, 2),
        "capacity": asdict(cap),
        "docker_run": ["docker"] + docker_run_args(spec),
        "warnings": plan.warnings,
    }


def _print_human(plans: list[InstancePlan], specs: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    lay = _layout(plans)
    console.print(f"[bold]layout[/bold]: {lay['mode']}, {lay['replicas']} replica(s) of tensor parallel size "
                  f"{lay['tensor_parallel_size']} on GPU(s) {lay['gpu_indices']} in {lay['containers']} container(s); "
                  f"{lay['total_kv_cache_tokens']:,} KV tokens in all, {lay['total_max_concurrency']:.2f} full "
                  "sequences")
    for plan, spec in zip(plans, specs):
        console.print(f"[bold]{plan.container_name}[/bold]: vLLM {plan.vllm_version} ({plan.image}) on GPU(s) "
                      f"{plan.gpu_indices}, tensor parallel {plan.tensor_parallel_size}, data parallel "
                      f"{plan.data_parallel_size}, port {plan.port}")
        console.print(shlex.join(["docker"] + docker_run_args(spec)), soft_wrap=True, highlight=False)
        cap = plan.capacity
        table = Table(title="capacity of each replica (per GPU unless noted)")
        table.add_column("item")
        table.add_column("value", justify="right")
        for label, value in [
            ("usable memory (GiB)", cap.usable_gib_per_gpu), ("weights (GiB)", cap.weights_gib_per_gpu),
            ("activation peak (GiB)", cap.activation_gib_per_gpu), ("overhead (GiB)", cap.overhead_gib_per_gpu),
            ("KV cache (GiB)", cap.kv_cache_gib_per_gpu),
        ]:
            table.add_row(label, f"{value:.2f}")
        table.add_row("KV cache tokens (TP group)", f"{cap.kv_cache_tokens:,}")
        table.add_row(f"max concurrency @ {plan.max_model_len} tokens", f"{cap.max_concurrency:.2f}x")
        console.print(table)
        for warning in plan.warnings:
            console.print(f"[yellow]warning:[/yellow] {warning}")


if __name__ == "__main__":
    sys.exit(main())
