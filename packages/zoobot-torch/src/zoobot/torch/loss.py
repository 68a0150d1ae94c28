"""The Dirichlet-multinomial loss in torch, vectorised over questions (DESIGN.md contract 2).

Per question, -log p(votes | concentrations) exactly as `zoobot.shared.loss.dirichlet_multinomial_nll`
(the NumPy oracle, multinomial coefficient included). Unanswered questions give exactly 0 with zero
gradient. The lgamma terms reach ~1e3 and cancel down to losses of ~1-10, so float32 keeps only 4-5
digits: the loss is computed in float64 (float32 on MPS, which has no float64), under autocast too,
and comes back in the concentrations' dtype, at least float32.

One autograd function computes the per-question values and the objective (their sum over questions,
batch mean) in a few dozen tensor operations, never a Python loop per question, and its backward is
one multiplication (the gradient is analytic, see `_DirichletMultinomialNLL`):

- answers and questions form one list of (z, m) pairs, (concentration, count) per answer and
  (concentration total, vote total) per question, and every term of the likelihood is
  lgamma(z + m) - lgamma(z) (and digamma(z + m) - digamma(z) for the gradient) of a pair;
- on CPU only pairs with m > 0 are kept (nothing else contributes), which in Galaxy Zoo's deep trees
  is about half of them, and log-factorials of integer counts come from a table;
- lgamma and digamma are evaluated together from their asymptotic series (a log, a reciprocal and a
  short polynomial shared by both), exact in float64 for arguments >= 10; the few smaller arguments
  use torch's `lgamma` / `digamma`.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

from zoobot.shared.schema import Schema

ASYMPTOTIC_FROM = 10.0
"""Arguments from which the asymptotic series are used (to ~1e-15 with the terms below)."""
# lgamma(w) = (w - 1/2) log w - w + log(2 pi) / 2 + (1/w) LG(1/w^2)
# digamma(w) = log w - 1/(2w) + (1/w^2) PS(1/w^2)
# coefficients B_2k / (2k (2k - 1)) and -B_2k / (2k) of the Bernoulli numbers, highest power first
_LGAMMA_SERIES = (1 / 1188, -1 / 1680, 1 / 1260, -1 / 360, 1 / 12)
_DIGAMMA_SERIES = (-1 / 132, 1 / 240, -1 / 252, 1 / 120, -1 / 12)
_LOG_FACTORIALS = 1 << 16
"""Size of the table of log k! for integer counts (half a megabyte in float64)."""


@functools.lru_cache(maxsize=16)
def _series_coefficients(dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Per term, highest power first, both series' coefficients as a (series, 1, 1) tensor: one
    Horner scheme evaluates the two series at once on (argument, pair) tensors."""
    coefficients = torch.tensor([_LGAMMA_SERIES, _DIGAMMA_SERIES], dtype=dtype, device=device)
    return tuple(coefficients.T.reshape(-1, 2, 1, 1).unbind(0))


