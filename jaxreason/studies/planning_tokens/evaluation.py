"""Evaluation by generation at the end of every epoch, as a training callback.

The original's trainer evaluates each epoch: the test prompts (ending in the prefix tokens)
are generated from with the model's default generation settings, only the generated part is
decoded (planning tokens kept, special tokens dropped) and scored, and ``eval_acc`` is logged.
Here the callback runs after every ``floor(N / 16)`` updates, saves the epoch's state
(:func:`.export.save_epoch`), decodes through the shared generation runner (results per epoch
in ``eval/epoch_<k>/results.jsonl``, resumable) and adds ``test_accuracy`` to the training
metrics. Decoding: faithful samples with the checkpoint's ``generation_config.json``
(temperature and top-p; top-k and the repetition penalty are not implemented by the runner and
are recorded as ignored; without the file transformers' default, greedy, applies), fixed
decodes greedily.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from jaxreason import atomic
from jaxreason.generation_runner import DecodeSettings, run_generation
from jaxreason.studies.planning_tokens import export
from jaxreason.studies.planning_tokens.model import with_bias
from jaxreason.tasks.planning import extract_answer, gold_answer, is_correct
from jaxreason.train.callbacks import Callback, StepInfo

EPOCHS_FILE = "epochs.jsonl"
_TYPE_RE = re.compile(r"<(memory|reason|assignment|answer|rag)_0>")


def decode_settings(config, tokenizer, base_dir: Path, longest_prompt: int,
                    position_limit: int | None) -> tuple[DecodeSettings, dict]:
    """The runner's settings and a record of where they came from."""
    gen = {}
    path = Path(base_dir) / "generation_config.json"
    if path.is_file():
        gen = json.loads(path.read_text())
    eos = gen.get("eos_token_id", tokenizer.eos_token_id)
    stops = tuple(sorted({int(t) for t in (eos if isinstance(eos, list) else [eos])
                          if t is not None} | {int(tokenizer.eos_token_id)}))
    budget = config.model_max_length - longest_prompt
    if position_limit is not None:
        budget = min(budget, position_limit - longest_prompt)
    max_new = max(1, min(config.max_new_tokens, budget))
    sample = config.sample_decoding and bool(gen.get("do_sample", False))
    temperature = float(gen.get("temperature", 1.0)) if sample else 0.0
    top_p = float(gen.get("top_p", 1.0)) if sample else 1.0
    ignored = {k: gen[k] for k in ("top_k", "repetition_penalty") if sample and k in gen}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    settings = DecodeSettings(max_new_tokens=max_new, batch_size=config.eval_batch_size,
                              temperature=temperature, top_p=top_p, seed=config.seed,
                              stop_tokens=stops, pad_token_id=int(pad))
    source = {"generation_config": str(path) if gen else None, "sampling": sample,
              "temperature": temperature, "top_p": top_p, "ignored": ignored,
              "max_new_tokens": max_new, "stop_tokens": list(stops)}
    return settings, source


def step_type_counts(text: str) -> dict[str, int]:
    """How many steps of each type a generation announces (first token of each group)."""
    counts = {"memory": 0, "reason": 0, "assignment": 0, "answer": 0}
    for t in _TYPE_RE.findall(text):
        counts["memory" if t == "rag" else t] += 1
    return counts


class EpochEvaluator:
    """The per-epoch callback of one variant (see the module docstring)."""

    def __init__(self, *, config, variant, tokenizer, template, examples, vocab, bias,
                 out_dir: Path, per_epoch: int, settings: DecodeSettings, full: bool):
        self.config, self.variant, self.tokenizer = config, variant, tokenizer
        self.template, self.examples, self.vocab = template, examples, vocab
        self.bias, self.out_dir, self.per_epoch = bias, Path(out_dir), per_epoch
        self.settings, self.full = settings, full
        self.golds = [gold_answer(ex.answer, config.dataset, config.mode) for ex in examples]

    def callback(self) -> Callback:
        return Callback(self, every=self.per_epoch, name=f"evaluate_{self.variant.name}")

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(t) for t in ids], skip_special_tokens=True)

    def evaluate(self, model, params, directory: Path) -> list[dict]:
        """Generate from every test prompt and score it; results in ``directory``."""
        config = self.config
        golds = {id(ex): g for ex, g in zip(self.examples, self.golds)}

        def score(ex, text, ids):
            gold = golds[id(ex)]
            scored = text
            if config.score_text == "full":
                scored = self.decode(list(self.template.test_prompt(ex.question)) + list(ids))
            return {"correct": is_correct(scored, gold, config.dataset, config.mode),
                    "pred": extract_answer(scored, config.dataset, config.mode), "gold": gold,
                    "step_types": step_type_counts(text)}

        out = run_generation(with_bias(model, self.bias), params, self.examples,
                             lambda ex: self.template.test_prompt(ex.question), self.settings,
                             decode=self.decode, score=score, out_dir=directory,
                             identity={"variant": self.variant.name},
                             progress=config.progress, desc=f"{self.variant.name} eval")
        return out.results

    def __call__(self, info: StepInfo) -> dict:
        epoch = info.step // self.per_epoch
        planning = self.variant.planning_tokens
        if planning:
            export.write_token_strings(self.out_dir, self.vocab.groups, self.tokenizer)
        export.save_epoch(self.out_dir / "epochs" / f"epoch_{epoch}", info.model, info.params,
                          first_id=self.vocab.rows if planning else None, bias=self.bias,
                          full=self.full)
        results = self.evaluate(info.model, info.params,
                                self.out_dir / "eval" / f"epoch_{epoch}")
        accuracy = sum(bool(r["correct"]) for r in results) / len(results)
        row = {"epoch": epoch, "step": info.step, "test_accuracy": accuracy,
               "loss": info.metrics.get("loss"), "lr": info.metrics.get("lr")}
        rows = read_epochs(self.out_dir)
        atomic.write_jsonl(self.out_dir / EPOCHS_FILE,
                           [r for r in rows if r["epoch"] != epoch] + [row])
        return {"test_accuracy": accuracy, "epoch": epoch}


def read_epochs(directory: Path) -> list[dict]:
    path = Path(directory) / EPOCHS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_results(directory: Path, epoch: int) -> list[dict]:
    path = Path(directory) / "eval" / f"epoch_{epoch}" / "results.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
