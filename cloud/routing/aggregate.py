"""Combining several models' answers into the one the device gets.

    vote            each answer's top label is one vote; scores are vote shares
    max_confidence  the answer whose top label is most confident
    weighted        the step-weighted mean of the score vectors
    chain           the last answer of a pipeline (each step read the one before)
    wbf             detectors: weighted box fusion - boxes of one class that overlap across models are
                    averaged, weighted by score and step weight, and scored lower when fewer models found them
    nms             detectors: every model's boxes together, the best of each overlapping group kept

The combined answer's model_id names the method ("aggregate:vote"), so a
trace shows how it was made; each model's own answer stays in ``outputs``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

from cloud.routing.config import Aggregate
from protocol.messages import Box, Prediction

FUSE_IOU = 0.55  # boxes of one class overlapping more than this are the same object (WBF's paper uses 0.55)

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
    return _as("max_confidence", best)


def weighted(answers: Weighted) -> Prediction:
    total = sum(w for _, w in answers)
    mean: dict[str, float] = defaultdict(float)
    for prediction, weight in answers:
        for label, score in zip(prediction.labels, prediction.scores, strict=True):
            mean[label] += score * weight / total
    ranked = sorted(mean, key=mean.__getitem__, reverse=True)
    return _combined("weighted", ranked, [mean[label] for label in ranked])


def chain(answers: Weighted) -> Prediction:
    return _as("chain", answers[-1][0])


def single(answer: Prediction, how: str) -> Prediction:
    """The answer of the one step that decided (single, first_success, fallback, cascade, weighted)."""
    return _as(how, answer)


def wbf(answers: Weighted) -> Prediction:
    """Weighted box fusion (Solovyev, Wang and Gabruseva, 2019; ``ensemble-boxes`` has it too, but needs numba).

    Per class, boxes in falling score order join the first cluster whose fused box they overlap by more than
    FUSE_IOU, else start one. A cluster's box is the mean of its boxes weighted by score x step weight; its
    score is their weighted mean score, times the share of the models' total weight that found it."""
    total = sum(w for _, w in answers)
    fused: list[Box] = []
    for label in _box_labels(answers):
        found = sorted(
            ((b, w) for p, w in answers for b in p.boxes if b.label == label), key=lambda item: -item[0].score
        )
        clusters: list[list[tuple[Box, float]]] = []
        centres: list[Box] = []
        for box, weight in found:
            near = next((i for i, c in enumerate(centres) if _iou(c, box) > FUSE_IOU), None)
            if near is None:
                clusters.append([(box, weight)])
                centres.append(box)
            else:
                clusters[near].append((box, weight))
                centres[near] = _mean(clusters[near], label, 1.0)
        for cluster in clusters:
            share = min(1.0, sum(w for _, w in cluster) / total)
            fused.append(_mean(cluster, label, share))
    return _boxes_answer("wbf", answers, fused)


def nms(answers: Weighted) -> Prediction:
    """Every model's boxes together; of boxes of one class overlapping more than FUSE_IOU, the best stays."""
    kept: list[Box] = []
    for box in sorted((b for p, _ in answers for b in p.boxes), key=lambda b: -b.score):
        if all(k.label != box.label or _iou(k, box) <= FUSE_IOU for k in kept):
            kept.append(box)
    return _boxes_answer("nms", answers, kept)


AGGREGATES: dict[Aggregate, Callable[[Weighted], Prediction]] = {
    Aggregate.VOTE: vote,
    Aggregate.MAX_CONFIDENCE: max_confidence,
    Aggregate.WEIGHTED: weighted,
    Aggregate.CHAIN: chain,
    Aggregate.WBF: wbf,
    Aggregate.NMS: nms,
}


def _as(how: str, answer: Prediction) -> Prediction:
    return Prediction(f"aggregate:{how}", "1", answer.labels, answer.scores, boxes=answer.boxes, texts=answer.texts)


def _box_labels(answers: Weighted) -> list[str]:
    """The classes of every answer, in first-seen order (each detector lists all it knows)."""
    seen: dict[str, None] = {}
    for prediction, _ in answers:
        seen.update(dict.fromkeys(prediction.labels))
        seen.update(dict.fromkeys(b.label for b in prediction.boxes))
    return list(seen)


def _boxes_answer(how: str, answers: Weighted, boxes: list[Box]) -> Prediction:
    labels = _box_labels(answers)
    best = dict.fromkeys(labels, 0.0)
    for b in boxes:
        best[b.label] = max(best[b.label], b.score)
    ordered = tuple(sorted(boxes, key=lambda b: -b.score))
    return Prediction(f"aggregate:{how}", "1", tuple(labels), tuple(best[label] for label in labels), boxes=ordered)


def _mean(cluster: list[tuple[Box, float]], label: str, share: float) -> Box:
    weights = [b.score * w for b, w in cluster]
    total = sum(weights) or 1.0
    coords = [sum(getattr(b, k) * x for (b, _), x in zip(cluster, weights, strict=True)) / total for k in _CORNERS]
    score = sum(b.score * w for b, w in cluster) / sum(w for _, w in cluster)
    return Box(coords[0], coords[1], coords[2], coords[3], label, score * share)


_CORNERS = ("x0", "y0", "x1", "y1")


def _iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a.x1, b.x1) - max(a.x0, b.x0))
    iy = max(0.0, min(a.y1, b.y1) - max(a.y0, b.y0))
    inter = ix * iy
    union = (a.x1 - a.x0) * (a.y1 - a.y0) + (b.x1 - b.x0) * (b.y1 - b.y0) - inter
    return inter / union if union > 0 else 0.0


def _combined(how: str, labels: list[str], scores: list[float]) -> Prediction:
    return Prediction(f"aggregate:{how}", "1", tuple(labels), tuple(scores))
