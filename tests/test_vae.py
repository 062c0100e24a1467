"""The enhancement VAE: rates and shapes, the upsampler, the KL, training, checkpoints."""
import numpy as np
import pytest
import torch

import vae as V
from checkpoint import load_ckpt, save_ckpt
from codec import CODEC_PRESETS, Codec

MICRO = V.VAE_PRESETS["micro"]


def synthetic_pair(seed: int, seconds: float = 0.5):
    """A stand-in for a world clip: 48 kHz stereo (a sine in both channels, independent noise
    bursts per channel) and its 16 kHz mono downmix (data.downmix)."""
    from data import downmix

    rng = np.random.default_rng(seed)
    n = int(seconds * V.MASTER_SR)
    t = np.arange(n) / V.MASTER_SR
    master = np.stack([0.3 * np.sin(2 * np.pi * 440 * t)] * 2) + 0.1 * rng.standard_normal((2, n))
    master[:, : n // 2] *= 0.1  # a quiet half, then a loud one
    master = master.astype(np.float32)
    return downmix(master), master


def test_rates_and_the_mid_side_algebra_on_a_worked_example():
    """Rates: [B, N] at 16 kHz -> posterior [B, Z, N // 64 + 1] (4 ms frames, centred) ->
    [B, 2, 3N] at 48 kHz, odd N included. Then the decoder on a worked example: head weights
    zero, the gain biases g = 0.5 (mid) and s = 0.25 (side), noise at e^-60 (nothing). The
    residual spectra are then g and s times the baseline's, so left = (1 + g + s) b and
    right = (1 + g - s) b exactly (the inverse STFT undoes the STFT), where the baseline b is
    the input upsampled 3x: scipy.signal.resample_poly(x, 3, 1), to the two filters' ripple."""
    torch.manual_seed(0)
    vae = V.EnhanceVAE(MICRO).eval()
    with torch.no_grad():
        for batch, n in ((1, 16000), (3, 1234), (2, 641)):
            x = 0.1 * torch.randn(batch, n)
            mean, logvar = vae.encode(x)
            assert mean.shape == logvar.shape == (batch, MICRO.latent_dim, n // 64 + 1)
            assert vae(x).shape == (batch, 2, 3 * n)
        with pytest.raises(ValueError, match="batch"):
            vae(torch.zeros(16000))
        vae.head.weight.zero_()
        bias = vae.head.bias.view(2, 2, V.BINS_48K)  # (mid, side) x (gain, noise log magnitude) x bins
        bias[0, 0], bias[1, 0], bias[:, 1] = 0.5, 0.25, -60.0
        rng = np.random.default_rng(0)
        t = np.arange(8001) / 16000
        x = sum(a * np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) for a, f in ((0.3, 300), (0.2, 1000), (0.2, 2500),
                                                                               (0.1, 4100))).astype(np.float32)
        y = vae(torch.from_numpy(x)[None])[0].double().numpy()  # [2, 24003]
    from scipy.signal import resample_poly
    b = resample_poly(x.astype(np.float64), 3, 1)
    assert y.shape == (2, len(b)) == (2, 24003)
    inner = slice(600, -600)  # the two filters' lengths differ: compare away from the clip's edges
    for channel, gain in ((0, 1.75), (1, 1.25)):
        assert np.linalg.norm(y[channel, inner] - gain * b[inner]) < 3e-3 * np.linalg.norm(gain * b[inner])
    np.testing.assert_allclose(y[0] / 1.75, y[1] / 1.25, atol=1e-6)  # both channels the same baseline


def test_untrained_vae_is_near_the_baseline():
    """The residual path: before training, the output is ~the upsampled input on both channels."""
    x = torch.from_numpy(synthetic_pair(0)[0])[None]
    with torch.no_grad():
        y = V.EnhanceVAE(MICRO).eval()(x)
    baseline = V.upsample(x)
    for channel in (0, 1):  # small init gains: within 10% (RMS), and no new content above 8 kHz
        assert (y[0, channel] - baseline[0]).norm() < 0.1 * baseline.norm()
    assert V.high_band_fraction(y[0]) < 1e-4


def test_upsampler_keeps_a_sine_and_adds_nothing_above_8khz():
    """1 kHz, amplitude 0.5 at 16 kHz -> 1 kHz, amplitude 0.5 at 48 kHz, no energy above 8 kHz."""
    x = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000)
    y = V.upsample(torch.tensor(x, dtype=torch.float32)[None])[0].double()  # [48000]
    assert y.shape == (48000,)
    exact = 0.5 * torch.sin(2 * torch.pi * 1000 * torch.arange(48000, dtype=torch.float64) / 48000)
    inner = slice(1000, -1000)  # away from the zero-padded edges
    assert (y[inner] - exact[inner]).abs().max() < 1e-3
    spectrum = torch.fft.rfft(y[inner]).abs()
    assert int(spectrum.argmax()) * 48000 / len(y[inner]) == pytest.approx(1000, abs=1)
    assert V.high_band_fraction(torch.stack([y, y])) < 1e-6  # below -60 dB


