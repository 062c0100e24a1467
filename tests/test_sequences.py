"""sequences.py: the template as a worked example, packing, the packed loss, and what DPO compares."""

import math

import pytest
import torch
import torch.nn.functional as F

from model import (ASSISTANT, AUDIO, AUDIO_IN, BOS, EOS, EOT, INTERVAL, N_SPECIAL, PAD, TEXT, UALM, USER, UALMConfig)
from sequences import (FRAME, NO_LOSS, TOKEN, build, cfg_dropout, codebook_weights, collate, corrupt_codes, delay_cells, delay_pattern, loss_sums, pack,
                       frame_nll, row_logp, undelay_pattern)

CFG = UALMConfig(text_size=100, audio_dim=16, backbone=dict(vocab_size=1, hidden_size=32, intermediate_size=64,
                                                            num_hidden_layers=2, num_attention_heads=4,
                                                            num_key_value_heads=2, rope_theta=10000.0))


def enc(s):
    return [ord(c) - ord("a") for c in s]


def test_template_worked_example():
    codes = torch.arange(16).view(8, 2)  # two frames
    s = build([{"role": "user", "text": "ab"}, {"role": "user", "feats": torch.zeros(3, 16)},
               {"role": "assistant", "text": "c"}, {"role": "assistant", "codes": codes}], enc, CFG)
    stream0 = s.ids[:, 0].tolist()
    t = N_SPECIAL
    assert stream0[:16] == [BOS, USER, TEXT, t + 0, t + 1, EOT, USER, AUDIO, AUDIO_IN, AUDIO_IN, AUDIO_IN, EOS,
                            ASSISTANT, TEXT, t + 2, EOT]
    assert stream0[16:18] == [ASSISTANT, AUDIO] and stream0[-1] == EOS
    frames = s.ids[18:-1]  # 2 frames + 7 delay steps
    assert frames.shape == (9, 8)
    off = CFG.audio_offset
    # step 0: codebook 0 holds frame 0's code, codebooks 1..7 their pad (interval index 0)
    assert frames[0].tolist() == [off + codes[0, 0] + 1] + [off + k * 1025 for k in range(1, 8)]
    # codebook k shifted right by k: frame 1 of codebook 7 sits at step 8
    assert frames[8, 7] == off + 7 * 1025 + codes[7, 1] + 1
    assert (s.ids[:16, 1:] == PAD).all()
    kinds = s.kind.tolist()
    assert kinds[:12] == [NO_LOSS] * 12  # user messages: no loss
    assert kinds[12:18] == [TOKEN] * 6 and kinds[18:27] == [FRAME] * 9 and kinds[27] == TOKEN
    assert s.feats.shape == (3, 16)


def test_delay_pattern_worked_example():
    S = -1
    codes = torch.tensor([[1, 2, 3, 4]] * 3)[None]  # [1, 3, 4]
    want = torch.tensor([[1, 2, 3, 4, S, S], [S, 1, 2, 3, 4, S], [S, S, 1, 2, 3, 4]])[None]
    assert torch.equal(delay_pattern(codes), want)
    assert torch.equal(undelay_pattern(want), codes)


@pytest.mark.parametrize("shape", [(1, 8, 1), (2, 8, 5), (3, 8, 50), (2, 3, 4)])
def test_delay_pattern_round_trip(shape):
    B, K, T = shape
    codes = torch.randint(1024, shape, generator=torch.Generator().manual_seed(T))
    delayed = delay_pattern(codes)
    assert delayed.shape == (B, K, T + K - 1)
    assert torch.equal(undelay_pattern(delayed), codes)
    for k in range(K):  # codebook k: k pads, its codes, K-1-k pads
        assert (delayed[:, k, :k] == -1).all() and (delayed[:, k, k + T:] == -1).all()
        assert torch.equal(delayed[:, k, k:k + T], codes[:, k])


def test_delay_pads_map_to_each_interval_index_zero():
    cfg = UALMConfig()
    ids = cfg.audio_ids(delay_pattern(torch.zeros(1, 8, 2, dtype=torch.long)))  # [1, 8, 9]
    for k in range(8):
        assert ids[0, k, 0 if k else 8] == cfg.audio_offset + k * INTERVAL  # a pad cell
        assert ids[0, k, k] == cfg.audio_offset + k * INTERVAL + 1  # code 0


