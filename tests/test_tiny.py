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


@pytest.mark.parametrize("acc, warns", [(0.01, True), (0.5, False)])
def test_a_warm_start_that_stops_at_its_cap_below_target_is_reported(tmp_path, monkeypatch, acc, warns):
    """A seed whose warm start hits sft_steps far below sft_target gives RL almost no reward: prepare says so (chain
    seed 4 ended at 0.003 after 3,000 steps, silently, and cost an hour)."""
    settings = dict(tiny.SETTINGS, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                    num_key_value_heads=1, n_train=40, n_eval=10, n_dev=5, sft_target=0.5)  # fmt: skip
    monkeypatch.setattr(tiny, "warm_start", lambda *args, **kwargs: acc)
    lines = []
    tiny.prepare(tmp_path, seed=0, settings=settings, log=lines.append)
    assert any("warning" in line and "below its target 0.5" in line for line in lines) == warns


def test_seed_changes_the_cached_world():
    assert tiny.cache_key(tiny.SETTINGS, 1) != tiny.cache_key(tiny.SETTINGS, 2)
    assert tiny.make_problems(100, 20, seed=1) != tiny.make_problems(100, 20, seed=2)


def test_the_tiny_world_is_unchanged_by_the_chain_world():
    """make tiny's warm start is cached under this key: a change to its settings, vocabulary or hashing would
    silently rebuild (and may change) every user's tiny world."""
    assert tiny.cache_key(tiny.SETTINGS, 42) == "c6096bdcc5fd259f"
    assert tiny.cache_key(tiny.CHAIN_SETTINGS, 42) != tiny.cache_key(tiny.SETTINGS, 42)
    assert tiny.world_words(tiny.SETTINGS) == tiny.WORD_TOKENS


# ----------------------------------------------------------------------------------------------------------------------
# The chain world (--preset tiny-chain)


@pytest.mark.parametrize(
    "a, b, steps",
    [
        (47, 38, "7+8=15, 4+3+1=8"),  # carry into the tens
        (485, 38, "5+8=13, 8+3+1=12, 4+1=5"),  # carry into the hundreds
        (85, 38, "5+8=13, 8+3+1=12"),  # a new hundreds digit: nothing to add to
        (12, 34, "2+4=6, 1+3=4"),
        (74, -38, "14-8=6, 7-1-3=3"),  # borrow
        (123, -45, "13-5=8, 12-1-4=7, 1-1=0"),  # borrow twice
        (105, -27, "15-7=8, 10-1-2=7, 1-1=0"),  # borrow through a zero
        (58, -23, "8-3=5, 5-2=3"),
        (9, 19, "9+9=18, 0+1+1=2"),  # a one-digit running value
    ],
)
def test_column_steps_by_hand(a, b, steps):
    assert tiny.column_steps(a, b) == steps


def test_chain_work_in_each_style_by_hand():
    p = "47+38-21+19=?"
    assert tiny.chain_work(p, "chain") == ["47+38=85", "85-21=64", "64+19=83"]
    assert tiny.chain_work(p, "split") == ["47+38+19=104", "104-21=83"]
    assert tiny.chain_work("47-38-12+10=?", "split") == ["47+10=57", "38+12=50", "57-50=7"]
    assert tiny.chain_work("12+34+50=?", "split") == ["12+34+50=96"]  # nothing subtracted: one step
    assert tiny.chain_work(p, "column")[1] == "85-21: 5-1=4, 8-2=6, so 64"
    with pytest.raises(ValueError, match="style"):
        tiny.chain_work(p, "guess")


def test_chain_problems_are_disjoint_with_right_answers_and_no_negative_running_value():
    train, held_out, dev = tiny.make_chain_problems(400, 100, seed=5, n_dev=50)
    problems = [r["problem"] for r in train + held_out + dev]
    assert len(set(problems)) == len(problems) == 550
    for r in train + held_out:
        terms = tiny.chain_terms(r["problem"])
        assert 3 <= len(terms) <= 5 and all(10 <= abs(t) <= 99 for t in terms)
        running = [sum(terms[: i + 1]) for i in range(len(terms))]
        assert min(running) >= 0 and int(r["answer"]) == running[-1]
    assert tiny.make_chain_problems(400, 100, seed=5) == (train, held_out)
    assert tiny.make_chain_problems(400, 100, seed=6)[0] != train


