"""Aspect heads with and without an n-gram part: dev F1 and three checks dev cannot make.

For each n-gram blend weight ``a`` (0: the heads alone) the heads are trained as
``python -m models.aspects_train`` trains them (``train(..., ngram_blend=a)``) and scored, at
each delivery threshold given (the YAML's ``delivery_shipping`` threshold; every other aspect
keeps its YAML or trained threshold), on:

* dev macro F1 over the 7 aspects with dev support (``models/cards/aspects.md``);
* the generated tr/fa/ro/en complaints of ``tests/_synthetic_feedback.py`` (8 per theme and
  language, scored whole): the share whose theme's aspect passes its threshold, per language;
* the 32 angry late/lost-delivery complaints of ``tests/test_aspects.py`` that keep
  ``delivery_shipping``;
* 10 greetings and fillers that should get no aspect.

Usage: ``python benchmarks/aspect_ngram_blend.py [--shared ../shared] [--blends 0,0.2,0.3,0.4]
[--delivery 0.22,0.30]`` (about 2 min per non-zero blend on 2 cores, features cached).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from models import aspects_train  # noqa: E402
from models.sentiment import analysis_text  # noqa: E402
from pipelines.analysis.aspects import load_aspect_config  # noqa: E402
from tests._synthetic_feedback import THEMES, synthetic_texts  # noqa: E402
from tests.test_aspects import ANGRY_DELIVERY_COMPLAINTS, THEME_ASPECT  # noqa: E402

GREETINGS = [
    ("en", "ok"),
    ("tr", "Merhaba"),
    ("tr", "Teşekkürler"),
    ("fa", "سلام"),
    ("fa", "ممنون"),
    ("ro", "bine"),
    ("ro", "salut"),
    ("ro", "mersi"),
    ("en", "Hello"),
    ("en", "thanks"),
]
_DELIVERY = "delivery_shipping"


def _probes() -> tuple[list[tuple[str, str]], list[str]]:
    """((expected aspect, group) per probe text, the texts): complaints (group: language),
    angry delivery complaints (``angry-<lang>``), greetings (``greeting-<lang>``)."""
    labelled = [
        ((THEME_ASPECT[theme], lang), text)
        for theme in THEMES
        for lang in THEMES[theme]
        for text in sorted(set(synthetic_texts(theme, lang, 8, seed=11)))
    ]
    labelled += [
        ((_DELIVERY, f"angry-{lang}"), text)
        for lang, texts in ANGRY_DELIVERY_COMPLAINTS.items()
        for text in texts
    ]
    labelled += [(("", f"greeting-{lang}"), text) for lang, text in GREETINGS]
    return [key for key, _ in labelled], [analysis_text(text) for _, text in labelled]


def main() -> None:
    """Train and score every blend; print one Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO_ROOT.parent / "shared")
    parser.add_argument("--blends", default="0,0.2,0.3,0.4")
    parser.add_argument("--delivery", default="0.22,0.30")
    arguments = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    config = load_aspect_config()
    names = [aspect.name for aspect in config.detectable]
    inputs = aspects_train.load_training_inputs(arguments.shared, config)
    rows, features, example_vectors = inputs.rows, inputs.embeddings, inputs.example_vectors
    keys, probe_texts = _probes()
    probe_langs = [lang.split("-")[-1] for _, lang in keys]
    probe_features = aspects_train.cached_features(probe_texts, "aspects-probes")[0]
    print(
        "| n-gram blend | delivery threshold | dev macro F1 | complaints found | tr | fa | ro | en "
        "| angry delivery found | greetings with an aspect |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for blend in (float(value) for value in arguments.blends.split(",")):
        heads = aspects_train.train(
            rows, features, example_vectors, config, inputs.encoder_version, ngram_blend=blend
        )
        detector = aspects_train.build_detector(config, heads, example_vectors)
        dev = detector.probabilities(features, rows.analysis_texts, list(rows.langs))
        probes = detector.probabilities(probe_features, probe_texts, probe_langs)
        for delivery in (float(value) for value in arguments.delivery.split(",")):
            thresholds = detector.thresholds.copy()
            thresholds[names.index(_DELIVERY)] = delivery
            report = aspects_train.evaluate(dev >= thresholds, rows, names)["all"]
            passing = probes >= thresholds
            hit = {
                group: [
                    bool(passing[index, names.index(aspect)])
                    for index, (aspect, lang) in enumerate(keys)
                    if lang == group
                ]
                for group in ("tr", "fa", "ro", "en")
            }
            complaints = np.mean([value for values in hit.values() for value in values])
            angry = sum(
                bool(passing[index, names.index(_DELIVERY)])
                for index, (_, lang) in enumerate(keys)
                if lang.startswith("angry-")
            )
            greetings = sum(
                bool(passing[index].any())
                for index, (_, lang) in enumerate(keys)
                if lang.startswith("greeting-")
            )
            per_language = " | ".join(f"{np.mean(hit[lang]):.2f}" for lang in hit)
            print(
                f"| {blend:.1f} | {delivery:.2f} | "
                f"{np.mean([figures['f1'] for figures in report.values()]):.3f} | "
                f"{complaints:.3f} | {per_language} | {angry} / 32 | {greetings} / 10 |",
                flush=True,
            )


if __name__ == "__main__":
    main()
