"""The pixel ceiling of a synthetic survey: how well can an image model predict the votes at all?

The demo's report rates its vote-trained model against a true-parameter reference (gradient
boosting on the simulator's `true_*` columns). That reference may be out of reach of any image
model: a bar or a spiral's winding the seeing blurs away is in the truth but not in the pixels.
This script measures what pixels allow on a finished science run. It trains an image network on
the cleanest image-supervised target there is: each galaxy's noise-free typical-volunteer answer
probabilities (`answers.question_probabilities` of the galaxy's true `Morphology`, drawn again
from the survey seed), every question for every galaxy, with per-question soft cross-entropy,
plus a few auxiliary heads on true parameters (barred or not, the bar's visible strength, the
arms' visible strength and pitch, bulge fraction, apparent axis ratio). Then, on the test
galaxies exactly as the report does (vote fractions of galaxies with >= 5 votes for a question),
it tabulates the constant, the true-parameter reference, the noise-free probabilities themselves
(an oracle), the vote-trained model and this truth-supervised pixel model, with the vote-trained
model's share of the gain against both; how well each model recovers the noise-free
probabilities; and, for the bar, ROC AUC for barred vs unbarred among clearly seen disks.

Run in the `parity`/`demo` environment, on a science run's output folder (one training process,
2 threads, about half an hour):

    nox -s science
    python demo/pixel_ceiling.py --run science-output --out pixel-ceiling --minutes 25

`--targets votes --no-aux` trains on the observed vote fractions instead; adding `--loss dirichlet`
trains zoobot's Dirichlet-multinomial loss on the vote counts through the tree head's concentration
activation (scored by the expected vote fractions), with `--ce-weight W` plus W times the soft
cross-entropy of those expected fractions (zoobot's tree objective with `fraction_weight=W`) and
with `--head mean-total` through a softmax mean times a per-question total concentration instead.
`--eval-only` re-tabulates from the saved predictions. Writes `ceiling_table.csv`,
`recovery_table.csv`, `bar_auc.csv`, `summary.json` and `predictions.npz` to `--out`.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd

SCHEMA = "decals_dr5"
MIN_VOTES = 5
AUX = ("bar_seen", "arms_seen", "pitch", "bulge_fraction", "apparent_q")


def galaxy_index(id_str: str) -> tuple[int, int]:
    """(seed, index) of a synthetic galaxy id `synth-<seed>-<index>`."""
    _, seed, index = id_str.split("-")
    return int(seed), int(index)


def morphology_from_row(row: pd.Series):
    """The galaxy's `Morphology` rebuilt from its catalog row's `true_*` columns."""
    from dataclasses import fields

    from zoobot.data.synthetic.morphology import Morphology

    values = {}
    for f in fields(Morphology):
        value = row[f"true_{f.name}"]
        values[f.name] = {"str": str, "int": int, "float": float, "bool": bool}[f.type](value)
    return Morphology(**values)


def noise_free_targets(catalog: pd.DataFrame, schema) -> tuple[np.ndarray, np.ndarray, dict]:
    """(galaxy, answer) typical-volunteer probabilities, (galaxy, aux) true-parameter targets and
    a check that the morphologies drawn again from the survey seed match the catalog's columns."""
    from zoobot.data.synthetic.answers import question_probabilities
    from zoobot.data.synthetic.appearance import (
        apparent_axis_ratio,
        arms_visibility,
        bar_visibility,
    )
    from zoobot.data.synthetic.survey import draw_galaxy

    probs = np.zeros((len(catalog), len(schema.label_cols)))
    aux = np.full((len(catalog), len(AUX) + 1), np.nan)  # the last column: barred or not
    worst = 0.0
    for i, (_, row) in enumerate(catalog.iterrows()):
        m = draw_galaxy(*galaxy_index(row["id_str"]))
        rebuilt = morphology_from_row(row)
        for key, value in m.to_dict().items():
            other = getattr(rebuilt, key)
            if isinstance(value, float):
                worst = max(worst, abs(value - other))
            elif value != other:
                raise ValueError(f"{row['id_str']}: {key} is {value} drawn, {other} in the catalog")
        for q in schema.questions:
            probs[i, q.start : q.end + 1] = question_probabilities(q, m)
        aux[i, 0] = m.bar_strength * bar_visibility(m)
        aux[i, 1] = m.spiral_strength * arms_visibility(m)
        aux[i, 2] = m.spiral_pitch / 35 if m.spiral_arms else np.nan
        aux[i, 3] = m.bulge_fraction if m.kind == "disk" else np.nan
        aux[i, 4] = apparent_axis_ratio(m)
        aux[i, 5] = float(m.bar != "none") if m.kind == "disk" else np.nan
    return probs, aux, {"max_abs_difference_drawn_vs_catalog": worst}


