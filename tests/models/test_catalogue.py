"""zoobot.models.catalogue: the published encoders as data, their names, the `models` command and the
README table. Parameter counts and weights file sizes are checked against timm in tests/torch."""

import json
import re
from pathlib import Path

import pytest

import zoobot.models
from zoobot.models import catalogue
from zoobot.models.cli import HELP_KEYS, ModelCommand, run_command
from zoobot.models.hub import ModelSource

README = Path(__file__).resolve().parents[2] / "README.md"
# The Hub names issue 18 lists (Zoobot's documentation and its Hub collections).
ISSUE_TABLE = [
    *(f"convnext_{s}" for s in ("pico", "nano", "tiny", "small", "base", "large")),
    "maxvit_rmlp_tiny_rw_224",
    "maxvit_rmlp_small_rw_224",
    "maxvit_base_rw_224",
    "maxvit_large_tf_224",
    "resnet18",
    "resnet50",
    "resnet101",
    "efficientnet_b0",
    "tf_efficientnetv2_s",
    "greyscale-convnext_nano",
    "greyscale-convnext_pico",
    "euclid-convnext-base",
]
FIELDS = set(catalogue.PublishedEncoder.__dataclass_fields__)


def never_architecture(name: str) -> bool:
    return False


def test_every_published_encoder_is_listed_once():
    names = [e.name for e in catalogue.published_encoders()]
    assert names == [f"zoobot-encoder-{name}" for name in ISSUE_TABLE]
    assert all(e.repo_id == f"mwalmsley/{e.name}" for e in catalogue.published_encoders())


def test_entries_are_complete_and_consistent():
    for e in catalogue.published_encoders():
        assert e.channels == (1 if "greyscale" in e.name else 3), e.name
        assert e.input_size == 224 and e.params > 1e6 and e.num_features > 0, e.name
        assert e.files[0] == "config.json" and "pytorch_model.bin" in e.files, e.name
        assert e.data in ("GZ Evo", "unknown") and catalogue.data_description(e.data), e.name
        assert set(e.inferred) <= FIELDS, e.name
        assert e.weights_mb is None or e.weights_mb > 0, e.name
    euclid = catalogue.published_encoder("zoobot-encoder-euclid-convnext-base")
    assert euclid.files == ("config.json", "model.safetensors", "pytorch_model.bin")
    # timm has no architecture of these repo names: inferred, and said so
    for name in ("maxvit_rmlp_tiny_rw_224", "maxvit_base_rw_224"):
        entry = catalogue.published_encoder(f"zoobot-encoder-{name}")
        assert entry.architecture != name and "architecture" in entry.inferred and entry.notes


def test_licences_show_the_gpl_encoder():
    licences = {e.name: e.license for e in catalogue.published_encoders()}
    assert {name for name, licence in licences.items() if licence != "Apache-2.0"} == {
        "zoobot-encoder-efficientnet_b0"
    }
    assert licences["zoobot-encoder-efficientnet_b0"] == "GPL-3.0"
    assert "**GPL-3.0**" in catalogue.markdown_table()


def test_lookup_by_every_spelling_and_misspellings_suggest_names():
    entry = catalogue.published_encoder("zoobot-encoder-convnext_nano")
    for name in (
        "mwalmsley/zoobot-encoder-convnext_nano",
        entry.hub_name,
        "hf-hub:" + entry.repo_id,
    ):
        assert catalogue.published_encoder(name) is entry
    assert entry.hub_name == "hf_hub:mwalmsley/zoobot-encoder-convnext_nano"
    assert catalogue.find_published("convnext_nano") is None  # a timm architecture, not a repo
    with pytest.raises(ValueError, match="did you mean zoobot-encoder-convnext_nano"):
        catalogue.published_encoder("zoobot-encoder-convnext_nanoo")


def test_list_pretrained_is_one_row_per_encoder_in_every_package():
    table = zoobot.models.list_pretrained()
    assert list(table["name"]) == [f"zoobot-encoder-{name}" for name in ISSUE_TABLE]
    assert {
        "hub_name",
        "architecture",
        "model_args",
        "channels",
        "input_size",
        "params",
        "license",
        "data",
        "files",
    } <= set(table.columns)
    row = table.set_index("name").loc["zoobot-encoder-maxvit_rmlp_tiny_rw_224"]
    assert row["architecture"] == "maxvit_rmlp_tiny_rw_256" and row["model_args"] == {
        "img_size": 224
    }
    assert json.loads(json.dumps(catalogue.records())) == catalogue.records()


def test_published_names_load_from_the_hub_unless_a_folder_has_that_name(tmp_path, monkeypatch):
    source = ModelSource.parse("zoobot-encoder-convnext_nano", never_architecture)
    assert (source.repo_id, source.revision) == ("mwalmsley/zoobot-encoder-convnext_nano", None)
    pinned = ModelSource.parse("zoobot-encoder-resnet18@v2", never_architecture)
    assert (pinned.repo_id, pinned.revision) == ("mwalmsley/zoobot-encoder-resnet18", "v2")
    with pytest.raises(ValueError, match="did you mean zoobot-encoder-resnet18"):
        ModelSource.parse("zoobot-encoder-resnet19", never_architecture)
    assert ModelSource.parse("resnet18", {"resnet18"}.__contains__) is None
    assert ModelSource.parse("some-name", never_architecture) is None  # for the framework to judge
    (tmp_path / "zoobot-encoder-convnext_nano").mkdir()
    monkeypatch.chdir(tmp_path)
    source = ModelSource.parse("zoobot-encoder-convnext_nano", never_architecture)
    assert source.folder == Path("zoobot-encoder-convnext_nano")


def command() -> ModelCommand:
    """A command whose backend module does not exist: `models` must not need one."""
    help_texts = {key: key for key in HELP_KEYS}
    return ModelCommand("zoobot-test", "Test", "no.such.backend", "test", help_texts)


def test_models_command_prints_the_catalogue_without_a_framework(capsys):
    assert run_command(command(), ["models"]) == 0
    lines = [" ".join(line.split()) for line in capsys.readouterr().out.splitlines()]
    assert lines[0] == "name architecture channels input size params licence data"
    rows = {line.split()[0]: line for line in lines[1:] if line.startswith("zoobot-")}
    assert list(rows) == [f"zoobot-encoder-{name}" for name in ISSUE_TABLE]
    assert rows["zoobot-encoder-efficientnet_b0"] == (
        "zoobot-encoder-efficientnet_b0 efficientnet_b0 3 224 px 4.0M GPL-3.0 GZ Evo"
    )
    assert rows["zoobot-encoder-maxvit_rmlp_tiny_rw_224"].split()[1:3] == [
        "maxvit_rmlp_tiny_rw_256(img_size=224)",
        "3",
    ]
    assert rows["zoobot-encoder-greyscale-convnext_pico"].split()[2] == "1"
    assert run_command(command(), ["models", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == catalogue.records()
    assert run_command(command(), ["models", "--format", "markdown"]) == 0
    assert capsys.readouterr().out == catalogue.markdown_table() + "\n"


def test_readme_table_is_the_catalogue():
    text = README.read_text(encoding="utf-8")
    found = re.search(
        r"<!-- pretrained-encoders[^>]*-->\n(.*?)\n<!-- /pretrained-encoders -->", text, re.DOTALL
    )
    assert found, "README.md has no <!-- pretrained-encoders --> ... <!-- /pretrained-encoders -->"
    assert found.group(1) == catalogue.markdown_table(), (
        "README.md's table of encoders differs from the catalogue; replace it with the output of "
        "`zoobot-torch models --format markdown`"
    )