def test_delay_cells_are_the_non_pad_cells_of_the_pattern():
    """delay_cells, row by row, against the cells delay_pattern fills with codes."""
    for T in (1, 2, 5):
        grid = delay_pattern(torch.zeros(1, 8, T, dtype=torch.long))[0]  # (8, T + 7), -1 = pad
        for step in range(T + 7):
            assert torch.equal(delay_cells(step, torch.tensor([T]))[0], grid[:, step] != -1)
    assert delay_cells(1, torch.tensor([2]), K=3).tolist() == [[True, True, False]]  # the docstring's step 1


def test_cfg_dropout_keeps_only_the_audio():
    codes = torch.randint(0, 1024, (8, 4))
    s = cfg_dropout(build([{"role": "user", "text": "abc"}, {"role": "assistant", "codes": codes}], enc, CFG))
    frame = s.kind == FRAME
    assert int(frame.sum()) == 4 + 7
    assert (s.ids[~frame] == PAD).all() and (s.kind[~frame] == NO_LOSS).all()


def pack_lengths(lengths, rows, budget, lookahead=64):
    """pack over stand-in samples of the given lengths: (the lengths of each row, deferred keys)."""
    todo = iter(enumerate(torch.zeros(n, 8) for n in lengths))
    samples, bins, deferred = pack(lambda: next(todo, None), rows, budget, lookahead)
    return [[len(samples[i]) for i in b] for b in bins], [k for k, _ in deferred]


def test_best_fit_packing_worked_examples():
    # the docstring's example: 6 and 4 fill row 0, 5 and 3 row 1, the second 3 waits
    assert pack_lengths([6, 5, 4, 3, 3], 2, 10, lookahead=1) == ([[6, 4], [5, 3]], [4])
    # best fit, not first fit: the 2 goes to the row with the least room that holds it
    assert pack_lengths([7, 5, 2], 2, 10) == ([[7, 2], [5]], [])
    # a sample that fits nowhere is deferred, later ones still fill the rows
    assert pack_lengths([8, 8, 5, 2, 2], 2, 10) == ([[8, 2], [8, 2]], [2])
    with pytest.raises(ValueError, match="raise --budget"):
        pack_lengths([11], 1, 10)


