"""The word-problem world's tokenizer, saved as an ordinary HuggingFace tokenizer directory.

The studies load real models with ``AutoTokenizer.from_pretrained(dir)``; a model trained on
this world is loaded the same way (no remote code), so one code path serves both.

Model: a ``WordLevel`` vocabulary over the world's closed set of pieces. Pre-tokenization,
in order: ``"\\n\\n"`` (the blank line that ends a solution) is isolated so it is always one
token, the one the evaluation stops on; then GPT-2's byte-level split (a word carries the
space before it, ``"Ġeggs"``; ``"Let's"`` is ``Let`` + ``'s``); then every digit alone
(``Digits(individual_digits=True)``), so ``" 36"`` is ``Ġ`` ``3`` ``6`` and every number of
the world is spelled from ten digit tokens. The byte-level decoder joins the pieces back,
and ``clean_up_tokenization_spaces`` is off, so decode(encode(text)) == text for every text
of the world, exactly (no normalisation at all).

Specials: ``<pad>`` 0, ``<s>`` 1 (BOS, prepended by ``encode``/``__call__`` unless
``add_special_tokens=False``, as Llama's tokenizer does), ``</s>`` 2, ``<unk>`` 3 (a piece
outside the world). Padding is on the left, as decoding wants.

The vocabulary is every piece of every text the world produces over all its splits (each
variant, incorrect chain, choice argument and tagged step) plus every lexicon word with and
without its leading space, sorted, so it is deterministic and covers new draws too.
"""

from __future__ import annotations

import functools
import os
import random
import re
from pathlib import Path

from jaxreason import atomic
from jaxreason.tasks import word_problem_lexicon as lex
from jaxreason.tasks import word_problem_variants as wv
from jaxreason.tasks.word_problems import make_splits

SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
PAD, BOS, EOS, UNK = SPECIALS
STOP_TEXT = "\n\n"  # the token that ends a solution


def _pre_tokenizer():
    from tokenizers import Regex, pre_tokenizers as pt  # only when a tokenizer is built

    return pt.Sequence([pt.Split(Regex(r"\n\n"), "isolated"),
                        pt.ByteLevel(add_prefix_space=False, use_regex=True),
                        pt.Digits(individual_digits=True)])


def world_texts() -> list[str]:
    """Every kind of text the world writes, over every problem of every split."""
    texts: list[str] = []
    rng = random.Random(0)
    for name, problems in make_splits().items():
        for p in problems:
            texts.append(p.text)
            texts += [wv.demonstration(p, t, rng) for t in wv.PROMPT_TYPES]
            texts.append("\n".join(wv.tagged_steps(p)))
            c = wv.choice_example(p, rng)
            texts += [c.argument, c.candidate_1, c.candidate_2]
    words = (lex.NAMES + lex.OOD_NAMES + lex.ALL_OBJECTS + lex.CONTAINERS + lex.GIVE_VERBS
             + lex.TAKE_VERBS + tuple(v for v, _ in lex.RATE_ACTIVITIES))
    words += tuple(w for f in lex.PART_FACTS for w in (f.singular, f.plural, f.part))
    texts += [f"{w}\n {w}" for w in words]
    texts.append("0123456789 \n")
    return texts


@functools.lru_cache(maxsize=1)
def world_vocab() -> dict[str, int]:
    """Piece -> id: the specials, then the sorted pieces of :func:`world_texts`."""
    pre = _pre_tokenizer()
    # digits are single pieces, so lines that differ only in their digits split alike:
    # pre-tokenize each distinct digit pattern once (the tokenizer is slow per call)
    lines = {re.sub(r"[0-9]", "0", line) for text in world_texts() for line in text.split("\n")}
    pieces = {"\u010a", "\u010a\u010a", *"0123456789"}  # byte-level "\n" and "\n\n"
    for line in sorted(lines):
        pieces.update(piece for piece, _ in pre.pre_tokenize_str(line))
    return {tok: i for i, tok in enumerate(SPECIALS + tuple(sorted(pieces - set(SPECIALS))))}


def build_world_tokenizer():
    """A ``transformers.PreTrainedTokenizerFast`` over :func:`world_vocab`."""
    from tokenizers import Tokenizer, decoders, models, processors  # only when building
    from transformers import PreTrainedTokenizerFast  # seconds to import: only when building

    vocab = world_vocab()
    core = Tokenizer(models.WordLevel(dict(vocab), unk_token=UNK))
    core.pre_tokenizer = _pre_tokenizer()
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, vocab[BOS])])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, eos_token=EOS,
                                   pad_token=PAD, unk_token=UNK, padding_side="left",
                                   clean_up_tokenization_spaces=False,
                                   model_max_length=4096)


def save_world_tokenizer(directory: str | os.PathLike):
    """Write the tokenizer to ``directory`` atomically (a complete directory or the old one)
    and return it as loaded back from there."""
    from transformers import AutoTokenizer  # seconds to import: only when saving

    target = Path(directory).expanduser()
    with atomic.building_dir(target) as tmp:
        build_world_tokenizer().save_pretrained(str(tmp))
    return AutoTokenizer.from_pretrained(str(target), local_files_only=True)


def stop_token_id(tokenizer) -> int:
    """The id of the blank line that ends every solution."""
    ids = tokenizer.encode(STOP_TEXT, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"the tokenizer splits {STOP_TEXT!r} into {ids}; the world needs one "
                         "token for the blank line that ends a solution")
    return ids[0]
