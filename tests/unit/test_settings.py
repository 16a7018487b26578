from __future__ import annotations

import pytest

from virtfleet.settings import Settings, SettingsError


def test_defaults_watch_everything_standalone_and_peering_is_opt_in() -> None:
    settings = Settings.from_env({})
    assert settings.clusterwide
    assert settings.standalone
    assert not Settings.from_env({"VIRTFLEET_PEERING_NAME": "vf"}).standalone
    assert not Settings.from_env({}, peering_name="vf").standalone
    assert not Settings.from_env({"VIRTFLEET_STANDALONE": "false"}).standalone
    assert (
        Settings.from_env({"VIRTFLEET_KUBEVIRT_PARALLEL_MIGRATIONS": "8"}).kubevirt_parallel_migrations == 8
    )


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
        ({"VIRTFLEET_KUBEVIRT_PARALLEL_MIGRATIONS": "0"}, "VIRTFLEET_KUBEVIRT_PARALLEL_MIGRATIONS"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        Settings.from_env(env)
