"""A CLIP tokenizer built in memory: byte-level characters, no merges, no hub download.

Tiny test models need a real `CLIPTokenizer` (the pipelines and Compel call it) but no
vocabulary worth learning. One token per character keeps prompt lengths easy to reason
about in tests: a 200-character prompt is 200 tokens, past CLIP's 77.
"""

from __future__ import annotations

from transformers import CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def byte_characters() -> list[str]:
    """The printable stand-in character for each byte, as byte-level BPE tokenizers use."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    shifted = 0
    chars = []
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + shifted))
            shifted += 1
    return chars


def build_clip_tokenizer(pad_token: str = EOS) -> CLIPTokenizer:
    chars = byte_characters()
    vocab = {c: i for i, c in enumerate(chars)}
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], bos_token=BOS, eos_token=EOS, pad_token=pad_token,
                         unk_token=EOS, model_max_length=77)
