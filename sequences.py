"""
From conversations to training batches: the authors' template over 8 streams, packing,
and the loss with its 1/8 audio weights (SPEC.md sections 1, 2, 5).

A conversation is a list of messages, each one of
    {"role": "user" | "assistant" | "system", "text": str}
    {"role": ..., "codes": LongTensor (8, T)}      audio the model writes (codec tokens)
    {"role": ..., "feats": Tensor (T25, d)}        audio the model hears (encoder frames)
and an optional "loss": False on an assistant message to keep it out of the loss.

It becomes a grid of L rows x 8 streams:
    <|bos|>  then per message  <|role|> <|modality|> content END
END is <|eot|> when the next message has the same role, else <|eos|>. Text and special
tokens sit in stream 0 with pad in streams 1..7; written audio fills all 8 streams
under the delay pattern (T frames -> T + 7 rows); heard audio is T25 rows of
<|audio_in|>, replaced by encoder frames inside the model. Every row also gets a kind:
    0 no loss, 1 a token (stream 0 over the whole vocabulary), 2 an audio frame
    (8 per-codebook losses, each weighing 1/8, so a frame weighs as one token).
Row r is the target of the prediction made at row r - 1.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from codec import delay_pattern
from model import (ASSISTANT, AUDIO, AUDIO_IN, BOS, EOS, EOT, INTERVAL, N_SPECIAL, N_STREAMS, PAD, SYSTEM, TEXT,
                   USER, doc_segments, packed_mask)

ROLES = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}
NO_LOSS, TOKEN, FRAME = 0, 1, 2


@dataclass
class Sample:
    ids: torch.Tensor  # (L, 8) unified ids
    kind: torch.Tensor  # (L,) NO_LOSS / TOKEN / FRAME
    feats: torch.Tensor = None  # (M, d) encoder frames for the M <|audio_in|> rows

    def __len__(self):
        return self.ids.shape[0]


def build(messages, encode, cfg):
    """Messages -> Sample. `encode` is the text tokenizer's encode, cfg a UALMConfig.
    e.g. [user "hi", assistant "yo"] -> rows bos user text h i eos assistant text y o eos."""
    rows, kinds, feats = [[BOS]], [NO_LOSS], []

    def tokens(ids, kind):
        for i in ids:
            rows.append([i])
            kinds.append(kind)

    for i, m in enumerate(messages):
        trained = m["role"] == "assistant" and m.get("loss", True)
        k = TOKEN if trained else NO_LOSS
        tokens([ROLES[m["role"]], TEXT if "text" in m else AUDIO], k)
        if "text" in m:
            tokens([t + N_SPECIAL for t in encode(m["text"])], k)
        elif "codes" in m:
            grid = cfg.audio_ids(delay_pattern(m["codes"][None])[0])  # (8, T + 7)
            rows.extend(grid.T.tolist())
            kinds.extend([FRAME if trained else NO_LOSS] * grid.shape[1])
        else:
            tokens([AUDIO_IN] * m["feats"].shape[0], NO_LOSS)
            feats.append(m["feats"])
        nxt = messages[i + 1]["role"] if i + 1 < len(messages) else None
        tokens([EOT if nxt == m["role"] else EOS], k)
    ids = torch.tensor([r + [PAD] * (N_STREAMS - len(r)) for r in rows], dtype=torch.long)
    return Sample(ids, torch.tensor(kinds, dtype=torch.int8), torch.cat(feats) if feats else None)


def cfg_dropout(s):
    """Classifier-free guidance training: keep only the trained audio frames, every other
    row becomes pad (zero embedding, no loss). e.g. [bos user text ... frames eos] ->
    [pad pad pad ... frames pad]."""
    keep = s.kind == FRAME
    return Sample(torch.where(keep[:, None], s.ids, PAD), torch.where(keep, s.kind, NO_LOSS), None)


def pack(lengths, budget):
    """Best-fit decreasing: sample lengths -> bins (lists of indices), each within budget.
    e.g. pack([6, 5, 4, 3], 10) -> [[0, 2], [1, 3]]."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    bins, room = [], []
    for i in order:
        if lengths[i] > budget:
            raise ValueError(f"a sample of {lengths[i]} rows does not fit the budget of {budget}; raise --budget")
        fits = [b for b in range(len(bins)) if room[b] >= lengths[i]]
        if fits:
            b = min(fits, key=lambda b: room[b])
            bins[b].append(i)
            room[b] -= lengths[i]
        else:
            bins.append([i])
            room.append(budget - lengths[i])
    return bins


