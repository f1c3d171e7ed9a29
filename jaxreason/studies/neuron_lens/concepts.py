"""Concept ("reasoning") neurons: a seed-token filter, then a labeller.

The original's seven concepts, each with a seed-word list. A dominant neuron outside the
first layers is a *candidate* for a concept when at least ``min_hits`` (2) of its promoted
tokens, stripped and lower-cased, are exactly in the concept's seed list. The original skips
layers 0-5 of Llama-2-7B's 32; for another depth :func:`skipped_layers` keeps that fraction
(``round(6 / 32 * L)``: 1 of 4 layers).

Seed lists: :data:`ORIGINAL_SEEDS` are the original's, for real tokenizers. The embedded
world's 256-token vocabulary holds almost none of them (no ``plus``, ``minus`` or
``formula``), so :func:`world_seeds` keeps each concept's words that the world has (``so``,
``then``, ``+``, ``-``, ``*``, ``/``, ``=``, ``total``, ``times``) and adds the world's own
words for the same concept: the verbs by which a count grows (``finds``, ``gets``, ``wins``,
``buys``) and ``more`` for addition, those by which it shrinks (``gives``, ``sells``) and
``left`` for subtraction, ``each``, ``every`` (``5 coins every day``) and the units the world
multiplies by (``dozen``, ``pair``, ``pairs``) for multiplication,
``equally`` and ``into`` for division, ``is`` for equals, and for formula, whose words the
world lacks, the four operator symbols (a neuron promoting two different operators is about
calculation in general). With 20 of 256 tokens (8% of the vocabulary) nearly any neuron
passes a 2-hit filter, so the world's config keeps the top 8 promoted tokens (3%).

Labellers (the report names the one used for every list):

* ``seed_tokens``: the filter alone (offline).
* ``llm``: each candidate is put to a chat model with the original's messages (system ``You
  are a helpful assistant.``; user ``A neuron in language model promotes the following set
  of words: {tokens}. {question} First, answer in Yes or No format and provide an
  explanation.``, tokens joined by ``" ,"``), temperature 0, max_tokens 50, through the
  shared cached client. ``faithful`` accepts when ``'yes'`` is in the text before the first
  comma, lower-cased (``Yes.`` yes; ``No, ... yes`` no; a comma-less ``eyes`` yes), and a
  failed request counts as ``No response`` (rejected); ``fixed`` accepts only a first word
  ``yes``, rejects ``no`` and counts anything else as unparsed (rejected, and counted in the
  report), and a failed request is an error.
"""

from __future__ import annotations

import re
from typing import Sequence

from jaxreason.llm import LLMClient, LLMError
from jaxreason.tasks import word_problem_lexicon as lex

CONCEPTS = ("connections", "add", "subtract", "multiply", "division", "equals_to", "formula")
ORIGINAL_SEEDS = {
    "connections": ("first", "originally", "initially", "so", "meaning", "therefore", "then",
                    "next", "hence", "now"),
    "add": ("add", "addition", "+", "sum", "plus"),
    "subtract": ("subtract", "-", "minus", "sub"),
    "multiply": ("mult", "multiply", "product", "times", "*", "x"),
    "division": ("divide", "division", "/", "%", "div"),
    "equals_to": ("=", "total", "equals", "equal", "equivalent"),
    "formula": ("formula", "equation", "calculation", "algorithm", "expression", "computation"),
}
QUESTIONS = {
    "connections": "Is this neuron promoting logical order or logical connections required "
                   "for reasoning?",
    "add": "Is this neuron promoting arithmetic addition ?",
    "subtract": "Is this neuron promoting arithmetic subtraction?",
    "multiply": "Is this neuron promoting arithmetic multiplication?",
    "division": "Is this neuron promoting arithmetic division?",
    "equals_to": "Is this neuron promoting equals to from equation?",
    "formula": "Is this neuron promoting concept related to formula or calculation?",
}
SYSTEM = "You are a helpful assistant."
USER = ("A neuron in language model promotes the following set of words: {tokens}. "
        "{question} First, answer in Yes or No format and provide an explanation.")
NO_RESPONSE = "No response"
ORIGINAL_LAYERS, ORIGINAL_SKIPPED = 32, 6


