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


def test_peering_priority_the_oldest_replica_leads_unless_set() -> None:
    derived = Settings.from_env({"VIRTFLEET_PEERING_NAME": "vf"})
    # kopf runs the highest priority: a replica started earlier outranks its replacement.
    assert derived.priority_at(1_000) > derived.priority_at(2_000) > 0
    fixed = Settings.from_env({"VIRTFLEET_PEERING_NAME": "vf", "VIRTFLEET_PEERING_PRIORITY": "7"})
    assert fixed.priority_at(1_000) == fixed.priority_at(2_000) == 7
    with pytest.raises(SettingsError, match="VIRTFLEET_PEERING_PRIORITY"):
        Settings.from_env({"VIRTFLEET_PEERING_PRIORITY": "high"})
