"""Decoding for the neuron-lens study, on the shared generation runner.

One :class:`PromptSet` per prompt type holds the tokenised demonstrations: BOS (as the
tokenizer adds it) plus the demonstrations are prefilled once, and every batch continues
that KV cache with its own ``Question: ...`` tokens, left padded. The split point is checked
per problem: the whole prompt must tokenize to the prefix's ids followed by the question's,
so the model sees exactly the tokens of the original's one-piece prompt.

Stops: in ``fixed`` mode at the next ``Question:`` (and EOS), in ``faithful`` mode only at
EOS or after ``max_new_tokens`` (the original's fixed budget). Each problem's result line
holds both parsers' predictions on the same generation (``pred_faithful``,
``pred_fixed``), the gold answer and ``correct_*`` for both.

:func:`dominant_run` is Algorithm One's decoding: the correctly answered sample, greedy with
no stop, ``TopK(k, scale=||W_down[:, i]||)`` captured at every ``mlp.hook_post`` inside the
compiled prefill and steps. It keeps the 149 decoding positions from the last prompt token
on (the last prompt token predicts generated token 1; then generated tokens 1..148), each
(position, layer) with its top-k indices and scores, and a ``valid`` mask: in ``fixed`` mode
only the positions up to the end of the generated answer count, in ``faithful`` mode all.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from jaxreason.generation_runner import DecodeSettings, GeneratedBatch, run_generation
from jaxreason.hooks import TopK
from jaxreason.models import weights as W
from jaxreason.models.generate import prefill_prefix
from jaxreason.probe.array_store import open_arrays
from jaxreason.tasks import gsm8k
from jaxreason.tasks.readers.gsm8k import GSM8KProblem

STOP_STRINGS = ("Question:",)
MLP_POST = "blocks.*.mlp.hook_post"


@dataclasses.dataclass
class PromptSet:
    """One prompt type's demonstrations, tokenised, and how to encode a question after them."""

    prompt_type: str
    mode: str
    text: str  # the prompt file's text
    prefix_text: str  # the demonstrations as they precede every question
    prefix_ids: list[int]  # BOS + demonstrations
    tokenizer: object

    @classmethod
    def build(cls, tokenizer, prompt_type: str, text: str, mode: str) -> "PromptSet":
        prefix_text = gsm8k.demonstrations(text)
        ids = tokenizer(prefix_text)["input_ids"]  # BOS as the tokenizer adds it
        return cls(prompt_type, mode, text, prefix_text, list(ids), tokenizer)

    def prompt(self, problem: GSM8KProblem) -> str:
        return gsm8k.build_prompt(self.text, problem.question, self.prompt_type, self.mode)

    def encode(self, problem: GSM8KProblem) -> list[int]:
        """The question's ids after the prefix (checked: prefix + these = the whole prompt)."""
        full = list(self.tokenizer(self.prompt(problem))["input_ids"])
        n = len(self.prefix_ids)
        if full[:n] != self.prefix_ids or len(full) == n:
            raise ValueError(f"{self.prompt_type}: the prompt of the question on line "
                             f"{problem.line} does not tokenize as the demonstrations' ids "
                             f"followed by the question's; the tokenizer merges across the "
                             f"blank line, so the demonstrations cannot be prefilled once")
        return full[n:]

    def encode_full(self, problem: GSM8KProblem) -> list[int]:
        return self.prefix_ids + self.encode(problem)

    @property
    def shown_answers(self) -> int:
        return self.prefix_text.count(gsm8k.ANSWER_MARK)


def decode_text(tokenizer) -> Callable[[Sequence[int]], str]:
    return lambda ids: tokenizer.decode([int(t) for t in ids], skip_special_tokens=True)


def settings_for(config, tokenizer, max_new_tokens: int, stops: bool) -> DecodeSettings:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    eos = () if tokenizer.eos_token_id is None else (tokenizer.eos_token_id,)
    fixed = config.mode == "fixed" and stops
    return DecodeSettings(max_new_tokens=max_new_tokens, batch_size=config.batch_size,
                          stop_tokens=eos if stops else (), pad_token_id=pad,
                          stop_strings=STOP_STRINGS if fixed else ())


def score_fn(prompts: PromptSet) -> Callable:
    """Both parsers' predictions on the decoded prompt + generation, and correctness."""
    def score(problem: GSM8KProblem, text: str, ids) -> dict:
        prompt = prompts.prompt(problem)
        full = prompt + text
        faithful = gsm8k.extract_answer(full, "faithful", prompt)
        fixed = gsm8k.extract_answer(full, "fixed", prompt)
        gold = problem.final_answer
        return {"gold": gold, "pred_faithful": faithful, "pred_fixed": fixed,
                "correct_faithful": faithful is not None and faithful == gold,
                "correct_fixed": fixed is not None and fixed == gold}
    return score


def accuracy(results: Sequence[dict], mode: str) -> float:
    return float(np.mean([r[f"correct_{mode}"] for r in results])) if results else 0.0