@pytest.mark.parametrize("dense", [False, True])
def test_packed_loss_equals_one_by_one(dense):
    """Per-sample attention (segments) and the dense mask of train.py --compile alike."""
    torch.manual_seed(0)
    model = UALM(CFG).eval()
    with torch.no_grad():
        model.stream_emb.normal_()
    convs = [[{"role": "user", "text": "make"}, {"role": "assistant", "codes": torch.randint(0, 1024, (8, 5))}],
             [{"role": "user", "text": "what"}, {"role": "user", "feats": torch.randn(4, 16)},
              {"role": "assistant", "text": "bell"}],
             [{"role": "user", "text": "twoplus"}, {"role": "assistant", "text": "four"}],
             [{"role": "user", "feats": torch.randn(6, 16)}, {"role": "assistant", "text": "ab"},
              {"role": "assistant", "codes": torch.randint(0, 1024, (8, 3))}]]
    samples = [build(c, enc, CFG) for c in convs]
    samples.append(cfg_dropout(samples[0]))
    todo = iter(enumerate(samples))
    samples, bins, deferred = pack(lambda: next(todo, None), 3, 48)
    assert not deferred and sum(len(b) > 1 for b in bins)  # all placed, something really packed together
    packed = loss_sums(model, collate(samples, bins, 48), dense_mask=dense)
    alone = [loss_sums(model, collate(samples, [[i]], len(s))) for i, s in enumerate(samples)]
    for key in ("sum", "n", "text", "codebooks"):
        torch.testing.assert_close(packed[key], sum(a[key] for a in alone), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("first", [None, 0.5])
def test_loss_weights_by_hand(first):
    """Assistant tokens and audio frames: each token's CE weighs 1, each frame's 8 codebook
    CEs weigh 1/8 each (the release), or with first=0.5 codebook 1's CE 0.5 and the other
    seven 0.5/7 each; the sum over positions / their number, computed from the logits directly."""
    torch.manual_seed(1)
    model = UALM(CFG).eval()
    codes = torch.randint(0, 1024, (8, 1))
    s = build([{"role": "user", "text": "a"}, {"role": "assistant", "codes": codes}], enc, CFG)
    batch = collate([s], [[0]], len(s))
    got = loss_sums(model, batch, weights=None if first is None else codebook_weights(first))
    w = [1 / 8] * 8 if first is None else [first] + [(1 - first) / 7] * 7
    h = model(s.ids[None, :-1])[0]
    ce = []
    for r in range(1, len(s)):
        if s.kind[r] == TOKEN:
            stream0 = torch.cat([model.lm.lm_head(h[r - 1]), model.audio_head(h[r - 1])[:1025]])  # text, codebook 0
            ce.append(F.cross_entropy(stream0, s.ids[r, 0]))
        elif s.kind[r] == FRAME:
            logits = model.audio_head(h[r - 1] + torch.cat([torch.zeros(1, 32), model.stream_emb])).view(8, -1)
            per = [F.cross_entropy(logits[k, 1025 * k:1025 * (k + 1)],
                                   s.ids[r, k] - CFG.audio_offset - 1025 * k) for k in range(8)]
            ce.append(sum(wk * ce_k for wk, ce_k in zip(w, per)))
    assert int(got["n"]) == len(ce) == 3 + 8  # <|assistant|>, <|audio|>, <|eos|> and 1 + 7 delayed rows
    torch.testing.assert_close(got["sum"] / got["n"], sum(ce) / len(ce), atol=1e-5, rtol=1e-5)


def test_understanding_items_of_one_clip_become_one_conversation():
    import tasks
    feats = torch.zeros(3, 16)
    items = [{"sound": "a.wav", "conversations": [{"from": "human", "value": "<sound>\nab"},
                                                  {"from": "gpt", "value": "c"}]},
             {"sound": "a.wav", "conversations": [{"from": "human", "value": "<sound>\nd"},
                                                  {"from": "gpt", "value": "e"}]}]
    conv = tasks.understand(items, {"feats": {"a.wav": feats}}, order=[1, 0])
    assert [(m["role"], m.get("text")) for m in conv] == [("user", "d"), ("user", None), ("assistant", "e"),
                                                          ("user", "ab"), ("assistant", "c")]
    assert conv[1]["feats"] is feats  # heard once, with the first question
    s = build(conv, enc, CFG)
    t = N_SPECIAL
    assert s.ids[:, 0].tolist() == [BOS, USER, TEXT, t + 3, EOT, USER, AUDIO, AUDIO_IN, AUDIO_IN, AUDIO_IN, EOS,
                                    ASSISTANT, TEXT, t + 4, EOS, USER, TEXT, t + 0, t + 1, EOS,
                                    ASSISTANT, TEXT, t + 2, EOS]
    assert s.kind.tolist() == [NO_LOSS] * 11 + [TOKEN] * 4 + [NO_LOSS] * 5 + [TOKEN] * 4


def test_row_logp_is_each_rows_audio_log_likelihood():
    """What DPO compares: per row of a padded batch, minus the audio part of that sample's
    loss (each codebook's CE weighing 1/8), which test_loss_weights_by_hand checks by hand."""
    torch.manual_seed(2)
    model = UALM(CFG).eval()
    samples = [build([{"role": "user", "text": t}, {"role": "assistant", "codes": torch.randint(0, 1024, (8, n))}],
                     enc, CFG) for t, n in (("ab", 6), ("cde", 2))]
    got = row_logp(model, collate(samples, [[0], [1]], max(len(s) for s in samples)))
    want = torch.stack([-loss_sums(model, collate([s], [[0]], len(s)))["codebooks"].sum() / 8 for s in samples])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_dpo_loss_worked_example():
    from dpo import dpo_loss
    # the policy raised the winner by 1 nat over the reference and lowered the loser by 1: margin 2
    loss, margin = dpo_loss(torch.tensor([-10.0, -12.0]), torch.tensor([-11.0, -11.0]), beta=0.1)
    assert float(margin) == 2.0
    assert float(loss) == pytest.approx(math.log(1 + math.exp(-0.2)))


def test_frame_nll_is_each_frames_codebook_mean_by_hand():
    """eval.py's caption gap: each trained audio row's 8 codebook CEs, averaged, computed
    here from the head and the stream embeddings directly (text rows are left out)."""
    torch.manual_seed(3)
    model = UALM(CFG).eval()
    s = build([{"role": "user", "text": "ab"}, {"role": "assistant", "codes": torch.randint(0, 1024, (8, 3))}],
              enc, CFG)
    h = model(s.ids[None, :-1])[0]
    want = []
    for r in range(1, len(s)):
        if s.kind[r] == FRAME:
            logits = model.audio_head(h[r - 1] + torch.cat([torch.zeros(1, 32), model.stream_emb])).view(8, -1)
            want.append(sum(F.cross_entropy(logits[k, 1025 * k:1025 * (k + 1)],
                                            s.ids[r, k] - CFG.audio_offset - 1025 * k) for k in range(8)) / 8)
    got = frame_nll(model, s)
    assert len(want) == 3 + 7
    torch.testing.assert_close(got, torch.stack(want), atol=1e-5, rtol=1e-5)


def test_input_noise_changes_only_trained_audio_codes():
    """corrupt_codes: a share p of the codes of trained audio rows become other codes of the
    same codebook; pads, text rows and heard audio stay; one generator seed, one draw."""
    codes = torch.randint(0, 1024, (8, 300))
    s = build([{"role": "user", "text": "a bell"}, {"role": "user", "feats": torch.randn(3, 16)},
               {"role": "assistant", "codes": codes}], enc, CFG)
    ids, kind = s.ids[None], s.kind[None].long()
    noisy = corrupt_codes(ids, kind, CFG, 0.3, torch.Generator().manual_seed(0))
    torch.testing.assert_close(noisy, corrupt_codes(ids, kind, CFG, 0.3, torch.Generator().manual_seed(0)))
    changed = noisy != ids
    frame_rows = (kind == FRAME)[0]
    assert not changed[0, ~frame_rows].any()  # text, specials, heard audio: untouched
    interval = (ids - CFG.audio_offset) // INTERVAL  # the codebook of each audio cell
    code = (ids - CFG.audio_offset) % INTERVAL
    assert not changed[(code == 0) & frame_rows[None, :, None]].any()  # the delay pattern's pads stay
    new = noisy[changed] - CFG.audio_offset
    assert torch.equal(new // INTERVAL, interval[changed]) and (new % INTERVAL >= 1).all()  # same codebook, a code
    real = (code >= 1) & frame_rows[None, :, None]
    share = changed.sum().item() / real.sum().item()
    assert abs(share - 0.3 * 1023 / 1024) < 0.03, share  # a draw equal to the true code leaves it unchanged


def test_noisy_input_is_read_and_true_codes_scored():
    """loss_sums with batch["noisy"]: the hidden states come from the noisy grid, the
    cross-entropy is against the true codes (computed here from the logits directly)."""
    torch.manual_seed(2)
    model = UALM(CFG).eval()
    s = build([{"role": "user", "text": "a"}, {"role": "assistant", "codes": torch.randint(0, 1024, (8, 6))}], enc, CFG)
    batch = collate([s], [[0]], len(s))
    batch["noisy"] = corrupt_codes(batch["ids"], batch["kind"].long(), CFG, 0.5, torch.Generator().manual_seed(1))
    assert not torch.equal(batch["noisy"], batch["ids"])
    got = loss_sums(model, batch)
    h = model(batch["noisy"][0, None, :-1])[0]
    frames = [r for r in range(1, len(s)) if s.kind[r] == FRAME]
    per_cb = torch.zeros(8)
    for r in frames:
        logits = model.audio_head(h[r - 1] + torch.cat([torch.zeros(1, 32), model.stream_emb])).view(8, -1)
        per_cb += torch.stack([F.cross_entropy(logits[k, 1025 * k:1025 * (k + 1)], s.ids[r, k] - CFG.audio_offset - 1025 * k)
                               for k in range(8)])
    torch.testing.assert_close(got["codebooks"], per_cb, atol=1e-4, rtol=1e-4)