@pytest.mark.parametrize("style", ["chain", "split", "column"])
def test_chain_solutions_grade_correct_with_full_format_in_every_template(style):
    for row in tiny.make_chain_problems(40, 0, seed=2)[0]:
        for name in templates.CHAIN_TEMPLATES:
            response = tiny.chain_solution(row["problem"], row["answer"], name, style)
            wrong = str(int(row["answer"]) + 1)
            assert verify.grade(response, row["answer"]) and not verify.grade(response, wrong), (name, response)
            assert templates.format_score(name, response) == 1.0, (name, response)


def test_chain_lengths_allow_growth_and_truncation():
    """The styles differ in length by ~3x, and the longest column solutions exceed the preset's 128 tokens (so a
    policy that drifts to the long style meets truncation)."""
    tok = tiny.build_tokenizer(tiny.world_words(tiny.CHAIN_SETTINGS))
    rows = tiny.make_chain_problems(300, 0, seed=1)[0]
    mean = {}
    for style in ("chain", "split", "column"):
        lengths = [len(tok.encode(tiny.chain_solution(r["problem"], r["answer"], "chain-boxed", style))) for r in rows]
        mean[style] = sum(lengths) / len(lengths)
        if style == "column":
            assert max(lengths) > tiny.CHAIN_MAX_NEW_TOKENS > min(lengths)
    assert mean["split"] < mean["chain"] < 40 < 80 < mean["column"]


def test_chain_tokenizer_round_trip(tmp_path):
    from transformers import AutoTokenizer

    tok = tiny.build_tokenizer(tiny.world_words(tiny.CHAIN_SETTINGS))
    tiny.build_model(tok, tiny.CHAIN_SETTINGS).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    for name in templates.CHAIN_TEMPLATES:
        text = templates.render(name, "47+38-21=?") + tiny.chain_solution("47+38-21=?", "64", name, "column")
        assert again.encode(text, add_special_tokens=False) == tok.encode(text, add_special_tokens=False)
    assert len(tok.encode("Answer:", add_special_tokens=False)) == 1


def test_warm_start_batches_mix_the_styles():
    """The warm start's solutions follow settings["styles"]: every style appears, in about its share."""
    import random

    tok = tiny.build_tokenizer(tiny.world_words(tiny.CHAIN_SETTINGS))
    rows = tiny.make_chain_problems(200, 0, seed=0)[0]
    rng, seen = random.Random(0), {"chain": 0, "split": 0, "column": 0}
    for _ in range(1000):
        row = rng.choice(rows)
        text = tiny.world_solution(tiny.CHAIN_SETTINGS, row, "chain-boxed", rng)
        for style in seen:
            if text == tiny.chain_solution(row["problem"], row["answer"], "chain-boxed", style):
                seen[style] += 1
                break
    assert sum(seen.values()) == 1000
    for style, share in tiny.CHAIN_SETTINGS["styles"].items():
        assert abs(seen[style] / 1000 - share) < 0.06, seen
    ids, labels = tiny.sft_batch(tok, rows, random.Random(1), 8, tiny.CHAIN_SETTINGS)
    assert ids.shape == labels.shape and (labels != -100).any()


def test_chain_style_reads_the_first_step():
    p = "47+38-21+19=?"
    for style in tiny.STYLES:
        assert tiny.chain_style(p, tiny.chain_solution(p, "83", "chain-hash", style)) == style
    assert tiny.chain_style(p, "47+38=84; 84-21=63; 63+19=82. \\boxed{82}") == "chain"  # wrong numbers, same style
    assert tiny.chain_style(p, "83") == "other" and tiny.chain_style(p, "47+19=66") == "other"
    assert tiny.chain_style("47+38-21=?", "47+38=85; 85-21=64.") == "chain"  # split's first step is chain's too
