#!/usr/bin/env python3
"""Converts an LWM (or EasyLM) LLaMA checkpoint in its streaming msgpack format into a RingWorld / Hugging Face
LLaMA directory: model.safetensors (F32), config.json, and the tokenizer if given. LWM's vision models
(VideoLLaMA: a second vocabulary with its own embedding `vte` and head `vision_head`) become a model with
`vision_vocab_size`, whose ids mean what LWM's do (docs/ARCHITECTURE.md, "Token layout").

    python3 ops/convert_lwm_checkpoint.py --checkpoint streaming_params --out DIR --rope-theta 50000000 \
        --max-position-embeddings 1048576 [--num-attention-heads 32] [--num-key-value-heads N] \
        [--rms-norm-eps 1e-6] [--tokenizer tokenizer.model] [--scan-axis 0]

The file is what LWM's StreamingCheckpointer writes (its `params::PATH` or `trainstate::PATH`): a stream of
msgpack pairs (key path, Flax-serialized array); an array is a msgpack extension of type 1 holding (shape,
dtype name, C-order bytes), or a chunked array ({"__msgpack_chunked_array__": true, "shape", "chunks"}).
Optimizer state and the step of a train state are skipped. Layers may be stored one by one
(transformer.h.N....) or scanned (transformer.h.scan_decoder...., stacked on --scan-axis).

Names and layouts:
  transformer.wte.embedding (V, E)               -> model.embed_tokens.weight
  transformer.vte.embedding (Vv, E)              -> model.vision_embed_tokens.weight
  transformer.h.N.attention_norm.kernel          -> model.layers.N.input_layernorm.weight
  transformer.h.N.attention.w{q,k,v,o}.kernel    -> model.layers.N.self_attn.{q,k,v,o}_proj.weight (transposed;
                                                    q and k rows permuted, below)
  transformer.h.N.ffn_norm.kernel                -> model.layers.N.post_attention_layernorm.weight
  transformer.h.N.feed_forward.w{1,3,2}.kernel   -> model.layers.N.mlp.{gate,up,down}_proj.weight (transposed)
  transformer.ln_f.kernel                        -> model.norm.weight
  lm_head.kernel (E, V), vision_head.kernel      -> lm_head.weight, vision_head.weight (transposed)
LWM's RoPE rotates interleaved pairs (x[2i], x[2i+1]) of each head (a complex product); Hugging Face's (and
ours) rotates (x[i], x[i + D/2]) with the same frequency i. So each head's rows of q and k are reordered:
row 2i goes to i and row 2i + 1 to i + D/2, which makes the two models compute the same attention.

Anything else in the parameter tree is refused by name, as are shapes that do not fit together. Needs numpy
and msgpack (Debian: python3-numpy, python3-msgpack).
"""
import argparse
import json
import os
import shutil
import struct
import sys

import msgpack
import numpy as np

_DTYPES = {"float32": np.float32, "float16": np.float16, "float64": np.float64, "int32": np.int32}


def decode_array(blob, where):
    """A Flax-serialized array (flax.serialization.to_bytes of one ndarray) as float32."""
    obj = msgpack.unpackb(blob, raw=False, strict_map_key=False,
                          ext_hook=lambda code, data: msgpack.ExtType(code, data))
    if isinstance(obj, dict) and obj.get("__msgpack_chunked_array__"):
        shape = tuple(int(obj["shape"][str(i)]) for i in range(len(obj["shape"])))
        chunks = [ext_array(obj["chunks"][str(i)], where) for i in range(len(obj["chunks"]))]
        flat = np.concatenate([c.reshape(-1) for c in chunks])
        if flat.size != int(np.prod(shape)):
            raise ValueError("%s: chunks hold %d values for the shape %s" % (where, flat.size, shape))
        return flat.reshape(shape)
    return ext_array(obj, where)


def ext_array(obj, where):
    if not isinstance(obj, msgpack.ExtType) or obj.code != 1:
        raise ValueError("%s: not a serialized array (an ndarray extension of type 1)" % where)
    shape, dtype, data = msgpack.unpackb(obj.data, raw=False)
    shape = tuple(int(d) for d in shape)
    count = int(np.prod(shape)) if shape else 1
    if dtype == "bfloat16":  # the upper half of a float32
        if len(data) != 2 * count:
            raise ValueError("%s: %d bytes for %s bfloat16 values" % (where, len(data), shape))
        return (np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16).view(np.float32).reshape(shape)
    if dtype not in _DTYPES:
        raise ValueError("%s: dtype %s is not a float type this converter reads" % (where, dtype))
    arr = np.frombuffer(data, dtype=np.dtype(_DTYPES[dtype]).newbyteorder("<"))
    if arr.size != count:
        raise ValueError("%s: %d values for the shape %s" % (where, arr.size, shape))
    return arr.reshape(shape).astype(np.float32)


