"""
A tool, not a part of the model: the GPU check in one call. First the CUDA tests (`pytest -k cuda`
on tests/test_model.py and tests/test_train.py), then the GPU benchmarks at the Qwen2.5-0.5B and
1.5B shapes in bf16: greedy decode tokens/s, eager and compiled, against transformers' generate
and the bandwidth bound; training tokens/s and MFU; the frame loop of sampling in seconds of
audio per second. One table at the end. Sized to finish in under 8 minutes on one H100 (the
table's header gives the wall time).

    python bench_gpu.py                                  # on a CUDA machine
    python bench_gpu.py --device cpu --presets tiny      # the same code on a CPU, as a smoke test

Needs the test requirements (transformers) for the references; the shared helpers are bench.py's.
"""

import argparse
import os
import subprocess
import sys
import time
from dataclasses import asdict

import torch

from bench import copy_bandwidth, decode_bytes, hf_twin, packed_tta_batch, sync
from model import PRESETS, Qwen2, compile_step, decode_one
from utils import fail



def matmul_flops(device, dtype):
    """Measured dense matmul FLOP/s: the in-run reference for MFU (8192^3 on a GPU)."""
    n = 8192 if torch.device(device).type == "cuda" else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(10):
        a @ b
    sync(device)
    return 10 * 2 * n**3 / (time.perf_counter() - t)


def timed(fn, device, repeats=3):
    """(best seconds of `repeats` calls after one warm-up, the last result)."""
    out = fn()
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        out = fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best, out


@torch.no_grad()
def gpu_decode(preset, device, dtype, new_tokens=64, batch=1):
    """Greedy tokens/s, eager and compiled, against transformers' generate and the bound
    (bytes of weights a token over the measured copy bandwidth). Returns the table's rows."""
    torch.manual_seed(0)
    model = Qwen2(PRESETS[preset]).eval()
    ref = hf_twin(model).to(device, dtype)
    model.to(device, dtype)
    x = torch.randint(0, 1000, (batch, 16), device=device)
    runs = {"ours eager": lambda: model.generate(x, new_tokens),
            "ours compiled": lambda: model.generate(x, new_tokens, step=compiled),
            "transformers": lambda: ref.generate(x, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                                 do_sample=False, pad_token_id=0)}
    compiled = compile_step(decode_one, device)  # CUDA graphs on CUDA
    t = time.perf_counter()
    model.generate(x, new_tokens, step=compiled)  # compiles (and records the CUDA graph)
    print(f"decode {preset} {str(dtype)[6:]} on {device}, batch {batch}, {new_tokens} new tokens "
          f"(compiling took {time.perf_counter() - t:.1f} s)")
    nbytes = decode_bytes(model)
    bound = copy_bandwidth(device=device) / nbytes
    res = {name: timed(fn, device) for name, fn in runs.items()}
    for name, (sec, out) in res.items():
        same = int((out == res["transformers"][1]).all(0).cumprod(0).sum()) - x.shape[1]
        print(f"  {name:14s} {new_tokens / sec:8.1f} tok/s a row ({new_tokens / sec / bound:6.1%} of the bound); "
              f"its first {same} of {new_tokens} tokens equal transformers'")
    print(f"  bound: {nbytes / 1e9:.2f} GB of weights a token -> {bound:.0f} tok/s; compiled / transformers "
          f"{res['transformers'][0] / res['ours compiled'][0]:.2f}x, eager / transformers "
          f"{res['transformers'][0] / res['ours eager'][0]:.2f}x")
    ref = res["transformers"][0]
    return [(f"decode {name[5:]}", preset, f"{new_tokens / res[name][0]:.0f} tok/s",
             f"transformers {new_tokens / ref:.0f} tok/s; bound {bound:.0f} tok/s",
             f"{ref / res[name][0]:.2f}x; {new_tokens / res[name][0] / bound:.1%} of the bound")
            for name in ("ours eager", "ours compiled")]


