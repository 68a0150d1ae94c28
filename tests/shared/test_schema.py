"""Schemas: the registry's trees as the published catalogs name them, and validation of custom trees."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zoobot.shared import Schema, SchemaError, as_schema, get_schema, list_schemas

REQUIRED = [
    "gz2",
    "decals_dr5",
    "decals_dr8",
    "decals_dr12",
    "decals_all_campaigns",
    "desi",
    "gz_candels",
    "gz_hubble",
    "cosmic_dawn",
    "gz_ukidss",
    "gz_euclid",
    "gz_jwst",
    "gz_rings",
    "gz_evo",
]

# (questions, label columns) of each tree in the original label metadata (see schemas/SOURCES.md).
SIZES = {
    "gz2": (10, 30),
    "decals_dr5": (10, 34),
    "decals_dr8": (10, 34),
    "decals_dr12": (10, 30),
    "decals_all_campaigns": (30, 98),
    "desi": (10, 34),
    "gz_candels": (11, 32),
    "gz_hubble": (12, 34),
    "cosmic_dawn": (13, 45),
    "gz_ukidss": (10, 30),
    "gz_euclid": (13, 46),
    "gz_jwst": (12, 39),
    "gz_rings": (1, 2),
    "gz_evo": (63, 194),
}

DR5_COLUMNS = [
    "smooth-or-featured-dr5_smooth",
    "smooth-or-featured-dr5_featured-or-disk",
    "smooth-or-featured-dr5_artifact",
    "disk-edge-on-dr5_yes",
    "disk-edge-on-dr5_no",
    "has-spiral-arms-dr5_yes",
    "has-spiral-arms-dr5_no",
    "bar-dr5_strong",
    "bar-dr5_weak",
    "bar-dr5_no",
    "bulge-size-dr5_dominant",
    "bulge-size-dr5_large",
    "bulge-size-dr5_moderate",
    "bulge-size-dr5_small",
    "bulge-size-dr5_none",
    "how-rounded-dr5_round",
    "how-rounded-dr5_in-between",
    "how-rounded-dr5_cigar-shaped",
    "edge-on-bulge-dr5_boxy",
    "edge-on-bulge-dr5_none",
    "edge-on-bulge-dr5_rounded",
    "spiral-winding-dr5_tight",
    "spiral-winding-dr5_medium",
    "spiral-winding-dr5_loose",
    "spiral-arm-count-dr5_1",
    "spiral-arm-count-dr5_2",
    "spiral-arm-count-dr5_3",
    "spiral-arm-count-dr5_4",
    "spiral-arm-count-dr5_more-than-4",
    "spiral-arm-count-dr5_cant-tell",
    "merging-dr5_none",
    "merging-dr5_minor-disturbance",
    "merging-dr5_major-disturbance",
    "merging-dr5_merger",
]


def test_registry_lists_every_public_tree():
    assert set(REQUIRED) <= set(list_schemas())


@pytest.mark.parametrize("name", REQUIRED)
def test_registry_sizes_and_structure(name):
    schema = get_schema(name)
    assert schema.name == name
    assert (len(schema.questions), len(schema.label_cols)) == SIZES[name]
    assert len(set(schema.label_cols)) == len(schema.label_cols)
    # Index groups are contiguous, inclusive, and cover every column exactly once.
    groups = schema.question_index_groups
    assert groups[0][0] == 0 and groups[-1][1] == len(schema.label_cols) - 1
    for (_, end), (start, _) in zip(groups[:-1], groups[1:], strict=True):
        assert start == end + 1
    for question, (start, end) in zip(schema.questions, groups, strict=True):
        assert schema.label_cols[start : end + 1] == question.label_cols
        assert all(col.startswith(question.name + "_") for col in question.label_cols)
        if question.asked_after is not None:
            assert question.asked_after in schema.label_cols


@pytest.mark.parametrize("name", REQUIRED)
def test_registry_json_round_trip(name):
    schema = get_schema(name)
    again = Schema.from_json(schema.to_json())
    assert again == schema
    assert again.label_cols == schema.label_cols
    assert again.dependencies == schema.dependencies


def test_decals_dr5_columns_and_tree_exactly():
    schema = get_schema("decals_dr5")
    assert schema.label_cols == DR5_COLUMNS
    assert schema.dependencies["smooth-or-featured-dr5"] is None
    assert schema.dependencies["merging-dr5"] is None
    assert schema.dependencies["bar-dr5"] == "disk-edge-on-dr5_no"
    assert schema.dependencies["spiral-winding-dr5"] == "has-spiral-arms-dr5_yes"
    chain = [a.column for a in schema.ancestors("spiral-arm-count-dr5")]
    assert chain == [
        "has-spiral-arms-dr5_yes",
        "disk-edge-on-dr5_no",
        "smooth-or-featured-dr5_featured-or-disk",
    ]
    assert schema.campaigns == {"dr5": [q.name for q in schema.questions]}


def test_published_column_names_of_other_campaigns():
    assert "has-spiral-arms-gz2_yes" in get_schema("gz2").label_cols
    assert "smooth-or-featured-candels_features" in get_schema("gz_candels").label_cols
    assert get_schema("gz_rings").label_cols == ["ring_yes", "ring_no"]


def test_gz_evo_is_the_union_of_its_campaigns():
    evo = get_schema("gz_evo")
    parts = ["decals_all_campaigns", "gz2", "gz_candels", "gz_hubble"]
    assert evo.label_cols == [c for p in parts for c in get_schema(p).label_cols]
    assert set(evo.campaigns) == {"dr12", "dr5", "dr8", "gz2", "candels", "hubble"}
    for part in parts:
        for question in get_schema(part).questions:
            assert evo.get_question(question.name).asked_after == question.asked_after


def test_unknown_schema_names_the_registered_ones():
    with pytest.raises(KeyError, match="unknown schema 'dr5'.*decals_dr5"):
        get_schema("dr5")


def tiny_pairs():
    return {"shape": ["round", "disk"], "bar": ["yes", "no"]}


@pytest.mark.parametrize("name", ["decals_dr5", "gz2", "gz_evo"])
def test_tree_order_puts_each_question_after_its_parent(name):
    schema = get_schema(name)
    order = [q.name for q in schema.tree_order]
    assert sorted(order) == sorted(q.name for q in schema.questions)
    for position, question in enumerate(schema.tree_order):
        if question.asked_after is not None:
            assert order.index(schema.question_of(question.asked_after).name) < position


def test_as_schema_takes_a_name_a_schema_or_its_saved_form():
    custom = Schema({"ring": ["yes", "no"]}, name="mine")
    assert as_schema(custom) is custom
    assert as_schema("decals_dr5") is get_schema("decals_dr5")
    rebuilt = as_schema(custom.to_dict())
    assert rebuilt.label_cols == custom.label_cols and rebuilt.name == "mine"
    with pytest.raises(KeyError, match="unknown schema 'nope'"):
        as_schema("nope")


def test_custom_schema_and_original_suffix_spelling():
    schema = Schema(tiny_pairs(), {"bar": "shape_disk"}, name="tiny")
    assert schema.label_cols == ["shape_round", "shape_disk", "bar_yes", "bar_no"]
    assert schema.question_index_groups == [(0, 1), (2, 3)]
    assert list(schema.answer_question_index) == [0, 0, 1, 1]
    legacy = Schema({"shape": ["_round", "_disk"], "bar": ["_yes", "_no"]}, {"bar": "shape_disk"})
    assert legacy.label_cols == schema.label_cols
    assert schema.get_answer("bar_no").index == 3
    assert schema.question_of("bar_no").name == "bar"
    with pytest.raises(KeyError, match="no answer column 'bar_maybe'"):
        schema.get_answer("bar_maybe")


def test_from_label_cols_groups_by_question():
    cols = ["shape_round", "shape_disk", "bar_yes", "bar_no"]
    schema = Schema.from_label_cols(cols, {"bar": "shape_disk"})
    assert schema.label_cols == cols
    assert schema.get_question("bar").asked_after == "shape_disk"


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: Schema.from_label_cols(["shape_round", "bar_yes", "shape_disk", "bar_no"]),
            "answers of question 'shape' are not contiguous.*column 2 'shape_disk'",
        ),
        (lambda: Schema(tiny_pairs(), {"bar": "shape_spiral"}), "'shape_spiral'.*not an answer"),
        (
            lambda: Schema(tiny_pairs(), {"shape": "bar_yes", "bar": "shape_disk"}),
            "dependency cycle shape -> bar -> shape",
        ),
        (lambda: Schema({"shape": ["round", "round"]}), "repeats answers \\['round'\\]"),
        (
            lambda: Schema.from_label_cols(["shape_round", "shape_round", "shape_disk"]),
            "duplicate label columns \\['shape_round'\\]",
        ),
        (lambda: Schema({"shape": ["round"]}), "has 1 answer\\(s\\)"),
        (lambda: Schema({"my_shape": ["a", "b"]}), "contain no '_'"),
        (lambda: Schema(tiny_pairs(), {"colour": "shape_disk"}), "unknown|not in the schema"),
        (lambda: Schema({}), "no questions"),
        (lambda: Schema.from_label_cols(["shaperound"]), "not of the form 'question_answer'"),
        (lambda: Schema.from_dict({"name": "x"}), "needs 'questions'"),
        (lambda: Schema({"shape": ["round", ""]}), "answer of 'shape' '' is blank"),
        (lambda: Schema({"shape": ["round", "  "]}), "answer of 'shape' '  ' is blank"),
        (lambda: Schema({"shape": ["round", " disk"]}), "' disk' is blank or has leading"),
        (lambda: Schema({"shape": ["round", "_"]}), "answer of 'shape' '' is blank"),
        (lambda: Schema({" ": ["a", "b"]}), "question name ' ' is blank"),
        (lambda: Schema({"shape ": ["a", "b"]}), "question name 'shape ' is blank"),
        (lambda: Schema({1: ["a", "b"]}), "question name 1 is not a string \\(a int\\)"),
        (lambda: Schema({"shape": ["a", 2]}), "answer of 'shape' 2 is not a string"),
        (lambda: Schema({"shape": ["a", None]}), "None is not a string"),
        (lambda: Schema({"shape": 3}), "answers of 'shape' must be a list of names"),
        (lambda: Schema([("shape", ["a", "b"])]), "must be a \\{question: \\[answers\\]\\}"),
        (lambda: Schema(tiny_pairs(), {"bar": 7}), "parent answer of 'bar' 7 is not a string"),
        (lambda: Schema(tiny_pairs(), ["bar"]), "dependencies must be a"),
        (lambda: Schema.from_label_cols(["shape_round", 5]), "label column 1 5 is not a string"),
        (lambda: Schema.from_label_cols(["shape_round", "shape_disk "]), "'shape_disk ' is blank"),
    ],
)
def test_invalid_trees_fail_clearly(build, message):
    with pytest.raises(SchemaError, match=message):
        build()


NAMES = st.one_of(st.text(max_size=6), st.integers(), st.none(), st.just(" a"), st.just("_"))


@settings(max_examples=300, deadline=None)
@given(
    pairs=st.dictionaries(
        st.one_of(st.text(max_size=6), st.integers()),
        st.one_of(st.lists(NAMES, max_size=4), NAMES),
        max_size=3,
    ),
    parents=st.dictionaries(st.text(max_size=6), NAMES, max_size=2),
)
def test_any_tree_builds_or_raises_schema_error(pairs, parents):
    """Whatever names a user passes, the result is a schema whose names are clean text, or a
    SchemaError (never an AttributeError or TypeError from deep inside)."""
    try:
        schema = Schema(pairs, parents)
    except SchemaError:
        return
    for column in schema.label_cols:
        assert isinstance(column, str) and column == column.strip()
        question, answer = column.split("_", 1)
        assert question.strip() and answer.strip()


def test_schema_json_is_plain_data():
    schema = Schema(tiny_pairs(), {"bar": "shape_disk"}, name="tiny", description="two questions")
    data = json.loads(schema.to_json())
    assert data == {
        "name": "tiny",
        "description": "two questions",
        "questions": [
            {"name": "shape", "answers": ["round", "disk"], "asked_after": None},
            {"name": "bar", "answers": ["yes", "no"], "asked_after": "shape_disk"},
        ],
    }
