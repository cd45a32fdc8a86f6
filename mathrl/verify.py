"""
Answer verification for math RL: pull the final answer out of a model response and decide whether it equals the gold
answer. A false positive is the error RL learns to exploit, so a step says "equal" only when it is sure; anything else
(an answer it cannot read, an error, the time limit) is False. docs/verifier.md explains each rule with examples.

    python -m mathrl.verify PRED GOLD                        # the verdict and the rule that decided it
    python -m mathrl.verify --response "...\\boxed{1/2}" 0.5  # extract the answer from a full response first

What it is: a parser of its own with exact arithmetic, and sympy last. Answers are read by the recursive-descent
parser below (not by sympy's or antlr's LaTeX parsing: slow, and their silent mis-parses are false positives); every
number is an exact fraction; mpmath evaluates what is not rational (113 bits, an "equal" re-checked at 400 or more);
sympy's simplify decides only when evaluation at random points is inconclusive.

Map: the sections below, in the order a call takes them.
    Public API       extract_answer, is_equivalent, explain, grade          (many responses at once: grading.py)
    1. Extraction    _extract: the last box (boxes joined), <answer> tag, answer phrase, else the closing value
    2. Decision      _decide: the order of the checks (normalised strings, choice letters, clock times, words, trees)
    3. Normalisation _normalize: delimiters, wrappers, units, degrees, percent, separators -> one plain string
    4. Parsing       _Parser: LaTeX or plain text -> a tree of tuples (kind, *fields)
    5. Structure     _equal: tuples, sets, intervals, matrices, labels, relations, \\pm; scalars go to step 6
    6. Scalars       _scalar_equal: exact rationals, else mpmath (the tolerance policy), else sympy
    Time limit       _limited: each public call runs under a hard wall-clock limit (SIGALRM, or a timer thread)
"""

import argparse
import ctypes
import functools
import math
import random
import re
import signal
import sys
import threading
import time
from fractions import Fraction

import mpmath


# ----------------------------------------------------------------------------------------------------------------------
# Limits and tolerances (one source of truth)

DEFAULT_TIMEOUT = 5.0  # seconds per call (the paper's reward also gives up after 5 s and scores 0)
MAX_ANSWER_CHARS = 1500  # longer answers are only compared as normalised strings (gold answers in the data: <= 204)
CLOSING_CHARS = 4000  # joined boxes and an unboxed answer are looked for in the response's last 4000 characters
MAX_TOKENS = 600  # a parsed answer has at most this many tokens
MAX_DEPTH = 40  # nesting depth of brackets/braces the parser accepts
MAX_BITS = 100_000  # largest exact integer (numerator/denominator) built during evaluation, ~30,000 digits
MAX_FACTORIAL = 3000  # n! exactly up to this n (3000! has ~30,000 bits)
MAX_MAG = 1_000_000  # |value| < 2**MAX_MAG for floating evaluation (mpmath's exponent), else "too big"
REL_TOL_DECIMAL = 1e-6  # relative tolerance when a side is written as a decimal and neither side is an integer
REL_TOL_EXACT = 1e-25  # "identical" at 113-bit precision: the noise of evaluating exact expressions
MAX_CONFIRM_BITS = 20_000  # most bits an "equal" re-check may take (see _confirmed); beyond, the answer is False
N_POINTS = 4  # random points for expressions with variables
MAX_PM_VALUES = 8  # an answer with \pm stands for at most this many values

_MP = mpmath.MPContext()  # a private mpmath context: never touches the caller's mpmath.mp precision
_MP.prec = 113  # quad precision, ~34 significant digits
_MP_HI = mpmath.MPContext()  # a second context for re-checking "equal" verdicts; precisions never change (thread-safe)
_MP_HI.prec = 400


class _Timeout(BaseException):
    """Raised inside a verification that ran past its time limit.

    A BaseException, so that a library's `except Exception` cannot swallow it."""


class _TooBig(Exception):
    """A number would be too large to build or evaluate in bounded time."""


class _ParseError(Exception):
    """The answer is not LaTeX/plain maths this parser understands."""


# ----------------------------------------------------------------------------------------------------------------------
# Public API (batch grading over worker processes: grading.py)


def extract_answer(text: str, strict: bool = False, boxed_only: bool = False) -> str | None:
    """The final answer of a model response, or None.

    Cut at the first </answer>; with boxed_only the last \\boxed{}/\\fbox{} (nested braces) or nothing. Otherwise also
    cut at the first chat-template marker (<|im_start|>, <|im_end|>, ...: what follows is not this response), then:
    the last box together with the boxes just before it that only a connector separates from it ("\\boxed{1},
    \\boxed{2}" -> "1, 2", see _joins; one box gives its content as before); the content of <answer>...</answer>; what
    follows "The final answer is: ..." / "the answer is ..."; and, unless strict, the closing value (_closing_value:
    the last math span, or a number after it). The string is returned as written; is_equivalent does the normalisation
    (see _normalize).
    """
    return _extract(text, strict, boxed_only)[0]


def is_equivalent(pred: str, gold: str, timeout: float = DEFAULT_TIMEOUT) -> bool:
    """Whether the bare answer `pred` equals the bare answer `gold` (LaTeX or plain text).

    False when unsure, on any error, and when the time limit runs out."""
    return _limited(lambda: _decide(pred, gold)[0], (), timeout, False)


def explain(pred: str, gold: str, timeout: float = DEFAULT_TIMEOUT) -> tuple[bool, str]:
    """(verdict, the rule that decided it): what the command line prints."""
    return _limited(lambda: _decide(pred, gold), (), timeout, (False, f"time limit of {timeout} s reached"))


def grade(
    response: str, gold, strict: bool = False, boxed_only: bool = False, timeout: float = DEFAULT_TIMEOUT
) -> bool:
    """Extract the answer of `response` and compare it with `gold` (a string, a number, or a list: any of them)."""
    return _limited(_grade, (response, gold, strict, boxed_only), timeout, False)


def _grade(response: str, gold, strict: bool, boxed_only: bool) -> bool:
    pred = extract_answer(response, strict=strict, boxed_only=boxed_only)
    if pred is None:
        return False
    golds = list(gold) if isinstance(gold, (list, tuple)) else [gold]
    return any(_decide(pred, g)[0] for g in golds if g is not None)


# ----------------------------------------------------------------------------------------------------------------------
# 1. Extraction: extract_answer -> _extract (last box, <answer> tag, answer phrase, closing value)

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])\s*")
_PHRASE_RE = re.compile(
    r"(?im)(?:\b(?:final answer|the answer|the correct (?:answer|option|choice))(?:\s+is\b\s*:?|\s*:)"
    r"|(?:最终)?答案\s*(?:是|为|[:：])\s*:?"  # Chinese: "答案是", "最终答案为", "答案："
    r"|\b(?:la\s+)?réponse(?:\s+finale)?(?:\s+est\b\s*:?|\s*:)"  # French: "la réponse (finale) est"
    r"|^[ \t*#]*answer[ \t]*\**[ \t]*:\**"
    # PRM800K's "# Answer" heading with a bare answer on the line below (a sentence there is left to the closing value)
    r"|^[ \t]*#+[ \t]*(?:final[ \t]+)?answer[ \t]*:?[ \t]*\n\s*"
    r"(?=(?:[^a-zA-Z\n]|\\[a-zA-Z]+|(?<![a-zA-Z])[a-zA-Z]{1,2}(?![a-zA-Z]))+$)"
    r"|^[ \t]*####(?=[ \t]*\$?-?\d[\d,.]*\$?\s*\Z))[ \t]*"  # GSM8K's closing "#### 18" (not a "#### 1" heading)
)
_LAST_NUMBER_RE = re.compile(r"(?:(?<=[\s=(\[$:])-|^-)?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+|(?::\d+)+)?")  # 3/4, 2:5
_CHAT_MARKER_RE = re.compile(  # the end of the model's turn: ChatML, Llama 3, DeepSeek's <｜end▁of▁sentence｜>
    r"<[|\uff5c][^<>|\uff5c\n]{1,40}[|\uff5c]>|</s>|\n\s*(?:Human|User):"
)
_MATH_RE = re.compile(
    r"\\begin\{(?:align|equation|gather)\*?\}(.{1,2000}?)\\end\{(?:align|equation|gather)\*?\}|"
    r"\$\$(.{1,2000}?)\$\$|\\\[(.{1,2000}?)\\\]|\\\((.{1,2000}?)\\\)|"
    r"(?<![\\$])\$(?!\$)((?:[^$]|(?<=\\)\$){1,2000}?)(?<!\\)\$",  # $...$ may hold an escaped \$
    re.S,
)
_SUCCESSION_RE = re.compile(  # words that make the later answer replace the earlier one
    r"(?i)\b(?:then|so|thus|hence|therefore|finally|but|wait|actually|instead|gives?|gets?|becomes?|is|are|was|equals|"
    r"means|which|not|check|recheck|correct(?:ed|ion)?|mistake|wrong|or rather|again)\b"
)
_NAME = r"(?:[a-zA-Z]|\\(?!pi\b|infty\b|emptyset\b|varnothing\b)[a-zA-Z]+)(?:_\{?\w+\}?)?"
_NAME_RE = re.compile(_NAME + r"(?:\s*(?:[=<>]|\\[lg]eq?)\s*" + _NAME + ")*")  # $n$, $a = b$: names, not values
_STATES_RE = re.compile(r"(?:\b(?:is|are|was|be|equals?|gives|get|makes|total(?: of)?)|[=:])\s*$")  # "... is 34"
_RESTATED_RE = re.compile(r"(?:approx\w*|about|roughly|around|nearly|\\approx|~)\s*$")  # "..., about 0.42"
_CLAUSE_RE = re.compile(  # a clause after the answer: ", but ...", " because ...", "，因为 ..." (Chinese comma)
    r"(?i)(?<=\S)\s*(?:[,;]\s*|\s)(?:but|because|since|which|although|though|however|so)\b|，"
)
_NEGATION_RE = re.compile(
    r"(?:\bnot|cannot|n't|\bnever|\\neq?|\u2260|!=|\bimpossible\s+for\s+[^.]{1,20}?\s+to(?=\s+(?:be|equal)\b))"
    r"\s*(?:equal\s+(?:to\s+)?|be\s+|exactly\s+)?(?:\$|\\\(|\\\[|\s)*$",
    re.I,
)
_DANGLING_RE = re.compile(  # a response ending on a word or sign that needs what follows it
    r"(?:(?<![\\a-zA-Z])(?:is|are|be|was|were|equals?|gives?|get|obtain|to|of|the|by|and|then|times|plus|minus)"
    r"|[=:+\-*/^(])\s*$"
)


def _extract(text: str, strict: bool, boxed_only: bool) -> tuple[str | None, str]:
    """(extract_answer's answer, the name of the rule that found it)."""
    if not isinstance(text, str) or not text:
        return None, "no response"
    cut = text.find("</answer>")
    if cut >= 0:
        text = text[:cut]
    if boxed_only:
        return _last_boxed(text), "last box"
    marker = _CHAT_MARKER_RE.search(text)
    if marker:
        text = text[: marker.start()]
    boxed = _last_boxed(text)
    if boxed is None and _open_box(text):  # "... the answer is $\\boxed{3": cut off inside its answer
        return None, "unclosed box"
    if boxed is not None:
        several = text.count("\\boxed") + text.count("\\fbox") > 1  # one box: nothing to join (and no time spent)
        tail = text[-CLOSING_CHARS:]  # joined boxes end the response: a bounded tail keeps 20,000 boxes cheap
        spans = _box_spans(tail) if several else []
        group = _joined(spans, tail, words=4) if spans and spans[-1][2] == boxed else None
        return (group[1], "boxes joined") if group is not None and group[1] != boxed else (boxed, "last box")
    opened = text.rfind("<answer>")
    if opened >= 0:
        inner = text[opened + len("<answer>") :].strip()
        if inner:
            inner = _answer_phrase(inner) or inner
            if strict or not _has_words(inner):
                return inner, "<answer> tag"
            return _last_number(inner) or inner, "<answer> tag"  # "<answer>So the total is 42</answer>"
    phrase = _answer_phrase(text)
    if phrase is not None and re.match(r"(?i)(?:not|never)\b", phrase):  # "the answer is not $7$; ... it is $8$"
        return (None, "denied answer phrase") if strict else _closing_value(text)
    if phrase is not None or strict:
        return phrase, "answer phrase"
    return _closing_value(text)


