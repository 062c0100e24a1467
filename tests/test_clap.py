"""clap.py against hand computations: the loss as InfoNCE plus masked BCE written out in
numpy, the CLAP score as a cosine, and worked examples of frame_tags, pad_ids and
heard_keywords."""

import numpy as np
import pytest
import torch

from checkpoint import save_checkpoint
from clap import K, N_TAGS, TAG_WEIGHT, Clap, ClapConfig, contradiction, frame_tags, pad_ids
from toy.world import KEYWORDS, arrange, phrase

VOCAB = 50


def tiny_clap(seed=0):
    torch.manual_seed(seed)
    return Clap(ClapConfig(text_vocab=VOCAB, d_text=16, text_layers=1, d_embed=8)).eval()


def clips(seed=0):
    """Three clips of different lengths (0.3, 0.5, 0.41 s: 7, 12 and 10 frames at 25 Hz) and captions of 3, 5 and 1 tokens."""
    g = torch.Generator().manual_seed(seed)
    waves = [0.1 * torch.randn(n, generator=g) for n in (4800, 8000, 6560)]
    ids = pad_ids([[3, 17, 8], [41, 2, 2, 9, 30], [12]], VOCAB)
    return waves, ids


def np_linear(layer, x):
    return x @ layer.weight.detach().double().numpy().T + layer.bias.detach().double().numpy()


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def logsumexp(x, axis):
    m = x.max(axis, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis, keepdims=True))).squeeze(axis)


def hand_embeddings(model, waves, ids):
    """Audio: the mean of each clip's real frames, projected, normalised; text: the tower's
    pooled output, projected, normalised; plus the frames and their lengths."""
    with torch.no_grad():
        feats, lengths = model.hear(waves)
        pooled_text = model.text(ids).double().numpy()
    f, n = feats.double().numpy(), lengths.numpy()
    pooled = np.stack([f[b, :n[b]].mean(0) for b in range(len(n))])
    return unit(np_linear(model.audio_proj, pooled)), unit(np_linear(model.text_proj, pooled_text)), f, n


@pytest.mark.parametrize("log_scale,negatives", [(2.0, False), (5.0, False), (2.0, True)])  # e^5 = 148 is clamped to 100
def test_loss_is_infonce_plus_masked_tagging_bce(log_scale, negatives):
    """negatives: two hard-negative texts are two more columns of the audio -> text direction
    only (every clip should score them below its own caption; no clip is theirs)."""
    model = tiny_clap()
    with torch.no_grad():
        model.logit_scale.fill_(log_scale)
    waves, ids = clips()
    neg = pad_ids([[8, 17, 3], [30, 9]], VOCAB) if negatives else None
    tags = (torch.rand(3, 15, N_TAGS, generator=torch.Generator().manual_seed(1)) < 0.3).float()  # 3 frames too many
    with torch.no_grad():
        total, parts = model.loss(waves, ids, tags, neg)
    a, t, f, n = hand_embeddings(model, waves, ids)
    assert n.tolist() == [7, 12, 10]
    logits = min(np.exp(log_scale), 100.0) * a @ t.T
    a2t = logits
    if negatives:
        _, t_neg, _, _ = hand_embeddings(model, waves, neg)
        a2t = np.concatenate([logits, min(np.exp(log_scale), 100.0) * a @ t_neg[:2].T], 1)  # (3, 5)
    rows = (logsumexp(a2t, 1) - np.diag(logits)).mean()  # audio -> its caption among the 3 (and the negatives)
    cols = (logsumexp(logits, 0) - np.diag(logits)).mean()  # caption -> its audio
    contrastive = (rows + cols) / 2
    z, y = np_linear(model.tagger, f), tags.double().numpy()[:, :f.shape[1]]  # [3, 12, N_TAGS]
    bce = np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))
    real = np.arange(f.shape[1])[None] < n[:, None]  # padded frames carry no loss
    tagging = bce.mean(-1)[real].mean()
    assert parts["contrastive"] == pytest.approx(contrastive, rel=1e-5)
    assert parts["tagging"] == pytest.approx(tagging, rel=1e-5)
    assert float(total) == pytest.approx(contrastive + TAG_WEIGHT * tagging, rel=1e-5)


def test_score_is_the_cosine_of_each_clip_with_its_own_text(tmp_path):
    model = tiny_clap()
    waves, ids = clips()
    a, t, _, _ = hand_embeddings(model, waves, ids)
    score = model.score(waves, ids)
    np.testing.assert_allclose(score.double().numpy(), (a * t).sum(-1), atol=1e-6)
    assert score.abs().max() <= 1 + 1e-6
    # one clip alone scores as in the batch: its padding changes neither tower
    alone = model.score(waves[2:], pad_ids([[12]], VOCAB))
    torch.testing.assert_close(alone, score[2:], atol=1e-5, rtol=0)
    save_checkpoint(tmp_path / "clap.pt", model, step=0)
    loaded = Clap.from_checkpoint(tmp_path / "clap.pt")  # and a checkpoint scores the same
    assert torch.equal(loaded.score(waves, ids), score)


