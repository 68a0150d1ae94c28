"""Galaxy Zoo decision trees as data: questions, their answers, and which answer each follows.

A `Schema` fixes the order of the label columns (the order of a model head's outputs), groups them by
question, and records the tree, so the loss, the statistics and the tables all agree on one layout.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

# Suffixes the published catalogs append to question names, one per Galaxy Zoo campaign.
CAMPAIGN_SUFFIXES = (
    "gz2",
    "dr5",
    "dr8",
    "dr12",
    "candels",
    "hubble",
    "cd",
    "ukidss",
    "euclid",
    "jwst",
)


class SchemaError(ValueError):
    """A decision tree that cannot be a valid schema (the message says which question or column)."""


@dataclass(frozen=True)
class Answer:
    """One answer of a question; `column` is its label column, `index` its position in `label_cols`."""

    question: str
    name: str
    index: int

    @property
    def column(self) -> str:
        return f"{self.question}_{self.name}"


@dataclass(frozen=True)
class Question:
    """A question, its answers (contiguous in `label_cols`) and the answer column it is asked after."""

    name: str
    answers: tuple[Answer, ...]
    asked_after: str | None

    @property
    def label_cols(self) -> list[str]:
        return [a.column for a in self.answers]

    @property
    def start(self) -> int:
        return self.answers[0].index

    @property
    def end(self) -> int:
        """Index of the last answer column, inclusive (the convention of `question_index_groups`)."""
        return self.answers[-1].index

    @property
    def campaign(self) -> str | None:
        """The campaign suffix of the question name (`dr5` for `bar-dr5`), None if it has none."""
        suffix = self.name.rsplit("-", 1)[-1]
        return suffix if suffix in CAMPAIGN_SUFFIXES else None


def _answer_name(raw: str) -> str:
    # The original Zoobot wrote answers as suffixes ("_smooth"); accept both spellings.
    return raw[1:] if raw.startswith("_") else raw


def _check_name(schema: str, what: str, name: object) -> str:
    """`name` if it can name a question or answer (text, not blank, no surrounding spaces)."""
    if not isinstance(name, str):
        raise SchemaError(
            f"schema {schema!r}: {what} {name!r} is not a string (a {type(name).__name__})"
        )
    if not name.strip() or name != name.strip():
        raise SchemaError(
            f"schema {schema!r}: {what} {name!r} is blank or has leading/trailing spaces"
        )
    return name


class Schema:
    """A Galaxy Zoo decision tree.

    Build it from `{question: [answers]}` and `{question: parent answer column or None}`; the label
    columns are `question_answer` in the given order. Invalid trees raise `SchemaError`.
    """

    def __init__(
        self,
        question_answer_pairs: Mapping[str, Sequence[str]],
        dependencies: Mapping[str, str | None] | None = None,
        name: str = "custom",
        description: str = "",
    ):
        if not isinstance(question_answer_pairs, Mapping):
            raise SchemaError(
                f"schema {name!r}: questions must be a {{question: [answers]}} mapping, "
                f"got a {type(question_answer_pairs).__name__}"
            )
        if dependencies is not None and not isinstance(dependencies, Mapping):
            raise SchemaError(
                f"schema {name!r}: dependencies must be a {{question: parent answer}} mapping, "
                f"got a {type(dependencies).__name__}"
            )
        dependencies = dict(dependencies or {})
        self.name = name
        self.description = description
        if not question_answer_pairs:
            raise SchemaError(f"schema {name!r} has no questions")
        for qname, parent in dependencies.items():
            if parent is not None:
                _check_name(name, f"the parent answer of {qname!r}", parent)
        unknown = sorted(set(dependencies) - set(question_answer_pairs))
        if unknown:
            raise SchemaError(
                f"schema {name!r}: dependencies name questions that are not in the schema: {unknown}"
            )
        questions: list[Question] = []
        index = 0
        for qname, raw_answers in question_answer_pairs.items():
            _check_name(name, "question name", qname)
            if "_" in qname:
                raise SchemaError(
                    f"schema {name!r}: question name {qname!r} must be non-empty and contain no '_' "
                    "(label columns are 'question_answer')"
                )
            if isinstance(raw_answers, str):
                raise SchemaError(
                    f"schema {name!r}: answers of {qname!r} must be a list of names, got a string"
                )
            if not isinstance(raw_answers, Sequence):
                raise SchemaError(
                    f"schema {name!r}: answers of {qname!r} must be a list of names, "
                    f"got a {type(raw_answers).__name__}"
                )
            what = f"an answer of {qname!r}"
            answers = [
                _check_name(name, what, _answer_name(_check_name(name, what, a)))
                for a in raw_answers
            ]
            if len(answers) < 2:
                raise SchemaError(
                    f"schema {name!r}: question {qname!r} has {len(answers)} answer(s); "
                    "a question needs at least two"
                )
            seen = {a for a in answers if answers.count(a) > 1}
            if seen:
                raise SchemaError(
                    f"schema {name!r}: question {qname!r} repeats answers {sorted(seen)} "
                    "(duplicate label columns)"
                )
            built = tuple(Answer(qname, a, index + i) for i, a in enumerate(answers))
            index += len(built)
            questions.append(Question(qname, built, dependencies.get(qname)))
        self._questions = tuple(questions)
        self._validate_tree()

    @classmethod
    def from_label_cols(
        cls,
        label_cols: Sequence[str],
        dependencies: Mapping[str, str | None] | None = None,
        name: str = "custom",
        description: str = "",
    ) -> Schema:
        """Group `question_answer` columns by question; each question's columns must be contiguous."""
        pairs: dict[str, list[str]] = {}
        duplicates = sorted({c for c in label_cols if list(label_cols).count(c) > 1})
        if duplicates:
            raise SchemaError(f"schema {name!r}: duplicate label columns {duplicates}")
        previous = None
        for i, col in enumerate(label_cols):
            _check_name(name, f"label column {i}", col)
            if "_" not in col:
                raise SchemaError(
                    f"schema {name!r}: label column {i} {col!r} is not of the form 'question_answer'"
                )
            question, answer = col.split("_", 1)
            if question in pairs and question != previous:
                raise SchemaError(
                    f"schema {name!r}: answers of question {question!r} are not contiguous in "
                    f"label_cols (column {i} {col!r} comes after answers of {previous!r})"
                )
            pairs.setdefault(question, []).append(answer)
            previous = question
        return cls(pairs, dependencies, name=name, description=description)

    @classmethod
    def union(cls, schemas: Iterable[Schema], name: str, description: str = "") -> Schema:
        """Questions of several schemas in order; a question shared by several appears once."""
        pairs: dict[str, list[str]] = {}
        dependencies: dict[str, str | None] = {}
        for schema in schemas:
            for q in schema.questions:
                answers = [a.name for a in q.answers]
                if q.name in pairs:
                    if pairs[q.name] != answers or dependencies[q.name] != q.asked_after:
                        raise SchemaError(
                            f"union {name!r}: question {q.name!r} differs between schemas "
                            f"({pairs[q.name]} after {dependencies[q.name]!r} vs "
                            f"{answers} after {q.asked_after!r} in {schema.name!r})"
                        )
                    continue
                pairs[q.name] = answers
                dependencies[q.name] = q.asked_after
        return cls(pairs, dependencies, name=name, description=description)

    def _validate_tree(self) -> None:
        by_column = {a.column: q for q in self._questions for a in q.answers}
        for q in self._questions:
            if q.asked_after is not None and q.asked_after not in by_column:
                raise SchemaError(
                    f"schema {self.name!r}: question {q.name!r} is asked after {q.asked_after!r}, "
                    "which is not an answer column of this schema"
                )
        for q in self._questions:
            chain = [q.name]
            parent = q.asked_after
            while parent is not None:
                above = by_column[parent]
                if above.name in chain:
                    cycle = " -> ".join([*chain, above.name])
                    raise SchemaError(f"schema {self.name!r}: dependency cycle {cycle}")
                chain.append(above.name)
                parent = above.asked_after

    @property
    def questions(self) -> tuple[Question, ...]:
        return self._questions

    @cached_property
    def answers(self) -> tuple[Answer, ...]:
        return tuple(a for q in self._questions for a in q.answers)

    @cached_property
    def label_cols(self) -> list[str]:
        return [a.column for a in self.answers]

    @cached_property
    def question_index_groups(self) -> list[tuple[int, int]]:
        """(first, last) answer index of each question, both inclusive."""
        return [(q.start, q.end) for q in self._questions]

    @cached_property
    def dependencies(self) -> dict[str, str | None]:
        return {q.name: q.asked_after for q in self._questions}

    @cached_property
    def question_answer_pairs(self) -> dict[str, list[str]]:
        return {q.name: [a.name for a in q.answers] for q in self._questions}

    @cached_property
    def answer_question_index(self) -> np.ndarray:
        """For each label column, the index of its question: the key to vectorised per-question sums."""
        return np.array(
            [i for i, q in enumerate(self._questions) for _ in q.answers], dtype=np.int64
        )

    @cached_property
    def question_starts(self) -> np.ndarray:
        return np.array([q.start for q in self._questions], dtype=np.int64)

    @cached_property
    def campaigns(self) -> dict[str, list[str]]:
        """Question names grouped by campaign suffix (the schema name for unsuffixed questions)."""
        groups: dict[str, list[str]] = {}
        for q in self._questions:
            groups.setdefault(q.campaign or self.name, []).append(q.name)
        return groups

    def get_question(self, name: str) -> Question:
        for q in self._questions:
            if q.name == name:
                return q
        raise KeyError(f"schema {self.name!r} has no question {name!r}")

    def get_answer(self, column: str) -> Answer:
        for a in self.answers:
            if a.column == column:
                return a
        raise KeyError(f"schema {self.name!r} has no answer column {column!r}")

    def question_of(self, column: str) -> Question:
        return self._questions[self.answer_question_index[self.get_answer(column).index]]

    def ancestors(self, question: str) -> list[Answer]:
        """The answers that lead to `question`, nearest first (empty for a root question)."""
        chain = []
        parent = self.get_question(question).asked_after
        while parent is not None:
            answer = self.get_answer(parent)
            chain.append(answer)
            parent = self.question_of(parent).asked_after
        return chain

    @cached_property
    def tree_order(self) -> tuple[Question, ...]:
        """Questions by depth in the tree, each after the one it follows: the order to walk them."""
        return tuple(sorted(self._questions, key=lambda q: len(self.ancestors(q.name))))

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "questions": [
                {
                    "name": q.name,
                    "answers": [a.name for a in q.answers],
                    "asked_after": q.asked_after,
                }
                for q in self._questions
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> Schema:
        try:
            questions = data["questions"]
            pairs = {q["name"]: list(q["answers"]) for q in questions}
            dependencies = {q["name"]: q.get("asked_after") for q in questions}
        except (KeyError, TypeError) as err:
            raise SchemaError(
                "a schema dict needs 'questions': [{'name', 'answers', 'asked_after'}, ...]; "
                f"missing or malformed: {err}"
            ) from err
        return cls(
            pairs,
            dependencies,
            name=data.get("name", "custom"),
            description=data.get("description", ""),
        )

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str) -> Schema:
        return cls.from_dict(json.loads(text))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Schema):
            return NotImplemented
        return self.name == other.name and self._questions == other._questions

    def __hash__(self) -> int:
        return hash((self.name, self._questions))

    def __repr__(self) -> str:
        return (
            f"Schema(name={self.name!r}, questions={len(self._questions)}, "
            f"label_cols={len(self.label_cols)})"
        )