def _last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} / \\fbox{...} (also the brace-less "\\boxed 5"); None if absent or unclosed."""
    last = None
    for last in _BOX_RE.finditer(text):
        pass
    if last is None:
        return None
    start = last.end()
    if start < len(text) and text[start] == "{":
        group = _braced(text, start)
        return None if group is None else group[0].strip()
    m = re.match(r"[^\s$]+", text[start:])
    return m.group(0) if m and last.group(0) != last.group(0).rstrip() else None


def _open_box(text: str) -> bool:
    """Whether the last \\boxed{ / \\fbox{ never closes: the response was cut off inside its boxed answer, and a
    number before it (often the same value, half written) must not stand in for it. Braces are counted raw here: a
    box closed only by a mistyped "\\}" ("\\boxed{25\\}") was finished, not cut off."""
    last = None
    for last in _BOX_RE.finditer(text):
        pass
    if last is None or text[last.end() : last.end() + 1] != "{" or _braced(text, last.end()) is not None:
        return False
    depth = 0
    for c in text[last.end() :]:
        depth += {"{": 1, "}": -1}.get(c, 0)
        if depth == 0:
            return False
    return True


def _braced(text: str, start: int) -> tuple[str, int] | None:
    """(content, end) of the {...} group opening at text[start], honouring nesting and escaped braces; None if open."""
    if start >= len(text) or text[start] != "{":
        return None
    depth, i = 0, start
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i], i + 1
        i += 1
    return None


def _box_spans(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of every closed \\boxed{...} / \\fbox{...}, outermost only, in order."""
    out = []
    for m in _BOX_RE.finditer(text):
        if out and m.start() < out[-1][1]:  # a box inside a box
            continue
        group = _braced(text, m.end())
        if group is not None:
            out.append((m.start(), group[1], group[0].strip()))
    return out


def _joins(gap: str, words: int) -> bool:
    """Whether the text between two answers only joins them into one answer: ", ", " and ", "\\quad or \\quad",
    "\\text{ and }", ", x_2 = ", and (between boxes, words=4) a few words: "$ papers and $". A sentence end, a blank
    line, a number or an arithmetic sign in between means the earlier one is a step of the work, not part of the
    answer ("\\boxed{2} + 3 = \\boxed{5}")."""
    if len(gap) > 80 or "\n\n" in gap or re.search(r"[.!?](?:\s|\$|$)", gap):
        return False
    bare = re.sub(r"_\{?\w+\}?|\\[a-zA-Z]+|[${}\s,;:=()]", " ", gap)  # subscripts, commands, punctuation
    free = [w for w in bare.split() if w.lower() not in ("and", "or") and len(w) > 1]
    return not re.search(r"[\d+\-*/^<>|]", bare) and len(free) <= words and not _SUCCESSION_RE.search(bare)


def _joined(spans: list[tuple[int, int, str]], text: str, words: int) -> tuple[int, str] | None:
    """(start, answer) of the last answer span together with the spans just before it that _joins links to it:
    several answers written one after the other are one answer, "a, b" (duplicates dropped); None if no span."""
    if not spans:
        return None
    j = len(spans) - 1
    while j > 0 and _joins(text[spans[j - 1][1] : spans[j][0]], words):
        j -= 1
    parts = list(dict.fromkeys(c for _, _, c in spans[j:] if c))
    return spans[j][0], ", ".join(parts)


def _answer_phrase(text: str) -> str | None:
    """What follows the last "final answer is" / "the answer is": a $...$ group (with the groups a connector joins to
    it: "$3$ and $4$"), else the rest of the sentence."""
    last = None
    for last in _PHRASE_RE.finditer(text):
        pass
    if last is None:
        return None
    rest = text[last.end() :].split("\n", 1)[0].strip().strip("*").strip()
    if rest.startswith(("$", "\\(", "\\[")):
        spans = _math_spans(rest)
        if not spans or spans[0][0] != 0:
            return None  # an unclosed formula
        j = 0
        while j + 1 < len(spans) and _joins(rest[spans[j][1] : spans[j + 1][0]], words=0):
            j += 1
        return ", ".join(c for _, _, c in spans[: j + 1])
    rest = re.split(r"\.(?:\s|$)|[。；]", rest, maxsplit=1)[0]
    rest = _CLAUSE_RE.split(rest, maxsplit=1)[0]  # "42, but let me check ...": the answer ends where a clause begins
    return rest.strip() or None


def _closing_value(text: str) -> tuple[str | None, str]:
    """The answer of a response without a box, phrase or tag: the last math span (with the spans _joins links to it),
    unless a number stated after it follows ("... the largest $n$ is 34.", not "$5$ (see step 3)"); with no span, the
    last number; with neither, the last name ("we get $C$."). A span that only names a variable ($n$) or is denied
    ("$f(3) = 2$, not $4$") is not an answer, nor a last span or number after "approximately" that restates the value
    before it; a denied number ("isn't 42") leaves no answer. Returns (answer or None, the rule's name)."""
    cut = max(0, len(text) - CLOSING_CHARS)  # the answer closes the response; a bounded tail keeps the scan linear
    if len(re.findall(r"(?<!\\)\$", text[:cut])) % 2:  # ... starting outside a $...$ span
        cut = text.find("$", cut) + 1
    text = text[cut:]
    if _DANGLING_RE.search(text):  # "So the answer should be": cut off before its answer, which is not what came before
        return None, "cut off before the answer"
    stated = [sp for sp in _math_spans(text) if sp[2] and not _negated(text[max(0, sp[0] - 40) : sp[0]])]
    spans = [sp for sp in stated if not _NAME_RE.fullmatch(sp[2])]
    if len(spans) > 1 and _RESTATED_RE.search(text[max(0, spans[-1][0] - 20) : spans[-1][0]]):
        spans.pop()  # "$\\frac{1}{6}$, or about $16.7\\%$"
    group = _joined(spans, text, words=0)
    tail_from = spans[-1][1] if spans else 0
    number = None
    for number in _LAST_NUMBER_RE.finditer(text, tail_from):
        pass
    before = text[max(0, number.start() - 20) : number.start()] if number is not None else ""
    if number is not None and not _RESTATED_RE.search(before) and (not spans or _STATES_RE.search(before)):
        start, answer, rule = number.start(), number.group(0), "last number" if not spans else "number after the math"
    elif group is not None:
        (start, answer), rule = group, "last math span"
    elif stated:  # only names and no number: a name is the answer ("Therefore we get $A$.")
        start, answer, rule = stated[-1][0], stated[-1][2], "last math span (a name)"
    else:
        return None, "no answer found"
    return (None, f"{rule}, denied") if _negated(text[:start]) else (answer, rule)


def _math_spans(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of every $...$, $$...$$, \\(...\\), \\[...\\] and align/equation/gather environment in
    the text, in order; of a multi-line display its last row, without the alignment: "&= p - q." -> "p - q."."""
    out = []
    for m in _MATH_RE.finditer(text):
        content = next(g for g in m.groups() if g is not None)
        if m.group(0).startswith("\\begin") or re.search(r"&\s*=", content):  # an aligned display
            rows = [r for r in re.split(r"\\\\", content) if r.strip()]
            content = re.sub(r"^\s*&?\s*=|&", " ", rows[-1]) if rows else ""
        out.append((m.start(), m.end(), content.strip()))
    return out


def _negated(before: str) -> bool:
    """Whether the words just before a value deny it: "it isn't 42", "x is not $5$", "cannot be 3", "\\neq 2"."""
    return bool(_NEGATION_RE.search(before[-40:]))


def _last_number(text: str) -> str | None:
    last = None
    for last in _LAST_NUMBER_RE.finditer(text):
        pass
    return None if last is None else last.group(0)


# ----------------------------------------------------------------------------------------------------------------------
# 2. Decision: _decide, the order of the checks (strings, choice letters, clock times, words, then trees)

_MC_RE = re.compile(r"\(?([A-E])\)?(?:\s*,\s*\(?([A-E])\)?)*")
_MC_PRED_RE = re.compile(r"\(([A-E])\).*|([A-E])(?:[.)].*|:(?![A-Z]).*)?")  # "(C) 12", "C", "C. x = 42", "B)", "D: 36"
_WORD_RE = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z]{3,}")


def _decide(pred: str, gold: str) -> tuple[bool, str]:
    """(verdict, reason) for two bare answers; never raises."""
    if pred is None or gold is None:
        return False, "missing answer"
    pred, gold = str(pred), str(gold)
    try:
        np_, pp, tp, errp = _prepare(pred)
        ng, pg, tg, errg = _prepare(gold)
        if not ng:
            return False, "empty gold answer"
        if not np_:
            return False, "empty prediction"
        if np_ == ng and pp == pg:
            return True, "same after normalisation"
        mc = _mc_letters(ng, pred=False)
        if mc is not None:
            got = _mc_letters(np_, pred=True)
            return (True, "same choice letters") if got == mc else (False, f"choice {''.join(sorted(mc))} expected")
        option = _option(ng) or _gold_option(gold)
        if option:  # gold "(B) 4" or "B. 4": the letter, or the option's value
            if _mc_letters(np_, pred=True) == {option[0]}:
                return True, "same choice letter"
            theirs = _option(np_)
            if theirs and theirs[0] != option[0]:  # "(B) 17" vs "(A) 17": another option, whatever its value says
                return False, f"choice {option[0]} expected, not {theirs[0]}"
            ok, why = _decide(pred, option[1])
            return ok, f"against the option's value: {why}"
        option = _option(np_)
        if option:  # a prediction "(D) 6" against a gold value: the option's value
            ok, why = _decide(option[1], gold)
            return ok, f"the predicted option's value: {why}"
        clock = _same_clock(np_, ng)
        if clock is not None:
            return clock, "same time of day" if clock else "different time of day"
        if _has_words(ng) or _has_words(np_):
            same = _text_key(np_) == _text_key(ng)
            return (True, "same words") if same else (False, "different words")
        if tg is None:
            return False, f"gold {errg}"
        if tp is None:
            return False, f"prediction {errp}"
        why = ""
        for vp in _variants(pred, tp, pp, pred=True):
            for vg in _variants(gold, tg, pg, pred=False):
                ok, why = _equal(vp, vg)
                if ok:
                    other = vp is not tp or vg is not tg
                    return True, why + (" (another reading: percent, degrees or decimal comma)" if other else "")
        return False, why
    except _TooBig as e:
        return False, f"too large to compare ({e})"
    except Exception as e:  # a bug or an unforeseen input: never the caller's problem, and never "correct"
        return False, f"error: {type(e).__name__}: {e}"


@functools.lru_cache(maxsize=8192)
def _prepare(s: str) -> tuple:
    """(normalised string, marks ("%", "°"), tree or None, parse error) of one answer; cached (gold answers repeat)."""
    if len(s) > MAX_ANSWER_CHARS:
        return s.strip(), "", None, "too long to parse"
    norm, marks = _normalize(s)
    try:
        return norm, marks, _Parser(norm).parse(), None
    except (_ParseError, ValueError, ZeroDivisionError, RecursionError, IndexError) as e:
        return norm, marks, None, f"cannot parse: {e}"


def _option(s: str) -> tuple[str, str] | None:
    """(letter, value) of a choice written with its value, "(B) 4"; None otherwise."""
    m = re.fullmatch(r"\(([A-E])\)\s*([^*/^=<>)!,:].*)", s.strip())  # not "(A)*(B) = 9", a product
    return (m.group(1), m.group(2).strip()) if m else None


def _gold_option(raw: str) -> tuple[str, str] | None:
    """(letter, value) of a raw gold answer written as a list item, "B. 12" or "B) $\\frac{1}{2}$" (a space after the
    mark: "B.5" is no option); None otherwise."""
    m = re.fullmatch(r"\s*([A-E])[.)]\s+(\S.*)", raw, re.S)
    return (m.group(1), m.group(2).strip()) if m else None


def _mc_letters(s: str, pred: bool) -> frozenset | None:
    """The multiple-choice letters of an answer ("(C)", "C", "A,C"); a prediction may continue "(C) 12"."""
    s = s.strip()
    m = _MC_RE.fullmatch(s)
    if m:
        return frozenset(re.findall(r"[A-E]", s))
    if pred:
        m = _MC_PRED_RE.fullmatch(s)
        if m:
            return frozenset(filter(None, m.groups()))
    return None


def _same_clock(np_: str, ng: str) -> bool | None:
    """Whether a predicted time of day ("time 15:45", from "3:45 PM") shows a bare gold clock reading ("3:45"): same
    hour on a 12-hour clock (on a 24-hour clock when the gold's hour is 0 or past 12), same minutes. One way only: a
    bare prediction "4:30" leaves out the a.m./p.m. that a gold "4:30 p.m." asks for. None unless the prediction is a
    time of day and the gold a bare H:MM."""
    t = re.fullmatch(r"time (\d+):(\d\d)", np_)
    b = re.fullmatch(r"(\d{1,2}):(\d\d)", ng)
    if not (t and b):
        return None
    hour, gold_hour = int(t.group(1)), int(b.group(1))
    if gold_hour > 12 or gold_hour == 0:  # "20:34" is a 24-hour reading: 8:34 p.m., never 08:34 a.m.
        return hour == gold_hour and t.group(2) == b.group(2)
    return hour % 12 == gold_hour % 12 and t.group(2) == b.group(2)


def _has_words(s: str) -> bool:
    """Whether an answer contains a word outside LaTeX commands: a run of 3+ letters with a lower-case vowel
    ("Evelyn", "even", "None") or all capitals ("MAKE", "LQSX"). Runs like "LCs" or "xyz" stay products of symbols."""
    s = re.sub(r"_\{[^{}]*\}|_\w", "", s)  # subscripts are parts of names: S_{MBCN}, V_{ABC}
    s = re.sub(r"^[\sa-zA-Z\\{}|:()]*=", "", s)  # a label "\\angle ABC =" names the value, it is not a word answer
    bare = re.sub(r"\\(?:begin|end)\s*\{[a-zA-Z*]*\}|\\[a-zA-Z]+", " ", s)
    if re.fullmatch(r"(?i)[\s{}]*no[\s{}.]*", bare):  # the answer "no" (of a yes/no question), not the product n*o
        return True
    return any(re.search(r"[aeiou]", w) or w.isupper() for w in _WORD_RE.findall(bare))


def _text_key(s: str) -> str:
    """Words compared case-insensitively, ignoring everything but letters and digits ("\\text{East}" == "east")."""
    return re.sub(r"[^a-z0-9]", "", s.lower())


def _variants(raw: str, node: tuple, marks: str, pred: bool) -> list:
    """The readings of an answer: as written; a value with % also as value/100 ("25%" matches 25 and 0.25); a value
    in degrees also in radians ("90^\\circ" matches 90 and \\frac{\\pi}{2}); a prediction "2,74" also with a decimal
    comma (see _decimal_comma). A gold "1,3" is the list of the data's convention: the prediction 1.3 must not match."""
    value = _rhs(node) if node[0] == "rel" and _rhs(node) is not None else node  # "\\angle A = 45^\\circ": 45
    out = [node]
    if "%" in marks:
        out.append(("mul", (value, ("num", Fraction(1, 100), False))))
    if "\u00b0" in marks:
        out.append(("mul", (value, ("frac", ("const", "pi"), ("num", Fraction(180), False)))))
    comma = _decimal_comma(raw) if pred else None
    return out + [comma] if comma is not None else out


# ----------------------------------------------------------------------------------------------------------------------
# 3. Normalisation: _normalize (delimiters, wrappers, units, degrees, percent, separators -> a plain string)

_UNICODE = {
    "\u2212": "-", "\u2013": "-", "\u00d7": r"\times ", "\u22c5": r"\cdot ", "\u00b7": r"\cdot ", "\u00f7": r"\div ",
    "\u03c0": r"\pi ", "\u221e": r"\infty ", "\u2264": r"\le ", "\u2265": r"\ge ", "\u2260": r"\ne ",
    "\u221a": r"\sqrt ", "\u00b0": r"^\circ ", "\u222a": r"\cup ", "\u2208": r"\in ", "\u00b1": r"\pm ",
    "\u00a0": " ", "\u2032": "'", "\u2205": r"\emptyset ", "\u2248": r"\approx ", "\u00b2": "^2", "\u00b3": "^3",
    "\u2074": "^4", "\u00bd": r"\frac{1}{2}", "\u2192": r"\to ", "\u2229": r"\cap ",
    "\u2a7d": r"\le ", "\u2a7e": r"\ge ", "\u2213": r"\mp ", "\u00bc": r"\frac{1}{4}", "\u00be": r"\frac{3}{4}",
    "\uff08": "(", "\uff09": ")", "\uff0c": ",", "\u3001": ",", "\uff1a": ":", "\uff1b": ";",  # full-width forms
}  # fmt: skip
_TEXT_CMDS = (
    r"text|textrm|textbf|textit|textnormal|textsf|texttt|mbox|hbox|emph|num|"
    r"mathrm|mathbf|mathit|mathsf|mathnormal|boldsymbol|bm"
)
_UNITS = (
    r"(?:sq(?:uare|\.)?\s*|cubic\s*)?(?:units?|cm|mm|km|meters?|metres?|centimeters?|kilometers?|inch(?:es)?|feet|foot|"
    r"ft|yards?|yd|miles?|mph|seconds?|secs?|minutes?|mins?|hours?|hrs?|days?|weeks?|months?|years?|dollars?|cents?|"
    r"degrees?|radians?|kg|grams?|pounds?|lbs?|ounces?|oz|liters?|litres?|ml|gallons?|cups?|people|students|ways|"
    r"times|points|percent|units|meters\s*per\s*second|m/s|km/h|cm/s|"
    r"[kMG]?eV|kJ|kW|[kMG]?Hz|nm|k?Pa|mol|atm)"  # physics units of several letters (Minerva); one letter ("3 m") is 3m
)
_UNIT_TEXT_RE = re.compile(
    r"\\(?:" + _TEXT_CMDS + r")\s*\{\s*" + _UNITS + r"\s*\.?\s*\}(?:\s*\^\s*\{?\s*-?[123]\s*\}?)?"
)
_UNIT_TAIL_RE = re.compile(r"(?<=[\d}\s.)])\s*" + _UNITS + r"(?:\s*\^\s*\{?\s*[23]\s*\}?)?\s*\.?\s*$")
_TRAILING_TEXT_RE = re.compile(  # a text group (one level of inner braces) closing the answer, maybe with ^{-1}
    r"(?<=[\d}).\s])\s*\\(?:text|mathrm|mbox|textrm|rm|unit)\s*\{"
    r"(?=[^{}]*(?:\{[^{}]*\}[^{}]*)*\}\s*(?:\^\s*\{?\s*-?\d\s*\}?)?\s*$)"
)
_TEXT_WRAP_RE = re.compile(r"\\(?:" + _TEXT_CMDS + r")\s*\{([^{}]*)\}")
_PLAIN_FUNCS_RE = re.compile(
    r"(?<![\\a-zA-Z])(sqrt|sin|cos|tan|cot|sec|csc|arcsin|arccos|arctan|log|ln|exp|pi|infty|gcd|lcm)(?![a-zA-Z])"
)
_SPACES_RE = re.compile(
    r"\\\\|\\[,:;! ]|\\q?quad\b|\\(?:thinspace|enspace|hfill)\b|\\hspace\*?\{[^{}]*\}|\\phantom\{[^{}]*\}|~"
)
_SIZING_RE = re.compile(
    r"\\(?:left|right|bigl|bigr|Bigl|Bigr|biggl|biggr|Biggl|Biggr|bigg|Bigg|big|Big)(?![a-zA-Z])\s*"
)
_DEGREE_RE = re.compile(  # degrees (Celsius and Fahrenheit too: 25^\\circ C) and primes
    r"(?:\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|\\degree)(?:\s*(?:\\mathrm\{|\\text\{)?\s*[CF]\}?(?![a-zA-Z]))?"
    r"|\^\s*\{\s*(?:\\prime\s*)+\}|\^\s*\\prime"
)
_TIME_RE = re.compile(r"(\d{1,2})(?::(\d{2}))?(?::(\d{2}))?\s*([aApP])\.?\s*[mM]\.?")
_NUMBER_WORDS_RE = re.compile(r"(-?\d+(?:\.\d+)?)\s+[a-zA-Z]{3,}(?:\s+[a-zA-Z]+)*")
_QUALIFIER_RE = re.compile(
    r"[,;]?\s*\(?\s*(?:(?:where|for|with|and)\s+)?(?<![\\a-zA-Z])[a-zA-Z](?:\s*,\s*[a-zA-Z])*"  # k, not the i of \\pi
    r"\s*\\in\s*\\mathbb\s*\{?[ZNQ]\}?(?:\^\{?[+*]\}?|_\{?\+\}?)?\s*\)?\s*$"
)
_RANGE_QUALIFIER_RE = re.compile(  # "2^k for k \\geq 0", "n^2, where n > 1": an index's range; the word is needed
    r"(?:,\s*|\s+)\(?(?:where|for)\s+[a-zA-Z]\s*(?:\\geq?|\\geqslant|>)\s*-?\d+\s*\)?\s*$"
)
_DEG = r"\s*\^\s*(?:\{\s*\\circ\s*\}|\\circ)"
_TRIG_DEGREES_RE = re.compile(
    r"(\\(?:sin|cos|tan|cot|sec|csc)(?:\s*\^\s*(?:\{\d\}|\d))?\s*)"  # the function, maybe squared
    r"(?:\(\s*(\d+(?:\.\d+)?)" + _DEG + r"\s*\)|(\d+(?:\.\d+)?)" + _DEG + ")"  # (30^\\circ) or 30^\\circ
)
_TRIG_ARG_RE = re.compile(  # a trigonometric function with a parenthesised argument (one level of inner brackets)
    r"(\\(?:sin|cos|tan|cot|sec|csc)(?:\s*\^\s*(?:\{\d\}|\d))?\s*(?:\\left)?\s*\()((?:[^()]|\([^()]*\))*)(?:\\right)?\)"
)
_THOUSANDS = r"-?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?"  # 1,000 and 12,345.5 (never 0,111 nor 1000,99)
_PUNCTURED_RE = re.compile(  # "(0,2) \\setminus \\{1\\}", "\\mathbb{R}\\setminus\\{0\\}": an interval less one point
    r"(?:\\mathbb\{R\}|([(\[])([^(),\[\]]+),([^(),\[\]]+)([)\]]))\s*(?:\\setminus|\\backslash|-)\s*\\\{([^{},]+)\\\}"
)


def _normalize(s: str) -> tuple[str, bool]:
    """Formatting-free form of an answer string, and its marks: "%" for a percent sign, "°" for degrees."""
    s = re.sub("\u221a\\s*(\\d+(?:\\.\\d+)?)", r"\\sqrt{\1}", s.strip())  # √12 is \\sqrt{12}, not \\sqrt{1}2
    for k, v in _UNICODE.items():
        if k in s:
            s = s.replace(k, v)
    s = (
        s.replace("\\$", " ")
        .replace("$", "")
        .replace("\\(", "")
        .replace("\\)", "")
        .replace("\\[", "")
        .replace("\\]", "")
    )
    s = _strip_wrapper(_strip_wrapper(s.strip(), "\\boxed"), "\\fbox")
    s = re.sub(r"\\(?:left|right)\s*\.", "", s)
    s = _SIZING_RE.sub("", s)
    s = s.replace("\\displaystyle", "").replace("\\limits", "").replace("\\!", "\\! ")
    s = re.sub(r"\\[dtc]frac(?![a-zA-Z])", r"\\frac", s)
    s = re.sub(r"\\[dt]binom(?![a-zA-Z])", r"\\binom", s)
    s = re.sub(r"\{\s*([^{}]+?)\s*\\choose\s*([^{}]+?)\s*\}", r"\\binom{\1}{\2}", s)  # {8 \\choose 2}
    s = _TRIG_ARG_RE.sub(  # \\sin(90^\\circ - x): every degree mark inside the argument makes its number radians
        lambda m: m.group(1) + re.sub(r"(\d+(?:\.\d+)?)" + _DEG, r"(\1\\pi/180)", m.group(2)) + ")", s
    )
    s = _TRIG_DEGREES_RE.sub(  # \\sin 30^\\circ, \\cos(60^\\circ): degrees inside a trigonometric function are radians
        lambda m: m.group(1) + "{(" + (m.group(2) or m.group(3)) + "\\pi/180)}", s
    )
    s = re.sub(r"\\operatorname\s*\{\s*([a-zA-Z]+)\s*\}", r"\\\1 ", s)
    s = re.sub(r"(\d)\{,\}(?=\d{1,2}(?!\d)|\d{4})", r"\1.", s)  # 2{,}5 and 3{,}1416: a decimal comma
    s = re.sub(r"(\d)\s*(?:\{,\}|,\\!)\s*(?=\d{3})", r"\1", s)  # 10,\!080 and 1{,}000: thousands separators
    s = _SPACES_RE.sub(lambda m: m.group(0) if m.group(0) == "\\\\" else " ", s)
    s = re.sub(r"\\langle", "(", s).replace("\\rangle", ")")
    marks = ("%" if "%" in s else "") + ("\u00b0" if re.search(r"\^\s*\{?\s*\\circ|\\degree", s) else "")
    s = _DEGREE_RE.sub("", s)
    s = s.replace("\\%", "").replace("%", "")
    s = re.sub(r"\\(?:" + _TEXT_CMDS + r")\s*\{\s*(?:or|and)\s*\}|\s+(?:or|and)\s+", ",", s)
    s = re.sub(r",\s*(?=,)", "", s)  # "2, 3, and 4" -> "2, 3, 4"
    unitless = _UNIT_TEXT_RE.sub("", s).strip()
    s = unitless or s
    for _ in range(3):  # "15000 \\text{ kcal m}^{-2} \\text{yr}^{-1}"
        s = _strip_trailing_unit(s)
    for _ in range(4):
        s, n = _TEXT_WRAP_RE.subn(r"\1", s)
        if not n:
            break
    # a box that repeats the phrase, "\\boxed{\\text{The answer is } 12}": what follows it
    s = re.sub(r"(?i)^\s*(?:the\s+)?(?:final\s+)?answer\s*(?:is\b\s*:?|:)\s*(?=\S)", "", s)
    unitless = _UNIT_TAIL_RE.sub("", s).strip()
    s = unitless or s
    s = _RANGE_QUALIFIER_RE.sub("", s).strip() or s
    s = _QUALIFIER_RE.sub("", s).strip() or s  # "k\\pi + \\frac{\\pi}{4}, k \\in \\mathbb{Z}": the family
    if s.startswith("\\{") and not s.endswith("\\}") and re.match(r"\\\{\s*\\begin\{(?:array|cases)\}", s):
        s = s[2:]  # a system "\\left\\{\\begin{array}...\\end{array}\\right.": its rows
    s = s.replace("\\$", "").replace("**", "^").replace("\\approx", "\\approx ")
    s = re.sub(r"(?<![\d)}\s])\s*!=", r"\\ne ", s)  # "x != 2", "x!=2"; "5!=120" and "5! = 120" are factorials
    s = re.sub(r"^\s*(?:\\approx|\\sim)\s*", "", s)
    s = _PLAIN_FUNCS_RE.sub(r"\\\1", s)
    s = re.sub(r"\\infty|(?<!\\)\b(?:infinity|inf)\b", r"\\infty ", s)
    s = re.sub(r"\s+", " ", s).strip()
    s = re.sub(r"(?:\s|[.,;]|\\)+$", "", s)  # trailing sentence punctuation, a stray "\\" or "\\\\"
    m = re.fullmatch(r"(-?\d+) (\d+)/(\d+)", s)
    if m and int(m.group(2)) < int(m.group(3)):  # "4 4/9" is the mixed number 40/9, as "4\\frac{4}{9}" is
        s = f"{m.group(1)}\\frac{{{m.group(2)}}}{{{m.group(3)}}}"
    if re.fullmatch(_THOUSANDS, s) or re.fullmatch(r"[1-9]\d{0,2}(?: \d{3})+", s):
        s = s.replace(",", "").replace(" ", "")  # a whole answer "1,000": thousands, not the list (1, 0) nor "1, 000"
    s = re.sub(r" ?([^\w\s\\]) ?", r"\1", s)  # spaces next to symbols carry no meaning
    if re.fullmatch(r"(?i)(?:the set of )?all real numbers|every real number|\\mathbb\{R\}", s):
        s = "(-\\infty,\\infty)"  # the reals in words
    s = _punctured(s) or s
    m = re.fullmatch(r"\\\{\s*[a-zA-Z]\s*(?:\\mid|\||:)(.+)\\\}", s)
    if m:  # set-builder notation: {x | x > 2} is the set its condition describes
        s = m.group(1)
    m = _TIME_RE.fullmatch(s)
    if m:  # 4:30 p.m. -> "time 16:30" (a word answer: compared as text, never as the ratio 4:30)
        hour = int(m.group(1)) % 12 + (12 if m.group(4).lower() == "p" else 0)
        s = f"time {hour}:{m.group(2) or '00'}" + (f":{m.group(3)}" if m.group(3) else "")
    m = _NUMBER_WORDS_RE.fullmatch(s)
    if m and not re.search(r"\b(?:or|and|to)\b", s):
        s = m.group(1)  # "5 apples", "12 square feet": the number
    return s, marks


def _strip_wrapper(s: str, cmd: str) -> str:
    """s without an outer \\cmd{...} that spans all of it."""
    while s.startswith(cmd):
        group = _braced(s, len(cmd))
        if group is None or group[1] != len(s):
            break
        s = group[0].strip()
    return s


def _strip_trailing_unit(s: str) -> str:
    """A number followed by a unit in text markup loses the unit: "9.6 \\mathrm{~s}", "7.5e7 \\text{ m/s}",
    "3 \\mathrm{km\\,s^{-1}}". Only explicit markup counts: a bare "3 m" may be the expression 3m."""
    m = _TRAILING_TEXT_RE.search(s)
    if not m or not re.search(r"\d", s[: m.start()]):
        return s
    group = _braced(s, m.end() - 1)
    if group is None:
        return s
    unit, end = group
    rest = s[end:]
    if re.fullmatch(r"\s*(?:\^\s*\{?\s*-?\d\s*\}?)?\s*", rest) and re.fullmatch(
        r"[\sa-zA-Z/.^{}\-\d\\,]*[a-zA-Z][\sa-zA-Z/.^{}\-\d\\,]*", unit
    ):
        clock = re.fullmatch(r"(?i)\s*[ap]\.?\s*m\.?\s*", unit)  # "9:30 \\text{ a.m.}" is a time of day, not a unit
        if unit.strip() not in ("i", "e", "or", "and") and not unit.strip().startswith("(") and not clock:
            return s[: m.start()].rstrip()
    return s


def _punctured(s: str) -> str | None:
    """An interval less one point inside it, as the union of its two halves: "(0,2)\\setminus\\{1\\}" is
    "(0,1)\\cup(1,2)" and "\\mathbb{R}\\setminus\\{0\\}" is "(-\\infty,0)\\cup(0,\\infty)". None unless the whole answer
    is such a difference and the point (a number) lies strictly inside the interval: "(0,2)\\setminus\\{5\\}" is
    left alone."""
    m = _PUNCTURED_RE.fullmatch(s)
    if not m:
        return None
    opener, lo, hi, closer, point = m.groups()
    if opener is None:
        opener, lo, hi, closer = "(", "-\\infty", "\\infty", ")"
    lo, hi, point = lo.strip(), hi.strip(), point.strip()

    def value(x: str):  # a plain number or an infinity; None for anything else (then nothing is rewritten)
        if re.fullmatch(r"[+-]?\\infty", x):
            return float("-inf") if x.startswith("-") else float("inf")
        return Fraction(x) if re.fullmatch(r"-?\d+(?:\.\d+)?(?:/\d+)?", x) else None

    lo_v, c, hi_v = value(lo), value(point), value(hi)
    if lo_v is None or hi_v is None or not isinstance(c, Fraction) or not lo_v < c < hi_v:
        return None
    return f"{opener}{lo},{point})\\cup({point},{hi}{closer}"


def _decimal_comma(s: str) -> tuple | None:
    """The reading of "2,74", "0,111" or "1000,99" (one comma, no space, not a thousands separator) with a decimal
    comma; the list reading (2, 74) is kept too: either may match. None for anything else."""
    s = s.strip().strip("$").strip()
    if not re.fullmatch(r"-?\d+,\d+", s) or re.fullmatch(_THOUSANDS, s):
        return None
    return _number(s.replace(",", ".").lstrip("-")) if s[0] != "-" else ("neg", _number(s[1:].replace(",", ".")))


# ----------------------------------------------------------------------------------------------------------------------
# 4. Parsing: _Parser (LaTeX or plain maths -> a tree of tuples (kind, *fields)); tree helpers

_TOKEN_RE = re.compile(
    r"\s*(?:(\d+(?:\.\d*)?(?:[eE][-+]?\d+(?![\d.]))?|\.\d+(?:[eE][-+]?\d+(?![\d.]))?)|(\\[a-zA-Z]+|\\.)|(\S))"
)
_FUNCS = {
    "sin", "cos", "tan", "cot", "sec", "csc", "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh", "exp", "ln", "log",
    "lg", "arccot", "arcsec", "arccsc", "max", "min", "gcd", "lcm", "det",
}  # fmt: skip
_INVERSE = {"sin": "arcsin", "cos": "arccos", "tan": "arctan", "cot": "arccot", "sec": "arcsec", "csc": "arccsc"}
_RELOPS = {
    "=": "=", "<": "<", ">": ">", "\\le": "<=", "\\leq": "<=", "\\leqslant": "<=", "\\ge": ">=", "\\geq": ">=",
    "\\geqslant": ">=", "\\lt": "<", "\\gt": ">", "\\ne": "!=", "\\neq": "!=", "\\approx": "~", "\\in": "in",
}  # fmt: skip
_MUL_OPS = {"*", "\\cdot", "\\times", "\\ast"}
_DIV_OPS = {"/", "\\div"}
_SUM_OPS = {"+", "-", "\\pm", "\\mp"}
_CLOSERS = {")", "]", "}", "\\}", "|", "\\rfloor", "\\rceil", "&", "\\\\", "\\end", ",", ";", "\\cup", "\\rvert"}
_MATRIX_ENVS = {"pmatrix", "bmatrix", "Bmatrix", "vmatrix", "Vmatrix", "matrix", "smallmatrix", "array", "cases"}


def _tokenize(s: str) -> list[str]:
    tokens = [m.group(m.lastindex) for m in _TOKEN_RE.finditer(s) if m.lastindex]
    if len(tokens) > MAX_TOKENS:
        raise _ParseError(f"more than {MAX_TOKENS} tokens")
    depth = peak = 0
    for t in tokens:
        depth += t in ("(", "[", "{", "\\{") or t.startswith("\\left")
        depth -= t in (")", "]", "}", "\\}")
        peak = max(peak, depth)
    if peak > MAX_DEPTH:
        raise _ParseError(f"nesting deeper than {MAX_DEPTH}")
    return tokens


def _number(text: str) -> tuple:
    """("num", exact value, False) for an integer literal; for a decimal ("0.15", "4.5e33") the third field is its
    unit in the last place (1/100, 10**32): a decimal is an exact fraction that also states its precision."""
    if len(text) > 400:
        raise _ParseError("number literal too long")
    if "." not in text and "e" not in text.lower():
        return ("num", Fraction(text), False)
    mantissa, _, exponent = text.lower().partition("e")
    return ("num", Fraction(text), Fraction(10) ** (int(exponent or 0) - len(mantissa.partition(".")[2])))


class _Parser:
    """Recursive descent over tokens. Precedence: list , ; < relation < \\cup < sum < product < unary minus < power."""

    def __init__(self, s: str):
        self.toks = _tokenize(s)
        self.i = 0
        self.in_abs = 0

    def peek(self, k: int = 0) -> str | None:
        return self.toks[self.i + k] if self.i + k < len(self.toks) else None

    def take(self) -> str:
        if self.i >= len(self.toks):
            raise _ParseError("unexpected end")
        self.i += 1
        return self.toks[self.i - 1]

    def expect(self, tok: str) -> None:
        if self.take() != tok:
            raise _ParseError(f"expected {tok!r}")

    def parse(self) -> tuple:
        items = self.items()
        if self.i != len(self.toks):
            raise _ParseError(f"unexpected {self.peek()!r}")
        return items[0] if len(items) == 1 else ("list", tuple(items))

    def items(self) -> list:
        out = [self.relation()]
        while self.peek() in (",", ";"):
            self.take()
            if self.peek() is None:  # "1, 2," -> trailing separator
                break
            out.append(self.relation())
        return out

    def relop(self) -> str | None:
        t = self.peek()
        if t in ("<", ">") and self.peek(1) == "=":
            self.i += 2
            return t + "="
        if t == "!" and self.peek(1) == "=":
            self.i += 2
            return "!="
        if t in _RELOPS:
            self.i += 1
            return _RELOPS[t]
        return None

    def relation(self) -> tuple:
        exprs, ops = [self.union()], []
        while (op := self.relop()) is not None:
            ops.append(op)
            exprs.append(self.union())
        return exprs[0] if not ops else ("rel", tuple(ops), tuple(exprs))

    def union(self) -> tuple:
        parts = [self.expr()]
        while self.peek() == "\\cup":
            self.take()
            parts.append(self.expr())
        return parts[0] if len(parts) == 1 else ("union", tuple(parts))

    def expr(self) -> tuple:
        terms = []
        sign = "+"
        if self.peek() in _SUM_OPS:
            sign = self.take()
        while True:
            t = self.term()
            terms.append(t if sign == "+" else ("neg", t) if sign == "-" else ("pm", t))
            if self.peek() not in _SUM_OPS:
                break
            sign = self.take()
        return terms[0] if len(terms) == 1 else ("add", tuple(terms))

    def starts_primary(self, t: str | None) -> bool:
        if t is None or t in _CLOSERS or t in _RELOPS or t in _SUM_OPS or t in _MUL_OPS or t in _DIV_OPS:
            return t == "|" and not self.in_abs
        return t not in ("^", "_", "!", "'", "=", "<", ">", ":", "\\ldots", "\\cdots", "\\dots")

    def term(self) -> tuple:
        factors = [self.unary()]
        while True:
            t = self.peek()
            if t in _MUL_OPS:
                self.take()
                factors.append(self.unary())
            elif t in _DIV_OPS:  # juxtaposition binds tighter than "/": t/RC = t/(RC), 1/2\\pi = 1/(2\\pi)
                self.take()
                den = [self.unary()]
                while self.starts_primary(self.peek()) and not (den[-1][0] == "num" and self.peek()[0].isdigit()):
                    den.append(self.power())
                factors.append(("pow", _product(den), ("num", Fraction(-1), False)))
            elif t == ":" and self.peek(1) is not None:  # ratio a:b
                self.take()
                return ("ratio", (_product(factors), self.term()))
            elif self.starts_primary(t):
                if factors[-1][0] == "num" and t[0].isdigit():
                    raise _ParseError("two numbers side by side")
                nxt = self.power()
                if len(factors) == 1 and _is_integer_literal(factors[0]) and _is_mixed_fraction(nxt):
                    factors[0] = ("num", factors[0][1] + nxt[1][1] / nxt[2][1], False)  # 2\frac{1}{2} = 5/2
                else:
                    factors.append(nxt)
            else:
                break
        return _product(factors)

    def unary(self) -> tuple:
        if self.peek() == "-":
            self.take()
            return ("neg", self.unary())
        if self.peek() in ("\\pm", "\\mp"):  # "x = \\pm 2" inside a product or after another sign
            self.take()
            return ("pm", self.unary())
        if self.peek() == "+":
            self.take()
            return self.unary()
        return self.power()

    def power(self) -> tuple:
        base = self.postfix()
        if self.peek() == "^":
            self.take()
            base = ("pow", base, self.script())
            while self.peek() == "!":
                self.take()
                base = ("fact", base)
        return base

    def script(self) -> tuple:
        """Argument of ^: a {group}, a signed script, or one primary (a whole number: "2^10" is 2^{10})."""
        t = self.peek()
        if t == "{":
            return self.group()
        if t in ("-", "+"):
            self.take()
            inner = self.script()
            return ("neg", inner) if t == "-" else inner
        return self.primary()

    def group(self) -> tuple:
        self.expect("{")
        items = self.items()
        self.expect("}")
        if len(items) != 1:
            raise _ParseError("list inside a group")
        return items[0]

    def arg(self) -> tuple:
        """One macro argument: {group}, or a single character/command (\\frac12, \\sqrt3, \\frac\\pi2)."""
        t = self.peek()
        if t == "{":
            return self.group()
        if t is not None and t[0].isdigit() and len(t) > 1 and "." not in t:
            self.toks[self.i] = t[1:]
            return _number(t[0])
        return self.primary()

    def raw_script(self) -> str:
        """A subscript as text (names like x_1, a_{n+1}, m_{\\max})."""
        if self.peek() != "{":
            return self.take()
        depth, parts = 0, []
        while True:
            t = self.take()
            depth += (t == "{") - (t == "}")
            parts.append(t)
            if depth == 0:
                return "".join(parts[1:-1])

    def postfix(self) -> tuple:
        node = self.primary()
        while self.peek() in ("!", "'"):
            if self.take() == "!":
                node = ("fact", node)
        return node

    def primary(self) -> tuple:
        t = self.take()
        if t[0].isdigit() or (t[0] == "." and len(t) > 1):
            return self.number(t)
        if t.isalpha() and len(t) == 1:
            name = t
            if self.peek() == "_":
                self.take()
                name += "_" + self.raw_script()
            if self.peek() == "(" and self.peek(2) == ")" and (self.peek(1) or " ")[0].isdigit():
                name += f"({self.peek(1)})"  # I(0), f(2): a value of a function, not I times 0
                self.i += 3
                return ("sym", name)
            return ("const", "e") if name == "e" else ("const", "i") if name == "i" else ("sym", name)
        if t in ("(", "["):
            return self.bracket(t)
        if t == "{":
            items = self.items()
            self.expect("}")
            return items[0] if len(items) == 1 else ("set", tuple(items))
        if t == "\\{":
            items = [] if self.peek() == "\\}" else self.items()
            self.expect("\\}")
            return ("set", tuple(items))
        if t in ("|", "\\vert", "\\lvert", "\\|"):
            self.in_abs += 1
            inner = self.expr()
            self.in_abs -= 1
            if self.take() not in ("|", "\\vert", "\\rvert", "\\|"):
                raise _ParseError("unclosed |")
            return ("abs", inner)
        if t in ("\\lfloor", "\\lceil"):
            inner = self.expr()
            self.expect("\\rfloor" if t == "\\lfloor" else "\\rceil")
            return ("floor" if t == "\\lfloor" else "ceil", inner)
        if t.startswith("\\"):
            return self.command(t[1:])
        raise _ParseError(f"unexpected {t!r}")

    def number(self, t: str) -> tuple:
        node = _number(t)
        if self.peek() == "\\overline" and "." in t:  # 0.\overline{3} = 1/3, 0.1\overline{6} = 1/6
            self.take()
            rep = self.raw_script()
            if not rep.isdigit():
                raise _ParseError("bad repeating decimal")
            head = t.split(".")[1]
            node = ("num", Fraction(t) + Fraction(int(rep), (10 ** len(rep) - 1) * 10 ** len(head)), False)
        if self.peek() == "_":  # 52_8, 4210_{5}: a numeral in another base
            self.take()
            base = self.raw_script()
            if not base.isdigit():
                raise _ParseError("bad base subscript")
            return ("base", t, int(base))
        return node

    def bracket(self, opener: str) -> tuple:
        items = self.items()
        closer = self.take()
        if closer not in (")", "]"):
            raise _ParseError("unclosed bracket")
        if len(items) == 1:
            if opener + closer not in ("()", "[]"):
                raise _ParseError("mismatched brackets")
            return items[0]
        return ("seq", opener + closer, tuple(items))

    def command(self, name: str) -> tuple:
        if not name.isalpha():
            raise _ParseError(f"unexpected \\{name}")
        if name == "frac":
            return ("frac", self.arg(), self.arg())
        if name == "sqrt":
            n = ("num", Fraction(2), False)
            if self.peek() == "[":
                self.take()
                n = self.expr()
                self.expect("]")
            return ("root", self.arg(), n)
        if name == "binom":
            return ("binom", self.arg(), self.arg())
        if name == "pi":
            return ("const", "pi")
        if name == "infty":
            return ("const", "inf")
        if name in ("imath", "jmath"):
            return ("const", "i")
        if name in ("emptyset", "varnothing"):
            return ("set", ())
        if name in ("ldots", "cdots", "dots"):
            return ("dots",)
        if name == "mathbb":
            letter = self.raw_script()
            inf = ("const", "inf")
            return ("seq", "()", (("neg", inf), inf)) if letter == "R" else ("sym", "bb" + letter)
        if name == "begin":
            return self.matrix()
        if name in _FUNCS:
            return self.function(name)
        if name in ("hat", "bar", "vec", "dot", "ddot", "tilde", "overline", "mathcal", "mathfrak", "widehat"):
            node = ("sym", name + self.raw_script())
        elif self.peek() == "{":
            raise _ParseError(f"unsupported command \\{name}")
        else:
            node = ("sym", "\\" + name)  # Greek letters and other constants: plain symbols
        if self.peek() == "_":
            self.take()
            node = ("sym", node[1] + "_" + self.raw_script())
        return node

    def function(self, name: str) -> tuple:
        power = base = None
        for _ in range(2):
            if self.peek() == "^":
                self.take()
                power = self.script()
            elif self.peek() == "_":
                self.take()
                base = self.script()
        if self.peek() == "(":
            self.take()
            items = self.items()
            self.expect(")")
            arg = items[0] if len(items) == 1 else ("seq", "()", tuple(items))
        elif self.peek() == "{":
            arg = self.group()
        else:  # \sin 2x, \log_2 n: an implicit product of plain factors
            factors = [self.power()]
            while self.starts_primary(self.peek()) and self.peek()[1:] not in _FUNCS:
                factors.append(self.power())
            arg = _product(factors)
        if power == ("neg", ("num", Fraction(1), False)) and name in _INVERSE:
            name, power = _INVERSE[name], None
        node = ("log", arg, base) if name in ("log", "lg", "ln") else ("fn", name, arg)
        if name == "lg" and base is None:
            node = ("log", arg, ("num", Fraction(10), False))
        return ("pow", node, power) if power is not None else node

    def matrix(self) -> tuple:
        env = self.raw_script()
        if env not in _MATRIX_ENVS:
            raise _ParseError(f"unsupported environment {env}")
        if env == "array" and self.peek() == "{":
            self.raw_script()
        rows, row = [], []
        while True:
            if self.peek() == "\\end":
                self.take()
                self.raw_script()
                break
            row.append(self.relation())
            t = self.take()
            if t == "\\\\":
                rows.append(tuple(row))
                row = []
            elif t == "\\end":
                self.raw_script()
                break
            elif t != "&":
                raise _ParseError("bad matrix")
        if row:
            rows.append(tuple(row))
        if not rows or len({len(r) for r in rows}) != 1:
            raise _ParseError("ragged matrix")
        return ("matrix", tuple(rows))


def _is_integer_literal(node: tuple) -> bool:
    return node[0] == "num" and not node[2] and node[1].denominator == 1 and node[1] >= 0


def _is_mixed_fraction(node: tuple) -> bool:
    """\\frac{p}{q} of integer literals with 0 < p < q: the fractional part of a mixed number like 3\\frac{1}{4}."""
    return (
        node[0] == "frac"
        and _is_integer_literal(node[1])
        and _is_integer_literal(node[2])
        and 0 < node[1][1] < node[2][1]
    )


def _product(factors: list) -> tuple:
    return factors[0] if len(factors) == 1 else ("mul", tuple(factors))


def _children(node: tuple):
    for f in node[1:]:
        if isinstance(f, tuple) and f:
            if isinstance(f[0], str):
                yield f
            else:
                for g in f:
                    yield from ([g] if isinstance(g[0], str) else g)  # items, or matrix rows


def _walk(node: tuple):
    yield node
    for c in _children(node):
        yield from _walk(c)


def _symbols(node: tuple) -> frozenset:
    return frozenset(n[1] for n in _walk(node) if n[0] == "sym")


def _has_decimal(node: tuple) -> bool:
    return any(n[0] == "num" and n[2] for n in _walk(node))


def _non_analytic(node: tuple) -> bool:
    return any(n[0] in ("abs", "floor", "ceil", "fact", "binom") for n in _walk(node))


# ----------------------------------------------------------------------------------------------------------------------
# 5. Structure: _equal (tuples, sets, intervals, matrices, labels, relations, \pm; scalars go to step 6)

_UNORDERED = ("list", "set")
_SCALARS = {
    "num", "sym", "const", "neg", "add", "mul", "frac", "pow", "root", "fn", "log",
    "abs", "floor", "ceil", "fact", "binom",
}  # fmt: skip
_LABEL_KINDS = {"sym", "mul", "frac", "abs", "ratio", "add", "seq", "fn"}
_INF = ("const", "inf")


def _equal(p: tuple, g: tuple) -> tuple[bool, str]:
    """Structural comparison; scalars go to _scalar_equal."""
    if p == g:
        return True, "identical expressions"
    for side in (p, g):  # "24000 \\cdot 1.01^{30} \\approx 32348": the exact value, or its true rounding
        if side[0] == "rel" and "~" in side[1]:
            ok, why = _equal(_settle(p), _settle(g))
            exact, approx = side[2][side[1].index("~")], side[2][side[1].index("~") + 1]
            if ok or not _rounds(exact, approx):
                return ok, why
            return _equal(approx, g) if side is p else _equal(p, approx)
    p, g = _pm_list(_regroup(_merge_sets(p))), _pm_list(_regroup(_merge_sets(g)))
    kp, kg = p[0], g[0]
    if kp == "rel" or kg == "rel":
        if kp == "rel" and kg == "rel":
            fp, fg = _flip(p), _flip(g)
            if fp[1] == fg[1] and _ordered_equal(fp[2], fg[2]):
                return True, "same relation"
            graph = _graph_sides(p, g)
            if graph is not None:  # "f(x) = x^2 + 1" and "y = x^2 + 1" name the same function
                ok, why = _equal(*graph)
                return ok, f"the same function named two ways: {why}"
            if fp[1] == fg[1] == ("=",):
                return (
                    (True, "equations differ by a constant factor")
                    if _equation_equal(fp, fg)
                    else (False, "different equations")
                )
            ip, ig = _intervals(p), _intervals(g)
            if ip is not None and ig is not None:
                return _sets_equal(ip, ig)
            return False, "different relations"
        rhs = _rhs(p if kp == "rel" else g)
        if rhs is not None:
            ok, why = _equal(rhs, g) if kp == "rel" else _equal(p, rhs)
            return ok, f"the value of a labelled answer: {why}"
        ip, ig = _intervals(p), _intervals(g)
        if ip is not None and ig is not None:
            return _sets_equal(ip, ig)
        return False, "a relation against a value"
    if "union" in (kp, kg):  # with a union of intervals, or inequalities joined by "or"
        ip, ig = _intervals(p), _intervals(g)
        if ip is None or ig is None:
            return False, "different kinds of sets"
        return _sets_equal(ip, ig)
    if kp == "seq" and kg == "seq":
        if p[1] != g[1]:
            return False, f"brackets differ ({p[1]} vs {g[1]})"
        return (True, "same tuple/interval") if _ordered_equal(p[2], g[2]) else (False, "different tuple/interval")
    if kp in _UNORDERED and kg in _UNORDERED:
        return (True, "same elements (any order)") if _unordered_equal(p[1], g[1]) else (False, "different elements")
    if kp == "list" and kg not in _UNORDERED and all(_equal(c, g)[0] for c in p[1]):
        return True, "every listed form equals the gold"  # "\\boxed{15\\frac{39}{40}}, or \\boxed{\\frac{639}{40}}"
    if {kp, kg} == {"seq", "list"} and "()" in (p[1], g[1]):  # "1, 2" against "(1, 2)": same values, same order
        ps, gs = p[-1], g[-1]
        return (True, "same values in order") if _ordered_equal(ps, gs) else (False, "different values")
    if kp == "matrix" or kg == "matrix":
        ep = [c for r in p[1] for c in r] if kp == "matrix" else list(p[-1]) if kp in ("seq", "list") else None
        eg = [c for r in g[1] for c in r] if kg == "matrix" else list(g[-1]) if kg in ("seq", "list") else None
        if ep is None or eg is None:
            return False, "a matrix against a non-matrix"
        if kp == kg == "matrix" and (len(p[1]), len(p[1][0])) != (len(g[1]), len(g[1][0])):
            return False, "matrix shapes differ"
        if kp != kg and min(len((p if kp == "matrix" else g)[1]), len((p if kp == "matrix" else g)[1][0])) != 1:
            return False, "a matrix against a tuple"
        return (True, "same entries") if _ordered_equal(ep, eg) else (False, "different entries")
    if kp == "ratio" and kg == "ratio":  # a:b = c:d when ad = bc; with a zero part, part by part (05:00 != 6:0)
        (a, b), (c, d) = p[1], g[1]
        if 0 in (_exact(a), _exact(b), _exact(c), _exact(d)):
            return (True, "same ratio") if _ordered_equal(p[1], g[1]) else (False, "different ratios")
        return _scalar_equal(("mul", (a, d)), ("mul", (b, c)))
    if "ratio" in (kp, kg) and {kp, kg} <= _SCALARS | {"ratio"}:  # 11:21 against 11/21: the quotient
        quotient = [("frac", *x[1]) if x[0] == "ratio" else x for x in (p, g)]
        ok, why = _scalar_equal(*quotient)
        return ok, f"ratio as a quotient: {why}"
    if kg == "base":  # 52_8 vs 52_{8}, or the bare digits "52" (the problem asked for base 8)
        if kp == "base":
            return (True, "same numeral") if p[2] == g[2] and _exact(p) == _exact(g) else (False, "different numerals")
        if kp == "num" and not p[2] and p[1].denominator == 1 and str(p[1].numerator) == (g[1].lstrip("0") or "0"):
            return True, f"same digits in base {g[2]}"
        return False, "different numerals"
    if kp == "base":  # a numeral in another base against a plain gold number: its value
        return _scalar_equal(("num", _exact(p), False), g) if _exact(p) is not None else (False, "bad numeral")
    if kp not in _SCALARS or kg not in _SCALARS:
        return False, f"different kinds ({kp} vs {kg})"
    return _scalar_equal(p, g)


def _flip(node: tuple) -> tuple:
    """Relations rewritten with < and <= only: "x > 3" -> "3 < x"."""
    ops, exprs = node[1], node[2]
    if all(o in (">", ">=") for o in ops):
        return ("rel", tuple({">": "<", ">=": "<="}[o] for o in reversed(ops)), tuple(reversed(exprs)))
    return node


def _names_only(node: tuple) -> bool:
    """Symbols joined without numbers (an inverse f^{-1} or A^{-1} included; e and i may be names too)."""
    if node[0] == "sym" or node in (("const", "e"), ("const", "i")):
        return True
    if node[0] == "pow":
        return node[2] == ("neg", ("num", Fraction(1), False)) and _names_only(node[1])
    return node[0] in _LABEL_KINDS and all(_names_only(c) for c in _children(node))


def _label_like(node: tuple, value: tuple | None = None) -> bool:
    """A left-hand side that only names the answer: x, a_1, f(x), (x, y), |AB|, a+b, xy, \\frac{NO}{BO}, V_1:V_2,
    \\angle ABC, \\tan\\theta, f^{-1}(x), e (see _names_only); and any name of a matrix
    ("A^{-1} = \\begin{pmatrix}...")."""
    if value is not None and value[0] == "matrix":
        return True
    return _names_only(node)


def _rhs(node: tuple) -> tuple | None:
    """The value a relation states about a named quantity: "x = 5" -> 5, "x \\in [1, 2]" -> [1, 2], "|AB| = 1" -> 1,
    "S = 3 + 4 = 7" -> 7 (a chain ends in its result); or the result of a computation whose last two sides agree,
    "\\binom{6}{2} = 15" -> 15, "f(-2) + f(0) = 2 + 1 = 3" -> 3 ("1 + 1 = 3" states no answer); None for equations
    like "2x = 10"."""
    if node[0] != "rel":
        return None
    ops, exprs = node[1], node[2]
    if _label_like(exprs[0], exprs[1]):
        return exprs[-1] if ops == ("in",) or all(o == "=" for o in ops) else None
    if len(exprs) > 2 and all(o == "=" for o in ops) and _names_only(exprs[-1]):  # "36 - 19 = 17 = x": 17
        return _rhs(("rel", ops[:-1], exprs[:-1]))  # ... when what precedes the name states it
    if all(o == "=" for o in ops) and _equal(exprs[-2], exprs[-1])[0]:
        return exprs[-1]  # a computation ending in its result: the last two sides agree
    return None


def _settle(node: tuple) -> tuple:
    """A relation with \\approx loses its approximations: "\\frac{\\sqrt3}{3} \\approx 0.577" -> \\frac{\\sqrt3}{3},
    "x = \\sqrt2 \\approx 1.41" -> "x = \\sqrt2"; a bare "x \\approx 1.41" is "x = 1.41" (the decimal is the answer)."""
    if node[0] != "rel" or "~" not in node[1]:
        return node
    ops, exprs = node[1], node[2]
    cut = ops.index("~")
    if cut == 0 and len(exprs) == 2 and _label_like(exprs[0]):
        return ("rel", ("=",), exprs)
    return exprs[0] if cut == 0 else ("rel", ops[:cut], exprs[: cut + 1])


def _rounds(exact: tuple, approx: tuple) -> bool:
    """Whether the number `approx` is `exact` correctly rounded to the digits written: 0.577 for \\frac{\\sqrt3}{3} and
    32348 for 24000 \\cdot 1.01^{30}, but not 0.577 for \\frac{\\sqrt2}{3}."""
    bare = approx[1] if approx[0] == "neg" else approx
    a, e = _constant(approx), _constant(exact)
    if bare[0] != "num" or a is None or e is None:
        return False
    ulp = bare[2] or Fraction(1)
    return abs(a - e) <= _MP.mpf(ulp.numerator) / ulp.denominator / 2


def _merge_sets(node: tuple) -> tuple:
    """A union of finite sets is one set: \\{1\\} \\cup \\{2, 3\\} -> \\{1, 2, 3\\} (repeated elements written once)."""
    if node[0] != "union" or any(part[0] != "set" for part in node[1]):
        return node
    return ("set", tuple(dict.fromkeys(c for part in node[1] for c in part[1])))


def _regroup(node: tuple) -> tuple:
    """"p = 5, q = 2; p = 7, q = 2" -> "(5, 2), (7, 2)": labelled values whose names repeat in a cycle are a list of
    tuples, one per cycle (a single cycle "p = 5, q = 2" already compares with "(5, 2)" in order)."""
    if node[0] != "list":
        return node
    items = node[1]
    names = [c[2][0] if c[0] == "rel" and c[1] == ("=",) and c[2][0][0] == "sym" else None for c in items]
    m = len(set(names))
    if None in names or m < 2 or len(names) == m or len(names) % m or names != names[:m] * (len(names) // m):
        return node
    return ("list", tuple(("seq", "()", tuple(c[2][1] for c in items[i : i + m])) for i in range(0, len(items), m)))


def _constant(node: tuple):
    """The real value of a constant expression (None when it has symbols or no real value)."""
    if _symbols(node):
        return None
    try:
        exact = _exact(node)  # gcd, binomials and factorials have exact values only
        return _MP.mpf(exact.numerator) / exact.denominator if exact is not None else _real(_num(node, {}))
    except (_ParseError, ValueError, ZeroDivisionError, _TooBig, TypeError):
        return None


def _is_node(f) -> bool:
    """Whether a field of a tree node is itself a node (fields are also strings, numbers and tuples of nodes)."""
    return isinstance(f, tuple) and bool(f) and isinstance(f[0], str)


def _subst(node: tuple, name: str, value: tuple) -> tuple:
    """The tree with the symbol `name` replaced by the tree `value`."""
    if node == ("sym", name):
        return value

    def field(f):
        if _is_node(f):
            return _subst(f, name, value)
        return tuple(field(g) for g in f) if isinstance(f, tuple) else f

    return (node[0],) + tuple(field(f) for f in node[1:])


def _affine(t: tuple, name: str) -> tuple | None:
    """(a, b, sign of a) with t = a*name + b, when t is affine in name (checked at two more points); else None."""
    xs = (Fraction(0), Fraction(1), Fraction(5, 2), Fraction(-3, 7))
    at = [_subst(t, name, ("num", x, False)) for x in xs]
    vals = [_constant(x) for x in at]
    if any(v is None for v in vals):
        return None
    a, b = vals[1] - vals[0], vals[0]
    if a == 0 or not all(_close(v, b + a * x.numerator / x.denominator, 1e-20) for v, x in zip(vals[2:], xs[2:])):
        return None
    return ("add", (at[1], ("neg", at[0]))), at[0], 1 if a > 0 else -1


def _interval(lo: tuple, lo_closed: bool, hi: tuple, hi_closed: bool) -> tuple:
    return ("seq", ("[" if lo_closed and lo != ("neg", _INF) else "(") + ("]" if hi_closed and hi != _INF else ")"),
            (lo, hi))


def _mirror(e: tuple) -> tuple:
    return ("neg", _INF) if e == _INF else _INF if e == ("neg", _INF) else ("neg", e)


def _unfold_abs(parts: list) -> list | None:
    """{s : |s| in parts}: |s| <= 2 -> [-2, 2]; 1 <= |s| <= 3/2 -> [-3/2, -1] u [1, 3/2]; |s| > 1 -> (-oo, -1) u
    (1, oo)."""
    out = []
    for _, br, (lo, hi) in parts:
        lo_value = -1 if lo == ("neg", _INF) else _constant(lo)
        if lo_value is None:
            return None
        if lo_value < 0:
            out.append(_interval(_mirror(hi), br[1] == "]", hi, br[1] == "]"))
        else:
            out += [_interval(_mirror(hi), br[1] == "]", _mirror(lo), br[0] == "["), ("seq", br, (lo, hi))]
    return out


def _preimage(t: tuple, parts: list) -> list | None:
    """{x : t(x) in parts} for the one variable x of t: through |.|, and an affine t (2x - 4, -x, x + 1: divided out,
    flipped when a < 0); when t only names a quantity (f(x), a + b, |AB|) the parts are its range as written."""
    if t[0] == "abs" and (t[1][0] == "sym" or not _label_like(t[1])):
        unfolded = _unfold_abs(parts)
        return None if unfolded is None else _preimage(t[1], unfolded)
    if _label_like(t):
        return parts
    names = _symbols(t)
    aff = _affine(t, next(iter(names))) if len(names) == 1 else None
    if aff is None:
        return None
    a, b, sign = aff

    def back(e):  # u -> (u - b) / a; an infinite end stays infinite (its sign flips with a)
        if e in (_INF, ("neg", _INF)):
            return e if sign > 0 else _mirror(e)
        return ("frac", ("add", (e, ("neg", b))), a)

    out = []
    for _, br, (lo, hi) in parts:
        if sign > 0:
            out.append(_interval(back(lo), br[0] == "[", back(hi), br[1] == "]"))
        else:
            out.append(_interval(back(hi), br[1] == "]", back(lo), br[0] == "["))
    return out


def _relation_set(node: tuple) -> list | None:
    """A relation in one variable (or about one named quantity) as intervals of that variable: "x > 3", "2 <= x < 5",
    "-x > -1" (x < 1), "2x - 4 >= 0", "x \\neq 2", "|x| < 3", "1 <= |z| <= 3/2", "0 < f(x) < 1"; None otherwise."""
    r = _flip(node)
    ops, exprs = r[1], r[2]
    const = [not _symbols(e) for e in exprs]
    if ops == ("!=",) and const.count(True) == 1:
        t, c = (exprs[0], exprs[1]) if const[1] else (exprs[1], exprs[0])
        return _preimage(t, [_interval(("neg", _INF), False, c, False), _interval(c, False, _INF, False)])
    if not all(o in ("<", "<=") for o in ops) or len(exprs) not in (2, 3):
        return None
    if len(exprs) == 3:
        if const != [True, False, True]:
            return None
        return _preimage(exprs[1], [_interval(exprs[0], ops[0] == "<=", exprs[2], ops[1] == "<=")])
    closed = ops[0] == "<="
    if const == [True, False]:
        return _preimage(exprs[1], [_interval(exprs[0], closed, _INF, False)])
    if const == [False, True]:
        return _preimage(exprs[0], [_interval(("neg", _INF), False, exprs[1], closed)])
    if const == [False, False]:  # both sides vary: lhs - rhs < 0
        zero = ("num", Fraction(0), False)
        return _preimage(("add", (exprs[0], ("neg", exprs[1]))), [_interval(("neg", _INF), False, zero, closed)])
    return None


def _intervals(node: tuple) -> list | None:
    """A set of reals as a list of ("seq", brackets, (lo, hi)) intervals, or None."""
    k = node[0]
    if k == "seq" and len(node[2]) == 2:
        return [node]
    if k == "union":
        parts = [_intervals(p) for p in node[1]]
        return None if any(p is None for p in parts) else [i for p in parts for i in p]
    if k == "rel":
        if _rhs(node) is not None:
            return _intervals(_rhs(node))
        return _relation_set(node)
    if k == "list":
        parts = [_intervals(p) for p in node[1]]
        return None if any(p is None or p[0][0] != "seq" for p in parts) else [i for p in parts for i in p]
    return None


def _unordered_equal(ps, gs) -> bool:
    if len(ps) != len(gs):
        return False
    left = list(ps)
    for g in gs:
        for j, p in enumerate(left):
            if _equal(p, g)[0]:
                del left[j]
                break
        else:
            return False
    return True


def _ordered_equal(ps, gs) -> bool:
    return len(ps) == len(gs) and all(_equal(p, g)[0] for p, g in zip(ps, gs))


def _replace_pm(node: tuple) -> list | None:
    """The two trees with the first \\pm (in reading order) taken as + and as -; None when there is none."""
    if node[0] == "pm":
        return [node[1], ("neg", node[1])]
    for i, f in enumerate(node[1:], 1):
        if _is_node(f):  # a child: \frac{1 \pm \sqrt5}{2}
            sub = _replace_pm(f)
            if sub:
                return [node[:i] + (v,) + node[i + 1 :] for v in sub]
        elif isinstance(f, tuple):  # a tuple of children: the terms of a sum, the factors of a product
            for j, c in enumerate(f):
                sub = _replace_pm(c) if _is_node(c) else None
                if sub:
                    return [node[:i] + (f[:j] + (v,) + f[j + 1 :],) + node[i + 1 :] for v in sub]
    return None


def _expand_pm(node: tuple) -> list:
    """a \\pm b -> [a + b, a - b], wherever the \\pm stands (\\frac{1 \\pm \\sqrt5}{2} too); each further \\pm doubles
    the values, up to MAX_PM_VALUES (then the answer stays unexpanded: 40 signs must not cost 2^40 trees)."""
    values = [node]
    while len(values) <= MAX_PM_VALUES:
        expanded = [_replace_pm(v) or [v] for v in values]
        if all(len(e) == 1 for e in expanded):
            return values
        values = [v for e in expanded for v in e]
    return [node]


def _pm_list(node: tuple) -> tuple:
    """A scalar with \\pm as the unordered list of its values; anything else unchanged."""
    if node[0] in ("num", "sym", "const"):  # leaves, the most frequent case: no walk
        return node
    if node[0] == "list" and any(n[0] == "pm" for n in _walk(node)):  # "0, \\pm 2" is the list 0, 2, -2
        return ("list", tuple(v for c in node[1] for v in _expand_pm(c)))
    if node[0] not in _SCALARS and node[0] != "pm" or not any(n[0] == "pm" for n in _walk(node)):
        return node
    values = _expand_pm(node)
    return node if len(values) == 1 else ("list", tuple(values))


def _equation_equal(p: tuple, g: tuple) -> bool:
    """lhs1 = rhs1 and lhs2 = rhs2 describe the same set: (l1 - r1) / (l2 - r2) is a non-zero constant."""
    d1 = ("add", (p[2][0], ("neg", p[2][1])))
    d2 = ("add", (g[2][0], ("neg", g[2][1])))
    names = _symbols(d1) | _symbols(d2)
    if not names:
        return False
    ratios = []
    for env in _sample_points(d1, d2, names):
        try:
            a, b = _num(d1, env), _num(d2, env)
        except (ZeroDivisionError, ValueError, _TooBig):
            continue
        if a == 0 and b == 0:  # a point on both curves says nothing about the ratio
            continue
        if a == 0 or b == 0:
            return False
        ratios.append(a / b)
    return len(ratios) >= 2 and all(_close(r, ratios[0], 1e-20) for r in ratios)


def _function_label(node: tuple) -> str | None:
    """The variable of a function's name, "f(x)" -> "x" (parsed as the product of two one-letter names); None."""
    if node[0] == "mul" and len(node[1]) == 2 and all(c[0] == "sym" and len(c[1]) == 1 for c in node[1]):
        return node[1][1][1]
    return None


def _graph_sides(p: tuple, g: tuple) -> tuple | None:
    """The right sides of two equations that name one function, "f(x) = ..." and "y = ..." (or "g(x) = ..."), when
    neither right side uses the name; None otherwise. "x = 5" and "y = 5" stay two different statements."""
    if not (p[0] == g[0] == "rel" and p[1] == g[1] == ("=",)):
        return None
    (lp, rp), (lg, rg) = p[2], g[2]
    fp, fg = _function_label(lp), _function_label(lg)
    if fp is None and fg is None or fp is not None and fg is not None and fp != fg:
        return None
    if (fp is None and lp != ("sym", "y")) or (fg is None and lg != ("sym", "y")):
        return None
    names = _symbols(lp) | _symbols(lg)
    var = fp or fg
    if (_symbols(rp) | _symbols(rg)) & (names - {var}):
        return None
    return rp, rg


def _sets_equal(ip: list, ig: list) -> tuple[bool, str]:
    """Two sets of reals given as intervals (from unions, relations or "x \\in ...")."""
    if _unordered_equal(ip, ig):
        return True, "same union of intervals"
    return False, "different sets of reals"


# ----------------------------------------------------------------------------------------------------------------------
# 6. Scalars: _scalar_equal (exact rationals, else mpmath with size guards, else sympy)


def _scalar_equal(p: tuple, g: tuple) -> tuple[bool, str]:
    """Equality of two scalar expressions per the tolerance policy in the module docstring."""
    if p == g:
        return True, "identical expressions"
    approx = _has_decimal(p) or _has_decimal(g)
    ep, eg = _exact(p), _exact(g)
    integer = (ep is not None and ep.denominator == 1) or (eg is not None and eg.denominator == 1)
    rel = REL_TOL_DECIMAL if approx and not integer else REL_TOL_EXACT
    if ep is not None and eg is not None:
        if ep == eg:
            return True, f"equal rationals ({_short(ep)})"
        if rel == REL_TOL_DECIMAL and _decimal_close(
            p, g, _MP.mpf(ep.numerator) / ep.denominator, _MP.mpf(eg.numerator) / eg.denominator
        ):
            return True, f"decimal within relative {rel:g}"
        return False, f"different numbers ({_short(ep)} vs {_short(eg)})"
    names = _symbols(p) | _symbols(g)
    if not names and eg is None and _bare_decimal(p) and not _has_decimal(g):  # p is the prediction
        return False, "a decimal prediction for an exact irrational value"
    if not names:
        a, b = _num(p, {}), _num(g, {})
        if _decimal_close(p, g, a, b) if rel == REL_TOL_DECIMAL else _close(a, b, rel) and _confirmed(p, g, {}):
            return True, f"equal values ({_MP.nstr(a, 12)})" + (
                f" within relative {rel:g}" if rel > REL_TOL_EXACT else ""
            )
        return False, f"different values ({_MP.nstr(a, 12)} vs {_MP.nstr(b, 12)})"
    checked = nonzero = 0
    for env in _sample_points(p, g, names):
        try:
            a, b = _num(p, env), _num(g, env)
        except (ZeroDivisionError, ValueError, _TooBig):
            continue
        if _MP.isinf(a) or _MP.isinf(b):
            continue
        nonzero += a != 0
        if not _close(a, b, rel) or (rel == REL_TOL_EXACT and not _confirmed(p, g, env)):
            return False, f"differ at {_fmt_env(env)}"
        checked += 1
    if checked >= 2 and not nonzero and not (_exact(p) == 0 or _exact(g) == 0):
        return False, "both sides vanish everywhere (I(0) read as I*0?): not evidence of equality"
    if checked >= 2:
        return True, f"agree at {checked} random points of {', '.join(sorted(names))}"
    if _sympy_equal(p, g):
        return True, "sympy simplify(pred - gold) == 0"
    return False, "could not show equality"


def _bare_decimal(node: tuple) -> bool:
    """A number written as a decimal, like 1.4142136 or -0.577 (not an exact expression using one, like 1/1.3)."""
    node = node[1] if node[0] == "neg" else node
    return node[0] == "num" and bool(node[2])


def _check_bits(v: Fraction) -> Fraction:
    if v.numerator.bit_length() > MAX_BITS or v.denominator.bit_length() > MAX_BITS:
        raise _TooBig("exact value too large")
    return v


def _int_root(n: int, k: int) -> int | None:
    """The exact integer k-th root of n >= 0, or None."""
    if n < 2:
        return n
    r = math.isqrt(n) if k == 2 else int(round(math.exp(math.log(n) / k)))
    for c in (r - 1, r, r + 1):
        if c >= 0 and c**k == n:
            return c
    return None


def _exact_root(v: Fraction, k: int) -> Fraction | None:
    if k <= 0 or k > 64:
        return None
    if v < 0:
        if k % 2 == 0:
            return None
        r = _exact_root(-v, k)
        return None if r is None else -r
    p, q = _int_root(v.numerator, k), _int_root(v.denominator, k)
    return None if p is None or q is None else Fraction(p, q)


def _exact(node: tuple) -> Fraction | None:
    """The exact rational value of a constant expression, or None when it is not rational (or not a number)."""
    k = node[0]
    if k == "num":
        return node[1]
    if k == "neg":
        v = _exact(node[1])
        return None if v is None else -v
    if k in ("add", "mul"):
        vals = [_exact(c) for c in node[1]]
        if any(v is None for v in vals):
            return None
        out = Fraction(0) if k == "add" else Fraction(1)
        for v in vals:
            out = _check_bits(out + v if k == "add" else out * v)
        return out
    if k == "frac":
        a, b = _exact(node[1]), _exact(node[2])
        return None if a is None or b is None or b == 0 else _check_bits(a / b)
    if k in ("pow", "root"):
        b, e = _exact(node[1]), _exact(node[2])
        if b is None or e is None:
            return None
        if k == "root":
            if e.denominator != 1:
                return None
            return _exact_root(b, int(e))
        if b == 0:
            return None if e <= 0 else Fraction(0)
        if b in (1, -1) and e.denominator == 1:
            return b ** int(e)
        if abs(e.numerator) * max(b.numerator.bit_length(), b.denominator.bit_length()) > MAX_BITS * e.denominator:
            raise _TooBig("power too large")
        v = _check_bits(b**e.numerator) if e.numerator >= 0 else _check_bits(1 / b**-e.numerator)
        return v if e.denominator == 1 else _exact_root(v, e.denominator)
    if k == "fact":
        v = _exact(node[1])
        if v is None or v.denominator != 1 or v < 0:
            return None
        if v > MAX_FACTORIAL:
            raise _TooBig("factorial too large")
        return Fraction(math.factorial(int(v)))
    if k == "binom":
        n, r = _exact(node[1]), _exact(node[2])
        if n is None or r is None or n.denominator != 1 or r.denominator != 1 or n < 0:
            return None
        if n > 10 * MAX_FACTORIAL:
            raise _TooBig("binomial too large")
        return Fraction(math.comb(int(n), int(r))) if r >= 0 else Fraction(0)
    if k == "fn" and node[1] in ("max", "min", "gcd", "lcm"):
        vals = [_exact(c) for c in (node[2][2] if node[2][0] == "seq" else (node[2],))]
        if any(v is None for v in vals):
            return None
        if node[1] in ("max", "min"):
            return max(vals) if node[1] == "max" else min(vals)
        if any(v.denominator != 1 for v in vals):
            return None
        ints = [int(v) for v in vals]
        return Fraction(math.gcd(*ints) if node[1] == "gcd" else math.lcm(*ints))
    if k == "base":  # 52_8 = 42, 0.0011_2 = 3/16
        whole, _, frac = node[1].partition(".")
        try:
            return Fraction(int(whole + frac, node[2]), node[2] ** len(frac)) if 2 <= node[2] <= 36 else None
        except ValueError:
            return None
    return None


_MP_FUNCS = {  # our name -> mpmath's
    "sin": "sin", "cos": "cos", "tan": "tan", "cot": "cot", "sec": "sec", "csc": "csc", "arcsin": "asin",
    "arccos": "acos", "arctan": "atan", "arccot": "acot", "arcsec": "asec", "arccsc": "acsc", "sinh": "sinh",
    "cosh": "cosh", "tanh": "tanh", "exp": "exp",
}  # fmt: skip


def _mag_ok(v):
    if _MP.isnan(v):
        raise ZeroDivisionError("not a number")
    if not _MP.isinf(v) and v != 0 and abs(_MP.mag(v)) > MAX_MAG:
        raise _TooBig("value too large")
    return v


def _real(v):
    """The real value of v; a ValueError when it has a genuine imaginary part (floor of a complex number)."""
    if v.imag != 0 and abs(v.imag) > abs(v) * 1e-30:
        raise ValueError("complex argument")
    return v.real


def _num(node: tuple, env: dict, ctx=_MP):
    """Value of a scalar tree (mpf/mpc) in mpmath context ctx (113 or 400 bits); symbols take their values from env."""
    k = node[0]
    if k == "num":
        return ctx.mpf(node[1].numerator) / node[1].denominator
    if k == "sym":
        if node[1] not in env:
            raise _ParseError(f"no value for {node[1]}")
        return ctx.convert(env[node[1]])  # into this context, so arithmetic runs at its precision
    if k == "const":
        return {"pi": ctx.pi, "e": ctx.e, "i": ctx.mpc(0, 1), "inf": ctx.inf}[node[1]] + 0
    if k == "neg":
        return -_num(node[1], env, ctx)
    if k == "add":
        return _mag_ok(ctx.fsum(_num(c, env, ctx) for c in node[1]))
    if k == "mul":
        out = ctx.mpf(1)
        for c in node[1]:
            out = _mag_ok(out * _num(c, env, ctx))
        return out
    if k == "frac":
        return _mag_ok(_num(node[1], env, ctx) / _num(node[2], env, ctx))
    if k in ("pow", "root"):
        b, e = _num(node[1], env, ctx), _num(node[2], env, ctx)
        if k == "root":
            e = 1 / e
        ex = _exact(node[2])
        if k == "root" and ex is not None and ex.denominator == 1 and ex % 2 == 1 and _real(b) < 0 and b.imag == 0:
            return -ctx.root(-b, int(ex))  # odd root of a negative number: the real root, \sqrt[3]{-8} = -2
        if k == "pow" and ex is not None and ex.denominator % 2 == 1 and ex.denominator > 1 and b.imag == 0 and b < 0:
            return (-1) ** (ex.numerator % 2) * ctx.power(-b, e)  # the real root too: (-8)^{2/3} = 4, as \sqrt[3]{-8}^2
        if abs(b) not in (0, 1) and abs(e) * (abs(ctx.mag(b)) + 1) > MAX_MAG:
            raise _TooBig("power too large")
        return _mag_ok(ctx.power(b, e))
    if k == "fn" and node[1] in ("max", "min"):
        vals = [_real(_num(c, env, ctx)) for c in (node[2][2] if node[2][0] == "seq" else (node[2],))]
        return max(vals) if node[1] == "max" else min(vals)
    if k == "fn":
        if node[1] in _MP_FUNCS:
            x = _num(node[2], env, ctx)
            if node[1] == "exp" and abs(x) > MAX_MAG:
                raise _TooBig("exp too large")
            return _mag_ok(getattr(ctx, _MP_FUNCS[node[1]])(x))
        raise _ParseError(f"cannot evaluate {node[1]}")
    if k == "log":
        x = _num(node[1], env, ctx)
        return ctx.log(x) if node[2] is None else _mag_ok(ctx.log(x) / ctx.log(_num(node[2], env, ctx)))
    if k == "abs":
        return abs(_num(node[1], env, ctx))
    if k in ("floor", "ceil"):
        x = _real(_num(node[1], env, ctx))
        if abs(x) > 2.0**60:
            raise _TooBig("floor of a huge value")
        nearest = ctx.nint(x)
        if abs(x - nearest) <= abs(x) * 1e-25:  # log2(4) may come out as 1.999...9: it is the integer
            return nearest
        return ctx.floor(x) if k == "floor" else ctx.ceil(x)
    if k == "fact":
        x = _num(node[1], env, ctx)
        if abs(x) > 10**5:
            raise _TooBig("factorial too large")
        return _mag_ok(ctx.gamma(x + 1))
    if k == "binom":
        n, r = _num(node[1], env, ctx), _num(node[2], env, ctx)
        if abs(n) > 10**5:
            raise _TooBig("binomial too large")
        return _mag_ok(ctx.binomial(n, r))
    if k == "base":
        v = _exact(node)
        if v is None:
            raise _ParseError("bad numeral")
        return ctx.mpf(v.numerator) / v.denominator
    raise _ParseError(f"cannot evaluate {k}")


def _confirmed(p: tuple, g: tuple, env: dict) -> bool:
    """Re-check an "equal" verdict at 400 bits: a true identity stays equal to ~1e-100, while a real difference
    hiding below the 113-bit tolerance (1 vs 1 + e^{-100}) shows up at the same size as before. A value inside of
    magnitude 2^{+-M} (M > 100) can hide a difference of 2^{-M} (2^{1/2^{1000}} is 1 + 2^{-1000} ln 2): the re-check
    then runs at 400 + 2M bits with a tolerance of 2^{-(300 + M)}, and past MAX_CONFIRM_BITS the answer is False."""
    spread = max(_spread(p, env), _spread(g, env))
    if spread <= 100:
        a, b = _num(p, env, _MP_HI), _num(g, env, _MP_HI)
        return a == b or abs(a - b) <= 1e-90 * max(abs(a), abs(b), 1)
    if 400 + 2 * spread > MAX_CONFIRM_BITS:
        return False
    ctx = mpmath.MPContext()  # a fresh context: the shared ones keep their precision (thread-safe)
    ctx.prec = 400 + 2 * spread
    a, b = _num(p, env, ctx), _num(g, env, ctx)
    return a == b or abs(a - b) <= ctx.ldexp(1, -(300 + spread)) * max(abs(a), abs(b), 1)


def _spread(node: tuple, env: dict) -> int:
    """The largest |log2 |v|| over the values of a scalar tree's subtrees (those that evaluate on their own)."""
    out = 0
    for sub in _walk(node):
        try:
            v = _num(sub, env)
            if v != 0 and not _MP.isinf(v) and not _MP.isnan(v):
                out = max(out, abs(int(_MP.mag(v))))
        except Exception:
            continue
    return out


def _decimal_close(p: tuple, g: tuple, a, b) -> bool:
    """The decimal-tolerance test: within 1e-6 relative, and a side written as a bare decimal must be correctly rounded
    at the coarser precision written (306956.63 != 306956.77, though they differ by only 5e-7 relative)."""
    if not _close(a, b, REL_TOL_DECIMAL):
        return False
    ulps = [t[2] for t in (p[1] if p[0] == "neg" else p, g[1] if g[0] == "neg" else g) if t[0] == "num" and t[2]]
    return not ulps or abs(a - b) <= _MP.mpf(max(ulps).numerator) / max(ulps).denominator / 2 * (1 + 1e-12)


def _close(a, b, rel: float) -> bool:
    if a == b:
        return True
    if _MP.isinf(a) or _MP.isinf(b):
        return False
    diff = abs(a - b)
    return diff <= rel * max(abs(a), abs(b)) or (rel == REL_TOL_EXACT and diff < 1e-25)


def _points(names: frozenset, kind: str) -> list[dict]:
    """Deterministic sample points for the variables of an expression.

    "real": reals in (0.5, 2.5): variables in answers are mostly positive quantities, so identities that need that
    (sqrt(x^2) = x, ln(x^2) = 2 ln x) hold. "negative": reals in (-2.5, -0.5), added when abs/floor/ceil appear, so
    |x| != x. "integer": 1..11, added for floor/ceil/abs/factorial/binomial answers, which are often equal on reals
    but not on integers (floor(n/2) vs ceil(n/2) - 1) or the other way round; each variable runs through all of 1..11.
    """
    out = []
    for j in range(11 if kind == "integer" else N_POINTS):
        env = {}
        for s, name in enumerate(sorted(names)):
            if kind == "integer":
                env[name] = _MP.mpf(1 + (j * (2 * s + 3) + s) % 11)
            else:
                x = _MP.mpf(random.Random(f"{name}/{j}").uniform(0.5, 2.5))
                env[name] = -x if kind == "negative" else x
        out.append(env)
    return out


def _sample_points(p: tuple, g: tuple, names: frozenset) -> list[dict]:
    """The points at which two expressions are compared (see _points)."""
    envs = _points(names, "real")
    if _non_analytic(p) or _non_analytic(g):
        envs += _points(names, "integer")
    if any(n[0] in ("abs", "floor", "ceil") for n in list(_walk(p)) + list(_walk(g))):
        envs += _points(names, "negative")
    return envs


def _sympy_equal(p: tuple, g: tuple) -> bool:
    """Last resort for expressions numeric sampling could not settle: sympy.simplify(p - g) == 0."""
    import sympy

    def conv(n):
        k = n[0]
        if k == "num":
            return sympy.Rational(n[1].numerator, n[1].denominator)
        if k == "sym":
            return sympy.Symbol(n[1], positive=True)
        if k == "const":
            return {"pi": sympy.pi, "e": sympy.E, "i": sympy.I, "inf": sympy.oo}[n[1]]
        if k == "neg":
            return -conv(n[1])
        if k == "add":
            return sympy.Add(*[conv(c) for c in n[1]])
        if k == "mul":
            return sympy.Mul(*[conv(c) for c in n[1]])
        if k == "frac":
            return conv(n[1]) / conv(n[2])
        if k in ("pow", "root"):
            b, e = conv(n[1]), conv(n[2])
            if e.is_Number and abs(e) > 1000:
                raise _TooBig("power too large for sympy")
            return sympy.Pow(b, e if k == "pow" else 1 / e)
        if k == "fn" and n[1] in _MP_FUNCS:
            return getattr(sympy, {"arcsin": "asin", "arccos": "acos", "arctan": "atan"}.get(n[1], n[1]))(conv(n[2]))
        if k == "log":
            return sympy.log(conv(n[1])) if n[2] is None else sympy.log(conv(n[1]), conv(n[2]))
        if k == "abs":
            return sympy.Abs(conv(n[1]))
        raise _ParseError(f"no sympy form for {k}")

    try:
        return sympy.simplify(conv(p) - conv(g)) == 0
    except (_ParseError, _TooBig, TypeError, ValueError, ZeroDivisionError, RecursionError, AttributeError):
        return False


def _short(v: Fraction) -> str:
    """A fraction for a message: exact when short, else 12 significant digits (str() of a 5000-digit int raises)."""
    if max(v.numerator.bit_length(), v.denominator.bit_length()) < 100:
        return str(v)
    return _MP.nstr(_MP.mpf(v.numerator) / v.denominator, 12)


def _fmt_env(env: dict) -> str:
    return ", ".join(f"{k}={_MP.nstr(v, 6)}" for k, v in env.items())


# ----------------------------------------------------------------------------------------------------------------------
# Hard time limit (every public call runs under it)

_LIMIT = threading.local()  # .active: a limit is already armed in this thread (nested public calls reuse it)


def _limited(fn, args: tuple, timeout: float | None, default):
    """fn(*args) under a hard wall-clock limit; `default` when it runs out or raises an unexpected Exception."""
    if getattr(_LIMIT, "active", False) or not timeout or timeout <= 0:
        try:
            return fn(*args)
        except Exception:
            return default
    _LIMIT.active = True
    try:
        if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGALRM"):
            return _limited_signal(fn, args, timeout, default)
        return _limited_thread(fn, args, timeout, default)
    finally:
        _LIMIT.active = False


def _limited_signal(fn, args, timeout, default):
    """Main thread: SIGALRM raises _Timeout between bytecodes; the caller's handler and timer are restored."""
    armed = [True]

    def on_alarm(signum, frame):
        if armed[0]:
            raise _Timeout

    start = time.monotonic()
    try:
        old_handler = signal.signal(signal.SIGALRM, on_alarm)
    except ValueError:  # signals unavailable (e.g. an embedded interpreter): run unguarded
        return _limited_thread(fn, args, timeout, default)
    try:
        try:
            old_timer = signal.setitimer(signal.ITIMER_REAL, timeout)
            return fn(*args)
        finally:
            armed[0] = False
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old_handler if old_handler is not None else signal.SIG_DFL)
            if old_timer[0] > 0:  # re-arm the caller's own timer with what was left of it
                signal.setitimer(signal.ITIMER_REAL, max(old_timer[0] - (time.monotonic() - start), 1e-3), old_timer[1])
    except _Timeout:
        return default
    except Exception:
        return default


def _limited_thread(fn, args, timeout, default):
    """Other threads: a timer thread injects _Timeout into this one (PyThreadState_SetAsyncExc); cleared on exit."""
    tid = threading.get_ident()
    lock = threading.Lock()
    state = {"active": True, "fired": False}

    def fire():
        with lock:
            if state["active"]:
                state["fired"] = True
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(tid), ctypes.py_object(_Timeout))

    timer = threading.Timer(timeout, fire)
    timer.daemon = True
    try:
        try:
            timer.start()
            return fn(*args)
        finally:
            with lock:
                state["active"] = False
                if state["fired"]:  # a pending, not yet raised _Timeout must not escape to the caller
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(tid), None)
            timer.cancel()
    except _Timeout:
        return default
    except Exception:
        return default


# ----------------------------------------------------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Is a predicted math answer equal to the gold answer? Prints the verdict and why (exit 0: equal).",
        epilog="Answers that start with '-' go after '--':  python -m mathrl.verify -- -\\frac{1}{2} -0.5",
    )
    ap.add_argument("pred", help="the predicted answer (or, with --response, a full model response)")
    ap.add_argument("gold", help="the gold answer")
    ap.add_argument("--response", action="store_true", help="PRED is a full response: extract its answer first")
    ap.add_argument("--strict", action="store_true", help="with --response: no last-number fallback")
    ap.add_argument("--boxed-only", action="store_true", help="with --response: only the last \\boxed{} counts")
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="time limit in seconds")
    args = ap.parse_args(argv)
    pred = args.pred
    if args.response:
        pred, rule = _extract(args.pred, strict=args.strict, boxed_only=args.boxed_only)
        print(f"extracted: {pred!r}  ({rule})")
        if pred is None:
            print("False  (no answer found in the response)")
            return 1
    ok, why = explain(pred, args.gold, timeout=args.timeout)
    print(f"{ok}  ({why})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
