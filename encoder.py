"""The audio encoder and adapter UALM hears audio through (AF-Whisper in the paper; SPEC.md
section 3), the "ears" of the model: 16 kHz audio -> log-mel -> Whisper encoder -> 25 Hz
features -> adapter.

The LM "hears" a clip as a run of continuous vectors that replace the embeddings at
audio placeholder positions (SPEC section 3):

    waveform 16 kHz --log-mel--> [n_mels, T] at 100 Hz
      --conv1 (k3,s1) + conv2 (k3,s2)--> [T/2, d] at 50 Hz --transformer--> (Whisper's output)
      --AvgPool1d(2) + LayerNorm--> [T/4, d] at 25 Hz --Adapter MLP--> [T/4, d_lm]

The encoder is Whisper's (AF-Whisper in the paper, Qwen2.5-Omni's audio tower in the
release); its module names equal the Hugging Face `WhisperEncoder` state-dict keys, so
Whisper weights load with no mapping. Clips of any length up to 30 s are encoded
without padding them to 30 s; a batch of clips of different lengths is padded and the
padded frames are masked, so every clip comes out as it would alone.
"""

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from checkpoint import load_safetensors

# ---------------------------------------------------------------------------------------
# Audio constants (Whisper's; X-codec on the output side uses the same 16 kHz)

SAMPLE_RATE = 16000
N_FFT = 400  # 25 ms analysis window
HOP_LENGTH = 160  # 10 ms hop
MEL_FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100 Hz log-mel
WHISPER_FRAMES_PER_SECOND = MEL_FRAMES_PER_SECOND // 2  # 50 Hz after conv2 (stride 2)
FEATURES_PER_SECOND = WHISPER_FRAMES_PER_SECOND // 2  # 25 Hz after AvgPool1d(2)
SAMPLES_PER_FEATURE = SAMPLE_RATE // FEATURES_PER_SECOND  # 640 samples = 40 ms per LM frame
MIN_SAMPLES = 3 * HOP_LENGTH  # 3 mel frames -> 2 frames at 50 Hz -> 1 feature at 25 Hz
MEL_FLOOR = 1e-10  # power floor before log10
DYNAMIC_RANGE = 8.0  # log10 units kept below each clip's peak (80 dB)


# ---------------------------------------------------------------------------------------
# Log-mel spectrogram, from scratch (matches WhisperFeatureExtractor / librosa)


def hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    """Slaney mel scale: linear below 1 kHz, logarithmic above. hz_to_mel(1000.) == 15."""
    f_sp = 200.0 / 3  # Hz per mel in the linear part
    min_log_hz, min_log_mel = 1000.0, 1000.0 / f_sp
    logstep = math.log(6.4) / 27.0  # 6.4x in frequency every 27 mels
    linear = hz / f_sp
    log = min_log_mel + torch.log(hz.clamp(min=min_log_hz) / min_log_hz) / logstep
    return torch.where(hz >= min_log_hz, log, linear)


def mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    """Inverse of hz_to_mel. mel_to_hz(15.) == 1000."""
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel = 1000.0, 1000.0 / f_sp
    logstep = math.log(6.4) / 27.0
    linear = mel * f_sp
    log = min_log_hz * torch.exp(logstep * (mel - min_log_mel))
    return torch.where(mel >= min_log_mel, log, linear)


@lru_cache(maxsize=None)
def mel_filters(n_mels: int, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE, slaney: bool = True) -> torch.Tensor:
    """Triangular mel filterbank on the Slaney mel scale, 0 Hz to Nyquist. With the defaults,
    librosa.filters.mel(sr=16000, n_fft=400, n_mels=n_mels) (htk=False, norm="slaney") that
    Whisper ships: each band normalised to equal area. slaney=False leaves each triangle's
    peak at 1 (the codec's and the VAE's spectral losses).

    mel_filters(128).shape == (128, 201): one row per mel band over the 201 FFT bins.
    """
    fft_hz = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)  # (201,)
    top_mel = hz_to_mel(torch.tensor(sample_rate / 2, dtype=torch.float64))
    edges_hz = mel_to_hz(torch.linspace(0, float(top_mel), n_mels + 2, dtype=torch.float64))
    width = edges_hz.diff()  # (n_mels + 1,) Hz between neighbouring band edges
    ramps = edges_hz[:, None] - fft_hz[None, :]  # (n_mels + 2, 201)
    rising = -ramps[:-2] / width[:-1, None]  # 0 -> 1 from the lower edge to the centre
    falling = ramps[2:] / width[1:, None]  # 1 -> 0 from the centre to the upper edge
    weights = torch.clamp(torch.minimum(rising, falling), min=0)  # (n_mels, 201)
    if slaney:
        weights *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]  # equal area per band
    return weights.float()


