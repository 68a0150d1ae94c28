"""zoobot.models.blocks: the blocks both frameworks freeze and decay by, from module names alone."""

from zoobot.models.blocks import n_trained, prefix_blocks


def test_stages_come_last_first_then_the_stem_and_unlisted_modules_join_block_0():
    modules = ["stem.0", "stages.0.blocks.0.conv", "stages.1.downsample", "stages.1.blocks.0.conv"]
    modules += ["head.norm"]
    assert prefix_blocks("convnext", modules) == [["stages.1", "head.norm"], ["stages.0"], ["stem"]]


def test_every_module_is_in_exactly_one_block():
    modules = ["conv_stem", "bn1", "blocks.0.0.conv_dw", "blocks.1.0.conv_pw", "conv_head", "bn2"]
    blocks = prefix_blocks("efficientnet", modules)
    assert blocks == [["blocks.1", "conv_head", "bn2"], ["blocks.0"], ["conv_stem", "bn1"]]
    owners = [[p for p in sum(blocks, []) if m == p or m.startswith(p + ".")] for m in modules]
    assert all(len(found) == 1 for found in owners)


def test_resnet_blocks_are_fixed_and_an_unknown_family_is_one_block():
    modules = ["conv1", "bn1", "layer1.0.conv1", "layer4.2.bn3", "fc"]
    assert prefix_blocks("resnet", modules)[0] == ["layer4", "fc"]
    assert prefix_blocks(None, ["a.b", "c"]) == [["a.b", "c"]]


def test_n_blocks_minus_one_trains_every_block():
    assert [n_trained(k, 5) for k in (-1, 0, 2, 9)] == [5, 0, 2, 5]
