"""The GPU side of the learner and the weight sync, for a lent one-GPU machine (CI has no GPU).

    python3 benchmarks/gpu_check.py [--shape llama-3b] [--repeats 5]    # PYTHONPATH=platform

Needs torch with CUDA (and, for part 3, DeepSpeed); no Ray, no vLLM. Five parts, each printing one result
line, a failure in one never stopping the next:

1. ``nccl-one-gpu``: the learner and a receiver on the same GPU try the NCCL broadcast of
   `polya.rl.weight_sync` (the receiver is forced onto the group route). NCCL is expected to refuse two
   ranks on one device; this is why a receiver on the learner's GPU takes CUDA IPC.
2. ``ipc-sync``: Llama-3.2-3B-shaped bf16 weights (or ``--shape``) go from a learner process to a receiver
   process on the same GPU by the real `send` / `receive_group` code (route ``ipc``); the receiver copies
   them into its own parameters, as vLLM's ``reload_weights`` does, and checks them bit for bit. Prints
   seconds per sync and the ratio against the host-staged baseline measured in the same run (GPU -> host
   bytes -> GPU, what ``weightSync: objectStore`` does before the object store adds its own copy).
3. ``learner-bf16``: a GRPO step of `polya.rl` (shared-prompt logprobs, clipped loss, k3 KL to a frozen
   reference) on a SmolLM2-shaped random model under DeepSpeed ZeRO-2 in bf16 on the GPU, then the
   gathered weights synced to a receiver process by IPC: loss finite, weights moved, receiver equal.
4. ``shared-prompt``: the learner's logprob pass with and without shared prompts on the GPU (8 groups of
   8, 256-token prompts, 128-token answers, forward + backward), and the ratio.
5. ``packed``: the packed (padding-free) pass against the padded shared-prompt one (``--packed`` shapes),
   and which of the two `polya.rl.packed.cheaper` picks there.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time
import traceback

import torch

from polya.rl import weight_sync as ws

SHAPES = {  # (hidden, intermediate, layers, vocab, kv_heads * head_dim)
    "llama-3b": (3072, 8192, 28, 128256, 1024),
    "smollm2-135m": (576, 1536, 30, 49152, 192),
}


def llama_state(shape: str, seed: int, device: str = "cuda") -> dict[str, torch.Tensor]:
    """Random weights with a Llama's names and shapes (tied embeddings: no lm_head), bf16."""
    h, inter, layers, vocab, kv = SHAPES[shape]
    g = torch.Generator(device=device).manual_seed(seed)

    def w(*s):
        return torch.randn(*s, generator=g, device=device, dtype=torch.float32).to(torch.bfloat16)

    state = {"model.embed_tokens.weight": w(vocab, h)}
    for i in range(layers):
        p = f"model.layers.{i}."
        state |= {p + "self_attn.q_proj.weight": w(h, h), p + "self_attn.k_proj.weight": w(kv, h),
                  p + "self_attn.v_proj.weight": w(kv, h), p + "self_attn.o_proj.weight": w(h, h),
                  p + "mlp.gate_proj.weight": w(inter, h), p + "mlp.up_proj.weight": w(inter, h),
                  p + "mlp.down_proj.weight": w(h, inter), p + "input_layernorm.weight": w(h),
                  p + "post_attention_layernorm.weight": w(h)}
    state["model.norm.weight"] = w(h)
    return state


def _sync(t0: float) -> float:
    torch.cuda.synchronize()
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------ receiver processes
def receiver(port: int, group: dict, versions: int, force_group: bool, want_seed: int | None, out) -> None:
    """Join ``versions`` successive groups as member 1, copy what arrives into own parameters, report."""
    try:
        group = dict(group)
        shape = group.pop("shape")
        torch.cuda.set_device(0)
        store = ws.open_store("127.0.0.1", port, master=False, timeout_s=120)
        params: dict[str, torch.Tensor] | None = None
        for v in range(1, versions + 1):
            spec = ws.GroupSpec.from_dict({**group, "version": v, "source_device": None if force_group
                                           else group["source_device"]})
            items = ws.receive(spec, store, 1, torch.device("cuda", 0))
            if params is None:
                params = {n: torch.empty_like(t) for n, t in items}
            for n, t in items:
                params[n].copy_(t)  # the engine's own parameters: reload_weights copies the same way
            del items
            torch.cuda.synchronize()
            ws.report(store, spec, 1)
        ok = None
        if want_seed is not None and params is not None:
            want = llama_state(shape, want_seed)
            ok = all(torch.equal(params[n], want[n]) for n in want) and set(params) == set(want)
        out.put(("ok", ok))
    except Exception as exc:  # noqa: BLE001
        out.put(("error", f"{type(exc).__name__}: {exc}".splitlines()[0][:300]))


