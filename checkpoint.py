"""Checkpoint files for every part of UALM (plumbing, not a component of the paper): written
atomically and read back with one clear error for each way a file can be wrong.

Ours, for the audio models (codec.py, vae.py): a dataclass config and a state dict.

    save_checkpoint("runs/codec.pt", codec, step)   # {config, model, step}, via a .tmp file
    Codec.from_checkpoint("runs/codec.pt")          # = load_module(Codec, CodecConfig, ...)

Hugging Face's, for Qwen2.5 (model.py) and Whisper-family encoders (encoder.py): safetensors
parsed by hand (8-byte header length, a JSON header, raw little-endian data), memory-mapped
so weights are never copied twice.

    load_checkpoint("Qwen2.5-0.5B")                 # {name: tensor} from model.safetensors or its shards
"""

import json
import math
import mmap
import os
from dataclasses import asdict, fields
from pathlib import Path

import torch
import torch.nn as nn

from utils import atomic_path, save_atomic


def save_checkpoint(path, model: nn.Module, step: int) -> None:
    """Write {config, model, step} atomically (utils.save_atomic). The codec's and the VAE's:
    `model.config` is their dataclass."""
    save_atomic({"config": asdict(model.config), "model": model.state_dict(), "step": step}, path)


def load_ckpt(path, stage):
    """A checkpoint train.py wrote for `stage` (runs/sft.pt, runs/clap.pt, ...), or one clear
    error that names the stage to run."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: run `python train.py --stage {stage}` first")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or foreign file
        raise ValueError(f"{path} is not a readable checkpoint ({type(e).__name__}); delete it and run "
                         f"`python train.py --stage {stage}` again") from None


def load_module(cls, config_cls, path, config, name: str, how: str) -> nn.Module:
    """The model saved by save_checkpoint at path, in eval mode, or one clear error: the file
    missing, unreadable (truncated), another model's, written by an older version of the code
    (its config lacks a field), saved with a config other than `config` (when given), or
    holding weights that do not fit its own config."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no {name} checkpoint there; train one with `{how}` or fix the path.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a readable {name} checkpoint ({type(e).__name__}); it may be truncated, "
                         "retrain or re-copy it.") from None
    try:
        saved, state = config_cls(**ckpt["config"]), ckpt["model"]
    except (KeyError, TypeError):
        raise ValueError(f"{path}: not a {name} checkpoint (another model's?); pass the one `{how}` "
                         "wrote.") from None
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
        raise ValueError(f"{path}: weights do not fit the saved config ({first}); the file was "
                         "edited, mixed up or written by an older version of this code; retrain it.") from None
    return model.eval()

# -----------------------------------------------------------------------------
# Hugging Face checkpoints: safetensors by hand



# the dtype names of a safetensors header -> torch's (the ones HF checkpoints use)
SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                      "U8": torch.uint8, "BOOL": torch.bool}


def load_safetensors(path):
    """Read a .safetensors file -> {name: tensor}, memory-mapped (copy-on-write).
    Layout: u64 little-endian header size N, N bytes of JSON {name: {dtype, shape,
    data_offsets: [begin, end]}} (offsets relative to the data after the header)."""
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
        header.pop("__metadata__", None)
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
    return out


def save_safetensors(tensors, path):
    """The inverse of load_safetensors, written atomically (utils.atomic_path)."""
    names = {v: k for k, v in SAFETENSORS_DTYPES.items()}
    header, offset, blobs = {}, 0, []
    for name, t in tensors.items():
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