def gpu_train(preset, device, rows, budget, peak_tflops=None, steps=5):
    """Training tokens/s and MFU of UALM at a Qwen2.5 shape, bf16 autocast and AdamW as train.py,
    eager (attention per packed sample) and compiled (one dense mask). FLOPs are counted by
    torch's FlopCounterMode on the eager step (attention within samples only, counted in full).
    Returns the table's rows."""
    from torch.utils.flop_counter import FlopCounterMode

    from model import UALM, UALMConfig
    from train import LossModule, to_device
    torch.manual_seed(0)
    backbone = PRESETS[preset]
    with torch.device(device):  # initialised where it runs
        cfg = UALMConfig(text_size=backbone.vocab_size, backbone=asdict(backbone), tie_audio=False)  # as from_qwen
        model = UALM(cfg)
    batch = to_device(packed_tta_batch(model.cfg, rows, budget), device)
    real = int((batch["doc"] >= 0).sum())
    kind = torch.device(device).type
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), fused=kind == "cuda")

    def step(net):  # train.py's: the model and its loss as one module (LossModule), compiled whole
        with torch.autocast(kind, dtype=torch.bfloat16):
            r = net(batch)
        (r["sum"] / r["n"]).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as counter:
        step(LossModule(model))
    flops = counter.get_total_flops()
    measured = matmul_flops(device, torch.bfloat16)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"train {preset} UALM ({n_params / 1e9:.2f}B params) on {device}, bf16 autocast, {rows} x {budget} "
          f"packed positions ({real / (rows * budget):.1%} real), {flops / real / 1e9:.2f} GFLOP a real token; "
          f"dense bf16 matmul measured at {measured / 1e12:.0f} TFLOP/s")
    table = []
    for name in ("eager", "compiled"):
        net = torch.compile(LossModule(model, dense_mask=True)) if name == "compiled" else LossModule(model)
        t = time.perf_counter()
        step(net)
        warm = time.perf_counter() - t
        sec, _ = timed(lambda: step(net), device, steps)
        peak = f", MFU {flops / sec / (peak_tflops * 1e12):.1%} of {peak_tflops:.0f} TFLOP/s" if peak_tflops else ""
        print(f"  {name:8s} {real / sec:9.0f} real tok/s, {flops / sec / measured:.1%} of the measured matmul rate"
              f"{peak} (first step {warm:.1f} s)")
        table.append((f"train {name}", preset, f"{real / sec:.0f} real tok/s",
                      (f"peak {peak_tflops:.0f}, " if peak_tflops else "") + f"matmul {measured / 1e12:.0f} TFLOP/s",
                      (f"MFU {flops / sec / (peak_tflops * 1e12):.1%}; " if peak_tflops else "")
                      + f"{flops / sec / measured:.1%} of matmul"))
    if kind == "cuda":
        print(f"  peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    return table


@torch.no_grad()
def gpu_sample(preset, device, dtype, seconds=5.0):
    """The LM's frame loop of sample.py (CFG 3: 2 rows) at a Qwen2.5 shape with random weights:
    seconds of audio per second, eager and with sample.py --compile's step, against the bound
    (the weights a frame step reads, once: the blocks and audio_head). Each
    codebook's pad row of audio_head is zeroed so that random weights never end a clip early:
    every run writes the same number of frames. Returns the table's rows."""
    import sample
    from codec import FRAME_RATE
    from model import ASSISTANT, AUDIO, BOS, INTERVAL, N_SPECIAL, N_STREAMS, UALM, UALMConfig
    torch.manual_seed(0)
    backbone = PRESETS[preset]
    with torch.device(device):
        cfg = UALMConfig(text_size=backbone.vocab_size, backbone=asdict(backbone), tie_audio=False)  # as from_qwen
        model = UALM(cfg).to(dtype).eval()
    model.audio_head.weight[::INTERVAL] = 0  # each interval's pad id
    rows = torch.zeros(32, N_STREAMS, dtype=torch.long)
    text = N_SPECIAL + torch.randint(0, 1000, (29,))  # a 32-token prompt: bos, text, <|assistant|> <|audio|>
    rows[:, 0] = torch.cat([torch.tensor([BOS]), text, torch.tensor([ASSISTANT, AUDIO])])
    frames = int(seconds * FRAME_RATE)
    eager, compiled = sample.decode_step, compile_step(sample.decode_step, device)
    skipped = (model.lm.model.embed_tokens.weight, model.lm.lm_head.weight, model.audio_embed.weight)  # a frame step
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters()  # reads 8 rows of audio_embed, no text row
                 if not any(p is t for t in skipped))
    bound = copy_bandwidth(device=device) / nbytes / FRAME_RATE  # x real time if a frame step read those bytes once
    print(f"sample: the LM's frame loop at {preset} shape, {str(dtype)[6:]} on {device}, CFG 3, {seconds:.0f} s clips")
    table = []
    for name, step in (("eager", eager), ("compiled", compiled)):
        g = torch.Generator(device=device).manual_seed(0)
        sec, codes = timed(lambda: sample.generate_audio(model, rows, cfg_scale=3.0, max_frames=frames,
                                                         generator=g, step=step), device)
        made = codes[0].shape[1] / FRAME_RATE
        print(f"  {name:8s} {made / sec:7.1f}x real time ({made / sec / bound:6.1%} of the bound, "
              f"{bound:.0f}x; goal: half of it compiled)")
        table.append((f"sample {name}", preset, f"{made / sec:.1f}x real time", f"bound {bound:.0f}x",
                      f"{made / sec / bound:.1%} of the bound"))
    return table


