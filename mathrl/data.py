"""
Reading the data: the training rows (train.py), the benchmark questions (eval.py and train.py's periodic eval) and
JSON Lines files (plot.py reads metrics.jsonl with the same reader). A file that is missing, or a row that cannot be
used, is a MissingFile / BadValue naming the file and, where there is one, the line.

    read_rows -> clean_rows        training rows: [{"problem", "answer"}] (answer: a string or a list of them)
    load_benchmark                 one benchmark's questions: [{"benchmark", "id", "problem", "answers": [...]}]
    load_eval_rows                 the held-out questions of train.py's periodic eval, in load_benchmark's layout
"""

import json
import re
from pathlib import Path

from mathrl import BadValue, CannotRun, MissingFile

BENCHMARKS = ("aime24", "amc", "math500", "minerva", "olympiadbench")  # the papers' order
HF_DATASET = "lkevinzc/math-eval"  # the hub dataset with one split per benchmark (eval.py --hf-dataset)
# split of each benchmark in HF_DATASET. lkevinzc/math-eval has splits of exactly 30/83/500/272/675 questions
# (problem, answer list): the sizes of the understand-r1-zero suite that the prompt-augmentation code evaluates on.
# Identified by its card (split names and sizes), not compared row by row (no hub access where this was written).
HF_SPLITS = {"aime24": "aime", "amc": "amc", "math500": "math", "minerva": "minerva", "olympiadbench": "olympiad_bench"}
UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")


