"""A reference of MiniCPM-o 4.5's simplex streaming, written from the official remote code.

Sources (OpenBMB MiniCPM-o 4.5 ``modeling_minicpmo.py``, ``processing_minicpmo.py``, ``utils.py``):

* ``MiniCPMO.streaming_prefill(session_id, msgs=[msg], omni_mode=True, is_last_chunk=...)``:
  the content items become ``<image>./</image>`` / ``<audio>./</audio>`` / text, joined with
  ``""`` (omni_mode). A system or assistant message sets ``new_user_msg`` and drops the audio
  encoder's cache. The first call of a session (``is_first``) runs ``reset_session`` and a new
  streaming processor; a user message then opens with ``<|im_start|>user\\n``, a system or
  assistant message goes through the chat template (no generation prompt). Later calls: the
  first user message of a turn opens with ``<|im_start|>user\\n`` before any answer, else with
  ``<|im_end|>\\n<|im_start|>user\\n`` when ``llm_generate_completed`` or
  ``<|tts_eos|><|im_end|>\\n<|im_start|>user\\n`` when not (streaming_generate sets it False and
  nothing sets it True); the rest adds its content only. The first user audio of a turn
  (``audio_chunk_idx == 0``) is left-padded to 1035 ms. The processor: images unsliced
  (``max_slice_nums=1``), no ``<image_id>``; audio placeholders from the sample count
  (``get_audio_placeholder``, ``chunk_input`` off: ``stream_input`` is not passed), user audio
  through ``StreamingMelProcessorExact`` (``online_streaming``), system audio offline;
  ``<|listen|>`` ids deleted. Embeddings: ``get_vllm_embedding`` (vision) and
  ``get_omni_embedding``: ``get_audio_embedding_streaming`` (the encoder's K/V cache, no CNN
  context trimming) for user audio, ``get_audio_embedding`` with chunk_length -1 (full attention)
  for system audio; a count mismatch raises ``Shape mismatch``. ``is_first`` drops the encoder
  cache after the embedding. The LLM prefills the rows through its KV cache.
* ``MiniCPMO.streaming_generate``: sets ``new_user_msg``, ``llm_generated``, clears
  ``llm_generate_completed`` and the encoder cache, starts a new streaming processor, feeds
  ``<|im_end|>\\n<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n<|tts_bos|>``, then
  ``ceil(max_new_tokens / 10)`` rounds of ``ChunkPrefillChunkGenerate.chunk_generate`` (11 draws
  in the first, 10 later; the forbidden tokens at -inf, then the repetition penalty over
  ``unique(all_input_ids[-128:] + this chunk's draws)`` where all_input_ids are the answer's
  earlier chunks, then argmax for ``do_sample=False``; a terminator ``<|tts_eos|>``,
  ``<|im_end|>``, ``</s>`` ends it unfed; each round yields the tokens fed in it with their
  last-layer hidden states). With audio, each round's pairs go to
  ``TTSStreamingGenerator.generate_with_buffer`` (``ref_minicpmo_tts.RefTts.stream_push``), the
  codes in a buffer ``[4218] * 3`` cut into windows of 28 that advance by 25, each window
  yielded with the text decoded so far (trailing U+FFFD held back), the rest at the end with the
  remaining text. Without audio, ``streaming_token_decoder`` yields each round's new text.

Only greedy decoding (``do_sample=False``) is reproduced: the LLM's multinomial draw is torch's.
The talker's draw uses minicpm.cpp's generator (``SplitMix``), as in ref_minicpmo_tts.
"""

from __future__ import annotations

import json
import math
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

import ref_audio_mel
import ref_minicpmo_audio as ref
import ref_minicpmv_processor as improc

FIRST_CHUNK_SAMPLES = 16560   # FIRST_CHUNK_MS = 1035 at 16 kHz
FORBIDDEN = [":", "：", "；", "#", "“", "”", "‘", "’", "@", "*", "【", "】", "「", "」", "(", ")", "（", "）", "[", "]",
             "&", "/", "$"]
TERMINATORS = ["<|tts_eos|>", "<|im_end|>", "</s>"]
PENALTY_WINDOW = 128
SILENCE, LOOKAHEAD, WINDOW = 4218, 3, 25


class ShapeMismatch(ValueError):
    pass


