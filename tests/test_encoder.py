"""encoder.py against its references: transformers' WhisperFeatureExtractor for the log-mel
and a random-init transformers WhisperEncoder for the encoder."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration,
                          WhisperModel)
from transformers.models.whisper.modeling_whisper import WhisperEncoder
from transformers.audio_utils import mel_filter_bank

from encoder import (ENCODER_PRESETS, SAMPLE_RATE, Adapter, AudioEncoder, load_whisper_encoder,
                     log_mel_spectrogram, mel_filters)


MAX_SOURCE_POSITIONS = 50  # HF's WhisperEncoder only takes exactly 2 * 50 = 100 mel frames


def tiny_hf_config(n_mels: int) -> WhisperConfig:
    return WhisperConfig(num_mel_bins=n_mels, d_model=64, encoder_layers=2, encoder_attention_heads=4,
                         encoder_ffn_dim=128, decoder_layers=1, decoder_attention_heads=4,
                         decoder_ffn_dim=128, max_source_positions=MAX_SOURCE_POSITIONS,
                         max_target_positions=16, vocab_size=100,
                         pad_token_id=0, bos_token_id=1, eos_token_id=1, decoder_start_token_id=1)


def randomize_norms(model: torch.nn.Module) -> None:
    """HF inits LayerNorms to (1, 0); random ones make the comparison see a swapped weight/bias."""
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.LayerNorm):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)


def save_hf_encoder(folder, n_mels: int = 128) -> WhisperEncoder:
    torch.manual_seed(0)
    hf = WhisperEncoder(tiny_hf_config(n_mels)).eval()
    randomize_norms(hf)
    hf.save_pretrained(folder)
    return hf


# ---------------------------------------------------------------------------------------
# log-mel


def sine(seconds: float, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filters_match_hf(n_mels):
    ref = mel_filter_bank(num_frequency_bins=201, num_mel_filters=n_mels, min_frequency=0.0,
                          max_frequency=8000.0, sampling_rate=SAMPLE_RATE, norm="slaney", mel_scale="slaney")
    torch.testing.assert_close(mel_filters(n_mels), torch.from_numpy(ref.T).float(), atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_matches_whisper_feature_extractor(n_mels):
    fe = WhisperFeatureExtractor(feature_size=n_mels)
    noise = np.random.default_rng(0).uniform(-0.3, 0.3, 2 * SAMPLE_RATE + 77).astype(np.float32)
    for audio in (noise, sine(1.0)):
        # padding="longest" on one clip pads nothing: HF sees exactly the clip we see, so
        # the STFT edges and the per-clip peak are computed on the same samples.
        ref = fe(audio, sampling_rate=SAMPLE_RATE, padding="longest", return_tensors="pt").input_features[0]
        ours = log_mel_spectrogram(torch.from_numpy(audio), n_mels)
        assert ours.shape == ref.shape == (n_mels, len(audio) // 160)
        torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


def test_log_mel_matches_whisper_padded_to_30s():
    # HF's default pads with zeros to 30 s before the STFT, and takes the peak over the padded
    # clip. Zeros add nothing to the peak, but they change the last frames (no reflection at
    # the clip's end), so only the same padding gives the same numbers: pad ours the same way.
    fe = WhisperFeatureExtractor(feature_size=128)
    audio = sine(1.5, hz=1000.0)
    ref = fe(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features[0]
    padded = torch.zeros(30 * SAMPLE_RATE)
    padded[: len(audio)] = torch.from_numpy(audio)
    ours = log_mel_spectrogram(padded, 128)
    assert ours.shape == ref.shape == (128, 3000)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


def test_log_mel_batch_is_per_clip():
    a, b = torch.from_numpy(sine(1.0, 300.0)), torch.from_numpy(sine(1.0, 3000.0)) * 0.01
    both = log_mel_spectrogram(torch.stack([a, b]))
    torch.testing.assert_close(both[1], log_mel_spectrogram(b))  # b's own peak, not a's


# ---------------------------------------------------------------------------------------
# encoder against HF WhisperEncoder


@pytest.mark.parametrize("n_mels", [80, 128])
def test_encoder_matches_hf_whisper_encoder(tmp_path, n_mels):
    hf = save_hf_encoder(tmp_path, n_mels)
    ours = load_whisper_encoder(tmp_path)
    assert ours.config.n_mels == n_mels and ours.config.d_model == 64
    mel = torch.randn(2, n_mels, 2 * MAX_SOURCE_POSITIONS)
    with torch.no_grad():
        ref = hf(mel).last_hidden_state
        out, lengths = ours.whisper_forward(mel)
    assert out.shape == ref.shape == (2, MAX_SOURCE_POSITIONS, 64)
    assert lengths.tolist() == [MAX_SOURCE_POSITIONS] * 2
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    fresh = AudioEncoder(ours.config)  # our sinusoids equal the positions HF computed and saved
    torch.testing.assert_close(fresh.embed_positions.weight, hf.embed_positions.weight)


def test_fp16_checkpoint_loads_as_fp32_or_asked_dtype(tmp_path):
    hf = save_hf_encoder(tmp_path / "fp32")
    hf.half().save_pretrained(tmp_path / "fp16")
    ours = load_whisper_encoder(tmp_path / "fp16")
    assert ours.conv1.weight.dtype == torch.float32
    torch.testing.assert_close(ours.conv1.weight, hf.conv1.weight.float())
    bf16 = load_whisper_encoder(tmp_path / "fp16", dtype=torch.bfloat16)
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        feats, _ = bf16(torch.randn(1, 128, 100))  # the mel (fp32) is cast to the weights' dtype
    assert feats.dtype == torch.bfloat16


@pytest.mark.parametrize("cls, prefix", [(WhisperForConditionalGeneration, "model.encoder."),
                                         (WhisperModel, "encoder.")])
def test_loads_full_whisper_checkpoints(tmp_path, cls, prefix):
    torch.manual_seed(0)
    hf = cls(tiny_hf_config(128)).eval()
    randomize_norms(hf)
    hf.save_pretrained(tmp_path)
    assert any(k.startswith(prefix + "layers.") for k in load_file(tmp_path / "model.safetensors"))
    ours = load_whisper_encoder(tmp_path)
    mel = torch.randn(1, 128, 2 * MAX_SOURCE_POSITIONS)
    with torch.no_grad():
        ref = hf.get_encoder()(mel).last_hidden_state
        torch.testing.assert_close(ours.whisper_forward(mel)[0], ref, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------
# rates, variable lengths, adapter


def test_rates_2s_gives_200_100_50_frames():
    enc = AudioEncoder(ENCODER_PRESETS["toy"]).eval()
    mel = log_mel_spectrogram(torch.randn(2 * SAMPLE_RATE) * 0.1)
    assert mel.shape == (128, 200)  # 100 Hz
    with torch.no_grad():
        h50, n50 = enc.whisper_forward(mel[None])
        h25, n25 = enc(mel[None])
    assert h50.shape == (1, 100, 128) and n50.tolist() == [100]  # 50 Hz
    assert h25.shape == (1, 50, 128) and n25.tolist() == [50]  # 25 Hz
    torch.testing.assert_close(h25, enc.ln_post((h50[:, 0::2] + h50[:, 1::2]) / 2))


def test_listen_batch_equals_each_clip_alone():
    torch.manual_seed(0)
    enc = AudioEncoder(ENCODER_PRESETS["toy"]).eval()
    randomize_norms(enc)
    clips = [torch.randn(n) * 0.1 for n in (2 * SAMPLE_RATE, 16000 + 480, 5000)]  # 2 s, 1.03 s, 0.31 s
    with torch.no_grad():
        feats, lengths = enc.listen(clips)
        assert feats.shape == (3, 50, 128) and lengths.tolist() == [50, 26, 8]
        for clip, f, n in zip(clips, feats, lengths):
            alone, _ = enc.listen([clip])
            torch.testing.assert_close(f[:n], alone[0], atol=1e-5, rtol=1e-5)
            assert f[n:].abs().sum() == 0
        padded = torch.zeros(3, 2 * SAMPLE_RATE)
        for i, clip in enumerate(clips):
            padded[i, : len(clip)] = clip
        again, _ = enc.listen(padded, torch.tensor([len(c) for c in clips]))
        torch.testing.assert_close(again, feats)


def test_adapter_is_linear_gelu_linear():
    """The Adapter against fc2(GELU(fc1(x))) written out in numpy with the exact (erf) GELU,
    and a worked example: identity layers map [1, -1, 2] to GELU's values 0.8413447,
    -0.1586553, 1.9544997 (the tanh approximation is off by 1.5e-4 at 1)."""
    from scipy.special import erf
    torch.manual_seed(0)
    adapter = Adapter(16, 24)
    x = 2 * torch.randn(2, 5, 16)
    w1, b1, w2, b2 = (p.detach().double().numpy() for p in (adapter.fc1.weight, adapter.fc1.bias,
                                                             adapter.fc2.weight, adapter.fc2.bias))
    u = x.double().numpy() @ w1.T + b1
    want = (0.5 * u * (1 + erf(u / np.sqrt(2)))) @ w2.T + b2
    with torch.no_grad():
        got = adapter(x)
    assert got.shape == (2, 5, 24)
    np.testing.assert_allclose(got.double().numpy(), want, atol=1e-5, rtol=1e-5)
    identity = Adapter(3, 3)
    with torch.no_grad():
        for layer in (identity.fc1, identity.fc2):
            layer.weight.copy_(torch.eye(3))
            layer.bias.zero_()
        out = identity(torch.tensor([[1.0, -1.0, 2.0]]))
    torch.testing.assert_close(out, torch.tensor([[0.8413447, -0.1586553, 1.9544997]]), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------
# errors a user can cause


def test_missing_checkpoint_file(tmp_path):
    save_hf_encoder(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors not found"):
        load_whisper_encoder(tmp_path)


def test_shape_mismatch_names_key_and_file(tmp_path):
    save_hf_encoder(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["encoder_ffn_dim"] = 96
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"model\.safetensors: layers\.0\.fc1\.weight has shape \(128, 64\)"):
        load_whisper_encoder(tmp_path)


def test_missing_key_names_key_and_file(tmp_path):
    save_hf_encoder(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["layers.1.fc2.bias"]
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"model\.safetensors does not match .*missing \['layers\.1\.fc2\.bias'\]"):
        load_whisper_encoder(tmp_path)


def test_too_long_and_too_short_inputs():
    enc = AudioEncoder(ENCODER_PRESETS["toy"])
    with pytest.raises(ValueError, match="too long"):
        enc(torch.zeros(1, 128, 3002))
    with pytest.raises(ValueError, match="at least 480 samples"):
        enc.listen([torch.zeros(400)])
