"""Generates the quickstart's multi-task SFT data and its golden set, deterministically.

    python examples/data/generate.py            # rewrites examples/data/quickstart/*.jsonl
    python examples/data/generate.py --check    # exits 1 if the committed files differ

Four tasks, one fixed phrasing each (a 1M-parameter model learns these in minutes on a CPU):
arithmetic (2-digit addition), reverse (string reversal), upper (case conversion) and
kv_json (key-value extraction to JSON). Records use the ``messages`` format with ``task_type``.
The golden set's prompts never occur in the training file.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "quickstart"
SEED = 20260101
PER_TASK = 3000
GOLDEN_PER_TASK = 10

LETTERS = "abcdefghijklmnopqrstuvwxyz"
NAMES = ["ana", "bob", "chen", "dana", "eli", "fay", "gus", "hana", "ivan", "jo", "kim", "lea", "max",
         "nia", "omar", "pia", "quin", "rui", "sam", "tess", "uma", "vik", "wen", "yusuf", "zoe",
         "ada", "ben", "cruz", "dev", "eva", "finn", "gia", "hugo", "ida", "jan", "kai", "luz", "mo", "ned", "ola"]


def _word(rng: random.Random, lo: int, hi: int) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(rng.randint(lo, hi)))


def arithmetic(rng: random.Random) -> tuple[str, str, list[dict]]:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    ans = str(a + b)
    return f"{a}+{b}", ans, [{"type": "exact", "value": ans}]


def reverse(rng: random.Random) -> tuple[str, str, list[dict]]:
    w = _word(rng, 3, 5)
    return f"reverse: {w}", w[::-1], [{"type": "exact", "value": w[::-1]}]


def upper(rng: random.Random) -> tuple[str, str, list[dict]]:
    w = _word(rng, 3, 6)
    return f"upper: {w}", w.upper(), [{"type": "regex", "value": f"^{w.upper()}$"}]


def kv_json(rng: random.Random) -> tuple[str, str, list[dict]]:
    # two fields: short answers keep JSON from dominating the loss tokens of the mix
    name, age = rng.choice(NAMES), rng.randint(10, 99)
    ans = json.dumps({"name": name, "age": age})
    schema = {
        "type": "object",
        "properties": {"name": {"const": name}, "age": {"const": age}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    return (f"extract: name={name} age={age}", ans,
            [{"type": "json_schema", "value": schema}, {"type": "contains", "value": f'"{name}"'}])


TASKS = {"arithmetic": arithmetic, "reverse": reverse, "upper": upper, "kv_json": kv_json}


def build() -> dict[str, str]:
    rng = random.Random(SEED)
    train, seen = [], set()
    counts = dict.fromkeys(TASKS, 0)
    while min(counts.values()) < PER_TASK:
        for task, fn in TASKS.items():
            prompt, answer, _ = fn(rng)
            # unique prompts: held-out splits must not repeat training examples
            if counts[task] >= PER_TASK or prompt in seen:
                continue
            seen.add(prompt)
            counts[task] += 1
            train.append({"task_type": task, "messages": [
                {"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]})
    rng.shuffle(train)
    golden, grng = [], random.Random(SEED + 1)
    for task, fn in TASKS.items():
        n = 0
        while n < GOLDEN_PER_TASK:
            prompt, _, checks = fn(grng)
            if prompt in seen:
                continue
            seen.add(prompt)
            golden.append({"task_type": task, "messages": [{"role": "user", "content": prompt}],
                           "checks": checks})
            n += 1
    dump = lambda rows: "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)  # noqa: E731
    return {"train.jsonl": dump(train), "golden.jsonl": dump(golden)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="compare with the committed files instead")
    args = p.parse_args()
    files = build()
    if args.check:
        stale = [n for n, text in files.items() if not (OUT / n).is_file() or (OUT / n).read_text() != text]
        if stale:
            print(f"stale generated files: {', '.join(stale)}", file=sys.stderr)
            return 1
        return 0
    OUT.mkdir(parents=True, exist_ok=True)
    for n, text in files.items():
        (OUT / n).write_text(text)
        print(f"wrote {OUT / n} ({text.count(chr(10))} records)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
