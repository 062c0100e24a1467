"""
Train every part of UALM on the toy world (or on real data in the same manifest formats).

    python data.py --out toy_data --n 2000          # the world, once
    python train.py --stage clap               # contrastive audio-text model; the LM's ears
    python train.py --stage codec              # the RVQ codec the LM writes in
    python train.py --stage vae                # 16 kHz mono codec output -> 48 kHz stereo
    python train.py --stage gen                # UALM-Gen: text-to-audio only
    python train.py --stage align              # LM frozen: the adapter learns to feed it audio
    python train.py --stage pretrain           # the unified mixture
    python train.py --stage sft                # + enrichment, dialogue, self-reflection
    python train.py --stage dpo                # preference pairs of its own samples, CLAP-ranked
    python train.py --stage all                # all of the above in order (makes the world if needed)
    python train.py --stage und                # an understanding-only LM, for eval.py --replicate

Each stage reads the manifests in --data, writes its checkpoint into --out atomically
and prints its evaluation on held-out clips (the last --n_eval clips of the manifest).
The LM's parts are the toy ones unless --init_from (a Qwen2.5 folder: its weights and its
tokenizer), --codec (an X-codec folder) or --encoder (a Whisper folder) name real ones
(parts.py); the first LM stage records them and every later stage reads them from the run.
Under torchrun the LM trains with DDP, or FSDP2 with --fsdp.
"""

import argparse
import json
import os
import time
from contextlib import nullcontext
from dataclasses import asdict
from multiprocessing import Pool

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_optimizer_state_dict)
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

import clap as clap_lib
import codec as codec_lib
import tasks
import vae as vae_lib
from checkpoint import load_ckpt, load_module, optimizer_state, optimizer_tensors, save_checkpoint, save_ckpt
from data import SerialPool, load_audio
from dpo import REWARDS, train_dpo
from model import DTYPES, N_SPECIAL, PRESETS, UALM, UALMConfig
from parts import CACHED, adopt, check_folder, check_tokenizer, describe, load_codec, load_ears, parts_of
from sequences import (build, cfg_dropout, codebook_weights, collate, corrupt_codes, loss_sums, n_loss_positions,
                       pack)
from tasks import generation_clips, get_tokenizer, lm_data
from utils import atomic_path, fail, learning_rate

STAGES = ["clap", "codec", "vae", "gen", "align", "pretrain", "sft", "dpo"]
LM_STAGES = {"gen": None, "align": "gen", "pretrain": "align", "sft": "pretrain",  # stage: the one it starts from
             "und": None}  # the understanding-only specialist of the replication table, not in --stage all
# token shares of each stage's mixture (pretrain: SPEC.md section 5, by tokens)
MIXTURES = {
    "gen": {"tta": 1.0},
    "align": {"understand": 1.0},
    "pretrain": {"understand": 0.392, "tta": 0.331, "text": 0.277},
    "sft": {"enrich": 0.2, "dialogue": 0.15, "reflect": 0.15, "understand": 0.2, "tta": 0.17, "text": 0.13},
    "und": {"understand": 1.0},
}
TOY_CB1_WEIGHT = 0.5  # codebook 1's share of a frame's loss for the toy LM (sequences.codebook_weights)
TOY_INPUT_NOISE = 0.1  # the share of the toy LM's input audio codes made random (sequences.corrupt_codes)
CFG_TASKS = ("tta", "enrich", "dialogue")  # tasks whose audio also trains the unconditional branch


def mono(row):
    return load_audio(row["location"], sr=codec_lib.SAMPLE_RATE, mono=True)


def stereo_pair(row, x):
    """(16 kHz mono (N,), its 48 kHz stereo master zero-padded or cut to (2, 3N))."""
    master = load_audio(row["master_location"], sr=vae_lib.MASTER_SR, mono=False)
    n = vae_lib.UPSAMPLE * len(x)
    return x, np.pad(master, ((0, 0), (0, max(0, n - master.shape[-1]))))[:, :n]


