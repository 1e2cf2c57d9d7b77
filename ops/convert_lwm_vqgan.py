#!/usr/bin/env python3
"""Converts LWM's VQGAN checkpoint (a pickled Flax parameter tree, as lwm/vqgan.py loads it) into a RingWorld
VQGAN directory: model.safetensors (F32) and config.json (runtime/vqgan.h reads both).

    python3 ops/convert_lwm_vqgan.py --params vqgan.pkl --out DIR [--config CONFIG.json]

Names map one to one: a leaf at params['encoder']['DownsamplingBlock_0']['ResnetBlock_1']['GroupNorm_0']
['scale'] becomes the tensor "encoder.DownsamplingBlock_0.ResnetBlock_1.GroupNorm_0.scale"; arrays keep
their shapes and Flax's layouts (convolution kernels (kh, kw, cin, cout)). The config is LWM's default
VQGANConfig (its released model's) unless --config gives another.

The pickle is read with an unpickler that builds only dicts, lists and numpy arrays: a pickle that asks for
anything else (a function to call, another class) is refused, not run. Leaves saved as jax arrays need jax to
unpickle: re-save them as numpy arrays first. Anything the architecture does not have (attention blocks, an
unknown module or parameter) is refused by name. Needs numpy (Debian: python3-numpy).
"""
import argparse
import collections
import json
import os
import pickle
import re
import struct
import sys

import numpy as np

LWM_DEFAULT = {"model_type": "vqgan", "resolution": 256, "num_channels": 3, "hidden_channels": 128,
               "channel_mult": [1, 2, 2, 4, 6], "num_res_blocks": 2, "attn_resolutions": [],
               "no_attn_mid_block": True, "z_channels": 64, "num_embeddings": 8192, "quantized_embed_dim": 64,
               "resample_with_conv": True}

# What the unpickler may build: numpy arrays and scalars, and mappings.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
}
_MAPPINGS = {("flax.core.frozen_dict", "FrozenDict")}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if (module, name) in _MAPPINGS:
            return lambda *a, **k: dict(*a, **k)
        raise pickle.UnpicklingError("refusing to build %s.%s: the parameter tree holds only dicts and numpy "
                                     "arrays" % (module, name))


# One path of the architecture: the module path and the leaf it may end in.
_MODULE = r"(Conv_\d+|GroupNorm_\d+|(Downsampling|Upsampling)Block_\d+|ResnetBlock_\d+|MidBlock_0|Downsample_0|Upsample_0)"
_PATH = re.compile(r"^((encoder|decoder)(\." + _MODULE + r")+\.(kernel|bias|scale)|(quant_conv|post_quant_conv)\.(kernel|bias)"
                   r"|quantize\.embeddings)$")


def flatten(tree, prefix, out):
    if isinstance(tree, dict):
        for k, v in tree.items():
            if not isinstance(k, str):
                raise ValueError("%s: key %r is not a string" % (prefix or "params", k))
            flatten(v, prefix + "." + k if prefix else k, out)
        return
    if not isinstance(tree, np.ndarray):
        raise ValueError("%s: a %s, not an array" % (prefix, type(tree).__name__))
    out[prefix] = tree


def write_safetensors(path, tensors):
    header, offset, blobs = {"__metadata__": {"format": "ringworld-vqgan"}}, 0, []
    for name in sorted(tensors):
        data = np.ascontiguousarray(tensors[name], dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)
        f.flush()
        os.fsync(f.fileno())


def convert(params_path, out_dir, config):
    with open(params_path, "rb") as f:
        tree = _Unpickler(f).load()
    if isinstance(tree, dict) and set(tree) == {"params"}:
        tree = tree["params"]
    if not isinstance(tree, dict):
        raise ValueError("%s: the pickle holds a %s, not a parameter tree" % (params_path, type(tree).__name__))
    leaves = {}
    flatten(tree, "", leaves)
    for name, a in sorted(leaves.items()):
        if "AttnBlock" in name:
            raise ValueError("%s: attention blocks are outside LWM's VQGAN architecture (its released model has none)" % name)
        if not _PATH.match(name):
            raise ValueError("%s: not a parameter of LWM's VQGAN architecture" % name)
        if a.dtype.kind != "f":
            raise ValueError("%s: dtype %s is not floating point" % (name, a.dtype))
        if not np.all(np.isfinite(a)):
            raise ValueError("%s: holds NaN or infinity" % name)
    os.makedirs(out_dir, exist_ok=True)
    write_safetensors(os.path.join(out_dir, "model.safetensors"), leaves)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    return len(leaves), sum(a.size for a in leaves.values())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", required=True, help="LWM's pickled VQGAN parameters")
    ap.add_argument("--out", required=True, help="the RingWorld VQGAN directory to write")
    ap.add_argument("--config", help="a config.json to use instead of LWM's default VQGANConfig")
    args = ap.parse_args()
    config = dict(LWM_DEFAULT)
    if args.config:
        with open(args.config) as f:
            config = json.load(f)
    try:
        n, p = convert(args.params, args.out, config)
    except (ValueError, pickle.UnpicklingError, EOFError, OSError) as e:
        print("convert_lwm_vqgan: %s" % e, file=sys.stderr)
        return 1
    print("convert_lwm_vqgan: %d tensors, %d parameters -> %s" % (n, p, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
