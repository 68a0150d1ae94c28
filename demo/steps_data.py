"""Step 1 (no deep-learning framework): the synthetic survey, its shards and dataset, the labels.

- a synthetic Galaxy Zoo survey with volunteer votes walked through a real decision tree,
  validated as a catalog with a `split` column (train / validation / test), so the shards, the
  Hugging Face dataset and the training runs all put every galaxy in the same split;
- TFRecord shards (`zoobot.data.shards`) and a Hub-layout Hugging Face dataset (`zoobot.data.hf`);
- the labels for finetuning: a rare feature (rings by default) read off the true morphology of a
  few hundred galaxies, as an astronomer would label them, drawn anew for each seed, and every
  test galaxy for scoring;
- real galaxies: sources cut out of the Hubble Deep Field, stars rejected (needs the `hubble`
  extra).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from common import HF_DATASET, HUBBLE, LABELS, SHARDS, SURVEY, Run, Timer, labels_file, say

# How each rare feature is read off the survey's true morphology (`true_*` columns).
FEATURES = {
    "ring": ("true_ring", lambda column: column.astype(bool)),
    "bar": ("true_bar", lambda column: column != "none"),
    "strong_bar": ("true_bar", lambda column: column == "strong"),
    "merger": ("true_merger", lambda column: column != "none"),
}


def feature_labels(catalog: pd.DataFrame, feature: str) -> np.ndarray:
    """0/1 labels of a rare feature from the true morphology."""
    if feature not in FEATURES:
        raise ValueError(f"unknown feature {feature!r}; choose from {sorted(FEATURES)}")
    column, rule = FEATURES[feature]
    return rule(catalog[column]).to_numpy().astype(np.int64)


def make_data(run: Run) -> dict:
    """Make the survey, shards, dataset, finetuning labels and Hubble sample; return the numbers."""
    from zoobot.data.catalog import validate_catalog
    from zoobot.data.hf import save_hub_layout, to_hf_dataset
    from zoobot.data.shards import verify_shards, write_shards
    from zoobot.data.splits import assign_splits
    from zoobot.data.synthetic import make_survey
    from zoobot.shared import get_schema

    s = run.settings
    schema = get_schema(s.schema)
    results: dict = {}

    timer = Timer()
    say(
        f"  rendering {s.n_galaxies} synthetic galaxies ({s.image_size} px, GalSim) and simulating "
        f"volunteers answering the {s.schema} decision tree ({len(schema.questions)} questions)"
    )
    catalog = make_survey(
        s.n_galaxies,
        run.path(SURVEY),
        schema=schema,
        image_size=s.image_size,
        seed=s.seed,
        progress=False,
    )
    positions = assign_splits(catalog, dict(s.split_fractions), s.seed)
    split = np.empty(len(catalog), dtype=object)
    for name, rows in positions.items():
        split[rows] = name
    catalog["split"] = split
    catalog = validate_catalog(catalog, schema, check_files=True)
    catalog.to_parquet(run.path(SURVEY) / "catalog_with_splits.parquet", index=False)
    counts = catalog[schema.label_cols].to_numpy()
    votes_first = counts[
        :, schema.question_index_groups[0][0] : schema.question_index_groups[0][1] + 1
    ]
    results["survey"] = {
        "galaxies": len(catalog),
        "splits": {name: int(len(rows)) for name, rows in positions.items()},
        "questions": len(schema.questions),
        "answers": len(schema.label_cols),
        "median_volunteers": float(np.median(votes_first.sum(axis=1))),
        "true_kind": catalog["true_kind"].value_counts().to_dict(),
        "feature_rates": {f: float(feature_labels(catalog, f).mean()) for f in FEATURES},
        "seconds": timer(),
    }
    say(
        f"  survey: {len(catalog)} galaxies, splits {results['survey']['splits']}, median "
        f"{results['survey']['median_volunteers']:.0f} volunteers per galaxy; validated "
        f"(validate_catalog) in {timer():.1f}s"
    )

    timer = Timer()
    sidecar = write_shards(
        catalog, run.path(SHARDS), schema=schema, splits="split", progress=False, overwrite=True
    )
    verified = verify_shards(run.path(SHARDS))
    shard_files = sorted(p.name for p in run.path(SHARDS).glob("*.tfrecord*"))
    results["shards"] = {
        "files": len(shard_files),
        "galaxies": sidecar["total_count"],
        "bytes": int(sum((run.path(SHARDS) / name).stat().st_size for name in shard_files)),
        "verified": bool(verified),
        "seconds": timer(),
    }
    say(f"  TFRecord shards: {len(shard_files)} files in {SHARDS}/ (+ shards.json), verified")

    timer = Timer()
    dataset = to_hf_dataset(catalog, schema, splits="split")
    card = {
        "description": "A synthetic Galaxy Zoo survey made by the Zoobot demo (zoobot.data.synthetic).",
        "pretty_name": "Zoobot demo synthetic survey",
        "license": "cc-by-4.0",
    }
    save_hub_layout(dataset, run.path(HF_DATASET), schema, card=card, overwrite=True)
    results["hf_dataset"] = {
        "splits": {name: len(split) for name, split in dataset.items()},
        "columns": len(next(iter(dataset.values())).column_names),
        "seconds": timer(),
    }
    say(
        f"  Hugging Face dataset (Hub layout, datasets.load_dataset reads it): {HF_DATASET}/, "
        f"splits {results['hf_dataset']['splits']}"
    )

    results["labels"] = write_labels(run, catalog)
    results["hubble"] = hubble_sample(run)
    return results


def write_labels(run: Run, catalog: pd.DataFrame) -> dict:
    """For each seed, a few hundred labelled galaxies drawn from the train and validation splits,
    and every test galaxy, for finetuning: `LABELS/draw_<seed>.csv`."""
    s = run.settings
    labels = feature_labels(catalog, s.feature)
    split = catalog["split"].to_numpy()
    test = catalog[split == "test"]
    run.path(LABELS).mkdir(parents=True, exist_ok=True)
    draws = {}
    for seed in s.finetune_seeds:
        rng = np.random.default_rng([s.seed, seed])
        frames = []
        for name, n in (("train", s.n_labels_train), ("validation", s.n_labels_validation)):
            rows = np.flatnonzero(split == name)
            frames.append(catalog.iloc[np.sort(rng.choice(rows, min(n, len(rows)), replace=False))])
        table = pd.concat([*frames, test])[["id_str", "file_loc", "split"]].copy()
        table["label"] = labels[catalog.index.get_indexer(table.index)]
        table.to_csv(run.path(labels_file(seed)), index=False)
        draws[seed] = {
            name: {"n": int(len(group)), "positives": int(group["label"].sum())}
            for name, group in table.groupby("split")
        }
    first = draws[s.finetune_seeds[0]]
    say(
        f"  finetuning labels for '{s.feature}' (from the true morphology), drawn for each of "
        f"{len(draws)} seeds: "
        + ", ".join(f"{k} {v['n']} ({v['positives']} positive)" for k, v in first.items())
        + " for the first"
    )
    return {"feature": s.feature, "splits": first, "draws": draws}


def hubble_sample(run: Run) -> dict:
    """Cut real galaxies out of the Hubble Deep Field (skipped without the `hubble` extra)."""
    s = run.settings
    try:
        from zoobot.data.hubble_deep_field import hubble_deep_field_sample
    except ImportError as err:
        say(f"  Hubble Deep Field sample skipped: {err}")
        return {"skipped": str(err)}
    timer = Timer()
    hdf = hubble_deep_field_sample(run.path(HUBBLE), size=128, max_sources=s.hubble_sources)
    say(f"  Hubble Deep Field: {len(hdf)} real galaxies cut out to {HUBBLE}/ ({timer():.1f}s)")
    return {"galaxies": len(hdf), "seconds": timer()}


def run_step(run: Run) -> dict:
    results = make_data(run)
    (run.path(SURVEY) / "demo_summary.json").write_text(
        json.dumps(results["survey"], indent=2, default=str), encoding="utf-8"
    )
    return results
