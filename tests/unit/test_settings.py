from __future__ import annotations

import pytest

from virtfleet.settings import Settings, SettingsError


def test_defaults_watch_everything_with_peering() -> None:
    settings = Settings.from_env({})
    assert settings.clusterwide
    assert not settings.standalone
    assert settings.peering_name == "virtfleet"


def test_environment_then_flags() -> None:
    env = {"VIRTFLEET_NAMESPACES": "a, b", "VIRTFLEET_DEFAULT_CPU_RATIO": "4", "VIRTFLEET_STANDALONE": "true"}
    settings = Settings.from_env(env, namespaces=("c",))
    assert settings.namespaces == ("c",)
    assert settings.default_cpu_ratio == 4.0
    assert settings.standalone
    assert Settings.from_env(env).namespaces == ("a", "b")


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"VIRTFLEET_DEFAULT_CPU_RATIO": "0.5"}, "VIRTFLEET_DEFAULT_CPU_RATIO"),
        ({"VIRTFLEET_DEFAULT_MEMORY_RATIO": "x"}, "VIRTFLEET_DEFAULT_MEMORY_RATIO"),
        ({"VIRTFLEET_METRICS_PORT": "70000"}, "VIRTFLEET_METRICS_PORT"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        Settings.from_env(env)
