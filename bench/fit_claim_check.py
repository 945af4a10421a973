"""Tune the claim check's wording threshold on COVID-QA dev: gold answers vs deliberately corrupted ones.

Claims, for each dev question (passages as /ask retrieves them, from `bench/answer_features.py`'s dump):

* supported — the gold answer, citing the retrieved excerpt that holds it; and the question restated with
  the gold answer ("<question without its question mark>: <gold>"), the way LLM answers restate questions;
* wrong excerpt — the same two claims citing the best-ranked retrieved excerpt that does not hold the gold
  answer (the deliberately corrupted citation);
* wrong number — the gold answer with its first number changed to one the excerpt does not contain;
* wrong name — the gold answer with its first name-like token replaced by a name from another question's gold
  answer that the excerpt does not contain.

The wording score is `claims.support_score` (SIMILARITY_WEIGHT × best cosine with a cited sentence +
(1 − SIMILARITY_WEIGHT) × term overlap); for each weight in a small grid the threshold maximising balanced
accuracy (supported vs wrong excerpt) is reported, and the full check (`claims._judge`: facts, then
wording) is run on every kind at the chosen constants.

    .venv/bin/python bench/fit_claim_check.py --dev dev.pkl
"""

from __future__ import annotations

import argparse
import pickle
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pmcqa.app.answering import claims, harmony  # noqa: E402
from pmcqa.core.settings import Settings  # noqa: E402
from pmcqa.core.text import split_sentences, tokenize  # noqa: E402
from pmcqa.index.embedding import Embedder  # noqa: E402

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def excerpt_text(passage: Any) -> str:
    return " ".join(chunk.text for chunk in harmony.excerpt_chunks(passage))


def excerpt_sentences(passage: Any) -> list[str]:
    out = []
    for chunk in harmony.excerpt_chunks(passage):
        out.extend(chunk.text[s:e] for s, e in split_sentences(chunk.text))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dev", type=Path, required=True)
    args = parser.parse_args()
    data = pickle.loads(args.dev.read_bytes())
    embedder = Embedder(Settings())
    all_names = [n for row in data["rows"] for a in row["answers"] for n in claims.names(a)]

    cases: list[dict[str, Any]] = []  # {kind, claim, excerpt}
    for row in data["rows"]:
        passages = row["own"]["passages"]
        gold = row["answers"][0].strip()
        start, end, _ = row["gold"][0]
        holding = [
            p for p in passages if any(c.start <= start and end <= c.end for c in harmony.excerpt_chunks(p))
        ]
        others = [p for p in passages if p not in holding]
        if not holding or not others or not tokenize(gold):
            continue
        right, wrong = holding[0], others[0]
        restated = f"{row['question'].strip().rstrip('?')}: {gold}"
        cases += [
            {"kind": "gold", "claim": gold, "excerpt": right},
            {"kind": "restated", "claim": restated, "excerpt": right},
            {"kind": "gold, wrong excerpt", "claim": gold, "excerpt": wrong},
            {"kind": "restated, wrong excerpt", "claim": restated, "excerpt": wrong},
        ]
        text = excerpt_text(right)
        number = re.search(r"(?<![\w.-])\d+", gold)
        if number:
            value = int(number.group(0))
            swap = next(str(n) for n in range(value + 1, value + 1000) if str(n) not in text)
            cases.append(
                {"kind": "wrong number", "claim": gold.replace(number.group(0), swap, 1), "excerpt": right}
            )
        found = claims.names(gold)
        if found:
            swap = next((n for n in all_names if n.casefold() not in text.casefold()), None)
            if swap:
                cases.append(
                    {"kind": "wrong name", "claim": gold.replace(found[0], swap, 1), "excerpt": right}
                )

    texts = sorted({c["claim"] for c in cases} | {s for c in cases for s in excerpt_sentences(c["excerpt"])})
    vectors = dict(zip(texts, np.asarray(embedder.embed_documents(texts), dtype=np.float32), strict=True))
    for case in cases:
        sentences = excerpt_sentences(case["excerpt"])
        case["cosine"] = float(max(vectors[s] @ vectors[case["claim"]] for s in sentences))
        case["overlap"] = claims.term_overlap(case["claim"], excerpt_text(case["excerpt"]))
    kinds = list(dict.fromkeys(c["kind"] for c in cases))
    print("cases:", {k: sum(c["kind"] == k for c in cases) for k in kinds})

    positive = [c for c in cases if c["kind"] in ("gold", "restated")]
    negative = [c for c in cases if "wrong excerpt" in c["kind"]]
    print("\nweight | best threshold | supported kept | wrong excerpt caught | balanced")
    best: tuple[float, float, float] = (0.0, 0.0, 0.0)
    kept_best = 0.0
    for weight in WEIGHTS:
        pos = np.array([weight * c["cosine"] + (1 - weight) * c["overlap"] for c in positive])
        neg = np.array([weight * c["cosine"] + (1 - weight) * c["overlap"] for c in negative])
        grid = np.round(np.arange(0.05, 1.0, 0.01), 2)
        balanced = [((pos >= t).mean() + (neg < t).mean()) / 2 for t in grid]
        i = int(np.argmax(balanced))
        kept, caught = (pos >= grid[i]).mean(), (neg < grid[i]).mean()
        print(f"{weight:.2f} | {grid[i]:.2f} | {kept:.3f} | {caught:.3f} | {balanced[i]:.3f}")
        # A tie (to 3 decimals) goes to the weight keeping more supported claims: fewer faithful answers
        # flagged.
        if round(balanced[i], 3) > round(best[2], 3) or (
            round(balanced[i], 3) == round(best[2], 3) and kept > kept_best
        ):
            best, kept_best = (weight, float(grid[i]), balanced[i]), kept
    print(f"\nchosen: SIMILARITY_WEIGHT = {best[0]}, SUPPORT_THRESHOLD = {best[1]}", end=" ")
    print(f"(balanced accuracy {best[2]:.3f})")

    claims.SIMILARITY_WEIGHT, claims.SUPPORT_THRESHOLD = best[0], best[1]
    print("\nfull check at the chosen constants (share judged supported):")
    for kind in kinds:
        judged = []
        for case in (c for c in cases if c["kind"] == kind):
            sentences = excerpt_sentences(case["excerpt"])
            draft_claim = claims.DraftClaim(case["claim"], [1], (0, len(case["claim"])))
            verdict = claims._judge(
                draft_claim,
                vectors[case["claim"]],
                [0],
                excerpt_text(case["excerpt"]),
                np.stack([vectors[s] for s in sentences]),
            )
            judged.append(verdict.supported)
        print(f"  {kind}: {np.mean(judged):.3f} of {len(judged)}")


if __name__ == "__main__":
    main()