def cuda_tests(timeout=240):
    """The CUDA tests (`pytest -k cuda` on tests/test_model.py and tests/test_train.py) in a child
    process, before this one touches the GPU; their row gives pytest's summary line."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-k", "cuda", "tests/test_model.py", "tests/test_train.py"]
    r = subprocess.run(cmd, cwd=os.path.dirname(os.path.abspath(__file__)), capture_output=True, text=True,
                       timeout=timeout)
    summary = (r.stdout.strip().splitlines() or [f"pytest exited with {r.returncode}"])[-1].strip("= ")
    print(f"CUDA tests: {summary}")
    if r.returncode != 0:
        print(r.stdout[-4000:] + r.stderr[-2000:])
    return [("CUDA tests", "", "pytest -k cuda", "tests/test_model.py, test_train.py",
             summary if r.returncode == 0 else f"FAILED: {summary}")]


def print_table(rows, header=("check", "preset", "figure", "against", "ratio or status")):
    """One markdown table, its columns padded so it also reads as plain text."""
    w = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    for r in (header, ["-" * n for n in w], *rows):
        print("| " + " | ".join(f"{str(x):{n}s}" for x, n in zip(r, w)) + " |")


def bench_gpu(device, presets, peak_tflops):
    """The GPU check in one call: the CUDA tests, then decode, train and sample per preset, each
    part on its own so one failure leaves the rest; then one table of every figure. At the
    default sizes it finishes in under 8 minutes on one H100."""
    t0 = time.perf_counter()
    dtype = torch.bfloat16
    small = torch.device(device).type == "cpu"  # a smoke run of the same code
    parts = [("CUDA tests", "", cuda_tests)]
    parts += [("decode", p, lambda p=p: gpu_decode(p, device, dtype, new_tokens=16 if small else 64)) for p in presets]
    parts += [("train", p, lambda p=p: gpu_train(p, device, 2 if small else 8, 512 if small else 2048, peak_tflops,
                                                 steps=2 if small else 5)) for p in presets]
    parts += [("sample", p, lambda p=p: gpu_sample(p, device, dtype, seconds=1.0 if small else 5.0)) for p in presets]
    rows = []
    for check, preset, fn in parts:
        try:
            rows += fn()
        except Exception as e:  # report and go on: one failing part does not cost the others' figures
            print(f"  {check} {preset} FAILED: {type(e).__name__}: {e}")
            rows.append((check, preset, "", "", f"FAILED: {type(e).__name__}"))
        if not small:
            torch.cuda.empty_cache()
    name = "CPU" if small else torch.cuda.get_device_name()
    print(f"\nGPU check on {name}, torch {torch.__version__}: {time.perf_counter() - t0:.0f} s in all "
          "(sized for under 8 minutes on one H100)\n")
    print_table(rows)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="the device (cpu runs a smoke test of the same code)")
    p.add_argument("--presets", default="qwen2.5-0.5b,qwen2.5-1.5b", help="backbone shapes, comma-separated")
    p.add_argument("--peak_tflops", type=float, default=989.0,
                   help="the GPU's dense bf16 peak for MFU (989: H100 / H200 SXM); 0 for none")
    a = p.parse_args()
    if torch.device(a.device).type == "cuda" and not torch.cuda.is_available():
        fail("no CUDA GPU here; `--device cpu --presets tiny` runs the same check on the CPU as a smoke test")
    if unknown := [x for x in a.presets.split(",") if x not in PRESETS]:
        fail(f"--presets {','.join(unknown)}: not a backbone shape; choose from {', '.join(PRESETS)}")
    bench_gpu(a.device, a.presets.split(","), a.peak_tflops or None)