class StreamingRef:
    """MiniCPMO's simplex streaming state over the tiny checkpoint's reference parts.

    ``omni`` gives ``tok``, ``llm`` (transformers Qwen3), ``audio`` (AudioRef), ``vision`` and
    ``dir``; ``tts`` is a ref_minicpmo_tts.RefTts (for generate_audio)."""

    def __init__(self, omni, tts=None):
        self.o = omni
        self.tok = omni.tok
        self.llm = omni.llm
        self.tts = tts
        self.enc = ref.AudioStreamRef(omni.audio)
        cfg = json.loads((omni.dir / "tokenizer_config.json").read_text())
        conv = self.tok.convert_tokens_to_ids
        self.forbidden = sorted({conv(t) for t in FORBIDDEN} | set(cfg.get("bad_token_ids", [])))
        self.terminators = {conv(t) for t in TERMINATORS}
        self.template = cfg["chat_template"]
        self.session_id = None
        self.reset_session()

    # -- MiniCPMO.reset_session / init_streaming_processor ----------------------------------------
    def reset_session(self) -> None:
        self.past = None
        self.enc.reset()
        self.llm_generated = False
        self.llm_generate_completed = False
        self.new_user_msg = True
        self.ids: List[int] = []            # every position of the context (-1: none)
        self.rows: List[torch.Tensor] = []  # their input rows
        self.prompts: List[str] = []

    def init_streaming_processor(self) -> None:
        self.mel = ref_audio_mel.StreamingMelRef()
        self.audio_chunk_idx = 0

    # -- the processor ------------------------------------------------------------------------
    def _tokens(self, text: str, add_special_tokens: bool) -> List[int]:
        listen = self.tok.convert_tokens_to_ids("<|listen|>")
        ids = self.tok(text, add_special_tokens=add_special_tokens).input_ids
        return [t for t in ids if t != listen]

    @torch.no_grad()
    def streaming_prefill(self, session_id, msg: Dict, omni_mode: bool = True, is_last_chunk: bool = False,
                          use_tts_template: bool = True, enable_thinking: bool = False) -> str:
        from PIL import Image

        is_first = self.session_id is None or session_id != self.session_id
        images, audios, cur = [], [], []
        for c in msg["content"]:
            if isinstance(c, Image.Image):
                images.append(c)
                cur.append("<image>./</image>")
            elif isinstance(c, np.ndarray):
                audios.append(c)
                cur.append("<audio>./</audio>")
            elif isinstance(c, str):
                cur.append(c)
        contents = "".join(cur) if omni_mode else "\n".join(cur)
        streamed = msg["role"] != "system"
        if msg["role"] in ("system", "assistant"):
            self.new_user_msg = True
            self.enc.reset()
        if is_first:
            self.reset_session()
            self.session_id = session_id
            self.init_streaming_processor()
            if msg["role"] == "user":
                prompt = "<|im_start|>user\n" + contents
                self.new_user_msg = False
            else:
                prompt = ref.render_chat_template(self.template, [{"role": msg["role"], "content": contents}],
                                                  add_generation_prompt=False, use_tts_template=use_tts_template,
                                                  enable_thinking=enable_thinking)
            add_special = True
        else:
            if self.new_user_msg and msg["role"] == "user":
                if self.llm_generated:
                    opening = "<|im_end|>\n" if self.llm_generate_completed else "<|tts_eos|><|im_end|>\n"
                    prompt = opening + "<|im_start|>user\n" + contents
                else:
                    prompt = "<|im_start|>user\n" + contents
                self.new_user_msg = False
            else:
                prompt = contents
            add_special = False
        if streamed and audios and self.audio_chunk_idx == 0 and len(audios[0]) < FIRST_CHUNK_SAMPLES:
            audios[0] = np.concatenate([np.zeros(FIRST_CHUNK_SAMPLES - len(audios[0]), audios[0].dtype), audios[0]])
        # placeholders
        text = prompt
        for im in images:
            ph = improc.placeholder(im.size, 0, max_slice_nums=1, use_image_id=False)
            text = text.replace("<image>./</image>", ph, 1)
        for a in audios:
            text = text.replace("<audio>./</audio>", ref.audio_placeholder(len(a), self.o.audio.pool_step), 1)
        ids = self._tokens(text, add_special)
        # embeddings
        audio_embs = []
        if audios:
            if streamed:
                assert len(audios) == 1
                mel = self.mel.process(audios[0], is_last_chunk=is_last_chunk)
                self.audio_chunk_idx += 1
                if ref.encoder_frames(mel.shape[1]) < self.o.audio.pool_step:
                    raise ValueError("AvgPool1d: fewer encoder frames than the pooling step")
                audio_embs = [self.enc.process(mel)]
            else:
                mels = [m for a in audios for m in ref_audio_mel.offline_features(a)]
                audio_embs = self.o.audio.get_audio_embedding(mels, chunk_length=-1)
        rows = self.llm.get_input_embeddings()(torch.tensor([ids]))[0].detach().clone()
        if images:
            import ref_minicpmv_vision as vref

            embs = []
            for im in images:
                pieces, _ = improc.preprocess(im, max_slice_nums=1)
                e = vref.vision_embeddings(self.o.vision, [torch.from_numpy(p) for p in pieces])
                embs.append(e.reshape(-1, e.shape[-1]))
            starts = [self.tok.convert_tokens_to_ids(t) for t in ("<image>", "<slice>")]
            ends = [self.tok.convert_tokens_to_ids(t) for t in ("</image>", "</slice>")]
            pos = improc.image_positions(ids, starts, ends)
            rows[pos] = torch.cat(embs).to(rows.dtype)
        if audio_embs:
            a_start, a_end = (self.tok.convert_tokens_to_ids(t) for t in (ref.AUDIO_START, ref.AUDIO_END))
            starts = [i + 1 for i, t in enumerate(ids) if t == a_start]
            ends = [i for i, t in enumerate(ids) if t == a_end]
            for e, s, t in zip(audio_embs, starts, ends):
                if e.shape[0] != t - s:
                    raise ShapeMismatch(f"Shape mismatch: {e.shape[0]} embeddings for {t - s} audio positions")
                rows[s:t] = torch.from_numpy(e).to(rows.dtype)
        if is_first:
            self.enc.reset()
        self._prefill(ids, rows)
        self.prompts.append(prompt)
        return prompt

    def _prefill(self, ids: Sequence[int], rows: torch.Tensor) -> torch.Tensor:
        out = self.llm(inputs_embeds=rows[None], past_key_values=self.past, use_cache=True, output_hidden_states=True)
        self.past = out.past_key_values
        self.ids += list(ids)
        self.rows.append(rows)
        return out

    # -- MiniCPMO.streaming_generate (greedy) -------------------------------------------------
    @torch.no_grad()
    def streaming_generate(self, generate_audio: bool = True, max_new_tokens: int = 256,
                           repetition_penalty: float = 1.02, rng=None, tts_kw: Optional[dict] = None) -> Dict:
        self.new_user_msg = True
        self.llm_generated = True
        self.llm_generate_completed = False
        self.enc.reset()
        self.init_streaming_processor()
        bos = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n<|tts_bos|>"
        bos_ids = self.tok.encode(bos)
        emb = self.llm.get_input_embeddings()
        pending_rows = emb(torch.tensor([bos_ids]))[0]
        pending_ids = list(bos_ids)
        generated: List[int] = []     # all_input_ids: the answer's earlier chunks
        out_tokens: List[int] = []    # what the rounds yield
        hidden: List[torch.Tensor] = []
        draw_hidden: List[torch.Tensor] = []   # the hidden state each draw's logits come from
        chunks = []                   # (yielded tokens, finished) per round
        if generate_audio:
            self.tts.stream_begin()
        codes: List[int] = []
        buffer, events = [SILENCE] * LOOKAHEAD, []
        said = 0
        n_rounds = (max_new_tokens + 9) // 10
        finished = False
        for k in range(n_rounds):
            size = 10 + (1 if k == 0 else 0)
            drawn, hs = [], []
            for step in range(size):
                out = self._prefill(pending_ids, pending_rows)
                draw_hidden.append(out.hidden_states[-1][0, -1])
                if not (k == 0 and step == 0):
                    hs.append(out.hidden_states[-1][0, -1])
                logits = out.logits[0, -1].float().clone()
                logits[self.forbidden] = float("-inf")
                if repetition_penalty != 1.0:
                    seen = torch.unique(torch.tensor(generated[-PENALTY_WINDOW:] + drawn, dtype=torch.long))
                    for t in seen.tolist():
                        logits[t] = logits[t] / repetition_penalty if logits[t] > 0 else logits[t] * repetition_penalty
                nxt = int(torch.argmax(logits))
                if nxt in self.terminators:
                    finished = True
                    break
                drawn.append(nxt)
                pending_ids, pending_rows = [nxt], emb(torch.tensor([[nxt]]))[0]
            if k == 0:
                got = drawn if finished else drawn[:-1]
            else:
                got = generated[-1:] + (drawn if finished else drawn[:-1])
            out_tokens += got
            hidden += hs
            chunks.append((list(got), finished))
            if generate_audio:
                h = torch.stack(hs) if hs else torch.zeros((0, self.llm.config.hidden_size))
                new = self.tts.stream_push(self.tts.condition(got, h), finished, rng=rng, **(tts_kw or {}))
                codes += new
                buffer += new
                while len(buffer) >= WINDOW + LOOKAHEAD:
                    text = self._text(out_tokens, said, final=False)
                    said += len(text.encode("utf-8"))
                    events.append((text, buffer[: WINDOW + LOOKAHEAD], False))
                    buffer = buffer[WINDOW:]
            generated += drawn
            if finished:
                break
            # the last draw of the round is fed at the start of the next one
        # (the last draw of the last round is never fed: the official cache ends before it)
        if generate_audio:
            text = self._text(out_tokens, said, final=True)
            events.append((text, buffer, True))
        else:
            events, said = [], 0
            for i, (_got, fin) in enumerate(chunks):
                acc = [t for g, _f in chunks[: i + 1] for t in g]
                text = self._text(acc, said, final=fin)
                said += len(text.encode("utf-8"))
                events.append((text, None, fin))
        return {"tokens": out_tokens, "hidden": torch.stack(hidden) if hidden else None, "codes": codes,
                "events": events, "finished": finished, "drawn": generated, "draw_hidden": draw_hidden}

    def _text(self, tokens: Sequence[int], said: int, final: bool) -> str:
        full = self.tok.decode(list(tokens)).encode("utf-8")
        end = len(full)
        if not final:
            while end >= 3 and full[end - 3:end] == "\ufffd".encode("utf-8"):
                end -= 3
        return full[said:end].decode("utf-8") if end > said else ""
