"""
The language model of UALM (paper section 2): Qwen2.5 from scratch, and UALM around it.

Part 1, the backbone: a decoder-only transformer whose module names equal the HF
checkpoint keys (`model.layers.0.self_attn.q_proj.weight`, ...), so loading a real
Qwen2.5 checkpoint is a checked, near-identity copy. RMSNorm in fp32, rotate-half
RoPE, grouped-query attention with q/k/v bias through scaled_dot_product_attention,
SwiGLU MLP, tied or untied head, a static preallocated KV cache for decoding.

Part 2, loading a Qwen2.5 checkpoint (checkpoint.py reads its safetensors by hand):
every key and shape checked, then the memory-mapped tensors become the parameters.

Part 3, UALM (SPEC.md section 1): the same backbone over a unified vocabulary
(256 specials, the text vocabulary shifted by 256, 8 codec intervals of 1025), with
[B, L, 8] inputs whose stream embeddings are summed, continuous audio features at
placeholder positions, and audio logits restricted per codebook. The audio rows live in
their own embedding and head (the release's new nn.Embedding and nn.Linear), beside
Qwen's text rows, which keep Qwen's tying.
"""

from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from checkpoint import load_checkpoint, read_config
from encoder import Adapter

# -----------------------------------------------------------------------------
# Config


@dataclass
class Qwen2Config:
    vocab_size: int = 151936
    hidden_size: int = 896
    intermediate_size: int = 4864
    num_hidden_layers: int = 24
    num_attention_heads: int = 14
    num_key_value_heads: int = 2
    max_position_embeddings: int = 32768
    rope_theta: float = 1e6
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True

    @property
    def head_dim(self):
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_hf(cls, d):
        """HF config.json dict -> Qwen2Config; accepts both spellings of rope_theta."""
        d = dict(d)
        if "rope_theta" not in d and isinstance(d.get("rope_parameters"), dict):
            d["rope_theta"] = d["rope_parameters"]["rope_theta"]
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # --dtype's names


# Exact shapes of the released checkpoints (SPEC.md section 10), plus a CPU toy.
PRESETS = {
    "qwen2.5-0.5b": Qwen2Config(),
    "qwen2.5-1.5b": Qwen2Config(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                                num_attention_heads=12, num_key_value_heads=2),
    "qwen2.5-7b": Qwen2Config(vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                              num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                              tie_word_embeddings=False),
    "tiny": Qwen2Config(vocab_size=4096, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                        num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=4096,
                        rope_theta=10000.0),
}