def collate(samples, bins, budget):
    """Bins of samples -> one batch of B = len(bins) rows of `budget` positions:
    ids (B, budget, 8), kind (B, budget), doc (B, budget) sample id per position (-1 for
    filler), pos (B, budget) position ids restarting per sample, feats (M, d) or None."""
    B = len(bins)
    ids = torch.zeros(B, budget, N_STREAMS, dtype=torch.long)
    kind = torch.zeros(B, budget, dtype=torch.int8)
    doc = torch.full((B, budget), -1, dtype=torch.long)
    pos = torch.zeros(B, budget, dtype=torch.long)
    feats = []
    for b, members in enumerate(bins):
        t = 0
        for j, i in enumerate(members):
            s = samples[i]
            n = len(s)
            ids[b, t:t + n], kind[b, t:t + n], doc[b, t:t + n] = s.ids, s.kind, j
            pos[b, t:t + n] = torch.arange(n)
            if s.feats is not None:
                feats.append(s.feats)
            t += n
    filler = doc < 0  # each filler position attends only to itself
    doc[filler] = -1 - torch.arange(int(filler.sum()))
    return {"ids": ids, "kind": kind, "doc": doc, "pos": pos, "feats": torch.cat(feats) if feats else None}


DENSE_MASK = False  # train.py --compile sets it: one (T, T) mask per row keeps every shape fixed, where
# attention run per packed sample (segments) has other shapes for every packing, and recompiles


def attention(doc):
    """How the model keeps packed samples apart: per-sample attention calls, or a dense mask."""
    return {"mask": packed_mask(doc)} if DENSE_MASK else {"segments": doc_segments(doc)}


def audio_ce(model, h, tgt):
    """Hidden states (N, d) before N audio rows, and those rows' ids (N, 8) -> (N, 8) the
    cross-entropy of each codebook, over its own 1025 entries (0 = the codebook's pad)."""
    first = model.cfg.audio_offset + INTERVAL * torch.arange(N_STREAMS, device=tgt.device)
    logits = model.audio_logits(h).float()  # (N, 8, 1025)
    return F.cross_entropy(logits.flatten(0, 1), (tgt - first).flatten(), reduction="none").view(-1, N_STREAMS)


def loss_sums(model, batch):
    """Summed losses of a batch: {"sum": scalar, "n": positions with loss, "frames",
    "text": summed token CE, "codebooks": (8,) summed CE per codebook}. The training loss
    is sum / n: each frame's 8 CEs weigh 1/8, normalised by the stream-0 loss positions."""
    ids, kind = batch["ids"], batch["kind"].long()
    h = model(ids[:, :-1], batch["feats"], position_ids=batch["pos"][:, :-1], **attention(batch["doc"][:, :-1]))
    tgt, kind = ids[:, 1:], kind[:, 1:]
    tok, frm = kind == TOKEN, kind == FRAME
    text = F.cross_entropy(model.text_logits(h[tok]).float(), tgt[tok][:, 0], reduction="sum")
    per_cb = audio_ce(model, h[frm], tgt[frm]).sum(0)
    n = tok.sum() + frm.sum()
    return {"sum": text + per_cb.sum() / N_STREAMS, "n": n, "frames": frm.sum(), "tokens": tok.sum(),
            "text": text, "codebooks": per_cb}


def frame_nll(model, s):
    """One Sample -> (F,) the cross-entropy of each of its trained audio frames, in order,
    each the mean of its 8 codebooks' terms (the 1/8 weights of the loss). Run with the
    same audio after two prompts, it tells whether the model reads its prompt (eval.py)."""
    device = next(model.parameters()).device
    ids, frm = s.ids.to(device), (s.kind[1:] == FRAME).to(device)
    feats = s.feats.to(device) if s.feats is not None else None
    h = model(ids[None, :-1], feats)[0]
    return audio_ce(model, h[frm], ids[1:][frm]).mean(1)


def row_logp(model, batch):
    """Log-probability of each row's trained audio frames, (B,), each codebook's term
    weighing 1/8 as in the loss: what DPO compares between policy and reference."""
    ids, kind = batch["ids"], batch["kind"].long()
    h = model(ids[:, :-1], batch["feats"], position_ids=batch["pos"][:, :-1], **attention(batch["doc"][:, :-1]))
    frm = kind[:, 1:] == FRAME
    lp = -audio_ce(model, h[frm], ids[:, 1:][frm]).sum(1)
    return torch.zeros(ids.shape[0], device=ids.device).index_add(0, frm.nonzero()[:, 0], lp / N_STREAMS)
