"""
From conversations to training batches (paper section 2; SPEC.md sections 1, 2, 5): the
delay pattern, the authors' template over 8 streams, CFG dropout, best-fit packing, and
the loss with its audio weights (the release's 1/8 per codebook, or codebook 1 weighed up).

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
    (8 per-codebook losses whose weights sum to 1, so a frame weighs as one token).
Row r is the target of the prediction made at row r - 1.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from model import (ASSISTANT, AUDIO, AUDIO_IN, BOS, EOS, EOT, INTERVAL, N_SPECIAL, N_STREAMS, PAD, SYSTEM, TEXT,
                   USER, doc_segments, packed_mask)

# -----------------------------------------------------------------------------
# The delay pattern (MusicGen's, as the UALM release uses it): training lays audio out with
# delay_pattern, sampling asks delay_cells which cells of each step may hold a code, and
# undelay_pattern turns the sampled grid back into frames.


def delay_pattern(codes: torch.Tensor, pad: int = -1) -> torch.Tensor:
    """Shift codebook k right by k steps: codes [B, K, T] -> [B, K, T + K - 1].

    At step s the LM predicts {c1[s], c2[s-1], ..., cK[s-K+1]}, so each frame's coarse
    codes are known before its fine ones. Empty cells hold `pad` (-1: that codebook's
    pad, which model.UALMConfig.audio_ids maps to index 0 of its interval). For K = 3,
    T = 4, with S = pad:

        [[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4]]  ->  [[1, 2, 3, 4, S, S],
                                                         [S, 1, 2, 3, 4, S],
                                                         [S, S, 1, 2, 3, 4]]
    """
    B, K, T = codes.shape
    out = codes.new_full((B, K, T + K - 1), pad)
    for k in range(K):
        out[:, k, k:k + T] = codes[:, k]
    return out


def undelay_pattern(delayed: torch.Tensor) -> torch.Tensor:
    """The exact inverse: delayed [B, K, T + K - 1] -> codes [B, K, T], row k = delayed[:, k, k:k+T].

    e.g. [[1, 2, 3, 4, S, S], [S, 1, 2, 3, 4, S], [S, S, 1, 2, 3, 4]] -> [[1, 2, 3, 4]] * 3.
    """
    B, K, S = delayed.shape
    T = S - (K - 1)
    return torch.stack([delayed[:, k, k:k + T] for k in range(K)], dim=1)


def delay_cells(step: int, n_frames: torch.Tensor, K: int = N_STREAMS) -> torch.Tensor:
    """Which cells of row `step` of a delayed grid hold a code, for clips of n_frames (n,)
    frames: (n, K) bool, False where the pattern puts its pad. Cell k of row s holds frame
    s - k of codebook k, so it holds a code when 0 <= s - k < n_frames. While a clip's
    length is not known yet, pass the largest it may have. e.g. K = 3, n_frames [2]:
        step 0 -> [[T, F, F]], step 1 -> [[T, T, F]], step 2 -> [[F, T, T]], step 3 -> [[F, F, T]].
    """
    k = torch.arange(K, device=n_frames.device)
    return (step >= k)[None] & (step < n_frames[:, None] + k[None])


def audio_rows(cfg, codes):
    """codes (8, T) -> the (T + 7, 8) rows they take in a conversation: the delay pattern in
    unified ids (cfg a UALMConfig), the rows before the audio's END."""
    return cfg.audio_ids(delay_pattern(codes[None].long().cpu())[0]).T


# -----------------------------------------------------------------------------
# Conversations -> grids

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
            grid = audio_rows(cfg, m["codes"])  # (T + 7, 8)
            rows.extend(grid.tolist())
            kinds.extend([FRAME if trained else NO_LOSS] * grid.shape[0])
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


def pack(next_sample, rows, budget, lookahead=64):
    """Best fit: draw samples from next_sample() and put each into the row with the least room
    that still holds it, until every row is full or `lookahead` samples fitted nowhere.
    next_sample() -> (key, Sample), or None when there are no more. Returns (samples, bins,
    deferred): bins[b] lists the indices into samples of row b; deferred holds the
    (key, Sample) pairs that did not fit, for the next batch. e.g. lengths 6, 5, 4, 3, 3 into
    2 rows of 10 with lookahead=1: 6 -> row 0, 5 -> row 1, 4 -> row 0 (the least room, 4),
    3 -> row 1, the second 3 fits nowhere and closes the batch: bins [[0, 2], [1, 3]],
    deferred [the second 3]."""
    bins, room, samples, deferred = [[] for _ in range(rows)], [budget] * rows, [], []
    while len(deferred) < lookahead and max(room) > 0:
        item = next_sample()
        if item is None:
            break
        key, s = item
        if len(s) > budget:
            raise ValueError(f"a sample of {len(s)} rows does not fit a row of {budget} positions; raise --budget")
        fits = [b for b in range(rows) if room[b] >= len(s)]
        if not fits:
            deferred.append((key, s))
            continue
        b = min(fits, key=room.__getitem__)
        bins[b].append(len(samples))
        samples.append(s)
        room[b] -= len(s)
    return samples, bins, deferred


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


def attention(doc, dense_mask=False):
    """How the model keeps packed samples apart: attention run per packed sample (segments),
    or one dense (T, T) mask per row. The mask costs T x T but keeps every shape fixed, which
    torch.compile needs (per-sample calls have new shapes for every packing)."""
    return {"mask": packed_mask(doc)} if dense_mask else {"segments": doc_segments(doc)}