# -----------------------------------------------------------------------------
# The backbone


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim))  # ones, set by _init_weights (or loaded)
        self.eps = eps

    def forward(self, x):
        # normalise in fp32 whatever the compute dtype, as the reference does
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_cos_sin(position_ids, head_dim, theta, dtype):
    """position_ids [B, T] -> cos, sin [B, 1, T, head_dim], computed in fp32.
    e.g. position 0 gives cos=1, sin=0 (identity rotation)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=position_ids.device).float() / head_dim)
    freqs = position_ids[..., None].float() * inv_freq  # (B, T, hd/2)
    emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # (B, 1, T, hd)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x, cos, sin):
    """Rotate-half RoPE: the two halves of each head are the (re, im) parts."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class KVCache(nn.Module):
    """Static, preallocated cache (gpt-fast): K/V written at input_pos, never reallocated."""

    def __init__(self, batch_size, n_kv_heads, max_len, head_dim, dtype, device):
        super().__init__()
        shape = (batch_size, n_kv_heads, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def fits(self, batch_size, max_len, dtype, device):
        k = self.k
        return (k.shape[0] == batch_size and k.shape[2] == max_len and k.dtype == dtype and k.device.type == device.type
                and device.index in (None, k.device.index))

    def update(self, input_pos, k, v):
        self.k.index_copy_(2, input_pos, k)  # (B, nkv, S, hd)
        self.v.index_copy_(2, input_pos, v)
        return self.k, self.v


class Linear(nn.Linear):
    """nn.Linear that leaves its weights to _init_weights (or to a checkpoint): its own
    Kaiming init would draw from the random generator and be overwritten at once."""

    def reset_parameters(self):
        pass


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_head, self.n_kv, self.hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = Linear(cfg.hidden_size, self.n_head * self.hd, bias=True)
        self.k_proj = Linear(cfg.hidden_size, self.n_kv * self.hd, bias=True)
        self.v_proj = Linear(cfg.hidden_size, self.n_kv * self.hd, bias=True)
        self.o_proj = Linear(self.n_head * self.hd, cfg.hidden_size, bias=False)
        self.kv_cache = None

    def forward(self, x, cos, sin, mask=None, input_pos=None, segments=None):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.hd).transpose(1, 2)  # (B, nh, T, hd)
        k = self.k_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)  # (B, nkv, T, hd)
        v = self.v_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if input_pos is not None:  # decoding: write at input_pos, attend to the whole cache under the mask
            k, v = self.kv_cache.update(input_pos, k, v)  # (B, nkv, S, hd): shapes never change (compile)
        gqa = self.n_kv != self.n_head
        if segments is not None:  # packed samples ("varlen"): causal attention inside each one alone
            y = torch.cat([torch.cat([F.scaled_dot_product_attention(q[b:b + 1, :, s:e], k[b:b + 1, :, s:e],
                                                                      v[b:b + 1, :, s:e], is_causal=True,
                                                                      enable_gqa=gqa) for s, e in row], 2)
                           for b, row in enumerate(segments)])
        else:  # no mask: causal over this call's T tokens (T = 1, one new token, needs none)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and T > 1,
                                               enable_gqa=gqa)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.gate_proj = Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, mask=None, input_pos=None, segments=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, input_pos, segments)
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen2Model(nn.Module):
    """Embedding table, blocks and final norm: everything under the `model.` prefix."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        # _weight skips nn.Embedding's own init, which is slow under torch.device("meta")
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size,
                                         _weight=torch.empty(cfg.vocab_size, cfg.hidden_size))
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        # activation checkpointing (train.py --checkpointing): keep only each block's input in
        # training and run the block again in the backward pass, trading compute for memory
        self.checkpointing = False

    def forward(self, x, position_ids=None, mask=None, input_pos=None, segments=None):
        """x: embeddings (B, T, d) -> final normed hidden states (B, T, d).
        position_ids (B, T) default to 0..T-1 (packing restarts them per sample);
        mask (B, 1, T, S) bool, True = may attend; None means causal;
        segments: per row, the (start, end) of each packed sample (see doc_segments): the
        same attention as packed_mask, without computing the T x T masked-out part.
        input_pos (T,) switches on the KV cache: write there, attend to the cache."""
        B, T, _ = x.shape
        if position_ids is None:
            base = input_pos if input_pos is not None else torch.arange(T, device=x.device)
            position_ids = base[None].expand(B, T)
        if input_pos is not None and mask is None:  # each token sees the cache slots up to its own
            S = self.layers[0].self_attn.kv_cache.k.shape[2]
            mask = (torch.arange(S, device=x.device) <= input_pos[:, None])[None, None]  # (1, 1, T, S)
        cos, sin = rope_cos_sin(position_ids, self.cfg.head_dim, self.cfg.rope_theta, x.dtype)
        for layer in self.layers:
            if self.checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, mask, input_pos, segments, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask, input_pos, segments)
        return self.norm(x)


def packed_mask(doc_ids):
    """doc_ids (B, T) -> bool mask (B, 1, T, T): causal, and never across samples.
    e.g. doc_ids [[0,0,1]] lets token 2 see only itself."""
    T = doc_ids.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()
    return ((doc_ids[:, :, None] == doc_ids[:, None, :]) & causal)[:, None]


def doc_segments(doc_ids):
    """doc_ids (B, T) -> per row the (start, end) runs of equal ids, the filler tail
    (negative ids) as one run. e.g. [[0, 0, 1, -1, -2]] -> [[(0, 2), (2, 3), (3, 5)]]."""
    out = []
    for row in doc_ids.tolist():
        row = [max(d, -1) for d in row]  # every filler position in one run
        cuts = [0] + [t for t in range(1, len(row)) if row[t] != row[t - 1]] + [len(row)]
        out.append(list(zip(cuts[:-1], cuts[1:])))
    return out


def sample_next(logits, temperature=0.0, top_k=None, generator=None):
    """logits (..., V) -> ids (...). Greedy at temperature 0, else top-k sampling."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is None:
        probs = logits.softmax(-1)
        return torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator).view(probs.shape[:-1])
    best, ids = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1)  # draw among the k best only:
    probs = best.softmax(-1)  # the same distribution as masking the rest, k draws' work instead of V's
    pick = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator)
    return ids.gather(-1, pick.view(*ids.shape[:-1], 1))[..., 0]