def stage_codec(args):
    if args.codec:
        raise ValueError(f"--codec {args.codec} is a trained X-codec, and --stage codec fits the toy codec; "
                         "drop --codec, or skip this stage")
    train, held = generation_clips(args)
    clips = [mono(r) for r in train[:args.codec_clips]]
    teacher = None
    if codec_lib.CODEC_PRESETS[args.codec_preset].teacher == "encoder":  # CLAP's audio tower hears the events
        path = os.path.join(args.out, "clap.pt")
        if not os.path.isfile(path):
            fail(f"{path} not found: the {args.codec_preset} codec's semantic teacher is CLAP's audio tower; run "
                 "`python train.py --stage clap` first")
        teacher = clap_lib.Clap.from_checkpoint(path).audio
    t = time.time()
    model = codec_lib.train_codec(args.out, clips, args.codec_preset, seed=args.seed, teacher=teacher)
    print(f"codec: fitted to {len(clips)} clips in {time.time() - t:.0f} s -> {args.out}/codec.pt")
    result = codec_lib.evaluate_codec(model, [(mono(r), r["events"]) for r in held])
    print(f"codec on {len(held)} held-out clips: multi-resolution log-mel distance {result['log_mel_distance']:.3f}, "
          f"semantic error {result['semantic_error']:.3f}")
    for key in result["original"]:
        print(f"  analyzer {key:>7}: original {100 * result['original'][key]:5.1f}%   "
              f"reconstruction {100 * result['reconstruction'][key]:5.1f}%")


def stage_vae(args):
    path = os.path.join(args.out, "codec.pt")
    if not args.codec and not os.path.isfile(path):
        fail(f"{path} not found: the VAE learns to enhance the codec's output; run `python train.py --stage codec` "
             "first, or pass --codec")
    codec = load_codec(parts_of(args), args.out)
    train, held = generation_clips(args)
    pairs = [stereo_pair(r, mono(r)) for r in train[:args.vae_clips]]
    t = time.time()
    model = vae_lib.train_vae(args.out, pairs, args.vae_preset, seed=args.seed, codec=codec, steps=args.vae_steps)
    print(f"vae: trained on {len(pairs)} codec round trips in {time.time() - t:.0f} s -> {args.out}/vae.pt")
    print(vae_lib.report(vae_lib.evaluate_vae(model, [stereo_pair(r, mono(r)) for r in held], codec)))


# ----------------------------------------------------------------------------- clap


def stage_clap(args):
    tok = get_tokenizer(args)
    train, held = generation_clips(args)
    clips = [(mono(r), r) for r in tqdm(train, desc="clap: loading clips")]
    model = clap_lib.train_clap(clips, tok, args.clap_steps, args.clap_lr, args.clap_batch, args.seed)
    save_checkpoint(os.path.join(args.out, "clap.pt"), model, args.clap_steps)
    r = clap_lib.evaluate_clap(model, [(mono(r), r) for r in held], tok)
    print(f"clap on {len(held)} held-out clips: audio->caption top-1 retrieval {100 * r['top1']:.1f}% "
          f"(chance {100 / len(held):.1f}%), mean CLAP score of true pairs {r['true_pairs']:.3f}; "
          f"its tagger hears exactly the clip's events in {100 * r['exact_events']:.1f}%")


# ----------------------------------------------------------------------------- the LM's data


_PARTS = {}  # in each cache worker: the codec and the ears (parts.py)


def _load_parts(out, parts, one_thread=True):
    if one_thread:  # one process per core beats two threads on these small convs
        torch.set_num_threads(1)
    _PARTS["codec"], _PARTS["ears"] = load_codec(parts, out), load_ears(parts, out)


@torch.no_grad()
def _cache_clip(path):
    """One clip -> (path, codec codes (8, T) int16, encoder frames (T25, d) fp16), as numpy
    arrays: a tensor sent back from a worker travels as shared memory that holds one open file
    for as long as the tensor lives, and tens of thousands of clips would run out of them."""
    x = torch.from_numpy(load_audio(path))
    return path, _PARTS["codec"].encode(x[None])[0].short().numpy(), _PARTS["ears"].listen([x])[0][0].half().numpy()


