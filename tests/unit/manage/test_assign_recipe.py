"""An assign order's recipe is checked with the laptop's parser before it is signed."""

from __future__ import annotations

import pytest

from testlib import OFFICE_RECIPE
from vmclient.errors import ConfigError, UsageError
from vmclient.manage.admin import assign_recipe

RECIPE = OFFICE_RECIPE


def test_a_laptop_recipe_passes() -> None:
    assert assign_recipe(RECIPE, "office.toml", "office", "office").name == "office"


@pytest.mark.parametrize(("text", "vm", "error"), [
    (RECIPE, "mail", UsageError),  # the order names another VM than the recipe
    (RECIPE.replace("memory_mib = 512", "memory_mib = 5"), "office", ConfigError),
    ("not toml [", "office", ConfigError),
])
def test_what_the_laptop_would_refuse_is_refused(text: str, vm: str,
                                                 error: type[Exception]) -> None:
    with pytest.raises(error, match=r"office\.toml|order's recipe"):
        assign_recipe(text, "office.toml" if error is ConfigError else "(the order's recipe)",
                      vm)


def test_assign_start_is_an_optional_flag() -> None:
    import json

    from vmclient.store.errors import RemoteIntegrityError
    from vmclient.store.orders import Order

    dev = "0" * 32

    def body(args: dict[str, object]) -> bytes:
        return json.dumps({"version": 1, "device": dev, "seq": 1, "issued": 5,
                           "action": "assign", "args": args}).encode()
    base = {"vm": "office", "recipe": RECIPE}
    assert Order.parse(body(base), dev, 1, "p").args["start"] is False
    assert Order.parse(body({**base, "start": True}), dev, 1, "p").args["start"] is True
    with pytest.raises(RemoteIntegrityError, match="start"):
        Order.parse(body({**base, "start": "yes"}), dev, 1, "p")
    with pytest.raises(RemoteIntegrityError, match="unknown field"):
        Order.parse(body({**base, "boot": True}), dev, 1, "p")
