"""zoobot.data.augmentation: the augmentation names both frameworks take, the dihedral
reference their fast versions are tested against, and the full augmentation's checked settings."""

import numpy as np
import pytest

from zoobot.data.augmentation import (
    AUGMENTATIONS,
    DIHEDRAL,
    AugmentConfig,
    check_augmentation,
    dihedral,
)


def test_a_quarter_turn_and_a_mirror_move_pixels_where_the_square_s_symmetries_put_them():
    image = np.array([[1, 2], [3, 4]])
    # numpy's rot90 direction: the top row becomes the left column, read bottom to top
    np.testing.assert_array_equal(dihedral(image, 1, False), [[2, 4], [1, 3]])
    np.testing.assert_array_equal(dihedral(image, 0, True), [[2, 1], [4, 3]])
    np.testing.assert_array_equal(dihedral(image, 1, True), [[4, 2], [3, 1]])
    np.testing.assert_array_equal(dihedral(image, 4, False), image)


def test_the_eight_symmetries_are_distinct_and_keep_every_pixel():
    image = np.arange(3 * 3 * 2).reshape(3, 3, 2)  # no symmetry of its own
    outputs = [dihedral(image, k, mirror) for k, mirror in DIHEDRAL]
    assert len({o.tobytes() for o in outputs}) == 8
    for out in outputs:
        assert out.shape == image.shape
        np.testing.assert_array_equal(np.sort(out, axis=None), np.sort(image, axis=None))
    chw = np.moveaxis(image, -1, 0)  # channels first: rows and columns are axes 1 and 2
    for (k, mirror), out in zip(DIHEDRAL, outputs, strict=True):
        np.testing.assert_array_equal(
            dihedral(chw, k, mirror, axes=(1, 2)), np.moveaxis(out, -1, 0)
        )


def test_unknown_augmentation_names_the_known_ones():
    assert [check_augmentation(a) for a in AUGMENTATIONS] == list(AUGMENTATIONS)
    with pytest.raises(ValueError, match="dihedral, full, none; got 'astro'"):
        check_augmentation("astro")


def test_augment_config_reads_names_and_mappings_and_refuses_bad_ranges():
    assert AugmentConfig.from_value(True) == AugmentConfig()
    assert AugmentConfig.from_value(False) is None
    assert AugmentConfig.from_value({"astro_p": 0.5}).astro_p == 0.5
    with pytest.raises(ValueError, match="unknown augmentation option"):
        AugmentConfig.from_value({"astro": 0.5})
    with pytest.raises(ValueError, match="probability"):
        AugmentConfig(greyscale_p=2)
    with pytest.raises(ValueError, match="crop_scale"):
        AugmentConfig(crop_scale=(0.8, 0.7))
    with pytest.raises(ValueError, match="at most 1"):
        AugmentConfig(crop_scale=(0.8, 1.5))