def start_receiver(spec: ws.GroupSpec, versions: int, force_group: bool = False, want_seed: int | None = None,
                   shape: str = "llama-3b"):
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=receiver, args=(spec.port, {**spec.to_dict(), "shape": shape}, versions, force_group,
                                              want_seed, out))
    proc.start()
    return proc, out


def group_spec(store, state, version: int, timeout_s: float = 120) -> ws.GroupSpec:
    metas, buckets = ws.plan(state)
    device = next(iter(state.values())).device
    return ws.GroupSpec("127.0.0.1", store.port, 2, version, ws.backend_for(device), metas, buckets, timeout_s,
                        source_device=ws.device_uuid(device))


# ------------------------------------------------------------------------------------------------- parts
def _nccl_learner(out) -> None:
    try:
        torch.cuda.set_device(0)
        state = {"w": torch.ones(1024, device="cuda")}
        store = ws.open_store("127.0.0.1", 0, master=True, timeout_s=45)
        spec = group_spec(store, state, 1, timeout_s=45)
        proc, rout = start_receiver(spec, 1, force_group=True)  # its route: "group", as on another GPU
        try:
            ws.send(spec, store, state)
            ws.wait_loaded(store, spec)
            sent = "broadcast completed"
        except Exception as exc:  # noqa: BLE001
            sent = f"{type(exc).__name__}: {' '.join(str(exc).split())[:400]}"
        proc.join(60)
        got = rout.get(timeout=5) if not rout.empty() else ("?", "no answer")
        out.put(f"learner: {sent} | receiver: {got[0]} {got[1]}")
    except Exception as exc:  # noqa: BLE001
        out.put(f"learner setup: {type(exc).__name__}: {exc}")


