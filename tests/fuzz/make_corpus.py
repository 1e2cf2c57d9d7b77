#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/seed-*): small valid inputs
of each format, so fuzzing starts from inputs that reach deep. Deterministic; run from the repository
root to regenerate: python3 tests/fuzz/make_corpus.py. Inputs of bugs found are kept beside the seeds
as crash-* (regressions) and are not touched by this script."""
import json
import os
import struct

ROOT = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(ROOT))


def put(target, name, data):
    d = os.path.join(ROOT, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


# Job files: the repository's, and one with --set overrides ahead of it.
for name in ("tiny-cpu.yaml", "needle-cpu.yaml", "lwm-text-1m.yaml", "lwm-vision.yaml"):
    with open(os.path.join(REPO, "configs", name)) as f:
        text = f.read()
    put("job_config", name, text)
put("job_config", "overrides", "stages.0.steps=3\nring.devices=1\nmodel.vocab_size=300\n---set---\n" +
    open(os.path.join(REPO, "configs", "tiny-cpu.yaml")).read())

# REST bodies: the first byte is the route (0 JSON submission, 1 YAML submission + priority line,
# 2 worker registration, 3 heartbeat).
tiny = open(os.path.join(REPO, "configs", "tiny-cpu.yaml")).read()
put("api_requests", "submit-json", b"\x00" + json.dumps(
    {"job": tiny, "priority": 3, "set": ["stages.0.steps=2", "checkpoint.dir=ck/a"]}).encode())
put("api_requests", "submit-object", b"\x00" + json.dumps(
    {"job": {"name": "j", "model": {"hidden_size": 32}, "stages": [{"seq_len": 64, "steps": 1}],
             "checkpoint": {"dir": "ck/b"}}}).encode())
put("api_requests", "submit-yaml", b"\x01" + b"-7\n" + tiny.encode())
put("api_requests", "register", b"\x02" + json.dumps(
    {"name": "w1", "host": "127.0.0.1", "port": 4711, "pid": 99, "kind": "cpu",
     "devices": [{"memory_bytes": 1 << 30}, {"memory_bytes": 1 << 30}]}).encode())
put("api_requests", "heartbeat", b"\x03" + json.dumps({"instance": "abc", "draining": True, "leaving": False}).encode())


# safetensors: F32, BF16 and F16 tensors with metadata.
def safetensors(tensors, meta=None):
    header, blobs, off = {}, [], 0
    if meta:
        header["__metadata__"] = meta
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


f32 = struct.pack("<6f", 0.5, -1.25, 3.0, 0.0, 7.5, -2.0)
bf16 = b"".join(struct.pack("<f", v)[2:] for v in (1.0, -0.5, 2.25, 8.0))
f16 = struct.pack("<4e", 1.0, -0.5, 2.25, 8.0)
put("safetensors", "f32", safetensors({"model.embed_tokens.weight": ("F32", [2, 3], f32)}, {"format": "pt"}))
put("safetensors", "mixed", safetensors({"a": ("BF16", [4], bf16), "b": ("F16", [2, 2], f16),
                                         "c": ("F32", [6], f32)}))
put("safetensors", "scalar", safetensors({"s": ("F32", [], f32[:4])}))
# One shard of a sharded checkpoint of the fuzzer's tiny model (536 parameters): its weights and moments in
# pieces "set@first element".
def piece(n, k):
    return struct.pack("<%df" % n, *[(i % 7) * 0.25 * k for i in range(n)])
put("safetensors", "shard", safetensors({"weights@0": ("F32", [200], piece(200, 1)),
                                         "weights@200": ("F32", [336], piece(336, 1)),
                                         "exp_avg@0": ("F32", [536], piece(536, 2)),
                                         "exp_avg_sq@0": ("F32", [536], piece(536, 3))},
                                        {"format": "ringworld-shard"}))
put("safetensors", "shard-gap", safetensors({"weights@0": ("F32", [200], piece(200, 1)),
                                             "weights@201": ("F32", [335], piece(335, 1))}))


# Token datasets: meta.json, index.bin, tokens.bin, modality.bin separated by "\n--part--\n".
def dataset(docs, vocab, vision=()):
    tokens = [t for d in docs for t in d]
    offsets = [0]
    for d in docs:
        offsets.append(offsets[-1] + len(d))
    modality = bytes(1 if i in vision else 0 for i in range(len(tokens)))
    meta = json.dumps({"format": "ringworld-tokens-v1", "documents": len(docs), "tokens": len(tokens),
                       "vocab_size": vocab, "tokenizer": "bytes"})
    sep = b"\n--part--\n"
    return (meta.encode() + sep + struct.pack("<%dQ" % len(offsets), *offsets) + sep +
            struct.pack("<%di" % len(tokens), *tokens) + sep + modality)


put("dataset", "text", dataset([[256, 97, 98, 99, 124, 97, 98, 99, 257], [256, 104, 105, 257]], 259))
put("dataset", "vision", dataset([[1, 2, 3, 4, 5, 6, 7]], 300, vision=(2, 3, 4)))
put("dataset", "one-token-docs", dataset([[5], [6], [7]], 10))

# Tokenizer: the first byte picks the byte tokenizer (0), the SentencePiece fixture (1) or a model made
# of the bytes (2).
for i, text in enumerate(["ring attention over a million tokens", "caf\u00e9 \u4e16\u754c \U0001F600",
                          "\x00\xff\xfe invalid utf-8 \xc3\x28"]):
    raw = text.encode("utf-8", "surrogateescape") if i < 2 else text.encode("latin-1")
    put("tokenizer", "bytes-%d" % i, b"\x00" + raw)
    put("tokenizer", "spm-%d" % i, b"\x01" + raw)
put("tokenizer", "model-prefix", b"\x02" + open(os.path.join(REPO, "tests/fixtures/spm_tiny/tiny.model"), "rb").read(600))


# Message headers: magic, version, tag (job u64, epoch, step, layer, hop u32), bytes u64, payload_crc,
# header_crc (u32), as runtime/transport.h lays them out.
def header(job, epoch, step, layer, hop, nbytes, payload_crc=0):
    body = struct.pack("<IIQIIIIQI", 0x52574D31, 1, job, epoch, step, layer, hop, nbytes, payload_crc)
    return body + struct.pack("<I", crc32c(body))


put("msg_header", "accept", header(7, 3, 11, 2, 1, 4096))
put("msg_header", "stale", header(7, 2, 11, 2, 1, 8192))
put("msg_header", "other-tag", header(7, 3, 12, 2, 1, 4096))
put("msg_header", "empty", header(7, 3, 11, 2, 1, 0))
