import pytest

from stepedit.model.presets import (
    AE_PRESETS,
    DIT_PRESETS,
    TINY_QWEN_HIDDEN,
    AutoEncoderConfig,
    DiTConfig,
)


def test_all_presets_exist() -> None:
    assert set(DIT_PRESETS) == {"v1.0", "v1.1", "v1.2", "tiny-v1.0", "tiny-v1.1", "tiny-v1.2"}
    assert set(AE_PRESETS) == {"flux", "tiny"}


@pytest.mark.parametrize("name", sorted(DIT_PRESETS))
def test_dit_preset_version_and_head_dim(name: str) -> None:
    config = DIT_PRESETS[name]
    assert config.version == name.removeprefix("tiny-")
    assert sum(config.axes_dim) == config.head_dim


def test_full_size_matches_released_checkpoint() -> None:
    config = DIT_PRESETS["v1.1"]
    assert (config.hidden_size, config.num_heads, config.depth, config.depth_single_blocks) == (
        3072,
        24,
        19,
        38,
    )
    assert config.axes_dim == (16, 56, 56)
    assert config.connector_in_channels == 3584


def test_tiny_uses_tiny_qwen_width() -> None:
    assert DIT_PRESETS["tiny-v1.2"].connector_in_channels == TINY_QWEN_HIDDEN


def test_version_flags() -> None:
    assert DIT_PRESETS["v1.0"].has_scale_factor and not DIT_PRESETS["v1.0"].has_text_token_mapping
    assert not DIT_PRESETS["v1.1"].has_scale_factor
    assert not DIT_PRESETS["v1.1"].has_text_token_mapping
    assert DIT_PRESETS["v1.2"].has_text_token_mapping


@pytest.mark.parametrize("name", ["flux", "tiny"])
def test_autoencoder_downsamples_by_8(name: str) -> None:
    assert AE_PRESETS[name].downsample_factor == 8


def test_inconsistent_configs_are_rejected() -> None:
    with pytest.raises(ValueError, match="axes_dim"):
        DiTConfig(axes_dim=(16, 56, 48))
    with pytest.raises(ValueError, match="divisible"):
        DiTConfig(num_heads=7)
    with pytest.raises(ValueError, match="context_in_dim"):
        DiTConfig(connector_hidden_size=2048)
    with pytest.raises(ValueError, match="32"):
        AutoEncoderConfig(ch=48)