def part_nccl_one_gpu() -> str:
    """In a child process (with its receiver child), so that a hung NCCL communicator cannot hold this one."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_nccl_learner, args=(out,))
    proc.start()
    proc.join(100)
    if proc.is_alive():
        proc.kill()
        return "hung for 100 s and was killed"
    return out.get(timeout=5) if not out.empty() else f"no answer (exit code {proc.exitcode})"


def part_ipc_sync(shape: str, repeats: int) -> str:
    state = llama_state(shape, seed=1)
    gib = sum(t.numel() * t.element_size() for t in state.values()) / 2**30
    store = ws.open_store("127.0.0.1", 0, master=True, timeout_s=120)
    spec0 = group_spec(store, state, 1)
    versions = repeats + 1
    proc, out = start_receiver(spec0, versions, want_seed=1, shape=shape)
    times = []
    for v in range(1, versions + 1):
        spec = ws.GroupSpec(**{**spec0.__dict__, "version": v})
        t0 = time.perf_counter()
        shared = ws.send(spec, store, state)
        ws.wait_loaded(store, spec)
        times.append(_sync(t0))
        del shared
    proc.join(120)
    status, ok = out.get(timeout=5)
    # baseline: host-staged, bytes through host memory and back (the objectStore path before Ray's own copy)
    import safetensors.torch

    host = []
    for _ in range(min(3, repeats)):
        t0 = time.perf_counter()
        blob = safetensors.torch.save({k: v.cpu() for k, v in state.items()})
        back = {k: v.to("cuda") for k, v in safetensors.torch.load(blob).items()}
        host.append(_sync(t0))
        del blob, back
    ipc, staged = sorted(times[1:])[len(times[1:]) // 2], sorted(host)[len(host) // 2]
    return (f"{shape}: {len(state)} tensors, {gib:.2f} GiB bf16; receiver {status}, bit-equal={ok}; "
            f"IPC {ipc:.3f} s/sync ({gib / ipc:.1f} GiB/s; all {', '.join(f'{t:.3f}' for t in times)}), "
            f"host-staged {staged:.3f} s -> ratio host-staged/IPC = {staged / ipc:.1f}x")


def _tiny_llama(shape: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    h, inter, layers, vocab, kv = SHAPES[shape]
    heads = h // 64
    cfg = LlamaConfig(hidden_size=h, intermediate_size=inter, num_hidden_layers=layers, vocab_size=vocab,
                      num_attention_heads=heads, num_key_value_heads=kv // 64, tie_word_embeddings=True,
                      max_position_embeddings=2048)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg)


def _groups(n_groups: int, group: int, prompt: int, answer: int, vocab: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    seqs = []
    for _ in range(n_groups):
        p = torch.randint(10, vocab, (prompt - int(torch.randint(0, prompt // 4, (1,), generator=g)),), generator=g).tolist()
        for _ in range(group):
            n = int(torch.randint(answer // 2, answer + 1, (1,), generator=g))
            seqs.append({"prompt_ids": p, "ids": torch.randint(10, vocab, (n,), generator=g).tolist(),
                         "adv": float(torch.randn(1, generator=g))})
    return seqs


def part_learner_bf16() -> str:
    import deepspeed

    from polya.rl.deepspeed_config import deepspeed_config
    from polya.rl.grpo import grpo_loss
    from polya.rl.rollout_batch import pack, response_logprobs
    from polya.rl.weights import full_state_dict

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    deepspeed.init_distributed(dist_backend="nccl")
    model = _tiny_llama("smollm2-135m").to(torch.bfloat16)
    ref = _tiny_llama("smollm2-135m").to(torch.bfloat16).cuda().eval()
    before = {k: v.detach().float().clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=deepspeed_config(2, "bf16", 8, 2, 1.0))
    seqs = _groups(2, 8, 200, 64, 49152)
    batches = [pack(seqs[:8], 0), pack(seqs[8:], 0)]
    losses = []
    t0 = time.perf_counter()
    for b in batches:
        b = b.to("cuda")
        with torch.no_grad():
            refp = response_logprobs(ref, b)[0]
        lp, ent = response_logprobs(engine, b, want_entropy=True)
        loss, st = grpo_loss(lp, lp.detach(), b.advantages, b.mask, ref_logp=refp, kl_coef=0.01)
        engine.backward(loss)
        engine.step()
        losses.append(st.loss)
    t_step = _sync(t0)
    state = full_state_dict(engine.module, device=engine.device)
    moved = max((state[k].float() - before[k].cuda()).abs().max().item() for k in state)
    store = ws.open_store("127.0.0.1", 0, master=True, timeout_s=120)
    spec = group_spec(store, state, 1)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_check_receiver, args=(store.port, spec.to_dict(),
                                                     {k: float(v.double().sum()) for k, v in state.items()}, out))
    proc.start()
    t1 = time.perf_counter()
    shared = ws.send(spec, store, state)
    ws.wait_loaded(store, spec)
    t_sync = _sync(t1)
    del shared
    proc.join(60)
    verdict = out.get(timeout=5)
    return (f"ZeRO-2 bf16 GRPO step (2 micro-batches of 8, KL 0.01): losses {[round(x, 4) for x in losses]}, "
            f"{t_step:.2f} s, max |dw| {moved:.2e}, dtype {next(engine.module.parameters()).dtype}; "
            f"IPC sync of {len(state)} tensors {t_sync:.3f} s, receiver: {verdict}")


def _check_receiver(port: int, group: dict, sums: dict[str, float], out) -> None:
    try:
        torch.cuda.set_device(0)
        items = ws.receive_group(group, 1)
        store = ws.open_store("127.0.0.1", port, master=False, timeout_s=60)
        bad = [n for n, t in items if abs(float(t.double().sum()) - sums[n]) > 1e-6 * (1 + abs(sums[n]))]
        route = ws.route_for(ws.GroupSpec.from_dict(group), ws.device_uuid("cuda"))
        del items
        ws.report(store, ws.GroupSpec.from_dict(group), 1)
        out.put(f"route={route}, {len(sums)} tensors, mismatches={bad[:3]}")
    except Exception as exc:  # noqa: BLE001
        out.put(f"error {type(exc).__name__}: {exc}")


def part_shared_prompt(shape: str = "smollm2-135m", groups: int = 8, group: int = 8, prompt: int = 256,
                       answer: int = 128) -> str:
    from polya.rl.grpo import token_logprobs
    from polya.rl.rollout_batch import pack, response_logits

    def response_logprobs(model, batch):  # the padded layouts only (shared prompt vs full): `part_packed` has the packed one
        return token_logprobs(response_logits(model, batch), batch.response_ids), None

    model = _tiny_llama(shape).to(torch.bfloat16).cuda().train()
    b = pack(_groups(groups, group, prompt, answer, SHAPES[shape][3]), 0)
    b = b.to("cuda")
    full = b.unshared()

    def step(batch) -> tuple[float, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        lp, _ = response_logprobs(model, batch)
        (lp * batch.mask).sum().backward()
        return _sync(t0), lp.detach()

    for _ in range(2):
        step(b), step(full)
    ts, tf = [], []
    for _ in range(5):
        ts.append(step(b)[0])
        tf.append(step(full)[0])
    diff = (step(b)[1] - step(full)[1]).abs()[b.mask.bool()].max().item()
    s, f = sorted(ts)[2], sorted(tf)[2]
    return (f"{shape}, {groups} groups x {group}, prompts <= {prompt}, answers <= {answer}, bf16 fwd+bwd: shared {s * 1e3:.1f} ms, full {f * 1e3:.1f} ms, "
            f"ratio full/shared = {f / s:.2f}x; max |logp diff| {diff:.3f} (bf16)")


def part_packed(shape: str = "smollm2-135m", groups: int = 4, group: int = 4, prompt: int = 192,
                answer: int = 128) -> str:
    """The packed learner pass (`polya.rl.packed`: no padding, a dense block-causal mask) against the padded
    shared-prompt one on the GPU, forward + backward, and which one `packed.cheaper` picks."""
    from polya.rl import packed
    from polya.rl.grpo import token_logprobs
    from polya.rl.rollout_batch import pack, response_logits

    model = _tiny_llama(shape).to(torch.bfloat16).cuda().train()
    b = pack(_groups(groups, group, prompt, answer, SHAPES[shape][3]), 0).to("cuda")
    runs = {"packed": lambda: packed.response_logprobs(model, b, False, 1.0)[0],
            "padded": lambda: token_logprobs(response_logits(model, b), b.response_ids)}

    def step(name) -> tuple[float, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        lp = runs[name]()
        (lp * b.mask).sum().backward()
        return _sync(t0), lp.detach()

    for _ in range(2):
        step("packed"), step("padded")
    times = {"packed": [], "padded": []}
    for _ in range(5):
        for name in times:
            times[name].append(step(name)[0])
    m = b.mask.bool()
    diff = (step("packed")[1] - step("padded")[1]).abs()[m].max().item()
    pk, pd = sorted(times["packed"])[2], sorted(times["padded"])[2]
    return (f"{shape}, {groups} groups x {group}, prompts <= {prompt}, answers {answer // 2}..{answer}, bf16 fwd+bwd: "
            f"packed {pk * 1e3:.1f} ms, padded {pd * 1e3:.1f} ms, padded/packed = {pd / pk:.2f}x; "
            f"cheaper() picks {'packed' if packed.cheaper(model.config, b) else 'padded'}; "
            f"max |logp diff| {diff:.3f} (bf16)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="llama-3b", choices=list(SHAPES))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--parts", default="nccl-one-gpu,ipc-sync,learner-bf16,shared-prompt,packed")
    ap.add_argument("--packed", default="smollm2-135m:4:4:192:128",
                    help="shape:groups:group:prompt:answer for the packed part, ';'-separated for several")
    ap.add_argument("--shared-prompt", default="smollm2-135m:8:8:256:128",
                    help="shape:groups:group:prompt:answer for the shared-prompt part, ';'-separated for several")
    args = ap.parse_args()
    import torch.cuda.nccl as nccl

    print(f"torch {torch.__version__}, NCCL {'.'.join(map(str, nccl.version()))}, {torch.cuda.get_device_name(0)}, "
          f"uuid {ws.device_uuid('cuda')}", flush=True)
    parts = {"nccl-one-gpu": part_nccl_one_gpu, "ipc-sync": lambda: part_ipc_sync(args.shape, args.repeats),
             "learner-bf16": part_learner_bf16,
             "shared-prompt": lambda: " || ".join(
                 part_shared_prompt(c.split(":")[0], *map(int, c.split(":")[1:])) for c in args.shared_prompt.split(";")),
             "packed": lambda: " || ".join(
                 part_packed(c.split(":")[0], *map(int, c.split(":")[1:])) for c in args.packed.split(";"))}
    for name in args.parts.split(","):
        t0 = time.perf_counter()
        try:
            line = parts[name]()
        except Exception as exc:  # noqa: BLE001
            line = f"FAILED {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}"
        print(f"[{name}] ({time.perf_counter() - t0:.0f} s) {line}", flush=True)


if __name__ == "__main__":
    main()
