"""Every code block of README.md runs, so the documentation cannot drift from the code.

Blocks are read in README order. A block is chained to the one before it when an HTML comment
`<!-- continues -->` stands right above it (blank lines allowed); a chain runs in one fresh
temporary working directory, and its consecutive Python blocks run as ONE script in a fresh
interpreter, so a recipe can use the variables of its previous block, exactly as a reader pasting
the blocks in turn would. Shell blocks (`bash`, `sh`, `shell`, `console` or no language) hold one
command per line (`\\` continues a line, `#` starts a comment):

- `zoobot-data`, `zoobot-torch`, `zoobot-tf` commands run in the chain's folder; a command whose
  comment says it needs the network runs as `<command> <subcommand> --help` instead;
- `pip install` / `pip uninstall` lines are checked, not run: every package, local path and extra
  named exists in `packages/*/pyproject.toml`;
- `nox` lines are checked, not run: every session (`-s`) and tag (`-t`) exists in noxfile.py;
- anything else fails the test, so the README only shows commands this test can vouch for.

The Hub is unreachable: a Hugging Face cache pre-filled with a random-init `convnext_nano` in the
timm Hub layout stands in for `hf_hub:mwalmsley/zoobot-encoder-convnext_nano`, with
`HF_HUB_OFFLINE=1`, so the recipes exercise the real download code path offline. A chain that calls
`make_survey` or `zoobot-data survey` starts with a copy of a synthetic survey rendered once for the
session in its `survey/` folder (100 galaxies, 64 pixels, seed 0): `make_survey` keeps images
rendered with the same settings, so the block still runs in full, just without re-rendering.

Runs where both frameworks and JAX are installed (the `parity` nox session); refuses to run
elsewhere. Recipe 4 (zoobot.tf) also runs a second time with `KERAS_BACKEND=jax`, unchanged.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
HUB_REPO = "mwalmsley/zoobot-encoder-convnext_nano"
SURVEY = {"n": 100, "image_size": 64, "seed": 0}
PYTHON_LANGS = {"python", "py"}
SHELL_LANGS = {"", "bash", "sh", "shell", "console"}
CONTINUES = re.compile(r"<!--\s*continues\s*-->")
# Cluster recipes (sbatch scripts, torchrun) run in tests/contract/test_recipes.py, with the
# environment SLURM and torchrun set, in both frameworks' sessions; not here.
RECIPE = re.compile(r"<!--\s*cluster recipe:\s*([\w-]+)\s*-->")
PROGRAMS = ("zoobot-data", "zoobot-torch", "zoobot-tf")
NETWORK = re.compile(r"needs the network", re.IGNORECASE)
TIMEOUT = 1200  # seconds per chain: generous for a loaded 2-core machine

_MISSING = [m for m in ("torch", "tensorflow", "jax") if importlib.util.find_spec(m) is None]
if _MISSING:  # fail loudly rather than skip: a skipped README test would hide broken recipes
    raise ImportError(f"the README shows every framework: run in the parity session ({_MISSING})")
ON_JAX = "4. Use the same weights from TensorFlow"  # the recipe also run with Keras on JAX


@dataclass
class Block:
    lang: str
    code: str
    line: int  # README line of the opening fence
    heading: str
    continues: bool
    recipe: str | None = None


@dataclass
class Chain:
    blocks: list[Block] = field(default_factory=list)

    @property
    def name(self) -> str:
        first = self.blocks[0]
        slug = re.sub(r"[^a-z0-9]+", "-", first.heading.lower()).strip("-") or "top"
        return f"{slug}-L{first.line}"


def parse_blocks(text: str) -> list[Block]:
    """The fenced code blocks of a Markdown text, with their heading and continuation marker."""
    blocks, heading, pending_continue, recipe = [], "", False, None
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#") and not line.startswith("#!"):
            heading = line.lstrip("#").strip()
            pending_continue = False
        elif CONTINUES.search(line):
            pending_continue = True
        elif RECIPE.search(line):
            recipe = RECIPE.search(line).group(1)
        elif line.startswith("```"):
            lang = line[3:].strip().split()[0].lower() if line[3:].strip() else ""
            start = i + 1
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                i += 1
            if i == len(lines):
                raise ValueError(f"README line {start}: unclosed code fence")
            code = "\n".join(lines[start:i]) + "\n"
            blocks.append(Block(lang, code, start, heading, pending_continue, recipe))
            pending_continue, recipe = False, None
        elif line.strip():
            pending_continue, recipe = False, None  # a marker stands right above its block
        i += 1
    return blocks


def chains(blocks: list[Block]) -> list[Chain]:
    result: list[Chain] = []
    for block in blocks:
        if block.continues and result:
            result[-1].blocks.append(block)
        else:
            result.append(Chain([block]))
    return result


BLOCKS = parse_blocks(README.read_text(encoding="utf-8"))
CHAINS = chains([b for b in BLOCKS if b.recipe is None])


# ---------------------------------------------------------------- what the repository offers


def project_packages() -> dict[str, dict]:
    """Project name -> {"path": folder, "extras": set of extras} for packages/*/pyproject.toml."""
    found = {}
    for pyproject in sorted((ROOT / "packages").glob("*/pyproject.toml")):
        project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
        extras = set(project.get("optional-dependencies", {}))
        found[project["name"]] = {"path": pyproject.parent.resolve(), "extras": extras}
    return found


