"""xcodec.py against transformers' XcodecModel and HubertModel, the reference: tiny random models
written with save_pretrained, loaded by our from_pretrained, compared in fp32 eval mode."""

import json
import math

import pytest
import torch

from checkpoint import load_safetensors, save_safetensors
from xcodec import PRESETS, Hubert, SemanticConfig, XCodec, XCodecConfig, load_weights

transformers = pytest.importorskip("transformers")
from transformers import HubertConfig, HubertModel, XcodecConfig, XcodecModel  # noqa: E402

TOL = 1e-4

# Three tiny X-codecs. The HuBERT strides multiply to the DAC hop, so both branches run at the
# same frame rate; sample_rate and target_bandwidths fix the codebook count (frame_rate = sr/hop).
CONFIGS = {
    # odd DAC stride, group norm + post-norm HuBERT, even positional kernel, 4 codebooks of 16
    "odd-stride": dict(
        acoustic_model_config=dict(encoder_hidden_size=4, downsampling_ratios=[2, 3], upsampling_ratios=[2, 3],
                                   decoder_hidden_size=16, hidden_size=8),
        semantic_model_config=dict(model_type="hubert", hidden_size=12, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=20, conv_dim=[8, 8], conv_kernel=[3, 2], conv_stride=[3, 2],
                                   num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2),
        codebook_size=16, sample_rate=600, target_bandwidths=[0.4, 1.6]),
    # odd widths everywhere, layer norm + pre-norm HuBERT with conv bias and no projection norm,
    # wider semantic blocks, 6 codebooks of 20 (not a power of two)
    "odd-widths": dict(
        acoustic_model_config=dict(encoder_hidden_size=3, downsampling_ratios=[3, 5], upsampling_ratios=[5, 3],
                                   decoder_hidden_size=20, hidden_size=6),
        semantic_model_config=dict(model_type="hubert", hidden_size=10, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=14, conv_dim=[6, 7], conv_kernel=[5, 3], conv_stride=[5, 3],
                                   num_conv_pos_embeddings=5, num_conv_pos_embedding_groups=5, conv_bias=True,
                                   feat_extract_norm="layer", do_stable_layer_norm=True, feat_proj_layer_norm=False),
        channel_ratios=[2, 1], block_dilations=[1, 3], unit_kernel_size=5, kernel_size=5,
        codebook_size=20, sample_rate=1500, target_bandwidths=[3.0]),
    # three even strides, group norm + pre-norm HuBERT, 2 codebooks of 64
    "even-strides": dict(
        acoustic_model_config=dict(encoder_hidden_size=2, downsampling_ratios=[4, 2, 2], upsampling_ratios=[4, 2, 2],
                                   decoder_hidden_size=32, hidden_size=16),
        semantic_model_config=dict(model_type="hubert", hidden_size=12, num_hidden_layers=3, num_attention_heads=3,
                                   intermediate_size=16, conv_dim=[8, 8, 8], conv_kernel=[4, 2, 2],
                                   conv_stride=[4, 2, 2], num_conv_pos_embeddings=6, num_conv_pos_embedding_groups=3,
                                   do_stable_layer_norm=True),
        codebook_size=64, sample_rate=1600, target_bandwidths=[0.6, 1.2]),
}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny models on one thread