def audio_cache(args, data):
    """Codec codes and encoder frames of every clip, computed once (one process per core) with
    the run's codec and ears: runs/cache.pt, {"codes": {path: (8, T) int16}, "feats": {path:
    (T25, d) fp16}, "parts": {"codec": folder or None, "encoder": folder or None}}."""
    path = os.path.join(args.out, "cache.pt")
    parts = parts_of(args)
    if os.path.isfile(path):
        cache = load_ckpt(path, "audio cache", f"python train.py --stage {args.stage}")
        made = cache.get("parts", dict.fromkeys(CACHED))
        if made != {flag: parts[flag] for flag in CACHED}:
            raise ValueError(f"{path} holds the codes and frames of other parts ({describe(made)}) than this run's; "
                             "train with the parts it was made with, or delete it")
        return cache
    paths = sorted({r["location"] for r in data["tta"][0] + data["tta"][1]}
                   | {r["location"] for part in data["reflect"] for r in part})
    cache = {"kind": "audio cache", "codes": {}, "feats": {}, "parts": {flag: parts[flag] for flag in CACHED}}
    workers = min(os.cpu_count() or 1, 8)
    with Pool(workers, initializer=_load_parts, initargs=(args.out, parts)) if workers > 1 else SerialPool() as pool:
        if workers == 1:
            _load_parts(args.out, parts, one_thread=False)
        for p, codes, feats in tqdm(pool.imap(_cache_clip, paths, chunksize=16), total=len(paths),
                                    desc="caching codec codes and encoder frames"):
            cache["codes"][p], cache["feats"][p] = torch.from_numpy(codes), torch.from_numpy(feats)
    save_ckpt(path, cache)
    return cache


class Stream:
    """The stage's training samples in a fixed order: sample i is a pure function of
    (seed, i), so a run resumes exactly from a saved position."""

    def __init__(self, items, mixture, cache, tok, cfg, seed, cfg_dropout_p=0.05, n_probe=32):
        self.items, self.cache, self.tok, self.cfg, self.seed = items, cache, tok, cfg, seed
        self.deferred = {}  # i -> sample i, built once while it waits for a row with room
        self.names, self.p_cfg = sorted(mixture), cfg_dropout_p
        # token shares -> sample probabilities: divide by each task's mean length
        mean = [np.mean([len(self.make(n, items[n][j % len(items[n])], 0)) for j in range(n_probe)])
                for n in self.names]
        w = np.array([mixture[n] / m for n, m in zip(self.names, mean)])
        self.probs = w / w.sum()

    def make(self, task, item, flip):
        if task == "reflect":
            return build(tasks.reflect(item, self.cache, flawed=flip < 0.75), self.tok.encode, self.cfg)
        if task == "understand":  # the clip's questions in an order drawn from flip
            order = np.random.default_rng(int(flip * 2**32)).permutation(len(item))
            return build(tasks.understand(item, self.cache, order), self.tok.encode, self.cfg)
        s = build(getattr(tasks, task)(item, self.cache), self.tok.encode, self.cfg)
        return cfg_dropout(s) if task in CFG_TASKS and flip < self.p_cfg else s

    def sample(self, i):
        rng = np.random.default_rng([self.seed, i])
        task = self.names[rng.choice(len(self.names), p=self.probs)]
        return self.make(task, self.items[task][rng.integers(len(self.items[task]))], rng.random())

    def batch(self, state, rows, budget, lookahead=64):
        """The next samples best-fitted into `rows` rows of `budget` positions (sequences.pack).
        state = (next position, positions deferred earlier) -> (batch, new state): a sample
        that fits nowhere waits for the next batch, first in line."""
        pos, pending = state

        def next_sample():
            nonlocal pos, pending
            if pending:
                i, pending = pending[0], pending[1:]
            else:
                i, pos = pos, pos + 1
            return i, (self.deferred.pop(i) if i in self.deferred else self.sample(i))

        samples, bins, deferred = pack(next_sample, rows, budget, lookahead)
        self.deferred.update(deferred)
        return collate(samples, bins, budget), (pos, [i for i, _ in deferred] + pending)


