"""
Reasoning templates for prompt augmentation: plain data, one ChatML prompt format per entry.

Prompt augmentation (arXiv:2602.03190v1, Sec. 3) trains on a mix of 13 reasoning templates: every prompt gets one
template drawn uniformly at random (all G rollouts of its group share it, so group statistics stay inside one
(problem, template) pair), re-drawn every epoch. Reward = accuracy (0/1) + the template's format score in [0, 1].

Each template has four fields:
    system       the system message (the dataset's own system message is dropped)
    user_suffix  text appended right after the question, inside the user turn
    prefill      text that opens the assistant turn (the "-teacher" variants pre-open a tag)
    format       None: the format score is a constant 1.0 (it cancels inside a group);
                 a tuple of substrings: each must occur exactly once in the response, each worth an equal share.

    render(name, question)      -> the exact prompt text fed to the model
    format_score(name, response) -> float in [0, 1], scored on the response only (prompt and prefill excluded)
    draw_template(seed, epoch, index, names) -> the template of prompt `index` in `epoch` (deterministic)
"""

import random

from mathrl import BadValue

# The 13 templates of the prompt-augmentation paper, texts verbatim from its code release
# (github.com/wenquanlu/prompt-augmentation-GRPO, as decomposed in the paper's template table).
TEMPLATES = {
    'abel': dict(
        system='Please reason step by step, and put your final answer within \\boxed{}.',
        user_suffix='',
        prefill="Let's think step by step.\n",
        format=None,
    ),
    'simplerl': dict(
        system='You are a helpful assistant.',
        user_suffix='\nPlease reason step by step, and put your final answer within \\boxed{}.',
        prefill='',
        format=None,
    ),
    'qwen-math': dict(
        system='Please reason step by step, and put your final answer within \\boxed{}.',
        user_suffix='',
        prefill='',
        format=None,
    ),
    'open-r1': dict(
        system='You are a helpful AI Assistant that provides well-reasoned and detailed responses. You first think about the reasoning process as an internal monologue and then provide the user with the answer. Respond in the following format: <think>\n...\n</think>\n<answer>\n...\n</answer>\nInside the <answer>...</answer> block, the final answer must be enclosed in \\boxed{}.',
        user_suffix='',
        prefill='',
        format=('<think>\n', '\n</think>\n', '\n<answer>\n', '\n</answer>'),
    ),
    'open-r1-teacher': dict(
        system='You are a helpful AI Assistant that provides well-reasoned and detailed responses. You first think about the reasoning process as an internal monologue and then provide the user with the answer. Respond in the following format: <think>\n...\n</think>\n<answer>\n...\n</answer>\nInside the <answer>...</answer> block, the final answer must be enclosed in \\boxed{}.',
        user_suffix='',
        prefill='<think>\n',
        format=('\n</think>\n', '\n<answer>\n', '\n</answer>'),
    ),
    'deepseek-r1': dict(
        system='A conversation between User and Assistant. The User asks a question, and the Assistant solves it. The Assistant first thinks about the reasoning process in the mind and then provides the User with the answer. The reasoning process is enclosed within <think> </think> and answer is enclosed within <answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>. Inside the <answer>...</answer> block, the final answer must be enclosed in \\boxed{}.',
        user_suffix='',
        prefill='',
        format=('<think>', '</think>', '<answer>', '</answer>'),
    ),
    'deepseek-r1-teacher': dict(
        system='A conversation between User and Assistant. The User asks a question, and the Assistant solves it. The Assistant first thinks about the reasoning process in the mind and then provides the User with the answer. The reasoning process is enclosed within <think> </think> and answer is enclosed within <answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>. Inside the <answer>...</answer> block, the final answer must be enclosed in \\boxed{}.',
        user_suffix='',
        prefill='<think>',
        format=('</think>', '<answer>', '</answer>'),
    ),
    'formal': dict(
        system='You are an intelligent assistant who helps with user questions. Provide a rigorous, step-by-step derivation of the solution. The final answer must be clearly indicated within \\boxed{}.',
        user_suffix='',
        prefill='    ',
        format=None,
    ),
    'lm_eval_prompt1': dict(
        system='Solve the following math challenge. Explain your approach step-by-step\nThe answer should end with: The final answer is: \\boxed{answer}\nwhere [answer] is just the final number or expression that solves the problem',
        user_suffix='',
        prefill="Let's think step by step",
        format=('The final answer is:',),
    ),
    'lm_eval_prompt4': dict(
        system='Analyze and solve the math task.',
        user_suffix='\nEnd the answer with:\nThe final answer is: \\boxed{answer} where [answer] is just the final number or expression that solves the problem.',
        prefill='',
        format=('The final answer is:',),
    ),
    'lm_eval_prompt8': dict(
        system='Solve the following math problem\nShow each step of your solution\nPut the final answer within \\boxed{}',
        user_suffix='',
        prefill="Let's think step by step",
        format=None,
    ),
    'reflective_prompt': dict(
        system="You are a helpful assistant that solves math problems. Always write out your reasoning to produce a solution, then check whether the solution is correct, fix it if it is wrong, and finally give the final answer. Respond in exactly the following format: <solution>\nreasoning and solution\n</solution>\n<check>\nLet's verify step by step ...\n</check>\nPut your final answer within \\boxed{}.",
        user_suffix='',
        prefill='    ',
        format=('<solution>\n', '\n</solution>\n', "\n<check>\nLet's verify step by step", '\n</check>'),
    ),
    'reflective_prompt-teacher': dict(
        system="You are a helpful assistant that solves math problems. Always write out your reasoning to produce a solution, then check whether the solution is correct, fix it if it is wrong, and finally give the final answer. Respond in exactly the following format: <solution>\nreasoning and solution\n</solution>\n<check>\nLet's verify step by step ...\n</check>\nPut your final answer within \\boxed{}.",
        user_suffix='',
        prefill='<solution>\n    ',
        format=('\n</solution>\n', "\n<check>\nLet's verify step by step", '\n</check>'),
    ),
}
DEFAULT_TEMPLATE = "qwen-math"  # the single template of the no-augmentation baseline and of every evaluation

