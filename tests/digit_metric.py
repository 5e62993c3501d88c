"""A user metric for tests whose tiny random models never get a date right: how much of the reply
is digits, as a date's is, so two models' scores differ even when both are wrong."""


def digit_share(prediction: str, reference: str) -> float:
    return sum(c.isdigit() for c in prediction) / max(len(prediction), 1)