# ----------------------------------------------------------------------------- the loop


def lm_model(args, tok, audio_dim):
    """A fresh toy model, a Qwen2.5 checkpoint extended, or the previous stage's weights."""
    prev = LM_STAGES[args.stage]
    if prev:
        return load_module(UALM, UALMConfig, os.path.join(args.out, f"{prev}.pt"), f"python train.py --stage {prev}",
                           stage=prev).train()
    if args.init_from:
        return UALM.from_qwen(args.init_from, audio_dim)
    torch.manual_seed(args.seed)  # the same init whether or not this run built the cache (building draws)
    return UALM(UALMConfig(text_size=tok.vocab_size, audio_dim=audio_dim, backbone=asdict(PRESETS[args.preset])))


def set_trainable(args, model):
    """Everything trains, except in align: only the adapter, and with --init_from the embedding
    rows Qwen did not have (the specials; the pretrained text rows get a zero gradient) and the
    audio embedding."""
    if args.stage != "align":
        return
    model.requires_grad_(False)
    model.adapter.requires_grad_(True)
    if args.init_from:
        model.audio_embed.requires_grad_(True)
        emb = model.lm.model.embed_tokens.weight.requires_grad_(True)
        text_rows = torch.zeros(emb.shape[0], 1, dtype=emb.dtype, device=emb.device)
        text_rows[N_SPECIAL:] = 1
        emb.register_hook(lambda g: g * (1 - text_rows))


def stage_lm(args):
    rank, world = distributed(args)
    source = args.stage if args.resume else LM_STAGES[args.stage]  # a checkpoint of this run, if any
    if source:  # the run's parts, as its checkpoint recorded them
        adopt(args, os.path.join(args.out, f"{source}.pt"), f"python train.py --stage {source}", source)
    if args.cb1_weight is None:  # the release's 1/8 for Qwen; the toy, from random weights, weighs up the plan
        args.cb1_weight = None if args.init_from else TOY_CB1_WEIGHT
    if args.input_noise is None:  # the release trains on clean codes; the toy on a share of noisy ones
        args.input_noise = 0.0 if args.init_from else TOY_INPUT_NOISE
    if rank > 0:
        dist.barrier()  # rank 0 writes the cache and the tokenizer; the others then read them
    data = lm_data(args)
    cache = audio_cache(args, data)
    tok = get_tokenizer(args)
    if rank == 0 and world > 1:
        dist.barrier()
    audio_dim = next(iter(cache["feats"].values())).shape[-1]
    model = lm_model(args, tok, audio_dim)
    check_tokenizer(tok, model.cfg.text_size, args.init_from or os.path.join(args.out, "tokenizer"))
    mix = MIXTURES[args.stage]
    items = {t: data[t][0] for t in mix}
    stream = Stream(items, mix, cache, tok, model.cfg, args.seed)
    held = Stream({t: data[t][1] for t in mix}, mix, cache, tok, model.cfg, args.seed + 1, cfg_dropout_p=0.0)
    fit(args, model, stream, held)


def to_device(batch, device):
    return {k: (v.to(device) if v is not None else None) for k, v in batch.items()}


class LossModule(torch.nn.Module):
    """The model and its loss in one forward, so DDP / FSDP see every parameter used.
    dense_mask: packed samples kept apart by one (T, T) mask per row, fixed shapes for
    torch.compile (sequences.attention)."""

    def __init__(self, model, dense_mask=False, weights=None):
        super().__init__()
        self.model, self.dense_mask, self.weights = model, dense_mask, weights

    def forward(self, batch):
        return loss_sums(self.model, batch, self.dense_mask, self.weights)


def distributed(args):
    """(rank, world size). Under torchrun: one process per GPU (nccl), or on CPU (gloo)."""
    if "RANK" not in os.environ:
        return 0, 1
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    cuda = args.device.startswith("cuda")
    dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        args.device = f"cuda:{os.environ['LOCAL_RANK']}"
        torch.cuda.set_device(args.device)
    return dist.get_rank(), dist.get_world_size()


