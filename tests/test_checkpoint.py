"""checkpoint.py: our checkpoints are safetensors files that the `safetensors` package (the
reference reader) reads tensor for tensor, with their JSON in the header's metadata; they
round-trip exactly (an optimizer's state included); every bad file is one sentence naming it;
an LM checkpoint exports to a folder UALM.from_pretrained reads back; and no module of the
project reads or writes a pickle."""

import ast
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import sample
from checkpoint import (SAFETENSORS_DTYPES, load_ckpt, optimizer_state, optimizer_tensors, read_safetensors, save_ckpt,
                        untie)
from model import UALM
from tokenizer import SPTokenizer, load_tokenizer

ROOT = Path(__file__).resolve().parent.parent


def example():
    """A checkpoint with every kind of value: a state dict of mixed dtypes (a 0-d tensor, an
    empty one, a tied pair), a lone tensor, and JSON values."""
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(5, 3, generator=g)
    model = {"emb": emb, "odd": torch.arange(3, dtype=torch.int16), "head": emb, "half": torch.randn(3).bfloat16(),
             "scale": torch.tensor(2.5), "mask": torch.tensor([True, False]), "empty": torch.zeros(0, 4),
             "ids": torch.arange(4, dtype=torch.int64).view(2, 2)}
    return {"kind": "Toy", "stage": "gen", "model": model, "rng": torch.get_rng_state(), "step": 7,
            "config": {"width": 3, "theta": 0.1 + 0.2, "tie": True, "shape": (2, 2)}, "log": [{"loss": 1e-300}]}


def test_the_library_reads_what_we_write(tmp_path):
    ck = example()
    save_ckpt(tmp_path / "x.pt", ck)
    with safe_open(tmp_path / "x.pt", "pt") as f:
        names, meta = set(f.keys()), f.metadata()
        for name in names:
            section, _, key = name.partition("/")
            assert torch.equal(f.get_tensor(name), ck[section][key] if key else ck[section]), name
    assert names == {f"model/{k}" for k in ck["model"] if k != "head"} | {"rng"}  # the tied copy is written once
    assert json.loads(meta["__tied__"]) == {"model/head": "model/emb"}
    assert {k: json.loads(v) for k, v in meta.items() if k != "__tied__"} == {
        "kind": "Toy", "stage": "gen", "step": 7, "log": [{"loss": 1e-300}],
        "config": {"width": 3, "theta": 0.1 + 0.2, "tie": True, "shape": [2, 2]}}  # JSON: the tuple is a list
    n = int.from_bytes((tmp_path / "x.pt").read_bytes()[:8], "little")
    header = json.loads((tmp_path / "x.pt").read_bytes()[8:8 + n])
    assert n % 8 == 0 and all(info["data_offsets"][0] % SAFETENSORS_DTYPES[info["dtype"]].itemsize == 0
                              for name, info in header.items() if name != "__metadata__")  # aligned reads


def test_round_trip_is_exact(tmp_path):
    ck = example()
    save_ckpt(tmp_path / "x.pt", ck)
    back = load_ckpt(tmp_path / "x.pt", "Toy", "make it")
    assert sorted(back) == sorted(ck) and back["config"]["theta"] == 0.1 + 0.2 and back["log"] == ck["log"]
    for k, t in ck["model"].items():
        assert back["model"][k].dtype == t.dtype and torch.equal(back["model"][k], t), k
    assert back["model"]["head"] is back["model"]["emb"]  # tied again
    assert torch.equal(back["rng"], ck["rng"])


def test_reader_returns_the_library_metadata(tmp_path):
    save_file({"a": torch.ones(2)}, tmp_path / "y.safetensors", metadata={"format": "pt", "note": "x"})
    tensors, meta = read_safetensors(tmp_path / "y.safetensors")
    assert meta == {"format": "pt", "note": "x"} and torch.equal(tensors["a"], torch.ones(2))


def test_untie_worked_example():
    w, x = torch.ones(2, 2), torch.zeros(3)
    distinct, tied = untie({"emb": w, "head": w, "b": x, "view": w[0]})
    assert list(distinct) == ["emb", "b", "view"] and tied == {"head": "emb"}  # a view of part of w is its own


