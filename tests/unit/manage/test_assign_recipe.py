"""An assign order's recipe is checked with the laptop's parser before it is signed."""

from __future__ import annotations

import pytest

from vmclient.errors import ConfigError, UsageError
from vmclient.manage.admin import assign_recipe

RECIPE = """format = 1
name = "office"
kind = "business"
vcpus = 1
memory_mib = 512
[image]
catalog = "office"
[[disks]]
name = "system"
role = "system"
[network]
zone = "business"
[power]
policy = "pause"
"""


def test_a_laptop_recipe_passes() -> None:
    assert assign_recipe(RECIPE, "office.toml", "office", "office").name == "office"


@pytest.mark.parametrize(("text", "vm", "error"), [
    (RECIPE, "mail", UsageError),  # the order names another VM than the recipe
    (RECIPE.replace("memory_mib = 512", "memory_mib = 5"), "office", ConfigError),
    ("not toml [", "office", ConfigError),
])
def test_what_the_laptop_would_refuse_is_refused(text: str, vm: str,
                                                 error: type[Exception]) -> None:
    with pytest.raises(error, match="office.toml|order's recipe"):
        assign_recipe(text, "office.toml" if error is ConfigError else "(the order's recipe)",
                      vm)
