"""codec.py: the delay pattern against its worked example, Griffin-Lim on a sine, shapes and
rates, the residual property of the RVQ, a micro training run, and checkpoints that load
exactly or fail clearly."""

import math

import numpy as np
import pytest
import torch

import model
from codec import (CODEBOOK_SIZE, CODEC_PRESETS, HOP, N_BINS, N_CODEBOOKS, N_FFT, SAMPLE_RATE, Codec, CodecConfig,
                   PEAK_WIDTH, codec_losses, delay_pattern, evaluate_codec, griffin_lim, log_magnitude,
                   peak_mask, save_checkpoint, stft_frames, train_codec, undelay_pattern, world_clips)
from rvq import ResidualVQ

MICRO = CODEC_PRESETS["micro"]


def tones(n: int, seconds: float = 1.0, seed: int = 0) -> list:
    """n clips of two decaying sines at random pitches and levels: a stand-in for world audio."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return [(rng.uniform(0.05, 0.4) * np.sin(2 * np.pi * rng.uniform(100, 2000) * t) * np.exp(-t * rng.uniform(0, 3))
             + 0.1 * np.sin(2 * np.pi * rng.uniform(100, 2000) * t)).astype(np.float32) for _ in range(n)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A micro codec after 40 steps, and the folder holding its checkpoint."""
    out = tmp_path_factory.mktemp("codec")
    return train_codec(out, tones(16), MICRO, steps=40, batch_size=4, crop_seconds=0.5, lr=3e-3, seed=0,
                       save_every=20, progress=False), out


# ---------------------------------------------------------------------------------------------- delay pattern
def test_constants_match_the_lm_vocabulary():
    assert (N_CODEBOOKS, CODEBOOK_SIZE) == (model.N_STREAMS, model.CODEBOOK_SIZE)


def test_delay_pattern_worked_example():
    S = -1
    codes = torch.tensor([[1, 2, 3, 4]] * 3)[None]  # [1, 3, 4]
    want = torch.tensor([[1, 2, 3, 4, S, S], [S, 1, 2, 3, 4, S], [S, S, 1, 2, 3, 4]])[None]
    assert torch.equal(delay_pattern(codes), want)
    assert torch.equal(undelay_pattern(want), codes)


@pytest.mark.parametrize("shape", [(1, 8, 1), (2, 8, 5), (3, 8, 50), (2, 3, 4)])
def test_delay_pattern_round_trip(shape):
    B, K, T = shape
    codes = torch.randint(CODEBOOK_SIZE, shape, generator=torch.Generator().manual_seed(T))
    delayed = delay_pattern(codes)
    assert delayed.shape == (B, K, T + K - 1)
    assert torch.equal(undelay_pattern(delayed), codes)
    for k in range(K):  # codebook k: k pads, its codes, K-1-k pads
        assert (delayed[:, k, :k] == -1).all() and (delayed[:, k, k + T:] == -1).all()
        assert torch.equal(delayed[:, k, k:k + T], codes[:, k])


def test_delay_pads_map_to_each_interval_index_zero():
    cfg = model.UALMConfig()
    ids = cfg.audio_ids(delay_pattern(torch.zeros(1, 8, 2, dtype=torch.long)))  # [1, 8, 9]
    for k in range(8):
        assert ids[0, k, 0 if k else 8] == cfg.audio_offset + k * model.INTERVAL  # a pad cell
        assert ids[0, k, k] == cfg.audio_offset + k * model.INTERVAL + 1  # code 0


