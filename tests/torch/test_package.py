"""The zoobot.torch package: public names resolve on first use, without loading torch before."""

import subprocess
import sys

import zoobot.torch


def test_importing_the_package_and_its_cli_loads_no_framework():
    code = (
        "import sys, zoobot.torch, zoobot.torch.cli; "
        "print([m for m in ('torch', 'pytorch_lightning', 'timm') if m in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_every_public_name_resolves():
    for name in zoobot.torch.__all__:
        assert getattr(zoobot.torch, name) is not None, name
    assert set(zoobot.torch.__all__) <= set(dir(zoobot.torch))


def test_predict_stays_the_function_after_its_module_is_imported():
    from zoobot.torch.predictions import predict  # imports the submodule zoobot.torch.predictions

    assert zoobot.torch.predictions is not predict  # the module keeps its own name
    from zoobot.torch import get_representations, similar_galaxies
    from zoobot.torch import predict as exported

    assert exported is predict and callable(get_representations) and callable(similar_galaxies)
