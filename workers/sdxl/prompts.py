"""SDXL prompt embeddings without CLIP's 77-token cut.

A prompt is split into chunks of 75 tokens, each encoded as `[BOS] chunk [EOS] pad…` (77
tokens) and the chunks' hidden states concatenated, so nothing the user wrote is dropped. A
prompt of up to 75 tokens gives exactly what diffusers' own `encode_prompt` gives. With
`compel_enabled`, Compel parses weighting syntax (`(red)1.4`, `fox++`) and chunks the same way.
Embeddings are per job, so a job gets the same conditioning batched or alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CHUNK = 75  # CLIP's 77 positions less BOS and EOS


@dataclass
class PromptEmbeddings:
    positive: torch.Tensor  # (1, tokens, hidden_1 + hidden_2)
    negative: torch.Tensor
    pooled_positive: torch.Tensor  # (1, projection)
    pooled_negative: torch.Tensor
    chunks: int

    @property
    def length(self) -> int:
        return self.positive.shape[1]


class PromptEncoder:
    def __init__(self, pipe, device: str):
        self.pipe = pipe
        self.device = device
        self._compel = None

    def encode(self, prompt: str, negative: str, use_compel: bool) -> PromptEmbeddings:
        with torch.no_grad():
            if use_compel:
                return self._encode_compel(prompt, negative)
            return self._encode_plain(prompt, negative)

    # ------------------------------------------------------------------------- plain

    def _chunks(self, tokenizer, text: str) -> list[list[int]]:
        ids = tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids
        return [ids[i:i + CHUNK] for i in range(0, len(ids), CHUNK)] or [[]]

    def _encode_chunks(self, tokenizer, encoder, chunks: list[list[int]]):
        rows = [[tokenizer.bos_token_id, *c, tokenizer.eos_token_id] + [tokenizer.pad_token_id] * (CHUNK - len(c))
                for c in chunks]
        ids = torch.tensor(rows, device=self.device)
        out = encoder(ids, output_hidden_states=True)
        hidden = out.hidden_states[-2]  # SDXL conditions on the penultimate layer
        pooled = out[0][:1] if hasattr(out, "text_embeds") else None  # the first chunk's, as one prompt
        return hidden.reshape(1, -1, hidden.shape[-1]), pooled

    def _encode_plain(self, prompt: str, negative: str) -> PromptEmbeddings:
        pipe = self.pipe
        pairs = [(pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)]
        pos_chunks = [self._chunks(t, prompt) for t, _ in pairs]
        neg_chunks = [self._chunks(t, negative) for t, _ in pairs]
        # Positive and negative must have one length: pad the shorter with empty chunks.
        count = max(len(c) for c in pos_chunks + neg_chunks)
        sides = {}
        for name, chunk_sets in (("pos", pos_chunks), ("neg", neg_chunks)):
            hiddens, pooled = [], None
            for (tokenizer, encoder), chunks in zip(pairs, chunk_sets, strict=True):
                chunks = chunks + [[]] * (count - len(chunks))
                hidden, pooled_out = self._encode_chunks(tokenizer, encoder, chunks)
                hiddens.append(hidden)
                pooled = pooled_out if pooled_out is not None else pooled
            sides[name] = (torch.cat(hiddens, dim=-1), pooled)
        return PromptEmbeddings(sides["pos"][0], sides["neg"][0], sides["pos"][1], sides["neg"][1], count)

    # ------------------------------------------------------------------------ compel

    def _encode_compel(self, prompt: str, negative: str) -> PromptEmbeddings:
        if self._compel is None:
            from compel import CompelForSDXL

            self._compel = CompelForSDXL(self.pipe, device=self.device)
        out = self._compel(prompt, negative_prompt=negative)
        return PromptEmbeddings(out.embeds, out.negative_embeds, out.pooled_embeds, out.negative_pooled_embeds,
                                out.embeds.shape[1] // 77)