# ---------------------------------------------------------------------------------------------- frames, Griffin-Lim
def test_frames_line_up_with_codes():
    assert stft_frames(torch.zeros(2, 50 * HOP)).shape == (2, N_BINS, 50)
    assert (N_FFT // HOP, N_BINS) == (4, 641)


def test_principal_axes_match_numpy_svd():
    """fit_basis against numpy's SVD of the centred frames: the same mean, the same top-K
    subspace (compared as projectors: axes carry no sign), the same spread along each axis;
    and a frame within that span survives to_coordinates -> from_coordinates."""
    rng = np.random.default_rng(0)
    frames = (rng.standard_normal((500, 40)) @ rng.standard_normal((40, N_BINS)) * 0.3 - 2).astype(np.float32)
    codec = Codec(CodecConfig(n_components=12))
    codec.fit_basis(torch.from_numpy(frames))
    centred = frames.astype(np.float64) - frames.mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    basis = codec.basis.double().numpy()
    np.testing.assert_allclose(codec.mean.numpy(), frames.mean(0), atol=1e-5)
    np.testing.assert_allclose(basis.T @ basis, vt[:12].T @ vt[:12], atol=1e-4)
    np.testing.assert_allclose(codec.scale.numpy(), s[:12] / np.sqrt(len(frames) - 1), rtol=1e-4)
    inside = torch.from_numpy((frames.mean(0) + 0.5 * vt[3] - 0.2 * vt[7]).astype(np.float32))[None, :, None]
    torch.testing.assert_close(codec.from_coordinates(codec.to_coordinates(inside)), inside, atol=1e-4, rtol=0)


def test_griffin_lim_recovers_a_sine_from_its_magnitude():
    """The exact |STFT| of a 440 Hz sine: 32 iterations bring the random start phase's 66%
    magnitude error under 10%, and the peak stays on bin 35 (440 Hz / 12.5 Hz per bin)."""
    t = torch.arange(SAMPLE_RATE) / SAMPLE_RATE
    sine = (0.5 * torch.sin(2 * math.pi * 440 * t))[None]  # [1, 16000]
    mag = stft_frames(sine).abs()  # [1, 641, 50]

    def error(wav):
        return float(torch.linalg.norm(stft_frames(wav).abs() - mag) / torch.linalg.norm(mag))

    wav = griffin_lim(mag)
    assert wav.shape == (1, SAMPLE_RATE)
    assert error(wav) < 0.1 and error(griffin_lim(mag, iters=0)) > 0.5
    assert stft_frames(wav).abs().mean(-1).argmax() == 35 == mag.mean(-1).argmax()
    assert torch.equal(griffin_lim(mag), wav)  # deterministic: a fixed-seed start phase


def test_peak_mask_finds_a_tone_in_noise_and_nothing_in_noise_alone():
    """A 1000 Hz sine (bin 80) over white noise 30 dB below it: the peaks are the Hann window's
    main lobe, bins 79-81 (the outer two 6 dB down), and the mask those and PEAK_WIDTH // 2 bins
    on either side, in every frame but the first (half of it is the padding's silence), and
    nothing else; noise alone, loud or quiet, gives an empty mask."""
    g = torch.Generator().manual_seed(0)
    t = torch.arange(SAMPLE_RATE) / SAMPLE_RATE
    noise = torch.randn(1, SAMPLE_RATE, generator=g)
    for level in (0.003, 0.03, 0.3):
        assert peak_mask(log_magnitude(stft_frames(level * noise).abs())).sum() == 0
    tone = 0.3 * torch.sin(2 * math.pi * 1000 * t)[None] + 0.3 * 10 ** (-30 / 20) * noise
    mask = peak_mask(log_magnitude(stft_frames(tone).abs()))[0]  # [641, 50]
    half = PEAK_WIDTH // 2
    want = torch.zeros(N_BINS, 1)
    want[79 - half:81 + half + 1] = 1
    assert torch.equal(mask[:, 1:], want.expand(-1, 49))


# ---------------------------------------------------------------------------------------------- shapes and RVQ
def test_encode_decode_shapes_and_rates(trained):
    codec, _ = trained
    wav = torch.from_numpy(tones(2)[0])[None]  # [1, 16000]: 1 s
    codes = codec.encode(wav)
    assert codes.shape == (1, 8, 50) and codes.dtype == torch.int64
    assert 0 <= codes.min() and codes.max() < CODEBOOK_SIZE
    assert codec.decode(codes).shape == (1, 16000)
    assert torch.equal(codec.encode(wav[:, None]), codes)  # [B, 1, N] works too
    assert codec.encode(torch.zeros(3, HOP + 1)).shape == (3, 8, 2)  # a partial frame is padded
    with pytest.raises(ValueError, match="undelay_pattern"):
        codec.decode(delay_pattern(codes))


def test_each_codebook_lowers_the_quantisation_error():
    torch.manual_seed(0)
    rvq = ResidualVQ(N_CODEBOOKS, CODEBOOK_SIZE, dim=8, decay=0.99, dead_threshold=1.0).train()
    z = torch.randn(16, 8, 256)  # 4096 vectors, more than the 1024 codes
    rvq(z)  # k-means init of every codebook on this batch's residuals
    residual, errors = z.transpose(1, 2).reshape(-1, 8), []
    for vq in rvq.layers:
        residual = residual - vq.codebook[vq.nearest(residual)]
        errors.append(residual.pow(2).mean().item())
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.1 * errors[0]


# ---------------------------------------------------------------------------------------------- training
def test_micro_training_lowers_the_loss(tmp_path, trained):
    codec, out = trained
    start = train_codec(tmp_path, tones(16), MICRO, steps=1, batch_size=4, crop_seconds=0.5, lr=3e-3, seed=0,
                        progress=False)
    batch = torch.from_numpy(np.stack(tones(16)[:4]))  # training clips: 16 clips cover few pitches, and the
    with torch.no_grad():  # principal axes fitted to them do not span the peaks of other random tones
        before, after = codec_losses(start, batch), codec_losses(codec, batch)
    assert after["magnitude"] + after["mel"] < 0.9 * (before["magnitude"] + before["mel"])
    assert (out / "codec.pt").is_file() and not (out / "codec.pt.tmp").exists()


def test_training_is_deterministic(tmp_path):
    runs = [train_codec(tmp_path / str(k), tones(4), MICRO, steps=3, batch_size=2, crop_seconds=0.5, seed=7,
                        progress=False) for k in range(2)]
    wav = torch.from_numpy(tones(1, seed=3)[0])[None]
    assert torch.equal(runs[0].encode(wav), runs[1].encode(wav))


def test_evaluate_codec_on_world_clips(trained):
    result = evaluate_codec(trained[0], world_clips(0, range(2)))
    assert result["log_mel_distance"] > 0
    for name in ("original", "reconstruction"):
        assert set(result[name]) == {"events", "layout", "counts", "pitch", "score"}
        assert all(0 <= v <= 1 for v in result[name].values())


# ---------------------------------------------------------------------------------------------- checkpoints
def test_save_load_round_trip(tmp_path, trained):
    codec, _ = trained
    save_checkpoint(tmp_path / "c.pt", codec, step=40)
    loaded = Codec.from_checkpoint(tmp_path / "c.pt", config=MICRO)
    wav = torch.from_numpy(np.stack(tones(2, seed=5)))
    codes = codec.encode(wav)
    assert torch.equal(loaded.encode(wav), codes)
    assert torch.equal(loaded.decode(codes), codec.decode(codes))


def test_bad_checkpoints_fail_clearly(tmp_path, trained):
    codec, _ = trained
    path = tmp_path / "c.pt"
    save_checkpoint(path, codec, step=40)
    with pytest.raises(ValueError, match="differs from the requested"):
        Codec.from_checkpoint(path, config=CodecConfig())
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"]["latent_dim"] = 16  # config no longer matches the weights
    torch.save(ckpt, tmp_path / "edited.pt")
    with pytest.raises(ValueError, match="do not fit the saved config"):
        Codec.from_checkpoint(tmp_path / "edited.pt")
    ckpt = torch.load(path, weights_only=True)
    del ckpt["config"]["slope_weight"]  # as a codec trained before that loss existed
    torch.save(ckpt, tmp_path / "old.pt")
    with pytest.raises(ValueError, match="older version of this code .* no slope_weight"):
        Codec.from_checkpoint(tmp_path / "old.pt")
    (tmp_path / "corrupt.pt").write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="not a readable codec checkpoint"):
        Codec.from_checkpoint(tmp_path / "corrupt.pt")
    with pytest.raises(FileNotFoundError, match="no codec checkpoint"):
        Codec.from_checkpoint(tmp_path / "missing.pt")