def load_images(paths, size: int) -> np.ndarray:
    """uint8 (galaxy, 3, size, size) images, resized if the files are another size."""
    from PIL import Image

    out = np.empty((len(paths), 3, size, size), np.uint8)
    for i, path in enumerate(paths):
        image = Image.open(path).convert("RGB")
        if image.size != (size, size):
            image = image.resize((size, size), Image.BILINEAR)
        out[i] = np.asarray(image).transpose(2, 0, 1)
    return out


def dihedral(x, k: int, flip: bool):
    import torch

    x = torch.rot90(x, k, dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if flip else x


def concentration_head(kind: str, schema):
    """Raw outputs -> Dirichlet concentrations. `dirichlet`: zoobot's tree head activation, one
    output per answer log-spaced in `DEFAULT_CONCENTRATION` (0.01, 1000). `mean-total`: a
    softmax mean per question times a per-question total log-spaced in (0.1, 1e4), from one
    extra output per question after the answers."""
    import torch

    from zoobot.models.tasks import DEFAULT_CONCENTRATION
    from zoobot.torch.module import LogScaledSigmoid

    n = len(schema.label_cols)
    if kind != "mean-total":
        act = LogScaledSigmoid(*DEFAULT_CONCENTRATION)
        return lambda raw: act(raw[..., :n])
    total_act = LogScaledSigmoid(0.1, 1e4)
    groups = [(q.start, q.end) for q in schema.questions]

    def head(raw):
        parts = []
        for j, (start, end) in enumerate(groups):
            mean = torch.softmax(raw[..., start : end + 1], dim=-1)
            parts.append(mean * total_act(raw[..., n + j : n + j + 1]))
        return torch.cat(parts, dim=-1)

    return head


def losses(outputs, probs, aux, groups, use_aux: bool = True, dirichlet=None, counts=None):
    """Per-question soft cross-entropy (summed over questions) and the auxiliary losses.

    A question whose targets are NaN for a galaxy (observed vote fractions of a question nobody
    answered) is left out for that galaxy; the loss is the mean over the batch's galaxies of each
    galaxy's sum over the questions it has targets for (no weighting by the vote total).

    With `dirichlet` (an `(activation, DirichletMultinomialLoss, ce_weight)` triple) the main loss
    is instead zoobot's Dirichlet-multinomial NLL of the vote `counts` (summed over questions, batch
    mean, 0 for unanswered questions) of the concentrations the activation makes of the outputs,
    plus `ce_weight` times zoobot's vote-fraction KL (`zoobot.torch.loss.vote_fraction_kl`: the
    soft cross-entropy above, of the concentrations' expected fractions)."""
    import torch
    import torch.nn.functional as F

    n_answers = probs.shape[1]
    main = 0.0
    if dirichlet is not None:
        from zoobot.torch.loss import vote_fraction_kl

        activation, dm_loss, ce_weight = dirichlet
        conc = activation(outputs.float())
        kl = vote_fraction_kl(counts, conc, dm_loss.layout).sum(1).mean()
        main = dm_loss(counts, conc) + ce_weight * kl
    for start, end in [] if dirichlet is not None else groups:
        logp = F.log_softmax(outputs[:, start : end + 1], dim=1)
        target = probs[:, start : end + 1]
        known = ~torch.isnan(target[:, 0])
        if not known.any():
            continue
        target, logp = target[known], logp[known]
        # cross-entropy minus the target's entropy: 0 for a perfect prediction
        kl = (torch.xlogy(target, target) - target * logp).sum(1)
        main = main + kl.sum() / len(outputs)
    extra = torch.zeros(())
    if not use_aux:
        return main, extra
    regress = outputs[:, n_answers : n_answers + len(AUX)]
    for j in range(len(AUX)):
        known = ~torch.isnan(aux[:, j])
        if known.any():
            extra = extra + F.mse_loss(regress[known, j], aux[known, j]) * 4
    known = ~torch.isnan(aux[:, -1])
    if known.any():
        extra = extra + F.binary_cross_entropy_with_logits(outputs[known, -1], aux[known, -1])
    return main, extra


def predict(model, images, batch: int = 200) -> np.ndarray:
    """Outputs averaged over the 8 flips and quarter turns (probabilities per question, raw aux)."""
    import torch

    model.eval()
    outs = []
    with torch.no_grad():
        for s in range(0, len(images), batch):
            x = torch.from_numpy(images[s : s + batch]).float() / 255.0
            x = x.contiguous(memory_format=torch.channels_last)
            views = [model(dihedral(x, k, f)) for k in range(4) for f in (False, True)]
            outs.append(torch.stack(views).numpy())
    return np.concatenate(outs, axis=1)  # (view, galaxy, output)


def to_probabilities(raw: np.ndarray, groups, schema=None, head: str = "dirichlet") -> np.ndarray:
    """Softmax per question of raw outputs (view, galaxy, output), averaged over views; with
    `schema` (a Dirichlet-trained net) the expected vote fractions of the tree head's
    concentrations instead (`expected_vote_fractions`, the views as passes)."""
    n_answers = groups[-1][1] + 1
    if schema is not None:
        import torch

        from zoobot.shared import expected_vote_fractions

        with torch.no_grad():
            activation = concentration_head(head, schema)
            conc = activation(torch.from_numpy(raw).double()).numpy()
        return expected_vote_fractions(conc.transpose(1, 2, 0), schema)
    logits = raw[..., :n_answers]
    probs = np.zeros_like(logits)
    for start, end in groups:
        z = logits[..., start : end + 1]
        z = np.exp(z - z.max(-1, keepdims=True))
        probs[..., start : end + 1] = z / z.sum(-1, keepdims=True)
    return probs.mean(0)


def train(args, catalog, images, probs, aux, schema, counts=None) -> tuple[np.ndarray, dict]:
    """Train on the train split within `args.minutes` (cosine schedule in wall-clock time), keep
    the weights with the lowest validation loss, and return the test outputs (view, galaxy, out)."""
    import timm
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    groups = [(q.start, q.end) for q in schema.questions]
    n_out = len(schema.label_cols) + (0 if args.no_aux else len(AUX) + 1)
    if args.head == "mean-total":
        n_out += len(schema.questions)
    model = timm.create_model(args.architecture, num_classes=n_out, pretrained=False)
    model = model.to(memory_format=torch.channels_last)
    optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    split = catalog["split"].to_numpy()
    rows = {s: np.flatnonzero(split == s) for s in ("train", "validation", "test")}
    p_t = torch.from_numpy(probs if args.targets == "votes" else np.clip(probs, 1e-6, 1)).float()
    a_t = torch.from_numpy(aux).float()
    dirichlet, c_t = None, torch.zeros(len(catalog), 0)
    if args.loss == "dirichlet":
        from zoobot.torch.loss import DirichletMultinomialLoss

        head = concentration_head(args.head, schema)
        dirichlet = (head, DirichletMultinomialLoss(schema), args.ce_weight)
        c_t = torch.nan_to_num(torch.from_numpy(counts).float())  # as ZoobotTree's step
    budget = args.minutes * 60
    start = time.time()
    history, best, best_state, epoch = [], math.inf, None, 0
    while epoch < args.max_epochs and time.time() - start < budget:
        model.train()
        order = rng.permutation(rows["train"])
        total, batches = 0.0, 0
        for b in range(0, len(order) - args.batch_size + 1, args.batch_size):
            done = (time.time() - start) / budget
            if done >= 1:
                break
            lr = args.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * done)))
            if epoch == 0:
                lr *= min(1.0, (batches + 1) / 30)  # a short warm-up
            for group in optimiser.param_groups:
                group["lr"] = lr
            idx = order[b : b + args.batch_size]
            x = torch.from_numpy(images[idx]).float() / 255.0
            x = torch.stack(
                [dihedral(xi, int(rng.integers(4)), bool(rng.integers(2))) for xi in x]
            ).contiguous(memory_format=torch.channels_last)
            main, extra = losses(
                model(x), p_t[idx], a_t[idx], groups, not args.no_aux, dirichlet, c_t[idx]
            )
            loss = main + args.aux_weight * extra
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total, batches = total + main.item(), batches + 1
        epoch += 1
        val = rows["validation"]
        model.eval()
        with torch.no_grad():
            vx = torch.from_numpy(images[val]).float() / 255.0
            out = model(vx.contiguous(memory_format=torch.channels_last))
            v_main, v_extra = losses(
                out, p_t[val], a_t[val], groups, not args.no_aux, dirichlet, c_t[val]
            )
        record = {
            "epoch": epoch,
            "seconds": round(time.time() - start, 1),
            "lr": lr,
            "train_loss": total / batches,
            "validation_loss": float(v_main),
            "validation_aux": float(v_extra),
        }
        history.append(record)
        print(json.dumps(record), flush=True)
        if float(v_main) < best:
            best = float(v_main)
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    torch.save(best_state, Path(args.out) / "model.pt")
    info = {
        "epochs": epoch,
        "train_seconds": time.time() - start,
        "best_validation_loss": best,
        "history": history,
        "parameters": int(sum(p.numel() for p in model.parameters())),
    }
    return predict(model, images[rows["test"]]), info