def world_seeds() -> dict[str, tuple[str, ...]]:
    """The seed lists adapted to the embedded world's vocabulary (module docstring)."""
    world_extra = {
        "connections": (),
        "add": ("more",) + lex.GIVE_VERBS,
        "subtract": ("left",) + lex.TAKE_VERBS,
        "multiply": ("each", "every", "dozen", "pair", "pairs"),
        "division": ("equally", "into"),
        "equals_to": ("is",),
        "formula": ("+", "-", "*", "/"),
    }
    return {c: ORIGINAL_SEEDS[c] + tuple(w for w in world_extra[c] if w not in ORIGINAL_SEEDS[c])
            for c in CONCEPTS}


def seed_lists(choice: str, source: str) -> tuple[dict[str, tuple[str, ...]], str]:
    """(seed lists, name): ``auto`` is ``world`` on the embedded world, else ``original``."""
    name = ("world" if source == "world" else "original") if choice == "auto" else choice
    return (world_seeds() if name == "world" else dict(ORIGINAL_SEEDS)), name


def skipped_layers(num_layers: int, configured: int | None = None) -> int:
    """Layers 0..n-1 are left out of the concept search: ``configured``, or the original's
    6 of 32 scaled to ``num_layers``."""
    if configured is not None:
        if configured >= num_layers:
            raise ValueError(f"skip_layers={configured} leaves none of the model's "
                             f"{num_layers} layers to search")
        return configured
    return int(round(ORIGINAL_SKIPPED / ORIGINAL_LAYERS * num_layers))


def seed_hits(tokens: Sequence[str], seeds: Sequence[str]) -> int:
    """How many tokens, stripped and lower-cased, are exactly a seed word."""
    wanted = set(seeds)
    return sum(t.strip().lower() in wanted for t in tokens)


def candidates(neurons, seeds: dict, skip: int, min_hits: int = 2) -> dict[str, list]:
    """``{concept: [neuron, ...]}``: neurons of layers >= ``skip`` with at least
    ``min_hits`` promoted tokens in the concept's seed list."""
    return {c: [n for n in neurons if n.layer >= skip and seed_hits(n.tokens, seeds[c]) >= min_hits]
            for c in seeds}


def user_message(neuron, concept: str) -> str:
    tokens = " ,".join(t.strip() for t in neuron.tokens)
    return USER.format(tokens=tokens, question=QUESTIONS[concept])


def accepts(answer: str, mode: str) -> bool | None:
    """Whether ``answer`` says yes: faithful by the original's rule; fixed strict (None when
    it is neither a yes nor a no)."""
    if mode == "faithful":
        return "yes" in answer.split(",")[0].lower()
    first = re.match(r"\s*[\"'*]*([A-Za-z]+)", answer)
    word = first.group(1).lower() if first else ""
    return True if word == "yes" else False if word == "no" else None


def label_with_llm(client: LLMClient, found: dict[str, list], mode: str) -> tuple[dict, list]:
    """Ask the model about every candidate; ``({concept: accepted}, records)``."""
    conversations, keys = [], []
    for concept, neurons in found.items():
        for n in neurons:
            conversations.append([{"role": "system", "content": SYSTEM},
                                  {"role": "user", "content": user_message(n, concept)}])
            keys.append((concept, n))
    sampling = dict(temperature=0, max_tokens=50, top_p=1, frequency_penalty=0,
                    presence_penalty=0)
    texts = _answers(client, conversations, sampling, mode)
    accepted = {c: [] for c in found}
    records = []
    for (concept, n), message, text in zip(keys, conversations, texts):
        verdict = accepts(text, mode)
        if verdict:
            accepted[concept].append(n)
        records.append({"concept": concept, "name": n.name,
                        "promotes": " ,".join(t.strip() for t in n.tokens),
                        "message": message[-1]["content"], "response": text,
                        "accepted": bool(verdict), "parsed": verdict is not None})
    return accepted, records


def _answers(client: LLMClient, conversations, sampling: dict, mode: str) -> list[str]:
    if mode == "fixed":
        return [r.text for r in client.chat_batch(conversations, **sampling)]
    try:
        return [r.text for r in client.chat_batch(conversations, **sampling)]
    except LLMError:  # the original's bare except: each failed request is "No response"
        out = []
        for messages in conversations:
            try:
                out.append(client.chat(messages, **sampling).text)
            except LLMError:
                out.append(NO_RESPONSE)
        return out
