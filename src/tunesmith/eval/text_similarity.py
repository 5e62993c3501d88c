"""How alike two texts are, from 0 to 1: the `text_similarity` grader's metrics.

Words are lower-cased runs of letters and digits. BLEU is sentence BLEU-4 (Papineni et al. 2002)
with add-one smoothing of the 2- to 4-gram precisions (Lin and Och 2004) and the brevity
penalty; GLEU is Google's sentence score, min(precision, recall) over all 1- to 4-grams (Wu et al.
2016); ROUGE-N is the F1 of n-gram overlap and ROUGE-L the F1 of the longest common subsequence
(Lin 2004); fuzzy_match is difflib's ratio of matching characters.
"""

from __future__ import annotations

import difflib
import math
import re
from collections import Counter

WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def fuzzy_match(candidate: str, reference: str) -> float:
    return difflib.SequenceMatcher(None, candidate, reference, autojunk=False).ratio()


def bleu(candidate: str, reference: str, max_n: int = 4) -> float:
    c, r = words(candidate), words(reference)
    if not c or not r:
        return float(c == r)
    logs = []
    for n in range(1, max_n + 1):
        cand = ngrams(c, n)
        overlap = sum((cand & ngrams(r, n)).values())
        total = max(0, len(c) - n + 1)
        if n == 1:
            if overlap == 0:
                return 0.0
            logs.append(math.log(overlap / total))
        else:
            logs.append(math.log((overlap + 1) / (total + 1)))
    brevity = 1.0 if len(c) > len(r) else math.exp(1 - len(r) / len(c))
    return brevity * math.exp(sum(logs) / max_n)


def gleu(candidate: str, reference: str, max_n: int = 4) -> float:
    c, r = words(candidate), words(reference)
    matches = cand_total = ref_total = 0
    for n in range(1, max_n + 1):
        cand, ref = ngrams(c, n), ngrams(r, n)
        matches += sum((cand & ref).values())
        cand_total += sum(cand.values())
        ref_total += sum(ref.values())
    if cand_total == 0 or ref_total == 0:
        return float(cand_total == ref_total)
    return min(matches / cand_total, matches / ref_total)


def _f1(overlap: int, cand_total: int, ref_total: int) -> float:
    if cand_total == 0 or ref_total == 0:
        return float(cand_total == ref_total)
    if overlap == 0:
        return 0.0
    precision, recall = overlap / cand_total, overlap / ref_total
    return 2 * precision * recall / (precision + recall)


def rouge_n(candidate: str, reference: str, n: int) -> float:
    cand, ref = ngrams(words(candidate), n), ngrams(words(reference), n)
    return _f1(sum((cand & ref).values()), sum(cand.values()), sum(ref.values()))


def rouge_l(candidate: str, reference: str) -> float:
    c, r = words(candidate), words(reference)
    previous = [0] * (len(r) + 1)
    for token in c:
        current = [0]
        for j, other in enumerate(r):
            current.append(previous[j] + 1 if token == other else max(previous[j + 1], current[j]))
        previous = current
    return _f1(previous[-1], len(c), len(r))


def similarity(metric: str, candidate: str, reference: str) -> float:
    """`metric` one of config.graders.SIMILARITY."""
    if metric == "fuzzy_match":
        return fuzzy_match(candidate, reference)
    if metric == "bleu":
        return bleu(candidate, reference)
    if metric == "gleu":
        return gleu(candidate, reference)
    if metric == "rouge_l":
        return rouge_l(candidate, reference)
    if metric.startswith("rouge_") and metric[6:].isdigit():
        return rouge_n(candidate, reference, int(metric[6:]))
    raise ValueError(f"unknown text similarity metric {metric!r}")