def log_mel_spectrogram(audio: torch.Tensor, n_mels: int = 128) -> torch.Tensor:
    """Whisper's log-mel: [..., N] 16 kHz samples -> [..., n_mels, N // 160] at 100 Hz.

    Power STFT (Hann, n_fft 400, hop 160, centred), mel filterbank, log10, then each clip
    is floored at its peak minus 8 and scaled as (x + 4) / 4. The STFT's last frame is
    dropped as in Whisper, so 2 s gives exactly 200 frames:
    log_mel_spectrogram(torch.zeros(32000)) is a (128, 200) tensor of -1.5.
    """
    window = torch.hann_window(N_FFT, device=audio.device)
    stft = torch.stft(audio.float(), N_FFT, HOP_LENGTH, window=window, return_complex=True)
    power = stft[..., :-1].abs() ** 2  # [..., 201, N // 160]
    mel = mel_filters(n_mels).to(audio.device) @ power  # [..., n_mels, N // 160]
    log_spec = torch.clamp(mel, min=MEL_FLOOR).log10()
    peak = log_spec.amax(dim=(-2, -1), keepdim=True)  # per clip
    log_spec = torch.maximum(log_spec, peak - DYNAMIC_RANGE)
    return (log_spec + 4.0) / 4.0


# ---------------------------------------------------------------------------------------
# The encoder


@dataclass
class AudioEncoderConfig:
    n_mels: int = 128
    d_model: int = 1280
    n_layers: int = 32
    n_heads: int = 20
    ffn_dim: int = 5120
    max_source_positions: int = 1500  # frames at 50 Hz: 30 s

    @classmethod
    def from_hf(cls, hf: dict) -> "AudioEncoderConfig":
        """Map a Hugging Face WhisperConfig dict (config.json) to ours."""
        if hf.get("activation_function", "gelu") != "gelu" or hf.get("scale_embedding", False):
            raise ValueError(f"activation_function={hf.get('activation_function')!r}, scale_embedding="
                             f"{hf.get('scale_embedding')!r}: only Whisper encoders with exact GELU and "
                             "unscaled embeddings (all released Whisper models) are supported.")
        return cls(
            n_mels=hf["num_mel_bins"],
            d_model=hf["d_model"],
            n_layers=hf["encoder_layers"],
            n_heads=hf["encoder_attention_heads"],
            ffn_dim=hf["encoder_ffn_dim"],
            max_source_positions=hf["max_source_positions"],
        )


