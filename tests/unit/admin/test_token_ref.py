"""The admin.pkcs11 file that puts the signing key on a token: parsed strictly (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmclient.admin.token import TokenKeyRef
from vmclient.errors import ConfigError

WHERE = Path("/keys/admin.pkcs11")


def test_the_file_names_module_token_and_key() -> None:
    ref = TokenKeyRef.parse('module = "/usr/lib/p11.so"\ntoken = "it"\nkey = "admin"\n', WHERE)
    assert ref == TokenKeyRef(Path("/usr/lib/p11.so"), "it", "admin")


@pytest.mark.parametrize(("text", "problem"), [
    ('module = "/m.so"\ntoken = "it"\n', "key: missing"),
    ('module = "/m.so"\ntoken = "it"\nkey = "a"\npin = "1234"\n', "pin: unknown setting"),
    ('module = "/m.so"\ntoken = ""\nkey = "a"\n', "token: must be a non-empty string"),
    ("module = /m.so\n", "admin.pkcs11"),
])
def test_a_wrong_file_is_an_error_naming_the_setting(text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        TokenKeyRef.parse(text, WHERE)
