"""Convert the CLIP BPE vocabulary (bpe_simple_vocab_16e6.txt.gz, shipped by open_clip_torch and
clip-anytorch) into the vocab.json + merges.txt pair that transformers' CLIPTokenizer reads.

The construction follows the published CLIP tokenizer definition: 256 byte symbols, the same with the
end-of-word marker, one symbol per merge, then the two special tokens; 49,408 ids in all.
Usage: python scripts/convert_clip_bpe.py PATH/TO/bpe_simple_vocab_16e6.txt.gz
src/eraselab/data/clip_tokenizer
"""
import gzip
import json
import sys
from pathlib import Path


def byte_symbols() -> list[str]:
    """The printable stand-in character for each of the 256 byte values, in CLIP's order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def convert(bpe_gz: Path, out_dir: Path) -> None:
    lines = gzip.open(bpe_gz).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    symbols = byte_symbols()
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    config = {"model_max_length": 77, "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
              "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "do_lower_case": True,
              "tokenizer_class": "CLIPTokenizer"}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    print(f"wrote {len(vocab)} tokens and {len(merges)} merges to {out_dir}")


if __name__ == "__main__":
    convert(Path(sys.argv[1]), Path(sys.argv[2]))
