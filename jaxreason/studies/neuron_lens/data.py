"""The problems and prompt texts the neuron-lens study runs on, from GSM8K or the embedded world.

Both sources come out in one shape, so everything downstream (prompt assembly, parsing,
sampling, ablation) is the same code: GSM8K problems as :func:`read_gsm8k` returns them and
one prompt text per prompt type, as a prompt file would hold it. The embedded world's
problems become the same :class:`GSM8KProblem` records (the gold chain of thought, then
``#### N``), and its demonstrations of each prompt type are written as the text of a prompt
file (the blank line after the last demonstration left off, as in the original's files), so
:func:`jaxreason.tasks.gsm8k.build_prompt` gives exactly the layout the world's base model
was trained on.

Sampling for the dominant-neuron extraction follows the original: the questions answered
correctly, in data order, whitespace-collapsed, shuffled with Python's ``random.seed(42)``,
the first 20 kept.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Sequence

from jaxreason.tasks.readers.gsm8k import GSM8KProblem, read_gsm8k
from jaxreason.tasks import gsm8k
from jaxreason.tasks.word_problem_variants import few_shot_prompt
from jaxreason.tasks.word_problems import make_splits


@dataclasses.dataclass(frozen=True)
class StudyData:
    problems: list[GSM8KProblem]
    prompts: dict[str, str]  # prompt type -> prompt file text
    source: str  # "gsm8k" or "world"
    description: str


def world_problem_records(split: str = "test") -> list[GSM8KProblem]:
    """The world's problems of ``split`` as GSM8K records (gold chain, then ``#### N``)."""
    splits = make_splits()
    if split not in splits:
        raise ValueError(f"unknown world split {split!r}; known: {list(splits)}")
    return [GSM8KProblem(p.question, p.solution.rstrip() + f"\n#### {p.answer}",
                         p.solution.rstrip(), p.answer, i + 1)
            for i, p in enumerate(splits[split])]


def world_prompt_text(prompt_type: str, n_shots: int, seed: int = 0) -> str:
    """The world's demonstrations of ``prompt_type`` as a prompt file holds them."""
    return few_shot_prompt(prompt_type, n_shots, seed=seed).rstrip("\n")


def load_data(config) -> StudyData:
    """The configured problems (capped at ``num_problems``) and prompt texts."""
    if config.data_path:
        problems = read_gsm8k(config.data_path, split=config.data_split)
        prompts = gsm8k.read_prompt_files(config.prompt_dir, config.prompt_types)
        source, what = "gsm8k", f"GSM8K from {config.data_path}, prompts from {config.prompt_dir}"
    else:
        problems = world_problem_records("test")
        prompts = {t: world_prompt_text(t, config.world_shots, config.world_demo_seed)
                   for t in config.prompt_types}
        source = "world"
        what = (f"the embedded world's test split, {config.world_shots} demonstrations per "
                f"prompt type (demo seed {config.world_demo_seed})")
    if config.num_problems is not None:
        problems = problems[:config.num_problems]
    return StudyData(problems, prompts, source, what)


def sample_correct(problems: Sequence[GSM8KProblem], correct: Sequence[bool], n: int = 20,
                   seed: int = 42) -> list[int]:
    """Indices of ``n`` correctly answered problems, picked as the original does: the
    correct questions in data order, ``random.seed(seed)``, ``random.shuffle``, the first
    ``n``. The module-level generator is used (as the original does) and its state is
    restored afterwards."""
    chosen = [i for i, ok in enumerate(correct) if ok]
    state = random.getstate()
    try:
        random.seed(seed)
        random.shuffle(chosen)
    finally:
        random.setstate(state)
    return chosen[:n]
