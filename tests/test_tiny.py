"""tiny.py: the tokenizer survives save/load (same ids), the task and its worked solutions are right, data is disjoint."""

import pytest

from mathrl import templates
from mathrl import tiny
from mathrl import verify


def test_tokenizer_round_trip_keeps_every_id(tmp_path):
    """transformers loads a qwen2 folder with Qwen2Tokenizer whatever tokenizer_config.json says; the tiny tokenizer
    must come back identical, or the cached warm start would be fed different ids at RL time."""
    from transformers import AutoTokenizer

    tok = tiny.build_tokenizer()
    tiny.build_model(tok).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    for name in templates.TINY_TEMPLATES:
        text = templates.render(name, "47+38=?") + tiny.worked_solution("47+38=?", "85", name) + "<|im_end|>"
        ids = tok.encode(text, add_special_tokens=False)
        assert again.encode(text, add_special_tokens=False) == ids
        assert again.decode(ids, skip_special_tokens=True) == tok.decode(ids, skip_special_tokens=True)
    assert (again.eos_token, again.pad_token, len(again)) == ("<|im_end|>", "<|endoftext|>", len(tok))


def test_characters_are_single_tokens_and_tags_are_one_token():
    tok = tiny.build_tokenizer()
    assert tok.convert_ids_to_tokens(tok.encode("47+38=?", add_special_tokens=False)) == list("47+38=?")
    assert len(tok.encode("\\boxed{", add_special_tokens=False)) == 1
    assert len(tok.encode("The final answer is:", add_special_tokens=False)) == 1
    assert tok.decode(tok.encode("a b\nc", add_special_tokens=False)) == "a b\nc"


def test_model_head_is_padded_beyond_the_tokenizer():
    tok = tiny.build_tokenizer()
    config = tiny.build_config(tok)
    assert config.vocab_size % 16 == 0 and config.vocab_size > len(tok)


@pytest.mark.parametrize(
    "problem, steps",
    [
        ("47+38=?", "7+8=15, 4+3+1=8."),  # carry
        ("12+34=?", "2+4=6, 1+3=4."),  # no carry
        ("74-38=?", "14-8=6, 7-1-3=3."),  # borrow
        ("58-23=?", "8-3=5, 5-2=3."),  # no borrow
    ],
)
def test_worked_steps_by_hand(problem, steps):
    assert tiny.worked_steps(problem) == steps


def test_worked_solutions_grade_correct_in_every_template_format():
    for name in templates.TINY_TEMPLATES:
        response = tiny.worked_solution("74-38=?", "36", name)
        assert verify.grade(response, "36") and not verify.grade(response, "35")
        assert templates.format_score(name, response) == 1.0


def test_problems_are_disjoint_and_answers_right():
    train, held_out, dev = tiny.make_problems(500, 100, seed=3, n_dev=50)
    assert (len(train), len(held_out), len(dev)) == (500, 100, 50)
    problems = [r["problem"] for r in train + held_out + dev]
    assert len(set(problems)) == len(problems)
    for r in train[:50]:
        a, op, b = r["problem"][:2], r["problem"][2], r["problem"][3:5]
        assert int(r["answer"]) == (int(a) + int(b) if op == "+" else int(a) - int(b)) >= 0
    assert tiny.make_problems(500, 100, seed=3) == (train, held_out)  # dev is drawn after: same train/held-out


def test_warm_start_checks_coarsely_then_finely_and_stops_at_the_target(monkeypatch):
    """Dev checks every sft_check_every steps until the accuracy is within sft_fine_margin of the target, then every
    sft_check_fine steps (even after a dip back below the margin), and the first check at the target stops it."""
    settings = dict(tiny.SETTINGS, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                    num_key_value_heads=1, sft_batch=2, sft_steps=200, sft_check_every=25, sft_check_fine=5,
                    sft_fine_margin=0.25, sft_target=0.5)  # fmt: skip
    script = iter([0.0, 0.3, 0.2, 0.45, 0.55, 0.9])  # step 25, 50 (near: 0.3 >= 0.25), 55 (dip), 60, 65 (stop)
    monkeypatch.setattr(tiny, "dev_accuracy", lambda model, tokenizer, rows: next(script))
    steps = []
    tok = tiny.build_tokenizer()
    train, _, dev = tiny.make_problems(50, 5, seed=0, n_dev=5)
    acc = tiny.warm_start(tiny.build_model(tok, settings), tok, train, dev, settings, seed=0,
                          log=lambda line: steps.append(int(line.split()[3])))  # fmt: skip
    assert steps == [25, 50, 55, 60, 65] and acc == 0.55


def test_seed_changes_the_cached_world():
    assert tiny.cache_key(tiny.SETTINGS, 1) != tiny.cache_key(tiny.SETTINGS, 2)
    assert tiny.make_problems(100, 20, seed=1) != tiny.make_problems(100, 20, seed=2)
