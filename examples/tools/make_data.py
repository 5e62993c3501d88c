"""A calendar-and-weather assistant's tool-calling data, generated deterministically.

    python make_data.py OUT_DIR [--train 480 --val 40 --test 100 --seed 0]

Three functions (get_weather, create_event, convert_currency). Requests name cities, dates in
words ("on 3 May", "tomorrow"), times ("at 9.30"), amounts and currencies; the reference turn calls
the right function with normalised arguments (ISO dates, 24-hour times, currency codes), two calls
when the request asks two things, and no call for small talk (answered in words). Every record is
OpenAI's chat format with `tools`; splits share no request text but the five small-talk lines.
"""

import argparse
import json
import random
from pathlib import Path

TODAY = "2026-05-01"  # the date the system turn gives; "tomorrow" is the day after
TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Weather forecast for a city on a day",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string"}, "date": {"type": "string", "description": "YYYY-MM-DD"},
            "unit": {"enum": ["celsius", "fahrenheit"]}}, "required": ["city", "date", "unit"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "create_event", "description": "Add an event to the calendar",
        "parameters": {"type": "object", "properties": {
            "title": {"type": "string"}, "date": {"type": "string", "description": "YYYY-MM-DD"},
            "time": {"type": "string", "description": "HH:MM, 24-hour"}},
            "required": ["title", "date", "time"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "convert_currency", "description": "Convert an amount between currencies",
        "parameters": {"type": "object", "properties": {
            "amount": {"type": "number"}, "from": {"enum": ["EUR", "USD", "GBP", "JPY", "NOK"]},
            "to": {"enum": ["EUR", "USD", "GBP", "JPY", "NOK"]}}, "required": ["amount", "from", "to"],
            "additionalProperties": False}}},
]
SYSTEM = f"You are a calendar and weather assistant. Today is {TODAY}."
CITIES = ["Oslo", "Rome", "Lisbon", "Tokyo", "Nairobi", "Lima", "Toronto", "Hanoi", "Cairo", "Perth", "Bergen", "Quito"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
CURRENCIES = {"EUR": ["euros", "EUR"], "USD": ["dollars", "USD"], "GBP": ["pounds", "GBP"], "JPY": ["yen", "JPY"],
              "NOK": ["Norwegian kroner", "NOK"]}
EVENTS = ["dentist", "team standup", "lunch with Ana", "yoga class", "project review", "call with the bank",
          "piano lesson", "flight check-in", "book club", "car service"]
SMALL_TALK = [("Thanks, that's all!", "You're welcome!"), ("Hello there", "Hello! How can I help?"),
              ("Who are you?", "I am a calendar and weather assistant."), ("Good night", "Good night!"),
              ("Can you help me?", "Yes: ask me about the weather, your calendar or currencies.")]


SMALL_TALK_TEXTS = {t for t, _ in SMALL_TALK}


def day(rng: random.Random) -> tuple[str, str]:
    """A day in words and as YYYY-MM-DD."""
    if rng.random() < 0.25:
        return ("today", TODAY) if rng.random() < 0.5 else ("tomorrow", "2026-05-02")
    month = rng.randrange(5, 13)
    d = rng.randrange(1, 29)
    words = rng.choice([f"on {d} {MONTHS[month - 1]}", f"on {MONTHS[month - 1]} {d}"])
    return words, f"2026-{month:02d}-{d:02d}"


def clock(rng: random.Random) -> tuple[str, str]:
    """A time as people write it on a 24-hour clock ("at 9:30", "at 09.30", "at 14:00") and as HH:MM."""
    hour, minute = rng.randrange(7, 21), rng.choice([0, 15, 30, 45])
    return rng.choice([f"at {hour}:{minute:02d}", f"at {hour:02d}.{minute:02d}", f"at {hour:02d}:{minute:02d}"]), \
        f"{hour:02d}:{minute:02d}"


def weather(rng: random.Random):
    city, (when, date) = rng.choice(CITIES), day(rng)
    unit = rng.choice(["celsius", "fahrenheit"])
    said = rng.choice([f"in {unit}", "in Fahrenheit" if unit == "fahrenheit" else "in Celsius"])
    text = rng.choice([f"What's the weather in {city} {when} {said}?", f"Weather for {city} {when}, {said} please",
                       f"Will it rain in {city} {when}? Temperatures {said}."])
    return text, [("get_weather", {"city": city, "date": date, "unit": unit})]


def event(rng: random.Random):
    title, (when, date), (at, time) = rng.choice(EVENTS), day(rng), clock(rng)
    text = rng.choice([f"Add {title} {when} {at}", f"Put {title} in my calendar {when} {at}",
                       f"Schedule {title} {when} {at}, please"])
    return text, [("create_event", {"title": title, "date": date, "time": time})]


def currency(rng: random.Random):
    src, dst = rng.sample(sorted(CURRENCIES), 2)
    amount = rng.choice([rng.randrange(5, 2000), round(rng.uniform(1, 500), 2)])
    text = rng.choice([f"How much is {amount} {rng.choice(CURRENCIES[src])} in {rng.choice(CURRENCIES[dst])}?",
                       f"Convert {amount} {rng.choice(CURRENCIES[src])} to {rng.choice(CURRENCIES[dst])}"])
    return text, [("convert_currency", {"amount": amount, "from": src, "to": dst})]


def two(rng: random.Random):
    (a, ca), (b, cb) = weather(rng), rng.choice([event, currency])(rng)
    return f"{a.rstrip('?.')} and {b[0].lower()}{b[1:]}", ca + cb


def record(rng: random.Random, index: int) -> tuple[str, dict]:
    kind = rng.random()
    if kind < 0.12:
        text, reply = rng.choice(SMALL_TALK)
        answer = {"role": "assistant", "content": reply}
    else:
        # a third of the call requests ask two things: the second call is what a small model learns last
        text, calls = (weather if kind < 0.36 else event if kind < 0.52 else currency if kind < 0.68 else two)(rng)
        answer = {"role": "assistant", "content": None, "tool_calls": [
            {"id": f"call_{index}_{i}", "type": "function", "function": {"name": n, "arguments": json.dumps(a)}}
            for i, (n, a) in enumerate(calls)]}
    return text, {"tools": TOOLS, "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}, answer]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--train", type=int, default=480)
    ap.add_argument("--val", type=int, default=40)
    ap.add_argument("--test", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng, seen, splits = random.Random(args.seed), set(), {}
    for split, n in (("test", args.test), ("val", args.val), ("train", args.train)):
        rows = []
        while len(rows) < n:
            text, row = record(rng, len(seen))
            if text in seen and text not in SMALL_TALK_TEXTS:
                continue
            seen.add(text)
            rows.append(row)
        splits[split] = rows
    args.out.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        (args.out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"{split}: {len(rows)} records")


if __name__ == "__main__":
    main()