def run_accuracy(config, model, params, prompts: PromptSet, problems, out_dir: Path, *,
                 interventions=None, params_for_call=None, shared_prefix: bool = True,
                 identity: dict | None = None, mesh=None, desc: str = "") -> list[dict]:
    """Decode every problem after ``prompts`` and score it; results resume from ``out_dir``.

    ``shared_prefix`` False: every batch prefills the whole prompt (the cumulative corruption
    must see the demonstrations under its current weights, as the original does)."""
    tok = prompts.tokenizer
    settings = settings_for(config, tok, config.max_new_tokens, stops=params_for_call is None)
    if interventions is not None:
        settings = dataclasses.replace(settings, intervene_on="all")
    if shared_prefix:
        prefix = prefill_prefix(model, params, prompts.prefix_ids, interventions=interventions)
        encode = prompts.encode
    else:
        prefix, encode = None, prompts.encode_full
    ident = {"prompt_type": prompts.prompt_type, "mode": config.mode,
             "prefix": prompts.prefix_ids if shared_prefix else None, **(identity or {})}
    out = run_generation(model, params, list(problems), encode, settings,
                         decode=decode_text(tok), prefix=prefix, interventions=interventions,
                         score=score_fn(prompts), out_dir=out_dir, identity=ident, mesh=mesh,
                         progress=config.progress, desc=desc or prompts.prompt_type,
                         params_for_call=params_for_call)
    return out.results


@dataclasses.dataclass
class DominantNeurons:
    """Algorithm One's result for one prompt type's sample."""

    problem_index: np.ndarray  # (N,) which problems
    indices: np.ndarray  # (N, L, T, k) int32, best first
    scores: np.ndarray  # (N, L, T, k) float32: |a_i| * ||W_down[:, i]||
    valid: np.ndarray  # (N, T) bool: positions that count in this mode
    generated: np.ndarray  # (N, T - 1) the generated tokens
    texts: list[str]


def dominant_run(config, model, params, prompts: PromptSet, problems, sample: Sequence[int],
                 out_dir: Path, mesh=None) -> DominantNeurons:
    """Algorithm One on ``problems[sample]`` (see the module docstring)."""
    L, T, k = model.config.num_layers, config.neuron_steps, config.top_k
    norms = W.value_norms(model, params)
    capture = {MLP_POST: TopK(k, scale=norms)}
    tok = prompts.tokenizer
    # no stop, and batches no larger than the sample (a short sample is not padded up)
    settings = dataclasses.replace(settings_for(config, tok, T - 1, stops=False),
                                   batch_size=min(config.batch_size, len(sample)))
    records = [problems[i] for i in sample]
    stop_ids = set(settings_for(config, tok, 1, stops=True).stop_tokens)

    def to_arrays(batch: GeneratedBatch) -> dict:
        t = batch.prompt_ids.shape[1]  # the last prompt token is slot t - 1 of the capture
        idx = np.stack([np.asarray(batch.captured[f"blocks.{l}.mlp.hook_post"]["indices"])
                        [:batch.rows, t - 1:t - 1 + T] for l in range(L)], axis=1)
        sc = np.stack([np.asarray(batch.captured[f"blocks.{l}.mlp.hook_post"]["scores"])
                       [:batch.rows, t - 1:t - 1 + T] for l in range(L)], axis=1)
        valid = np.ones((batch.rows, T), bool)
        if config.mode == "fixed":  # positions up to the end of the answer
            for r in range(batch.rows):
                end = _answer_end(batch.generated[r], tok, stop_ids)
                # position 0 is the last prompt token, position j generated token j fed in:
                # positions 0..end-1 predict the answer's tokens, the stop one included
                valid[r, end:] = False
        return {"indices": idx.astype(np.int32), "scores": sc.astype(np.float32),
                "valid": valid, "generated": batch.generated.astype(np.int32),
                "problem_index": np.asarray(
                    sample[batch.start:batch.start + batch.rows], np.int64)}

    out = run_generation(model, params, records, prompts.encode, settings,
                         decode=decode_text(tok),
                         prefix=prefill_prefix(model, params, prompts.prefix_ids),
                         capture=capture, to_arrays=to_arrays, out_dir=out_dir,
                         identity={"prompt_type": prompts.prompt_type, "mode": config.mode,
                                   "sample": list(map(int, sample)), "top_k": k},
                         mesh=mesh, progress=config.progress,
                         desc=f"dominant neurons {prompts.prompt_type}")
    store = open_arrays(out.store)
    return DominantNeurons(store.read("problem_index"), store.read("indices"),
                           store.read("scores"), store.read("valid").astype(bool),
                           store.read("generated"), [r["text"] for r in out.results])


def _answer_end(generated: np.ndarray, tokenizer, stop_ids: set) -> int:
    """How many generated tokens the answer takes: up to the first stop token or the first
    ``Question:`` (the whole budget when neither comes)."""
    decode = decode_text(tokenizer)
    for n in range(1, len(generated) + 1):
        if int(generated[n - 1]) in stop_ids or "Question:" in decode(generated[:n]):
            return n
    return len(generated)
