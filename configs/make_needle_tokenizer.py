"""Makes configs/needle-tokenizer.model: the SentencePiece tokenizer of configs/needle-cpu.yaml.

A BPE model of 160 pieces trained on text in the needle task's format (the cities and filler sentences of
runtime/data.cpp, which this script mirrors), with digits split one per piece as in LLaMA's tokenizer. Its
pieces make the words of the task single tokens ("▁special", "▁magic", "▁number", ":"), so a document is
about a third as many tokens as bytes and the answer's cue is one token: a tiny model learns to retrieve in
the training 2 CPU cores afford, which it did not with the byte tokenizer (docs/BENCHMARKS.md).

Regenerate (needs `pip install sentencepiece`):  python3 configs/make_needle_tokenizer.py
"""
import os
import random
import tempfile

import sentencepiece as spm

CITIES = ["Chicago", "Yangon", "Antananarivo", "Colombo", "Almaty", "Sydney", "Lima", "Mumbai", "Cairo", "Oslo",
          "Quito", "Dakar", "Hanoi", "Tbilisi", "Lagos", "Porto"]
FILLER = ["The grass is green. ", "The sky is blue. ", "The sun is yellow. ", "Here we go. ",
          "There and back again. "]

VOCAB = 256
r = random.Random(1)


def document():
    city = r.choice(CITIES)
    digits = "".join(r.choice("0123456789") for _ in range(7))
    hay = "".join(r.choice(FILLER) for _ in range(r.randint(0, 40)))
    at = r.randint(0, len(hay))
    return (hay[:at] + f"The special magic {city} number is: {digits}. " + hay[at:] +
            f"What is the special magic {city} number? The special magic {city} number is: {digits}")


here = os.path.dirname(os.path.abspath(__file__))
with tempfile.TemporaryDirectory() as tmp:
    os.chdir(tmp)  # relative names: the model records its training paths, and must not vary between runs
    with open("corpus.txt", "w") as f:
        f.write("\n".join(document() for _ in range(3000)) + "\n")
    spm.SentencePieceTrainer.train(input="corpus.txt", model_prefix="needle", vocab_size=VOCAB, model_type="bpe",
                                   character_coverage=1.0, split_digits=True, normalization_rule_name="identity",
                                   bos_id=1, eos_id=2, unk_id=0, pad_id=-1, num_threads=1, minloglevel=2,
                                   max_sentence_length=1 << 16)
    with open("needle.model", "rb") as src, open(os.path.join(here, "needle-tokenizer.model"), "wb") as dst:
        dst.write(src.read())
sp = spm.SentencePieceProcessor(model_file=os.path.join(here, "needle-tokenizer.model"))
print("wrote configs/needle-tokenizer.model:", sp.get_piece_size(), "pieces")
for city in CITIES:
    print(" ", sp.encode(f"What is the special magic {city} number? The special magic {city} number is: 1234567.",
                         out_type=str))