def read_stream(path):
    """{dotted name under the model: array}; the train state's other parts skipped (counted)."""
    params, skipped = {}, 0
    with open(path, "rb") as f:
        unpacker = msgpack.Unpacker(f, raw=False, max_buffer_size=0, strict_map_key=False)
        for item in unpacker:
            if not isinstance(item, (list, tuple)) or len(item) != 2 or not isinstance(item[1], bytes):
                raise ValueError("%s: not LWM's streaming checkpoint (expected (key, bytes) pairs)" % path)
            key = [str(k) for k in item[0]]
            if key and key[0] in ("opt_state", "step"):
                skipped += 1
                continue
            while key and key[0] == "params":
                key = key[1:]
            name = ".".join(key)
            if name in params:
                raise ValueError("%s: %s appears twice" % (path, name))
            params[name] = decode_array(item[1], name)
    return params, skipped


def unstack_scanned(params, scan_axis):
    """transformer.h.scan_decoder.X (layers stacked on scan_axis) -> transformer.h.N.X."""
    out, layers = {}, None
    for name, arr in params.items():
        prefix = "transformer.h.scan_decoder."
        if not name.startswith(prefix):
            out[name] = arr
            continue
        if arr.ndim <= scan_axis:
            raise ValueError("%s: shape %s has no scan axis %d" % (name, arr.shape, scan_axis))
        n = arr.shape[scan_axis]
        if layers is not None and n != layers:
            raise ValueError("%s: %d layers stacked, others have %d" % (name, n, layers))
        layers = n
        for i in range(n):
            out["transformer.h.%d.%s" % (i, name[len(prefix):])] = np.take(arr, i, axis=scan_axis)
    return out


def rope_rows(w, heads):
    """(heads*D, E) rows of an interleaved-pair head -> rows of a half-split head (see the module doc)."""
    d = w.shape[0] // heads
    idx = np.concatenate([np.arange(0, d, 2), np.arange(1, d, 2)])
    return w.reshape(heads, d, -1)[:, idx, :].reshape(w.shape)


def convert(args):
    params, skipped = read_stream(args.checkpoint)
    params = unstack_scanned(params, args.scan_axis)
    take = dict(params)

    def pop(name, ndim):
        if name not in take:
            raise ValueError("%s: missing from the checkpoint" % name)
        a = take.pop(name)
        if a.ndim != ndim:
            raise ValueError("%s: expected %d dimensions, got shape %s" % (name, ndim, a.shape))
        return a

    wte = pop("transformer.wte.embedding", 2)
    vocab, hidden = wte.shape
    out = {"model.embed_tokens.weight": wte}
    vision = 0
    if "transformer.vte.embedding" in take:
        vte = pop("transformer.vte.embedding", 2)
        vision = vte.shape[0]
        out["model.vision_embed_tokens.weight"] = vte
    layers = 0
    while "transformer.h.%d.attention.wq.kernel" % layers in take:
        layers += 1
    if layers == 0:
        raise ValueError("transformer.h: no layer (neither transformer.h.0 nor transformer.h.scan_decoder)")
    heads = args.num_attention_heads or (32 if hidden == 4096 else 0)
    if heads <= 0 or hidden % heads:
        raise ValueError("--num-attention-heads: give the model's head count (it must divide %d)" % hidden)
    kv_heads = args.num_key_value_heads or heads
    head_dim = hidden // heads
    if head_dim % 2 or heads % kv_heads:
        raise ValueError("--num-key-value-heads: %d does not divide %d heads (head dim %d)" % (kv_heads, heads, head_dim))
    inter = None
    for i in range(layers):
        p, q = "transformer.h.%d." % i, "model.layers.%d." % i
        expect = {"attention.wq.kernel": (hidden, heads * head_dim), "attention.wk.kernel": (hidden, kv_heads * head_dim),
                  "attention.wv.kernel": (hidden, kv_heads * head_dim), "attention.wo.kernel": (heads * head_dim, hidden)}
        got = {k: pop(p + k, 2) for k in expect}
        for k, shape in expect.items():
            if got[k].shape != shape:
                raise ValueError("%s%s: shape %s, expected %s (hidden %d, %d heads, %d kv heads)"
                                 % (p, k, got[k].shape, shape, hidden, heads, kv_heads))
        out[q + "self_attn.q_proj.weight"] = rope_rows(got["attention.wq.kernel"].T, heads)
        out[q + "self_attn.k_proj.weight"] = rope_rows(got["attention.wk.kernel"].T, kv_heads)
        out[q + "self_attn.v_proj.weight"] = got["attention.wv.kernel"].T
        out[q + "self_attn.o_proj.weight"] = got["attention.wo.kernel"].T
        w1, w3, w2 = (pop(p + "feed_forward.%s.kernel" % k, 2) for k in ("w1", "w3", "w2"))
        inter = inter or w1.shape[1]
        for name, a, shape in (("w1", w1, (hidden, inter)), ("w3", w3, (hidden, inter)), ("w2", w2, (inter, hidden))):
            if a.shape != shape:
                raise ValueError("%sfeed_forward.%s.kernel: shape %s, expected %s" % (p, name, a.shape, shape))
        out[q + "mlp.gate_proj.weight"] = w1.T
        out[q + "mlp.up_proj.weight"] = w3.T
        out[q + "mlp.down_proj.weight"] = w2.T
        for src, dst in (("attention_norm.kernel", "input_layernorm.weight"),
                         ("ffn_norm.kernel", "post_attention_layernorm.weight")):
            a = pop(p + src, 1)
            if a.shape != (hidden,):
                raise ValueError("%s%s: shape %s, expected (%d,)" % (p, src, a.shape, hidden))
            out[q + dst] = a
    ln_f = pop("transformer.ln_f.kernel", 1)
    if ln_f.shape != (hidden,):
        raise ValueError("transformer.ln_f.kernel: shape %s, expected (%d,)" % (ln_f.shape, hidden))
    out["model.norm.weight"] = ln_f
    tied = "lm_head.kernel" not in take
    if not tied:
        head = pop("lm_head.kernel", 2)
        if head.shape != (hidden, vocab):
            raise ValueError("lm_head.kernel: shape %s, expected (%d, %d)" % (head.shape, hidden, vocab))
        out["lm_head.weight"] = head.T
    if vision:
        if "vision_head.kernel" not in take:
            raise ValueError("vision_head.kernel: missing (a tied vision head is not supported)")
        vh = pop("vision_head.kernel", 2)
        if vh.shape != (hidden, vision):
            raise ValueError("vision_head.kernel: shape %s, expected (%d, %d)" % (vh.shape, hidden, vision))
        if tied:
            raise ValueError("lm_head.kernel: missing while vision_head is untied (mixed tying is not supported)")
        out["vision_head.weight"] = vh.T
    if take:
        raise ValueError("%s: not a parameter of LWM's LLaMA (%d more not recognized)"
                         % (sorted(take)[0], len(take) - 1))
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
              "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
              "num_attention_heads": heads, "num_key_value_heads": kv_heads,
              "max_position_embeddings": args.max_position_embeddings, "rms_norm_eps": args.rms_norm_eps,
              "rope_theta": args.rope_theta, "vocab_size": vocab, "tie_word_embeddings": tied,
              "attention_bias": False, "mlp_bias": False, "torch_dtype": "float32"}
    if vision:
        config["vision_vocab_size"] = vision
    os.makedirs(args.out, exist_ok=True)
    tmp = os.path.join(args.out, ".model.safetensors.tmp")
    write_safetensors(tmp, out)
    os.replace(tmp, os.path.join(args.out, "model.safetensors"))
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    if args.tokenizer:
        shutil.copyfile(args.tokenizer, os.path.join(args.out, "tokenizer.model"))
    return len(out), sum(a.size for a in out.values()), skipped, config