def per_question(values: np.ndarray, schema, mask=None) -> np.ndarray:
    """Mean over a question's answers, then over galaxies (where `mask`): (question,)."""
    out = []
    for j, q in enumerate(schema.questions):
        v = values[:, q.start : q.end + 1].mean(1)
        keep = np.ones(len(v), bool) if mask is None else mask[:, j]
        out.append(v[keep].mean() if keep.any() else np.nan)
    return np.array(out)


def correlation(a: np.ndarray, b: np.ndarray, schema, mask) -> np.ndarray:
    """Pearson r over (galaxy, answer) pairs of each question, galaxies where `mask`."""
    out = []
    for j, q in enumerate(schema.questions):
        keep = mask[:, j]
        x, y = a[keep, q.start : q.end + 1].ravel(), b[keep, q.start : q.end + 1].ravel()
        out.append(np.corrcoef(x, y)[0, 1] if len(x) > 2 else np.nan)
    return np.array(out)


def evaluate(args, catalog, probs, aux, outputs, schema) -> dict:
    """The tables of the module docstring, on the test galaxies in the vote-trained model's order."""
    from zoobot.data.synthetic.reference import true_parameter_reference
    from zoobot.shared import (
        constant_fractions,
        evaluate_vote_fractions,
        expected_vote_fractions,
        read_predictions_full,
        roc_auc,
    )
    from zoobot.shared.votes import question_sums, vote_fractions

    run = Path(args.run)
    votes = read_predictions_full(run / "torch" / "predictions" / "test.parquet")
    by_id = catalog.set_index("id_str")
    test_ids = list(catalog.loc[catalog["split"] == "test", "id_str"])
    order = np.array([test_ids.index(i) for i in votes.id_str])  # ours -> the predictions' order
    test = by_id.loc[list(votes.id_str)].reset_index()
    where = {galaxy: i for i, galaxy in enumerate(catalog["id_str"])}
    pos = np.array([where[galaxy] for galaxy in votes.id_str])  # catalog rows, predictions' order
    counts = test[schema.label_cols].to_numpy(np.float64)
    train_rows = catalog[catalog["split"] == "train"]
    constant = constant_fractions(train_rows[schema.label_cols].to_numpy(np.float64), schema)
    reference = true_parameter_reference(train_rows.reset_index(drop=True), test, schema, seed=0)
    groups = [(q.start, q.end) for q in schema.questions]
    dm = schema if args.loss == "dirichlet" else None
    ceiling = to_probabilities(outputs, groups, dm, args.head)[order]
    view_0 = outputs[:1]  # the identity view: no turn, no flip
    identity = to_probabilities(view_0, groups, dm, args.head)[order]
    oracle = probs[pos]
    vote_model = expected_vote_fractions(votes.concentrations, schema)

    def table(conc, ref, bootstrap=0):
        return evaluate_vote_fractions(
            conc, counts, schema, constant, ref, min_votes=MIN_VOTES, bootstrap=bootstrap
        )

    vote_vs_ref = table(votes.concentrations, reference, bootstrap=1000)
    vote_vs_ceiling = table(votes.concentrations, ceiling, bootstrap=1000)
    ceiling_vs_ref = table(ceiling[:, :, None], reference, bootstrap=1000)
    oracle_t = table(oracle[:, :, None], reference)
    identity_vs_ref = table(identity[:, :, None], reference, bootstrap=1000)
    result = pd.DataFrame(
        {
            "question": vote_vs_ref["question"],
            "n": vote_vs_ref["n"],
            "constant_mae": vote_vs_ref["constant_mae"],
            "noise_floor": vote_vs_ref["noise_floor"],
            "oracle_mae": oracle_t["model_mae"],
            "reference_mae": vote_vs_ref["reference_mae"],
            "vote_model_mae": vote_vs_ref["model_mae"],
            "ceiling_mae": ceiling_vs_ref["model_mae"],
            "vote_share_of_reference": vote_vs_ref["gain_captured"],
            "vote_share_of_reference_low": vote_vs_ref["gain_low"],
            "vote_share_of_reference_high": vote_vs_ref["gain_high"],
            "ceiling_share_of_reference": ceiling_vs_ref["gain_captured"],
            "ceiling_share_of_reference_low": ceiling_vs_ref["gain_low"],
            "ceiling_share_of_reference_high": ceiling_vs_ref["gain_high"],
            "ceiling_identity_view_mae": identity_vs_ref["model_mae"],
            "ceiling_identity_view_share_of_reference": identity_vs_ref["gain_captured"],
            "ceiling_identity_view_share_low": identity_vs_ref["gain_low"],
            "ceiling_identity_view_share_high": identity_vs_ref["gain_high"],
            "vote_share_of_ceiling": vote_vs_ceiling["gain_captured"],
            "vote_share_of_ceiling_low": vote_vs_ceiling["gain_low"],
            "vote_share_of_ceiling_high": vote_vs_ceiling["gain_high"],
        }
    )
    # Recovery of the noise-free probabilities: every test galaxy, and those with >= 5 votes.
    enough = question_sums(counts, schema) >= MIN_VOTES
    everyone = np.ones_like(enough)
    recovery = pd.DataFrame({"question": result["question"]})
    for name, pred in (("ceiling", ceiling), ("vote_model", vote_model), ("reference", reference)):
        err = np.abs(pred - oracle)
        recovery[f"{name}_mae_all"] = per_question(err, schema)
        recovery[f"{name}_r_all"] = correlation(pred, oracle, schema, everyone)
        recovery[f"{name}_mae_voted"] = per_question(err, schema, enough)
        recovery[f"{name}_r_voted"] = correlation(pred, oracle, schema, enough)
    # Bar: barred vs not among test disks seen clearly.
    bar = schema.get_question("bar-dr5")
    no = schema.get_answer("bar-dr5_no").index
    observed = vote_fractions(counts, schema)
    bar_votes = question_sums(counts, schema)[:, schema.questions.index(bar)]
    raw_aux = outputs.mean(0)[order][:, len(schema.label_cols) :]
    has_aux = not args.no_aux
    scores = {
        "noise-free target (1 - p_no)": 1 - oracle[:, no],
        "true-parameter reference (1 - p_no)": 1 - reference[:, no],
        "vote-trained model (1 - p_no)": 1 - vote_model[:, no],
        "truth-supervised net (1 - p_no)": 1 - ceiling[:, no],
        "truth-supervised net, identity view only (1 - p_no)": 1 - identity[:, no],
    }
    if has_aux:
        scores["truth-supervised net, barred head"] = raw_aux[:, -1]
        scores["truth-supervised net, visible-bar head"] = raw_aux[:, 0]
    scores["volunteers' vote fraction (1 - f_no), >= 5 bar votes"] = 1 - observed[:, no]
    disk = (test["true_kind"] == "disk").to_numpy()
    barred = (test["true_bar"] != "none").to_numpy()
    clarity = test["true_clarity"].to_numpy()
    face = test["true_inclination"].to_numpy() < 60
    rows = []
    for label, keep in (
        ("disks, clarity >= 0.5", disk & (clarity >= 0.5)),
        ("disks, clarity >= 0.75", disk & (clarity >= 0.75)),
        ("disks, clarity >= 0.5, inclination < 60", disk & (clarity >= 0.5) & face),
        ("all disks", disk),
    ):
        row = {"subset": label, "galaxies": int(keep.sum()), "barred": int((keep & barred).sum())}
        for name, score in scores.items():
            k = keep & (bar_votes >= MIN_VOTES) if "vote fraction" in name else keep
            row[name] = roc_auc(barred[k], score[k])
        rows.append(row)
    bar_auc = pd.DataFrame(rows)
    # True parameters recovered from the pixels by the auxiliary heads (test galaxies).
    truth = aux[pos]
    params = {}
    if not has_aux:
        return {"table": result, "recovery": recovery, "bar_auc": bar_auc, "aux_r": params}
    for j, name in enumerate(AUX):
        known = ~np.isnan(truth[:, j])
        params[name] = float(np.corrcoef(truth[known, j], raw_aux[known, j])[0, 1])
    arms = ~np.isnan(truth[:, 2]) & (truth[:, 1] > 0.2)
    params["pitch, arms_seen > 0.2"] = float(np.corrcoef(truth[arms, 2], raw_aux[arms, 2])[0, 1])
    params["pitch, arms_seen > 0.2, galaxies"] = int(arms.sum())
    return {"table": result, "recovery": recovery, "bar_auc": bar_auc, "aux_r": params}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="output folder of a demo or science run")
    parser.add_argument("--out", default="pixel-ceiling")
    parser.add_argument("--architecture", default="test_resnet")
    parser.add_argument("--minutes", type=float, default=25.0)
    parser.add_argument("--max-epochs", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--aux-weight", type=float, default=0.3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--targets",
        choices=("noise-free", "votes"),
        default="noise-free",
        help="train on the noise-free probabilities or on the observed vote fractions "
        "(count / question total, questions without votes left out of the loss)",
    )
    parser.add_argument("--no-aux", action="store_true", help="no auxiliary true-parameter heads")
    parser.add_argument(
        "--loss",
        choices=("soft-ce", "dirichlet"),
        default="soft-ce",
        help="per-question soft cross-entropy on the targets, or (with --targets votes --no-aux) "
        "zoobot's Dirichlet-multinomial loss on the vote counts through the tree head's "
        "concentration activation",
    )
    parser.add_argument(
        "--head",
        choices=("dirichlet", "mean-total"),
        default="dirichlet",
        help="with --loss dirichlet: zoobot's per-answer concentration head, or a softmax mean "
        "times a per-question total concentration",
    )
    parser.add_argument(
        "--ce-weight",
        type=float,
        default=0.0,
        help="with --loss dirichlet: weight of a per-question soft cross-entropy of the "
        "expected fractions against the observed vote fractions, added to the NLL",
    )
    parser.add_argument("--eval-only", action="store_true")
    args = parser.parse_args()
    if args.loss == "dirichlet" and (args.targets != "votes" or not args.no_aux):
        parser.error("--loss dirichlet needs --targets votes --no-aux")

    from zoobot.shared import get_schema

    wall = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    schema = get_schema(SCHEMA)
    catalog = pd.read_parquet(Path(args.run) / "data/survey/catalog_with_splits.parquet")
    probs, aux, check = noise_free_targets(catalog, schema)
    # The Dirichlet is centred on the noise-free probabilities: on average they give the votes.
    from zoobot.shared.votes import question_sums, vote_fractions

    counts = catalog[schema.label_cols].to_numpy(np.float64)
    enough = question_sums(counts, schema) >= MIN_VOTES
    observed = vote_fractions(counts, schema)
    check["mean_fraction_minus_mean_noise_free_p"] = {}
    for j, q in enumerate(schema.questions):
        rows = enough[:, j]
        diff = observed[rows, q.start : q.end + 1].mean(0) - probs[rows, q.start : q.end + 1].mean(
            0
        )
        check["mean_fraction_minus_mean_noise_free_p"][q.name] = [round(float(d), 4) for d in diff]
    print(json.dumps(check, indent=1), flush=True)

    saved = out / "predictions.npz"
    if args.eval_only:
        outputs, info = np.load(saved)["test_outputs"], json.loads((out / "train.json").read_text())
    else:
        image_size = int(json.loads((Path(args.run) / "settings.json").read_text())["image_size"])
        images = load_images(catalog["file_loc"], image_size)
        targets = observed if args.targets == "votes" else probs
        outputs, info = train(args, catalog, images, targets, aux, schema, counts)
        np.savez_compressed(saved, test_outputs=outputs)
        info["settings"] = vars(args)
        (out / "train.json").write_text(json.dumps(info, indent=1))
    results = evaluate(args, catalog, probs, aux, outputs, schema)
    results["table"].to_csv(out / "ceiling_table.csv", index=False)
    results["recovery"].to_csv(out / "recovery_table.csv", index=False)
    results["bar_auc"].to_csv(out / "bar_auc.csv", index=False)
    summary = {
        "check": check,
        "aux_correlation": results["aux_r"],
        "train": {k: v for k, v in info.items() if k != "history"},
        "wall_seconds": time.time() - wall,
        "cpu": platform.processor() or platform.machine(),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    with pd.option_context("display.width", 250, "display.max_columns", 40):
        print(results["table"].round(3).to_string(index=False))
        print(results["recovery"].round(3).to_string(index=False))
        print(results["bar_auc"].round(3).T.to_string())
        print(json.dumps(results["aux_r"], indent=1))


if __name__ == "__main__":
    main()