def wrap(args, model, world):
    net = LossModule(model, dense_mask=args.compile, weights=codebook_weights(args.cb1_weight))
    if world == 1:
        return net
    if args.fsdp:  # shard every block, then the rest: parameters, grads and AdamW state split over ranks
        for block in model.lm.model.layers:
            fully_shard(block)
        return fully_shard(net)
    return DDP(net, find_unused_parameters=True)  # a batch without heard audio leaves the adapter unused


def fit(args, model, stream, held):
    """AdamW (0.9, 0.95), warmup + cosine, grad accumulation, clip 1.0, bf16 autocast on
    CUDA, atomic checkpoints with everything needed to resume exactly. Each optimizer step
    takes grad_accum x world micro-batches; rank r runs every world-th of them."""
    rank, world = distributed(args)
    device = args.device
    model.to(device)
    set_trainable(args, model)
    path, log_path = os.path.join(args.out, f"{args.stage}.pt"), os.path.join(args.out, f"{args.stage}.log.jsonl")
    step, state, log, ck = 0, (0, []), [], None
    if args.resume:  # main() has checked that the checkpoint exists
        ck = load_ckpt(path, "UALM", f"python train.py --stage {args.stage}", args.stage)
        if ck["config"] != asdict(model.cfg):
            raise ValueError(f"{path} holds a model of another shape than this run's; resume with the arguments "
                             "it was started with (--preset, --vocab_size), or drop --resume")
        model.load_state_dict(ck["model"])
        step, state, log = ck["step"], ck["data_state"], ck["log"]
        torch.set_rng_state(ck["rng"])
        print(f"{args.stage}: resuming at step {step}")
    net = wrap(args, model, world)
    params = [p for p in model.parameters() if p.requires_grad]  # after wrap: FSDP swaps in sharded ones
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=args.weight_decay)
    if ck is not None:
        load_optimizer(args, model, opt, optimizer_state(ck["optimizer"], ck["param_groups"]))
    dtype = autocast_dtype(args)
    autocast = torch.autocast(device.split(":")[0], dtype=dtype) if dtype != torch.float32 else nullcontext()
    # fp16 has 5 exponent bits: the loss is scaled up before backward so small gradients do not
    # flush to zero, and unscaled before clipping; a step whose gradients overflowed is skipped
    scaler = torch.amp.GradScaler(device.split(":")[0], enabled=dtype == torch.float16)
    model.lm.model.checkpointing = args.checkpointing
    if args.compile:
        net = torch.compile(net)
    bar = tqdm(range(step, args.steps), desc=args.stage, initial=step, total=args.steps, disable=rank > 0)
    start = time.time() - (log[-1].get("time", 0.0) if log else 0.0)  # training seconds so far, across resumes
    for step in bar:
        t0 = time.time()
        for g in opt.param_groups:
            g["lr"] = learning_rate(step, args.steps, args.lr, args.warmup)
        batches = []
        for _ in range(args.grad_accum * world):
            b, state = stream.batch(state, args.rows, args.budget)
            batches.append(b)
        n = sum(n_loss_positions(b) for b in batches)  # normalise by the whole step's positions
        mine = batches[rank::world]
        stats = torch.zeros(11)  # loss, 8 codebook CE sums, frames, real tokens
        for i, b in enumerate(mine):
            sync = nullcontext() if world == 1 or args.fsdp or i == len(mine) - 1 else net.no_sync()
            if args.input_noise:  # drawn for this step's micro-batch, whichever rank runs it (resume, DDP exact)
                noise = torch.Generator().manual_seed(args.seed * 1_000_003 + step * 1009 + rank + i * world)
                b = dict(b, noisy=corrupt_codes(b["ids"], b["kind"].long(), model.cfg, args.input_noise, noise))
            with sync, autocast:
                r = net(to_device(b, device))
            scaler.scale(r["sum"] * world / n).backward()  # DDP averages over ranks; * world makes it the sum
            stats += torch.cat([(r["sum"] / n).detach().float().cpu()[None], r["codebooks"].detach().float().cpu(),
                                torch.tensor([float(r["frames"]), float((b["doc"] >= 0).sum())])])
        if world > 1:
            dist.all_reduce(stats)
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        row = {"step": step + 1, "loss": stats[0].item(), "tok_s": stats[10].item() / (time.time() - t0),
               "fill": stats[10].item() / (len(batches) * args.rows * args.budget),
               "ce_codebooks": (stats[1:9] / stats[9].clamp(min=1)).tolist(), "time": time.time() - start}
        if rank == 0 and args.eval_every and ((step + 1) % args.eval_every == 0 or step + 1 == args.steps):
            row["eval_loss"] = evaluate(model, held, args, device, autocast)
        log.append(row)
        bar.set_postfix(loss=f"{row['loss']:.3f}", tok_s=f"{row['tok_s']:.0f}", **(
            {"eval": f"{row['eval_loss']:.3f}"} if "eval_loss" in row else {}))
        keep = args.keep_every and (step + 1) % args.keep_every == 0
        if keep or (step + 1) % args.save_every == 0 or step + 1 in (args.steps, args.stop_at):
            model_state, opt_state = full_state(args, model, opt)
            if rank == 0:
                opt_tensors, param_groups = optimizer_tensors(opt_state)
                ck = {"kind": "UALM", "stage": args.stage, "config": asdict(model.cfg), "args": vars(args),
                      "step": step + 1, "model": model_state, "optimizer": opt_tensors, "param_groups": param_groups,
                      "data_state": state, "rng": torch.get_rng_state(), "log": log}
                save_ckpt(path, ck)
                with atomic_path(log_path) as tmp, open(tmp, "w") as f:
                    f.writelines(json.dumps(r) + "\n" for r in log)
                if keep:  # a learning curve's point: the weights alone, beside the stage's checkpoint
                    save_ckpt(os.path.join(args.out, f"{args.stage}_step{step + 1:06d}.pt"),
                              {k: ck[k] for k in ("kind", "stage", "config", "args", "step", "model")})
        if step + 1 == args.stop_at:
            break
    if world > 1:
        dist.destroy_process_group()