# Short templates for the tiny CPU preset (train.py --preset tiny). Same mechanism and the same four kinds of format
# as the paper's list (plain boxed, a prefilled opening, think/answer tags, "The final answer is:"), with texts
# short enough for a character-level tiny model. Written for this project.
TINY_TEMPLATES = {
    # like qwen-math: a system instruction only, constant format score
    "tiny-boxed": dict(
        system="Put the answer in \\boxed{}.",
        user_suffix="",
        prefill="",
        format=None,
    ),
    # like abel / simplerl: an instruction after the question and a prefilled opening, constant format score
    "tiny-step": dict(
        system="Solve it.",
        user_suffix="\nStep by step.",
        prefill="Step: ",
        format=None,
    ),
    # like deepseek-r1-teacher: think/answer tags, the think tag prefilled
    "tiny-think": dict(
        system="Think in <think></think>, answer in <answer></answer>.",
        user_suffix="",
        prefill="<think>",
        format=("</think>", "<answer>", "</answer>"),
    ),
    # like lm_eval_prompt4: end with "The final answer is:"
    "tiny-final": dict(
        system="End with: The final answer is: \\boxed{}",
        user_suffix="",
        prefill="",
        format=("The final answer is:",),
    ),
}
TINY_DEFAULT_TEMPLATE = "tiny-boxed"

# Templates of the chain world (train.py --preset tiny-chain, tiny.py): multi-step arithmetic with a scratchpad. Five
# that differ the way the paper's 13 do: where the answer goes (a box, tags, a phrase, an "Answer:" line, "####"), a
# numbered step list with a prefilled opening, and think/answer tags. Written for this project.
CHAIN_TEMPLATES = {
    "chain-boxed": dict(  # like qwen-math: the answer boxed, constant format score
        system="Put the answer in \\boxed{}.",
        user_suffix="",
        prefill="",
        format=None,
    ),
    "chain-think": dict(  # like deepseek-r1-teacher: think/answer tags, the think tag prefilled
        system="Think in <think></think>, answer in <answer></answer>.",
        user_suffix="",
        prefill="<think>",
        format=("</think>", "<answer>", "</answer>"),
    ),
    "chain-final": dict(  # like lm_eval_prompt4: end with "The final answer is:"
        system="End with: The final answer is: \\boxed{}",
        user_suffix="",
        prefill="",
        format=("The final answer is:",),
    ),
    "chain-list": dict(  # a numbered step list, prefilled, the answer on its own line, unboxed
        system="Solve it in numbered steps.",
        user_suffix="\nOne step per line, then Answer:",
        prefill="Step 1: ",
        format=("\nAnswer: ",),
    ),
    "chain-hash": dict(  # like GSM8K: the working, then "#### answer"
        system="Show the working, then #### and the answer.",
        user_suffix="",
        prefill="",
        format=("\n#### ",),
    ),
}
CHAIN_DEFAULT_TEMPLATE = "chain-boxed"

ALL_TEMPLATES = {**TEMPLATES, **TINY_TEMPLATES, **CHAIN_TEMPLATES}
TEMPLATE_SETS = {"all": TEMPLATES, "tiny": TINY_TEMPLATES, "chain": CHAIN_TEMPLATES}  # --templates names of whole sets


def get_template(name: str) -> dict:
    """The template called `name`, or a ValueError that lists the known names."""
    if name not in ALL_TEMPLATES:
        raise BadValue(f"unknown template {name!r}; known templates: {', '.join(ALL_TEMPLATES)}")
    return ALL_TEMPLATES[name]


def render(name: str, question: str) -> str:
    """The exact ChatML prompt: system turn, user turn (question + suffix), then the open assistant turn + prefill."""
    t = get_template(name)
    return (
        f"<|im_start|>system\n{t['system']}<|im_end|>\n"
        f"<|im_start|>user\n{question}{t['user_suffix']}<|im_end|>\n"
        f"<|im_start|>assistant\n{t['prefill']}"
    )


def format_score(name: str, response: str) -> float:
    """Format reward in [0, 1] of a response (without prompt or prefill), arXiv:2602.03190v1 Sec. 3.

    Constant-format templates score 1.0. Otherwise each listed substring that occurs exactly once earns an equal
    share 1/k (a missing or repeated tag earns nothing), so a perfectly formatted response scores 1.0.
    """
    substrings = get_template(name)["format"]
    if substrings is None:
        return 1.0
    return sum(response.count(s) == 1 for s in substrings) / len(substrings)


def draw_template(seed: int, epoch: int, index: int, names: list[str]) -> str:
    """Uniform draw of one template for prompt `index` in `epoch`, the same for every sample of its group.

    The draw depends only on (seed, epoch, index), so a resumed run draws exactly what the uninterrupted run would
    have, and a new epoch re-draws (arXiv:2602.03190v1 Sec. 3: "re-drawn every epoch").
    """
    if not names:
        raise ValueError("draw_template needs at least one template name")
    return random.Random(f"{seed}/{epoch}/{index}").choice(names)