def read_jsonl(path: Path, key: str | None = None) -> list[dict]:
    """All objects of a JSON Lines file (blank lines skipped); a line that is not a JSON object (with `key`, when
    given) is an error naming the file and line."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise BadValue(f"{path} line {lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict) or (key is not None and key not in row):
                want = "a JSON object" + (f" with a {key!r} key" if key is not None else "")
                got = "" if isinstance(row, dict) else f", got {type(row).__name__}"
                raise BadValue(f"{path} line {lineno}: expected {want}{got}")
            rows.append(row)
    return rows


def read_rows(source: str, subset: str = "", split: str = "train") -> list[dict]:
    """Raw rows of a .jsonl / .json / .parquet file, a folder of such files, or a Hugging Face dataset name."""
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".jsonl", ".json", ".parquet"))
        if not files:
            raise MissingFile(f"{source}: folder holds no .jsonl/.json/.parquet files")
        return [row for p in files for row in read_rows(str(p))]
    if path.suffix in (".jsonl", ".json", ".parquet") and not path.is_file():
        raise MissingFile(f"data file {source} not found")
    if path.suffix in (".jsonl", ".json"):
        return read_jsonl(path)  # a bad line is an error naming the file and line
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise CannotRun(f"reading {source} needs pyarrow (pip install pyarrow)") from None
        return pq.read_table(path).to_pylist()
    if path.exists() or source.startswith((".", "/")):
        raise BadValue(f"{source}: expected a .jsonl, .json or .parquet file, a folder of them, or a dataset name")
    try:
        import datasets
    except ImportError:
        raise CannotRun(f"{source} is not a local file, and loading it from the HF hub needs `datasets`") from None
    return [dict(r) for r in datasets.load_dataset(source, subset or None, split=split)]


def clean_rows(raw: list[dict], problem_field: str, answer_field: str, source: str) -> tuple[list[dict], int]:
    """[{"problem", "answer"}] from raw rows; rows with a missing or empty problem or answer are skipped and counted.

    The answer may be a string, a number or a list of accepted answers (kept as a list of strings).
    """
    if raw and not any(problem_field in r or "question" in r for r in raw):
        raise BadValue(f"{source}: no row has the field {problem_field!r}; fields of row 0: {sorted(raw[0])}")
    if raw and not any(answer_field in r for r in raw):
        raise BadValue(f"{source}: no row has the field {answer_field!r}; fields of row 0: {sorted(raw[0])}")
    rows, skipped = [], 0
    for r in raw:
        problem = r.get(problem_field, r.get("question")) if isinstance(r, dict) else None
        answer = r.get(answer_field) if isinstance(r, dict) else None
        answers = [str(a).strip() for a in (answer if isinstance(answer, list) else [answer]) if a is not None]
        answers = [a for a in answers if a]
        if not isinstance(problem, str) or not problem.strip() or not answers:
            skipped += 1
            continue
        rows.append({"problem": problem, "answer": answers[0] if len(answers) == 1 else answers})
    return rows, skipped


def clean_answer(answer) -> str:
    """One gold answer as a bare string.

    Numbers become their shortest string (AMC stores 142.0 -> "142"); whitespace is stripped (Minerva keeps a trailing
    newline on 268 of 351 answers); `$` math delimiters are removed (OlympiadBench wraps 265 of 675 answers in `$...$`,
    some as `$69$,$84$` -> "69,84"). An escaped dollar `\\$` (currency) is kept.
    """
    if isinstance(answer, float) and answer.is_integer():
        answer = int(answer)
    return UNESCAPED_DOLLAR.sub("", str(answer).strip()).strip()


def normalize_row(raw: dict, benchmark: str, index: int, source: str) -> dict:
    """{"benchmark", "id", "problem", "answers"} from one raw row (fields of the JSONL layout or of hub datasets)."""
    row_id = str(raw.get("id", f"{benchmark}-{index:03d}"))
    where = f"{source} row {index} (id {row_id!r})"
    problem = raw.get("problem", raw.get("question"))
    if not isinstance(problem, str) or not problem.strip():
        raise BadValue(f"{where}: no 'problem' (or 'question') text")
    for key in ("answers", "answer", "final_answer"):  # the full list first, then the single answer
        if raw.get(key) not in (None, "", []):
            value = raw[key]
            break
    else:
        raise BadValue(f"{where}: no answer (fields 'answers', 'answer' or 'final_answer' missing or empty)")
    answers = [clean_answer(a) for a in (value if isinstance(value, list) else [value])]
    answers = list(dict.fromkeys(a for a in answers if a))  # drop empties and duplicates, keep the order
    if not answers:
        raise BadValue(f"{where}: every answer is empty after cleaning ({value!r})")
    return {"benchmark": benchmark, "id": row_id, "problem": problem, "answers": answers}


def load_benchmark(
    name: str, data_dir: str | None = None, hf_dataset: str = HF_DATASET, limit: int | None = None
) -> list[dict]:
    """The questions of one benchmark: [{"benchmark", "id", "problem", "answers": [str, ...]}], in file order.

    From `data_dir/<name>.jsonl` when data_dir is given, else from the split HF_SPLITS[name] of the hub dataset.
    `limit` keeps the first N questions.
    """
    if name not in BENCHMARKS:
        raise BadValue(f"unknown benchmark {name!r}; known benchmarks: {', '.join(BENCHMARKS)}")
    if data_dir:
        path = Path(data_dir) / f"{name}.jsonl"
        if not path.is_file():
            raise MissingFile(f"benchmark file {path} not found (--data-dir must hold {name}.jsonl)")
        raw_rows, source = read_jsonl(path), str(path)
    else:
        raw_rows, source = load_hub_split(hf_dataset, HF_SPLITS[name]), f"{hf_dataset}[{HF_SPLITS[name]}]"
    rows = [normalize_row(raw, name, i, source) for i, raw in enumerate(raw_rows)]
    if not rows:
        raise BadValue(f"{source}: no questions")
    ids = [row["id"] for row in rows]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise BadValue(f"{source}: duplicate id {duplicate!r}")
    return rows[:limit] if limit else rows


def load_eval_rows(
    eval_data: str, benchmarks: str, data_dir: str = "", limit: int = 0, problem_field: str = "problem",
    answer_field: str = "answer",
) -> list[dict]:  # fmt: skip
    """train.py's held-out questions in load_benchmark's layout: the rows of `eval_data` (a file, folder or dataset
    name, read as training rows are) when given, else the comma-separated `benchmarks` (from data_dir, else the hub).
    `limit` keeps the first N questions of each."""
    if eval_data:
        rows, _ = clean_rows(read_rows(eval_data, split="test"), problem_field, answer_field, eval_data)
        return [{"benchmark": "heldout", "id": f"heldout-{i}", "problem": r["problem"],
                 "answers": r["answer"] if isinstance(r["answer"], list) else [r["answer"]]}
                for i, r in enumerate(rows[: limit or None])]  # fmt: skip
    names = [b.strip() for b in benchmarks.split(",") if b.strip()]
    return [row for b in names for row in load_benchmark(b, data_dir or None, limit=limit)]


def load_hub_split(dataset: str, split: str) -> list[dict]:
    """Rows of one split of a Hugging Face hub dataset (needs the `datasets` package and hub access)."""
    try:
        import datasets
    except ImportError:
        raise CannotRun(
            f"loading {dataset} from the Hugging Face hub needs the `datasets` package "
            "(pip install datasets); or pass --data-dir with <benchmark>.jsonl files"
        ) from None
    return [dict(row) for row in datasets.load_dataset(dataset, split=split)]