def autocast_dtype(args):
    """--dtype -> the autocast dtype of the forward pass (weights and optimizer stay fp32):
    auto is bf16 on CUDA and fp32 on CPU; fp16 is for GPUs without bf16 (it needs a GradScaler)."""
    if args.dtype == "auto":
        return torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    return DTYPES[args.dtype]


def full_state(args, model, opt):
    """Whole model and optimizer states (under FSDP every rank gathers its shards, onto the CPU);
    save_ckpt keeps the optimizer's tensors in a section and its param_groups as JSON
    (checkpoint.optimizer_tensors)."""
    if args.fsdp and dist.is_initialized():
        o = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(model, options=o), get_optimizer_state_dict(model, opt, options=o)
    return model.state_dict(), opt.state_dict()  # tied tensors stay one tensor: save_ckpt writes them once


def load_optimizer(args, model, opt, state):
    """The inverse of full_state's optimizer half. A parameter that never had a gradient (the
    adapter in gen, where no audio is heard) has no state saved: strict=False lets FSDP load the
    others and leave it without state, as opt.load_state_dict does."""
    if args.fsdp and dist.is_initialized():
        o = StateDictOptions(full_state_dict=True, broadcast_from_rank0=False, strict=False)
        set_optimizer_state_dict(model, opt, optim_state_dict=state, options=o)
    else:
        opt.load_state_dict(state)


@torch.no_grad()
def evaluate(model, held, args, device, autocast, n_batches=4, rows=2):
    """Loss on held-out samples: always the same ones, whatever --rows (packed `rows` at a time)."""
    model.eval()
    total, n, state = 0.0, 0, (0, [])
    for _ in range(n_batches):
        b, state = held.batch(state, rows, args.budget)
        with autocast:
            r = loss_sums(model, to_device(b, device))
        total, n = total + float(r["sum"]), n + int(r["n"])
    model.train()
    return total / max(1, n)