def audio_ce(model, h, tgt):
    """Hidden states (N, d) before N audio rows, and those rows' ids (N, 8) -> (N, 8) the
    cross-entropy of each codebook, over its own 1025 entries (0 = the codebook's pad)."""
    first = model.cfg.audio_offset + INTERVAL * torch.arange(N_STREAMS, device=tgt.device)
    logits = model.audio_logits(h).float()  # (N, 8, 1025)
    return F.cross_entropy(logits.flatten(0, 1), (tgt - first).flatten(), reduction="none").view(-1, N_STREAMS)


def codebook_weights(first=None):
    """Each codebook's weight in a frame's loss, (8,) summing to 1. first=None: the release's
    1/8 each. first=0.5: codebook 1 weighs 0.5 and the other seven 1/14 each. Codebook 1 is
    the coarse plan (which event sounds when, and where the clip ends) that the finer seven
    fill in; weighing it up spends more of a small model's learning on the plan."""
    if first is None:
        return torch.full((N_STREAMS,), 1.0 / N_STREAMS)
    if not 0.0 < first < 1.0:
        raise ValueError(f"codebook 1's weight {first} must lie between 0 and 1")
    return torch.tensor([first] + [(1.0 - first) / (N_STREAMS - 1)] * (N_STREAMS - 1))


def corrupt_codes(ids, kind, cfg, p, generator):
    """Input noise: ids (B, L, 8) -> a copy in which each code of a trained audio row (kind
    FRAME) is, with probability p, replaced by a code drawn uniformly from its own codebook;
    the delay pattern's pads, text and heard audio stay. At sampling time the model reads its
    own imperfect codes; trained on true codes only, it learns to copy the frames before,
    while with a share of them unreliable it leans on the caption and the wider context.
    generator: a CPU torch.Generator, so the draw is the same on any device and rank."""
    first = cfg.audio_offset + INTERVAL * torch.arange(N_STREAMS, device=ids.device)
    code = ids - first  # 1..1024 in an audio row's cells, 0 its pad
    cells = (kind == FRAME)[..., None] & (code >= 1) & (code < INTERVAL)
    draw = torch.rand(ids.shape, generator=generator).to(ids.device) < p
    new = first + 1 + torch.randint(0, INTERVAL - 1, ids.shape, generator=generator).to(ids.device)
    return torch.where(cells & draw, new, ids)


def loss_sums(model, batch, dense_mask=False, weights=None):
    """Summed losses of a batch: {"sum": scalar, "n": positions with loss, "frames",
    "text": summed token CE, "codebooks": (8,) summed CE per codebook}. The training loss
    is sum / n: each frame's 8 CEs weigh `weights` (codebook_weights(); default 1/8 each),
    normalised by the stream-0 loss positions. A batch with "noisy" ids (corrupt_codes of
    its ids) is read from those and scored on the true ones."""
    ids, kind = batch["ids"], batch["kind"].long()
    h = model(batch.get("noisy", ids)[:, :-1], batch["feats"], position_ids=batch["pos"][:, :-1],
              **attention(batch["doc"][:, :-1], dense_mask))
    tgt, kind = ids[:, 1:], kind[:, 1:]
    tok, frm = kind == TOKEN, kind == FRAME
    text = F.cross_entropy(model.text_logits(h[tok]).float(), tgt[tok][:, 0], reduction="sum")
    per_cb = audio_ce(model, h[frm], tgt[frm]).sum(0)
    n = tok.sum() + frm.sum()
    w = (codebook_weights() if weights is None else weights).to(per_cb.device, per_cb.dtype)
    return {"sum": text + (per_cb * w).sum(), "n": n, "frames": frm.sum(), "tokens": tok.sum(),
            "text": text, "codebooks": per_cb}


def n_loss_positions(batch):
    """The positions of a batch that carry a loss (tokens and frames): the loss's denominator."""
    kind = batch["kind"][:, 1:]
    return int(((kind == TOKEN) | (kind == FRAME)).sum())


def frame_nll(model, s):
    """One Sample -> (F,) the cross-entropy of each of its trained audio frames, in order,
    each the mean of its 8 codebooks' terms (the 1/8 weights of the loss). Run with the
    same audio after two prompts, it tells whether the model reads its prompt (eval.py)."""
    device = next(model.parameters()).device
    ids, frm = s.ids.to(device), (s.kind[1:] == FRAME).to(device)
    feats = s.feats.to(device) if s.feats is not None else None
    h = model(ids[None, :-1], feats)[0]
    return audio_ce(model, h[frm], ids[1:][frm]).mean(1)


def row_logp(model, batch, dense_mask=False):
    """Log-probability of each row's trained audio frames, (B,), each codebook's term
    weighing 1/8 as in the loss: what DPO compares between policy and reference."""
    ids, kind = batch["ids"], batch["kind"].long()
    h = model(ids[:, :-1], batch["feats"], position_ids=batch["pos"][:, :-1],
              **attention(batch["doc"][:, :-1], dense_mask))
    frm = kind[:, 1:] == FRAME
    lp = -audio_ce(model, h[frm], ids[:, 1:][frm]).sum(1)
    return torch.zeros(ids.shape[0], device=ids.device).index_add(0, frm.nonzero()[:, 0], lp / N_STREAMS)
