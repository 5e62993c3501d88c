"""How alike two texts are, from 0 to 1: the `text_similarity` grader's metrics, computed by the
libraries whose numbers users compare against.

BLEU is sacrebleu's sentence BLEU (13a tokenization, exponential smoothing, brevity penalty) over
100; GLEU is NLTK's sentence GLEU (Google's min of n-gram precision and recall, 1- to 4-grams) on
sacrebleu's 13a tokens; ROUGE-N and ROUGE-L are rouge-score's F-measures (its tokenizer: lower
case, letters and digits, no stemming); fuzzy_match is difflib's ratio of matching characters.
"""

from __future__ import annotations

import difflib
from functools import cache


def fuzzy_match(candidate: str, reference: str) -> float:
    return difflib.SequenceMatcher(None, candidate, reference, autojunk=False).ratio()


def bleu(candidate: str, reference: str) -> float:
    import sacrebleu

    return min(1.0, sacrebleu.sentence_bleu(candidate, [reference]).score / 100)  # (100.00000000000004 at equality)


@cache
def _tokenize_13a():
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    return Tokenizer13a()


def gleu(candidate: str, reference: str) -> float:
    from nltk.translate.gleu_score import sentence_gleu

    tokens = _tokenize_13a()
    c, r = tokens(candidate).split(), tokens(reference).split()
    if not c or not r:
        return float(c == r)
    return float(sentence_gleu([r], c))


@cache
def _rouge(metric: str):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer([metric], use_stemmer=False)


def rouge(metric: str, candidate: str, reference: str) -> float:
    """`metric` as rouge-score names it: rouge1 ... rouge9, rougeL."""
    return _rouge(metric).score(reference, candidate)[metric].fmeasure


def similarity(metric: str, candidate: str, reference: str) -> float:
    """`metric` one of config.graders.SIMILARITY."""
    if metric == "fuzzy_match":
        return fuzzy_match(candidate, reference)
    if metric == "bleu":
        return bleu(candidate, reference)
    if metric == "gleu":
        return gleu(candidate, reference)
    if metric == "rouge_l":
        return rouge("rougeL", candidate, reference)
    if metric.startswith("rouge_") and metric[6:].isdigit():
        return rouge(f"rouge{metric[6:]}", candidate, reference)
    raise ValueError(f"unknown text similarity metric {metric!r}")
