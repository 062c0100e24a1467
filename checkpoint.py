"""Checkpoint files for every part of UALM (plumbing, not a component of the paper): data, never
code. Every file is safetensors, parsed and written here by hand, read memory-mapped, written
atomically, and read back with one clear error for each way it can be wrong.

A checkpoint of ours (runs/gen.pt, runs/codec.pt, runs/cache.pt, ...) is ONE safetensors file:
a state dict's tensors named 'SECTION/NAME' ('model/lm.norm.weight', 'optimizer/3.exp_avg'), a lone
tensor under its own name ('rng'), and everything else (kind, config, args, step, log) as JSON
strings in the header's __metadata__. One file is replaced in one step (utils.atomic_path).

    save_checkpoint("runs/codec.pt", codec, step)   # {kind, config, model, step}
    Codec.from_checkpoint("runs/codec.pt")          # = load_module(Codec, CodecConfig, ...)
    save_ckpt("runs/gen.pt", {"kind": "UALM", "model": state, "rng": rng, "step": 3, ...})
    load_ckpt("runs/gen.pt", "UALM", "python train.py --stage gen")   # the same dict back

Hugging Face's, for Qwen2.5 (model.py) and Whisper-family encoders (encoder.py): a folder of
config.json and model.safetensors or its shards.

    load_checkpoint("Qwen2.5-0.5B")                 # {name: tensor} from model.safetensors or its shards

`python checkpoint.py --export runs/sft.pt --out ualm-sft` writes an LM checkpoint as such a
folder (config.json, model.safetensors, tokenizer/) for model.UALM.from_pretrained.
"""

import argparse
import json
import math
import mmap
import os
import shutil
from dataclasses import asdict, fields
from pathlib import Path

import torch
import torch.nn as nn

from tokenizer import SP_MODEL
from utils import atomic_path, fail

# -----------------------------------------------------------------------------
# The file format: safetensors by hand

# the dtype names of a safetensors header -> torch's (the ones HF checkpoints use)
SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                      "U8": torch.uint8, "BOOL": torch.bool}


def read_safetensors(path):
    """Read a .safetensors file -> ({name: tensor}, metadata {str: str}), memory-mapped
    (copy-on-write). Layout: u64 little-endian header size N, N bytes of JSON {name: {dtype,
    shape, data_offsets: [begin, end]}, "__metadata__": {str: str}} (offsets relative to the
    data after the header)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such safetensors file")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or 8 + n > size:
            raise ValueError(f"{path}: truncated or not a safetensors file (bad header length); re-download it")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ValueError(f"{path}: corrupt safetensors header (invalid JSON); re-download it") from None
        if not isinstance(header, dict):
            raise ValueError(f"{path}: corrupt safetensors header; re-download it")
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise ValueError(f"{path}: corrupt safetensors header (__metadata__ must map str to str); re-download it")
        if size == 8 + n:  # nothing to map (every tensor empty)
            buf = bytearray()
        else:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    out = {}
    for name, info in header.items():
        try:
            dtype = SAFETENSORS_DTYPES[info["dtype"]]
            shape, (begin, end) = info["shape"], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: corrupt entry for {name!r} in the header; re-download it") from None
        count = math.prod(shape)
        if end - begin != count * dtype.itemsize or begin < 0:
            raise ValueError(f"{path}: {name!r} has {end - begin} bytes, expected {count * dtype.itemsize}")
        if 8 + n + end > size:
            raise ValueError(f"{path}: truncated: {name!r} ends past the end of the file; re-download it")
        if count == 0:
            out[name] = torch.empty(shape, dtype=dtype)
        else:
            out[name] = torch.frombuffer(buf, dtype=dtype, count=count, offset=8 + n + begin).view(shape)
    return out, metadata


def load_safetensors(path):
    """The tensors of a .safetensors file, {name: tensor} (read_safetensors without the metadata)."""
    return read_safetensors(path)[0]


def save_safetensors(tensors, path, metadata=None):
    """The inverse of read_safetensors, written atomically (utils.atomic_path). The data is laid
    out widest dtype first (8-byte, then 4, 2, 1), so each tensor starts at a multiple of its
    element size and the memory-mapped reads are aligned; the header keeps the given order."""
    names = {v: k for k, v in SAFETENSORS_DTYPES.items()}
    header = {"__metadata__": metadata} if metadata else {}
    header.update({name: None for name in tensors})
    offset, blobs = 0, []
    for name, t in sorted(tensors.items(), key=lambda kv: -kv[1].element_size()):  # stable: ties keep their order
        b = t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)  # pad so the data starts 8-byte aligned
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for b in blobs:
            f.write(b)

# -----------------------------------------------------------------------------
# Our checkpoints: sections of tensors and JSON in one file


def untie(tensors):
    """Tensors that share memory (a tied lm_head and embedding) are written once:
    {name: tensor} -> (the distinct ones, {copy: original}).
    e.g. {"emb": w, "head": w, "b": x} -> ({"emb": w, "b": x}, {"head": "emb"})."""
    seen, out, tied = {}, {}, {}
    for name, t in tensors.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if t.numel() and key in seen:
            tied[name] = seen[key]
        else:
            seen.setdefault(key, name)
            out[name] = t
    return out, tied


def save_ckpt(path, ckpt):
    """Write a checkpoint {key: value} as one safetensors file, atomically. A value that is a
    {name: tensor} dict (a state dict) becomes tensors 'key/name', a tensor the tensor 'key', and
    anything else JSON in __metadata__ (JSON has no tuples: they come back as lists). Tied tensors
    are written once and named in __metadata__['__tied__'].
    e.g. {"kind": "UALM", "model": {"w": t}, "rng": r, "step": 3}
         -> tensors model/w, rng; metadata {"kind": '"UALM"', "step": "3", "__tied__": "{}"}"""
    tensors, meta = {}, {}
    for key, value in ckpt.items():
        if isinstance(value, torch.Tensor):
            tensors[key] = value
        elif isinstance(value, dict) and value and all(isinstance(v, torch.Tensor) for v in value.values()):
            tensors.update({f"{key}/{name}": t for name, t in value.items()})
        else:
            meta[key] = json.dumps(value)
    tensors, tied = untie(tensors)
    save_safetensors(tensors, path, {**meta, "__tied__": json.dumps(tied)})


def load_ckpt(path, kind, how, stage=None):
    """The dict save_ckpt wrote at path, its tensors memory-mapped, or one clear error naming
    the file and the fix: missing (FileNotFoundError), truncated or not a checkpoint of ours,
    another kind ("Clap" where a "UALM" belongs), or another stage's (when `stage` is given).
    kind: ckpt["kind"] it must hold; how: the command that writes it, e.g. "python train.py --stage sft"."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: run `{how}` first (or fix the path)")
    try:
        tensors, meta = read_safetensors(path)
        ckpt = {key: json.loads(value) for key, value in meta.items()}
        for copy, original in ckpt.pop("__tied__").items():
            tensors[copy] = tensors[original]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ValueError(f"{path} is not a readable {kind} checkpoint (truncated, or not written by this code); "
                         f"delete it and run `{how}` again") from None
    if ckpt.get("kind") != kind:
        raise ValueError(f"{path} holds a checkpoint of {ckpt.get('kind')}, not of {kind}; pass the file "
                         f"`{how}` writes")
    if stage is not None and ckpt.get("stage") != stage:
        raise ValueError(f"{path} holds the {ckpt.get('stage')} stage's model, not the {stage} stage's; "
                         f"run `{how}` to write it")
    for name, t in tensors.items():
        section, _, rest = name.partition("/")
        if rest:
            ckpt.setdefault(section, {})[rest] = t
        else:
            ckpt[name] = t
    return ckpt