def test_metrics_worked_examples():
    noise = torch.randn(2, 48000, generator=torch.Generator().manual_seed(0))
    assert V.high_band_fraction(noise) == pytest.approx(2 / 3, abs=0.01)  # white: (24 - 8) / 24 kHz
    assert V.channel_correlation(torch.stack([noise[0], noise[0]])) == pytest.approx(1.0)
    assert abs(V.channel_correlation(noise)) < 0.02  # independent channels
    assert float(V.mel_distance(noise[None], noise[None])) == 0.0
    assert float(V.mel_distance(2 * noise[None], noise[None])) == pytest.approx(np.log10(2), abs=1e-3)


def test_kl_worked_examples():
    zeros = torch.zeros(2, 4, 10)
    assert float(V.kl_divergence(zeros, zeros)) == 0.0  # posterior N(0, 1) is the prior
    assert float(V.kl_divergence(torch.ones(2, 4, 10), zeros)) == pytest.approx(0.5)  # 0.5 * mean^2
    # variance e: 0.5 * (e - 1 - 1) = 0.359
    assert float(V.kl_divergence(zeros, torch.ones(2, 4, 10))) == pytest.approx(0.5 * (np.e - 2), abs=1e-6)


def test_micro_training_lowers_the_loss(tmp_path):
    pairs = [synthetic_pair(seed) for seed in range(2)]
    x, y = (torch.stack([torch.from_numpy(p[k]) for p in pairs]) for k in (0, 1))
    torch.manual_seed(0)
    before = float(V.vae_losses(V.EnhanceVAE(MICRO), x, y, torch.Generator().manual_seed(1))["loss"].detach())
    vae = V.train_vae(tmp_path, pairs, MICRO, seed=0, progress=False)
    after = float(V.vae_losses(vae, x, y, torch.Generator().manual_seed(1))["loss"].detach())
    assert after < 0.9 * before
    assert (tmp_path / "vae.pt").is_file() and not (tmp_path / "vae.pt.tmp").exists()


def test_checkpoint_round_trip_gives_identical_output(tmp_path):
    torch.manual_seed(0)
    vae = V.EnhanceVAE(MICRO).eval()
    V.save_checkpoint(tmp_path / "vae.pt", vae, step=7)
    loaded = V.EnhanceVAE.from_checkpoint(tmp_path / "vae.pt", MICRO)
    assert loaded.config == MICRO
    x = torch.from_numpy(synthetic_pair(3)[0])[None]
    with torch.no_grad():
        assert torch.equal(vae(x), loaded(x))  # forward is deterministic: mean latent, fixed noise seed


def test_checkpoint_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found: run `python vae.py --out DIR`"):
        V.EnhanceVAE.from_checkpoint(tmp_path / "missing.pt")
    V.save_checkpoint(tmp_path / "vae.pt", V.EnhanceVAE(MICRO), step=0)
    data = (tmp_path / "vae.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        V.EnhanceVAE.from_checkpoint(tmp_path / "cut.pt")
    with pytest.raises(ValueError, match="config differs"):
        V.EnhanceVAE.from_checkpoint(tmp_path / "vae.pt", V.VAE_PRESETS["toy"])
    V.save_checkpoint(tmp_path / "other.pt", Codec(CODEC_PRESETS["micro"]), step=0)  # another model's
    with pytest.raises(ValueError, match="holds a checkpoint of Codec, not of EnhanceVAE"):
        V.EnhanceVAE.from_checkpoint(tmp_path / "other.pt")
    ckpt = load_ckpt(tmp_path / "vae.pt", "EnhanceVAE", "")
    ckpt["config"]["channels"] = 24  # weights no longer fit the config
    save_ckpt(tmp_path / "edited.pt", ckpt)
    with pytest.raises(ValueError, match="do not fit"):
        V.EnhanceVAE.from_checkpoint(tmp_path / "edited.pt")


def test_evaluation_reports_all_three_outputs():
    pairs = [synthetic_pair(seed) for seed in range(2)]
    result = V.evaluate_vae(V.EnhanceVAE(MICRO), pairs)
    assert set(result) == {"distance", "high_band", "correlation"}
    assert result["correlation"]["baseline"] == pytest.approx(1.0)
    assert result["correlation"]["master"] < 0.95  # independent noise per channel
    assert result["high_band"]["master"] > 0.05 > 1e-4 > result["high_band"]["baseline"]
    assert "lower" in V.report(result)
