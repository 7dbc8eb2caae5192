"""The shared names: every size builds a model of its family; the lists are the library's."""

from __future__ import annotations

import importlib

import pytest

from radixpert import vocab


def test_observations_are_chexperts_fourteen_and_the_five_a_subset() -> None:
    assert len(vocab.OBSERVATIONS) == len(set(vocab.OBSERVATIONS)) == 14
    assert vocab.OBSERVATIONS[0] == "No Finding" and vocab.OBSERVATIONS[-1] == "Support Devices"
    assert set(vocab.OBSERVATIONS_5) < set(vocab.OBSERVATIONS)


def test_every_size_has_a_known_family_and_a_builder_that_exists() -> None:
    for name, size in vocab.SIZES.items():
        assert size.family in vocab.FAMILIES, name
        module, fn = size.builder.split(":")
        assert callable(getattr(importlib.import_module(f"radixpert.models.{module}"), fn)), name


@pytest.mark.parametrize("name", [n for n, s in vocab.SIZES.items() if not s.published])
def test_each_tiny_size_builds_a_model_of_its_family(name: str) -> None:
    from radixpert.models.bundle import _describe
    from radixpert.models.info import _tiny

    family, connector = _describe(_tiny(name))
    assert family == vocab.SIZES[name].family
    assert connector == vocab.SIZES[name].options.get("connector", connector)


def test_the_library_builds_exactly_the_named_tasks_and_sizes() -> None:
    from radixpert.instruct.tasks import TASKS
    from radixpert.models.info import TINY_NAMES
    from radixpert.models.sizes import SIZES

    assert set(TASKS) == set(vocab.TASKS)
    assert set(SIZES) | set(TINY_NAMES) == set(vocab.SIZES)
