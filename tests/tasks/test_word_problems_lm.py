"""The word_problems training task (packed rows, loss mask, held-out questions), the
world_base config, and a tiny train -> HF export -> few-shot eval run."""

import re
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from jaxreason.data import build_dataset
from jaxreason.tasks import word_problem_variants as wv
from jaxreason.tasks.word_problems import held_out_questions, make_splits
from jaxreason.tasks.word_problems_eval import balanced, evaluate_prompt_type, parse_answer
from jaxreason.tasks.word_problems_lm import draw_problems, iter_problems, pack_rows
from jaxreason.tasks.world_tokenizer import build_world_tokenizer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tok():
    return build_world_tokenizer()


@pytest.fixture(scope="module")
def packed(tok):
    problems = draw_problems(200, seed=5, exclude=held_out_questions())
    return problems, pack_rows(problems, tok, rows=12, seq_len=512)


def test_rows_hold_whole_problems_and_the_loss_covers_solutions_only(tok, packed):
    problems, (tokens, attn, loss) = packed
    used = iter(problems)
    for r in range(len(tokens)):
        n = int(attn[r].sum())
        assert tokens[r, 0] == tok.bos_token_id and not attn[r, n:].any()
        assert (tokens[r, n:] == tok.pad_token_id).all() and not loss[r, n:].any()
        text = tok.decode(tokens[r, 1:n].tolist())
        chunks = text.split("\n\n")[:-1]
        assert text.endswith("\n\n") and chunks
        expected = [next(used) for _ in chunks]
        assert text == "".join(p.text for p in expected)  # in order, none split
        # the masked positions are exactly the solutions, the rest BOS + the prompts
        masked = loss[r, :n].astype(bool)
        edges = np.flatnonzero(np.diff(np.r_[0, masked.astype(int), 0]))
        spans = [tok.decode(tokens[r, a:b].tolist()) for a, b in zip(edges[::2], edges[1::2])]
        assert spans == [p.solution for p in expected]
        assert tok.decode(tokens[r, :n][~masked].tolist(), skip_special_tokens=True) == \
            "".join(p.prompt for p in expected)


def test_a_stream_is_packed_like_the_list_and_running_out_is_an_error(tok, packed):
    problems, arrays = packed
    stream = pack_rows(iter_problems(5, held_out_questions()), tok, rows=12, seq_len=512)
    assert all(np.array_equal(a, b) for a, b in zip(stream, arrays))
    with pytest.raises(ValueError, match="3 problems fill only 1 of 5 rows"):
        pack_rows(problems[:3], tok, rows=5, seq_len=512)


def test_question_weight_weighs_the_question_tokens_only(tok, packed):
    problems, (tokens, attn, loss) = packed
    _, _, weighted = pack_rows(problems, tok, rows=12, seq_len=512, question_weight=0.3)
    solution = loss == 1.0
    assert (weighted[solution] == 1.0).all()
    question = (attn == 1) & ~solution
    question[:, 0] = False  # BOS stays out of the loss
    assert (weighted[question] == np.float32(0.3)).all()
    assert not weighted[~question & ~solution].any()
    with pytest.raises(ValueError, match="question_weight=1.5"):
        build_dataset("word_problems", seed=0, rows=2, seq_len=640, question_weight=1.5)


def test_training_stream_skips_held_out_questions(tok):
    held = held_out_questions()
    test_qs = {p.question for p in make_splits()["test"]}
    ds = build_dataset("word_problems", seed=0, rows=30, seq_len=640)
    questions = set()
    for row in ds.arrays["tokens"]:
        questions |= set(re.findall(r"Question: (.*)\n", tok.decode(row.tolist(),
                                                                    skip_special_tokens=True)))
    assert len(questions) > 100 and not questions & held
    assert test_qs <= held


def test_task_rejects_bad_arguments():
    with pytest.raises(ValueError, match="step_counts"):
        build_dataset("word_problems", seed=0, rows=2, step_counts=[5])
    with pytest.raises(ValueError, match="too short"):
        build_dataset("word_problems", seed=0, rows=2, seq_len=40)


def test_parse_answer():
    assert parse_answer("So 2 + 3 = 5.\nThe answer is 5.\n\n") == 5
    assert parse_answer("The answer is Dawson.\n\n") is None
    assert parse_answer("So 2 + 3 = 5.") is None


def test_world_base_config_fits_the_prompts(tok):
    from jaxreason.train.config import load_train_config

    cfg = load_train_config(ROOT / "configs/world_base.yaml")
    model = cfg.model.overrides
    assert model["vocab_size"] >= len(tok)
    seq = cfg.data.task_args["seq_len"]
    assert seq <= model["max_position_embeddings"]
    test = make_splits()["test"]
    longest_q = max(len(tok(p.prompt, add_special_tokens=False)["input_ids"]) for p in test)
    longest_s = max(len(tok(p.solution, add_special_tokens=False)["input_ids"]) for p in test)
    for t in wv.PROMPT_TYPES:  # the 4-shot eval prompt (with BOS), the question and the
        # longest gold solution stay in the trained positions: a right answer never needs an
        # untrained one (the eval's max_new_tokens=120 only caps continuations that ramble)
        prefix = len(tok(wv.few_shot_prompt(t, 4))["input_ids"])
        assert prefix + longest_q + longest_s <= seq, t
    assert cfg.checkpoint.export_hf and cfg.checkpoint.export_tokenizer == \
        cfg.data.task_args["tokenizer_dir"]


def test_tiny_training_exports_a_local_checkpoint_that_evaluates(tmp_path):
    from jaxreason.models import load_pretrained
    from jaxreason.train.config import load_train_config
    from jaxreason.train.loop import main

    run = tmp_path / "run"
    cfg = load_train_config(ROOT / "configs/world_base.yaml", [
        "--model.overrides={vocab_size: 256, hidden_size: 32, num_layers: 1, num_heads: 2, "
        "kv_heads: 2, intermediate_size: 64, max_position_embeddings: 640}",
        f"--data.task_args={{rows: 24, seq_len: 640, tokenizer_dir: {tmp_path / 'tok'}}}",
        "--data.eval_fraction=0.1", "--data.eval_batches=1", "--schedule.warmup_steps=2",
        "--trainer.steps=20", "--trainer.eval_every=20", "--trainer.progress=false",
        "--trainer.plot=false", f"--trainer.run_dir={run}", "--checkpoint.save_every=0",
        f"--checkpoint.export_tokenizer={tmp_path / 'tok'}"])
    result = main(cfg)
    assert result["final_step"] == 20 and np.isfinite(result["loss"])
    model, params = load_pretrained(run / "hf")
    tok = AutoTokenizer.from_pretrained(str(run / "hf"), local_files_only=True)
    assert tok.get_vocab() == build_world_tokenizer().get_vocab()
    problems = balanced(make_splits()["test"], 1)
    res = evaluate_prompt_type(model, params, tok, problems, "equation_only", n_shots=2,
                               batch_size=4, max_new_tokens=6)
    assert set(res["by_steps"]) == {1, 2, 3, 4} and len(res["continuations"]) == 4
    assert 0.0 <= res["accuracy"] <= 1.0
    wrong = sum(pred != p.answer for pred, p in zip(res["predictions"], problems))
    assert sum(res["first_errors"].values()) == wrong  # every wrong answer is classified
