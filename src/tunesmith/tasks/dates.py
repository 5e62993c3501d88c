"""The quickstart task: pull the date out of a sentence and write it as YYYY-MM-DD.

Generated deterministically from a seed, so every machine gets the same splits. The sentences
vary the date's surface form (month names, abbreviations, ordinals, weekdays, day-first and
month-first orders) and its context; the answer is always the ISO date alone. The bundled base
model can read dates but does not answer in this exact format zero-shot; a few minutes of LoRA
teach it.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from pathlib import Path

from tunesmith import atomic

INSTRUCTION = "Extract the date from the text and write it as YYYY-MM-DD. Reply with the date only."

MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
NAMES = ["Maria", "Ken", "Aisha", "Tomás", "Priya", "Olu", "Hannah", "Li Wei", "Sven", "Fatima", "Diego", "Yuki"]
CITIES = ["Lisbon", "Nairobi", "Osaka", "Toronto", "Lyon", "Pune", "Bergen", "Cusco", "Adelaide", "Kraków"]
ITEMS = ["invoice", "order", "ticket", "parcel", "application", "report"]

SENTENCES = [
    "The contract was signed on {date} in {city}.",
    "{name} was born on {date}.",
    "Our office will be closed on {date}.",
    "Payment for {item} #{num} is due {date}.",
    "According to {name}, the meeting moved to {date}.",
    "Shipped {date}; tracking number {num}.",
    "{date} marks the opening of the new library in {city}.",
    "Please reply to {name} by {date}.",
    "The {item} was filed on {date} and approved a week later.",
    "We landed in {city} on {date} after a long flight.",
    "Deadline: {date}. Late submissions are not accepted.",
    "{name}'s last day at the company is {date}.",
]


def ordinal(n: int) -> str:
    suffix = "th" if 11 <= n % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def surface(d: dt.date, style: int) -> str:
    """One of several ways people write the same date."""
    month, short = MONTHS[d.month - 1], MONTHS[d.month - 1][:3]
    forms = [
        f"{month} {d.day}, {d.year}",
        f"{d.day} {month} {d.year}",
        f"the {ordinal(d.day)} of {month}, {d.year}",
        f"{short} {d.day}, {d.year}",
        f"{ordinal(d.day)} {month} {d.year}",
        f"{WEEKDAYS[d.weekday()]}, {month} {d.day}, {d.year}",
        f"{month} {ordinal(d.day)}, {d.year}",
        f"{d.day} {short}. {d.year}",
    ]
    return forms[style % len(forms)]


def make_example(rng: random.Random) -> dict:
    start = dt.date(1950, 1, 1).toordinal()
    end = dt.date(2035, 12, 31).toordinal()
    d = dt.date.fromordinal(rng.randint(start, end))
    text = rng.choice(SENTENCES).format(
        date=surface(d, rng.randrange(8)),
        name=rng.choice(NAMES),
        city=rng.choice(CITIES),
        item=rng.choice(ITEMS),
        num=rng.randint(1000, 99999),
    )
    text = text[0].upper() + text[1:]
    return {
        "messages": [
            {"role": "user", "content": f"{INSTRUCTION}\n\nText: {text}"},
            {"role": "assistant", "content": d.isoformat()},
        ]
    }


def write_splits(
    out_dir: Path, n_train: int = 1200, n_val: int = 64, n_test: int = 200, seed: int = 1234
) -> dict[str, Path]:
    """train/val/test JSONL files with no sentence shared between splits."""
    rng = random.Random(seed)
    seen: set[str] = set()
    splits: dict[str, list[dict]] = {}
    for name, n in (("test", n_test), ("val", n_val), ("train", n_train)):
        rows: list[dict] = []
        while len(rows) < n:
            ex = make_example(rng)
            key = ex["messages"][0]["content"]
            if key not in seen:
                seen.add(key)
                rows.append(ex)
        splits[name] = rows
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, rows in splits.items():
        path = out_dir / f"{name}.jsonl"
        atomic.write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        paths[name] = path
    return paths


PROSE_ANSWER = "The date is"  # how a wrong answer in prose starts: the format, not the date, is wrong


def wrong_answer(d: dt.date, rng: random.Random) -> str:
    """A plausible wrong reply to the date task: prose instead of the format, day and month
    swapped, or a date a little off."""
    kind = rng.randrange(3)
    if kind == 0:
        return f"{PROSE_ANSWER} {surface(d, rng.randrange(8))}."
    if kind == 1 and d.day <= 12 and d.day != d.month:
        return dt.date(d.year, d.day, d.month).isoformat()
    return (d + dt.timedelta(days=rng.choice([-10, -1, 1, 2, 30, 365]))).isoformat()


def write_preference_splits(out_dir: Path, n_train: int = 600, n_val: int = 64, seed: int = 4321) -> dict[str, Path]:
    """Preference pairs for the date task ({prompt, chosen, rejected}): the right ISO date over a
    plausible wrong reply. A preference method must learn the format and the reading of the date."""
    rng = random.Random(seed)
    paths = write_splits(out_dir / "sft", n_train=n_train, n_val=n_val, n_test=0, seed=seed)
    out = {}
    for name in ("train", "val"):
        rows = []
        for line in paths[name].read_text(encoding="utf-8").splitlines():
            user, answer = json.loads(line)["messages"]
            rows.append(
                {
                    "prompt": user["content"],
                    "chosen": answer["content"],
                    "rejected": wrong_answer(dt.date.fromisoformat(answer["content"]), rng),
                }
            )
        path = out_dir / f"{name}.jsonl"
        atomic.write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        out[name] = path
    return out
