"""xcodec_train.py: the training of the toy preset: the codebooks' moving averages against hand computations,
dead-code restarts, the k-means start, a few steps of X-codec's objectives, the checkpoint, the probe."""

import os
import subprocess
import sys

import pytest
import torch

from codec import world_clips
from xcodec import PRESETS, AcousticConfig, Hubert, ResidualVQ, SemanticConfig, XCodec, XCodecConfig
from xcodec_train import (
    FRAME_RATE, HOP, N_KEYWORDS, SILENCE, QuantizerEMA, TrainConfig, bandwidth_codebooks, cut, ema_update, event_frames,
    frame_labels, load_xcodec, planned_steps, probe_events, restart_dead, train_teacher, train_xcodec, xcodec_losses)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The toy preset's shape at a size that trains in a second: hop 320 (so the toy world's frames), a
# HuBERT of one layer, 2 codebooks of 16 (4 bits x 50 Hz = 0.2 kbps each).
MICRO = XCodecConfig(
    acoustic=AcousticConfig(encoder_hidden_size=2, decoder_hidden_size=16, hidden_size=8),
    semantic=SemanticConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                            conv_dim=(8,) * 7, num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2),
    codebook_size=16, target_bandwidths=(0.2, 0.4))
MICRO_RECIPE = TrainConfig(batch=2, kmeans_batches=2, kmeans_iters=3, warmup=1)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny models on one thread


@pytest.fixture(scope="module")
def clips():
    return world_clips(0, range(2))


def test_ema_update_by_hand():
    # two codes at 0 and 10, each of size 1; vectors 2 and 4 fall on code 0, 9 on code 1; decay 0.5
    embed, size, avg = torch.tensor([[0.0], [10.0]]), torch.tensor([1.0, 1.0]), torch.tensor([[0.0], [10.0]])
    ema_update(embed, size, avg, torch.tensor([[2.0], [4.0], [9.0]]), torch.tensor([0, 0, 1]), decay=0.5)
    assert torch.allclose(size, torch.tensor([0.5 + 0.5 * 2, 0.5 + 0.5 * 1]))  # [1.5, 1.0]
    assert torch.allclose(avg, torch.tensor([[0.5 * 0 + 0.5 * 6], [0.5 * 10 + 0.5 * 9]]))  # [3, 9.5]
    assert torch.allclose(embed, torch.tensor([[3 / 1.5], [9.5 / 1.0]]), atol=1e-4)  # sum / size


def test_ema_update_leaves_an_unused_code_in_place():
    # an unused code's sum and size decay together, so it stays where it was
    embed, size, avg = torch.tensor([[1.0], [5.0]]), torch.tensor([2.0, 4.0]), torch.tensor([[2.0], [20.0]])
    ema_update(embed, size, avg, torch.tensor([[1.0]]), torch.tensor([0]), decay=0.9)
    assert torch.allclose(embed[1], torch.tensor([5.0]), atol=1e-4)


def test_restart_dead_replaces_exactly_the_unused_codes():
    embed, avg = torch.arange(8.0).view(4, 2), torch.arange(8.0).view(4, 2) * 3
    size = torch.tensor([5.0, 0.0, 2.0, 0.001])
    x = torch.arange(100.0, 112.0).view(6, 2)
    before = (embed.clone(), size.clone(), avg.clone())
    dead = restart_dead(embed, size, avg, x, threshold=1.0, generator=torch.Generator().manual_seed(0))
    assert dead.tolist() == [False, True, False, True]
    for new, old in zip((embed, size, avg), before):
        assert torch.equal(new[~dead], old[~dead])  # the live codes are untouched
    rows = [tuple(r) for r in x.tolist()]
    assert all(tuple(r) in rows for r in embed[dead].tolist()) and len({tuple(r) for r in embed[dead].tolist()}) == 2
    assert torch.equal(size[dead], torch.full((2,), 6 / 4)) and torch.equal(avg[dead], embed[dead] * 6 / 4)


def test_kmeans_init_covers_the_points():
    # one codebook of 8 codes in 2-D (acoustic 1 + semantic 1), four tight blobs of 50 points
    cfg = XCodecConfig(acoustic=AcousticConfig(hidden_size=1), semantic=SemanticConfig(hidden_size=1),
                       codebook_size=8, target_bandwidths=(0.15,))
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    x = (centres[:, None] + 0.1 * torch.randn(4, 50, 2, generator=g)).view(-1, 2)
    quantizer, ema = ResidualVQ(cfg), QuantizerEMA(cfg, 0.99, 0.03)
    ema.init_kmeans(quantizer, x, batches=2, iters=10, generator=g)
    embed = quantizer.quantizers[0].codebook.embed
    assert torch.cdist(x, embed).min(1).values.max() < 0.5  # every point has a code near it
    assert torch.allclose(ema.cluster_size.sum(), torch.tensor(200 / 2))  # sizes are per batch
    assert torch.allclose(ema.embed_avg[0], embed * ema.cluster_size[0, :, None])


