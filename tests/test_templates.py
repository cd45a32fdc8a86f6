"""Templates: byte-for-byte against the paper's rendered texts, format scores by hand, the per-prompt draw.

Run: python -m pytest -q tests/test_templates.py
"""

import json
from collections import Counter

import pytest

from mathrl import templates
from conftest import shared_path

QUESTIONS = ["What is $1+1$?", "Let $f(x)=\\frac{x^2+1}{\\sqrt{x-3}}$.\nFind {QUESTION} and $\\{1, 2\\}$.  ", ""]


def reference_templates():
    return json.loads(shared_path("reference", "templates.json").read_text())["templates"]


def test_thirteen_templates_render_byte_for_byte():
    ref = reference_templates()
    assert [t["name"] for t in ref] == list(templates.TEMPLATES)
    for t in ref:
        for q in QUESTIONS:
            assert templates.render(t["name"], q) == t["rendered"].replace("{QUESTION}", q, 1), t["name"]


def test_format_rules_match_reference():
    for t in reference_templates():
        rule, ours = t["format_reward"], templates.TEMPLATES[t["name"]]["format"]
        if rule["kind"] == "constant":
            assert ours is None and rule["value"] == 1.0
        else:
            assert rule["kind"] == "each_substring_exactly_once"
            assert list(ours) == rule["substrings"]
            assert rule["weight_each"] == pytest.approx(1 / len(ours), abs=1e-6)


@pytest.mark.parametrize(
    "name, response, expected",
    [
        ("qwen-math", "", 1.0),  # constant rule: 1 whatever the response
        ("abel", "no box at all", 1.0),
        ("open-r1", "<think>\nx\n</think>\n<answer>\n\\boxed{2}\n</answer>", 1.0),
        ("open-r1", "<think>\nx\n</think>\n<answer>\n\\boxed{2}", 0.75),  # no closing answer tag
        ("open-r1", "<think>x</think><answer>2</answer>", 0.0),  # tags without the required newlines
        ("open-r1", "<think>\na\n</think>\n<think>\nb\n</think>\n<answer>\n2\n</answer>", 0.5),  # think twice: 0 each
        ("open-r1-teacher", "x\n</think>\n<answer>\n2\n</answer>", 1.0),  # prefill excluded: no opening tag needed
        ("deepseek-r1", "<think> r </think> <answer> 2 </answer>", 1.0),
        ("deepseek-r1-teacher", " r </think> <answer> 2", 2 / 3),
        ("lm_eval_prompt1", ". The final answer is: \\boxed{2}", 1.0),
        ("lm_eval_prompt4", "The final answer is: 2. The final answer is: 2", 0.0),  # twice is not exactly once
        ("reflective_prompt", "<solution>\ns\n</solution>\n<check>\nLet's verify step by step: ok\n</check>", 1.0),
        ("reflective_prompt-teacher", "s\n</solution>\n", 1 / 3),
        ("tiny-think", "1+2=3</think><answer>\\boxed{3}</answer>", 1.0),
        ("tiny-final", "3", 0.0),
    ],
)
def test_format_score_hand_computed(name, response, expected):
    assert templates.format_score(name, response) == pytest.approx(expected)


def test_tiny_templates_share_the_formats():
    assert templates.TINY_DEFAULT_TEMPLATE in templates.TINY_TEMPLATES
    kinds = {t["format"] is None for t in templates.TINY_TEMPLATES.values()}
    assert kinds == {True, False}  # both constant and substring rules are exercised on CPU
    for name, t in templates.TINY_TEMPLATES.items():
        assert templates.render(name, "2+3").endswith("<|im_start|>assistant\n" + t["prefill"])


def test_unknown_template_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown template 'qwen'"):
        templates.render("qwen", "1+1")


def test_draw_is_deterministic_uniform_and_redrawn_each_epoch():
    names = list(templates.TEMPLATES)
    draw = [templates.draw_template(1, 0, i, names) for i in range(2600)]
    assert draw == [templates.draw_template(1, 0, i, names) for i in range(2600)]  # same seed, same draw (resume)
    counts = Counter(draw)
    assert set(counts) == set(names)
    assert all(150 <= c <= 250 for c in counts.values())  # 200 expected each; a 5-sigma band
    next_epoch = [templates.draw_template(1, 1, i, names) for i in range(2600)]
    other_seed = [templates.draw_template(2, 0, i, names) for i in range(2600)]
    # a fresh draw agrees with the old one on about 1/13 of the prompts, never on all
    assert sum(a == b for a, b in zip(draw, next_epoch)) < 400
    assert sum(a == b for a, b in zip(draw, other_seed)) < 400
    with pytest.raises(ValueError):
        templates.draw_template(0, 0, 0, [])