def decode_one(model, ids, pos):
    """ids (B, T) written to the KV cache at positions pos (T,) -> the last position's logits (B, V)."""
    return model.lm_head(model.model(model.model.embed_tokens(ids), input_pos=pos)[:, -1])


def compile_step(fn, device):
    """torch.compile for a decode step (decode_one, sample.decode_step); on CUDA with CUDA graphs
    (gpt-fast's "reduce-overhead"): one graph replay a step instead of hundreds of kernel
    launches. setup_cache keeps caches that fit, so the graphs' buffers stay where they are."""
    return torch.compile(fn, mode="reduce-overhead" if torch.device(device).type == "cuda" else None)


class Qwen2(nn.Module):
    """Qwen2ForCausalLM: `model` (embeddings, blocks, norm) and `lm_head`."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.model = Qwen2Model(cfg)
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        if not self.lm_head.weight.is_meta:  # a meta model is built only to be loaded into
            self.apply(_init_weights)

    def forward(self, input_ids, position_ids=None, mask=None, input_pos=None, segments=None):
        """input_ids (B, T) -> logits (B, T, vocab)."""
        h = self.model(self.model.embed_tokens(input_ids), position_ids, mask, input_pos, segments)
        return self.lm_head(h)

    def setup_cache(self, batch_size, max_len, dtype=None, device=None):
        """Static KV caches of max_len positions. Caches that already fit are kept: a generation
        writes its slots from position 0 on and the mask hides the rest, and a compiled step
        keeps its buffers (CUDA graphs replay at fixed addresses)."""
        w = self.model.embed_tokens.weight
        dtype, device = dtype or w.dtype, torch.device(device or w.device)
        for layer in self.model.layers:
            a = layer.self_attn
            if a.kv_cache is None or not a.kv_cache.fits(batch_size, max_len, dtype, device):
                a.kv_cache = KVCache(batch_size, a.n_kv, max_len, a.hd, dtype, device)

    @torch.no_grad()
    def generate(self, input_ids, max_new_tokens, temperature=0.0, top_k=None, generator=None, step=None):
        """input_ids (B, T) -> (B, T + max_new_tokens): prefill once, then one token a step.
        step(model, ids, pos) is each new token's step, decode_one by default; bench.py passes
        torch.compile(decode_one) (the cache keeps its shapes and, from call to call, its buffers)."""
        B, T = input_ids.shape
        self.setup_cache(B, T + max_new_tokens)
        pos = torch.arange(T, device=input_ids.device)
        out = [input_ids]
        logits = decode_one(self, input_ids, pos)
        for i in range(max_new_tokens):
            nxt = sample_next(logits, temperature, top_k, generator)  # (B,)
            out.append(nxt[:, None])
            if i + 1 == max_new_tokens:
                break
            pos = pos[-1:] + 1
            logits = (step or decode_one)(self, nxt[:, None], pos)
        return torch.cat(out, dim=1)

    @classmethod
    def from_pretrained(cls, path, dtype=None, device=None):
        """Build from an HF folder (config.json + model.safetensors or shards).
        dtype None keeps the stored dtype (the weights stay memory-mapped, no copy)."""
        cfg = Qwen2Config.from_hf(read_config(path))
        state = load_checkpoint(path)
        with torch.device("meta"):
            model = cls(cfg)
        check_state_dict(model, state, path, ["lm_head.weight"] if cfg.tie_word_embeddings else [])
        modules = dict(model.named_modules())
        for name, tensor in state.items():  # the loaded tensors become the parameters: no copy
            module, _, leaf = name.rpartition(".")
            modules[module]._parameters[leaf] = nn.Parameter(tensor)  # every key is a parameter (no persistent buffers)
        if cfg.tie_word_embeddings:
            model.lm_head.weight = model.model.embed_tokens.weight
        return model.to(device=device, dtype=dtype) if device or dtype else model


def _init_weights(m):
    if isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Embedding):
        nn.init.normal_(m.weight, std=0.02)
    elif isinstance(m, RMSNorm):
        nn.init.ones_(m.weight)

# -----------------------------------------------------------------------------
# Loading: every key and shape checked before anything is assigned


def check_state_dict(model, state, path, tied=()):
    """Every parameter present with its shape; nothing unexpected. Raises before any copy.
    tied: the names of tied heads (("lm_head.weight",) in a tied Qwen2), which the file may leave
    out or carry redundantly (then they are dropped)."""
    want = {k: p.shape for k, p in model.named_parameters(remove_duplicate=False)}  # no buffers are saved
    for name in tied:
        want.pop(name, None)
        state.pop(name, None)
    missing, extra = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    if missing or extra:
        raise ValueError(f"{path}: config.json does not match the weights: missing {missing[:4]}, "
                         f"unexpected {extra[:4]}")
    for k, shape in want.items():
        if tuple(state[k].shape) != tuple(shape):
            raise ValueError(f"{path}: config.json does not match the weights: {k} has shape "
                             f"{tuple(state[k].shape)}, the config implies {tuple(shape)}")

# -----------------------------------------------------------------------------
# UALM: the unified vocabulary and the 8-stream model (SPEC.md section 1)

N_SPECIAL = 256  # ids 0..255; the text vocabulary starts after them
PAD, BOS, EOS, EOT, SYSTEM, USER, ASSISTANT, TEXT, AUDIO = range(9)
AUDIO_IN = 9  # (choice) placeholder position filled by one encoder frame
SPECIAL_NAMES = ["<|pad|>", "<|bos|>", "<|eos|>", "<|eot|>", "<|system|>", "<|user|>", "<|assistant|>",
                 "<|text|>", "<|audio|>", "<|audio_in|>"]
N_STREAMS = 8  # one stream per RVQ codebook; text lives in stream 0
CODEBOOK_SIZE = 1024
INTERVAL = CODEBOOK_SIZE + 1  # index 0 of each codebook's interval is its pad


@dataclass
class UALMConfig:
    text_size: int = 4096  # rows of the text vocabulary (Qwen: its embedding rows)
    audio_dim: int = 0  # width of the encoder features the adapter reads (0: no audio input)
    backbone: dict = field(default_factory=lambda: asdict(PRESETS["tiny"]))  # a Qwen2Config as a dict
    # audio_head is audio_embed, one table read on the way in and out (the toy's choice: from random
    # weights it learns faster tied, as the toy backbone ties its text rows); from_qwen: False, the
    # release's two new tables
    tie_audio: bool = True

    @property
    def audio_offset(self):
        return N_SPECIAL + self.text_size

    @property
    def vocab_size(self):
        return self.audio_offset + N_STREAMS * INTERVAL

    def backbone_config(self):
        """The Qwen2 inside: its embedding and head hold the specials and the text rows only."""
        return Qwen2Config(**{**self.backbone, "vocab_size": self.audio_offset})

    def text_ids(self, ids):
        """Tokenizer ids -> unified ids. e.g. Qwen's 9707 ("Hello") -> 9963."""
        return [i + N_SPECIAL for i in ids]

    def audio_ids(self, codes):
        """codes (..., 8, T) in 0..1023, -1 for a codebook's pad -> unified ids (..., 8, T).
        e.g. codebook 2, code 5 -> audio_offset + 2*1025 + 6."""
        k = torch.arange(N_STREAMS, device=codes.device)[:, None]
        return self.audio_offset + k * INTERVAL + codes + 1

    def codes_from_ids(self, ids):
        """The inverse of audio_ids: unified ids (..., 8, T) -> codes, -1 for pad."""
        k = torch.arange(N_STREAMS, device=ids.device)[:, None]
        return ids - self.audio_offset - k * INTERVAL - 1


