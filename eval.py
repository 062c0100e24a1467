"""
The toy world's metrics for a trained UALM, on held-out clips (the last --n_eval of the
manifest, as train.py holds them out).

    python eval.py --ckpt runs/sft.pt

- adherence: generate audio for held-out captions (CFG), decode it, and let the world's
  analyzer check it against the caption's ground truth (events, order/overlap, counts,
  pitch); also the CLAP score of each clip with its caption;
- understanding: answer accuracy (exact match) on held-out questions about real clips,
  and keyword accuracy of captions (every true event named, none invented);
- text: exact-match accuracy on held-out arithmetic problems.
"""

import argparse
import os
import sys

import numpy as np
import torch
from tqdm import tqdm

import tasks
from clap import pad_ids
from data import read_generation, read_text, read_understanding
from model import AUDIO, TEXT
from sample import decode_text, fail, generate_audio, generate_text, listen, load_runtime, prefix
from analyzer import adherence, analyze
from world import KEYWORDS


def named_keywords(text):
    """The world's keywords a caption names: 'a bell, then two drum hits' -> {'bell', 'drum'}."""
    t = text.lower()
    return {k for k in KEYWORDS if k in t}


@torch.no_grad()
def eval_generation(rt, rows, cfg_scale, seed):
    g = torch.Generator().manual_seed(seed)
    scores, claps = [], []
    for r in tqdm(rows, desc="generation"):
        x, _ = prefix([{"role": "user", "text": tasks.TTA_PROMPT + r["caption"]}], rt.tok, rt.model.cfg, AUDIO)
        codes = generate_audio(rt.model, x, cfg_scale=cfg_scale, max_frames=int(r["duration"] * 50) + 100,
                               generator=g)[0]
        if codes.shape[1] == 0:
            scores.append({"events": 0.0, "layout": 0.0, "counts": 0.0, "pitch": 0.0, "score": 0.0})
            continue
        wav = rt.codec.decode(codes[None].long())[0]
        scores.append(adherence(analyze(wav.numpy()), r["events"]))
        claps.append(float(rt.clap.score([wav], pad_ids([rt.tok.encode(r["caption"])], rt.tok.vocab_size))[0]))
    out = {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}
    out["clap"] = float(np.mean(claps)) if claps else 0.0
    return out


@torch.no_grad()
def eval_understanding(rt, items):
    qa, kw = [], []
    for it in tqdm(items, desc="understanding"):
        question = it["conversations"][0]["value"].replace("<sound>", "").strip()
        truth = it["conversations"][1]["value"]
        feats = listen(rt, it["sound"])
        x, f = prefix([{"role": "user", "text": question}, {"role": "user", "feats": feats}], rt.tok,
                      rt.model.cfg, TEXT)
        answer = decode_text(rt.tok, generate_text(rt.model, x, f, max_tokens=80)).strip()
        if it["id"].endswith("_caption"):
            kw.append(named_keywords(answer) == named_keywords(truth))
        elif "_qa" in it["id"]:
            qa.append(answer.lower() == truth.lower())
    return {"answer_accuracy": float(np.mean(qa)) if qa else 0.0, "keyword_accuracy": float(np.mean(kw)) if kw else 0.0,
            "n_questions": len(qa), "n_captions": len(kw)}


@torch.no_grad()
def eval_text(rt, items):
    right = []
    for it in tqdm(items, desc="text"):
        x, _ = prefix([{"role": "user", "text": it["input"][0]["content"]}], rt.tok, rt.model.cfg, TEXT)
        right.append(decode_text(rt.tok, generate_text(rt.model, x, max_tokens=20)).strip() == it["output"])
    return {"accuracy": float(np.mean(right))}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default="runs/sft.pt")
    p.add_argument("--data", default="toy")
    p.add_argument("--n_eval", type=int, default=50, help="held-out clips: the last n of the manifest (as train.py)")
    p.add_argument("--n_gen", type=int, default=20, help="held-out captions to generate")
    p.add_argument("--n_questions", type=int, default=100)
    p.add_argument("--cfg", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    try:
        rt = load_runtime(args.ckpt, need_vae=False)
        gen = read_generation(os.path.join(args.data, "generation.jsonl"))[-args.n_eval:]
        held = {r["location"] for r in gen}
        und = [i for i in read_understanding(os.path.join(args.data, "understanding.json")) if i["sound"] in held]
        txt = read_text(os.path.join(args.data, "text.jsonl"))[-args.n_eval:]
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    torch.manual_seed(args.seed)
    print(f"{args.ckpt} on held-out clips of {args.data}")
    g = eval_generation(rt, gen[:args.n_gen], args.cfg, args.seed)
    print(f"generation (cfg {args.cfg}, {args.n_gen} captions): adherence score {100 * g['score']:.1f}% (events "
          f"{100 * g['events']:.1f}%, layout {100 * g['layout']:.1f}%, counts {100 * g['counts']:.1f}%, pitch "
          f"{100 * g['pitch']:.1f}%), CLAP {g['clap']:.3f}")
    u = eval_understanding(rt, und[:args.n_questions])
    print(f"understanding: answer accuracy {100 * u['answer_accuracy']:.1f}% ({u['n_questions']} questions), "
          f"caption keyword accuracy {100 * u['keyword_accuracy']:.1f}% ({u['n_captions']} captions)")
    t = eval_text(rt, txt)
    print(f"text: arithmetic accuracy {100 * t['accuracy']:.1f}% ({len(txt)} problems)")


if __name__ == "__main__":
    sys.exit(main())
