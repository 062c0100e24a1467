"""model.py against the reference: tiny random Qwen2ForCausalLM checkpoints written by
transformers' save_pretrained, loaded by our from-scratch reader and backbone."""

import json
import os
import shutil

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import Qwen2Config as HFConfig, Qwen2ForCausalLM  # noqa: E402

import model as model_lib  # noqa: E402
from checkpoint import load_safetensors, save_safetensors  # noqa: E402
from model import AUDIO_IN, N_SPECIAL, N_STREAMS, PAD, Qwen2, UALM, UALMConfig, doc_segments, packed_mask  # noqa: E402

V = 320


def hf_model(tied=True, kv_heads=2, theta=12345.0, seed=0):
    torch.manual_seed(seed)
    cfg = HFConfig(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                   num_key_value_heads=kv_heads, tie_word_embeddings=tied, max_position_embeddings=512,
                   rope_parameters={"rope_type": "default", "rope_theta": theta}, rms_norm_eps=1e-6)
    m = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():  # large random weights, so that a wrong detail moves the logits
        for name, p in m.named_parameters():
            p.normal_(1.0 if name.endswith("layernorm.weight") or name.endswith("norm.weight") else 0.0, 0.15)
    return m


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen")
    out = {}
    for name, kw, save in [("tied", dict(tied=True), {}), ("untied", dict(tied=False, kv_heads=4), {}),
                           ("sharded", dict(tied=False), dict(max_shard_size="100KB"))]:
        m = hf_model(**kw)
        m.save_pretrained(root / name, **save)
        out[name] = (str(root / name), m)
    hf_model(seed=1).to(torch.bfloat16).save_pretrained(root / "bf16")
    ref = Qwen2ForCausalLM.from_pretrained(root / "bf16", dtype=torch.float32).eval()  # bf16 weights, fp32 compute
    out["bf16"] = (str(root / "bf16"), ref)
    return out


@pytest.mark.parametrize("name", ["tied", "untied", "sharded", "bf16"])
def test_logits_match_transformers(ckpts, name):
    path, ref = ckpts[name]
    if name == "sharded":
        assert os.path.exists(os.path.join(path, "model.safetensors.index.json"))
    ours = Qwen2.from_pretrained(path, dtype=torch.float32)
    x = torch.randint(0, V, (2, 37))
    with torch.no_grad():
        want, got = ref(x).logits, ours(x)
    assert want.abs().max() > 1.0
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def mapped_ranges(path):
    """The address ranges at which this process maps the file `path` (Linux: /proc/self/maps)."""
    target, ranges = os.path.realpath(path), []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].strip() == target:
                lo, hi = (int(a, 16) for a in parts[0].split("-"))
                ranges.append((lo, hi))
    return ranges


def inside(tensor, ranges):
    lo = tensor.data_ptr()
    hi = lo + tensor.numel() * tensor.element_size()
    return any(a <= lo and hi <= b for a, b in ranges)


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads Linux's /proc/self/maps")
def test_bf16_checkpoint_stays_bf16_and_memory_mapped(ckpts):
    """dtype None keeps the stored bf16 and copies nothing: every parameter's bytes lie inside
    a mapping of model.safetensors (as /proc/self/maps lists them), at the offset its header
    gives; asking for fp32 copies them out of it."""
    path = os.path.join(ckpts["bf16"][0], "model.safetensors")
    m = Qwen2.from_pretrained(ckpts["bf16"][0])
    assert m.lm_head.weight.dtype == torch.bfloat16
    assert m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()  # tied
    ranges = mapped_ranges(path)
    assert ranges, "model.safetensors is not mapped"
    params = dict(m.named_parameters())
    assert len(params) == 3 * 12 + 2 and all(p.dtype == torch.bfloat16 and inside(p, ranges) for p in params.values())
    with open(path, "rb") as f:  # the header's offsets: each tensor where the file puts it, relative to the first
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    base = params["model.embed_tokens.weight"].data_ptr() - header["model.embed_tokens.weight"]["data_offsets"][0]
    for name, p in params.items():
        assert p.data_ptr() - base == header[name]["data_offsets"][0], name
        assert torch.equal(p, load_safetensors(path)[name])
    copied = Qwen2.from_pretrained(ckpts["bf16"][0], dtype=torch.float32)
    assert not any(inside(p, mapped_ranges(path)) for p in copied.parameters())