def test_quantizer_codes_as_encode_and_gradient_straight_through():
    torch.manual_seed(0)
    quantizer, ema = ResidualVQ(MICRO), QuantizerEMA(MICRO, 0.9, 0.0)
    for q in quantizer.quantizers:
        q.codebook.embed.normal_()
    x = torch.randn(2, 5, MICRO.hidden_size, requires_grad=True)
    codes = quantizer.encode(x.detach(), 2)  # with the codebooks before this step's update
    first, both = quantizer.decode(codes[:, :1]), quantizer.decode(codes)
    quantized, got, commitment = ema(quantizer, x, 2)
    assert torch.equal(got, codes) and torch.allclose(quantized, both)
    # codebook k's commitment: x against its coding by codebooks 1..k, the mean over the two
    assert torch.allclose(commitment, ((x - first).pow(2).mean() + (x - both).pow(2).mean()) / 2)
    quantized.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))  # straight through


def test_bandwidths_and_schedule():
    assert bandwidth_codebooks(PRESETS["toy"]) == [1, 2, 3, 4, 8]
    assert bandwidth_codebooks(MICRO) == [1, 2]
    assert planned_steps(100, 5000, 50.0, 600.0, 20) == 1200 and planned_steps(10, 5000, 5.0, 600.0, 20) == 5000
    assert planned_steps(100, 5000, 50.0, None, 20) == 5000 and planned_steps(100, 500, 50.0, 600.0, 20) == 500


def test_event_frames_and_labels():
    drum = {"keyword": "drum", "loudness": "loud", "onset": 0.1, "offset": 0.8, "times": [0.1, 0.5]}
    tags = event_frames([drum], 60)
    k = 8  # drum's index in KEYWORDS
    assert tags[:, k].nonzero().flatten().tolist() == list(range(5, 41))
    assert tags[:, N_KEYWORDS + k].nonzero().flatten().tolist() == [5, 25]
    hum = {"keyword": "hum", "loudness": "quiet", "pitch": "low", "onset": 0.1, "offset": 0.5}
    assert frame_labels([hum], 30).tolist() == [SILENCE] * 5 + [0] * 21 + [SILENCE] * 4
    assert (frame_labels([hum, drum], 60)[5:26] == -1).all()
    assert cut(torch.arange(5), 3, 4).tolist() == [3, 4, 0, 0]


def labelled_clips(n=8, seconds=2.0):
    """Clips whose samples in frame t are frame t's class, each with one event in its middle."""
    clips = []
    for i in range(n):
        events = [{"keyword": ("hum", "bell", "hiss", "beep")[i // 2 % 4], "loudness": "loud",
                   "onset": 0.5, "offset": 1.5 - 0.1 * (i % 3)}]
        labels = frame_labels(events, int(seconds * FRAME_RATE)).clamp(min=0)
        clips.append((labels.float().repeat_interleave(HOP).numpy(), events))
    return clips


def test_probe_on_worked_examples():
    clips = labelled_clips()
    one_hot = lambda wav: torch.nn.functional.one_hot(wav[0, ::HOP].long(), N_KEYWORDS + 1).float()  # noqa: E731
    assert probe_events(one_hot, clips) == 1.0
    g = torch.Generator().manual_seed(0)
    noise = lambda wav: torch.randn(wav.shape[-1] // HOP, 16, generator=g)  # noqa: E731
    silence = sum((frame_labels(ev, 100) == SILENCE).sum() for _, ev in clips[1::2]) / (100 * len(clips[1::2]))
    assert probe_events(noise, clips) < silence + 0.1  # no better than naming the commonest class
    assert 0.0 <= probe_events(Hubert(MICRO.semantic).eval(), clips) <= 1.0  # a teacher is probed on its features


def test_teacher_is_frozen(clips):
    teacher = train_teacher(clips, MICRO, steps=2, batch=2, seconds=0.5, progress=False)
    assert isinstance(teacher, Hubert) and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())


def test_a_few_steps_lower_the_loss(clips):
    torch.manual_seed(0)
    codec, ema = XCodec(MICRO), QuantizerEMA(MICRO, 0.9, 0.03)
    codec.semantic_model.requires_grad_(False)
    wav = torch.stack([torch.as_tensor(w[:16000]) for w, _ in clips])  # the same 2 crops every step
    params = [p for p in codec.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-3, betas=MICRO_RECIPE.betas)
    losses = []
    for _ in range(12):
        loss, parts = xcodec_losses(codec, ema, wav, 2, MICRO_RECIPE)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert set(parts) == {"stft", "mel", "semantic", "commit"}
    assert sum(losses[-3:]) < 0.8 * sum(losses[:3]), losses


def test_checkpoint_round_trips(clips, tmp_path):
    teacher = Hubert(MICRO.semantic).eval().requires_grad_(False)
    codec = train_xcodec(tmp_path, clips, MICRO, steps=3, teacher=teacher, progress=False, recipe=MICRO_RECIPE)
    loaded = load_xcodec(tmp_path / "xcodec.pt", MICRO)
    assert loaded.config == MICRO
    wav = torch.as_tensor(clips[0][0])[None]
    codes = codec.encode(wav)
    assert torch.equal(loaded.encode(wav), codes) and torch.equal(loaded.decode(codes), codec.decode(codes))
    assert torch.equal(loaded.semantic_model.encoder.layers[0].attention.q_proj.weight,
                       teacher.encoder.layers[0].attention.q_proj.weight)  # the teacher is in the checkpoint


def test_cli_eval_only_without_a_checkpoint(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "xcodec_train.py"), "--out", str(tmp_path), "--eval-only"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 1 and "not found: train it first" in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1