def nox_sessions_and_tags() -> tuple[set[str], set[str]]:
    """Session names and tags declared with `@nox.session(...)` in noxfile.py (read, not run)."""
    tree = ast.parse((ROOT / "noxfile.py").read_text(encoding="utf-8"))
    sessions, tags = set(), set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef):
            continue
        for decorator in node.decorator_list:
            call = decorator if isinstance(decorator, ast.Call) else None
            target = call.func if call else decorator
            if ast.unparse(target) != "nox.session":
                continue
            name = node.name
            for keyword in call.keywords if call else []:
                if keyword.arg == "name":
                    name = ast.literal_eval(keyword.value)
                if keyword.arg == "tags":
                    tags.update(ast.literal_eval(keyword.value))
            sessions.add(name)
    return sessions, tags


REQUIREMENT = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)(?:\[(?P<extras>[^\]]*)\])?(?P<spec>.*)$")


def check_pip(words: list[str]) -> None:
    """`pip install` / `pip uninstall` arguments name packages and extras that exist."""
    packages = project_packages()
    by_path = {info["path"]: (name, info) for name, info in packages.items()}
    action, args = words[1], [w for w in words[2:] if not w.startswith("-")]
    assert action in ("install", "uninstall"), f"unexpected pip command {words}"
    assert args, f"pip {action} names no package: {words}"
    if action == "uninstall":
        # Only the documented workaround (triton, for torch + TensorFlow in one process).
        assert args == ["triton"], f"unexpected pip uninstall {args}"
        return
    for arg in args:
        match = REQUIREMENT.match(arg)
        if arg.startswith((".", "/")) or "/" in arg:
            path_text, _, extras_text = arg.partition("[")
            path = (ROOT / path_text).resolve()
            assert path in by_path, f"pip install {arg}: {path_text} is not a package folder"
            name, info = by_path[path]
            extras = {e.strip() for e in extras_text.rstrip("]").split(",") if e.strip()}
        else:
            assert match, f"cannot read the requirement {arg!r}"
            name = match["name"]
            assert name in packages, f"pip install {arg}: {name} is not one of {sorted(packages)}"
            info = packages[name]
            extras = {e.strip() for e in (match["extras"] or "").split(",") if e.strip()}
        unknown = extras - info["extras"]
        assert not unknown, f"{name} has no extra(s) {sorted(unknown)}; it has {info['extras']}"


def check_nox(words: list[str]) -> None:
    """`nox -s SESSION...` / `nox -t TAG...` name sessions and tags of noxfile.py."""
    sessions, tags = nox_sessions_and_tags()
    args = words[1:]
    assert args, "bare `nox` runs every session: name one with -s or a tag with -t"
    kind = None
    for arg in args:
        if arg in ("-s", "--session", "--sessions", "-e"):
            kind = "session"
        elif arg in ("-t", "--tags"):
            kind = "tag"
        elif arg == "--":
            break
        elif arg.startswith("-"):
            continue
        elif kind == "session":
            assert arg in sessions, f"nox has no session {arg!r}: {sorted(sessions)}"
        elif kind == "tag":
            assert arg in tags, f"nox has no tag {arg!r}: {sorted(tags)}"
        else:
            raise AssertionError(f"cannot read the nox command {words}")