def optimizer_tensors(state):
    """An optimizer's state_dict -> ({'PARAM.FIELD': tensor}, param_groups), a section and a JSON
    value for save_ckpt. PARAM is the parameter's key: an index, or under FSDP its name.
    e.g. {"state": {0: {"step": s, "exp_avg": m}}, "param_groups": [{"lr": 1e-3, "params": [0]}]}
         -> ({"0.step": s, "0.exp_avg": m}, [{"lr": 1e-3, "params": [0]}])"""
    tensors = {}
    for param, fields_ in state["state"].items():
        for field_, value in fields_.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"optimizer state {param}.{field_} is a {type(value).__name__}, not a tensor")
            tensors[f"{param}.{field_}"] = value
    return tensors, state["param_groups"]


def optimizer_state(tensors, groups):
    """The inverse of optimizer_tensors: each key back to the index or name param_groups gives it."""
    keys = {str(p): p for group in groups for p in group["params"]}
    state = {}
    for name, value in tensors.items():
        param, _, field_ = name.rpartition(".")
        state.setdefault(keys[param], {})[field_] = value
    return {"state": state, "param_groups": groups}

# -----------------------------------------------------------------------------
# A model and its dataclass config


def save_checkpoint(path, model: nn.Module, step: int, **extra) -> None:
    """Write {kind, config, model, step, **extra} atomically (save_ckpt). For the models whose
    `model.config` is their dataclass: the codec, the VAE, CLAP, X-codec."""
    save_ckpt(path, {"kind": type(model).__name__, "config": asdict(model.config), "model": model.state_dict(),
                     "step": step, **extra})


def as_tuples(value):
    """A config read from JSON -> the dataclass's values: lists become tuples again (a config
    holds tuples, never lists). e.g. {"strides": [1, 1], "acoustic": {...}} -> {"strides": (1, 1), ...}."""
    if isinstance(value, dict):
        return {k: as_tuples(v) for k, v in value.items()}
    return tuple(as_tuples(v) for v in value) if isinstance(value, list) else value


