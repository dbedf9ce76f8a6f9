"""The model backends behind the engine: one interface, three implementations. No Dagster here:
the GPU check (``deploy/gpu/check.py``) and benchmarks run them on machines without it.

- ``transformers``: CPU or GPU in this process; batched, left-padded, sorted by length;
- ``vllm``: the offline ``vllm.LLM`` engine on a GPU (the ``gpu`` extra; imported only when chosen);
- ``openai``: HTTP to any OpenAI-compatible server (e.g. ``vllm serve``), so a large scorer or
  annotator can run elsewhere, as in the ProX paper.

Operations, all batched over lists:

- ``generate(chats, max_new_tokens, temperature)``: chat completion (greedy at temperature 0);
- ``next_token_probs(chats, candidates, prefixes)``: probability of each candidate's first token
  right after the rendered chat (plus an assistant ``prefix``), e.g. "0".."5" after "Score: ";
- ``loglikelihood(contexts, continuations)``: summed log-probability of each continuation.
"""

from __future__ import annotations

import copy
import json
import math
import urllib.request
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prox_resources.loader import architecture_parameters, load_causal_lm

Chat = list[dict[str, str]]
Progress = Callable[[int, int], None]

# Below this many shared tokens a prefix cache costs more (a copy per batch) than it saves.
MIN_SHARED_PREFIX_TOKENS = 32


def shared_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """Tokens every sequence starts with, leaving each at least one token of its own."""
    first, n = sequences[0], min(len(s) for s in sequences) - 1
    for k in range(max(n, 0)):
        if any(s[k] != first[k] for s in sequences):
            return k
    return max(n, 0)


class EngineBackend(ABC):
    name: str
    model_id: str

    @abstractmethod
    def generate(
        self,
        chats: Sequence[Chat],
        max_new_tokens: int,
        temperature: float = 0.0,
        seed: int = 0,
        progress: Progress | None = None,
    ) -> list[str]: ...

    @abstractmethod
    def next_token_probs(
        self,
        chats: Sequence[Chat],
        candidates: Sequence[str],
        prefixes: Sequence[str] | None = None,
        progress: Progress | None = None,
    ) -> list[dict[str, float]]: ...

    @abstractmethod
    def loglikelihood(
        self, contexts: Sequence[str], continuations: Sequence[str]
    ) -> list[float]: ...

    @abstractmethod
    def complete(
        self, prompts: Sequence[str], max_new_tokens: int, progress: Progress | None = None
    ) -> list[str]:
        """Greedy continuation of raw text (no chat template): task prompts for base models."""

    # set by backends that run the model locally: a Hugging Face tokenizer (transformers' or vLLM's),
    # Any because its overloads (apply_chat_template, decode) return unions these calls never get
    tokenizer: Any = None

    def parameter_count(self) -> int | None:
        """Weights in the model (FLOP estimates); None where the model runs elsewhere."""
        return None

    def truncate(self, text: str, max_tokens: int) -> str:
        """The first ``max_tokens`` tokens of ``text`` (4 characters a token without a tokenizer)."""
        if self.tokenizer is None:
            return text[: 4 * max_tokens]
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return text if len(ids) <= max_tokens else self.tokenizer.decode(ids[:max_tokens])


