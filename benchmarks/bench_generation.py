"""Generation throughput through the Serve rollout path vs vLLM's own offline `LLM.generate`.

Same model, same prompts (arithmetic questions rendered with the Pólya catalogue and the chat
template), same sampling (fixed-length completions), same engine settings, measured in the same run.
Prints tokens/s of each and the ratio serve / offline (target >= 0.95). Each side is the best of its
passes: ``--rounds`` rounds, each starting the Serve path (Ray, Serve, the replica) and then the offline
engine afresh, ``--repeats`` timed passes each after a warm-up pass over all the prompts (the first pass
through a fresh engine, on either side, was 20-40% slower than the next: oneDNN builds its kernels for each
new batch shape). Alternating rounds because this 2-core machine's speed drifts by 10-20% over minutes
(offline alone: 357 to 497 tokens/s in one hour); one round per side let that drift decide the ratio.

The Serve path includes Ray's control plane, as `polya run` has it: Polya's local Ray settings
(`polya.serve.launch.LOCAL_RAY_ENV`, no dashboard) apply here too.

    .venv/bin/python benchmarks/bench_generation.py [--model builtin:smollm2-135m-instruct] [--prompts 64]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import time

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")


def build_prompts(model_path: str, n: int) -> list[str]:
    from transformers import AutoTokenizer

    from polya.data import arithmetic
    from polya.heuristics import CATALOGUE, render_prompt

    tok = AutoTokenizer.from_pretrained(model_path)
    qs = arithmetic(n, seed=11, difficulty=[1, 2, 3])
    return [render_prompt(tok, q.question, CATALOGUE[i % 16]) for i, q in enumerate(qs)]


def offline(model_path: str, prompts: list[str], max_tokens: int, repeats: int, dtype: str) -> list[float]:
    from vllm import LLM, SamplingParams

    from polya.hardware import usable_cpus, vllm_cpu_reserved_cores

    reserved = vllm_cpu_reserved_cores(usable_cpus())  # the engine setting the Serve path's VLLMEngine applies
    if reserved is not None:
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", str(reserved))
    llm = LLM(model=model_path, dtype=dtype, max_model_len=2048, max_num_seqs=64, seed=0, enforce_eager=True,
              enable_prefix_caching=True)
    params = SamplingParams(temperature=1.0, max_tokens=max_tokens, ignore_eos=True)  # as the stages ask: no logprobs
    llm.generate(prompts, params, use_tqdm=False)  # warm-up: every batch shape of the timed runs
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        runs.append(sum(len(o.outputs[0].token_ids) for o in outs) / (time.perf_counter() - t0))
    del llm
    import gc

    gc.collect()  # the engine's processes stop with the LLM object, before the next round starts one
    print(f"offline runs: {', '.join(f'{x:.1f}' for x in runs)} tokens/s", flush=True)
    return runs


def through_serve(model_path: str, prompts: list[str], max_tokens: int, repeats: int, dtype: str) -> list[float]:
    import ray
    from ray import serve

    from polya.engines.base import EngineConfig, Sampling
    from polya.serve.launch import ensure_ray, start_rollout
    from polya.stages.common import generate_all

    ensure_ray(num_cpus=2)
    cfg = EngineConfig(model=model_path, kind="vllm", dtype=dtype, max_model_len=2048, max_num_seqs=64,
                       enforce_eager=True)
    handle = start_rollout(cfg, name="bench", route_prefix="/bench")
    sampling = Sampling(temperature=1.0, max_tokens=max_tokens, ignore_eos=True, logprobs=False)
    asyncio.run(generate_all(handle, prompts, sampling, chunk=32, concurrency=2))  # warm-up, as offline's
    runs = []
    for _ in range(repeats):
        groups, dt = asyncio.run(generate_all(handle, prompts, sampling, chunk=32, concurrency=2))
        runs.append(sum(len(g[0]["token_ids"]) for g in groups) / dt)
    serve.shutdown()
    ray.shutdown()
    print(f"serve runs: {', '.join(f'{x:.1f}' for x in runs)} tokens/s", flush=True)
    return runs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="builtin:smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per side and round")
    ap.add_argument("--rounds", type=int, default=2, help="serve-then-offline rounds, each engine started afresh")
    ap.add_argument("--dtype", default="auto", help="auto: bfloat16 where this machine computes it natively")
    args = ap.parse_args()
    from polya.models import resolve

    path = resolve(args.model)
    prompts = build_prompts(path, args.prompts)
    from polya.hardware import resolve_dtype

    dtype = resolve_dtype(args.dtype)  # vLLM's own "auto" would mean the checkpoint's dtype
    serve_runs, offline_runs = [], []
    for r in range(args.rounds):
        s_runs = through_serve(path, prompts, args.max_tokens, args.repeats, dtype)
        o_runs = offline(path, prompts, args.max_tokens, args.repeats, dtype)
        print(f"round {r + 1}: serve {max(s_runs):.1f}, offline {max(o_runs):.1f} tokens/s "
              f"(ratio {max(s_runs) / max(o_runs):.3f})", flush=True)
        serve_runs += s_runs
        offline_runs += o_runs
    serve_tps, offline_tps = max(serve_runs), max(offline_runs)
    print(f"model={args.model} prompts={len(prompts)} max_tokens={args.max_tokens} (fixed length), best of "
          f"{args.rounds} rounds x {args.repeats} passes per side")
    print(f"serve path (Ray Serve handle -> AsyncLLM): {serve_tps:8.1f} tokens/s")
    print(f"baseline vLLM offline LLM.generate:        {offline_tps:8.1f} tokens/s")
    print(f"ratio serve/offline = {serve_tps / offline_tps:.3f}  (target >= 0.95)")


if __name__ == "__main__":
    main()
