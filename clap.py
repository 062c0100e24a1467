"""
The toy world's CLAP: a small contrastive audio-text model that stands in for the
pretrained models the paper relies on (CLAP for evaluation and the DPO reward, SPEC.md
section 7; the frozen AF-Whisper audio encoder, section 3). Three jobs:

- the CLAP score of evaluation: cosine similarity of a clip's and a prompt's embeddings;
- the reward that ranks the model's own samples into DPO pairs, and best of N
  (sample.py --best_of: several clips drawn, the one closest to the prompt kept);
- the LM's ears: its audio tower is encoder.py's Whisper-style encoder, and the frozen,
  trained tower is what the LM hears through (the paper's frozen AF-Whisper; nothing
  pretrained exists offline, so the toy world trains its own).

The audio tower learns from two signals: the contrastive loss against the caption (and
against hard negatives, captions that get one fact of the clip wrong, so the score hears
order, counts and pitch, not only which sounds are there), and a frame-level tagging loss
from the world's ground truth (which events sound in each 40 ms frame, where units start,
their pitch and level), so that its 25 Hz features keep the timing the LM needs to count
and to order events.
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from checkpoint import load_module
from utils import learning_rate
from encoder import ENCODER_PRESETS, FEATURES_PER_SECOND, SAMPLE_RATE, AudioEncoder
from toy.world import KEYWORDS, MAX_COUNT, sample_event, short_caption

K = len(KEYWORDS)
N_TAGS = 2 * K + 4  # active per keyword, unit onset per keyword, low/high pitch, loud/quiet
# Weight of the frame-tagging loss against the contrastive one: high, because the LM hears these
# features and answers from them, so which events sound when must survive in them, not only what
# a caption-level embedding needs (evaluate_clap's 'exact_events' checks it).
TAG_WEIGHT = 10.0


@dataclass
class ClapConfig:
    text_vocab: int = 1024  # the text tokenizer's vocab_size
    encoder: str = "toy"  # an ENCODER_PRESETS name
    d_text: int = 128
    text_layers: int = 2
    d_embed: int = 128  # the joint embedding space


def frame_tags(events, n_frames, rate=FEATURES_PER_SECOND):
    """Ground-truth events -> (n_frames, N_TAGS) targets at `rate` frames a second (25 Hz, the
    encoder's, by default). e.g. a drum with hits at 0.1 s and 1.48 s sets 'drum active' over
    its span and 'drum onset' in frames 2 and 37."""
    tags = torch.zeros(n_frames, N_TAGS)
    frame = lambda t: min(n_frames - 1, int(t * rate))  # noqa: E731
    for ev in events:
        k = KEYWORDS.index(ev["keyword"])
        a, b = frame(ev["onset"]), frame(ev["offset"]) + 1
        tags[a:b, k] = 1
        for t in ev.get("times", [ev["onset"]]):
            tags[frame(t), K + k] = 1
        if ev.get("pitch") in ("low", "high"):
            tags[a:b, 2 * K + (ev["pitch"] == "high")] = 1
        if ev.get("loudness") in ("loud", "quiet"):
            tags[a:b, 2 * K + 2 + (ev["loudness"] == "quiet")] = 1
    return tags


def real_frames(feats, lengths):
    """(B, T, d) features padded past each clip's length -> (B, T) bool, True on real frames."""
    return torch.arange(feats.shape[1], device=feats.device)[None] < lengths[:, None]


class TextTower(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embed = nn.Embedding(cfg.text_vocab + 1, cfg.d_text, padding_idx=cfg.text_vocab)
        self.pos = nn.Embedding(256, cfg.d_text)
        layer = nn.TransformerEncoderLayer(cfg.d_text, 4, 4 * cfg.d_text, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, cfg.text_layers, enable_nested_tensor=False)
        self.pad = cfg.text_vocab

    def forward(self, ids):
        """ids (B, T) padded with text_vocab -> mean-pooled (B, d_text)."""
        keep = ids != self.pad
        x = self.embed(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))
        x = self.blocks(x, src_key_padding_mask=~keep)
        return (x * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp(min=1)


class Clap(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.audio = AudioEncoder(ENCODER_PRESETS[cfg.encoder])
        d = self.audio.config.d_model
        self.tagger = nn.Linear(d, N_TAGS)
        self.audio_proj = nn.Linear(d, cfg.d_embed)
        self.text = TextTower(cfg)
        self.text_proj = nn.Linear(cfg.d_text, cfg.d_embed)
        self.logit_scale = nn.Parameter(torch.tensor(2.66))  # log(1 / 0.07), as CLIP

    def hear(self, waves):
        """16 kHz clips -> (25 Hz features (B, T25, d), lengths): the frozen ears of the LM."""
        return self.audio.listen(waves)

    def audio_embed(self, feats, lengths):
        keep = real_frames(feats, lengths)
        pooled = (feats * keep[..., None]).sum(1) / lengths[:, None]
        return F.normalize(self.audio_proj(pooled), dim=-1)

    def text_embed(self, ids):
        return F.normalize(self.text_proj(self.text(ids)), dim=-1)

    def loss(self, waves, ids, tags, negative_ids=None):
        """Contrastive (both directions) + frame tagging; tags (B, T25, N_TAGS) padded.
        negative_ids (H, S): hard negatives, texts no clip of the batch matches (contradiction()
        of its captions): extra columns of the audio -> text direction."""
        feats, lengths = self.hear(waves)
        a, t = self.audio_embed(feats, lengths), self.text_embed(ids)
        scale = self.logit_scale.exp().clamp(max=100)
        logits = scale * a @ t.T
        target = torch.arange(len(a), device=a.device)
        a2t = logits if negative_ids is None else torch.cat([logits, scale * a @ self.text_embed(negative_ids).T], 1)
        contrastive = (F.cross_entropy(a2t, target) + F.cross_entropy(logits.T, target)) / 2
        keep = real_frames(feats, lengths).float()
        bce = F.binary_cross_entropy_with_logits(self.tagger(feats), tags[:, :feats.shape[1]], reduction="none")
        tagging = (bce.mean(-1) * keep).sum() / keep.sum()
        return contrastive + TAG_WEIGHT * tagging, {"contrastive": contrastive.item(), "tagging": tagging.item()}

    @torch.no_grad()
    def heard_keywords(self, feats, lengths, min_frames=3):
        """The tagger's reading: per clip, the keywords 'active' in at least min_frames frames."""
        active = ((self.tagger(feats)[..., :K] > 0) & real_frames(feats, lengths)[..., None]).sum(1)  # (B, K)
        return [{KEYWORDS[k] for k in range(K) if active[b, k] >= min_frames} for b in range(len(lengths))]

    @torch.no_grad()
    def score(self, waves, ids):
        """CLAP score: cosine similarity of each clip with its own text, (B,)."""
        feats, lengths = self.hear(waves)
        return (self.audio_embed(feats, lengths) * self.text_embed(ids)).sum(-1)

    @classmethod
    def from_checkpoint(cls, path, config: ClapConfig | None = None) -> "Clap":
        """Load a CLAP saved by save_checkpoint (runs/clap.pt), in eval mode, or one clear error."""
        return load_module(cls, ClapConfig, path, "python train.py --stage clap", config)


def pad_ids(seqs, pad, max_len=256):
    """[[5, 6], [7]] -> tensor [[5, 6], [7, pad]] (cut at max_len)."""
    n = min(max_len, max(len(s) for s in seqs))
    return torch.tensor([s[:n] + [pad] * (n - len(s[:n])) for s in seqs], dtype=torch.long)


def contradiction(record, rng):
    """A caption that gets one fact of a clip wrong, in the world's own words: the order of
    its events (or 'then' for 'together'), a count, a pitch, or which sound one event is.
    e.g. for 'A low bell, then two high beeps.': 'Two high beeps, then a low bell.', 'A low
    bell, then three high beeps.', 'A high bell, then two high beeps.' or 'A hiss, then two
    high beeps.' (the level words and the template are drawn as the world draws them).
    A clip never matches it: a hard negative that only a CLAP that hears order, counts,
    pitch and every event can tell from the truth."""
    layout, events = record["layout"], [dict(ev) for ev in record["events"]]
    counted, pitched = [ev for ev in events if "count" in ev], [ev for ev in events if "pitch" in ev]
    kinds = ["event"] + ["order"] * (len(events) > 1) + ["count"] * bool(counted) + ["pitch"] * bool(pitched)
    kind = kinds[rng.integers(len(kinds))]
    if kind == "order":
        if layout == "together":
            layout = "sequence"
        else:
            events = events[1:] + events[:1]
    elif kind == "count":
        ev = counted[rng.integers(len(counted))]
        ev["count"] = int(rng.choice([n for n in range(1, MAX_COUNT + 1) if n != ev["count"]]))
    elif kind == "pitch":
        ev = pitched[rng.integers(len(pitched))]
        ev["pitch"] = "low" if ev["pitch"] == "high" else "high"
    else:
        i = int(rng.integers(len(events)))
        other = [k for k in KEYWORDS if k not in {ev["keyword"] for ev in events}]
        events[i] = sample_event(str(rng.choice(other)), rng)
    return short_caption({"layout": layout, "events": events}, rng)


def train_clap(clips, tok, steps, lr, batch, seed):
    """clips: [(16 kHz waveform, generation record)], tok: the text tokenizer -> a trained Clap.
    Each step draws `batch` clips; the text is the short caption on odd steps and the rich
    caption on even ones. On odd steps each caption also brings a contradiction() as a hard
    negative: without them nothing in a batch of random clips asks the embeddings to hold the
    order of events, their counts or pitch, and the CLAP score that ranks the LM's samples
    would not hear 'A, then B' from 'B, then A'."""
    model = Clap(ClapConfig(text_vocab=tok.vocab_size))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    g, rng = torch.Generator().manual_seed(seed), np.random.default_rng(seed)
    bar = tqdm(range(steps), desc="clap")
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, steps, lr, warmup=50)
        pick = torch.randperm(len(clips), generator=g)[:batch].tolist()
        waves = [torch.from_numpy(clips[i][0]) for i in pick]
        rows = [clips[i][1] for i in pick]
        ids = pad_ids([tok.encode(r["caption"] if step % 2 else r["rich_caption"]) for r in rows], tok.vocab_size)
        negatives = [tok.encode(contradiction(r, rng)) for r in rows] if step % 2 else []
        n25 = max(len(w) for w in waves) // SAMPLE_RATE * FEATURES_PER_SECOND + FEATURES_PER_SECOND
        tags = torch.stack([frame_tags(r["events"], n25) for r in rows])
        loss, parts = model.loss(waves, ids, tags, pad_ids(negatives, tok.vocab_size) if negatives else None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        bar.set_postfix(parts)
    return model.eval()


@torch.no_grad()
def evaluate_clap(model, clips, tok):
    """Held-out [(waveform, record)] -> {"top1": audio -> caption retrieval (is each clip's own
    caption the nearest?), "true_pairs": mean CLAP score of the true pairs, "exact_events":
    share of clips whose tagger names exactly their events}."""
    feats, lengths = model.hear([torch.from_numpy(x) for x, _ in clips])
    a = model.audio_embed(feats, lengths)
    t = model.text_embed(pad_ids([tok.encode(r["caption"]) for _, r in clips], tok.vocab_size))
    sim = a @ t.T
    heard = model.heard_keywords(feats, lengths)
    return {"top1": (sim.argmax(1) == torch.arange(len(clips))).float().mean().item(),
            "true_pairs": sim.diag().mean().item(),
            "exact_events": float(np.mean([h == {e["keyword"] for e in r["events"]} for h, (_, r) in zip(heard, clips)]))}