@functools.lru_cache(maxsize=16)
def _log_factorial_table(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """log k! for k < `_LOG_FACTORIALS`."""
    return torch.lgamma(torch.arange(1, _LOG_FACTORIALS + 1, dtype=dtype, device=device))


def _log_factorial(counts: torch.Tensor, lookup: bool) -> torch.Tensor:
    """log(counts!) = lgamma(counts + 1); from a table when `lookup` and the counts are integers
    below `_LOG_FACTORIALS` (anything else, e.g. vote fractions times volunteers, uses lgamma)."""
    if lookup:
        whole = counts.long().clamp_(0, _LOG_FACTORIALS - 1)
        if torch.equal(whole, counts):
            return _log_factorial_table(counts.dtype, counts.device).index_select(0, whole)
    return torch.lgamma(counts + 1)


def gamma_ratios(z: torch.Tensor, m: torch.Tensor, compact: bool = True) -> torch.Tensor:
    """lgamma(z + m) - lgamma(z) and digamma(z + m) - digamma(z) of 1-D z > 0, m >= 0: (2, len).

    Both come from one asymptotic expansion of lgamma and digamma at z and z + m, exact in float64
    from `ASYMPTOTIC_FROM`; pairs with a smaller z use torch's `lgamma` and `digamma`, gathered first
    when `compact` (worth it on CPU, where they are few; elsewhere, to avoid a device sync, both are
    computed everywhere and selected). m = 0 gives exactly 0.
    """
    w = torch.stack((z, z + m))
    # xlogy(1, w) is log(w) without torch.log's parallel region, which on small tensors only costs
    # time, and stalls for milliseconds when other processes hold the cores
    log_w = torch.xlogy(1.0, w)
    r = w.reciprocal()
    r2 = r * r
    highest, *lower = _series_coefficients(w.dtype, w.device)
    values = (r2 * highest).add_(lower[0])  # (series, argument, pair)
    for c in lower[1:]:
        torch.addcmul(c, values, r2, out=values)
    # lgamma - log(2 pi) / 2 (a constant, which cancels in the differences), and digamma
    lgamma, digamma = values
    lgamma.mul_(r).addcmul_(w - 0.5, log_w).sub_(w)
    digamma.mul_(r2).add_(log_w).sub_(r, alpha=0.5)
    small = z < ASYMPTOTIC_FROM  # z + m >= z, so these are all the pairs with a small argument
    if compact:
        small = small.nonzero().squeeze(1)
        if small.numel():
            few = w[:, small]  # both arguments of a pair: log(2 pi) / 2 still cancels
            values[:, :, small] = torch.stack((torch.lgamma(few), torch.digamma(few)))
    else:
        values = torch.where(small, torch.stack((torch.lgamma(w), torch.digamma(w))), values)
    return values[:, 1] - values[:, 0]


class QuestionLayout:
    """Where each answer column's question is, for one schema; cached tensors per device and batch.

    The loss lays answers and question totals out as (2, n_answers + n_questions, batch) in the
    compute dtype, counts in row 0 and concentrations in row 1, so one selection covers both levels.
    """

    def __init__(self, answer_question_index, n_questions: int | None = None):
        index = torch.as_tensor(np.asarray(answer_question_index), dtype=torch.long)
        if index.ndim != 1 or index.numel() == 0 or int(index.min()) < 0:
            raise ValueError("answer_question_index must be a non-empty 1-D array of indices >= 0")
        self.n_answers = index.numel()
        self.n_questions = int(index.max()) + 1 if n_questions is None else n_questions
        self._index = index
        self._cache: dict[tuple, torch.Tensor | tuple[torch.Tensor, ...]] = {}

    def _cached(self, key: tuple, make):
        if key not in self._cache:
            if len(self._cache) > 32:  # a few batch sizes and devices are in use at a time
                self._cache.clear()
            self._cache[key] = make()
        return self._cache[key]

    def index(self, device: torch.device) -> torch.Tensor:
        """The answer -> question index on `device`."""
        return self._cached(("index", device), lambda: self._index.to(device))

    def to_question(self, batch: int, device: torch.device) -> torch.Tensor:
        """For each flat position of the (answer or question, galaxy) layout, the flat position of
        its question in a (galaxy, question) table."""

        def make():
            galaxies = torch.arange(batch, device=device)
            owners = torch.cat((self.index(device), torch.arange(self.n_questions, device=device)))
            return (galaxies * self.n_questions + owners[:, None]).view(-1)

        return self._cached(("to_question", batch, device), make)


@functools.lru_cache(maxsize=32)
def _layout_of(answer_question_index: tuple[int, ...], n_questions: int) -> QuestionLayout:
    return QuestionLayout(answer_question_index, n_questions)


class _DirichletMultinomialNLL(torch.autograd.Function):
    """The per-question loss (batch, question) and the objective (its sum over questions, batch
    mean) from counts and concentrations (batch, answer).

    For question q with vote total n and concentration total A, and answers i with counts x_i and
    concentrations a_i, and D(z, m) = lgamma(z + m) - lgamma(z):

        nll_q = D(A, n) - log n! - sum_i [D(a_i, x_i) - log x_i!]
        d nll_q / d a_i = P(A, n) - P(a_i, x_i),   P(z, m) = digamma(z + m) - digamma(z)

    so the gradient is computed in the forward pass (from the same series) and the backward pass
    multiplies it by the incoming gradient of each answer's question. Counts get no gradient.
    """

    @staticmethod
    def forward(ctx, counts, concentrations, layout, compute_dtype, compact):
        n_answers, n_questions = layout.n_answers, layout.n_questions
        batch, device = concentrations.shape[0], concentrations.device
        index = layout.index(device)
        pairs = torch.stack((counts.T, concentrations.T)).to(compute_dtype)
        totals = pairs.new_zeros(2, n_questions, batch).index_add_(1, index, pairs)
        counts, alphas = torch.cat((pairs, totals), 1).view(2, -1)
        if compact:  # only pairs with votes contribute; answers come first in the layout
            chosen = counts.nonzero().squeeze(1)
            counts, alphas = counts.index_select(0, chosen), alphas.index_select(0, chosen)
            split = int(torch.searchsorted(chosen, n_answers * batch))
        else:
            chosen = torch.arange(len(counts), device=device)
            split = n_answers * batch
        d, p = gamma_ratios(alphas, counts, compact)
        d.sub_(_log_factorial(counts, lookup=compact))
        if not compact:  # exact zeros without votes, whatever the rounding of lgamma's branches
            voted = counts > 0
            d, p = torch.where(voted, d, 0.0), torch.where(voted, p, 0.0)
        sizes = (split, len(chosen) - split)
        to_question = layout.to_question(batch, device).index_select(0, chosen)
        (answers_question, question), answers = to_question.split(sizes), chosen[:split]
        (d_answers, d_questions), (p_answers, p_questions) = d.split(sizes), p.split(sizes)
        nll = d.new_zeros(batch * n_questions).index_copy_(0, question, d_questions)
        nll.index_add_(0, answers_question, d_answers, alpha=-1)
        if ctx.needs_input_grad[1]:  # laid out (answer, galaxy) like the pairs
            per_question = p.new_zeros(n_questions * batch)
            per_question.index_copy_(0, chosen[split:] - n_answers * batch, p_questions)
            gradient = per_question.view(n_questions, batch).index_select(0, index)
            gradient.view(-1).index_add_(0, answers, p_answers, alpha=-1)
            ctx.save_for_backward(gradient)
            ctx.index, ctx.dtype = index, concentrations.dtype
        ctx.set_materialize_grads(False)
        per_question = nll.view(batch, n_questions).to(
            torch.promote_types(concentrations.dtype, torch.float32)
        )
        return per_question, per_question.sum().div(batch)

    @staticmethod
    def backward(ctx, grad_per_question, grad_objective):
        (gradient,) = ctx.saved_tensors
        incoming = 0.0
        if grad_per_question is not None:
            incoming = grad_per_question.T.index_select(0, ctx.index).to(gradient.dtype)
        if grad_objective is not None:
            incoming = incoming + grad_objective.to(gradient.dtype) / gradient.shape[1]
        return None, (gradient * incoming).T.to(ctx.dtype), None, None, None


def _as_layout(
    schema_or_index: Schema | QuestionLayout | torch.Tensor | np.ndarray, n_questions: int | None
) -> QuestionLayout:
    if isinstance(schema_or_index, QuestionLayout):
        return schema_or_index
    if isinstance(schema_or_index, Schema):
        index, n_questions = schema_or_index.answer_question_index, len(schema_or_index.questions)
    else:
        index = torch.as_tensor(schema_or_index).cpu().numpy()
    index = tuple(int(i) for i in np.asarray(index).reshape(-1))
    if n_questions is None:
        n_questions = max(index) + 1 if index else 0
    return _layout_of(index, n_questions)


def _loss_and_objective(
    counts: torch.Tensor,
    concentrations: torch.Tensor,
    layout: QuestionLayout,
    compute_dtype: torch.dtype | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    if concentrations.ndim != 2 or counts.shape != concentrations.shape:
        raise ValueError(
            f"counts {tuple(counts.shape)} and concentrations {tuple(concentrations.shape)} must both "
            "be (batch, n_label_cols)"
        )
    if concentrations.shape[1] != layout.n_answers:
        raise ValueError(
            f"concentrations has {concentrations.shape[1]} columns but the schema has "
            f"{layout.n_answers} label columns"
        )
    device = concentrations.device
    if compute_dtype is None:
        compute_dtype = torch.float32 if device.type == "mps" else torch.float64
    compact = device.type == "cpu"  # selections sync the device: cheap on CPU only
    # no operation in it is autocast-eligible: it computes in `compute_dtype` under autocast too
    return _DirichletMultinomialNLL.apply(counts, concentrations, layout, compute_dtype, compact)


def dirichlet_multinomial_loss(
    counts: torch.Tensor,
    concentrations: torch.Tensor,
    schema_or_index: Schema | QuestionLayout | torch.Tensor | np.ndarray,
    *,
    n_questions: int | None = None,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Negative log-likelihood of the votes per question, (batch, question); 0 where nobody answered.

    `counts` and `concentrations` are (batch, n_label_cols) in label-column order; `schema_or_index`
    is the `Schema`, a `QuestionLayout`, or the schema's `answer_question_index` (with `n_questions`
    if the last questions could be missing from it). `compute_dtype` overrides the dtype of the
    computation (float64, or float32 on MPS). Counts are data: no gradient flows to them.
    """
    layout = _as_layout(schema_or_index, n_questions)
    return _loss_and_objective(counts, concentrations, layout, compute_dtype)[0]


class DirichletMultinomialLoss(nn.Module):
    """The training objective for a schema: per-question loss summed over questions, batch mean."""

    def __init__(self, schema: Schema):
        super().__init__()
        self.schema = schema
        self.layout = _as_layout(schema, None)

    def forward(
        self,
        counts: torch.Tensor,
        concentrations: torch.Tensor,
        return_per_question: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The scalar objective, and with `return_per_question` also the (batch, question) values."""
        per_question, objective = _loss_and_objective(counts, concentrations, self.layout, None)
        return (objective, per_question) if return_per_question else objective