def module_from(cls, config_cls, ckpt, path, how, config=None) -> nn.Module:
    """The model of a checkpoint dict that load_ckpt read from path, in eval mode, or one clear
    error: written by an older version of the code (its config lacks a field), saved with a
    config other than `config` (when given), or holding weights that do not fit its own config."""
    try:
        saved, state = config_cls(**as_tuples(ckpt["config"])), ckpt["model"]
    except (KeyError, TypeError):
        raise ValueError(f"{path}: its config is not a {config_cls.__name__} (written by another version of this "
                         f"code?); retrain it with `{how}`.") from None
    missing = [f.name for f in fields(config_cls) if f.name not in ckpt["config"]]
    if missing:  # the defaults of fields added since may not be what it was trained with
        raise ValueError(f"{path}: written by an older version of this code (its config has no "
                         f"{', '.join(missing)}); retrain it with `{how}`.")
    if config is not None and config != saved:
        diff = {f.name: (getattr(saved, f.name), getattr(config, f.name)) for f in fields(config_cls)
                if getattr(saved, f.name) != getattr(config, f.name)}
        raise ValueError(f"{path}: saved config differs from the requested one ({{field: (saved, "
                         f"requested)}}: {diff}); load without a config or retrain.")
    model = cls(saved)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if "\n" in str(e) else str(e)
        raise ValueError(f"{path}: weights do not fit the saved config ({first}); the file was edited, mixed "
                         f"up or written by an older version of this code; retrain it with `{how}`.") from None
    return model.eval()


def load_module(cls, config_cls, path, how, config=None, stage=None) -> nn.Module:
    """The model of the checkpoint at path (kind cls.__name__), in eval mode, or one clear error
    (load_ckpt, module_from). how: the command that writes it, named in every error."""
    return module_from(cls, config_cls, load_ckpt(path, cls.__name__, how, stage), path, how, config)

# -----------------------------------------------------------------------------
# Hugging Face folders


def read_config(path):
    """An HF folder's config.json -> dict, or one clear error for a missing or broken file."""
    fn = os.path.join(path, "config.json")
    if not os.path.isfile(fn):
        raise FileNotFoundError(f"{fn}: not found; pass a Hugging Face checkpoint folder")
    try:
        with open(fn) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{fn}: not valid JSON ({e})") from None


def load_checkpoint(path):
    """All tensors of an HF folder: model.safetensors, or the shards its index names."""
    single, index = os.path.join(path, "model.safetensors"), os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(single):
        return load_safetensors(single)
    if not os.path.isfile(index):
        raise FileNotFoundError(f"{path}: neither model.safetensors nor model.safetensors.index.json found")
    with open(index) as f:
        weight_map = json.load(f)["weight_map"]
    state = {}
    for shard in sorted(set(weight_map.values())):
        fn = os.path.join(path, shard)
        if not os.path.isfile(fn):
            raise FileNotFoundError(f"{fn}: shard listed in {index} is missing")
        state.update(load_safetensors(fn))
    missing = sorted(set(weight_map) - set(state))
    if missing:
        raise ValueError(f"{index}: names {missing[:3]} but the shards do not hold them")
    return state


TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", SP_MODEL)  # Qwen's, or our SentencePiece


def export(path, out):
    """An LM checkpoint of train.py -> a folder model.UALM.from_pretrained reads: config.json
    (the UALMConfig), model.safetensors (the weights; a tied lm_head left out, as in Hugging
    Face's files) and tokenizer/ (the tokenizer it was trained with, copied)."""
    ckpt = load_ckpt(path, "UALM", "python train.py --stage all")
    source = ckpt["args"].get("init_from") or os.path.join(os.path.dirname(os.path.abspath(path)), "tokenizer")
    found = [name for name in TOKENIZER_FILES if os.path.isfile(os.path.join(source, name))]
    if not found:
        raise FileNotFoundError(f"{source}: no tokenizer there ({', '.join(TOKENIZER_FILES)}); export from the "
                                "runs folder the checkpoint was trained in")
    os.makedirs(os.path.join(out, "tokenizer"), exist_ok=True)
    for name in found:
        shutil.copyfile(os.path.join(source, name), os.path.join(out, "tokenizer", name))
    with atomic_path(os.path.join(out, "config.json")) as tmp, open(tmp, "w") as f:
        json.dump(ckpt["config"], f, indent=2)
    save_safetensors(untie(ckpt["model"])[0], os.path.join(out, "model.safetensors"), {"format": "pt"})


def main():
    p = argparse.ArgumentParser(description="Export an LM checkpoint as a folder for UALM.from_pretrained.")
    p.add_argument("--export", required=True, help="an LM checkpoint of train.py, e.g. runs/sft.pt")
    p.add_argument("--out", required=True, help="the folder to write (config.json, model.safetensors, tokenizer/)")
    args = p.parse_args()
    try:
        export(args.export, args.out)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    print(f"{args.export} -> {Path(args.out) / 'model.safetensors'}, config.json, tokenizer/")


if __name__ == "__main__":
    main()