def write_safetensors(path, tensors):
    header, offset = {}, 0
    for name in sorted(tensors):
        n = tensors[name].size * 4
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name in sorted(tensors):
            f.write(np.ascontiguousarray(tensors[name], dtype="<f4").tobytes())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="LWM's streaming checkpoint file (streaming_params_N)")
    ap.add_argument("--out", required=True, help="the directory to write (config.json, model.safetensors)")
    ap.add_argument("--rope-theta", type=float, required=True, help="the checkpoint's RoPE base (LWM 1M: 50000000)")
    ap.add_argument("--max-position-embeddings", type=int, required=True, help="its context (LWM 1M: 1048576)")
    ap.add_argument("--num-attention-heads", type=int, default=0, help="query heads (default: 32 for width 4096)")
    ap.add_argument("--num-key-value-heads", type=int, default=0, help="key/value heads (default: as many as queries)")
    ap.add_argument("--rms-norm-eps", type=float, default=1e-6, help="RMSNorm epsilon (LWM: 1e-6)")
    ap.add_argument("--scan-axis", type=int, default=0, help="the layer axis of scanned layers (LWM's param_scan_axis)")
    ap.add_argument("--tokenizer", default="", help="a SentencePiece tokenizer.model to copy beside the weights")
    args = ap.parse_args()
    try:
        if args.rope_theta <= 1 or args.max_position_embeddings < 1 or args.rms_norm_eps <= 0:
            raise ValueError("--rope-theta must be > 1, --max-position-embeddings >= 1, --rms-norm-eps > 0")
        n, p, skipped, config = convert(args)
    except (ValueError, KeyError, TypeError, OSError, msgpack.UnpackException) as e:
        print("convert_lwm_checkpoint: %s" % e, file=sys.stderr)
        return 1
    print("convert_lwm_checkpoint: %d tensors, %d parameters (%d layers, vocabulary %d%s)%s -> %s"
          % (n, p, config["num_hidden_layers"], config["vocab_size"],
             " + vision %d" % config["vision_vocab_size"] if "vision_vocab_size" in config else "",
             ", %d train-state entries skipped" % skipped if skipped else "", args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