def test_kv_cache_decoding_matches_full_forward(ckpts):
    path, _ = ckpts["untied"]
    m = Qwen2.from_pretrained(path)
    x = torch.randint(0, V, (3, 24))
    with torch.no_grad():
        full = m(x)
        m.setup_cache(3, 32)
        steps = [m(x[:, :10], input_pos=torch.arange(10)), m(x[:, 10:15], input_pos=torch.arange(10, 15))]
        for t in range(15, 24):
            steps.append(m(x[:, t:t + 1], input_pos=torch.tensor([t])))
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["tied", "untied"])
def test_greedy_generate_equals_transformers(ckpts, name):
    path, ref = ckpts[name]
    m = Qwen2.from_pretrained(path)
    x = torch.randint(0, V, (2, 9))
    want = ref.generate(x, max_new_tokens=32, min_new_tokens=32, do_sample=False, pad_token_id=0)
    got = m.generate(x, 32)
    assert got.shape == (2, 41)
    assert torch.equal(got, want)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run where one is lent)")


@cuda
@pytest.mark.parametrize("name", ["tied", "untied", "bf16"])
def test_cuda_bf16_as_close_to_fp32_as_transformers(ckpts, name):
    """bf16 on CUDA (SDPA's GPU kernels): our logits are as close to the fp32 reference as
    transformers' own bf16 logits on the same GPU, and KV-cache decoding stays as close."""
    path, ref = ckpts[name]
    x = torch.randint(0, V, (2, 37))
    with torch.no_grad():
        want = ref(x).logits  # fp32 on the CPU
        hf = Qwen2ForCausalLM.from_pretrained(path, dtype=torch.bfloat16).to("cuda").eval()
        ours = Qwen2.from_pretrained(path, dtype=torch.bfloat16, device="cuda")
        hf_err = (hf(x.cuda()).logits.float().cpu() - want).abs()
        got = ours(x.cuda()).float().cpu()
        ours.setup_cache(2, 40)
        steps = [ours(x[:, :30].cuda(), input_pos=torch.arange(30, device="cuda"))]
        steps += [ours(x[:, t:t + 1].cuda(), input_pos=torch.tensor([t], device="cuda")) for t in range(30, 37)]
        cached = torch.cat(steps, 1).float().cpu()
    assert ours.lm_head.weight.dtype == torch.bfloat16 and hf_err.max() > 0
    for logits in (got, cached):
        err = (logits - want).abs()
        assert err.mean() <= 1.5 * hf_err.mean() and err.max() <= 2 * hf_err.max(), (err.max(), hf_err.max())


def test_kept_cache_generates_as_transformers(ckpts):
    """setup_cache keeps caches that fit: a generation over a used cache, its later slots
    holding another prompt's keys, still equals transformers' generate."""
    path, ref = ckpts["untied"]
    m = Qwen2.from_pretrained(path)
    m.generate(torch.randint(0, V, (2, 20)), 12)  # 32 positions, every slot written
    cache = m.model.layers[0].self_attn.kv_cache
    x = torch.randint(0, V, (2, 9))
    got = m.generate(x, 23)  # 32 positions again: the same cache
    assert m.model.layers[0].self_attn.kv_cache is cache
    assert torch.equal(got, ref.generate(x, max_new_tokens=23, min_new_tokens=23, do_sample=False, pad_token_id=0))


