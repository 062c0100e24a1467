"""
DPO on the model's own samples, UALM-Reason's preference stage (paper; SPEC.md section 7):
`python train.py --stage dpo`.

1. For training captions, sample several clips from the SFT model itself (no CFG, temperature
   1, no top-k: the reference's own distribution), decode them, and rank them with a reward:
   best and worst make a pair. --dpo_reward clap (the paper's first round) ranks by the CLAP
   score of clip and caption; --dpo_reward analyzer ranks by adherence to the caption, as the
   paper's second round ranks by adherence to the rich caption, with the toy world's analyzer
   as the judge (its events against the caption's ground truth; CLAP breaks ties) and writes
   runs/dpo_analyzer.pt beside runs/dpo.pt. Sampling from the reference's own distribution means
   DPO compares what the reference itself would write. Pairs sampled as at inference (CFG,
   lower temperature, top-k) are sharper than the model: training on them would sharpen the
   policy, and CFG at inference would then sharpen it a second time.
2. Train against a frozen copy of the SFT model: a cross-entropy warm-up on the winners,
   then -log sigmoid(beta * ((pi_w - ref_w) - (pi_l - ref_l))) plus a CE term on winners,
   with log-probabilities over the audio tokens weighted 1/8 as in the loss. The learning
   rate (--dpo_lr) is small because a few dozen pairs are seen many times: a large step
   drives the margin far past what separates each pair and pulls the policy away from the
   reference, which costs adherence and CLAP instead of adding to them.
"""

import os
from dataclasses import asdict

import numpy as np
import torch
from tqdm import tqdm

import tasks
from checkpoint import load_ckpt, load_module, save_ckpt
from clap import Clap, pad_ids
from model import AUDIO, UALM, UALMConfig
from parts import adopt, load_codec, parts_of
from sample import audible, generate_audio, prefix
from sequences import build, collate, n_loss_positions, row_logp
from tasks import get_tokenizer, lm_data
from toy.analyzer import adherence, analyze
from utils import learning_rate

REWARDS = ("clap", "analyzer")


def dpo_files(reward):
    """The pairs' cache and the checkpoint a reward writes: clap -> ('dpo_pairs.pt', 'dpo.pt'),
    analyzer -> ('dpo_pairs_analyzer.pt', 'dpo_analyzer.pt')."""
    return ("dpo_pairs.pt", "dpo.pt") if reward == "clap" else (f"dpo_pairs_{reward}.pt", f"dpo_{reward}.pt")


def rewards(reward, waves, row, tok, clap):
    """Each decoded clip's reward for a manifest row's caption -> (n,), higher is better.
    analyzer: the adherence score (0, 0.25, ..., 1) of what the analyzer hears to the row's
    events, plus a thousandth of the CLAP score, which only orders clips of equal adherence."""
    score = clap.score(waves, pad_ids([tok.encode(row["caption"])] * len(waves), tok.vocab_size))
    if reward == "clap":
        return score
    adhere = torch.tensor([adherence(analyze(w.numpy()), row["events"])["score"] for w in waves])
    return adhere + 1e-3 * score


@torch.no_grad()
def dpo_pairs(args, policy, tok, rows, codec, clap):
    """For each prompt, --dpo_samples clips sampled from the model itself, ranked by the
    --dpo_reward: (caption, winner codes, loser codes, reward gap). Cached in runs/dpo_pairs.pt
    (dpo_pairs_analyzer.pt for the analyzer; save_pairs)."""
    path = os.path.join(args.out, dpo_files(args.dpo_reward)[0])
    if args.dpo_reward == "analyzer" and not all("events" in r for r in rows[:args.dpo_prompts]):
        raise ValueError("--dpo_reward analyzer judges clips against the toy world's ground truth (each "
                         "manifest row's events), which this --data lacks; use --dpo_reward clap")
    if os.path.isfile(path):
        return load_pairs(path)
    policy.eval()
    g = torch.Generator().manual_seed(args.seed)
    pairs = []
    for r in tqdm(rows[:args.dpo_prompts], desc="dpo: sampling and ranking"):
        x, _ = prefix([{"role": "user", "text": tasks.TTA_PROMPT + r["caption"]}], tok, policy.cfg, AUDIO)
        codes = generate_audio(policy, x, n=args.dpo_samples, cfg_scale=1.0, temperature=1.0, top_k=None,
                               max_frames=int(r["duration"] * 50) + 50, generator=g)
        codes = [c for c in codes if audible(c)]  # CLAP hears 30 ms or more
        if len(codes) < 2:
            continue
        waves = [codec.decode(c[None].long())[0] for c in codes]
        reward = rewards(args.dpo_reward, waves, r, tok, clap)
        best, worst = int(reward.argmax()), int(reward.argmin())
        pairs.append((r["caption"], codes[best].long(), codes[worst].long(), float(reward[best] - reward[worst])))
    save_pairs(pairs, path)
    return pairs