class UALM(nn.Module):
    """One decoder over [B, L, 8] token grids.

    The unified ids split over two pairs of tables, as in the release:
        ids 0 .. audio_offset - 1        specials and text: Qwen2's embed_tokens and lm_head rows
                                         (tied when the Qwen checkpoint ties them)
        ids audio_offset + k*1025 + j    codebook k's entry j (0 = its pad): row k*1025 + j of
                                         audio_embed and of audio_head, two new tables (one
                                         shared table when cfg.tie_audio)
    Input: the 8 streams' embeddings are summed (pad, id 0, embeds to zero); positions
    whose stream 0 holds AUDIO_IN take the adapted encoder frames instead, in order.
    Output: hidden h; stream k reads its own codebook interval of audio_head from
    h + stream_emb[k] (zero for k=0), and stream 0 reads text and codebook 0 together."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.lm = Qwen2(cfg.backbone_config())
        d = self.lm.cfg.hidden_size
        self.audio_embed = nn.Embedding(N_STREAMS * INTERVAL, d, _weight=torch.empty(N_STREAMS * INTERVAL, d))
        self.audio_head = Linear(d, N_STREAMS * INTERVAL, bias=False)
        self.stream_emb = nn.Parameter(torch.zeros(N_STREAMS - 1, d))
        self.adapter = Adapter(cfg.audio_dim, d) if cfg.audio_dim else None
        if not self.stream_emb.is_meta:
            self.audio_embed.apply(_init_weights)
            self.audio_head.apply(_init_weights)
        if cfg.tie_audio:
            self.audio_head.weight = self.audio_embed.weight

    def embed(self, ids, audio_feats=None):
        """ids (B, L, 8) and encoder frames (M, audio_dim) -> input embeddings (B, L, d).
        Text and specials sit in stream 0 only; audio ids in any stream."""
        B, L, S = ids.shape
        off = self.cfg.audio_offset
        audio = ids - off  # (B, L, 8): rows of audio_embed, negative for specials, text and pad
        w = self.audio_embed.weight
        # the audio rows of all 8 streams summed in one lookup; a weight of 0 drops the other cells
        x = F.embedding_bag(audio.clamp(min=0).view(-1, S), w, mode="sum",
                            per_sample_weights=(audio >= 0).view(-1, S).to(w.dtype)).view(B, L, -1)
        text = ids[..., 0].masked_fill(ids[..., 0] >= off, PAD)  # (B, L)
        x = x + self.lm.model.embed_tokens(text).masked_fill((text == PAD)[..., None], 0.0)  # pad embeds to zero
        slots = ids[..., 0] == AUDIO_IN
        n = int(slots.sum())
        if n or audio_feats is not None:
            if audio_feats is None or audio_feats.shape[0] != n:
                got = 0 if audio_feats is None else audio_feats.shape[0]
                raise ValueError(f"{got} audio frames given for {n} <|audio_in|> positions")
            a = self.adapter(audio_feats.to(self.adapter.fc1.weight.dtype))  # features may be cached in fp16
            x = x.masked_scatter(slots.unsqueeze(-1), a.to(x.dtype))
        return x

    def forward(self, ids, audio_feats=None, position_ids=None, mask=None, input_pos=None, segments=None):
        """ids (B, L, 8) -> final hidden states (B, L, d); see text_logits / audio_logits."""
        return self.lm.model(self.embed(ids, audio_feats), position_ids, mask, input_pos, segments)

    def text_logits(self, h):
        """h (..., d) -> stream 0's logits (..., audio_offset + 1025): the specials and text from
        lm_head, then codebook 0's interval from audio_head, so index i is unified id i.
        e.g. 256 specials, 4096 text rows -> 5377 logits; index 4352 is codebook 0's pad."""
        first = self.audio_head.weight[:INTERVAL]  # (1025, d): codebook 0 (stream 0 adds no stream embedding)
        return torch.cat([self.lm.lm_head(h), F.linear(h, first)], -1)

    def audio_logits(self, h):
        """h (..., d) -> per-codebook logits (..., 8, 1025); index 0 is the codebook's pad."""
        w = self.audio_head.weight.view(N_STREAMS, INTERVAL, -1)
        s = torch.cat([self.stream_emb.new_zeros(1, h.shape[-1]), self.stream_emb]).to(h.dtype)
        x = h.unsqueeze(-2) + s  # (..., 8, d)
        return torch.einsum("...kd,kvd->...kv", x, w)

    def setup_cache(self, batch_size, max_len, dtype=None, device=None):
        self.lm.setup_cache(batch_size, max_len, dtype, device)

    @classmethod
    def from_qwen(cls, path, audio_dim=0, dtype=None, device=None):
        """Start from a Qwen2.5 checkpoint: its blocks as they are, its text rows moved up by
        N_SPECIAL (tied or untied, as Qwen has them), the new rows (the specials, audio_embed,
        audio_head) drawn at the scale of the pretrained rows (the release uses N(0, 1), far off
        the pretrained scale)."""
        qwen = Qwen2.from_pretrained(path)
        cfg = UALMConfig(text_size=qwen.cfg.vocab_size, audio_dim=audio_dim, backbone=asdict(qwen.cfg),
                         tie_audio=False)
        with torch.device("meta"):
            model = cls(cfg)
        model.to_empty(device="cpu")
        model.apply(_init_weights)
        nn.init.zeros_(model.stream_emb)
        heads = ("model.embed_tokens.weight", "lm_head.weight")
        result = model.lm.load_state_dict({k: v for k, v in qwen.state_dict().items() if k not in heads}, strict=False)
        assert set(result.missing_keys) <= set(heads) and not result.unexpected_keys, result
        emb, head = qwen.model.embed_tokens.weight, qwen.lm_head.weight  # one tensor when Qwen ties them
        text = [(emb, model.lm.model.embed_tokens.weight)]
        if not qwen.cfg.tie_word_embeddings:
            text.append((head, model.lm.lm_head.weight))
        with torch.no_grad():
            for old, new in text:  # the specials drawn, then Qwen's text rows above them
                new.normal_(0.0, old.float().std().item())
                new[N_SPECIAL:] = old
            model.audio_embed.weight.normal_(0.0, emb.float().std().item())  # the audio rows: new tables
            model.audio_head.weight.normal_(0.0, head.float().std().item())
        if cfg.backbone_config().tie_word_embeddings:
            model.lm.lm_head.weight = model.lm.model.embed_tokens.weight
        return model.to(device=device, dtype=dtype or qwen.model.embed_tokens.weight.dtype)

    @classmethod
    def from_pretrained(cls, path):
        """A folder `python checkpoint.py --export` wrote (config.json: a UALMConfig, model.safetensors,
        tokenizer/) -> UALM in eval mode, its weights equal to the checkpoint's. As in
        Qwen2.from_pretrained, every key and shape is checked before any copy; a tied head (lm_head,
        audio_head) may be left out of the file."""
        raw = read_config(path)
        try:
            cfg = UALMConfig(**raw)
        except TypeError:
            raise ValueError(f"{path}/config.json is not a UALM config (keys {sorted(raw)[:4]}); export the "
                             "folder with `python checkpoint.py --export runs/sft.pt --out DIR`") from None
        state = load_checkpoint(path)
        model = cls(cfg)
        tied = [name for name, on in (("lm.lm_head.weight", cfg.backbone_config().tie_word_embeddings),
                                      ("audio_head.weight", cfg.tie_audio)) if on]
        check_state_dict(model, state, path, tied)
        model.load_state_dict(state, strict=not tied)  # a tied head is its embedding, loaded with it
        return model.eval()