ENCODER_PRESETS = {
    # openai/whisper-large-v3, the encoder AF-Whisper (the paper's) is trained from: ~635M params
    "whisper-large-v3": AudioEncoderConfig(),
    # a toy encoder for the procedural world on CPU: ~0.5M params
    "toy": AudioEncoderConfig(n_mels=128, d_model=128, n_layers=2, n_heads=4, ffn_dim=512),
}


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """Whisper's fixed positions: sin in the first half of the channels, cos in the second.

    sinusoids(1500, 1280).shape == (1500, 1280); row 0 is [0]*640 + [1]*640.
    """
    log_timescale_increment = math.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = torch.exp(-log_timescale_increment * torch.arange(channels // 2))
    scaled_time = torch.arange(length)[:, None] * inv_timescales[None, :]  # (length, channels/2)
    return torch.cat([scaled_time.sin(), scaled_time.cos()], dim=1)


class SelfAttention(nn.Module):
    """Non-causal multi-head self-attention; k_proj has no bias, as in Whisper."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (proj(x).view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))  # (B, nh, T, hs)
        # attn_mask (B, 1, 1, T), True = a real frame: padded frames are never attended to
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, nh, T, hs)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, C))


class EncoderLayer(nn.Module):
    """Pre-LN transformer block: x + attn(ln(x)), then x + fc2(gelu(fc1(ln(x))))."""

    def __init__(self, config: AudioEncoderConfig):
        super().__init__()
        self.self_attn = SelfAttention(config.d_model, config.n_heads)
        self.self_attn_layer_norm = nn.LayerNorm(config.d_model)
        self.fc1 = nn.Linear(config.d_model, config.ffn_dim)
        self.fc2 = nn.Linear(config.ffn_dim, config.d_model)
        self.final_layer_norm = nn.LayerNorm(config.d_model)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.self_attn(self.self_attn_layer_norm(x), attn_mask)
        return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))


class AudioEncoder(nn.Module):
    """Whisper's encoder (keys as HF `WhisperEncoder`) plus UALM's 25 Hz pooling and ln_post."""

    def __init__(self, config: AudioEncoderConfig):
        super().__init__()
        self.config = config
        d = config.d_model
        self.conv1 = nn.Conv1d(config.n_mels, d, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(d, d, kernel_size=3, stride=2, padding=1)
        self.embed_positions = nn.Embedding(config.max_source_positions, d)  # fixed, not learned
        self.embed_positions.weight.data.copy_(sinusoids(config.max_source_positions, d))
        self.embed_positions.requires_grad_(False)
        self.layers = nn.ModuleList([EncoderLayer(config) for _ in range(config.n_layers)])
        self.layer_norm = nn.LayerNorm(d)
        self.ln_post = nn.LayerNorm(d)  # after pooling (Qwen2.5-Omni); not in Whisper checkpoints

    def whisper_forward(self, mel: torch.Tensor, mel_lengths: torch.Tensor | None = None):
        """Whisper's encoder: mel [B, n_mels, T] at 100 Hz -> (hidden [B, ceil(T/2), d], lengths [B]).

        Equals HF `WhisperEncoder(...).last_hidden_state` when T == 2 * max_source_positions;
        shorter inputs use the first ceil(T/2) positions. Frames at or past mel_lengths[b]
        are padding: masked out, so clip b comes out as if encoded alone.
        E.g. mel [2, 128, 200] with mel_lengths [200, 150] -> hidden [2, 100, d], lengths [100, 75].
        """
        B, _, T = mel.shape
        T50 = (T - 1) // 2 + 1  # conv2: stride 2, padding 1, kernel 3
        if T50 > self.config.max_source_positions:
            raise ValueError(f"{T} mel frames ({T / MEL_FRAMES_PER_SECOND:.1f} s) is too long: this encoder "
                             f"takes at most {2 * self.config.max_source_positions} frames; cut the clip.")
        if mel_lengths is None:
            mel_lengths = torch.full((B,), T, device=mel.device)
        mel_lengths = mel_lengths.to(mel.device)
        lengths = (mel_lengths - 1) // 2 + 1
        valid100 = (torch.arange(T, device=mel.device) < mel_lengths[:, None])[:, None, :]  # (B, 1, T)
        valid50 = torch.arange(T50, device=mel.device) < lengths[:, None]  # (B, T50)

        # Zero what lies past each clip, before each conv, so the convs at a clip's edge see
        # the zero padding they would see on the clip alone.
        x = mel.to(self.conv1.weight.dtype) * valid100
        x = F.gelu(self.conv1(x)) * valid100  # (B, d, T)
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # (B, T50, d)
        x = x + self.embed_positions.weight[:T50]
        attn_mask = None if bool(valid50.all()) else valid50[:, None, None, :]  # (B, 1, 1, T50)
        for layer in self.layers:
            x = layer(x, attn_mask)
        return self.layer_norm(x), lengths

    def forward(self, mel: torch.Tensor, mel_lengths: torch.Tensor | None = None):
        """mel [B, n_mels, T] at 100 Hz -> (features [B, ceil(T/2) // 2, d] at 25 Hz, lengths [B]).

        Whisper's 50 Hz output, averaged over pairs of frames (an odd last frame is dropped),
        then LayerNorm; padded features are zero. E.g. mel [1, 128, 200] (2 s) -> [1, 50, d].
        """
        x, lengths = self.whisper_forward(mel, mel_lengths)  # (B, T50, d) at 50 Hz
        x = F.avg_pool1d(x.transpose(1, 2), kernel_size=2).transpose(1, 2)  # (B, T50 // 2, d)
        x = self.ln_post(x)
        lengths = lengths // 2
        valid = torch.arange(x.shape[1], device=x.device) < lengths[:, None]  # (B, T25)
        return x * valid[..., None], lengths

    def listen(self, waves, lengths: torch.Tensor | None = None):
        """16 kHz waveforms -> (features [B, T25, d], lengths [B]): what the LM hears.

        waves: a list of 1-D clips of any lengths, or a [B, N] tensor whose clip b holds
        lengths[b] samples (all N if lengths is None). Each clip gets its own log-mel (its
        own peak), as it would alone. E.g. clips of 2 s and 1 s -> features [2, 50, d],
        lengths [50, 25].
        """
        if isinstance(waves, torch.Tensor):
            if lengths is None:
                lengths = torch.full((waves.shape[0],), waves.shape[-1])
            waves = [w[:n] for w, n in zip(waves, lengths.tolist())]
        device = self.conv1.weight.device
        mels = []
        for i, wave in enumerate(waves):
            wave = torch.as_tensor(wave, dtype=torch.float32, device=device)
            if wave.dim() != 1 or wave.shape[0] < MIN_SAMPLES:
                raise ValueError(f"clip {i} has shape {tuple(wave.shape)}: give 1-D 16 kHz mono audio "
                                 f"of at least {MIN_SAMPLES} samples ({MIN_SAMPLES / SAMPLE_RATE * 1000:.0f} ms).")
            mels.append(log_mel_spectrogram(wave, self.config.n_mels).T)  # (T_i, n_mels)
        mel_lengths = torch.tensor([m.shape[0] for m in mels], device=device)
        mel = nn.utils.rnn.pad_sequence(mels, batch_first=True).transpose(1, 2)  # (B, n_mels, T)
        return self(mel, mel_lengths)


class Adapter(nn.Module):
    """25 Hz encoder features -> LM input embeddings: Linear -> GELU -> Linear (the paper's MLP).

    Adapter(1280, 3584)(features [B, T25, 1280]) -> [B, T25, 3584].
    """

    def __init__(self, d_audio: int, d_lm: int):
        super().__init__()
        self.fc1 = nn.Linear(d_audio, d_lm)
        self.fc2 = nn.Linear(d_lm, d_lm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


# ---------------------------------------------------------------------------------------
# Loading Hugging Face Whisper checkpoints

# where the encoder sits in each HF class's state dict, tried in this order
HF_ENCODER_PREFIXES = (
    "model.encoder.",  # WhisperForConditionalGeneration
    "encoder.",  # WhisperModel
    "",  # WhisperEncoder saved alone
)


def load_whisper_encoder(folder, dtype: torch.dtype | None = None, device=None) -> AudioEncoder:
    """Build an AudioEncoder from an HF Whisper folder (config.json + model.safetensors).

    The folder may hold a WhisperEncoder, a WhisperModel or a WhisperForConditionalGeneration;
    the decoder, if any, is ignored. Every encoder key and shape must match: loading fails
    loudly, never half-way. ln_post is not in Whisper checkpoints and starts as identity.
    Weights come out in fp32 on the CPU unless dtype / device say otherwise.
    E.g. load_whisper_encoder("whisper-large-v3/") -> AudioEncoder(ENCODER_PRESETS["whisper-large-v3"]).
    """
    folder = Path(folder)
    config_path, weights_path = folder / "config.json", folder / "model.safetensors"
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: point at a Hugging Face Whisper checkpoint "
                                    "folder holding config.json and model.safetensors.")
    try:
        config = AudioEncoderConfig.from_hf(json.loads(config_path.read_text()))
    except KeyError as e:
        raise ValueError(f"{config_path} lacks {e}: is it a Whisper config?") from None
    model = AudioEncoder(config)

    tensors = load_safetensors(weights_path)
    prefix = next((p for p in HF_ENCODER_PREFIXES if p + "conv1.weight" in tensors), None)
    if prefix is None:
        raise ValueError(f"{weights_path} holds no Whisper encoder: no conv1.weight under "
                         f"any of the prefixes {HF_ENCODER_PREFIXES}.")
    theirs = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    ours = {k: v for k, v in model.state_dict().items() if not k.startswith("ln_post.")}
    missing, unexpected = sorted(ours.keys() - theirs.keys()), sorted(theirs.keys() - ours.keys())
    if missing or unexpected:
        raise ValueError(f"{weights_path} does not match {config_path}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]} (keys after '{prefix}').")
    for name, param in ours.items():
        if theirs[name].shape != param.shape:
            raise ValueError(f"{weights_path}: {prefix}{name} has shape {tuple(theirs[name].shape)}, "
                             f"but {config_path} implies {tuple(param.shape)}.")
    with torch.no_grad():
        for name, param in ours.items():
            param.copy_(theirs[name])  # casts fp16 / bf16 checkpoints to our fp32
    return model.to(device=device, dtype=dtype)