def stage_all(args):
    """The whole toy pipeline in order, skipping stages that already have a checkpoint."""
    if not os.path.isfile(os.path.join(args.data, "generation.jsonl")):
        from data import write_dataset
        t = time.time()
        write_dataset(args.data, args.n_clips, seed=args.seed, workers=os.cpu_count() or 1)
        print(f"data: {args.n_clips} clips in {time.time() - t:.0f} s -> {args.data}")
    table, steps = [], args.steps
    for name in STAGES:
        if os.path.isfile(os.path.join(args.out, f"{name}.pt")):
            print(f"{name}: {args.out}/{name}.pt exists, skipped")
            continue
        if name == "codec" and args.codec:
            print(f"codec: --codec {args.codec}, nothing to fit")
            continue
        args.stage, args.steps = name, steps or STAGE_STEPS.get(name, 0)
        t = time.time()
        STAGE_FNS[name](args)
        table.append((name, time.time() - t))
    print("\nstage      minutes")
    for name, sec in table:
        print(f"{name:10s} {sec / 60:7.1f}")
    print(f"{'total':10s} {sum(s for _, s in table) / 60:7.1f}")


# und: about the understanding steps UALM gets (align 100 + 39% of pretrain + 20% of sft)
STAGE_STEPS = {"gen": 900, "align": 100, "pretrain": 700, "sft": 300, "und": 430}