def randomize(model, seed):
    """Weights at a scale that keeps activations O(1) (transformers' init leaves the DAC near zero
    and the codebooks all zero, which would make every code 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if name.endswith("alpha"):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            elif p.dim() == 1:
                p.copy_(0.1 * r + float("norm" in name and name.endswith("weight")))
            else:
                p.copy_(r / math.sqrt(p[0].numel()))
    return model


def hf_codec(name, seed=0):
    """A random transformers XcodecModel, with codebooks at the scale of what they quantise."""
    model = randomize(XcodecModel(XcodecConfig(**CONFIGS[name])), seed).eval()
    wav = torch.randn(1, 1, 40 * model.config.hop_length, generator=torch.Generator().manual_seed(seed))
    seen = []
    hook = model.fc.register_forward_hook(lambda m, i, o: seen.append(o))
    model.encode(wav)
    hook.remove()
    g = torch.Generator().manual_seed(seed + 1)
    for q in model.quantizer.quantizers:
        q.codebook.embed.copy_(torch.randn(q.codebook.embed.shape, generator=g) * seen[0].std())
    return model


@pytest.fixture(scope="module", params=list(CONFIGS))
def pair(request, tmp_path_factory):
    """(transformers' model, ours loaded from its save_pretrained folder)."""
    ref = hf_codec(request.param)
    path = tmp_path_factory.mktemp(request.param)
    ref.save_pretrained(path)
    return ref, XCodec.from_pretrained(path)


def test_matches_transformers(pair):
    ref, ours = pair
    hop = ref.config.hop_length
    for n in (20 * hop, 20 * hop + hop // 2 + 1):  # whole frames, and a length X-codec pads
        wav = torch.randn(2, 1, n, generator=torch.Generator().manual_seed(n))
        with torch.no_grad():
            codes = ref.encode(wav, return_dict=False)
            audio = ref.decode(codes, return_dict=False)
            semantic = ref._extract_semantic_features(wav)
            quantized = ref.quantizer.decode(codes.transpose(0, 1))
            reconstructed = ref.decoder_semantic(ref.fc1(quantized.transpose(1, 2)).transpose(1, 2))
        assert codes.unique().numel() > 8  # many codes in use: the comparison is not trivial
        assert torch.equal(ours.encode(wav), codes)
        assert torch.equal(ours.encode(wav[:, 0]), codes)  # (B, N) as well as (B, 1, N)
        assert audio.std() > 0.1
        torch.testing.assert_close(ours.decode(codes), audio[:, 0], atol=TOL, rtol=TOL)
        torch.testing.assert_close(ours.semantic_features(wav), semantic, atol=TOL, rtol=TOL)
        torch.testing.assert_close(ours.decode_semantic(codes), reconstructed.transpose(1, 2), atol=TOL, rtol=TOL)


@pytest.mark.parametrize("norm", ["group", "layer"])
@pytest.mark.parametrize("stable", [False, True])
def test_hubert_matches_transformers(norm, stable):
    cfg = HubertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=24,
                       conv_dim=[8, 8, 8], conv_kernel=[10, 3, 2], conv_stride=[5, 2, 2], num_conv_pos_embeddings=8,
                       num_conv_pos_embedding_groups=4, feat_extract_norm=norm, do_stable_layer_norm=stable)
    ref = randomize(HubertModel(cfg), 1).eval()
    ours = Hubert(SemanticConfig.from_hf(cfg.to_dict())).eval()
    load_weights(ours, dict(ref.state_dict()), "hubert")
    wav = torch.randn(2, 1000)
    with torch.no_grad():
        hidden = ref(wav, output_hidden_states=True).hidden_states
    mine = ours(wav)
    assert len(mine) == len(hidden) == 3
    for a, b in zip(mine, hidden):
        torch.testing.assert_close(a, b, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("spelling", ["parametrizations", "weight_g"])
def test_weight_norm_checkpoints_load(tmp_path, spelling):
    """Convs saved with weight norm (the DAC convs too, as the original X-codec holds them) load in
    either spelling: torch's parametrizations.weight.original0/1, or the older weight_g/weight_v."""
    ref = hf_codec("odd-stride", seed=3)
    ref.apply_weight_norm()
    state = {k: v.contiguous() for k, v in ref.state_dict().items()}
    if spelling == "weight_g":
        state = {k.replace(".parametrizations.weight.original0", ".weight_g")
                  .replace(".parametrizations.weight.original1", ".weight_v"): v for k, v in state.items()}
    assert any(k.startswith("acoustic_decoder.") and spelling in k for k in state)
    save_safetensors(state, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(ref.config.to_json_string())
    ours = XCodec.from_pretrained(tmp_path)
    wav = torch.randn(1, 1, 30 * ref.config.hop_length)
    with torch.no_grad():
        codes = ref.encode(wav, return_dict=False)
        audio = ref.decode(codes, return_dict=False)[:, 0]
    assert torch.equal(ours.encode(wav), codes)
    torch.testing.assert_close(ours.decode(codes), audio, atol=TOL, rtol=TOL)


def test_presets_match_transformers_defaults():
    """The xcodec-hubert-general preset is transformers' default XcodecConfig (what the converted
    checkpoints hold): hop 320 -> 50 Hz, 8 of 8 codebooks of 1024 at 4 kbps, and every tensor shape."""
    hf = XcodecConfig()
    cfg = PRESETS["xcodec-hubert-general"]
    assert XCodecConfig.from_hf(hf.to_dict()) == cfg
    assert (cfg.hop_length, cfg.frame_rate, cfg.num_quantizers, cfg.n_q, cfg.codebook_size) == (320, 50, 8, 8, 1024)
    with torch.device("meta"):
        ref, ours = XcodecModel(hf), XCodec(cfg)
    theirs = {k: v for k, v in ref.state_dict().items() if k.rpartition(".")[2] not in
              ("masked_spec_embed", "embed_avg", "cluster_size", "inited")}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    tiny = PRESETS["tiny"]
    assert (tiny.hop_length, tiny.frame_rate, tiny.n_q, tiny.codebook_size) == (320, 50, 8, 1024)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("saved")
    hf_codec("odd-stride").save_pretrained(path)
    return path


def copy_folder(src, dst, config=None, state=None):
    dst.mkdir()
    (dst / "config.json").write_text(json.dumps(config or json.loads((src / "config.json").read_text())))
    save_safetensors(state or load_safetensors(src / "model.safetensors"), dst / "model.safetensors")
    return dst


def test_bad_checkpoints(saved, tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        XCodec.from_pretrained(tmp_path / "nowhere")

    truncated = copy_folder(saved, tmp_path / "truncated")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match="model.safetensors: truncated"):
        XCodec.from_pretrained(truncated)

    state = dict(load_safetensors(saved / "model.safetensors"))
    del state["fc2.bias"]
    with pytest.raises(ValueError, match=r"missing \['fc2.bias'\]"):
        XCodec.from_pretrained(copy_folder(saved, tmp_path / "missing", state=state))

    config = json.loads((saved / "config.json").read_text())
    config["acoustic_model_config"]["hidden_size"] = 10
    with pytest.raises(ValueError, match="config.json does not match the weights: .* has shape"):
        XCodec.from_pretrained(copy_folder(saved, tmp_path / "mismatch", config=config))

    config = json.loads((saved / "config.json").read_text())
    config["model_type"] = "dac"
    with pytest.raises(ValueError, match="is a 'dac' config"):
        XCodec.from_pretrained(copy_folder(saved, tmp_path / "dac", config=config))

    config = json.loads((saved / "config.json").read_text())
    config["semantic_model_config"]["model_type"] = "wavlm"
    with pytest.raises(ValueError, match="only HuBERT"):
        XCodec.from_pretrained(copy_folder(saved, tmp_path / "wavlm", config=config))


def test_bad_inputs(saved):
    codec = XCodec.from_pretrained(saved)
    n_q, hop = codec.config.n_q, codec.config.hop_length
    with pytest.raises(ValueError, match="mono"):
        codec.encode(torch.randn(1, 2, 20 * hop))  # stereo
    with pytest.raises(ValueError, match="mono"):
        codec.encode(torch.randn(20 * hop))  # no batch axis
    with pytest.raises(ValueError, match="float"):
        codec.encode(torch.zeros(1, 20 * hop, dtype=torch.int16))
    with pytest.raises(ValueError, match="at least 1 "):
        codec.encode(torch.randn(1, 0))
    with pytest.raises(ValueError, match="at least 80 "):  # 400 samples make HuBERT's first frame, 320 are padding
        XCodec(PRESETS["tiny"]).encode(torch.randn(1, 79))
    codes = codec.encode(torch.randn(1, 20 * hop))
    with pytest.raises(ValueError, match=r"integers in \[0, 16\)"):
        codec.decode(codes + 16)
    with pytest.raises(ValueError, match=r"integers in \[0, 16\)"):
        codec.decode(codes - 1)
    with pytest.raises(ValueError, match=rf"decodes \(B, {n_q}, T\)"):
        codec.decode(codes[:, :-1])
    assert codec.decode(codes).shape == (1, hop * codes.shape[-1])