def test_frame_tags_worked_example():
    """A drum (hits at 0.1 s and 1.48 s, loud, 0.1 to 1.6 s) and a high, quiet bell (0.5 to
    0.9 s; its onset is its only unit) over 2 s, 50 frames at 25 Hz (frame = int(25 t))."""
    drum, bell = KEYWORDS.index("drum"), KEYWORDS.index("bell")
    events = [{"keyword": "drum", "onset": 0.1, "offset": 1.6, "times": [0.1, 1.48], "loudness": "loud"},
              {"keyword": "bell", "onset": 0.5, "offset": 0.9, "pitch": "high", "loudness": "quiet"}]
    want = torch.zeros(50, N_TAGS)
    want[2:41, drum] = 1  # frames 2 (0.1 s) .. 40 (1.6 s)
    want[[2, 37], K + drum] = 1  # its hits
    want[2:41, 2 * K + 2] = 1  # loud
    want[12:23, bell] = 1  # frames 12 (0.5 s) .. 22 (0.9 s)
    want[12, K + bell] = 1
    want[12:23, 2 * K + 1] = 1  # high
    want[12:23, 2 * K + 3] = 1  # quiet
    assert torch.equal(frame_tags(events, 50), want)
    # an event running past the clip stops at its last frame; a low pitch is tag 2K
    late = frame_tags([{"keyword": "hum", "onset": 1.0, "offset": 3.0, "pitch": "low"}], 30)
    assert late[:, 0].tolist() == [0] * 25 + [1] * 5 and late[25:, 2 * K].tolist() == [1] * 5
    assert late[25, K] == 1 and late.sum() == 11


def test_pad_ids_worked_examples():
    assert pad_ids([[5, 6], [7]], 9).tolist() == [[5, 6], [7, 9]]
    assert pad_ids([[1, 2, 3, 4], [5]], 0, max_len=3).tolist() == [[1, 2, 3], [5, 0, 0]]
    assert pad_ids([[4]], 9).dtype == torch.long


def test_heard_keywords_worked_example():
    """A tagger that always hears a bell and hears a drum where feature 0 exceeds 0.5: a
    keyword is heard when active in at least 3 of the clip's real frames."""
    model = tiny_clap()
    bell, drum = KEYWORDS.index("bell"), KEYWORDS.index("drum")
    with torch.no_grad():
        model.tagger.weight.zero_()
        model.tagger.bias.fill_(-1.0)
        model.tagger.bias[bell] = 1.0
        model.tagger.weight[drum, 0] = 2.0
    feats = torch.zeros(3, 6, model.audio.config.d_model)
    feats[0, :, 0] = torch.tensor([1, 1, 1, 0, 0, 1.0])  # 5 real frames: drum in 3 of them
    feats[1, :, 0] = torch.tensor([1, 1, 0, 0, 1, 1.0])  # 4 real frames: drum in 2 (the rest is padding)
    feats[2, :, 0] = 1.0  # 2 real frames: too short for anything
    heard = model.heard_keywords(feats, torch.tensor([5, 4, 2]))
    assert heard == [{"bell", "drum"}, {"bell"}, set()]


def captions_of(plan):
    """Every short caption the world may write for a plan: both templates, with and without
    the level words (toy.world.short_caption's draws)."""
    out = set()
    for template in (0, 1):
        for level in (False, True):
            text = arrange([phrase(ev, level) for ev in plan["events"]], plan["layout"], template)
            out.add(text[0].upper() + text[1:] + ".")
    return out


def test_contradictions_get_exactly_one_fact_wrong():
    """A quiet low bell, then two loud high beeps: each contradiction is a caption the world
    would write for the bell and beeps in the other order, for another count of beeps, for
    one pitch flipped, or for a plan with a sound the clip lacks, and never one of the clip's
    own captions. All four kinds come up."""
    bell = {"keyword": "bell", "loudness": "quiet", "pitch": "low", "f0": 300.0, "onset": 0.1, "offset": 1.4}
    beeps = {"keyword": "beep", "loudness": "loud", "pitch": "high", "count": 2, "f0": 2000.0, "onset": 1.6,
             "offset": 2.9}
    record = {"layout": "sequence", "events": [bell, beeps]}
    truth = captions_of(record)
    kinds = {"order": captions_of({"layout": "sequence", "events": [beeps, bell]}),
             "count": set().union(*(captions_of({"layout": "sequence", "events": [bell, {**beeps, "count": c}]})
                                    for c in (1, 3, 4))),
             "pitch": captions_of({"layout": "sequence", "events": [{**bell, "pitch": "high"}, beeps]})
             | captions_of({"layout": "sequence", "events": [bell, {**beeps, "pitch": "low"}]})}
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        text = contradiction(record, rng)
        assert text not in truth
        kind = next((k for k, texts in kinds.items() if text in texts), None)
        if kind is None:  # another sound stands where the bell or the beeps were
            words = text.lower()
            assert any(k in words for k in KEYWORDS if k not in ("bell", "beep")), text
            kind = "event"
        seen.add(kind)
    assert seen == {"order", "count", "pitch", "event"}
    assert record["events"] == [bell, beeps] and beeps["count"] == 2  # the record itself is untouched
    # 'together' contradicts as 'then'; a single hum has no order and no count to get wrong
    hum = {"keyword": "hum", "loudness": "loud", "pitch": "low", "f0": 120.0, "onset": 0.1, "offset": 1.9}
    hiss = {"keyword": "hiss", "loudness": "quiet", "onset": 0.1, "offset": 1.9}
    together = {"layout": "together", "events": [hum, hiss]}
    then = captions_of({"layout": "sequence", "events": [hum, hiss]})
    assert any(contradiction(together, rng) in then for _ in range(50))
    alone = [contradiction({"layout": "single", "events": [hum]}, rng) for _ in range(50)]
    assert "A high hum." in alone and "A loud high hum." in alone and not captions_of({"layout": "single",
                                                                                      "events": [hum]}) & set(alone)