def adamw_after(steps, state=None, start=0):
    """A small model and its AdamW after steps start..start+steps-1 (from `state`, the model's and
    the optimizer's state dicts, when given) -> (model, optimizer)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    net[1].bias.requires_grad_(False)  # a parameter without state
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-2, betas=(0.9, 0.95))
    if state is not None:
        net.load_state_dict(state[0])
        opt.load_state_dict(state[1])
    for i in range(start, start + steps):
        loss = net(torch.full((2, 3), float(i))).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net, opt


def test_resumed_optimizer_equals_an_uninterrupted_one(tmp_path):
    whole, _ = adamw_after(5)
    net, opt = adamw_after(2)
    tensors, groups = optimizer_tensors(opt.state_dict())
    save_ckpt(tmp_path / "o.pt", {"kind": "Toy", "model": net.state_dict(), "optimizer": tensors, "groups": groups})
    ck = load_ckpt(tmp_path / "o.pt", "Toy", "")
    resumed, _ = adamw_after(3, (ck["model"], optimizer_state(ck["optimizer"], ck["groups"])), start=2)
    for a, b in zip(resumed.parameters(), whole.parameters()):
        assert torch.equal(a, b)


def test_optimizer_keyed_by_name_round_trips():
    """FSDP's full optimizer state dicts key each parameter by its name, which holds dots."""
    state = {"state": {"lm.layers.0.weight": {"step": torch.tensor(3.0), "exp_avg": torch.ones(2)}},
             "param_groups": [{"lr": 0.1, "params": ["lm.layers.0.weight", "lm.norm.weight"]}]}
    tensors, groups = optimizer_tensors(state)
    assert sorted(tensors) == ["lm.layers.0.weight.exp_avg", "lm.layers.0.weight.step"]
    back = optimizer_state(tensors, groups)
    assert back["param_groups"] == state["param_groups"] and list(back["state"]) == ["lm.layers.0.weight"]
    assert all(torch.equal(back["state"]["lm.layers.0.weight"][k], v)
               for k, v in state["state"]["lm.layers.0.weight"].items())


def test_bad_files_are_one_sentence_naming_the_file_and_the_fix(tmp_path):
    how = "python train.py --stage gen"
    good = tmp_path / "good.pt"
    save_ckpt(good, example())
    with pytest.raises(FileNotFoundError, match=r"missing.pt not found: run `python train.py --stage gen` first"):
        load_ckpt(tmp_path / "missing.pt", "Toy", how)
    unreadable = {"truncated.pt": good.read_bytes()[:len(good.read_bytes()) // 2],
                  "pickle.pt": pickle.dumps({"model": {}}),  # a pickle is never unpickled
                  "empty.pt": b"",
                  "text.pt": b"these are not the weights you are looking for"}
    for name, data in unreadable.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=rf"{name} is not a readable Toy checkpoint .*run `{how}` again"):
            load_ckpt(tmp_path / name, "Toy", how)
    save_file({"w": torch.ones(1)}, tmp_path / "hf.pt", metadata={"format": "pt"})  # safetensors, not ours
    with pytest.raises(ValueError, match="hf.pt is not a readable Toy checkpoint"):
        load_ckpt(tmp_path / "hf.pt", "Toy", how)
    with pytest.raises(ValueError, match="good.pt holds a checkpoint of Toy, not of UALM; pass the file"):
        load_ckpt(good, "UALM", how)
    with pytest.raises(ValueError, match="good.pt holds the gen stage's model, not the sft stage's"):
        load_ckpt(good, "Toy", how, stage="sft")


# ----------------------------------------------------------------------------- a trained LM checkpoint