def test_packed_forward_equals_separate_forwards(ckpts):
    m = Qwen2.from_pretrained(ckpts["tied"][0])
    a, b = torch.randint(0, V, (1, 11)), torch.randint(0, V, (1, 6))
    doc = torch.tensor([[0] * 11 + [1] * 6])
    pos = torch.cat([torch.arange(11), torch.arange(6)])[None]
    with torch.no_grad():
        x = torch.cat([a, b], 1)
        assert doc_segments(doc) == [[(0, 11), (11, 17)]]
        for packed in (m(x, position_ids=pos, mask=packed_mask(doc)), m(x, position_ids=pos, segments=doc_segments(doc))):
            torch.testing.assert_close(packed[:, :11], m(a), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(packed[:, 11:], m(b), atol=1e-5, rtol=1e-5)


def edit_config(src, dst, **changes):
    shutil.copytree(src, dst)
    cfg = json.load(open(os.path.join(dst, "config.json")))
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    json.dump(cfg, open(os.path.join(dst, "config.json"), "w"))


def test_both_config_spellings(ckpts, tmp_path):
    path, ref = ckpts["tied"]
    old = tmp_path / "old"  # older transformers: rope_theta and torch_dtype at top level
    edit_config(path, old, rope_parameters=None, rope_theta=12345.0, dtype=None, torch_dtype="float32")
    m = Qwen2.from_pretrained(str(old))
    assert m.cfg.rope_theta == 12345.0
    x = torch.randint(0, V, (1, 50))
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref(x).logits, atol=1e-4, rtol=1e-4)


def test_safetensors_reader_equals_library(tmp_path):
    from safetensors.torch import load_file, save_file
    ts = {"a": torch.randn(3, 5), "b": torch.randn(7).half(), "c": torch.randn(2, 2, 2).bfloat16(),
          "d": torch.arange(6).view(2, 3), "e": torch.zeros(0, 4)}
    save_file(ts, tmp_path / "x.safetensors", metadata={"format": "pt"})
    ours = load_safetensors(str(tmp_path / "x.safetensors"))
    assert set(ours) == set(ts)
    for k in ts:
        assert ours[k].dtype == ts[k].dtype and torch.equal(ours[k], ts[k])
    save_safetensors(ts, str(tmp_path / "y.safetensors"))  # and the library reads what we write
    theirs = load_file(tmp_path / "y.safetensors")
    assert all(torch.equal(theirs[k], ts[k]) for k in ts)


def test_truncated_and_corrupt_files(ckpts, tmp_path):
    path, _ = ckpts["tied"]
    bad = tmp_path / "trunc"
    shutil.copytree(path, bad)
    fn = bad / "model.safetensors"
    data = fn.read_bytes()
    fn.write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match=r"model.safetensors: truncated"):
        Qwen2.from_pretrained(str(bad))
    fn.write_bytes(data[:8] + b"{not json" + data[17:])
    with pytest.raises(ValueError, match=r"model.safetensors: corrupt safetensors header"):
        Qwen2.from_pretrained(str(bad))
    fn.write_bytes(b"\x01")
    with pytest.raises(ValueError, match=r"not a safetensors file"):
        Qwen2.from_pretrained(str(bad))


