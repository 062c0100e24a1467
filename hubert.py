"""HuBERT (Hsu et al. 2021), X-codec's semantic teacher, from scratch: 16 kHz mono -> 50 Hz
features. xcodec.py uses it frozen, and takes the mean of all its hidden states as the
semantic feature its first codebooks learn to carry.

    wav (B, N) --7 convs (strides 5, 2, 2, 2, 2, 2, 2: 320 samples a frame)--> (B, 512, T)
      --LayerNorm + Linear--> (B, T, 768) --+ grouped positional conv--> 12 transformer layers

Module names equal transformers' HubertModel keys (`feature_extractor.conv_layers.0.conv.weight`,
`encoder.layers.0.attention.q_proj.weight`, ...), under X-codec's `semantic_model.` prefix.
"""

from dataclasses import dataclass

import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm

from utils import pick


@dataclass
class SemanticConfig:  # HuBERT
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    conv_dim: tuple = (512,) * 7
    conv_kernel: tuple = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple = (5, 2, 2, 2, 2, 2, 2)  # 320 samples per frame: 50 Hz
    conv_bias: bool = False
    feat_extract_norm: str = "group"  # "group": GroupNorm on the first conv; "layer": LayerNorm on each
    feat_proj_layer_norm: bool = True
    do_stable_layer_norm: bool = False  # False: post-norm layers (HuBERT base); True: pre-norm
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    layer_norm_eps: float = 1e-5

    @property
    def receptive_field(self):
        """Samples behind one frame of the conv front end: 400 in base (25 ms)."""
        r = 1
        for k, s in zip(reversed(self.conv_kernel), reversed(self.conv_stride)):
            r = (r - 1) * s + k
        return r

    @classmethod
    def from_hf(cls, d):
        """transformers' HubertConfig dict -> ours; only the GELU, weight-normed variant exists."""
        if d.get("model_type", "hubert") != "hubert":
            raise ValueError(f"semantic model {d.get('model_type')!r}: only HuBERT teachers are supported "
                             "(use an xcodec-hubert-* checkpoint).")
        if (d.get("hidden_act", "gelu"), d.get("feat_extract_activation", "gelu"),
                d.get("conv_pos_batch_norm", False)) != ("gelu", "gelu", False):
            raise ValueError("only HuBERT with GELU and a weight-normed positional conv is supported.")
        return cls(**pick(cls, d))



# -----------------------------------------------------------------------------
# The semantic teacher: HuBERT


class FeatureConv(nn.Module):
    """One conv of HuBERT's waveform front end, unpadded: (B, C, T) -> (B, C', (T - k) // s + 1),
    then GroupNorm with one group per channel ("group", first layer only), LayerNorm over
    channels ("layer"), or nothing; then GELU."""

    def __init__(self, c_in, c_out, kernel, stride, bias, norm):
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel, stride=stride, bias=bias)
        self.norm = norm
        if norm == "group":
            self.layer_norm = nn.GroupNorm(c_out, c_out)
        elif norm == "layer":
            self.layer_norm = nn.LayerNorm(c_out)

    def forward(self, x):
        x = self.conv(x)
        if self.norm == "group":
            x = self.layer_norm(x)
        elif self.norm == "layer":
            x = self.layer_norm(x.transpose(1, 2)).transpose(1, 2)
        return F.gelu(x)


class FeatureEncoder(nn.Module):
    def __init__(self, cfg: SemanticConfig):
        super().__init__()
        if cfg.feat_extract_norm not in ("group", "layer"):
            raise ValueError(f"feat_extract_norm={cfg.feat_extract_norm!r}: HuBERT has 'group' or 'layer'.")
        c_in = (1,) + cfg.conv_dim[:-1]
        norms = [cfg.feat_extract_norm] + [None if cfg.feat_extract_norm == "group" else "layer"] * (len(c_in) - 1)
        self.conv_layers = nn.ModuleList(FeatureConv(*args, cfg.conv_bias, norm) for *args, norm in
                                         zip(c_in, cfg.conv_dim, cfg.conv_kernel, cfg.conv_stride, norms))

    def forward(self, wav):  # (B, N) -> (B, conv_dim[-1], T)
        x = wav[:, None]
        for layer in self.conv_layers:
            x = layer(x)
        return x