def test_export_reads_back_exactly(tiny_run, tmp_path):
    """`python checkpoint.py --export` on train.py's gen.pt: UALM.from_pretrained gives its
    tensors exactly, its heads tied again; model.safetensors is a plain safetensors file (the tied
    heads, lm_head and the toy's audio_head, left out, as in Hugging Face's files); tokenizer/
    tokenizes as the run's tokenizer."""
    runs, out = tiny_run / "runs", tmp_path / "ualm-gen"
    r = subprocess.run([sys.executable, "checkpoint.py", "--export", str(runs / "gen.pt"), "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    model = UALM.from_pretrained(str(out))
    ck = load_ckpt(runs / "gen.pt", "UALM", "")
    assert model.cfg.text_size == ck["config"]["text_size"] and not model.training
    state = model.state_dict()
    assert sorted(state) == sorted(ck["model"])
    assert all(torch.equal(state[k], v) for k, v in ck["model"].items())
    with safe_open(out / "model.safetensors", "pt") as f:
        assert set(f.keys()) == set(ck["model"]) - {"lm.lm_head.weight", "audio_head.weight"}
    assert model.audio_head.weight is model.audio_embed.weight and model.lm.lm_head.weight is model.lm.model.embed_tokens.weight
    text = "a bell rings twice, then a low hum"
    assert load_tokenizer(str(out / "tokenizer")).encode(text) == SPTokenizer.from_pretrained(
        str(runs / "tokenizer")).encode(text)

    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "audio_dim": config["audio_dim"] + 1}))
    with pytest.raises(ValueError, match="config.json does not match the weights: adapter.* has shape"):
        UALM.from_pretrained(str(out))
    (out / "config.json").write_text(json.dumps({"vocab_size": 10}))
    with pytest.raises(ValueError, match="config.json is not a UALM config"):
        UALM.from_pretrained(str(out))


def test_sampling_from_a_bad_checkpoint_is_one_clear_error(tiny_run, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(tiny_run / "runs", runs)
    data = (runs / "gen.pt").read_bytes()
    (runs / "cut.pt").write_bytes(data[:len(data) // 3])
    with pytest.raises(ValueError, match="cut.pt is not a readable UALM checkpoint"):
        sample.load_runtime(str(runs / "cut.pt"), need_vae=False)
    with pytest.raises(ValueError, match="clap.pt holds a checkpoint of Clap, not of UALM"):
        sample.load_runtime(str(runs / "clap.pt"), need_vae=False)
    os.remove(runs / "clap.pt")
    with pytest.raises(FileNotFoundError, match="clap.pt not found: run `python train.py --stage clap` first"):
        sample.load_runtime(str(runs / "gen.pt"), need_vae=False)
    for cmd in (["sample.py", "--ckpt", str(runs / "cut.pt"), "--prompt", "a bell"],
                ["checkpoint.py", "--export", str(runs / "cut.pt"), "--out", str(tmp_path / "out")]):
        r = subprocess.run([sys.executable, *cmd], cwd=ROOT, capture_output=True, text=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert r.returncode == 1 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr
        assert r.stderr.startswith(f"error: {runs / 'cut.pt'} is not a readable UALM checkpoint")


# ----------------------------------------------------------------------------- no pickles


def calls(tree, module, name):
    """The calls module.name(...) in a parsed file, e.g. torch.load(...)."""
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == name and isinstance(node.func.value, ast.Name) and node.func.value.id == module]


def test_no_file_reads_a_pickle():
    """Checkpoints are data: no .py of the project or its tests calls torch.load unless with
    weights_only=True (nothing does today), and no module writes with torch.save or pickle."""
    for path in sorted(ROOT.glob("*.py")) + sorted(ROOT.glob("toy/*.py")) + sorted(ROOT.glob("tests/*.py")):
        tree = ast.parse(path.read_text())
        for call in calls(tree, "torch", "load"):
            safe = [k for k in call.keywords if k.arg == "weights_only" and getattr(k.value, "value", None) is True]
            assert safe, f"{path.name}:{call.lineno} calls torch.load without weights_only=True"
        if path.parent.name != "tests":
            assert not calls(tree, "torch", "save"), f"{path.name} writes a pickle with torch.save"
            assert "pickle" not in {a.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                                    for a in node.names}, f"{path.name} imports pickle"