def test_missing_files(ckpts, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config.json: not found"):
        Qwen2.from_pretrained(str(tmp_path))
    bad = tmp_path / "shards"
    shutil.copytree(ckpts["sharded"][0], bad)
    shard = sorted(p for p in os.listdir(bad) if p.endswith(".safetensors"))[-1]
    os.remove(bad / shard)
    with pytest.raises(FileNotFoundError, match=rf"{shard}: shard listed in .* is missing"):
        Qwen2.from_pretrained(str(bad))


def test_config_that_does_not_match(ckpts, tmp_path):
    edit_config(ckpts["tied"][0], tmp_path / "layers", num_hidden_layers=4)
    with pytest.raises(ValueError, match=r"config.json does not match the weights: missing \['model.layers.3"):
        Qwen2.from_pretrained(str(tmp_path / "layers"))
    edit_config(ckpts["tied"][0], tmp_path / "width", intermediate_size=128)
    with pytest.raises(ValueError, match=r"mlp.gate_proj.weight has shape \(96, 64\), the config implies \(128, 64\)"):
        Qwen2.from_pretrained(str(tmp_path / "width"))
    edit_config(ckpts["tied"][0], tmp_path / "untie", tie_word_embeddings=False)  # untied but no lm_head
    with pytest.raises(ValueError, match=r"missing \['lm_head.weight'\]"):
        Qwen2.from_pretrained(str(tmp_path / "untie"))


def test_redundant_lm_head_in_tied_checkpoint(ckpts, tmp_path):
    path, ref = ckpts["tied"]
    bad = tmp_path / "redundant"
    shutil.copytree(path, bad)
    state = load_safetensors(str(bad / "model.safetensors"))
    state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()
    save_safetensors(state, str(bad / "model.safetensors"))
    m = Qwen2.from_pretrained(str(bad))
    x = torch.randint(0, V, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref(x).logits, atol=1e-4, rtol=1e-4)


# ---- UALM on the same backbone


@pytest.mark.parametrize("name", ["tied", "untied"])
def test_ualm_from_qwen_keeps_text_behaviour(ckpts, name):
    """A text-only [B, L, 8] grid (text in stream 0, pad elsewhere) through the extended
    model gives, on the text interval, exactly the logits of the original checkpoint. The
    text rows keep Qwen's tying; the audio rows are two new, separate tables (the release's
    nn.Embedding and nn.Linear), tied or not."""
    path, ref = ckpts[name]
    u = UALM.from_qwen(path, audio_dim=16)
    cfg = u.cfg
    assert cfg.vocab_size == N_SPECIAL + V + N_STREAMS * 1025
    x = torch.randint(0, V, (2, 13))
    grid = torch.zeros(2, 13, N_STREAMS, dtype=torch.long)
    grid[..., 0] = x + N_SPECIAL
    with torch.no_grad():
        logits = u.text_logits(u(grid))
        torch.testing.assert_close(logits[..., N_SPECIAL:N_SPECIAL + V], ref(x).logits, atol=1e-4, rtol=1e-4)
    assert logits.shape[-1] == cfg.audio_offset + 1025  # specials, text, then codebook 0's interval
    emb, head = u.lm.model.embed_tokens.weight, u.lm.lm_head.weight
    assert emb.shape == head.shape == (N_SPECIAL + V, 64)
    assert (emb is head) == (name == "tied") and u.lm.cfg.tie_word_embeddings == (name == "tied")
    assert torch.equal(emb[N_SPECIAL:], ref.model.embed_tokens.weight)
    params = dict(u.named_parameters(remove_duplicate=False))
    assert params["audio_embed.weight"].shape == params["audio_head.weight"].shape == (N_STREAMS * 1025, 64)
    assert params["audio_embed.weight"].data_ptr() != params["audio_head.weight"].data_ptr()
    assert not any(p is params["audio_embed.weight"] or p is params["audio_head.weight"]
                   for n, p in params.items() if n not in ("audio_embed.weight", "audio_head.weight"))
    old = ref.model.embed_tokens.weight
    for new_rows in (emb[:N_SPECIAL], u.audio_embed.weight, u.audio_head.weight):
        assert 0.8 < new_rows.std().item() / old.std().item() < 1.2  # new rows at the pretrained scale


def test_ualm_streams_and_audio_slots(monkeypatch):
    torch.manual_seed(0)
    cfg = UALMConfig(text_size=50, audio_dim=12, backbone=dict(vocab_size=1, hidden_size=32, intermediate_size=64,
                                                               num_hidden_layers=2, num_attention_heads=4,
                                                               num_key_value_heads=2, rope_theta=10000.0))
    u = UALM(cfg).eval()
    with torch.no_grad():
        u.stream_emb.normal_()
    codes = torch.randint(-1, 1024, (N_STREAMS, 5))
    ids = cfg.audio_ids(codes)
    assert torch.equal(cfg.codes_from_ids(ids), codes)
    assert ids[3, 0] == cfg.audio_offset + 3 * 1025 + codes[3, 0] + 1
    grid = torch.zeros(1, 9, N_STREAMS, dtype=torch.long)
    grid[0, 0, 0] = N_SPECIAL + 7  # a text token
    grid[0, 1:3, 0] = AUDIO_IN  # two encoder frames
    grid[0, 3:8] = ids.T  # five audio frames
    grid[0, 8, 0] = PAD
    feats = torch.randn(2, 12)
    W, A = u.lm.model.embed_tokens.weight, u.audio_embed.weight
    with torch.no_grad():
        x = u.embed(grid, feats)
        torch.testing.assert_close(x[0, 0], W[N_SPECIAL + 7])
        torch.testing.assert_close(x[0, 1:3], u.adapter(feats))
        torch.testing.assert_close(u.embed(grid, feats.half()), x, atol=1e-2, rtol=1e-2)  # features cached in fp16
        torch.testing.assert_close(x[0, 3:8], A[ids.T - cfg.audio_offset].sum(1))
        assert x[0, 8].abs().max() == 0  # pad embeds to zero
        h = u(grid, feats)
        al = u.audio_logits(h)  # (1, 9, 8, 1025)
        full = torch.stack([u.audio_head(h + (u.stream_emb[k - 1] if k else 0)) for k in range(N_STREAMS)], 2)
        for k in range(N_STREAMS):
            torch.testing.assert_close(al[:, :, k], full[:, :, k, k * 1025:(k + 1) * 1025], atol=1e-5, rtol=1e-5)
        for last in (h[:, -1], h[0, -2:]):  # one and two rows, as decoding calls it
            torch.testing.assert_close(u.audio_logits(last), al[0, -last.shape[0]:].view_as(u.audio_logits(last)))
        tl = u.text_logits(h)  # stream 0: text, then codebook 0, indexed by unified id
        torch.testing.assert_close(tl[..., :cfg.audio_offset], u.lm.lm_head(h))
        torch.testing.assert_close(tl[..., cfg.audio_offset:], al[:, :, 0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="1 audio frames given for 2"):
        u.embed(grid, feats[:1])


def test_sample_next_top_k_distribution():
    """Top-k sampling of a worked example: only the k largest logits are ever drawn, each as
    often as the softmax of those k logits over the temperature says (20000 draws)."""
    logits = torch.tensor([[1.0, 3.0, 0.5, 2.5, -1.0, 2.0]]).expand(20000, 6)
    ids = model_lib.sample_next(logits, temperature=0.5, top_k=3, generator=torch.Generator().manual_seed(0))
    assert ids.shape == (20000,)
    freq = torch.bincount(ids, minlength=6).float() / len(ids)
    top = torch.tensor([3.0, 2.5, 2.0]) / 0.5
    want = torch.zeros(6)
    want[[1, 3, 5]] = top.exp() / top.exp().sum()  # 0.665, 0.245, 0.090
    assert freq[[0, 2, 4]].sum() == 0
    torch.testing.assert_close(freq, want, atol=0.01, rtol=0)
    assert torch.equal(model_lib.sample_next(logits[:2]), torch.tensor([1, 1]))  # temperature 0: greedy


def test_activation_checkpointing_gives_the_same_gradients():
    """train.py --checkpointing recomputes each block in the backward pass: the loss and every
    gradient equal the plain step's in fp32, with packed segments as training passes them."""
    torch.manual_seed(0)
    cfg = UALMConfig(text_size=50, audio_dim=0, backbone=dict(vocab_size=1, hidden_size=32, intermediate_size=64,
                                                              num_hidden_layers=3, num_attention_heads=4,
                                                              num_key_value_heads=2, rope_theta=10000.0))
    u = UALM(cfg)
    grid = torch.randint(N_SPECIAL, N_SPECIAL + 50, (2, 12, N_STREAMS))
    doc = torch.tensor([[0] * 5 + [1] * 7, [0] * 12])
    grads, saved = [], []
    for on in (False, True):
        u.zero_grad()
        u.lm.model.checkpointing = on
        kept = []  # the tensors autograd keeps for the backward pass
        with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t.numel()) or t, lambda t: t):
            h = u(grid, segments=doc_segments(doc))
        saved.append(sum(kept))
        loss = u.text_logits(h).logsumexp(-1).mean()
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in u.named_parameters() if p.grad is not None}))
    assert saved[1] < saved[0] / 2  # checkpointed: the blocks' activations are not kept
    torch.testing.assert_close(grads[1][0], grads[0][0], atol=0, rtol=0)
    assert grads[0][1].keys() == grads[1][1].keys() and len(grads[0][1]) > 10
    for n, g in grads[0][1].items():
        torch.testing.assert_close(grads[1][1][n], g, atol=1e-6, rtol=1e-5, msg=n)