STAGE_FNS = {"codec": stage_codec, "vae": stage_vae, "clap": stage_clap, "dpo": train_dpo,
             **{s: stage_lm for s in LM_STAGES}}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--stage", required=True, choices=STAGES + ["und", "all"],
                   help="und: an understanding-only LM from scratch (eval.py --replicate compares it with UALM)")
    p.add_argument("--n_clips", type=int, default=2000, help="--stage all: clips of the toy world to make if --data is empty")
    p.add_argument("--data", default="toy_data", help="folder written by data.py (or real data in its formats)")
    p.add_argument("--out", default="runs", help="folder for checkpoints")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n_eval", type=int, default=50, help="held-out clips: the last n of the manifest")
    p.add_argument("--codec_preset", default="toy", choices=list(codec_lib.CODEC_PRESETS))
    p.add_argument("--codec_clips", type=int, default=None, help="clips the codec is fitted to (default: all training clips)")
    p.add_argument("--vae_preset", default="toy", choices=list(vae_lib.VAE_PRESETS))
    p.add_argument("--vae_steps", type=int, default=None, help="default: the preset's")
    p.add_argument("--vae_clips", type=int, default=200, help="training clips for the VAE")
    p.add_argument("--clap_steps", type=int, default=900)
    p.add_argument("--clap_batch", type=int, default=16)
    p.add_argument("--clap_lr", type=float, default=1e-3)
    d = p.add_argument_group("dpo")
    d.add_argument("--dpo_prompts", type=int, default=40, help="training captions to sample for")
    d.add_argument("--dpo_reward", default="clap", choices=REWARDS,
                   help="what ranks each caption's samples: CLAP (the paper's first round; -> dpo.pt) or the toy "
                        "world's analyzer, adherence to the caption (its second round; -> dpo_analyzer.pt)")
    d.add_argument("--dpo_samples", type=int, default=4, help="samples per caption, ranked by --dpo_reward")
    d.add_argument("--dpo_min_gap", type=float, default=0.02, help="keep pairs whose reward gap exceeds this")
    d.add_argument("--dpo_steps", type=int, default=100)
    d.add_argument("--dpo_warmup", type=int, default=30, help="steps of cross-entropy on winners first")
    d.add_argument("--dpo_beta", type=float, default=0.1)
    d.add_argument("--dpo_ce", type=float, default=0.2, help="weight of the winners' CE during DPO")
    d.add_argument("--dpo_lr", type=float, default=3e-5,
                   help="small: 100 steps over a few dozen pairs must not pull the policy far from the reference")
    g = p.add_argument_group("the language model (gen, align, pretrain, sft)")
    g.add_argument("--init_from", default=None, help="a Qwen2.5 checkpoint folder (HF format) to start from, and "
                   "its tokenizer (default: the --preset shape and a SentencePiece tokenizer)")
    g.add_argument("--codec", default=None, help="an X-codec folder (HF XcodecModel) to write audio in (default: "
                   "the toy codec, runs/codec.pt)")
    g.add_argument("--encoder", default=None, help="a Whisper folder whose frozen encoder the LM hears through "
                   "(default: CLAP's audio tower, runs/clap.pt)")
    g.add_argument("--preset", default="tiny", choices=list(PRESETS), help="backbone shape without --init_from")
    g.add_argument("--vocab_size", type=int, default=1024, help="SentencePiece vocabulary without --init_from")
    g.add_argument("--steps", type=int, default=None, help=f"optimizer steps (default per stage: {STAGE_STEPS})")
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--weight_decay", type=float, default=0.0)
    g.add_argument("--warmup", type=int, default=30)
    g.add_argument("--cb1_weight", type=float, default=None,
                   help="codebook 1's share of a frame's loss, the other seven sharing the rest (default: the "
                        f"release's 1/8 with --init_from, {TOY_CB1_WEIGHT} for the toy, whose first codebook, the "
                        "plan of which event sounds when, learns too slowly at 1/8)")
    g.add_argument("--input_noise", type=float, default=None,
                   help="the share of the input audio codes replaced by random ones, the targets kept (default: "
                        f"0 with --init_from, as the release; {TOY_INPUT_NOISE} for the toy, which then leans less on "
                        "copying the frames before and more on its caption)")
    g.add_argument("--rows", type=int, default=2, help="packed rows per micro-batch")
    g.add_argument("--budget", type=int, default=1024, help="positions per packed row")
    g.add_argument("--grad_accum", type=int, default=1)
    g.add_argument("--eval_every", type=int, default=100)
    g.add_argument("--save_every", type=int, default=100)
    g.add_argument("--keep_every", type=int, default=0,
                   help="also keep the weights every N steps as STAGE_stepN.pt (a learning curve: curve.py)")
    g.add_argument("--stop_at", type=int, default=None, help="stop after this step (a time-boxed or interrupted run)")
    g.add_argument("--resume", action="store_true", help="continue from the stage's checkpoint")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the model (one graph: packed samples kept apart by a dense mask); meant "
                        "for GPUs, where one graph saves many kernel launches")
    g.add_argument("--fsdp", action="store_true", help="under torchrun: shard with FSDP2 instead of DDP")
    g.add_argument("--dtype", default="auto", choices=["auto", *DTYPES],
                   help="autocast dtype of the forward pass: auto is bf16 on CUDA, fp32 on CPU; fp16 scales the loss")
    g.add_argument("--checkpointing", action="store_true",
                   help="activation checkpointing: keep only each block's input and recompute the block in the backward pass (less memory, more time)")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    if args.steps is None and args.stage != "all":
        args.steps = STAGE_STEPS.get(args.stage, 0)
    if args.cb1_weight is not None and not 0 < args.cb1_weight < 1:
        fail(f"--cb1_weight {args.cb1_weight:g}: give a share between 0 and 1 (0.125 is the release's 1/8)")
    if args.input_noise is not None and not 0 <= args.input_noise < 1:
        fail(f"--input_noise {args.input_noise:g}: give a share from 0 up to (not including) 1")
    if args.resume and args.stage == "all":
        fail("--stage all already skips every stage that has its checkpoint in --out; drop --resume")
    if args.resume and args.stage not in LM_STAGES:
        fail(f"--resume continues an LM stage ({', '.join(LM_STAGES)}), not --stage {args.stage}; drop --resume")
    if args.resume and not os.path.isfile(os.path.join(args.out, f"{args.stage}.pt")):
        fail(f"--resume: {os.path.join(args.out, args.stage + '.pt')} does not exist; run without --resume to "
             "start the stage")
    try:
        for flag, folder in parts_of(args).items():  # each part checked before anything is written
            if folder:
                check_folder(flag, folder)
                setattr(args, flag, folder)  # recorded as an absolute path
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(args.seed)
    try:
        (stage_all if args.stage == "all" else STAGE_FNS[args.stage])(args)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))


if __name__ == "__main__":
    main()
