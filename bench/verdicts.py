"""
Every verdict of the verifier, recorded once and compared after a change: a refactor of mathrl/verify.py must leave
them all as they were, and a new rule must change only the verdicts of its own kind.

    .venv/bin/python bench/verdicts.py record /tmp/verdicts_before.jsonl     # with the verifier before the change
    .venv/bin/python bench/verdicts.py compare /tmp/verdicts_before.jsonl    # after it: prints what changed

The cases, each a call and its result:
  - every parametrised case of tests/test_verify.py (equal / not equal pairs both ways, full responses, extraction,
    pathological input), collected by pytest, so a case added later is listed as new;
  - every gold answer of ../shared/data (all entries of `answers`): against itself, boxed in a response, after "The
    answer is", re-written in plain text (the tests' round trip), with its first number changed by 1 and by 1/7, and
    against the gold answer of another problem (a derangement);
  - MATH500's solutions: the extracted answer (default and boxed-only), graded against their own answer and against
    a deranged one, with and without their boxes.
`compare` re-runs exactly the recorded calls, so the comparison does not depend on how the tests changed.
"""

import argparse
import contextlib
import io
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
DATA = ROOT.parent / "shared" / "data"
sys.path[:0] = [str(ROOT), str(TESTS)]

from mathrl import verify  # noqa: E402


def test_suite_cases() -> list[tuple]:
    """(kind, args) for each parametrised case of tests/test_verify.py, collected without running the tests."""
    import pytest

    params = []

    class Collect:
        def pytest_collection_modifyitems(self, items):
            params.extend(item.callspec.params for item in items if hasattr(item, "callspec"))

    with contextlib.redirect_stdout(io.StringIO()):  # the collection's listing is not the report
        pytest.main(["--collect-only", "-p", "no:cacheprovider", str(TESTS / "test_verify.py")], plugins=[Collect()])
    cases = []
    for p in params:
        if set(p) == {"pred", "gold"}:
            cases += [("equiv", (p["pred"], p["gold"])), ("equiv", (p["gold"], p["pred"]))]
            cases.append(("grade", ("\\boxed{" + p["pred"] + "}", p["gold"], False)))
        elif set(p) == {"response", "gold", "verdict"}:
            cases += [("grade", (p["response"], p["gold"], False)), ("grade", (p["response"], p["gold"], True))]
        elif set(p) == {"text", "expected"}:
            cases += [("extract", (p["text"], False)), ("extract", (p["text"], True))]
        else:
            print(f"not compared: a parametrised case with {sorted(p)}", file=sys.stderr)
    return cases


def data_cases() -> list[tuple]:
    """(kind, args) built from ../shared/data: gold answers and MATH500 solutions, each with near misses."""
    import test_verify as tv  # the tests' notation round trip (_render) and near-miss maker (_bump)

    golds = list(dict.fromkeys(tv._all_gold_answers()))
    cases = []
    for a in golds:
        cases += [("equiv", (a, a)), ("grade", (f"Thus $\\boxed{{{a}}}$.", a, True))]
        cases.append(("grade", (f"The answer is {a}.", a, False)))
        norm, _, tree, _ = verify._prepare(a)
        if tree is None:
            continue
        for t in [tree] + [tv._bump(tree, d, []) for d in (tv.Fraction(1), tv.Fraction(1, 7))]:
            try:
                cases.append(("equiv", (tv._render(t), a)))
            except ValueError:
                pass
    perm = _derangement(len(golds), seed=0)
    cases += [("equiv", (golds[j], a)) for a, j in zip(golds, perm)]
    rows = [json.loads(line) for line in (DATA / "eval" / "math500.jsonl").open()]
    perm = _derangement(len(rows), seed=0)
    for r, j in zip(rows, perm):
        sol, unboxed = r["solution"], tv._unboxed(r["solution"])
        cases += [("extract", (sol, False)), ("extract", (sol, True)), ("extract", (unboxed, False))]
        for text in (sol, unboxed):
            cases += [("grade", (text, r["answer"], False)), ("grade", (text, rows[j]["answer"], False))]
        cases += [("grade", (sol, r["answer"], True)), ("grade", (sol, rows[j]["answer"], True))]
    return cases


def _derangement(n: int, seed: int) -> list[int]:
    perm = list(range(n))
    random.Random(seed).shuffle(perm)
    return [j if j != i else (i + 1) % n for i, j in enumerate(perm)]


def run(kind: str, args: tuple):
    """The verdict of one call: (bool, reason) for a pair, bool for a response, the extracted string or None."""
    if kind == "equiv":
        return list(verify.explain(*args))
    if kind == "grade":
        return verify.grade(args[0], args[1], boxed_only=args[2])
    return verify.extract_answer(args[0], boxed_only=args[1])


def key(kind: str, args) -> str:
    return json.dumps([kind, list(args)], ensure_ascii=False)


def all_cases() -> list[tuple]:
    cases = [("tests",) + c for c in test_suite_cases()] + [("data",) + c for c in data_cases()]
    seen, out = set(), []
    for source, kind, args in cases:
        if key(kind, args) not in seen:
            seen.add(key(kind, args))
            out.append((source, kind, args))
    return out


def verdict_of(result):
    """The verdict alone: reasons may be reworded, verdicts may not change."""
    return result[0] if isinstance(result, list) else result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("mode", choices=["record", "compare"])
    ap.add_argument("path", type=Path, help="the recorded verdicts (JSON lines): written by record, read by compare")
    ap.add_argument("--out", type=Path, help="compare: also write the new verdicts here")
    args = ap.parse_args()
    start = time.perf_counter()
    if args.mode == "record":
        with args.path.open("w") as f:
            for source, kind, a in all_cases():
                row = {"source": source, "kind": kind, "args": list(a), "result": run(kind, a)}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"recorded {sum(1 for _ in args.path.open())} verdicts in {time.perf_counter() - start:.0f} s")
        return 0
    old = [json.loads(line) for line in args.path.open()]
    changed, counts = [], {}
    out = args.out.open("w") if args.out else None
    for row in old:
        new = run(row["kind"], tuple(row["args"]))
        counts[row["source"], row["kind"]] = counts.get((row["source"], row["kind"]), 0) + 1
        if out:
            out.write(json.dumps(dict(row, result=new), ensure_ascii=False) + "\n")
        if verdict_of(new) != verdict_of(row["result"]):
            changed.append((row, new))
    recorded = {key(r["kind"], r["args"]) for r in old}
    new_cases = [c for c in test_suite_cases() if key(*c) not in recorded]
    print(f"compared {len(old)} recorded verdicts in {time.perf_counter() - start:.0f} s:")
    for (source, kind), n in sorted(counts.items()):
        print(f"  {source:5s} {kind:7s} {n:6d}")
    print(f"changed: {len(changed)}")
    for row, new in changed:
        was, now = row["result"], new
        print(f"  {row['kind']} {json.dumps(row['args'], ensure_ascii=False)[:200]}\n    was {was!r}\n    now {now!r}")
    print(f"test-suite cases not in the record (added since): {len(new_cases)}")
    for kind, a in new_cases:
        print(f"  {kind} {json.dumps(list(a), ensure_ascii=False)[:200]} -> {run(kind, a)!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