def save_pairs(pairs, path):
    """[(caption, winner (8, T), loser (8, T'), gap), ...] -> a checkpoint file: the codes as
    sections winners/i and losers/i, captions and gaps as JSON."""
    save_ckpt(path, {"kind": "dpo pairs", "captions": [p[0] for p in pairs], "gaps": [p[3] for p in pairs],
                     "winners": {str(i): p[1] for i, p in enumerate(pairs)},
                     "losers": {str(i): p[2] for i, p in enumerate(pairs)}})


def load_pairs(path):
    """The pairs save_pairs wrote, or one clear error naming the file."""
    ck = load_ckpt(path, "dpo pairs", "python train.py --stage dpo")
    return [(caption, ck["winners"][str(i)], ck["losers"][str(i)], gap)
            for i, (caption, gap) in enumerate(zip(ck["captions"], ck["gaps"]))]


def pair_samples(caption, win, lose, tok, cfg):
    """A preference pair as two training samples: the text-to-audio request, then each clip."""
    user = {"role": "user", "text": tasks.TTA_PROMPT + caption}
    return [build([user, {"role": "assistant", "codes": c}], tok.encode, cfg) for c in (win, lose)]


@torch.no_grad()
def pair_ce(model, pairs, tok):
    """Mean cross-entropy per frame of the winners and of the losers: -> (winners, losers)."""
    model.eval()
    ce = {0: [], 1: []}
    for caption, win, lose, _ in pairs:
        for k, s in enumerate(pair_samples(caption, win, lose, tok, model.cfg)):
            batch = collate([s], [[0]], len(s))
            ce[k].append(float(-row_logp(model, batch)[0]) / n_loss_positions(batch))
    return float(np.mean(ce[0])), float(np.mean(ce[1]))


def dpo_loss(pi, ref, beta):
    """pi, ref: log-probabilities of (winner, loser) under the policy and the frozen reference
    -> (-log sigmoid(beta * margin), margin), margin = (pi_w - ref_w) - (pi_l - ref_l)."""
    margin = (pi[0] - ref[0]) - (pi[1] - ref[1])
    return -torch.nn.functional.logsigmoid(beta * margin), margin


def train_dpo(args):
    """DPO on the model's own samples (SPEC.md section 7): a frozen reference, a CE warm-up on
    the winners, then dpo_loss + --dpo_ce x CE on the winners. The parts (tokenizer, codec) are
    the ones sft.pt was trained with; the reward is runs/clap.pt's CLAP score, or the analyzer's
    adherence (--dpo_reward analyzer)."""
    sft, how = os.path.join(args.out, "sft.pt"), "python train.py --stage sft"
    adopt(args, sft, how, "sft")
    tok = get_tokenizer(args)
    data = lm_data(args)
    policy = load_module(UALM, UALMConfig, sft, how, stage="sft")
    reference = load_module(UALM, UALMConfig, sft, how, stage="sft").requires_grad_(False)
    codec = load_codec(parts_of(args), args.out)
    clap = Clap.from_checkpoint(os.path.join(args.out, "clap.pt"))
    pairs = dpo_pairs(args, policy, tok, data["tta"][0], codec, clap)
    pairs = [p for p in pairs if p[3] > args.dpo_min_gap]
    if not pairs:
        raise ValueError("no DPO pair has a reward gap above --dpo_min_gap; sample more with --dpo_samples")
    policy.train()
    opt = torch.optim.AdamW(policy.parameters(), lr=args.dpo_lr, betas=(0.9, 0.95), weight_decay=0.0)
    g = np.random.default_rng(args.seed)
    log, bar = [], tqdm(range(args.dpo_steps), desc="dpo")
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, args.dpo_steps, args.dpo_lr, warmup=10)
        caption, win, lose, _ = pairs[g.integers(len(pairs))]
        s = pair_samples(caption, win, lose, tok, policy.cfg)
        batch = collate(s, [[0], [1]], max(len(x) for x in s))
        pi = row_logp(policy, batch)
        with torch.no_grad():
            ref = row_logp(reference, batch)
        frames = n_loss_positions(collate(s[:1], [[0]], len(s[0])))
        ce = -pi[0] / frames  # the winner's cross-entropy per frame
        dpo, margin = dpo_loss(pi, ref, args.dpo_beta)
        loss = ce if step < args.dpo_warmup else dpo + args.dpo_ce * ce
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        log.append({"step": step + 1, "loss": loss.item(), "ce": ce.item(), "margin": margin.item()})
        bar.set_postfix(ce=f"{ce.item():.3f}", margin=f"{margin.item():.2f}")
    out = os.path.join(args.out, dpo_files(args.dpo_reward)[1])
    save_ckpt(out, {"kind": "UALM", "stage": "dpo", "config": asdict(policy.cfg), "args": vars(args),
                    "step": args.dpo_steps, "log": log, "model": policy.state_dict()})
    print(f"dpo: {len(pairs)} pairs ranked by {args.dpo_reward}, mean reward gap {np.mean([p[3] for p in pairs]):.3f} "
          f"-> {out}")
    (w0, l0), (w1, l1) = pair_ce(reference, pairs, tok), pair_ce(policy, pairs, tok)
    print(f"dpo: cross-entropy per frame on the pairs, before -> after: winners {w0:.3f} -> {w1:.3f}, "
          f"losers {l0:.3f} -> {l1:.3f}")
