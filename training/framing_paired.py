"""Does a candidate flag more reframed healthy films than a reference model? A paired test.

    python training/framing_paired.py --model models/CANDIDATE --against models/REFERENCE

Both models score the same healthy films of the validation carve, each framed tighter or
looser (mlcore.framing.zoom) and judged at its own threshold. Only the films that exactly
one model flags tell them apart; the one-sided exact binomial test (p = 1/2) asks whether
the candidate flags more of those than chance would give.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mlcore.inference import Predictor  # noqa: E402
from training.framing_sensitivity import framed_inputs, load_films  # noqa: E402
from training.splits import DEFAULT_DATA, carve_settings, validation_splits  # noqa: E402

ZOOMS = (0.8, 1.0, 1.2)


def binomial_tail(successes: int, trials: int) -> float:
    """P(X >= successes) for X ~ Binomial(trials, 1/2)."""
    return sum(math.comb(trials, k) for k in range(successes, trials + 1)) / 2**trials


def flags(predictor: Predictor, films: list[np.ndarray], factor: float) -> np.ndarray:
    return predictor.probabilities(framed_inputs(predictor, films, factor)) >= predictor.threshold


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="the candidate")
    parser.add_argument("--against", type=Path, required=True, help="the reference model")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    settings = carve_settings(args.model)
    if carve_settings(args.against) != settings:
        raise SystemExit("the two models were trained beside different carves")
    carve = validation_splits(args.data, settings)["validation carve"]
    films = load_films([sample for sample in carve if sample.label == 0])
    candidate, reference = Predictor.load(args.model), Predictor.load(args.against)
    print(f"{len(films)} healthy carve films; candidate {args.model}, reference {args.against}")
    for factor in ZOOMS:
        mine, theirs = flags(candidate, films, factor), flags(reference, films, factor)
        only_mine, only_theirs = int((mine & ~theirs).sum()), int((theirs & ~mine).sum())
        p = binomial_tail(only_mine, only_mine + only_theirs)
        print(
            f"x{factor}: flagged {mine.sum()} vs {theirs.sum()}; only the candidate {only_mine}, "
            f"only the reference {only_theirs}; one-sided p (candidate flags more) {p:.4f}"
        )


if __name__ == "__main__":
    main()
