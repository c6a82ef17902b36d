"""Combining several models' answers into the one the device gets.

    vote            each answer's top label is one vote; scores are vote shares
    max_confidence  the answer whose top label is most confident
    weighted        the step-weighted mean of the score vectors
    chain           the last answer of a pipeline (each step read the one before)

The combined answer's model_id names the method ("aggregate:vote"), so a
trace shows how it was made; each model's own answer stays in ``outputs``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

from cloud.routing.config import Aggregate
from protocol.messages import Prediction

Weighted = Sequence[tuple[Prediction, float]]


def vote(answers: Weighted) -> Prediction:
    votes: dict[str, float] = defaultdict(float)
    confidence: dict[str, float] = defaultdict(float)
    for prediction, _ in answers:
        votes[prediction.label] += 1.0
        confidence[prediction.label] = max(confidence[prediction.label], prediction.confidence)
    # Most votes first; a tie goes to the label its voters were surer of.
    ranked = sorted(votes, key=lambda label: (votes[label], confidence[label]), reverse=True)
    return _combined("vote", ranked, [votes[label] / len(answers) for label in ranked])


def max_confidence(answers: Weighted) -> Prediction:
    best = max((p for p, _ in answers), key=lambda p: p.confidence)
    return Prediction("aggregate:max_confidence", "1", best.labels, best.scores, texts=best.texts)


def weighted(answers: Weighted) -> Prediction:
    total = sum(w for _, w in answers)
    mean: dict[str, float] = defaultdict(float)
    for prediction, weight in answers:
        for label, score in zip(prediction.labels, prediction.scores, strict=True):
            mean[label] += score * weight / total
    ranked = sorted(mean, key=mean.__getitem__, reverse=True)
    return _combined("weighted", ranked, [mean[label] for label in ranked])


def chain(answers: Weighted) -> Prediction:
    last = answers[-1][0]
    return Prediction("aggregate:chain", "1", last.labels, last.scores, texts=last.texts)


def single(answer: Prediction, how: str) -> Prediction:
    """The answer of the one step that decided (single, first_success, fallback, cascade, weighted)."""
    return Prediction(f"aggregate:{how}", "1", answer.labels, answer.scores, texts=answer.texts)


AGGREGATES: dict[Aggregate, Callable[[Weighted], Prediction]] = {
    Aggregate.VOTE: vote,
    Aggregate.MAX_CONFIDENCE: max_confidence,
    Aggregate.WEIGHTED: weighted,
    Aggregate.CHAIN: chain,
}


def _combined(how: str, labels: list[str], scores: list[float]) -> Prediction:
    return Prediction(f"aggregate:{how}", "1", tuple(labels), tuple(scores))