# ---------------------------------------------------------------- running


def shell_commands(code: str) -> list[tuple[str, str]]:
    """(command, comment) per logical line of a shell block: `\\` joins lines, ` #` comments."""
    commands, current = [], ""
    for raw in code.splitlines():
        line = raw.strip() if current else raw.rstrip()
        if line.endswith("\\"):
            current += line[:-1].rstrip() + " "
            continue
        current += line
        command, _, comment = current.partition(" #")
        if command.strip():
            commands.append((command.strip(), f"#{comment}".strip() if comment else ""))
        current = ""
    return commands


def run(args, cwd: Path, env: dict, what: str, shell: bool = False) -> None:
    done = subprocess.run(
        args,
        cwd=cwd,
        env=env,
        shell=shell,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    if done.returncode != 0:
        pytest.fail(
            f"{what} failed with exit code {done.returncode}\n"
            f"--- stdout (end)\n{done.stdout[-4000:]}\n--- stderr (end)\n{done.stderr[-6000:]}",
            pytrace=False,
        )


def run_shell_block(block: Block, cwd: Path, env: dict) -> None:
    for command, comment in shell_commands(block.code):
        words = shlex.split(command)
        where = f"README line {block.line}: `{command}`"
        if words[0] == "pip" or words[:3] == ["python", "-m", "pip"]:
            check_pip(words if words[0] == "pip" else words[2:])
        elif words[0] == "nox":
            check_nox(words)
        elif words[0] in PROGRAMS:
            if NETWORK.search(comment):
                subcommand = next((w for w in words[1:] if not w.startswith("-")), None)
                words = [words[0], *([subcommand] if subcommand else []), "--help"]
                run(words, cwd, env, f"{where} (as --help: it needs the network)")
            else:
                run(command, cwd, env, where, shell=True)
        else:
            raise AssertionError(f"{where}: this test cannot vouch for `{words[0]}` commands")


def run_python(blocks: list[Block], cwd: Path, env: dict, index: int) -> None:
    parts = [f"# ---- README.md line {b.line} ({b.heading})\n{b.code}" for b in blocks]
    script = cwd / f"readme_block_{index}.py"
    script.write_text("\n".join(parts), encoding="utf-8")
    lines = ", ".join(str(b.line) for b in blocks)
    run([sys.executable, script.name], cwd, env, f"python block(s) at README line(s) {lines}")
    script.unlink(missing_ok=True)


def needs_survey(chain: Chain) -> bool:
    text = "".join(b.code for b in chain.blocks)
    return "make_survey(" in text or re.search(r"zoobot-data\s+survey\b", text) is not None


# ---------------------------------------------------------------- fixtures

FAKE_HUB_SCRIPT = """
import sys

import timm
import torch

torch.manual_seed(0)
timm.models.save_for_hf(
    timm.create_model("convnext_nano", num_classes=0), sys.argv[1], safe_serialization=True
)
"""

SURVEY_SCRIPT = """
import sys
from zoobot.data.synthetic import make_survey
make_survey({n}, sys.argv[1], image_size={image_size}, seed={seed}, progress=False)
"""


def base_env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(
        HF_HOME=str(home / "hf-home"),
        HF_HUB_CACHE=str(home / "hf-hub"),
        HF_HUB_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        TF_CPP_MIN_LOG_LEVEL="2",
        MPLBACKEND="Agg",
        TQDM_DISABLE="1",
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture(scope="session")
def readme_env(tmp_path_factory, hub_cache) -> dict:
    """Environment of every README command: offline, with the fake Hub repo in the cache."""
    home = tmp_path_factory.mktemp("readme-home")
    env = base_env(home)
    script = textwrap.dedent(FAKE_HUB_SCRIPT)
    folder = home / "fake-encoder"
    run([sys.executable, "-c", script, str(folder)], home, env, "saving the fake Hub encoder")
    hub_cache(Path(env["HF_HUB_CACHE"])).fill(HUB_REPO, folder)
    return env


@pytest.fixture(scope="session")
def survey_cache(tmp_path_factory, readme_env) -> Path:
    """A rendered synthetic survey, copied into chains that make one (they reuse its images)."""
    folder = tmp_path_factory.mktemp("readme-survey") / "survey"
    script = textwrap.dedent(SURVEY_SCRIPT.format(**SURVEY))
    run([sys.executable, "-c", script, str(folder)], folder.parent, readme_env, "rendering")
    return folder


# ---------------------------------------------------------------- tests


def test_readme_has_runnable_blocks_and_the_required_sections():
    text = README.read_text(encoding="utf-8")
    assert BLOCKS, "README.md has no code blocks"
    unknown = [b for b in BLOCKS if b.lang not in PYTHON_LANGS | SHELL_LANGS]
    assert not unknown, [(b.line, b.lang) for b in unknown]
    for heading in ("## Install", "## Benchmarks", "## Recipes", "## Scaling out"):
        assert re.search(rf"^{re.escape(heading)}\b", text, re.MULTILINE), heading
    assert 'sys.modules["triton"] = None' in text
    recipes = {b.recipe for b in BLOCKS if b.recipe}
    tested = (ROOT / "tests" / "contract" / "test_recipes.py").read_text(encoding="utf-8")
    assert recipes and all(f'"{name}"' in tested for name in recipes), recipes


def test_parser_chains_marked_blocks():
    text = textwrap.dedent(
        """\
        ## A
        ```python
        x = 1
        ```
        <!-- continues -->
        ```python
        print(x)
        ```
        ## B
        ```bash
        zoobot-data --help
        ```
        """
    )
    found = chains(parse_blocks(text))
    assert [len(c.blocks) for c in found] == [2, 1]
    assert found[0].name == "a-L2"
    assert shell_commands(
        "zoobot-data survey 10 s \\\n  --image-size 64  # needs the network\n"
    ) == [("zoobot-data survey 10 s --image-size 64", "# needs the network")]


@pytest.mark.parametrize("chain", CHAINS, ids=[c.name for c in CHAINS])
def test_readme_chain_runs(chain: Chain, tmp_path, readme_env, request):
    run_chain(chain, tmp_path, dict(readme_env), request)


def test_the_tensorflow_recipe_runs_unchanged_on_jax(tmp_path, readme_env, request):
    (chain,) = [
        c
        for c in CHAINS
        if c.blocks[0].heading == ON_JAX and "KERAS_BACKEND" not in c.blocks[0].code
    ]
    assert "load_encoder(" in chain.blocks[0].code and "fit(" in chain.blocks[0].code
    run_chain(chain, tmp_path, dict(readme_env, KERAS_BACKEND="jax"), request)


def run_chain(chain: Chain, tmp_path: Path, env: dict, request) -> None:
    """Run a chain's blocks in a fresh folder, consecutive Python blocks as one script."""
    cwd = tmp_path / "work"
    cwd.mkdir()
    if needs_survey(chain):
        shutil.copytree(request.getfixturevalue("survey_cache"), cwd / "survey")
    pending: list[Block] = []
    for index, block in enumerate(chain.blocks):
        if block.lang in PYTHON_LANGS:
            pending.append(block)
            continue
        if pending:
            run_python(pending, cwd, env, index)
            pending = []
        run_shell_block(block, cwd, env)
    if pending:
        run_python(pending, cwd, env, len(chain.blocks))


def test_fake_hub_is_what_recipes_load(readme_env):
    """The offline cache holds the repo id the README names (guards against a renamed repo)."""
    cache = Path(readme_env["HF_HUB_CACHE"]) / f"models--{HUB_REPO.replace('/', '--')}"
    snapshot = next((cache / "snapshots").iterdir())
    assert {p.name for p in snapshot.iterdir()} == {"config.json", "model.safetensors"}
    assert f"hf_hub:{HUB_REPO}" in README.read_text(encoding="utf-8")