# --- transformers ----------------------------------------------------------------------------
class TransformersBackend(EngineBackend):
    name = "transformers"

    def __init__(
        self,
        model_path: str,
        device: str,
        dtype,
        max_batch_size: int = 16,
        max_batch_tokens: int = 16384,
        loaded: tuple | None = None,
        compute: str = "float32",
    ):
        """``dtype``: the weights' dtype. ``compute``: ``auto`` runs matmuls in bf16 autocast where
        the hardware is fast at it (``core.precision``: the weights stay as loaded, residual
        stream, norms and softmax in fp32); ``float32`` as loaded. ``loaded``: an in-memory
        (model, tokenizer) to serve instead of loading ``model_path`` (a checkpoint under
        evaluation: its metrics compare checkpoints, so it stays in fp32 by default)."""
        import torch

        self.torch = torch
        self.model_id = str(model_path)
        if loaded:
            self.model, self.tokenizer = loaded[0].to(device).eval(), loaded[1]
        else:
            self.model, self.tokenizer = load_causal_lm(model_path, device, dtype)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.device = device
        self.compute = compute
        from prox_assets.core.precision import keep_output_head_fp32, uses_bf16

        if uses_bf16(device, compute):
            keep_output_head_fp32(self.model)
        # Tokens run through the model, and tokens a shared-prefix cache saved from running.
        self.usage: Counter[str] = Counter()
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_len = int(getattr(self.model.config, "max_position_embeddings", 8192))

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def render(self, chat: Chat, prefix: str = "") -> str:
        return (
            self.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
            + prefix
        )

    def _precision(self):
        """One autocast region per call: fp32 weights are cast to bf16 once per call, not per step
        (autocast caches the casts of parameters while its region lasts)."""
        from prox_assets.core.precision import autocast

        return autocast(self.device, self.compute)

    def _encode(self, texts: Sequence[str], reserve: int = 0) -> list[list[int]]:
        if not texts:
            return []
        ids = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        limit = self.max_len - reserve
        return [x[-limit:] for x in ids]  # keep the end: the instruction and generation prompt

    def _batches(self, lengths: Sequence[int], extra: int = 0) -> list[list[int]]:
        """Indices grouped longest-first so that each batch wastes little padding."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        batches: list[list[int]] = []
        current: list[int] = []
        for i in order:
            width = lengths[current[0]] + extra if current else lengths[i] + extra
            if current and (
                len(current) >= self.max_batch_size
                or width * (len(current) + 1) > self.max_batch_tokens
            ):
                batches.append(current)
                current = []
            current.append(i)
        if current:
            batches.append(current)
        return batches

    def _pad_left(self, seqs: list[list[int]]):
        torch = self.torch
        width = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, s in enumerate(seqs):
            ids[row, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[row, width - len(s) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return ids.to(self.device), mask.to(self.device), positions.to(self.device)

    def generate(self, chats, max_new_tokens, temperature=0.0, seed=0, progress=None):
        return self._generate(
            [self.render(c) for c in chats], max_new_tokens, temperature, seed, progress
        )

    def complete(self, prompts, max_new_tokens, progress=None):
        return self._generate(list(prompts), max_new_tokens, 0.0, 0, progress)

    def _generate(self, texts, max_new_tokens, temperature, seed, progress):
        torch = self.torch
        torch.manual_seed(seed)
        encoded = self._encode(texts, reserve=max_new_tokens)
        out: list[str] = [""] * len(encoded)
        done = 0
        for batch in self._batches([len(e) for e in encoded], extra=max_new_tokens):
            ids, mask, _ = self._pad_left([encoded[i] for i in batch])
            with torch.inference_mode(), self._precision():
                generated = self.model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=max_new_tokens,
                    do_sample=temperature > 0,
                    temperature=temperature if temperature > 0 else None,
                    top_p=None,
                    top_k=None,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            new = generated[:, ids.shape[1] :]
            for row, i in enumerate(batch):
                out[i] = self.tokenizer.decode(new[row], skip_special_tokens=True)
            done += len(batch)
            if progress:
                progress(done, len(encoded))
        return out

    def candidate_ids(self, candidates: Sequence[str]) -> list[int]:
        return [self.tokenizer(c, add_special_tokens=False)["input_ids"][0] for c in candidates]

    def next_token_probs(self, chats, candidates, prefixes=None, progress=None):
        torch = self.torch
        prefixes = prefixes or [""] * len(chats)
        encoded = self._encode([self.render(c, p) for c, p in zip(chats, prefixes)])
        cand = torch.tensor(self.candidate_ids(candidates), device=self.device)
        # Scoring prompts share a long head (chat template + rubric): its keys and values are
        # computed once per call and every batch continues from a copy of them.
        shared = shared_prefix_length(encoded) if len(encoded) > 1 else 0
        shared = shared if shared >= MIN_SHARED_PREFIX_TOKENS else 0
        cache = self._prefix_cache(encoded[0][:shared]) if shared else None
        self.usage["prompt_tokens"] += sum(len(e) for e in encoded)
        self.usage["prefix_tokens_reused"] += shared * max(len(encoded) - 1, 0)
        out: list[dict[str, float]] = [{}] * len(encoded)
        done = 0
        for batch in self._batches([len(e) - shared for e in encoded]):
            ids, mask, positions = self._pad_left([encoded[i][shared:] for i in batch])
            extra = {}
            if cache is not None:
                extra = self._continue_from(cache, len(batch), shared, mask)
                mask, positions = extra.pop("attention_mask"), positions + shared
            with torch.inference_mode(), self._precision():
                # Only the last position's logits are needed: skip the LM head everywhere else.
                logits = (
                    self.model(
                        input_ids=ids,
                        attention_mask=mask,
                        position_ids=positions,
                        logits_to_keep=1,
                        **extra,
                    )
                    .logits[:, -1]
                    .float()
                )
            probs = torch.softmax(logits, dim=-1)[:, cand].cpu().tolist()
            for row, i in enumerate(batch):
                out[i] = dict(zip(candidates, probs[row]))
            done += len(batch)
            if progress:
                progress(done, len(encoded))
        return out

    def _prefix_cache(self, prefix_ids: list[int]):
        torch = self.torch
        with torch.inference_mode(), self._precision():
            ids = torch.tensor([prefix_ids], device=self.device)
            return self.model(input_ids=ids, use_cache=True, logits_to_keep=1).past_key_values

    def _continue_from(
        self, cache, batch_size: int, shared: int, suffix_mask, reuse: bool = True
    ) -> dict:
        """Forward arguments that continue ``batch_size`` left-padded suffixes from the shared
        prefix's cache (a copy when ``reuse``: the forward extends the cache in place): the pads
        sit between prefix and suffix, masked out."""
        torch = self.torch
        if reuse:
            cache = copy.deepcopy(cache)
        cache.batch_repeat_interleave(batch_size)
        width = suffix_mask.shape[1]
        prefix_mask = torch.ones((batch_size, shared), dtype=suffix_mask.dtype, device=self.device)
        return {
            "past_key_values": cache,
            "attention_mask": torch.cat([prefix_mask, suffix_mask], dim=1),
            "cache_position": torch.arange(shared, shared + width, device=self.device),
            "use_cache": True,
        }

    def loglikelihood(self, contexts, continuations):
        if not contexts:
            return []
        ctx = self.tokenizer(list(contexts), add_special_tokens=False)["input_ids"]
        cont = self.tokenizer(list(continuations), add_special_tokens=False)["input_ids"]
        out = [0.0] * len(ctx)
        # Rows that continue one context (a question's answer and choices) run it once: its
        # keys and values, all but its last token, are computed once and every row goes on from
        # a copy of them with that token and its continuation.
        by_context: dict[tuple[int, ...], list[int]] = {}
        for i, c in enumerate(ctx):
            by_context.setdefault(tuple(c), []).append(i)
        alone = []
        for context, rows in by_context.items():
            longest = len(context) + max(len(cont[i]) for i in rows)
            if len(rows) < 2 or len(context) < 2 or longest > self.max_len:
                alone += rows
                continue
            for start in range(0, len(rows), self.max_batch_size):
                batch = rows[start : start + self.max_batch_size]
                scores = self._continuation_logprobs(
                    [[context[-1], *cont[i]] for i in batch],
                    [len(cont[i]) for i in batch],
                    prefix=list(context[:-1]),
                )
                for i, value in zip(batch, scores, strict=True):
                    out[i] = value
                self.usage["prefix_tokens_reused"] += (len(context) - 1) * (len(batch) - 1)
        seqs = {i: (ctx[i] + cont[i])[-self.max_len :] for i in alone}
        n_cont = {i: min(len(cont[i]), len(seqs[i]) - 1) for i in alone}
        for batch in self._batches([len(seqs[i]) for i in alone]):
            rows = [alone[j] for j in batch]
            scores = self._continuation_logprobs([seqs[i] for i in rows], [n_cont[i] for i in rows])
            for i, value in zip(rows, scores, strict=True):
                out[i] = value
        return out

    def _continuation_logprobs(
        self, seqs: list[list[int]], n_cont: list[int], prefix: list[int] | None = None
    ) -> list[float]:
        """Summed log-probability of the last ``n_cont[row]`` tokens of each sequence, in one
        left-padded batch, continuing ``prefix`` (a cache computed once) when given. Left padding
        ends every continuation at the row's end, so only the last positions need the vocabulary
        (an answer choice is a few tokens after a long question)."""
        torch = self.torch
        ids, mask, positions = self._pad_left(seqs)
        extra = {}
        if prefix:
            extra = self._continue_from(
                self._prefix_cache(prefix), len(seqs), len(prefix), mask, reuse=False
            )
            mask, positions = extra.pop("attention_mask"), positions + len(prefix)
        with torch.inference_mode(), self._precision():
            logp = torch.log_softmax(
                self.model(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=positions,
                    logits_to_keep=max(n_cont) + 1,
                    **extra,
                ).logits.float(),
                -1,
            )
        out = []
        for row, k in enumerate(n_cont):
            targets = ids[row, ids.shape[1] - k :]
            out.append(
                float(logp[row, -k - 1 : -1].gather(-1, targets[:, None]).sum()) if k > 0 else 0.0
            )
        return out


# --- vLLM --------------------------------------------------------------------------------------
class VLLMBackend(EngineBackend):
    """Offline vLLM engine: one per process, continuous batching inside ``LLM.generate``."""

    name = "vllm"

    def __init__(
        self,
        model_path: str,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.85,
        max_model_len: int | None = None,
        **engine_args,
    ):
        """``engine_args``: passed to ``vllm.LLM`` (e.g. ``load_format="dummy"``: random weights
        of the model's shape, for throughput checks where the weights cannot travel)."""
        try:
            from vllm import LLM, SamplingParams
        except ImportError as exc:
            raise RuntimeError(
                "backend='vllm' needs vLLM and a GPU: pip install 'prox-platform[gpu]'"
            ) from exc
        self.SamplingParams = SamplingParams
        self.model_id = str(model_path)
        self.llm = LLM(
            model=str(model_path),
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            enable_prefix_caching=True,
            **engine_args,
        )
        self.tokenizer = self.llm.get_tokenizer()

    def parameter_count(self) -> int:
        return architecture_parameters(self.model_id)  # the weights live in vLLM's engine process

    def render(self, chat: Chat, prefix: str = "") -> str:
        return (
            self.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
            + prefix
        )

    def generate(self, chats, max_new_tokens, temperature=0.0, seed=0, progress=None):
        params = self.SamplingParams(max_tokens=max_new_tokens, temperature=temperature, seed=seed)
        outputs = self.llm.generate([self.render(c) for c in chats], params, use_tqdm=False)
        if progress:
            progress(len(chats), len(chats))
        return [o.outputs[0].text for o in outputs]

    def complete(self, prompts, max_new_tokens, progress=None):
        params = self.SamplingParams(max_tokens=max_new_tokens, temperature=0.0)
        outputs = self.llm.generate(list(prompts), params, use_tqdm=False)
        if progress:
            progress(len(prompts), len(prompts))
        return [o.outputs[0].text for o in outputs]

    def next_token_probs(self, chats, candidates, prefixes=None, progress=None):
        prefixes = prefixes or [""] * len(chats)
        ids = [self.tokenizer(c, add_special_tokens=False)["input_ids"][0] for c in candidates]
        params = self.SamplingParams(max_tokens=1, temperature=0.0, logprobs=20)
        outputs = self.llm.generate(
            [self.render(c, p) for c, p in zip(chats, prefixes)], params, use_tqdm=False
        )
        out = []
        for o in outputs:
            top = o.outputs[0].logprobs[0]
            out.append(
                {c: math.exp(top[i].logprob) if i in top else 0.0 for c, i in zip(candidates, ids)}
            )
        if progress:
            progress(len(chats), len(chats))
        return out

    def loglikelihood(self, contexts, continuations):
        params = self.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        n_cont = [
            len(self.tokenizer(k, add_special_tokens=False)["input_ids"]) for k in continuations
        ]
        outputs = self.llm.generate(
            [c + k for c, k in zip(contexts, continuations)], params, use_tqdm=False
        )
        out = []
        for o, k in zip(outputs, n_cont):
            plp = o.prompt_logprobs[-k:] if k else []
            ids = o.prompt_token_ids[-k:] if k else []
            out.append(float(sum(d[t].logprob for d, t in zip(plp, ids))))
        return out


# --- OpenAI-compatible HTTP ------------------------------------------------------------------
class OpenAIBackend(EngineBackend):
    """Chat completions over HTTP. Assistant prefixes use vLLM's ``continue_final_message``."""

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None,
        concurrency: int = 8,
        timeout_s: float = 120.0,
    ):
        self.base_url = base_url.rstrip("/")
        self.model_id = model
        self.api_key = api_key
        self.concurrency = concurrency
        self.timeout_s = timeout_s

    def _post(self, path: str, body: dict) -> dict:
        request = urllib.request.Request(
            f"{self.base_url}{path}",
            data=json.dumps(body).encode(),
            method="POST",
            headers={
                "Content-Type": "application/json",
                **({"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}),
            },
        )
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            return json.loads(response.read())

    def _map(self, fn, items, progress):
        with ThreadPoolExecutor(self.concurrency) as pool:
            results = list(pool.map(fn, items))
        if progress:
            progress(len(results), len(results))
        return results

    def generate(self, chats, max_new_tokens, temperature=0.0, seed=0, progress=None):
        def one(chat):
            body = {
                "model": self.model_id,
                "messages": chat,
                "max_tokens": max_new_tokens,
                "temperature": temperature,
                "seed": seed,
            }
            return self._post("/chat/completions", body)["choices"][0]["message"]["content"] or ""

        return self._map(one, list(chats), progress)

    def complete(self, prompts, max_new_tokens, progress=None):
        def one(prompt):
            body = {
                "model": self.model_id,
                "prompt": prompt,
                "max_tokens": max_new_tokens,
                "temperature": 0.0,
            }
            return self._post("/completions", body)["choices"][0]["text"] or ""

        return self._map(one, list(prompts), progress)

    def next_token_probs(self, chats, candidates, prefixes=None, progress=None):
        prefixes = prefixes or [""] * len(chats)

        def one(item):
            chat, prefix = item
            body = {
                "model": self.model_id,
                "max_tokens": 1,
                "temperature": 0.0,
                "logprobs": True,
                "top_logprobs": 20,
                "messages": list(chat),
            }
            if prefix:
                body["messages"] = list(chat) + [{"role": "assistant", "content": prefix}]
                body.update(continue_final_message=True, add_generation_prompt=False)
            top = self._post("/chat/completions", body)["choices"][0]["logprobs"]["content"][0][
                "top_logprobs"
            ]
            found: dict[str, float] = {}
            for entry in top:
                token = entry["token"].strip()
                if token in candidates and token not in found:
                    found[token] = math.exp(entry["logprob"])
            return {c: found.get(c, 0.0) for c in candidates}

        return self._map(one, list(zip(chats, prefixes)), progress)

    def loglikelihood(self, contexts, continuations):
        raise NotImplementedError(
            "loglikelihood over HTTP needs prompt logprobs, which chat completions do not return; "
            "use the transformers or vllm backend for evaluation"
        )