class FeatureProjection(nn.Module):
    def __init__(self, cfg: SemanticConfig):
        super().__init__()
        self.layer_norm = nn.LayerNorm(cfg.conv_dim[-1], eps=cfg.layer_norm_eps) if cfg.feat_proj_layer_norm else None
        self.projection = nn.Linear(cfg.conv_dim[-1], cfg.hidden_size)

    def forward(self, x):  # (B, T, conv_dim[-1]) -> (B, T, D)
        return self.projection(x if self.layer_norm is None else self.layer_norm(x))


class PositionalConv(nn.Module):
    """HuBERT's relative positions: a wide grouped conv over time (128 taps, 16 groups in base),
    weight-normed over the kernel axis (dim=2), then GELU. (B, T, D) -> (B, T, D)."""

    def __init__(self, cfg: SemanticConfig):
        super().__init__()
        k = cfg.num_conv_pos_embeddings
        self.conv = weight_norm(nn.Conv1d(cfg.hidden_size, cfg.hidden_size, k, padding=k // 2,
                                          groups=cfg.num_conv_pos_embedding_groups), dim=2)
        self.trim = 1 - k % 2  # an even kernel with padding k/2 makes one frame too many

    def forward(self, x):
        y = self.conv(x.transpose(1, 2))
        return F.gelu(y[..., :y.shape[-1] - self.trim]).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim, n_heads):
        super().__init__()
        self.n_heads = n_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x):  # (B, T, D), every frame sees every frame
        B, T, D = x.shape
        q, k, v = (p(x).view(B, T, self.n_heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        y = F.scaled_dot_product_attention(q, k, v)  # (B, nh, T, hs)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, D))


class FeedForward(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.intermediate_dense = nn.Linear(dim, hidden)
        self.output_dense = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.output_dense(F.gelu(self.intermediate_dense(x)))


class HubertLayer(nn.Module):
    """A transformer layer, post-norm (HuBERT base) or pre-norm (do_stable_layer_norm)."""

    def __init__(self, cfg: SemanticConfig):
        super().__init__()
        self.pre_norm = cfg.do_stable_layer_norm
        self.attention = Attention(cfg.hidden_size, cfg.num_attention_heads)
        self.layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.feed_forward = FeedForward(cfg.hidden_size, cfg.intermediate_size)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x):
        if self.pre_norm:
            x = x + self.attention(self.layer_norm(x))
            return x + self.feed_forward(self.final_layer_norm(x))
        x = self.layer_norm(x + self.attention(x))
        return self.final_layer_norm(x + self.feed_forward(x))


class HubertEncoder(nn.Module):
    def __init__(self, cfg: SemanticConfig):
        super().__init__()
        self.pre_norm = cfg.do_stable_layer_norm
        self.pos_conv_embed = PositionalConv(cfg)
        # post-norm: normalises the input of layer 0. pre-norm: would normalise the last layer's
        # output into HuBERT's last_hidden_state, which X-codec never reads (the hidden states it
        # averages stop before this norm, as transformers returns them)
        self.layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.layers = nn.ModuleList(HubertLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, x):  # (B, T, D) -> [the input of layer 0, the output of each layer]
        x = x + self.pos_conv_embed(x)
        if not self.pre_norm:
            x = self.layer_norm(x)
        hidden = [x]
        for layer in self.layers:
            hidden.append(layer(hidden[-1]))
        return hidden


class Hubert(nn.Module):
    """wav (B, N) -> num_hidden_layers + 1 hidden states (B, T, D), T = (N - 80) // 320 in base
    (unpadded convs; 400 samples make the first frame)."""

    def __init__(self, cfg: SemanticConfig):
        super().__init__()
        self.feature_extractor = FeatureEncoder(cfg)
        self.feature_projection = FeatureProjection(cfg)
        self.encoder = HubertEncoder(cfg)

    def forward(self, wav):
        x = self.feature_extractor(wav).transpose(1, 2)  # (B, T, conv_dim[-1])
        return self.encoder(self.feature_projection(x))
